"""One writer per run directory (eval/run_lock.py)."""
from __future__ import annotations

import fcntl
import os
import threading
import time

import pytest

from eval.run_lock import LOCK_NAME, PROBE_GRACE_S, RunDirectoryBusy, holding_run_lock, run_lock_holder


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
