"""One run's process tree: started in its own process group, stopped as a whole.

Each run starts in a new session (its own process group), so a Ctrl-C in the terminal reaches
only the launcher, which then stops every run itself: SIGTERM to the group and to every
descendant it can see (torch.distributed.run puts each rank in a session of its own), a grace
period, then SIGKILL to whatever is left. Descendants are found through /proc (Linux); elsewhere
the process group is all there is.
"""
from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import IO, Mapping, Sequence


def descendants(pid: int, proc: Path = Path("/proc")) -> set[int]:
    """Every process below `pid` (children, their children, ...) as /proc shows them now."""
    children: dict[int, list[int]] = {}
    try:
        entries = [e for e in os.listdir(proc) if e.isdigit()]
    except OSError:
        return set()
    for entry in entries:
        try:
            stat = (proc / entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _signal_pid(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to a process group; False when the group has no member left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # only foreign or zombie members are left
        return True
    return True


class RunProcess:
    """A run started with `command` in its own session, output appended to `log`; `pass_fds` are
    open in it too (its directory's lock, eval/run_lock.py)."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str], log: IO[bytes],
                 cwd: str | os.PathLike[str] | None = None, pass_fds: Sequence[int] = ()) -> None:
        self.popen = subprocess.Popen(list(command), env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL,
                                      stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                      pass_fds=tuple(pass_fds))
        self.pid = self.popen.pid
        self._seen: set[int] = set()  # descendants seen when signalling, which may have left the group

    def poll(self) -> int | None:
        """The exit code once the run's main process has exited (its leftovers are then killed)."""
        code = self.popen.poll()
        if code is not None:
            self._kill_leftovers()
        return code

    def _kill_leftovers(self) -> None:
        # A finished run's stray children (data loader workers, ranks) must not keep a GPU busy.
        _signal_group(self.pid, signal.SIGKILL)
        for pid in self._seen:
            _signal_pid(pid, signal.SIGKILL)

    def _signal_all(self, sig: int) -> None:
        self._seen |= descendants(self.pid)
        _signal_group(self.pid, sig)
        for pid in self._seen:
            _signal_pid(pid, sig)

    def terminate(self) -> None:
        """Ask the whole tree to stop (SIGTERM)."""
        self._signal_all(signal.SIGTERM)

    def kill(self) -> None:
        """Stop the whole tree now (SIGKILL)."""
        self._signal_all(signal.SIGKILL)

    def alive(self) -> bool:
        """Whether the main process, its group or any descendant seen so far still exists."""
        if self.popen.poll() is None:
            return True
        if _signal_group(self.pid, 0):
            return True
        for pid in list(self._seen):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                self._seen.discard(pid)
            except PermissionError:
                return True
            else:
                if not _is_zombie(pid):
                    return True
                self._seen.discard(pid)
        return False


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[-1].split()
    return bool(fields) and fields[0] == "Z"
