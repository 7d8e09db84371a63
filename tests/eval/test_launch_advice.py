"""The launcher's one line after an interrupted launch: the command that goes on, and what it will
do with each stopped run, read from what the runs left in their directories."""
import json
from pathlib import Path

import pytest

from eval.launch_cli import relaunch_advice
from eval.launch_devices import CPU
from eval.launch_plan import Experiment
from eval.launch_queue import DONE, INTERRUPTED, NOT_STARTED, SKIPPED, Job

COMPLETED = {"schema_version": 1, "status": "completed", "exp_name": "x", "task": "digits", "model_type": "resnet18",
             "method": "float", "args": {}, "main_metric": "eval_accuracy", "metrics": {"eval_accuracy": 0.5},
             "cost": {"memory_mib": 1.0, "gbops": 2.0, "float_memory_mib": 4.0, "float_gbops": 8.0,
                      "cost_type": "memory", "target": None, "ratio": None}, "layers": {}}


def job(root: Path, name: str, state: str, checkpoints: tuple[int, ...] = (), completed: bool = False,
        overwrites: bool = False) -> Job:
    """A job in `state` whose directory holds checkpoints of an 8-step run (and a completed results.json)."""
    run_dir = root / "digits" / name
    run_dir.mkdir(parents=True)
    for step in checkpoints:
        (run_dir / f"checkpoint-{step}").mkdir()
        (run_dir / f"checkpoint-{step}" / "trainer_state.json").write_text(
            json.dumps({"global_step": step, "max_steps": 8}))
    if completed:
        (run_dir / "results.json").write_text(json.dumps(COMPLETED))
    made = Job(Experiment(1, (), (), name, "digits", str(root), None), CPU, state=state)
    made.overwrites = overwrites
    return made


@pytest.mark.parametrize("jobs, skip_completed, overwrite, advice", [
    # The walkthrough's run: stopped after checkpoint-4 of 8.
    ([("a", INTERRUPTED, (4,))], False, False,
     "to go on, run the same command with --skip_completed (1 run goes on from its checkpoint-4)"),
    # A checkpoint of the last step leaves nothing to resume: the one before it is where it goes on.
    ([("a", INTERRUPTED, (4, 8)), ("b", INTERRUPTED, (2,))], False, False,
     "to go on, run the same command with --skip_completed (2 runs go on from their checkpoints)"),
    ([("a", INTERRUPTED, (8,)), ("b", NOT_STARTED, ()), ("c", DONE, ())], False, False,
     "to go on, run the same command with --skip_completed (2 runs start from the beginning)"),
    ([("a", INTERRUPTED, (4,)), ("b", INTERRUPTED, ()), ("c", SKIPPED, ())], True, False,
     "to go on, run the same command again (1 run goes on from its checkpoint-4; 1 run starts from the beginning)"),
    # --overwrite: what this launch completed is kept; the stopped run had replaced its earlier results.
    ([("a", INTERRUPTED, (4,)), ("b", DONE, ())], False, True,
     "to go on, run the same command with --skip_completed in place of --overwrite (1 run goes on from its "
     "checkpoint-4)"),
])
def test_the_way_on_says_what_a_relaunch_does_with_each_stopped_run(tmp_path, jobs, skip_completed, overwrite,
                                                                    advice):
    made = [job(tmp_path, name, state, checkpoints) for name, state, checkpoints in jobs]
    assert relaunch_advice(made, skip_completed, overwrite) == advice


def test_runs_that_still_hold_the_results_overwrite_was_to_replace(tmp_path):
    # --skip_completed would keep the earlier results of a run this launch did not get to replace.
    made = [job(tmp_path, "a", INTERRUPTED, (4,)), job(tmp_path, "b", NOT_STARTED, completed=True, overwrites=True)]
    assert relaunch_advice(made, False, True) == (
        "to go on, run the same command again (it runs every run again; --skip_completed in place of --overwrite "
        "would keep the earlier results of 1 run this launch did not replace)")


def test_no_way_on_is_needed_when_every_run_ended(tmp_path):
    assert relaunch_advice([job(tmp_path, "a", DONE), job(tmp_path, "b", SKIPPED)], False, False) is None
    # Stopped as it was writing its last output: completed, kept by any relaunch.
    assert relaunch_advice([job(tmp_path, "c", INTERRUPTED, (8,), completed=True)], False, False) is None
