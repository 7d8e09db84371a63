"""The queue with fake processes on a virtual clock: device assignment over time, failures,
stopping, and how a finished run is classified."""
import json
import signal

import pytest

from eval.launch_devices import CPU, GPU, DevicePool
from eval.launch_plan import Experiment
from eval.launch_queue import (DONE, ELSEWHERE, FAILED, INTERRUPTED, NOT_STARTED, QUEUED, RUNNING, Job, StopSignals,
                               classify, run_queue)
from eval.run_lock import RunDirectoryBusy


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class FakeProcess:
    """Ends `duration` after its start with `code`; obeys SIGTERM unless `stubborn`."""

    def __init__(self, clock: Clock, duration: float, code: int = 0, stubborn: bool = False, pid: int = 1) -> None:
        self.clock, self.end, self.code, self.stubborn, self.pid = clock, clock() + duration, code, stubborn, pid
        self.signals: list[str] = []

    def poll(self):
        return self.code if self.clock() >= self.end else None

    def alive(self) -> bool:
        return self.poll() is None

    def terminate(self) -> None:
        self.signals.append("TERM")
        if not self.stubborn:
            self.end, self.code = self.clock(), -signal.SIGTERM

    def kill(self) -> None:
        self.signals.append("KILL")
        self.end, self.code = self.clock(), -signal.SIGKILL


def make_jobs(tmp_path, count: int, kind: str = GPU) -> list[Job]:
    return [Job(Experiment(i + 1, (), (), f"run{i + 1}", "digits", str(tmp_path), None), kind) for i in range(count)]


def simulate(jobs, pool, durations, codes=None, **kwargs):
    clock = Clock()
    intervals = {}  # name -> (start, end, devices)

    def start(job, slot):
        assert job.state == QUEUED
        return FakeProcess(clock, durations[job.name], (codes or {}).get(job.name, 0))

    def on_exit(job, code):
        job.state = DONE if code == 0 else FAILED
        intervals[job.name] = (job.started_at, job.ended_at, job.slot.devices)

    interrupted = run_queue(jobs, pool, start, on_exit=on_exit, clock=clock, sleep=clock.sleep, poll_s=0.5,
                            **kwargs)
    return interrupted, intervals, clock


def assert_never_double_booked(intervals):
    items = list(intervals.items())
    for i, (a, (s1, e1, d1)) in enumerate(items):
        for b, (s2, e2, d2) in items[i + 1:]:
            if s1 < e2 and s2 < e1:  # overlapping in time
                assert not set(d1) & set(d2), f"{a} and {b} share {set(d1) & set(d2)}"


def test_k_gpu_runs_get_k_distinct_devices_and_are_never_double_booked(tmp_path):
    jobs = make_jobs(tmp_path, 7)
    durations = {"run1": 3, "run2": 1, "run3": 2, "run4": 5, "run5": 1, "run6": 2, "run7": 1}
    interrupted, intervals, _ = simulate(jobs, DevicePool(["0", "1", "2", "3", "4"], gpus_per_run=2), durations)
    assert not interrupted and all(job.state == DONE for job in jobs)
    assert all(len(set(devices)) == 2 for _, _, devices in intervals.values())
    assert_never_double_booked(intervals)
    # GPU 4 is never used: two pairs fill the five GPUs. Exact schedule (ties: lowest devices first):
    assert {name: (start, devices) for name, (start, _, devices) in intervals.items()} == {
        "run1": (0.0, ("0", "1")), "run2": (0.0, ("2", "3")), "run3": (1.0, ("2", "3")),
        "run4": (3.0, ("0", "1")), "run5": (3.0, ("2", "3")), "run6": (4.0, ("2", "3")), "run7": (6.0, ("2", "3"))}


def test_one_gpu_per_run_starts_the_next_run_as_soon_as_a_device_frees(tmp_path):
    jobs = make_jobs(tmp_path, 6)
    durations = {f"run{i}": d for i, d in enumerate([4, 1, 2, 1, 3, 1], 1)}
    _, intervals, clock = simulate(jobs, DevicePool(["0", "1", "2"]), durations)
    assert_never_double_booked(intervals)
    assert [(intervals[f"run{i}"][0], intervals[f"run{i}"][2]) for i in range(1, 7)] == [
        (0.0, ("0",)), (0.0, ("1",)), (0.0, ("2",)), (1.0, ("1",)), (2.0, ("1",)), (2.0, ("2",))]
    assert clock.now == pytest.approx(5.0, abs=0.5)


def test_a_failing_run_does_not_stop_the_others(tmp_path):
    jobs = make_jobs(tmp_path, 4, CPU)
    _, intervals, _ = simulate(jobs, DevicePool([], cpu_workers=2), {f"run{i}": 1 for i in range(1, 5)},
                               codes={"run2": 1})
    assert [job.state for job in jobs] == [DONE, FAILED, DONE, DONE]
    assert len(intervals) == 4


def test_a_run_that_cannot_start_fails_and_frees_its_slot(tmp_path):
    jobs = make_jobs(tmp_path, 2, CPU)
    clock = Clock()
    pool = DevicePool([], cpu_workers=1)

    def start(job, slot):
        if job.name == "run1":
            raise FileNotFoundError(2, "No such file or directory", "python")
        return FakeProcess(clock, 1)

    run_queue(jobs, pool, start, on_exit=lambda job, code: setattr(job, "state", DONE), clock=clock,
              sleep=clock.sleep)
    assert jobs[0].state == FAILED
    assert jobs[0].reason == "could not start: [Errno 2] No such file or directory: 'python'"
    assert jobs[1].state == DONE


def test_a_run_whose_directory_another_process_took_first_is_elsewhere_and_frees_its_slot(tmp_path):
    """The start found the directory locked (another launch started a moment before): not a failure."""
    jobs = make_jobs(tmp_path, 2, CPU)
    clock = Clock()
    pool = DevicePool([], cpu_workers=1)
    holder = "pid 4242, since 2025-01-02 03:04:05"

    def start(job, slot):
        if job.name == "run1":
            raise RunDirectoryBusy(job.experiment.run_dir, holder)
        return FakeProcess(clock, 1)

    run_queue(jobs, pool, start, on_exit=lambda job, code: setattr(job, "state", DONE), clock=clock,
              sleep=clock.sleep)
    assert (jobs[0].state, jobs[0].reason) == (ELSEWHERE, holder)
    assert (jobs[0].slot, jobs[0].started_at, jobs[0].process) == (None, None, None)  # as if found so when planned
    assert jobs[1].state == DONE and clock.now < 1.5  # run1's worker went to run2 at once


def test_stop_terminates_running_runs_and_cancels_the_queue(tmp_path):
    jobs = make_jobs(tmp_path, 4, CPU)
    clock = Clock()
    processes = {}

    def start(job, slot):
        processes[job.name] = FakeProcess(clock, 100, stubborn=job.name == "run2")
        return processes[job.name]

    interrupted = run_queue(jobs, DevicePool([], cpu_workers=2), start, stop_count=lambda: int(clock.now >= 2),
                            clock=clock, sleep=clock.sleep, grace_s=10)
    assert interrupted
    assert [job.state for job in jobs] == [INTERRUPTED, INTERRUPTED, NOT_STARTED, NOT_STARTED]
    assert processes["run1"].signals == ["TERM"]
    assert processes["run2"].signals == ["TERM", "KILL"]  # ignored SIGTERM for the whole grace period
    assert 12.0 <= clock.now < 12.2
    assert all(not p.alive() for p in processes.values())


def test_a_second_stop_signal_kills_without_waiting(tmp_path):
    jobs = make_jobs(tmp_path, 1, CPU)
    clock = Clock()
    process = FakeProcess(clock, 100, stubborn=True)
    run_queue(jobs, DevicePool([], cpu_workers=1), lambda job, slot: process,
              stop_count=lambda: 0 if clock.now < 1 else 2, clock=clock, sleep=clock.sleep, grace_s=30)
    assert process.signals == ["TERM", "KILL"] and clock.now < 1.5


def _results(status: str) -> dict:
    if status == "failed":
        return {"schema_version": 1, "status": "failed", "error": "ValueError: bad data", "metrics": {}}
    return {"schema_version": 1, "status": "completed", "exp_name": "run1", "task": "digits", "model_type": "resnet18",
            "method": "float", "args": {}, "main_metric": "eval_accuracy", "metrics": {"eval_accuracy": 0.5},
            "cost": {"memory_mib": 1.0, "gbops": 2.0, "float_memory_mib": 1.0, "float_gbops": 2.0,
                     "cost_type": "memory", "target": None, "ratio": None}, "layers": {}}


@pytest.mark.parametrize("status, code, state, reason", [
    ("completed", 0, DONE, None),
    ("failed", 1, FAILED, "exit code 1: ValueError: bad data"),
    (None, 0, FAILED, "exited 0 without writing results.json; last line of stdout.log: last words"),
    (None, -9, FAILED, "killed by SIGKILL; last line of stdout.log: last words"),
    ("completed", 3, FAILED, "exit code 3; last line of stdout.log: last words"),
    ("invalid", 0, FAILED, "exit code 0: results.json is invalid: missing exp_name"),
])
def test_classify(tmp_path, status, code, state, reason):
    [job] = make_jobs(tmp_path, 1)
    job.state = RUNNING
    job.experiment.run_dir.mkdir(parents=True)
    (job.experiment.run_dir / "stdout.log").write_text("# CUDA_VISIBLE_DEVICES= python -u -m eval.eval_run\n"
                                                       "# a run's own line\nlast words\n\n")
    if status is not None:
        results = _results("completed" if status == "invalid" else status)
        if status == "invalid":
            del results["exp_name"]
        (job.experiment.run_dir / "results.json").write_text(json.dumps(results))
    classify(job, code)
    assert (job.state, job.reason, job.returncode) == (state, reason, code)
    # A failed launch never shows the metrics of a completed run it left in place.
    assert (job.record is not None and job.record.status == "completed") == (state == DONE)


def test_classify_with_only_the_launcher_header_in_the_log(tmp_path):
    [job] = make_jobs(tmp_path, 1)
    job.experiment.run_dir.mkdir(parents=True)
    (job.experiment.run_dir / "stdout.log").write_text("# CUDA_VISIBLE_DEVICES= python -u -m eval.eval_run\n")
    classify(job, 1)
    assert job.reason == "exit code 1; stdout.log is empty"


def test_stop_signals_count_sigint_sigterm_and_sighup_while_installed():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    with StopSignals() as signals:
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGHUP)  # a closed terminal: stop the runs, do not orphan them
        assert (signals.count, signals.last) == (3, signal.SIGHUP)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)) == before
