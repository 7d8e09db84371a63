"""What a run directory holds from earlier runs, and what a new run of it does with that.

A completed run there (`holds_completed_run`) is left alone by a run that fails during setup, and
one run with other flags is replaced only with --overwrite_output_dir (`replaced_run_changes`);
`clear_previous_outputs` removes an earlier run's outputs before this run writes its own;
`interrupted_note` says what an interrupted run left and how to go on from it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eval.results_schema import COMPLETED, RESULTS_NAME

RUN_FILES = (RESULTS_NAME, "output.txt", "model.txt", "config.json")


# How a run the launcher started goes on: the launcher resumes it from its newest checkpoint before
# its last step (eval/launch_cli.py), or starts it again; --overwrite would start it from step 0.
RELAUNCH = ("relaunch the same launcher command (python eval_parallel.py or fliqs-launch) with --skip_completed "
            "(in place of any --overwrite)")


def interrupted_note(run_dir: Path, launched: bool = False) -> str:
    """What an interrupted run left in `run_dir` and how to go on from it (`launched`: the launcher
    started it, and a relaunch with --skip_completed is the way on)."""
    from eval.run_inputs import checkpoint_steps, latest_checkpoint, resumable_checkpoint

    if not run_dir.is_dir():
        return "nothing was written"
    if (run_dir / RESULTS_NAME).is_file():  # interrupted before it replaced an earlier run's, or after
        return f"the results.json in {run_dir} was left as it is"
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        again = f"; to run it again, {RELAUNCH}" if launched else ""
        return f"{run_dir} holds no results.json and no checkpoint (runs save them with --save_steps N){again}"
    done, total = checkpoint_steps(Path(checkpoint))
    if done is None or total is None or done < total:
        if launched:
            return f"{run_dir} holds no results.json; to go on from {Path(checkpoint).name}, {RELAUNCH}"
        return (f"{run_dir} holds no results.json; to go on from {Path(checkpoint).name}, run the same command with "
                f"--resume_from_checkpoint {run_dir} (in place of any it has)")
    # Stopped after its last step (in the final evaluation or while writing its outputs): that
    # checkpoint leaves nothing to train, and a resume from it is refused.
    last = f"{Path(checkpoint).name} is the run's last step ({done}), which leaves nothing to resume"
    previous = resumable_checkpoint(run_dir)
    if previous is None:
        return f"{run_dir} holds no results.json; {last}: " + (f"to run it again, {RELAUNCH}" if launched
                                                                else "run the same command again")
    if launched:
        return f"{run_dir} holds no results.json; {last}: to go on from {Path(previous).name}, {RELAUNCH}"
    return (f"{run_dir} holds no results.json; {last}: to go on from {Path(previous).name}, run the same command "
            f"with --resume_from_checkpoint {previous} (in place of any it has)")


def holds_completed_run(run_dir: Path) -> bool:
    from eval.results import load_run

    return (run_dir / RESULTS_NAME).is_file() and load_run(run_dir).status == COMPLETED


def replaced_run_changes(run_dir: Path, planned: dict[str, Any]) -> str | None:
    """`flag old -> new, ...` when `run_dir` holds a completed run whose flags differ from the
    planned ones in anything that changes results (as the launcher's --skip_completed compares
    them), else None. Default names leave out most flags (--cost_function, --learning_rate,
    --train_file, ...), so two different commands can share a directory."""
    from eval.results import load_run
    from eval.run_compare import changed_flags, list_changes

    previous = load_run(run_dir)
    if previous.status != COMPLETED:
        return None
    diffs = changed_flags(json.loads(json.dumps(planned, default=str)), previous)  # as results.json holds them
    return list_changes(diffs) if diffs else None


def clear_previous_outputs(run_dir: Path, resuming: bool) -> None:
    """Remove what an earlier run of the same name left, so that nothing of it is mixed with this
    run's outputs (a stale "completed" must not survive a crash either). A run resumed from a
    checkpoint of this directory keeps its checkpoints and TensorBoard logs, which it continues."""
    import shutil

    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    stale = [run_dir / "final_model", run_dir / "runs"]  # runs/: where older versions put late logs
    if not resuming:
        stale += [run_dir / "tensorboard", *run_dir.glob("checkpoint-*")]
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path)
