"""eval_parallel.py end to end: real tiny runs on 2 CPU workers, and a fake run script (started
exactly like eval_run, through `run_entry`) for device assignment over time, resuming, and Ctrl-C."""
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from eval.launch_cli import main
from eval.results import load_run
from tests.readme_commands import readme_commands
from tests.eval.test_eval_run import setting

REPO = Path(__file__).resolve().parent.parent
TINY = ["--task", "digits", "--model_type", "resnet18", "--config_overrides",
        "depths=[1,1,1,1],hidden_sizes=[8,8,8,8],embedding_size=8", "--max_steps", "3", "--max_train_samples", "64",
        "--max_eval_samples", "32", "--train_batch_size", "16", "--search_space", "4,8", "--report_to", "none"]
NAME = "resnet18_search_int4-int8_layer_memory_t6b"  # default exp_name of TINY, without the seed
# The original README's four examples, as the README gives them (without "python eval_parallel.py").
README_EXAMPLES = [" ".join(command.split()[2:]) for command in readme_commands()
                   if command.startswith("python eval_parallel.py --task") and "--output_root_dir output" in command]

# Stands in for eval_run: FAKE_RUN_MODE maps a seed (or "*") to ok | fail | hang. It records what the
# launcher gave it (devices, threads, times) and writes results.json like a real run.
FAKE_RUN = r'''
import argparse, json, os, subprocess, sys, time
from pathlib import Path

parser = argparse.ArgumentParser()
for flag in ("--task", "--output_root_dir", "--exp_name", "--seed"):
    parser.add_argument(flag)
args, _ = parser.parse_known_args()
run_dir = Path(args.output_root_dir) / args.task / args.exp_name
modes = json.loads(os.environ.get("FAKE_RUN_MODE", "{}"))
mode = modes.get(args.seed, modes.get("*", "ok"))
with open(Path(args.output_root_dir) / "starts.log", "a") as log:
    log.write(args.exp_name + "\n")
record = {"start": time.time(), "pid": os.getpid(), "argv": sys.argv[1:],
          "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "omp": os.environ.get("OMP_NUM_THREADS")}
if mode == "hang":
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)  # like a torch.distributed rank
    (run_dir / "pids.json").write_text(json.dumps([os.getpid(), child.pid]))
    time.sleep(60)
time.sleep(float(os.environ.get("FAKE_RUN_SLEEP", "0.2")))
record["end"] = time.time()
(run_dir / "record.json").write_text(json.dumps(record))
if mode == "fail":
    (run_dir / "results.json").write_text(json.dumps({"schema_version": 1, "status": "failed",
                                                      "error": "ValueError: seed " + args.seed + " is cursed"}))
    print("eval_run: error: ValueError: cursed", file=sys.stderr)
    sys.exit(1)
cost = {"memory_mib": 1.0, "gbops": 2.0, "float_memory_mib": 4.0, "float_gbops": 8.0, "cost_type": "memory",
        "target": None, "ratio": None}
(run_dir / "results.json").write_text(json.dumps({
    "schema_version": 1, "status": "completed", "exp_name": args.exp_name, "task": args.task,
    "model_type": "resnet18", "method": "float", "args": {}, "main_metric": "eval_accuracy",
    "metrics": {"eval_accuracy": int(args.seed) / 100}, "cost": cost, "layers": {}}))
(run_dir / "output.txt").write_text("summary of " + args.exp_name + "\n")
print("fake run ok")
'''


@pytest.fixture
def fake_run(tmp_path):
    script = tmp_path / "fake_run.py"
    script.write_text(FAKE_RUN)
    return str(script)


def launch(capsys, argv, **kwargs):
    code = main([str(a) for a in argv], **kwargs)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def starts(root: Path) -> list[str]:
    return (root / "starts.log").read_text().split()


def test_fake_gpus_are_never_double_booked_over_time(tmp_path, fake_run, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_RUN_SLEEP", "0.4")
    root = tmp_path / "out"
    argv = [*TINY, "--output_root_dir", root, "--sweep", "seed=1,2,3,4,5,6,7", "--gpus", "2,0,3"]
    code, out, _ = launch(capsys, argv, available_gpus=["0", "1", "2", "3"], run_entry=[fake_run])
    assert code == 0, out
    records = []
    for seed in range(1, 8):
        run_dir = root / "digits" / f"{NAME}_s{seed}"
        record = json.loads((run_dir / "record.json").read_text())
        records.append(record)
        log = (run_dir / "stdout.log").read_text().splitlines()
        assert log[0].startswith(f"# CUDA_VISIBLE_DEVICES={record['cuda']} {sys.executable} -u {fake_run} ")
        assert log[1:] == ["fake run ok"]
        assert record["argv"][-2:] == ["--exp_name", f"{NAME}_s{seed}"]
        assert "--cuda_visible_devices" not in record["argv"]
        assert record["omp"] == os.environ.get("OMP_NUM_THREADS")  # GPU runs keep the caller's threads
    assert {r["cuda"] for r in records} <= {"2", "0", "3"}
    assert [r["cuda"] for r in records[:3]] == ["2", "0", "3"]  # first wave: one run per GPU, in --gpus order
    for i, a in enumerate(records):
        for b in records[i + 1:]:
            if a["start"] < b["end"] and b["start"] < a["end"]:
                assert a["cuda"] != b["cuda"], (a, b)
    assert "7 run(s): 7 done" in out


def test_skip_completed_reruns_only_missing_and_failed_runs(tmp_path, fake_run, capsys, monkeypatch):
    root = tmp_path / "out"
    argv = [*TINY, "--device", "cpu", "--output_root_dir", root, "--sweep", "seed=1,2,3,4", "--workers", "2"]
    monkeypatch.setenv("FAKE_RUN_MODE", json.dumps({"2": "fail"}))
    code, out, _ = launch(capsys, argv, run_entry=[fake_run])
    assert code == 1
    assert re.search(rf"failed: {NAME}_s2: exit code 1: ValueError: seed 2 is cursed \(log: .*/stdout.log\)", out)
    assert "4 run(s): 3 done, 1 failed" in out
    (root / "digits" / f"{NAME}_s3" / "results.json").unlink()  # as if killed before writing it
    kept = root / "digits" / f"{NAME}_s1" / "results.json"
    mtime = kept.stat().st_mtime_ns

    monkeypatch.setenv("FAKE_RUN_MODE", "{}")
    code, out, _ = launch(capsys, [*argv, "--skip_completed"], run_entry=[fake_run])
    assert code == 0
    assert sorted(starts(root)) == sorted([f"{NAME}_s{s}" for s in (1, 2, 3, 4)] + [f"{NAME}_s2", f"{NAME}_s3"])
    assert kept.stat().st_mtime_ns == mtime
    assert "4 run(s): 2 done, 2 skipped" in out
    assert f"[1/4] skipped     {NAME}_s1  already completed" in out


def test_dry_run_prints_the_exact_commands_and_runs_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(REPO)
    root = tmp_path / "out"
    code, out, _ = launch(capsys, [*TINY, "--device", "cpu", "--output_root_dir", root, "--sweep", "seed=1,2,3",
                                   "--workers", "2", "--dry_run"])
    assert code == 0
    expected = [
        "# 3 run(s), 3 to start on 2 CPU worker(s), OMP_NUM_THREADS=1 each",
        "# devices assume runs of equal length (at run time each run takes the next free slot); master ports are "
        "picked when a run starts"]
    for seed in (1, 2, 3):
        command = [sys.executable, "-u", "-m", "eval.eval_run", *TINY, "--device", "cpu", "--output_root_dir",
                   str(root), "--seed", str(seed), "--exp_name", f"{NAME}_s{seed}"]
        expected.append("CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=1 " + shlex.join(command))
    assert out.splitlines() == expected
    assert not root.exists()


def test_dry_run_with_k_gpus_per_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    code, out, _ = launch(capsys, [*TINY, "--output_root_dir", tmp_path, "--sweep", "seed=1,2,3", "--num_gpus", "4",
                                   "--gpus_per_run", "2", "--dry_run"], available_gpus=["0", "1", "2", "3", "4"])
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "# 3 run(s), 3 to start on GPUs 0,1,2,3, 2 per run"
    pattern = (r"CUDA_VISIBLE_DEVICES=(\S+) " + re.escape(f"{sys.executable} -u -m torch.distributed.run "
                                                          "--nproc_per_node 2 --master_port ")
               + r"(\d+) -m eval\.eval_run .* --seed (\d) --exp_name " + NAME + r"_s\3$")
    matches = [re.match(pattern, line) for line in lines[2:]]
    assert all(matches), lines
    assert [m.group(1) for m in matches] == ["0,1", "2,3", "0,1"]
    assert len({m.group(2) for m in matches}) == 3  # a distinct rendezvous port per run


def completed_sweep(tmp_path, fake_run, capsys, seeds: str, redo: str) -> tuple[Path, list]:
    """(output root, launch flags) of a fake sweep over `seeds` that completed, then had the
    results.json of seed `redo` removed (a run to start again)."""
    root = tmp_path / "out"
    argv = [*TINY, "--device", "cpu", "--output_root_dir", root, "--sweep", f"seed={seeds}"]
    assert launch(capsys, argv, run_entry=[fake_run])[0] == 0
    (root / "digits" / f"{NAME}_s{redo}" / "results.json").unlink()
    return root, argv


def test_skip_completed_dry_run_lists_what_it_skips(tmp_path, fake_run, capsys):
    root, argv = completed_sweep(tmp_path, fake_run, capsys, seeds="1,2", redo="2")
    code, out, _ = launch(capsys, [*argv, "--skip_completed", "--dry_run"], run_entry=[fake_run])
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("# 2 run(s), 1 to start, 1 already completed on 1 CPU worker(s)")
    assert lines[2] == f"# skip (completed): {root}/digits/{NAME}_s1"
    assert lines[3].endswith(f"--exp_name {NAME}_s2") and len(lines) == 4


def test_completed_runs_refuse_a_launch_without_skip_or_overwrite(tmp_path, fake_run, capsys):
    root, argv = completed_sweep(tmp_path, fake_run, capsys, seeds="1,2,3", redo="1")  # one to redo, two completed
    message = (f"eval_parallel: error: 2 runs already completed (first: {root}/digits/{NAME}_s2); pass "
               "--skip_completed to keep them or --overwrite to run them again\n")
    for extra in ([], ["--dry_run"]):
        assert launch(capsys, [*argv, *extra], run_entry=[fake_run]) == (2, "", message)
    assert len(starts(root)) == 3  # nothing started again
    code, out, err = launch(capsys, [*argv, "--skip_completed", "--overwrite"], run_entry=[fake_run])
    assert (code, out) == (2, "")
    assert err == ("eval_parallel: error: --skip_completed keeps completed runs and --overwrite runs them again; give "
                   "one of them\n")


HOLDER = rf"pid {os.getpid()}, since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d"  # holding_run_lock in this process


def test_a_run_another_process_is_running_is_never_started_again(tmp_path, fake_run, capsys, monkeypatch):
    from eval.run_lock import holding_run_lock

    root = tmp_path / "out"
    argv = [*TINY, "--device", "cpu", "--output_root_dir", root, "--sweep", "seed=1,2,3"]
    busy = root / "digits" / f"{NAME}_s1"
    with holding_run_lock(busy):  # as eval_run holds it while it runs
        for extra, again in (([], ""), (["--dry_run"], ""), (["--overwrite"], " before --overwrite runs it again")):
            code, out, err = launch(capsys, [*argv, *extra], run_entry=[fake_run])
            assert (code, out) == (2, "")
            assert re.fullmatch(rf"eval_parallel: error: 1 planned run is being run by another process now \({busy}, "
                                rf"{HOLDER}\); wait for it to finish{again}, or pass --skip_completed to leave it to "
                                r"that process and start the others\n", err), err
        assert not (root / "starts.log").exists()
        code, out, err = launch(capsys, [*argv, "--skip_completed", "--dry_run"], run_entry=[fake_run])
        lines = out.splitlines()
        assert (code, err) == (0, "")
        assert lines[0].startswith("# 3 run(s), 2 to start, 1 running elsewhere on 1 CPU worker(s)")
        assert re.fullmatch(rf"# skip \(running elsewhere, {HOLDER}\): {busy}", lines[2]), lines[2]
        assert [line.split()[-1] for line in lines[3:]] == [f"{NAME}_s2", f"{NAME}_s3"]
        monkeypatch.setenv("FAKE_RUN_MODE", json.dumps({"3": "fail"}))
        code, out, _ = launch(capsys, [*argv, "--skip_completed"], run_entry=[fake_run])
        assert code == 1 and "3 run(s): 1 done, 1 failed, 1 running elsewhere" in out
        monkeypatch.setenv("FAKE_RUN_MODE", "{}")
        code, out, _ = launch(capsys, [*argv, "--skip_completed"], run_entry=[fake_run])
    # Left to the other run, it is neither a failure nor run twice: exit code 0 once the rest completed.
    assert code == 0 and "3 run(s): 1 done, 1 skipped, 1 running elsewhere" in out
    assert re.search(rf"\[1/3\] elsewhere   {NAME}_s1  not started: another process is running it \({HOLDER}\)\n", out)
    assert re.search(rf"\nrunning elsewhere: {NAME}_s1: {HOLDER}; not started by this launch, its results will be in "
                     rf"{busy}/results.json\n", out)
    assert starts(root) == [f"{NAME}_s2", f"{NAME}_s3", f"{NAME}_s3"]
    assert not (busy / "stdout.log").exists()
    # The lock is gone with its holder: the run starts now.
    code, out, _ = launch(capsys, [*argv, "--skip_completed"], run_entry=[fake_run])
    assert code == 0 and "3 run(s): 1 done, 2 skipped" in out


def test_a_run_held_by_a_process_that_started_after_planning_is_left_to_it(tmp_path, fake_run, capsys):
    from eval.launch_cli import launch as launch_jobs, make_jobs, prepare
    from eval.run_lock import holding_run_lock

    root = tmp_path / "out"
    _, experiments, resources = prepare([*TINY, "--device", "cpu", "--output_root_dir", str(root), "--sweep",
                                         "seed=1,2"], available_gpus=[])
    jobs = make_jobs(experiments, resources)
    busy = root / "digits" / f"{NAME}_s1"
    busy.mkdir(parents=True)
    (busy / "results.json").write_text('{"status": "failed"}')  # the other run's, not to be removed
    with holding_run_lock(busy):
        code = launch_jobs(jobs, resources, sys.stdout, run_entry=[fake_run])
    out = capsys.readouterr().out
    # As if found when planned with --skip_completed: not a failure of this launch.
    assert code == 0 and starts(root) == [f"{NAME}_s2"]
    assert "2 run(s): 1 done, 1 running elsewhere" in out
    assert re.search(rf"\[1/2\] elsewhere   {NAME}_s1  not started: another process is running it \({HOLDER}\)\n", out)
    assert re.search(rf"\nrunning elsewhere: {NAME}_s1: {HOLDER}; not started by this launch, its results will be in "
                     rf"{busy}/results.json\n", out), out
    assert (busy / "results.json").read_text() == '{"status": "failed"}' and not (busy / "stdout.log").exists()


def _files(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if p.is_file()}


def wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_run_another_launch_started_a_moment_before_is_left_to_it(tmp_path, fake_run, capsys, monkeypatch):
    """Two launches of one sweep started together: both plan before either run holds its lock (eval_run
    takes it after its imports, seconds after its start). The second launch must neither start the
    run again (it failed with 'busy' once its run got that far) nor write in the first one's directory."""
    from eval.launch_cli import launch as launch_jobs, make_jobs, prepare
    from eval.launch_devices import CPU, Slot
    from eval.launch_queue import SubprocessStarter
    from eval.run_lock import run_lock_holder

    root = tmp_path / "out"
    _, experiments, resources = prepare([*TINY, "--device", "cpu", "--output_root_dir", str(root), "--sweep",
                                         "seed=1,2"], available_gpus=[])
    first, second = make_jobs(experiments, resources), make_jobs(experiments, resources)  # nothing locked yet
    run_dir = first[0].experiment.run_dir
    # The first launch starts s1; its run locks nothing itself (still importing, as it were).
    monkeypatch.setenv("FAKE_RUN_MODE", json.dumps({"1": "hang"}))
    process = SubprocessStarter(1, [fake_run])(first[0], Slot(CPU, (), 0))
    try:
        assert wait_for(lambda: (run_dir / "pids.json").is_file())
        before = _files(run_dir)
        monkeypatch.setenv("FAKE_RUN_MODE", "{}")
        code = launch_jobs(second, resources, sys.stdout, run_entry=[fake_run])
        out = capsys.readouterr().out
        holder = rf"pid {process.pid}, since \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d"  # the first launch's run
        assert [job.state for job in second] == ["elsewhere", "done"] and code == 0
        assert starts(root) == [f"{NAME}_s1", f"{NAME}_s2"]  # s1 once: the first launch's
        assert "2 run(s): 1 done, 1 running elsewhere" in out and "failed" not in out
        assert re.search(rf"\[1/2\] elsewhere   {NAME}_s1  not started: another process is running it \({holder}\)\n",
                         out), out
        assert re.search(rf"\nrunning elsewhere: {NAME}_s1: {holder}; not started by this launch", out), out
        assert _files(run_dir) == before  # its stdout.log (one `# command` header), lock and files untouched
        assert [line for line in before["stdout.log"].decode().splitlines() if line.startswith("# ")] == \
            [f"# {first[0].command_line}"]
    finally:
        process.kill()
    assert wait_for(lambda: not process.alive()) and wait_for(lambda: run_lock_holder(run_dir) is None)


def test_a_single_run_prints_its_own_summary_before_the_table(tmp_path, fake_run, capsys):
    root = tmp_path / "out"
    code, out, _ = launch(capsys, [*TINY, "--device", "cpu", "--output_root_dir", root, "--seed", "42"],
                          run_entry=[fake_run])
    assert code == 0 and f"\nsummary of {NAME}_s42\n" in out
    assert out.index("summary of") < out.rindex(f"{NAME}_s42  done")  # then the summary table
    code, out, _ = launch(capsys, [*TINY, "--device", "cpu", "--output_root_dir", root, "--sweep", "seed=1,2"],
                          run_entry=[fake_run])
    assert code == 0 and "summary of" not in out  # several runs: the table only


def test_overwrite_runs_completed_runs_again(tmp_path, fake_run, capsys):
    root, argv = completed_sweep(tmp_path, fake_run, capsys, seeds="1,2", redo="2")
    code, out, _ = launch(capsys, [*argv, "--overwrite", "--dry_run"], run_entry=[fake_run])
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("# 2 run(s), 2 to start (1 completed, to overwrite) on 1 CPU worker(s)")
    assert lines[2] == f"# overwrite (completed): {root}/digits/{NAME}_s1" and len(lines) == 5
    # eval_run refuses to replace a completed run of other flags without --overwrite_output_dir: the
    # launcher passes it to the run it replaces (only to it).
    assert lines[3].endswith(f"--exp_name {NAME}_s1 --overwrite_output_dir")
    assert lines[4].endswith(f"--exp_name {NAME}_s2")
    code, out, _ = launch(capsys, [*argv, "--overwrite"], run_entry=[fake_run])
    assert code == 0 and "2 run(s): 2 done" in out
    assert starts(root) == [f"{NAME}_s1", f"{NAME}_s2"] * 2
    argvs = [json.loads((root / "digits" / f"{NAME}_s{seed}" / "record.json").read_text())["argv"] for seed in (1, 2)]
    assert [argv[-1] for argv in argvs] == ["--overwrite_output_dir", f"{NAME}_s2"]


def test_a_rerun_that_fails_keeps_the_completed_run_and_both_logs(tmp_path, fake_run, capsys, monkeypatch):
    # The launcher used to delete results.json before starting a run: a rerun that failed while it
    # set up (when eval_run keeps the completed run) lost it all the same.
    root = tmp_path / "out"
    argv = [*TINY, "--device", "cpu", "--output_root_dir", root, "--sweep", "seed=1"]
    assert launch(capsys, argv, run_entry=[fake_run])[0] == 0
    run_dir = root / "digits" / f"{NAME}_s1"
    completed = (run_dir / "results.json").read_bytes()
    keep_results = FAKE_RUN.replace('if mode == "fail":\n    (run_dir / "results.json").write_text(',
                                    'if mode == "fail":\n    (run_dir / "ignored.json").write_text(')
    (tmp_path / "keeping_run.py").write_text(keep_results)
    monkeypatch.setenv("FAKE_RUN_MODE", json.dumps({"*": "fail"}))
    code, out, _ = launch(capsys, [*argv, "--overwrite"], run_entry=[str(tmp_path / "keeping_run.py")])
    assert code == 1 and f"failed: {NAME}_s1: exit code 1; last line of stdout.log: eval_run: error: ValueError: " \
        "cursed" in out
    assert (run_dir / "results.json").read_bytes() == completed
    log = (run_dir / "stdout.log").read_text().splitlines()
    assert [line.startswith("# CUDA_VISIBLE_DEVICES=") for line in log] == [True, False, True, False]
    assert log[1::2] == ["fake run ok", "eval_run: error: ValueError: cursed"]


def test_a_relaunch_that_dies_early_is_not_blamed_on_the_failure_before_it(tmp_path, fake_run, capsys, monkeypatch):
    root = tmp_path / "out"
    argv = [*TINY, "--device", "cpu", "--output_root_dir", root, "--sweep", "seed=7"]
    monkeypatch.setenv("FAKE_RUN_MODE", json.dumps({"7": "fail"}))
    assert launch(capsys, argv, run_entry=[fake_run])[0] == 1  # leaves a failed results.json
    dies = tmp_path / "dies.py"
    dies.write_text("import sys\nprint('eval_run: error: --device cuda: no CUDA device is visible')\nsys.exit(2)\n")
    code, out, _ = launch(capsys, [*argv, "--skip_completed"], run_entry=[str(dies)])
    assert code == 1 and "cursed" not in out
    assert f"failed: {NAME}_s7: refused its input before starting (exit code 2): eval_run: error: --device cuda: " \
        "no CUDA device is visible" in out
    assert not (root / "digits" / f"{NAME}_s7" / "results.json").exists()


def test_notes_of_the_runs_are_shown_once(tmp_path, capsys):
    argv = [*TINY, "--output_root_dir", tmp_path, "--sweep", "search_space=4;4,8", "--sweep", "seed=1,2", "--dry_run"]
    code, _, err = launch(capsys, argv)
    assert code == 0
    assert err == ("eval_parallel: note: experiments 1, 2: --search_space 4 has one format (int4): every decision "
                   "takes it, so this search is a fixed-format run with extra steps; list several formats (e.g. 4,8) "
                   "to search, or run --bits int4 instead\n")


def _complete_as_planned(argv: list, **changes) -> Path:
    """Write the results.json a real run of the (single) planned experiment would leave."""
    from eval.launch_cli import prepare
    from tests.eval.test_results import make_results

    _, [experiment], _ = prepare([str(a) for a in argv], available_gpus=[])
    # what the run resolves itself
    args = {**experiment.args, "device": "cpu", "rl_learning_rate": 0.05, "delay_steps": 2, **changes}
    results = make_results(experiment.exp_name, args_extra=args)
    experiment.run_dir.mkdir(parents=True)
    (experiment.run_dir / "config.json").write_text(json.dumps(args))
    (experiment.run_dir / "results.json").write_text(json.dumps(results))
    return experiment.run_dir


def test_skip_completed_keeps_a_run_whose_flags_only_differ_in_logging(tmp_path, capsys):
    argv = [*TINY, "--device", "cpu", "--output_root_dir", tmp_path, "--exp_name", "mine"]
    run_dir = _complete_as_planned(argv)
    relaunch = setting(argv, "--report_to", "tensorboard", "--log_steps", "1", "--eval_steps", "2", "--save_steps", "3")
    code, out, err = launch(capsys, [*relaunch, "--skip_completed", "--dry_run"])
    assert (code, err) == (0, "")
    assert out.splitlines()[2:] == [f"# skip (completed): {run_dir}"]


def test_skip_completed_refuses_a_run_completed_with_other_flags(tmp_path, capsys):
    argv = [*TINY, "--device", "cpu", "--output_root_dir", tmp_path, "--exp_name", "mine"]
    run_dir = _complete_as_planned(argv)
    for extra in ([], ["--dry_run"]):
        code, out, err = launch(capsys, [*setting(argv, "--learning_rate", "0.01", "--max_steps", "5"),
                                         "--skip_completed", *extra])
        assert (code, out) == (2, "")
        assert err == (f"eval_parallel: error: --skip_completed would keep {run_dir}, completed with other flags: "
                       "learning_rate 0.001 -> 0.01, max_steps 3 -> 5; give the experiment a new exp_name to keep "
                       "both, delete the run directory to run it again, or pass --overwrite instead of "
                       "--skip_completed\n")
    # The run resolved its default rl_learning_rate and delay_steps itself: a planned default matches
    # them (the first test), a planned value is compared with what the run used.
    code, _, err = launch(capsys, [*argv, "--rl_learning_rate", "0.1", "--skip_completed", "--dry_run"])
    assert code == 2 and "completed with other flags: rl_learning_rate 0.05 -> 0.1;" in err
    code, _, err = launch(capsys, [*argv, "--delay_steps", "2", "--skip_completed", "--dry_run"])
    assert code == 0


def test_skip_completed_compares_what_flags_mean_not_how_they_are_spelled(tmp_path, capsys):
    # "INT4,8" is the search space "4,8"; "Cosine" (as runs before it was recorded canonically
    # kept it) is the schedule "cosine".
    argv = [*TINY, "--device", "cpu", "--output_root_dir", tmp_path, "--exp_name", "mine",
            "--entropy_schedule_type", "cosine"]
    run_dir = _complete_as_planned(argv, entropy_schedule_type="Cosine")
    respelled = [a if a != "4,8" else "INT4,8" for a in argv]
    code, out, err = launch(capsys, [*setting(respelled, "--entropy_schedule_type", "COSINE"), "--skip_completed",
                                     "--dry_run"])
    assert (code, err) == (0, "") and out.splitlines()[2:] == [f"# skip (completed): {run_dir}"]
    code, _, err = launch(capsys, [*argv[:-1], "linear", "--skip_completed", "--dry_run"])
    assert code == 2 and 'completed with other flags: entropy_schedule_type "Cosine" -> "linear";' in err


@pytest.mark.slow
def test_skip_completed_compares_a_given_delay_and_policy_rate_with_a_planned_default(tmp_path, capsys):
    # Real search runs: one given --delay_steps 0 --rl_learning_rate 0.5, one deriving both from its
    # 3 steps (2 and 0.1). A plan that leaves them unset matches only the run that derived them; it
    # used to keep the other too, whose results are for another setting.
    study = tmp_path / "study.yaml"
    study.write_text("- {exp_name: given, delay_steps: 0, rl_learning_rate: 0.5}\n- {exp_name: derived}\n")
    # --workers 2: the two runs at once, one per core (a launcher flag: the runs record neither it nor their threads)
    argv = [*TINY, "--device", "cpu", "--output_root_dir", tmp_path / "out", "--workers", "2"]
    code, out, _ = launch(capsys, [*argv, "--experiments", study])
    assert code == 0, out
    recorded = {name: json.loads((tmp_path / "out" / "digits" / name / "results.json").read_text())["args"]
                for name in ("given", "derived")}
    assert [(a["delay_steps"], a["rl_learning_rate"], a["derived_defaults"]) for a in recorded.values()] == \
        [(0, 0.5, []), (2, 0.1, ["delay_steps", "rl_learning_rate"])]
    study.write_text("- {exp_name: given}\n")
    code, out, err = launch(capsys, [*argv, "--experiments", study, "--skip_completed", "--dry_run"])
    assert (code, out) == (2, "")
    assert err.startswith(f"eval_parallel: error: --skip_completed would keep {tmp_path}/out/digits/given, completed "
                          "with other flags: delay_steps 0 -> default, rl_learning_rate 0.5 -> default; ")
    study.write_text("- {exp_name: derived}\n")
    code, out, err = launch(capsys, [*argv, "--experiments", study, "--skip_completed", "--dry_run"])
    assert (code, err) == (0, "") and out.splitlines()[2:] == [f"# skip (completed): {tmp_path}/out/digits/derived"]


def test_relaunching_one_seed_of_a_sweep_finds_its_completed_run(tmp_path, fake_run, capsys):
    root = tmp_path / "out"
    study = tmp_path / "study.yaml"
    study.write_text("- {exp_name: float, bits: 0}\n- {exp_name: int8, bits: 8}\n")
    argv = [*TINY, "--device", "cpu", "--output_root_dir", root, "--experiments", study]
    assert launch(capsys, [*argv, "--sweep", "seed=0,1"], run_entry=[fake_run])[0] == 0
    code, out, _ = launch(capsys, [*argv, "--sweep", "seed=1", "--skip_completed"], run_entry=[fake_run])
    assert code == 0 and "2 run(s): 2 skipped" in out
    assert sorted(p.name for p in (root / "digits").iterdir()) == \
        ["float_seed=0", "float_seed=1", "int8_seed=0", "int8_seed=1"]


def test_a_dry_run_plan_that_cannot_be_written_is_one_error_line(tmp_path):
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, str(REPO / "eval_parallel.py"), *TINY, "--device", "cpu",
                               "--output_root_dir", str(tmp_path), "--sweep", "seed=0,1", "--dry_run"],
                              cwd=REPO, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == ("eval_parallel: error: cannot write the plan to stdout (No space left on device); "
                           "redirect it to a writable file\n")


def test_ctrl_c_during_the_imports_is_one_line_and_130():
    """A KeyboardInterrupt raised while eval_parallel.py imports the launcher (torch and co. take seconds)."""
    script = ("import runpy, sys\n"
              "class Interrupt:\n"
              "    def find_spec(self, name, path=None, target=None):\n"
              "        if name == 'eval.launch_cli':\n"
              "            raise KeyboardInterrupt\n"
              "sys.meta_path.insert(0, Interrupt())\n"
              f"runpy.run_path({str(REPO / 'eval_parallel.py')!r}, run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (130, "", "eval_parallel: interrupted before any run "
                                                                    "started\n")


@pytest.mark.parametrize("example", README_EXAMPLES)
def test_readme_examples_plan_one_run_each(example, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = launch(capsys, [*example.split(), "--dry_run"], available_gpus=[])
    assert (code, err) == (0, "")
    [command] = [line for line in out.splitlines() if not line.startswith("#")]
    assert " ".join(example.split()) + " --exp_name " in command


@pytest.mark.parametrize("argv, gpus, message", [
    (["--workers", "x"], [], r"argument --workers: invalid int value: 'x' \(see --help\)"),
    (["--workers", "0"], [], r"--workers must be >= 1, got 0"),
    (["--experiments", "missing.json"], [], r"--experiments 'missing.json' cannot be read: No such file"),
    (["--gpus", "7"], ["0", "1", "2", "3"], r"--gpus names GPU 7, which does not exist \(visible GPUs: 0, 1, 2, 3\)"),
    (["--gpus", "0,1"], [], r"--gpus names GPU 0, 1, which does not exist \(no GPU is visible\); drop --gpus to run "
                            r"on CPU workers \(--workers N runs N at a time\)$"),
    (["--cuda_visible_devices", "0", "--device", "cpu"], [], r"--cuda_visible_devices names GPU 0, which does not "
     r"exist \(no GPU is visible\); drop --cuda_visible_devices to run on CPU workers"),
    (["--sweep", "seed=1", "--exp_name", "x", "--skip_completed", "--overwrite"], [],
     r"--skip_completed keeps completed runs and --overwrite runs them again; give one of them"),
    (["--gpus_per_run", "3"], ["0", "1"], r"--gpus_per_run 3 is more than the 2 GPU\(s\) available \(0, 1\)"),
    (["--sweep", "seed"], [], r"--sweep 'seed' must look like KEY=V1,V2"),
    (["--sweep", "learning_rate=0.1,-1"], [], r"experiment 2 of 2 \(learning_rate=-1\): --learning_rate must be > 0"),
    (["--cuda_visible_devices", "0", "--gpus", "1"], ["0", "1"], r"--gpus and --cuda_visible_devices both pick GPUs"),
    # Split on the comma: two one-format "searches"; refused under --dry_run too, before any plan.
    (["--sweep", "search_space=4,8", "--dry_run"], [], r"^eval_parallel: error: --sweep search_space=4,8 would run 2 "
     r"searches of one format each \(4, 8\), with nothing to choose; for one search over these formats give "
     r"--search_space 4,8 \(outside --sweep\), to sweep several search spaces separate them with ';' \(--sweep "
     r"'search_space=4,8;2,4,8'\), or for uniform baselines sweep the fixed format \(--sweep bits=4,8\)$"),
    # eval_run's replace flag: the launcher's --overwrite passes it to the runs it replaces.
    (["--overwrite_output_dir"], [], r"^eval_parallel: error: --overwrite_output_dir is not a launch flag: the "
     r"launcher replaces completed runs with its own --overwrite \(and passes --overwrite_output_dir to the runs it "
     r"replaces\); give --overwrite$"),
    (["--sweep", "overwrite_output_dir=true,false"], [], r"overwrite_output_dir cannot be set per experiment: the "
     r"launcher replaces completed runs with its own --overwrite"),
])
def test_launcher_errors_are_one_line_and_exit_code_2(argv, gpus, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = launch(capsys, [*TINY, *argv], available_gpus=gpus)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("eval_parallel: error: ")
    assert re.search(message, err), err


@pytest.mark.parametrize("argv, message", [
    # A run flag given twice, also where a --sweep replaces it (the runs would never show the slip).
    (["--seed", "0", "--seed", "1", "--sweep", "seed=2,3"], "--seed given twice (0 and 1): give it once"),
    (["--max_steps=3"], "--max_steps given twice (3 and 3): give it once"),  # TINY's own, respelled
    (["--search", "--no-search"], "--search and --no-search both given: give one of them"),
    (["--model", "bert"], "--model_type given twice (--model_type resnet18 and --model bert): give it once"),
    # The launcher's own flags, in its parser's style.
    (["--dry_run", "--workers", "2", "--dry_run"], "--dry_run given twice: give it once (see --help)"),
    (["--workers", "1", "--workers=2"], "--workers given twice (1 and 2): give it once (see --help)"),
])
def test_a_flag_given_twice_is_refused(argv, message, tmp_path, capsys):
    assert launch(capsys, [*TINY, "--output_root_dir", tmp_path, *argv], available_gpus=[]) == (
        2, "", f"eval_parallel: error: {message}\n")


def test_sweep_is_the_flag_that_repeats_and_errors_name_the_command_as_typed(tmp_path, capsys, monkeypatch):
    code, out, _ = launch(capsys, [*TINY, "--output_root_dir", tmp_path, "--sweep", "seed=1,2", "--sweep",
                                   "learning_rate=0.1,0.01", "--dry_run"], available_gpus=[])
    assert code == 0 and out.count("-m eval.eval_run") == 4
    monkeypatch.setattr(sys, "argv", ["/venv/bin/fliqs-launch"])
    assert launch(capsys, [*TINY, "--seed", "0", "--seed", "1"], available_gpus=[]) == (
        2, "", "fliqs-launch: error: --seed given twice (0 and 1): give it once\n")


def test_help_lists_launcher_and_run_flags(capsys):
    code, out, _ = launch(capsys, ["--help"])
    assert code == 0
    assert "--gpus_per_run" in out and "Run flags (shared by every experiment" in out and "--cost_target" in out


LAUNCHER = "import sys; from eval.launch_cli import main; sys.exit(main(sys.argv[2:], run_entry=[sys.argv[1]]))"


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z"


def test_sigint_stops_every_run_and_exits_130(tmp_path, fake_run):
    root = tmp_path / "out"
    env = dict(os.environ, FAKE_RUN_MODE=json.dumps({"*": "hang"}), OMP_NUM_THREADS="1")
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, fake_run, *TINY, "--device", "cpu",
                                 "--output_root_dir", str(root), "--sweep", "seed=1,2,3", "--workers", "2"],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pid_files = [root / "digits" / f"{NAME}_s{seed}" / "pids.json" for seed in (1, 2)]
    deadline = time.monotonic() + 60
    while not all(p.exists() for p in pid_files):
        assert launcher.poll() is None and time.monotonic() < deadline, launcher.stdout.read()
        time.sleep(0.05)
    pids = [pid for p in pid_files for pid in json.loads(p.read_text())]
    launcher.send_signal(signal.SIGINT)
    out, _ = launcher.communicate(timeout=30)
    assert launcher.returncode == 130, out
    deadline = time.monotonic() + 5
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in pids if not _gone(pid)] == []
    assert "3 run(s): 2 interrupted, 1 not started" in out
    assert "eval_parallel: stopping every run" in out
    # The last line says how to go on (no run saved a checkpoint: they all start from the beginning).
    assert out.splitlines()[-1] == ("eval_parallel: to go on, run the same command with --skip_completed (3 runs "
                                    "start from the beginning)")


TEXT_WORDS = ["good", "bad", "great", "awful", "fine", "poor", "nice", "sad"]


def write_sentences(path: Path, count: int) -> None:
    rows = [f"{' '.join(TEXT_WORDS[(i * 3 + j) % 8] for j in range(5))},{i % 2}" for i in range(count)]
    path.write_text("sentence,label\n" + "\n".join(rows) + "\n")


@pytest.mark.slow
def test_real_sweep_on_two_cpu_workers_with_a_failing_run(tmp_path, capsys, monkeypatch):
    """Tiny real runs from another directory through the entry point: the run with a data file without
    the task's columns is refused by the run once it reads the file (exit code 2, one error line, no
    results.json), the other completes, the exit code is 1. Relaunched with --skip_completed, the
    completed run's recorded args match the plan: it is skipped."""
    write_sentences(tmp_path / "train.csv", 64)
    write_sentences(tmp_path / "valid.csv", 32)
    (tmp_path / "bad.csv").write_text("text,label\ngood,1\n")
    argv = ["--task", "sst2", "--model_type", "bert-tiny", "--from_scratch", "--config_overrides",
            "num_hidden_layers=1,hidden_size=16,num_attention_heads=2,intermediate_size=32", "--validation_file",
            "valid.csv", "--max_steps", "3", "--train_batch_size", "16", "--max_seq_length", "16", "--search_space",
            "4,8", "--device", "cpu", "--report_to", "none", "--output_root_dir", "out",
            "--sweep", "train_file=train.csv,bad.csv", "--workers", "2"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(REPO / "eval_parallel.py"), *argv], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    name = "bert-tiny_search_int4-int8_layer_memory_t6b_s42"
    runs = {f"{name}_train_file=train.csv": "completed", f"{name}_train_file=bad.csv": "failed"}
    assert sorted(p.name for p in (tmp_path / "out" / "sst2").iterdir()) == sorted(runs)
    for run, status in runs.items():
        run_dir = tmp_path / "out" / "sst2" / run
        log = (run_dir / "stdout.log").read_text()
        # The repo comes first on PYTHONPATH; whatever the caller had set follows it.
        assert log.startswith(f"# CUDA_VISIBLE_DEVICES= OMP_NUM_THREADS=1 PYTHONPATH={REPO}"), log[:200]
        pythonpath = log.split("PYTHONPATH=", 1)[1].split(" ", 1)[0]
        caller = os.environ.get("PYTHONPATH")
        # relative entries as the launcher (started in tmp_path) resolves them
        others = [p for p in (caller.split(os.pathsep) if caller else [])
                  if not (p and Path(tmp_path, p).resolve() == REPO)]
        assert pythonpath == os.pathsep.join([str(REPO), *others])
        if status == "failed":
            error = ("eval_run: error: train file 'bad.csv' lacks columns ['sentence'] needed by task 'sst2' (it has "
                     "['text', 'label']); rename its columns to ['sentence', 'label']")
            assert log.splitlines()[-1] == error and not (run_dir / "results.json").exists()
            assert f"failed: {run}: refused its input before starting (exit code 2): {error} (log: " in out
            assert load_run(run_dir).reason == ("no results.json: the run refused its input before starting; "
                                                f"stdout.log: {error}")  # the report says so too
        else:
            results = json.loads((run_dir / "results.json").read_text())
            assert (results["status"], results["exp_name"]) == (status, run)
            assert results["args"]["train_file"] == "train.csv" and "eval_accuracy" in results["metrics"]
    # Both ran at once, one per worker.
    assert re.search(r"running .*_train_file=train.csv  \(cpu worker 0, pid \d+\)", out)
    assert re.search(r"running .*_train_file=bad.csv  \(cpu worker 1, pid \d+\)", out)
    assert out.index("_train_file=bad.csv  (cpu worker 1") < min(out.index(" done "), out.index(" failed "))
    assert "2 run(s): 1 done, 1 failed" in out
    assert re.search(rf"{name}_train_file=train.csv +done +eval_accuracy=[\d.]+ +[\d.]+ MiB", out)
    # The relaunch's plan, from the same directory (in this process: the entry point ran above).
    monkeypatch.chdir(tmp_path)
    code, again, err = launch(capsys, [*argv, "--skip_completed", "--dry_run"])
    assert (code, err) == (0, ""), err
    lines = again.splitlines()
    assert lines[2] == f"# skip (completed): out/sst2/{name}_train_file=train.csv"
    assert len(lines) == 4 and lines[3].endswith(f"--exp_name {name}_train_file=bad.csv")


@pytest.mark.slow
def test_skip_completed_resumes_an_interrupted_run_from_its_checkpoint(tmp_path, capsys):
    """A run stopped in its final evaluation (its last checkpoint is its last step): --skip_completed
    goes on from the checkpoint before it, and ends where the uninterrupted run did. A run whose
    checkpoints were written with other flags refuses the launch."""
    import shutil

    argv = [*setting(TINY, "--max_steps", "6"), "--save_strategy", "steps", "--save_steps", "2", "--delay_steps", "2",
            "--output_root_dir", tmp_path / "out", "--workers", "1"]
    assert launch(capsys, argv)[0] == 0
    run_dir = tmp_path / "out" / "digits" / f"{NAME}_s42"
    whole = json.loads((run_dir / "results.json").read_text())
    for name in ("results.json", "output.txt"):  # stopped after checkpoint-6, before its outputs
        (run_dir / name).unlink()
    shutil.rmtree(run_dir / "final_model")
    code, out, err = launch(capsys, [*argv, "--skip_completed", "--dry_run"])
    assert (code, err) == (0, "")
    assert f"# resume (interrupted): {run_dir} from checkpoint-4" in out.splitlines()
    assert out.splitlines()[-1].endswith(f"--resume_from_checkpoint {run_dir / 'checkpoint-4'}")
    assert "1 run(s), 1 to start (1 from their checkpoints)" in out
    code, out, err = launch(capsys, [*argv, "--skip_completed"])
    assert code == 0, out + err
    resumed = json.loads((run_dir / "results.json").read_text())
    assert resumed["args"]["resume_from_checkpoint"] == str(run_dir / "checkpoint-4")
    assert (resumed["metrics"]["eval_accuracy"], resumed["layers"], resumed["search"]["decisions"]) == (
        whole["metrics"]["eval_accuracy"], whole["layers"], whole["search"]["decisions"])
    (run_dir / "results.json").unlink()
    code, _, err = launch(capsys, [*argv, "--learning_rate", "0.01", "--skip_completed", "--dry_run"])
    assert code == 2 and err.startswith(f"eval_parallel: error: --skip_completed would resume {run_dir} from "
                                        "checkpoint-4, written with other flags: learning_rate 0.001 -> 0.01; ")


@pytest.mark.slow
def test_overwrite_replaces_a_completed_run_of_other_flags(tmp_path, capsys):
    """Default names leave --learning_rate out, so the second launch plans the same directory:
    refused without --overwrite; with it the launcher hands the run --overwrite_output_dir, without
    which eval_run would refuse to replace a completed run of other flags."""
    argv = [*TINY, "--device", "cpu", "--output_root_dir", tmp_path / "out"]
    run_dir = tmp_path / "out" / "digits" / f"{NAME}_s42"
    assert launch(capsys, argv)[0] == 0
    code, out, err = launch(capsys, [*argv, "--learning_rate", "0.01"])
    assert (code, out) == (2, "") and "already completed" in err
    code, out, err = launch(capsys, [*argv, "--learning_rate", "0.01", "--overwrite"])
    assert code == 0 and "1 run(s): 1 done" in out, out + err
    assert json.loads((run_dir / "results.json").read_text())["args"]["learning_rate"] == 0.01
    assert (f"eval_run: note: replacing the completed run {run_dir}, which was run with other flags (learning_rate "
            "0.001 -> 0.01), as --overwrite_output_dir asks\n") in (run_dir / "stdout.log").read_text()


@pytest.mark.slow
def test_ctrl_c_of_a_real_run_says_how_to_go_on(tmp_path, capsys, monkeypatch):
    """SIGINT after the run's first checkpoint: the launcher's last line and the run's own log both
    say to relaunch with --skip_completed, which then resumes the run from that checkpoint."""
    root = tmp_path / "out"
    argv = [*setting(TINY, "--max_steps", "400"), "--save_strategy", "steps", "--save_steps", "4", "--device", "cpu",
            "--output_root_dir", str(root), "--exp_name", "ck"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launcher = subprocess.Popen([sys.executable, str(REPO / "eval_parallel.py"), *argv], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run_dir = root / "digits" / "ck"
    assert wait_for(lambda: (run_dir / "checkpoint-4" / "trainer_state.json").is_file(), timeout=120), \
        launcher.kill() or launcher.communicate()[0]
    launcher.send_signal(signal.SIGINT)
    out, _ = launcher.communicate(timeout=60)
    assert launcher.returncode == 130, out
    match = re.fullmatch(r"eval_parallel: to go on, run the same command with --skip_completed \(1 run goes on from "
                         r"its (checkpoint-\d+)\)", out.splitlines()[-1])
    assert match, out
    checkpoint = match.group(1)
    assert (run_dir / "stdout.log").read_text().splitlines()[-1] == (
        f"eval_run: interrupted; {run_dir} holds no results.json; to go on from {checkpoint}, relaunch the same "
        "launcher command (python eval_parallel.py or fliqs-launch) with --skip_completed (in place of any --overwrite)")
    # The relaunch's plan (in this process: the interrupted launcher above is the process boundary).
    monkeypatch.chdir(tmp_path)
    code, again, err = launch(capsys, [*argv, "--skip_completed", "--dry_run"])
    assert code == 0, err
    assert f"# resume (interrupted): {run_dir} from {checkpoint}" in again.splitlines()


@pytest.mark.slow
def test_readme_example_fails_offline_with_the_hub_message(tmp_path, capsys, monkeypatch):
    # As written in the README (relative --output_root_dir): the run fails in the run, hub unreachable.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    code, out, _ = launch(capsys, README_EXAMPLES[0].split())
    assert code == 1, out
    name = "bert_search_int4-int8_block_memory_t6b_s42"
    assert f"failed: {name}: exit code 1: HubUnreachableError: Task 'mrpc'" in out
    log = (tmp_path / "output" / "mrpc" / name / "stdout.log").read_text()
    assert "needs the Hugging Face hub, but offline mode is set" in log
