"""The command line and environment of one run started by the launcher.

A run is `python -u -m eval.eval_run [flags]`, or with K GPUs `python -u -m torch.distributed.run
--nproc_per_node K --master_port PORT -m eval.eval_run [flags]`. The launcher sets only
CUDA_VISIBLE_DEVICES (every run: the GPUs it holds, empty for CPU runs so they never touch a GPU),
OMP_NUM_THREADS (CPU runs) and, when the launcher runs outside the repository root, PYTHONPATH
so that `-m eval.eval_run` resolves to this checkout.
"""
from __future__ import annotations

import os
import shlex
import socket
import sys
from pathlib import Path
from typing import Mapping, Sequence

from eval.launch_devices import CPU, Slot

RUN_ENTRY: tuple[str, ...] = ("-m", "eval.eval_run")
REPO_ROOT = Path(__file__).resolve().parent.parent
IS_CHECKOUT = (REPO_ROOT / "setup.py").is_file()


def free_port(exclude: set[int] | frozenset[int] = frozenset()) -> int:
    """A TCP port nobody listens on now (for torch.distributed's rendezvous), not in `exclude`."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        if port not in exclude:
            return port
    raise OSError("no free TCP port found for --master_port after 100 tries")


def run_command(run_argv: Sequence[str], gpus_per_run: int, master_port: int | None = None,
                python: str = sys.executable, run_entry: Sequence[str] = RUN_ENTRY) -> list[str]:
    """The argv that starts one run; K > 1 GPUs go through torch.distributed.run (one rank per GPU)."""
    if gpus_per_run == 1:
        return [python, "-u", *run_entry, *run_argv]
    if master_port is None:
        raise ValueError("a run on several GPUs needs a master_port for its ranks to meet on")
    return [python, "-u", "-m", "torch.distributed.run", "--nproc_per_node", str(gpus_per_run),
            "--master_port", str(master_port), *run_entry, *run_argv]


def launcher_env(slot: Slot, omp_threads: int, cwd: str | os.PathLike[str] | None = None,
                 environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The variables the launcher sets for a run in `slot` (on top of its own environment)."""
    env = {"CUDA_VISIBLE_DEVICES": slot.cuda_visible_devices}
    if slot.kind == CPU:
        env["OMP_NUM_THREADS"] = str(omp_threads)
    # From a checkout: the runs import the project from it. An installed project (REPO_ROOT is
    # then site-packages) is importable already, and site-packages must not go before the stdlib.
    if IS_CHECKOUT and Path(cwd or os.getcwd()).resolve() != REPO_ROOT:
        existing = environ.get("PYTHONPATH")
        # The caller's entries follow, but for the repository itself (no use twice); an empty
        # entry (the working directory) stays.
        kept = [p for p in existing.split(os.pathsep) if not (p and Path(p).resolve() == REPO_ROOT)] if existing else []
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *kept])
    return env


def format_command(command: Sequence[str], env: Mapping[str, str]) -> str:
    """A shell line: `VAR=value ... command`, quoted so that it can be pasted."""
    return shlex.join([f"{k}={v}" for k, v in env.items()] + list(command))
