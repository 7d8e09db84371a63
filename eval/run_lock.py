"""One writer per run directory.

Two processes running the same run (a second launch of a sweep that is still running, or the
same `eval_run` command in two shells) would replace each other's outputs and crash each other
mid-run. A run holds an exclusive `flock` on `RUN_DIR/.run.lock` from before it changes anything
in the directory until it exits; a second run of the directory stops at once, naming the first.
The kernel drops the lock when its holder exits, however it exits (a crash or SIGKILL included),
so a stale lock file never blocks a later run. The file itself stays: removing it would let two
runs lock two different files of the same name.
"""
from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

LOCK_NAME = ".run.lock"
PROBE_GRACE_S = 0.2  # how long a starting run waits out another process's probe of the lock


class RunDirectoryBusy(RuntimeError):
    """Another process is running the run of this directory."""


def _holder_text(handle: IO[str]) -> str:
    """'pid N, since TIME' as the holder wrote it, or '' if it wrote nothing readable."""
    handle.seek(0)
    text = handle.read().strip()
    return f" ({text})" if text else ""


@contextmanager
def holding_run_lock(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir`'s lock for the body; RunDirectoryBusy if another process holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOCK_NAME, "a+") as handle:
        # A launcher's probe (run_lock_holder) holds a shared lock for a moment: retry briefly
        # rather than fail a run that starts just then.
        deadline = time.monotonic() + PROBE_GRACE_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RunDirectoryBusy(
                        f"{run_dir} is being written by another run{_holder_text(handle)}; wait for it to finish, or "
                        "give this run another --exp_name") from None
                time.sleep(0.01)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_lock_holder(run_dir: Path) -> str | None:
    """'pid N, since TIME' of the process running `run_dir`'s run now, or None if none is.
    (A snapshot: the run may end, or another start, right after.)"""
    path = run_dir / LOCK_NAME
    try:
        handle = open(path)
    except OSError:  # no lock file (or unreadable): no run of this version holds it
        return None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_text(handle).strip(" ()") or "a process that has not written its pid yet"
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None
