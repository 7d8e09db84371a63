"""The queue: runs start as devices free up, each in its own process; a failing run never stops
the others; SIGINT/SIGTERM/SIGHUP stop them all (SIGTERM to each process tree, a grace period, SIGKILL).

`run_queue` is independent of how a run is started: it takes a `start(job, slot)` callable that
returns a process-like object (`poll`, `alive`, `terminate`, `kill`, `pid`), so the scheduling can
be tested with fake processes. `SubprocessStarter` is the real one. A start that finds the run's
directory locked by another process (RunDirectoryBusy) leaves the run to it (ELSEWHERE).
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Callable, Protocol, Sequence

from eval.launch_command import RUN_ENTRY, format_command, free_port, launcher_env, run_command
from eval.launch_devices import DevicePool, Slot
from eval.launch_plan import Experiment
from eval.launch_process import RunProcess
from eval.results import RunRecord, is_refusal_line, latest_launch, load_run
from eval.results_schema import COMPLETED, RESULTS_NAME
from eval.run_lock import RunDirectoryBusy, handed_lock_env, note_holder, take_run_lock

QUEUED, RUNNING, DONE, FAILED, SKIPPED, INTERRUPTED, NOT_STARTED = (
    "queued", "running", "done", "failed", "skipped", "interrupted", "not started")
# Not started: another process runs it in its directory (eval/run_lock.py), found when the launch
# was planned (--skip_completed) or when the run was to start.
ELSEWHERE = "elsewhere"
LOG_NAME = "stdout.log"
# torch.distributed.run gives its ranks 30 s after SIGTERM before it kills them itself.
TERMINATE_GRACE_S = 35.0
KILL_WAIT_S = 5.0


class ProcessLike(Protocol):
    pid: int

    def poll(self) -> int | None: ...
    def alive(self) -> bool: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...


@dataclass
class Job:
    """One experiment's life in the launch."""

    experiment: Experiment
    kind: str  # GPU or CPU slot
    state: str = QUEUED
    slot: Slot | None = None
    command_line: str = ""  # as started (VAR=value ... command)
    process: ProcessLike | None = None
    started_at: float | None = None
    ended_at: float | None = None
    returncode: int | None = None
    reason: str | None = None  # why it failed or was not run (ELSEWHERE: the holder, 'pid N, since TIME')
    record: RunRecord | None = None  # results.json as read when it ended (or when skipped)
    overwrites: bool = False  # its directory holds a completed run that this one replaces (--overwrite)
    resume_from: str | None = None  # the interrupted run's checkpoint it goes on from (--skip_completed)

    @property
    def argv(self) -> tuple[str, ...]:
        """The run's flags as started: the plan's, the checkpoint it resumes from, and
        --overwrite_output_dir where it replaces a completed run (--overwrite), which eval_run
        refuses to do without it when that run's recorded flags differ."""
        extra = ("--resume_from_checkpoint", self.resume_from) if self.resume_from is not None else ()
        replace = ("--overwrite_output_dir",) if self.overwrites else ()
        return (*self.experiment.argv, *extra, *replace)

    @property
    def name(self) -> str:
        return self.experiment.exp_name

    @property
    def log_path(self) -> Path:
        return self.experiment.run_dir / LOG_NAME

    def elapsed(self, now: float) -> float | None:
        if self.started_at is None:
            return None
        return (self.ended_at if self.ended_at is not None else now) - self.started_at


def _last_line(path: Path) -> str | None:
    """The last output line of the run's latest launch (not the launcher's `# command` header)."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    lines = [ln.strip() for ln in latest_launch(lines) if ln.strip()]
    return lines[-1][:300] if lines else None


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def classify(job: Job, returncode: int) -> None:
    """Set the job's final state from its exit code and results.json."""
    job.returncode = returncode
    job.record = load_run(job.experiment.run_dir)
    if returncode == 0 and job.record.status == COMPLETED:
        job.state, job.reason = DONE, None
        return
    job.state = FAILED
    if job.record.status == COMPLETED:  # an earlier run this launch left in place: not its results
        job.record = None
    elif (job.experiment.run_dir / RESULTS_NAME).exists():
        job.reason = f"{_exit_text(returncode)}: {job.record.reason}"  # failed, or an invalid results.json
        return
    last = _last_line(job.log_path)
    tail = f"; last line of {LOG_NAME}: {last}" if last else f"; {LOG_NAME} is empty"
    if returncode == 0:
        job.reason = f"exited 0 without writing results.json{tail}"
    elif returncode == 2 and last is not None and is_refusal_line(last):  # as the report lists it
        job.reason = f"refused its input before starting (exit code 2): {last}"
    else:
        job.reason = _exit_text(returncode) + tail


class SubprocessStarter:
    """Starts a run as `python -u -m eval.eval_run ...` (or torch.distributed.run for K GPUs) with
    its output in `{run dir}/stdout.log`, its directory locked for it (eval/run_lock.py)."""

    def __init__(self, omp_threads: int, run_entry: Sequence[str] = RUN_ENTRY) -> None:
        self.omp_threads = omp_threads
        self.run_entry = tuple(run_entry)
        self._ports: set[int] = set()  # master ports handed out, never given twice

    def __call__(self, job: Job, slot: Slot) -> RunProcess:
        k = len(slot.devices) or 1  # GPUs held (one rank each); a CPU run is one process
        port = free_port(self._ports) if k > 1 else None
        command = run_command(job.argv, k, port, run_entry=self.run_entry)
        env = launcher_env(slot, self.omp_threads)
        job.command_line = format_command(command, env)
        run_dir = job.experiment.run_dir
        # The directory's lock, before anything in it changes, handed to the run (which would take
        # it only after its imports, seconds later): another launch started a moment before this one,
        # or any process that took the directory since the launch was planned, makes this
        # RunDirectoryBusy with nothing written (its stdout.log and results.json are its own).
        with take_run_lock(run_dir) as lock:
            # An earlier completed run's results.json stays: the run replaces it once it is set up,
            # and one that fails before leaves the completed run as it was (classify judges this
            # launch by its exit code first). Anything else (failed, invalid) would be read as this
            # launch's reason if it died before writing its own. The log is appended to, each
            # launch after its own `# command` line.
            if load_run(run_dir).status != COMPLETED:
                (run_dir / RESULTS_NAME).unlink(missing_ok=True)
            with open(job.log_path, "ab") as log:
                log.write(f"# {job.command_line}\n".encode())
                log.flush()
                process = RunProcess(command, {**os.environ, **env, **handed_lock_env(lock)}, log,
                                     pass_fds=(lock.fileno(),))
            try:
                note_holder(lock, process.pid)  # the run's pid, for the messages of those it stops
            except OSError:
                pass
        # Closed here: the run's copy holds the lock until it exits.
        if port is not None:
            self._ports.add(port)
        return process


# SIGHUP too: a closed terminal would otherwise kill the launcher at once and leave its runs
# going on unwatched (they run in sessions of their own), the queued ones never started.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class StopSignals:
    """Counts SIGINT/SIGTERM/SIGHUP while installed (a context manager); the queue polls `count`."""

    def __init__(self) -> None:
        self.count = 0
        self.last: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        self.last = signum

    def __enter__(self) -> "StopSignals":
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _stop(running: list[Job], stop_count: Callable[[], int], grace_s: float, clock: Callable[[], float],
          sleep: Callable[[float], None]) -> None:
    for job in running:
        job.process.terminate()
    deadline = clock() + grace_s
    while clock() < deadline and stop_count() < 2 and any(job.process.alive() for job in running):
        for job in running:
            job.process.poll()
        sleep(0.05)
    for job in running:
        if job.process.alive():
            job.process.kill()
    deadline = clock() + KILL_WAIT_S
    while clock() < deadline and any(job.process.alive() for job in running):
        sleep(0.05)
    now = clock()
    for job in running:
        job.returncode = job.process.poll()
        job.state, job.ended_at = INTERRUPTED, now
        job.reason = "stopped by the launcher (interrupted)"


def run_queue(jobs: Sequence[Job], pool: DevicePool, start: Callable[[Job, Slot], ProcessLike], *,
              on_change: Callable[[Job], None] = lambda job: None,
              on_tick: Callable[[Sequence[Job]], None] = lambda jobs: None,
              stop_count: Callable[[], int] = lambda: 0, on_exit: Callable[[Job, int], None] = classify,
              poll_s: float = 0.1, grace_s: float = TERMINATE_GRACE_S, clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] = time.sleep) -> bool:
    """Run every QUEUED job; returns True when stopped by a signal (running jobs INTERRUPTED, queued
    ones NOT_STARTED). `on_exit(job, exit_code)` sets a finished job's state (default: `classify`).
    A job whose `start` raises RunDirectoryBusy is ELSEWHERE, as if found so when planned."""
    pending = [job for job in jobs if job.state == QUEUED]
    running: list[Job] = []
    try:
        return _loop(pending, running, jobs, pool, start, on_change, on_tick, stop_count, on_exit, poll_s, grace_s,
                     clock, sleep)
    except BaseException:
        _stop(running, lambda: 2, 0.0, clock, sleep)  # never leave a run behind, whatever went wrong
        raise


def _loop(pending: list[Job], running: list[Job], jobs: Sequence[Job], pool: DevicePool,
          start: Callable[[Job, Slot], ProcessLike], on_change: Callable[[Job], None],
          on_tick: Callable[[Sequence[Job]], None], stop_count: Callable[[], int], on_exit: Callable[[Job, int], None],
          poll_s: float, grace_s: float, clock: Callable[[], float], sleep: Callable[[float], None]) -> bool:
    while pending or running:
        if stop_count():
            _stop(running, stop_count, grace_s, clock, sleep)
            for job in running + pending:
                if job.state == QUEUED:
                    job.state, job.reason = NOT_STARTED, "the launch was interrupted first"
                on_change(job)
            return True
        changed = False
        for job in list(pending):
            slot = pool.acquire(job.kind)
            if slot is None:
                continue
            pending.remove(job)
            job.slot, job.started_at = slot, clock()
            try:
                job.process = start(job, slot)
            except RunDirectoryBusy as busy:  # not this launch's run, nor a failure: the other process reports it
                job.state, job.reason = ELSEWHERE, busy.holder
                job.slot = job.started_at = None
                pool.release(slot)
            except OSError as error:
                job.ended_at, job.state = clock(), FAILED
                job.reason = f"could not start: {error}"
                pool.release(slot)
            else:
                job.state = RUNNING
                running.append(job)
            on_change(job)
            changed = True
        for job in list(running):
            code = job.process.poll()
            if code is None:
                continue
            job.ended_at = clock()
            running.remove(job)
            pool.release(job.slot)
            on_exit(job, code)
            on_change(job)
            changed = True
        on_tick(jobs)
        if not changed:
            sleep(poll_s)
    return False
