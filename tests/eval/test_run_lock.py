"""One writer per run directory (eval/run_lock.py)."""
from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from eval.run_lock import (HANDED_LOCK_ENV, LOCK_NAME, PROBE_GRACE_S, RunDirectoryBusy, handed_lock_env,
                           holding_run_lock, note_holder, run_lock_holder, take_run_lock)

REPO = Path(__file__).resolve().parents[2]


def test_a_held_directory_is_busy_and_names_its_holder(tmp_path):
    assert run_lock_holder(tmp_path) is None  # no lock file yet
    with holding_run_lock(tmp_path):
        holder = run_lock_holder(tmp_path)
        assert holder is not None and holder.startswith(f"pid {os.getpid()}, since ")
        started = time.monotonic()
        with pytest.raises(RunDirectoryBusy, match=rf"^{tmp_path} is being written by another run \({holder}\); wait "
                                                   r"for it to finish, or give this run another --exp_name$"):
            with holding_run_lock(tmp_path):
                pass
        assert time.monotonic() - started >= PROBE_GRACE_S  # it waited out a probe first
    assert run_lock_holder(tmp_path) is None  # released, the file stays
    assert (tmp_path / LOCK_NAME).is_file()


def test_a_probe_of_a_moment_does_not_fail_a_starting_run(tmp_path):
    (tmp_path / LOCK_NAME).write_text("")
    probe = open(tmp_path / LOCK_NAME)
    fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)  # as run_lock_holder takes it
    release = threading.Timer(PROBE_GRACE_S / 4, lambda: fcntl.flock(probe, fcntl.LOCK_UN))
    release.start()
    try:
        with holding_run_lock(tmp_path):
            assert run_lock_holder(tmp_path).startswith(f"pid {os.getpid()}")
    finally:
        release.join()
        probe.close()


# A run started by a launcher that took its directory's lock: it waits for a line, then runs its
# body under holding_run_lock (as eval_run does after its imports) until a second line.
HANDED_RUN = """
import json, os, sys
from pathlib import Path
from eval.run_lock import HANDED_LOCK_ENV, holding_run_lock
fd = int(os.environ[HANDED_LOCK_ENV])
sys.stdin.readline()
with holding_run_lock(Path(sys.argv[1])):
    print(json.dumps([HANDED_LOCK_ENV in os.environ, os.get_inheritable(fd)]), flush=True)
    sys.stdin.readline()
"""


def _start_with_lock(lock, command: list[str]) -> subprocess.Popen:
    """Start `command` as the launcher does: the lock handed over, the launcher's copy closed."""
    env = {**os.environ, **handed_lock_env(lock), "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, env=env, pass_fds=(lock.fileno(),), stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    note_holder(lock, process.pid)
    lock.close()
    return process


def test_a_lock_handed_to_a_run_is_held_from_its_start_and_adopted(tmp_path):
    """No moment between the launcher's check and the run's own lock in which a second launch could start it."""
    process = _start_with_lock(take_run_lock(tmp_path), [sys.executable, "-c", HANDED_RUN, str(tmp_path)])
    with process:
        holder = f"pid {process.pid}, since "
        assert run_lock_holder(tmp_path).startswith(holder)  # still importing, as it were: held for it
        with pytest.raises(RunDirectoryBusy, match=rf"^{tmp_path} is being written by another run \({holder}"):
            take_run_lock(tmp_path)
        process.stdin.write("\n")
        process.stdin.flush()
        # adopted, not taken again (that would fail: the lock is held); not passed on to its own children
        assert json.loads(process.stdout.readline()) == [False, False]
        assert run_lock_holder(tmp_path).startswith(holder)
        process.stdin.write("\n")
        process.stdin.flush()
        assert process.wait(timeout=30) == 0
    assert run_lock_holder(tmp_path) is None  # gone with its holder: a later run starts
    take_run_lock(tmp_path).close()


def test_a_handed_lock_dies_with_a_run_that_never_adopts_it(tmp_path):
    waiting = [sys.executable, "-c", "import sys; sys.stdin.readline()"]
    with _start_with_lock(take_run_lock(tmp_path), waiting) as process:
        assert run_lock_holder(tmp_path).startswith(f"pid {process.pid}, since ")
        process.kill()  # however it ends
    assert run_lock_holder(tmp_path) is None


@pytest.mark.parametrize("value", ["junk", "999", "other file"])
def test_a_stray_handed_lock_variable_is_ignored(tmp_path, monkeypatch, value):
    other = open(tmp_path / "other", "w")
    monkeypatch.setenv(HANDED_LOCK_ENV, str(other.fileno()) if value == "other file" else value)
    run_dir = tmp_path / "run"
    with holding_run_lock(run_dir):
        assert run_lock_holder(run_dir).startswith(f"pid {os.getpid()}, since ")
        assert HANDED_LOCK_ENV not in os.environ
    assert run_lock_holder(run_dir) is None and not other.closed
    other.close()


def test_an_unlocked_handed_file_is_locked_before_it_is_adopted(tmp_path, monkeypatch):
    """The variable names the lock file, but on a descriptor that holds no lock: taken as usual (here busy)."""
    with holding_run_lock(tmp_path):
        stray = os.open(tmp_path / LOCK_NAME, os.O_RDONLY)
        monkeypatch.setenv(HANDED_LOCK_ENV, str(stray))
        with pytest.raises(RunDirectoryBusy):
            with holding_run_lock(tmp_path):
                pass
    with pytest.raises(OSError):  # adopted, then closed with the failed run
        os.fstat(stray)


RANK = """
import os, sys
from pathlib import Path
from eval.run_lock import holding_run_lock, run_lock_holder
run_dir = Path(sys.argv[1])
if os.environ["RANK"] == "0":  # as eval_run: rank 0 holds the directory for every rank
    with holding_run_lock(run_dir):
        print("rank 0 ran; holder:", run_lock_holder(run_dir), flush=True)
"""


def test_under_torchrun_rank_0_runs_under_the_lock_torchrun_was_handed(tmp_path):
    """torchrun keeps the launcher's lock for its ranks, but passes them no descriptor: rank 0 must
    neither take it again (busy: its parent holds it) nor run without it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    run_dir = tmp_path / "run"
    process = _start_with_lock(take_run_lock(run_dir), [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
        str(script), str(run_dir)])
    with process:
        out, _ = process.communicate(timeout=120)
    assert process.returncode == 0, out
    assert re.fullmatch(rf"rank 0 ran; holder: pid {process.pid}, since [\d:\- ]+\n", out), out
    assert run_lock_holder(run_dir) is None
