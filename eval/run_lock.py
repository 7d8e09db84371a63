"""One writer per run directory.

Two processes running the same run (a second launch of a sweep that is still running, or the
same `eval_run` command in two shells) would replace each other's outputs and crash each other
mid-run. A run holds an exclusive `flock` on `RUN_DIR/.run.lock` from before it changes anything
in the directory until it exits; a second run of the directory stops at once, naming the first.
The kernel drops the lock when its holder exits, however it exits (a crash or SIGKILL included),
so a stale lock file never blocks a later run. The file itself stays: removing it would let two
runs lock two different files of the same name.

The launcher takes the lock itself before it writes anything in the directory and hands it to
the run it starts (an inherited file descriptor named in HANDED_LOCK_ENV; the lock belongs to the
open file, so the child holds it from its first instruction on). Were the run to take it only
after its imports, seconds later, two launches started together would both see it free and
both start the run. Under torch.distributed.run the launcher's child is torchrun, which keeps
the lock for its ranks' whole life; rank 0 finds it among its parent's open files.
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
# The file descriptor of its directory's lock, already held, that a launcher hands to the run it starts.
HANDED_LOCK_ENV = "FLIQS_RUN_LOCK_FD"
UNKNOWN_HOLDER = "a process that has not written its pid yet"


class RunDirectoryBusy(RuntimeError):
    """Another process is running the run of this directory (`holder`: 'pid N, since TIME')."""

    def __init__(self, run_dir: Path, holder: str | None) -> None:
        self.run_dir = run_dir
        self.holder = holder or UNKNOWN_HOLDER
        super().__init__(f"{run_dir} is being written by another run{f' ({holder})' if holder else ''}; wait for it "
                         "to finish, or give this run another --exp_name")


def _holder_text(handle: IO[str]) -> str | None:
    """'pid N, since TIME' as the holder wrote it, or None if it wrote nothing readable."""
    handle.seek(0)
    return handle.read().strip() or None


def note_holder(handle: IO[str], pid: int) -> None:
    """Write 'pid N, since TIME' in the held lock file, for the messages of the runs it stops."""
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {pid}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()


def _lock(handle: IO[str], run_dir: Path) -> None:
    """Lock `handle` exclusively (at once if it holds the lock already); RunDirectoryBusy if
    another process holds it."""
    # A launcher's probe (run_lock_holder) holds a shared lock for a moment: retry briefly
    # rather than fail a run that starts just then.
    deadline = time.monotonic() + PROBE_GRACE_S
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise RunDirectoryBusy(run_dir, _holder_text(handle)) from None
            time.sleep(0.01)


def take_run_lock(run_dir: Path) -> IO[str]:
    """`run_dir`'s lock, held by the returned open file until it is unlocked, or closed along with
    every copy a child inherited; RunDirectoryBusy if another process holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK_NAME, "a+")
    try:
        _lock(handle, run_dir)
        note_holder(handle, os.getpid())
    except BaseException:
        handle.close()
        raise
    return handle


def handed_lock_env(handle: IO[str]) -> dict[str, str]:
    """The variable that hands the lock `handle` holds to a child started with pass_fds=(its fd,)."""
    return {HANDED_LOCK_ENV: str(handle.fileno())}


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _handed_lock(run_dir: Path) -> tuple[bool, IO[str] | None]:
    """(handed, lock): the lock a launcher handed to this process, as an open file; (True, None)
    for rank 0 under torch.distributed.run, whose parent torchrun holds it; (False, None) when
    none was handed. Anything else the variable names (another file, a closed descriptor, a
    stray value) is left alone: the run takes the lock as usual."""
    value = os.environ.pop(HANDED_LOCK_ENV, None)  # not for this run's own children
    if value is None:
        return False, None
    try:
        fd = int(value)
        lock = os.stat(run_dir / LOCK_NAME)
    except (ValueError, OSError):
        return False, None
    try:
        mine = _same_file(os.fstat(fd), lock)
    except OSError:  # not open in this process
        mine = False
    if mine:
        os.set_inheritable(fd, False)  # as a lock this process opened: not passed on to its children
        handle = open(fd, "a+")
        try:
            _lock(handle, run_dir)  # held already if the launcher locked it, as it does
        except BaseException:
            handle.close()
            raise
        return True, handle
    try:  # torchrun passes no descriptor on to its ranks: it holds the lock for them (Linux's /proc)
        parents = _same_file(os.stat(f"/proc/{os.getppid()}/fd/{fd}"), lock)
    except OSError:
        return False, None
    return (True, None) if parents and run_lock_holder(run_dir) is not None else (False, None)


@contextmanager
def holding_run_lock(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir`'s lock for the body; RunDirectoryBusy if another process holds it. A lock a
    launcher took for this run and handed down is adopted, not taken again."""
    handed, handle = _handed_lock(run_dir)  # the launcher wrote its child's pid in it already
    if handed and handle is None:  # rank 0 under torchrun: held until every rank has exited
        yield
        return
    with handle if handle is not None else take_run_lock(run_dir) as lock:
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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
            return _holder_text(handle) or UNKNOWN_HOLDER
        fcntl.flock(handle, fcntl.LOCK_UN)
        return None
