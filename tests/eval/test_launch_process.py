"""Real process trees: a run's whole tree is stopped, including a child in its own session (as
torch.distributed.run starts its ranks) and children a finished run left behind."""
import os
import sys
import time
from pathlib import Path

from eval.launch_process import RunProcess, descendants


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z"  # reaped soon


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


ESCAPING_CHILD = """
import subprocess, sys, time
child = subprocess.Popen(["sleep", "60"], start_new_session=True)  # out of the run's process group
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(60)
"""


def test_terminate_stops_a_child_in_its_own_session(tmp_path):
    marker = tmp_path / "child.pid"
    with open(tmp_path / "log", "wb") as log:
        process = RunProcess([sys.executable, "-c", ESCAPING_CHILD, str(marker)], os.environ, log)
    assert wait_for(lambda: marker.exists() and marker.read_text())
    child = int(marker.read_text())
    assert descendants(process.pid) == {child}
    assert process.alive()
    process.terminate()
    assert wait_for(lambda: not process.alive())
    assert process.poll() == -15
    assert gone(process.pid) and wait_for(lambda: gone(child))


def test_leftovers_of_a_finished_run_are_killed(tmp_path):
    marker = tmp_path / "bg.pid"
    with open(tmp_path / "log", "wb") as log:
        process = RunProcess(["sh", "-c", f"sleep 60 & echo $! > {marker}; echo done"], os.environ, log)
    assert wait_for(lambda: process.popen.poll() is not None and marker.exists() and marker.read_text())
    background = int(marker.read_text())
    assert process.poll() == 0
    assert wait_for(lambda: gone(background))
    assert (tmp_path / "log").read_text() == "done\n"


def test_kill_stops_a_process_that_ignores_sigterm(tmp_path):
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); " \
           "time.sleep(60)"
    with open(tmp_path / "log", "wb") as log:
        process = RunProcess([sys.executable, "-c", code], os.environ, log)
    assert wait_for(lambda: (tmp_path / "log").read_text() == "ready\n")
    process.terminate()
    time.sleep(0.3)
    assert process.alive()
    process.kill()
    assert wait_for(lambda: not process.alive())
    assert process.poll() == -9


def test_descendants_of_a_process_without_children_is_empty():
    assert descendants(os.getpid(), proc=Path("/nonexistent")) == set()
