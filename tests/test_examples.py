"""The examples' command lines: usage, bad input, and what they find."""
import subprocess
import sys
from pathlib import Path

import pytest

from tests.eval.test_results import make_results, write_run

ROOT = Path(__file__).resolve().parents[1]


def _run(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=120)


def _run_together(*commands: tuple, cwd: Path) -> list[subprocess.CompletedProcess]:
    """_run of each command (a tuple of arguments), the independent processes started at once to
    share the machine's cores; their results in order."""
    started = [subprocess.Popen([sys.executable, *argv], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for argv in commands]
    try:
        outputs = [process.communicate(timeout=120) for process in started]
        return [subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
                for process, (stdout, stderr) in zip(started, outputs)]
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.communicate()


def test_reselect_runs_from_anywhere_and_says_when_it_found_nothing(tmp_path):
    script = str(ROOT / "examples" / "reselect.py")
    write_run(tmp_path / "out", make_results("uniform_w4_s0", method="uniform", weight_bits=4))
    folders = (tmp_path / "out", tmp_path / "out" / "digits")  # a root or one task's folder
    # not the checkout: it finds the project itself
    *found, missing, usage = _run_together(*[(script, str(folder)) for folder in folders],
                                           (script, str(tmp_path / "missing")), (script, "--help"), cwd=tmp_path)
    for folder, done in zip(folders, found):
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr == (f"no completed search run under {folder}; python examples/reselect.py OUTPUT_ROOT (a "
                               "directory of runs: OUTPUT_ROOT/TASK/RUN/results.json)\n")
    done = missing
    assert done.returncode == 2 and done.stderr.startswith("usage: python examples/reselect.py OUTPUT_ROOT")
    done = usage
    assert done.returncode == 0 and done.stdout.startswith("Recompute the answer of finished searches")


def test_compare_advantage_needs_steps_past_the_delay(tmp_path):
    done = _run(str(ROOT / "examples" / "compare_advantage.py"), "--steps", "100", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.endswith("error: --steps must be > 100 (the policy learns only after the toy problem's 100 "
                                "delay steps), got 100\n")


def test_the_console_scripts_name_callable_entry_points():
    """setup.py's console scripts (fliqs-launch, -run, -report, -export) point at functions that exist."""
    import importlib
    import re

    scripts = re.findall(r'"(fliqs-[a-z]+)=([\w.]+):(\w+)"', (ROOT / "setup.py").read_text())
    assert [name for name, _, _ in scripts] == ["fliqs-launch", "fliqs-run", "fliqs-report", "fliqs-export"]
    for _, module, function in scripts:
        assert callable(getattr(importlib.import_module(module), function)), (module, function)


def test_export_asks_for_the_onnx_extra_before_loading(tmp_path, monkeypatch, capsys):
    import importlib.util

    from quant import export_cli

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    run_dir = tmp_path / "not_a_run"  # never loaded: the check comes first
    code = export_cli.cli([str(run_dir), "--out", str(tmp_path / "x"), "--onnx"])
    assert code == 2 and not (tmp_path / "x").exists()  # a bad request, as the other commands' usage errors
    assert capsys.readouterr().err == ("python -m quant.export: error: --onnx needs the packages onnxscript: pip install 'fliqs[onnx]' (or pip "
                                       "install onnx onnxruntime onnxscript); nothing was written\n")


def test_onnx_agreement_compares_the_export_with_the_run_on_its_validation_split(tmp_path):
    import importlib.util

    from eval.eval_run import main as run_main
    from quant import export_cli
    from tests.eval.test_eval_run import FAST, RESNET_TINY

    assert run_main([*RESNET_TINY, "--search_space", "int4,int8", *FAST, "--output_root_dir", str(tmp_path / "out"),
                     "--exp_name", "s", "--report_to", "none"]) == 0
    run_dir = tmp_path / "out" / "digits" / "s"
    assert export_cli.cli([str(run_dir), "--out", str(tmp_path / "deploy"), "--onnx"]) == 0
    spec = importlib.util.spec_from_file_location("onnx_agreement", ROOT / "examples" / "onnx_agreement.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found = module.agreement(run_dir, tmp_path / "deploy" / "model.onnx")
    import json

    recorded = json.loads((run_dir / "results.json").read_text())["metrics"]["eval_accuracy"]
    # The rebuilt model is the evaluated one: the same accuracy on the same 64 examples, in its batches.
    assert found["examples"] == 64 and found["accuracy_torch"] == recorded == found["accuracy_recorded"]
    assert abs(found["accuracy_onnx"] - found["accuracy_torch"]) * 64 <= found["predictions_differing"]
    assert 0 <= found["max_logit_diff"] < 1e-3  # a tiny model: summation order, no code moved far
    assert module.agreement(run_dir, tmp_path / "deploy" / "model.onnx", max_examples=20)["examples"] == 20
    script = str(ROOT / "examples" / "onnx_agreement.py")
    no_results, not_a_file = _run_together((script, str(tmp_path / "out"), str(tmp_path / "deploy" / "model.onnx")),
                                           (script, str(run_dir), str(tmp_path / "deploy")), cwd=tmp_path)
    done = no_results
    assert done.returncode == 2 and done.stderr.endswith(
        f"error: '{tmp_path / 'out'}' has no results.json; pass a completed run's directory\n")
    done = not_a_file
    assert done.returncode == 2 and "is not a file; pass the model.onnx written by python -m quant.export --onnx" \
        in done.stderr


def _onnx_agreement_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("onnx_agreement", ROOT / "examples" / "onnx_agreement.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_onnx_agreement_feeds_a_sentence_pair_run_its_token_types(tmp_path):
    """BERT on a sentence-pair task: the export takes token_type_ids and the comparison feeds them
    (the second segment is type 1); an ONNX model without them is refused, not compared."""
    import json

    import onnx

    from eval.eval_run import main as run_main
    from quant import export_cli
    from quant.onnx_export import export_onnx
    from tests.eval.test_text_tokenizer import _pair_csv

    assert run_main(["--task", "rte", "--model_type", "bert-tiny", "--from_scratch", "--config_overrides",
                     "num_hidden_layers=1,hidden_size=32,num_attention_heads=2,intermediate_size=64",
                     *_pair_csv(tmp_path / "data"), "--weight_bits", "8", "--activation_bits", "8", "--max_steps", "4",
                     "--train_batch_size", "8", "--device", "cpu", "--report_to", "none", "--exp_name", "pair",
                     "--output_root_dir", str(tmp_path / "out")]) == 0
    run_dir = tmp_path / "out" / "rte" / "pair"
    assert export_cli.cli([str(run_dir), "--out", str(tmp_path / "deploy"), "--onnx"]) == 0
    graph_inputs = [i.name for i in onnx.load(str(tmp_path / "deploy" / "model.onnx")).graph.input]
    assert graph_inputs == ["input_ids", "attention_mask", "token_type_ids"]
    module = _onnx_agreement_module()
    found = module.agreement(run_dir, tmp_path / "deploy" / "model.onnx")
    recorded = json.loads((run_dir / "results.json").read_text())["metrics"]["eval_accuracy"]
    assert found["examples"] == 20 and found["accuracy_torch"] == recorded
    assert found["predictions_differing"] == 0 and found["max_logit_diff"] < 1e-5

    import torch

    from quant.checkpoint_load import load_quantized_checkpoint

    model = load_quantized_checkpoint(tmp_path / "deploy")  # exported without its token types
    example = {"input_ids": torch.ones(2, 8, dtype=torch.long), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    export_onnx(model, example, tmp_path / "no_types.onnx")
    with pytest.raises(module.AgreementError) as error:
        module.agreement(run_dir, tmp_path / "no_types.onnx")
    assert str(error.value) == (f"{tmp_path / 'no_types.onnx'} does not take token_type_ids, which the run's batches "
                                f"carry (and its model reads): it was not exported from this run's model as it is now; "
                                f"export it again: python -m quant.export {run_dir} --out DIR --onnx")


def test_onnx_agreement_says_in_one_line_when_onnxruntime_cannot_load_the_model(tmp_path, capsys):
    import onnxruntime

    from quant.quant_module import QuantConfig
    from quant.onnx_export import export_onnx
    from tests.quant.test_onnx_export import tiny

    model, inputs = tiny("resnet18", QuantConfig("fp4", "int8", per_channel=True))
    export_onnx(model, inputs, tmp_path / "fp4.onnx")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text("{}")  # never read further: the model is loaded first
    code = _onnx_agreement_module().main([str(tmp_path / "run"), str(tmp_path / "fp4.onnx")])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == "" and len(captured.err.splitlines()) == 1
    assert captured.err.startswith(f"python examples/onnx_agreement.py: onnxruntime {onnxruntime.__version__} cannot "
                                   f"run {tmp_path / 'fp4.onnx'}: its CPU provider has no DequantizeLinear (opset 23) "
                                   f"kernel for FLOAT4E2M1 (node ")
    assert captured.err.endswith("); export again with --opset 22 --onnx_unsupported float (its fp4_e2m1 layers, and "
                                 "any other format newer than opset 22, in float), or run it with a runtime that "
                                 "implements DequantizeLinear on FLOAT4E2M1\n")


def test_onnx_agreement_compares_a_regression_runs_scores_and_metrics_not_an_accuracy(tmp_path, capsys):
    """stsb (one score per example): an argmax is always class 0, so an "accuracy" meant nothing
    (it printed e.g. 0.3167 against results.json's nan). The scores and the task's metrics are
    compared instead, those of the rebuilt model equal to the ones results.json recorded."""
    import json

    from eval.eval_run import main as run_main
    from quant import export_cli

    (tmp_path / "data").mkdir()
    rows = ["sentence1,sentence2,label"] + [
        f"{'good fine nice' if i % 2 else 'bad awful poor'} movie {i},{'it was' if i % 3 else 'so it is'} {i},"
        f"{(i * 7) % 11 / 2}" for i in range(40)]
    (tmp_path / "data" / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "data" / "dev.csv").write_text("\n".join(rows[:21]) + "\n")
    assert run_main(["--task", "stsb", "--model_type", "bert-tiny", "--from_scratch", "--config_overrides",
                     "num_hidden_layers=1,hidden_size=32,num_attention_heads=2,intermediate_size=64",
                     "--train_file", str(tmp_path / "data" / "train.csv"),
                     "--validation_file", str(tmp_path / "data" / "dev.csv"), "--weight_bits", "8",
                     "--activation_bits", "8", "--max_steps", "4", "--train_batch_size", "8", "--device", "cpu",
                     "--report_to", "none", "--exp_name", "reg", "--output_root_dir", str(tmp_path / "out")]) == 0
    run_dir = tmp_path / "out" / "stsb" / "reg"
    assert export_cli.cli([str(run_dir), "--out", str(tmp_path / "deploy"), "--onnx"]) == 0
    module = _onnx_agreement_module()
    found = module.agreement(run_dir, tmp_path / "deploy" / "model.onnx")
    recorded = json.loads((run_dir / "results.json").read_text())["metrics"]
    assert found["examples"] == 20 and found["regression"] and "accuracy_torch" not in found
    assert 0 <= found["max_prediction_diff"] < 1e-4
    assert list(found["metrics"]) == ["pearson", "spearmanr"]
    for name, (on_torch, on_onnx, on_record) in found["metrics"].items():
        assert on_record == recorded[f"eval_{name}"] and abs(on_torch - on_record) < 1e-6  # the evaluated model
        assert abs(on_onnx - on_torch) < 1e-3
    capsys.readouterr()
    assert module.main([str(run_dir), str(tmp_path / "deploy" / "model.onnx")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "examples               20" and lines[1].startswith("max |prediction diff|  ")
    assert lines[2] == ("accuracy               does not apply (a regression task: one score per example); "
                        "compared instead: the task's metrics")
    pearson = found["metrics"]["pearson"]
    assert lines[3] == (f"pearson                torch {pearson[0]:.4f}, onnx {pearson[1]:.4f} "
                        f"(results.json: {pearson[2]:.4f})")
    assert lines[4].startswith("spearmanr              torch ") and len(lines) == 5
