"""How closely an exported ONNX model follows the run it came from, on the run's validation split.

    python examples/onnx_agreement.py RUN_DIR MODEL.onnx [--max_examples N]

Rebuilds the run's fake-quantized model (final_model/ weights, results.json formats), runs it and
the ONNX model (onnxruntime, CPU) on the same batches of the run's validation split, in the run's
--eval_batch_size (activation scales are per batch), and prints the largest logit difference, how
many predictions differ, and each model's accuracy next to the one results.json recorded. For a
regression task (stsb: one score per example, no classes to agree on) it prints instead the
largest prediction difference and each model's task metrics (pearson, spearmanr), next to those
results.json recorded.
The two differ where onnxruntime's kernels sum in another order than torch's and where
QuantizeLinear divides by the scale (the fake-quant multiplies by its reciprocal): an activation
then lands one code apart now and then, which a deep low-bit network can amplify
(quant/onnx_ops.py). A --bf16 / --fp16 run's model runs under that autocast, as the run
evaluated it; the ONNX model computes in float32.

When the installed onnxruntime cannot load the model (FP4 layers: onnxruntime 1.32 has no
FLOAT4E2M1 kernels), it says so in one line, with the way out, and exits with status 1.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from eval.cli_flags import OnceArgumentParser  # noqa: E402
from eval.results_schema import RESULTS_NAME  # noqa: E402
from eval.tasks import TaskSpec  # noqa: E402


class AgreementError(ValueError):
    """The ONNX model cannot be compared with the run (onnxruntime cannot load it, or its inputs
    are not those of the run's batches): one line saying why and what to do."""


def _session(onnx_path: Path):
    import onnxruntime

    from quant.onnx_runtime import onnxruntime_load_problem

    try:
        return onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime's own classes; described in one line below
        problem = onnxruntime_load_problem(onnx_path)
        raise AgreementError(problem or f"onnxruntime {onnxruntime.__version__} cannot load {onnx_path}: "
                             f"{str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__}"
                             ) from error


def _check_inputs(onnx_path: Path, onnx_inputs: list[str], batch_inputs: list[str], run_dir: Path) -> None:
    missing = [name for name in onnx_inputs if name not in batch_inputs]
    ignored = [name for name in batch_inputs if name not in onnx_inputs]
    if missing or ignored:
        parts = ([f"takes {', '.join(missing)}, which the run's batches lack"] if missing else []) + \
            ([f"does not take {', '.join(ignored)}, which the run's batches carry (and its model reads)"]
             if ignored else [])
        raise AgreementError(f"{onnx_path} {' and '.join(parts)}: it was not exported from this run's model as it "
                             f"is now; export it again: python -m quant.export {run_dir} --out DIR --onnx")


def agreement(run_dir: Path, onnx_path: Path, max_examples: int | None = None) -> dict[str, Any]:
    """Logit and prediction agreement of the run's model and the ONNX model on its validation split:
    for a classification task the predictions differing and each model's accuracy; for a regression
    task (see _regression_agreement) the task's metrics instead.
    AgreementError when onnxruntime cannot load the model or its inputs are not the batches'."""
    from eval.run_setup import load_data_and_model, rebuild_run_model

    results = json.loads((run_dir / RESULTS_NAME).read_text())
    session = _session(onnx_path)  # first: a model onnxruntime cannot load needs no run loaded
    model, _ = rebuild_run_model(run_dir)
    model.eval()
    # The run's validation split and collator, with the tokenizer final_model/ holds (a built-in
    # text task's is built from the training text).
    args = argparse.Namespace(**{**results["args"], "model_name_or_path": str(run_dir / "final_model"),
                                 "load_config": None})
    setup = load_data_and_model(args)
    dataset = setup.eval_dataset
    count = len(dataset) if max_examples is None else min(max_examples, len(dataset))
    input_names = [node.name for node in session.get_inputs()]
    batch_size = results["args"]["eval_batch_size"]
    all_torch, all_onnx, all_labels = [], [], []
    for start in range(0, count, batch_size):
        batch = setup.data_collator([dataset[i] for i in range(start, min(start + batch_size, count))])
        all_labels.append(batch.pop("labels").numpy())
        if start == 0:  # e.g. token_type_ids: an ONNX model without them would compute another function
            _check_inputs(onnx_path, input_names, list(batch.keys()), run_dir)
        with torch.no_grad():
            all_torch.append(model(**batch).logits.float().numpy())
        all_onnx.append(session.run(None, {name: batch[name].numpy() for name in input_names})[0])
    torch_logits, onnx_logits, labels = (np.concatenate(parts) for parts in (all_torch, all_onnx, all_labels))
    if setup.task.is_regression:
        return _regression_agreement(setup.task, results, torch_logits, onnx_logits, labels)
    torch_predictions, onnx_predictions = torch_logits.argmax(-1), onnx_logits.argmax(-1)
    return {"examples": count, "max_logit_diff": float(np.abs(torch_logits - onnx_logits).max()),
            "predictions_differing": int((torch_predictions != onnx_predictions).sum()),
            "accuracy_torch": int((torch_predictions == labels).sum()) / count,
            "accuracy_onnx": int((onnx_predictions == labels).sum()) / count,
            "accuracy_recorded": results["metrics"].get("eval_accuracy", float("nan"))}


def _regression_agreement(task: TaskSpec, results: dict[str, Any], torch_logits: np.ndarray, onnx_logits: np.ndarray,
                          labels: np.ndarray) -> dict[str, Any]:
    """A regression run's model outputs one score per example: an argmax is always class 0, so
    predictions cannot differ and "accuracy" means nothing. Compared instead: the scores
    themselves and the task's metrics, computed as the run computed those results.json records
    (eval.metrics.build_compute_metrics, with the run's --metric)."""
    from transformers import EvalPrediction

    from eval.metrics import build_compute_metrics

    compute = build_compute_metrics(task, results["args"].get("metric"))
    torch_metrics = compute(EvalPrediction(predictions=torch_logits, label_ids=labels))
    onnx_metrics = compute(EvalPrediction(predictions=onnx_logits, label_ids=labels))
    return {"examples": len(labels), "regression": True,
            "max_prediction_diff": float(np.abs(torch_logits.reshape(-1) - onnx_logits.reshape(-1)).max()),
            "metrics": {name: (torch_metrics[name], onnx_metrics[name],
                               results["metrics"].get(f"eval_{name}", float("nan"))) for name in torch_metrics}}


def main(argv: list[str] | None = None) -> int:
    parser = OnceArgumentParser(prog="python examples/onnx_agreement.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a completed run's directory")
    parser.add_argument("onnx", type=Path, help="the model.onnx that quant.export --onnx wrote from it")
    parser.add_argument("--max_examples", type=int, default=None, help="only the first N validation examples")
    args = parser.parse_args(argv)
    if not (args.run_dir / RESULTS_NAME).is_file():
        parser.error(f"{str(args.run_dir)!r} has no {RESULTS_NAME}; pass a completed run's directory")
    if not args.onnx.is_file():
        parser.error(f"{str(args.onnx)!r} is not a file; pass the model.onnx written by python -m quant.export --onnx")
    if args.max_examples is not None and args.max_examples < 1:
        parser.error(f"--max_examples must be at least 1, got {args.max_examples}")
    try:
        found = agreement(args.run_dir, args.onnx, args.max_examples)
    except AgreementError as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return 1
    print(f"examples               {found['examples']}")
    if found.get("regression"):
        print(f"max |prediction diff|  {found['max_prediction_diff']:.3g}")
        print("accuracy               does not apply (a regression task: one score per example); compared instead: "
              "the task's metrics")
        for name, (on_torch, on_onnx, recorded) in found["metrics"].items():
            print(f"{name:<22} torch {on_torch:.4f}, onnx {on_onnx:.4f} (results.json: {recorded:.4f})")
        return 0
    print(f"max |logit difference| {found['max_logit_diff']:.3g}")
    print(f"predictions differing  {found['predictions_differing']} "
          f"({found['predictions_differing'] / found['examples']:.1%})")
    print(f"accuracy               torch {found['accuracy_torch']:.4f}, onnx {found['accuracy_onnx']:.4f} "
          f"(results.json: {found['accuracy_recorded']:.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
