"""One run, end to end: `python -m eval.eval_run [flags]` (flags: eval/eval_parse.py).

args -> data -> model -> quantized layers -> Trainer (fixed formats) or ReinforceTrainer (search)
-> train -> final formats fixed -> evaluate -> outputs in {output_root_dir}/{task}/{exp_name}/:
config.json (all args), model.txt, output.txt, final_model/ (HF checkpoint of the trained weights),
TensorBoard logs in tensorboard/, and results.json, written last and atomically. A crash writes
a results.json with status "failed", the error and the traceback; a crash during setup (data,
model, trainer) leaves a completed run of the same name untouched instead. Bad input found during
setup (our own checks of the data files, the model and the trainer's flags: a ValueError raised in
this project's code) is refused like a bad flag: one error line, exit code 2, nothing written or
deleted. So is a run that would replace a completed run of the same directory run with other
flags, unless --overwrite_output_dir.
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Sequence

from eval.eval_parse import parse_run_args, run_prog
from eval.results_schema import COMPLETED, FAILED, RESULTS_NAME, SCHEMA_VERSION
from eval.run_directory import clear_previous_outputs, holds_completed_run, interrupted_note, replaced_run_changes
from eval.run_lock import HANDED_LOCK_ENV, RunDirectoryBusy, holding_run_lock

# Where this project's checks raise from: a ValueError raised in these packages during setup is bad
# input (refused, exit code 2); one raised inside torch, transformers or datasets is a failure.
_OWN_PACKAGES = tuple(str(Path(__file__).resolve().parent.parent / name) + os.sep
                      for name in ("eval", "quant", "cost", "policy", "trainer"))


class RunInputError(ValueError):
    """Bad input found once the run looks at its directory, data or model (a completed run of
    other flags in the way, an empty data file, ...): one error line and exit code 2, as for a bad
    flag, with nothing in the run directory written or deleted. A ValueError, as the checks it
    wraps raised to callers of run() before."""


def run_dir_of(args: argparse.Namespace) -> Path:
    return Path(args.output_root_dir) / args.task / args.exp_name


def _stop_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # the launcher's SIGTERM: stop as Ctrl-C does, saying what is left


def main(argv: Sequence[str] | None = None) -> int:
    try:
        previous = signal.signal(signal.SIGTERM, _stop_as_interrupt)
    except ValueError:  # not the main thread: leave SIGTERM alone
        previous = None
    try:
        return _main(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None) -> int:
    # Started by the launcher, which hands it its directory's lock (eval/run_lock.py reads and
    # drops the variable): an interrupted run's advice is then the launcher's, not eval_run's.
    launched = HANDED_LOCK_ENV in os.environ
    try:
        args = parse_run_args(argv, prog=run_prog())
    except KeyboardInterrupt:  # Ctrl-C while the flags are checked (imports take seconds)
        print(f"{run_prog()}: interrupted before the run started; nothing was written", file=sys.stderr)
        return 130
    if args.cuda_visible_devices is not None:  # before anything initialises CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = args.cuda_visible_devices
    from eval.run_args import check_device_flags

    try:  # here, not in parse_run_args: a launcher validates its plan on another process or machine
        check_device_flags(args)
    except ValueError as error:
        print(f"{run_prog()}: error: {error} (see --help)", file=sys.stderr)
        return 2
    try:
        results = run(args)
    except RunDirectoryBusy as error:  # the other run's directory is left alone: no results.json
        print(f"{run_prog()}: error: {error}", file=sys.stderr)
        return 1
    except RunInputError as error:  # as a bad flag: nothing in the run directory changed
        print(f"{run_prog()}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: one line on what is left, not a traceback
        print(f"{run_prog()}: interrupted; {interrupted_note(run_dir_of(args), launched)}", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - reported in results.json and as one line
        run_dir = run_dir_of(args)
        where = ""  # only rank 0 writes the run directory: other ranks cannot tell what it holds
        if _is_main_process() and holds_completed_run(run_dir):  # failed before it replaced anything
            where = f" (the completed run in {run_dir} was left as it was)"
        elif _is_main_process() and (run_dir / RESULTS_NAME).is_file():
            where = f" (traceback in {run_dir / RESULTS_NAME})"
        print(f"{run_prog()}: error: {type(error).__name__}: {error}{where}", file=sys.stderr)
        return 1
    finally:
        _destroy_process_group()
    if results["status"] != COMPLETED:  # e.g. non-finite evaluation metrics
        print(f"{run_prog()}: error: {results['error']} (status {results['status']} in "
              f"{run_dir_of(args) / RESULTS_NAME})", file=sys.stderr)
        return 1
    return 0


def _destroy_process_group() -> None:
    """Under torch.distributed.run the Trainer opens a process group; close it before the
    interpreter exits (torch asks for this: backend threads can otherwise outlive the objects
    they use during finalization)."""
    distributed = sys.modules.get("torch.distributed")  # never import torch just for this
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Execute the run `args` describes (already validated by parse_run_args); return results.

    Data, model and trainer are set up before anything in the run directory changes: a run
    that fails there leaves a completed run of the same name as it was. One run at a time per
    directory (eval/run_lock.py): RunDirectoryBusy, with nothing changed, if another holds it.
    RunInputError, with nothing changed, for a completed run of other flags in the directory
    (without --overwrite_output_dir) or bad input found while loading the data and model."""
    start = time.time()
    run_dir = run_dir_of(args)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not _is_main_process():  # rank 0 holds the directory's lock for every rank
        return _run_locked(args, run_dir, start)
    with holding_run_lock(run_dir):  # before anything in the directory changes
        return _run_locked(args, run_dir, start)


def _run_locked(args: argparse.Namespace, run_dir: Path, start: float) -> dict[str, Any]:
    from eval.run_outputs import failed_results, write_json

    # A run resumed from its own checkpoint continues its checkpoints and logs; one resumed from
    # another run's starts this directory afresh like a new run.
    resuming = args.resume_from_checkpoint is not None and \
        run_dir.resolve() in Path(args.resume_from_checkpoint).resolve().parents
    # Before loading anything, with the flags as given (as the launcher compares them). A resume
    # of this directory's own checkpoint was checked against its config.json when parsed.
    replaced = None if resuming or not _is_main_process() else replaced_run_changes(run_dir, vars(args))
    if replaced and not args.overwrite_output_dir:
        raise RunInputError(f"{run_dir} holds a completed run that was run with other flags ({replaced}); give "
                            "--exp_name NAME to keep both, or pass --overwrite_output_dir to replace it")
    try:
        prepared = _prepare(args)
    except Exception as error:
        if isinstance(error, ValueError) and _raised_by_own_checks(error):
            # Bad input (an empty data file, a model the flags do not fit): refused like a bad
            # flag, before anything is written; a completed run or checkpoints stay as they were
            # (said where --overwrite_output_dir meant to replace it).
            left = (f" (the completed run in {run_dir} was left as it was)" if args.overwrite_output_dir
                    and _is_main_process() and holds_completed_run(run_dir) else "")
            raise RunInputError(f"{error}{left}") from error
        if _is_main_process() and not holds_completed_run(run_dir):
            clear_previous_outputs(run_dir, resuming)
            write_json(run_dir / "config.json", vars(args))
            write_json(run_dir / RESULTS_NAME, failed_results(vars(args), error, traceback.format_exc(),
                                                              time.time() - start))
        raise
    if _is_main_process():
        if replaced:
            print(f"{run_prog()}: note: replacing the completed run {run_dir}, which was run with other flags "
                  f"({replaced}), as --overwrite_output_dir asks", file=sys.stderr)
        clear_previous_outputs(run_dir, resuming)
        # With what the run resolved itself (device, delay, policy learning rate).
        write_json(run_dir / "config.json", vars(args))
    try:
        return _run(args, prepared, run_dir, start)
    except Exception as error:
        if _is_main_process():
            write_json(run_dir / RESULTS_NAME, failed_results(vars(args), error, traceback.format_exc(),
                                                              time.time() - start))
        raise


def last_step_evaluation(state: Any) -> dict[str, Any] | None:
    """The metrics of an evaluation the Trainer logged at its last step (as `evaluate()` returns
    them: the log entry without its step), or None if it logged none there."""
    for entry in reversed(state.log_history):
        if any(key.startswith("eval_") for key in entry):
            if entry.get("step") != state.global_step:
                return None
            return {key: value for key, value in entry.items() if key != "step"}
    return None


# What the Trainer's evaluate() reports besides the metrics themselves.
TRAINER_EVAL_KEYS = ("eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "epoch")


def _best_checkpoint(args: argparse.Namespace, trainer: Any) -> dict[str, Any] | None:
    """With --save_strategy best: the checkpoint with the best evaluation (its folder in the run
    directory, the metric and its value). final_model/ and `metrics` stay the last step's."""
    state = trainer.state
    if args.save_strategy != "best" or state.best_model_checkpoint is None:
        return None
    return {"checkpoint": Path(state.best_model_checkpoint).name, "metric": trainer.args.metric_for_best_model,
            "value": state.best_metric}


def main_metric_of(metrics: dict[str, Any], task_main_metric: str) -> str:
    """The task's main metric, or with --metric (whose keys are its own) that metric's first
    value; eval_loss when it reports nothing else."""
    if task_main_metric in metrics:
        return task_main_metric
    own = [key for key in metrics if key not in TRAINER_EVAL_KEYS]
    return own[0] if own else "eval_loss"


def missed_target_note(args: argparse.Namespace, ratio: float) -> str | None:
    """A note when the answer's cost is outside the band --final_selection constrained aims for
    (e.g. a single decision whose formats give 0.4, 0.8 or 1.6 of the default target). Under
    --final_selection argmax, which ignores --target_tolerance (a run given it is told at the
    start), the band is only what constrained would look in."""
    from trainer.final_selection import cost_band, is_one_sided

    low, high = cost_band(1.0, args.target_tolerance, one_sided=is_one_sided(args.cost_function))
    if low <= ratio <= high:
        return None
    band = f"at most {high:g}" if low == float("-inf") else f"{low:g} to {high:g}"
    if args.final_selection != "constrained":
        return (f"note: the answer's cost is {ratio:.3f} of the target: --final_selection {args.final_selection} "
                f"takes every decision's most likely format and does not aim for the target; --final_selection "
                f"constrained takes the most likely answer costing {band} of it (--target_tolerance "
                f"{args.target_tolerance:g}), where the search space has one")
    return (f"note: the answer's cost is {ratio:.3f} of the target, outside {band} (--target_tolerance "
            f"{args.target_tolerance:g}): the search found no assignment inside; check --cost_target/--cost_target_bits "
            f"against the search space")


def _raised_by_own_checks(error: BaseException) -> bool:
    """Whether `error` was raised by a `raise` statement of this project's code (its innermost
    frame): one of its checks refusing the input. Not an error raised inside a library it called,
    nor one the interpreter or a C function raised in its code (an unpacking or int() bug), which
    stay failures with their traceback."""
    import linecache

    trace = error.__traceback__
    if trace is None:
        return False
    while trace.tb_next is not None:
        trace = trace.tb_next
    filename = trace.tb_frame.f_code.co_filename
    if not os.path.realpath(filename).startswith(_OWN_PACKAGES):
        return False
    return linecache.getline(filename, trace.tb_lineno).lstrip().startswith("raise ")


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _prepare(args: argparse.Namespace) -> tuple[Any, Any]:
    """(setup, trainer): data and model loaded, trainer built; nothing written to the run
    directory yet. Resolves args.device (and, for a search, its delay and policy learning rate)."""
    import torch
    import transformers

    from eval.metrics import build_compute_metrics
    from eval.run_setup import load_data_and_model
    from eval.run_trainer import build_trainer

    transformers.set_seed(args.seed)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    setup = load_data_and_model(args)
    trainer = build_trainer(args, setup, run_dir_of(args), build_compute_metrics(setup.task, args.metric))
    return setup, trainer


def _run(args: argparse.Namespace, prepared: tuple[Any, Any], run_dir: Path, start: float) -> dict[str, Any]:
    from cost.model_cost import current_assignment, layer_costs
    from eval.run_outputs import atomic_write_text, package_versions, summary_text, write_json
    from eval.run_trainer import close_tensorboard
    from quant.surgery import has_low_bit_layers, quantized_layers

    setup, trainer = prepared
    device = args.device
    if _is_main_process():
        (run_dir / "model.txt").write_text(str(setup.model) + "\n")
    if not args.eval_only:
        trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    search = None
    recalibrated = 0
    if args.mode == "search":
        recalibrated = trainer.finalize_search(args.bn_recalibration_batches)
        if _is_main_process():  # now with the formats it found (before: the search's placeholders)
            (run_dir / "model.txt").write_text(str(setup.model) + "\n")
    # An evaluation the Trainer ran at the last step saw this very model (a search's evaluations
    # use its final assignment), unless the BatchNorm statistics were re-estimated since: its
    # metrics are the final ones, and a second pass over the evaluation set would repeat them.
    reusable = not (recalibrated or args.eval_only or trainer.args.load_best_model_at_end)  # else another model
    metrics = last_step_evaluation(trainer.state) if reusable else None
    if metrics is None:
        metrics = trainer.evaluate()
    close_tensorboard(trainer)  # flushes the final evaluation's events
    if args.mode == "search":
        decisions = trainer.final_decisions()
        search = {
            "granularity": args.granularity, "search_space": list(args.search_formats),
            "weight_only": args.weight_only_search,
            "decisions": {name: {"layers": list(d.layers), "format": d.format, "probabilities": d.probabilities}
                          for name, d in decisions.items()},
            "cost_function": args.cost_function, "cost_beta": args.cost_beta,
            "reward_metric": args.reward_metric, "reward_source": args.reward_source,
            "advantage": args.advantage, "final_selection": args.final_selection,
            "steps": trainer.state.global_step,
            "non_finite_steps": trainer.non_finite_steps,
        }

    layers = quantized_layers(setup.model)
    costs = {c.name: c for c in layer_costs(layers)}
    from cost.model_cost import model_cost

    total = model_cost(list(costs.values()), current_assignment(layers))
    target = setup.cost_target
    results = {
        "schema_version": SCHEMA_VERSION, "status": COMPLETED, "error": None, "traceback": None,
        "exp_name": args.exp_name, "task": args.task, "model_type": args.model_type, "method": args.mode,
        "args": vars(args), "main_metric": main_metric_of(metrics, setup.task.main_metric), "metrics": metrics,
        "cost": {"memory_mib": total.memory_mib, "gbops": total.gbops, "float_memory_mib": total.float_memory_mib,
                 "float_gbops": total.float_gbops, "cost_type": args.cost_type, "target": target,
                 "ratio": None if target is None else total.value(setup.cost_type) / target},
        "layers": {name: {"weight_format": layer.weight_format.name, "act_format": layer.act_format.name,
                          "num_weights": costs[name].num_weights, "macs_per_sample": costs[name].macs_per_sample,
                          "memory_mib": layer.memory_cost(), "gbops": layer.compute_cost()}
                   for name, layer in layers.items()},
        "search": search, "best_checkpoint": _best_checkpoint(args, trainer),
        "wall_time_s": time.time() - start, "versions": package_versions(), "device": device,
    }
    if not all(math.isfinite(v) for v in metrics.values() if isinstance(v, float)):
        results["status"], results["error"] = FAILED, "non-finite evaluation metrics"
    if args.mode == "search" and trainer.is_world_process_zero():
        note = missed_target_note(args, results["cost"]["ratio"])
        if note is not None:
            print(f"{run_prog()}: {note}", file=sys.stderr)
    if trainer.is_world_process_zero():
        trainer.save_model(str(run_dir / "final_model"))
        if setup.processor is not None:
            setup.processor.save_pretrained(str(run_dir / "final_model"))
        if args.export_dir is not None and not has_low_bit_layers(layers):  # e.g. 'none,8' that chose none everywhere
            print(f"{run_prog()}: note: every layer ended at format none: no low-bit checkpoint to write to "
                  f"--export_dir {args.export_dir} (final_model/ holds the float weights)", file=sys.stderr)
        elif args.export_dir is not None:
            from quant.eval_autocast import autocast_dtype_of_run
            from quant.export import ExportWriteError, export_quantized_checkpoint

            try:
                report = export_quantized_checkpoint(setup.model.cpu(), args.export_dir, processor=setup.processor,
                                                     autocast_dtype=autocast_dtype_of_run(vars(args)))
            except Exception as error:  # noqa: BLE001 - the run's metrics and model stay; the export alone failed
                results["status"], results["traceback"] = FAILED, traceback.format_exc()
                # An ExportWriteError names the file: no type to add (nor its CLI's --out)
                why = error.what if isinstance(error, ExportWriteError) else f"{type(error).__name__}: {error}"
                results["error"] = (f"the export to --export_dir {args.export_dir} failed ({why}); the trained model is in {run_dir / 'final_model'}: export it with "
                                    f"python -m quant.export {run_dir} --out DIR")
            else:
                results["export"] = {"dir": args.export_dir, **report.to_dict()}
        text = summary_text(results)
        # results.json first: it is the run's status of record, and output.txt, its summary, must
        # not say "completed" for a run stopped before results.json was written.
        write_json(run_dir / RESULTS_NAME, results)
        atomic_write_text(run_dir / "output.txt", text)
        print(text)
    return results


def load_run_model(run_dir: str | os.PathLike):
    """The final evaluated model of a finished run (quantized layers at their final formats, on
    CPU, in eval mode) and its tokenizer or image processor (or None)."""
    from eval.run_setup import rebuild_run_model

    return rebuild_run_model(Path(run_dir))


if __name__ == "__main__":
    raise SystemExit(main())
