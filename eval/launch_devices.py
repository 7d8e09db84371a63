"""Devices of a launch: which GPUs (or CPU workers) runs may use, and a pool that hands them out.

GPU ids are the values a child's CUDA_VISIBLE_DEVICES gets. `--gpus 0,3` and `--num_gpus N` index
the GPUs this process sees: with no CUDA_VISIBLE_DEVICES set, those are the physical GPUs; with
one set (e.g. `2,5`), index 0 is GPU 2. The pool never hands a device to two runs at once.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Sequence

from eval.launch_flags import LaunchError

GPU, CPU = "gpu", "cpu"


def detect_gpus(environ: Mapping[str, str] = os.environ) -> list[str]:
    """CUDA_VISIBLE_DEVICES values of the GPUs this process sees (empty without CUDA)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [str(i) for i in range(count)]
    return [entry.strip() for entry in visible.split(",") if entry.strip()][:count]


def _describe(gpus: Sequence[str]) -> str:
    """'visible GPUs: 0, 1' (index and id where they differ: '0 (5), 1 (2)') or 'no GPU is visible'."""
    if not gpus:
        return "no GPU is visible"
    return "visible GPUs: " + ", ".join(g if str(i) == g else f"{i} ({g})" for i, g in enumerate(gpus))


def _cpu_way_out(flag: str) -> str:
    """What to do when GPUs are asked for on a machine without one."""
    return f"drop {flag} to run on CPU workers (--workers N runs N at a time)"


def parse_gpu_list(text: str, flag: str = "--gpus") -> list[int]:
    """'0,3,5' -> [0, 3, 5]: GPU indices, each once."""
    try:
        indices = [int(part) for part in text.split(",")]
    except ValueError:
        raise LaunchError(f"{flag} {text!r} must be comma-separated GPU indices such as 0,3,5") from None
    if any(i < 0 for i in indices) or len(set(indices)) != len(indices):
        raise LaunchError(f"{flag} {text!r} must list non-negative GPU indices, each once")
    return indices


def select_gpus(visible: Sequence[str], num_gpus: int | None = None, gpus: Sequence[int] | None = None,
                flag: str = "--gpus") -> list[str]:
    """The GPUs to use: all visible ones, the first `num_gpus`, or the indices `gpus`."""
    if num_gpus is not None and gpus is not None:
        raise LaunchError(f"--num_gpus and {flag} both pick GPUs; give one of them")
    if num_gpus is not None:
        if num_gpus < 1:
            raise LaunchError(f"--num_gpus must be >= 1, got {num_gpus}")
        if num_gpus > len(visible):
            way_out = _cpu_way_out("--num_gpus") if not visible else f"give at most --num_gpus {len(visible)}"
            raise LaunchError(f"--num_gpus {num_gpus} asks for more GPUs than there are ({_describe(visible)}); "
                              f"{way_out}")
        return list(visible[:num_gpus])
    if gpus is not None:
        missing = [i for i in gpus if i >= len(visible)]
        if missing:
            way_out = _cpu_way_out(flag) if not visible else f"use indices below {len(visible)}"
            raise LaunchError(f"{flag} names GPU {', '.join(map(str, missing))}, which does not exist "
                              f"({_describe(visible)}); {way_out}")
        return [visible[i] for i in gpus]
    return list(visible)


def threads_per_worker(workers: int, cores: int, environ: Mapping[str, str] = os.environ) -> int:
    """OMP_NUM_THREADS of each CPU run: cores // workers, at least 1, and no more than an
    OMP_NUM_THREADS the launcher itself was given (on a shared machine the caller knows best)."""
    threads = max(1, cores // workers)
    limit = environ.get("OMP_NUM_THREADS", "")
    if limit.isdigit() and int(limit) >= 1:
        threads = min(threads, int(limit))
    return threads


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Slot:
    """What one run holds while it runs: K GPUs, or one CPU worker."""

    kind: str  # GPU or CPU
    devices: tuple[str, ...]  # CUDA_VISIBLE_DEVICES entries (empty for a CPU worker)
    worker: int  # CPU worker number (0 for GPU slots)

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(self.devices)

    def describe(self) -> str:
        if self.kind == CPU:
            return f"cpu worker {self.worker}"
        return f"gpu {self.cuda_visible_devices}" if len(self.devices) == 1 else f"gpus {self.cuda_visible_devices}"


class DevicePool:
    """Hands out K GPUs per GPU run and one worker per CPU run; a device is held by one run at a time."""

    def __init__(self, gpus: Sequence[str], gpus_per_run: int = 1, cpu_workers: int = 1) -> None:
        if len(set(gpus)) != len(gpus):
            raise LaunchError(f"GPU list {list(gpus)} names a GPU twice; each GPU can be listed once")
        if gpus_per_run < 1:
            raise LaunchError(f"--gpus_per_run must be >= 1, got {gpus_per_run}")
        if gpus and gpus_per_run > len(gpus):
            raise LaunchError(f"--gpus_per_run {gpus_per_run} is more than the {len(gpus)} GPU(s) available "
                              f"({', '.join(gpus)}); lower it or add GPUs with --gpus/--num_gpus")
        if cpu_workers < 1:
            raise LaunchError(f"--workers must be >= 1, got {cpu_workers}")
        self.gpus = tuple(gpus)
        self.gpus_per_run = gpus_per_run
        self.cpu_workers = cpu_workers
        self._free_gpus = list(self.gpus)
        self._free_workers = list(range(cpu_workers))
        self._held: set[Slot] = set()

    @property
    def free_gpus(self) -> tuple[str, ...]:
        return tuple(self._free_gpus)

    def acquire(self, kind: str) -> Slot | None:
        """A free slot of `kind`, or None when all are busy (lowest-numbered devices first)."""
        if kind == GPU:
            if not self.gpus:
                raise LaunchError("a GPU run was scheduled but the launch has no GPU")
            if len(self._free_gpus) < self.gpus_per_run:
                return None
            order = {g: i for i, g in enumerate(self.gpus)}
            taken = sorted(self._free_gpus, key=order.__getitem__)[: self.gpus_per_run]
            self._free_gpus = [g for g in self._free_gpus if g not in taken]
            slot = Slot(GPU, tuple(taken), 0)
        elif kind == CPU:
            if not self._free_workers:
                return None
            self._free_workers.sort()
            slot = Slot(CPU, (), self._free_workers.pop(0))
        else:
            raise ValueError(f"slot kind {kind!r} is not one of {GPU!r}, {CPU!r}")
        self._held.add(slot)
        return slot

    def release(self, slot: Slot) -> None:
        if slot not in self._held:
            raise ValueError(f"{slot} is not held; a slot is released once, by the run that acquired it")
        self._held.remove(slot)
        if slot.kind == GPU:
            self._free_gpus.extend(slot.devices)
        else:
            self._free_workers.append(slot.worker)


def predict_slots(kinds: Sequence[str], pool: DevicePool) -> list[Slot]:
    """The slot each run would get if all runs took equally long (what --dry_run shows)."""
    running: dict[str, list[Slot]] = {GPU: [], CPU: []}
    slots = []
    for kind in kinds:
        slot = pool.acquire(kind)
        if slot is None:  # the earliest started run of this kind finishes first
            pool.release(running[kind].pop(0))
            slot = pool.acquire(kind)
        running[kind].append(slot)
        slots.append(slot)
    for held in running.values():
        for slot in held:
            pool.release(slot)
    return slots


@dataclass(frozen=True)
class Resources:
    """Where the runs of a launch go: `kinds[i]` is GPU or CPU for experiment i."""

    pool: DevicePool
    kinds: tuple[str, ...]
    omp_threads: int  # OMP_NUM_THREADS of each CPU run


def choose_resources(run_devices: Sequence[str | None], visible_gpus: Sequence[str], *, num_gpus: int | None = None,
                     gpus: str | None = None, gpus_flag: str = "--gpus", gpus_per_run: int | None = None,
                     workers: int | None = None, cores: int | None = None,
                     environ: Mapping[str, str] = os.environ) -> Resources:
    """Pick GPU or CPU for each run (its --device, else GPU when there is one) and size the pool."""
    if gpus_per_run is not None and gpus_per_run < 1:  # before whether GPUs exist: the value is wrong anyway
        raise LaunchError(f"--gpus_per_run must be >= 1, got {gpus_per_run}")
    no_gpus = gpus is not None and not gpus.strip()  # `--gpus ""`: run everything on CPU workers
    indices = parse_gpu_list(gpus, gpus_flag) if gpus is not None and not no_gpus else None
    chosen = [] if no_gpus else select_gpus(visible_gpus, num_gpus, indices, gpus_flag)
    for number, device in enumerate(run_devices, 1):
        if device == "cuda" and not chosen:
            why = f"{gpus_flag} is empty" if no_gpus else _describe(visible_gpus)
            raise LaunchError(f"experiment {number} asks for --device cuda but {why}; use --device cpu")
    kinds = tuple(CPU if device == "cpu" or not chosen else GPU for device in run_devices)
    if (num_gpus is not None or (gpus is not None and not no_gpus)) and GPU not in kinds:
        raise LaunchError(f"--num_gpus/{gpus_flag} pick GPUs but every run has --device cpu; drop them or the "
                          "--device cpu")
    if gpus_per_run is not None and GPU not in kinds:
        raise LaunchError(f"--gpus_per_run {gpus_per_run} needs GPU runs, but "
                          + ("every run has --device cpu" if chosen else _describe(visible_gpus))
                          + "; drop --gpus_per_run to run on CPU workers")
    if workers is not None and CPU not in kinds:
        raise LaunchError(f"--workers sets how many CPU runs go in parallel, but every run uses a GPU "
                          f"({', '.join(chosen)}); add --device cpu to run on CPU, or drop --workers")
    cpu_workers = workers if workers is not None else 1
    pool = DevicePool(chosen if GPU in kinds else (), gpus_per_run or 1, cpu_workers)
    threads = threads_per_worker(cpu_workers, cores if cores is not None else available_cores(), environ)
    return Resources(pool, kinds, threads)
