"""What every benchmark shares: runtime flags, interleaved timing, environment facts, output.

Timing is built for a noisy, shared machine: the variants of one comparison run in the same
process, interleaved round by round (the order rotates every round), so background load hits
every variant alike; each number is a median over rounds, and a ratio is the median of the
per-round ratios (variant time / reference time measured in the same round).

Clocks: on the CPU with one torch thread every op runs on the calling thread (autograd's CPU
backward too), so its CPU time (`time.thread_time`, user + system) measures the work itself
and ignores the time the thread waits for a core that other processes hold: the default
there (`--clock auto`). Wall time (`time.perf_counter`, after a device synchronise) is the
clock for CUDA and for several CPU threads; both are recorded either way.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

DEFAULT_OUT_DIR = "benchmarks/out"
MIB = 2**20
DEVICES = ("cpu", "cuda")
CLOCKS = ("auto", "wall", "thread")


def add_runtime_args(parser: argparse.ArgumentParser, *, repeats: int, warmup: int) -> None:
    """Flags every benchmark takes: --device, --threads, --repeats, --warmup, --seed, --out."""
    parser.add_argument("--device", default="cpu", choices=DEVICES, help="where to run (default cpu)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op CPU threads (default 1: OpenMP threads crawl on an oversubscribed "
                             "machine, and one thread keeps the variants comparable)")
    parser.add_argument("--repeats", type=int, default=repeats, help=f"timed rounds (default {repeats})")
    parser.add_argument("--warmup", type=int, default=warmup, help=f"untimed rounds first (default {warmup})")
    parser.add_argument("--clock", default="auto", choices=CLOCKS,
                        help="auto (default): thread CPU time on the CPU with --threads 1, else wall time")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tensors, models and batches (default 0)")
    parser.add_argument("--out", default=None, help="write the results as JSON to this file")


def setup_runtime(args: argparse.Namespace) -> torch.device:
    """Apply --threads/--seed, check the device exists, and return it."""
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.repeats < 1 or args.warmup < 0:
        raise ValueError(f"--repeats must be >= 1 and --warmup >= 0, got {args.repeats} and {args.warmup}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch sees no CUDA device; run with --device cpu")
    if args.clock == "thread" and (args.device != "cpu" or args.threads != 1):
        raise ValueError("--clock thread measures only the calling thread: use it with --device cpu --threads 1, "
                         "or pass --clock wall")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return torch.device(args.device)


def resolve_clock(args: argparse.Namespace) -> str:
    """The clock the numbers are reported in: 'thread' or 'wall' (see the module docstring)."""
    if args.clock != "auto":
        return args.clock
    return "thread" if args.device == "cpu" and args.threads == 1 else "wall"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Timing:
    """Per-call times (ms) of one variant, one entry per timed round, in the reported clock
    (`times_ms`) and in both clocks."""

    name: str
    times_ms: tuple[float, ...]
    wall_ms: tuple[float, ...]
    thread_ms: tuple[float, ...]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def min_ms(self) -> float:
        return min(self.times_ms)

    @property
    def iqr_ms(self) -> float:
        """Spread: the interquartile range over rounds."""
        if len(self.times_ms) < 4:
            return max(self.times_ms) - min(self.times_ms)
        q1, _, q3 = statistics.quantiles(self.times_ms, n=4)
        return q3 - q1

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "median_ms": self.median_ms, "min_ms": self.min_ms, "iqr_ms": self.iqr_ms,
                "rounds": len(self.times_ms), "median_wall_ms": statistics.median(self.wall_ms),
                "median_thread_ms": statistics.median(self.thread_ms)}


def time_interleaved(variants: Mapping[str, Callable[[], Any]], *, repeats: int, warmup: int,
                     device: torch.device, clock: str = "wall", inner: int = 1, settle: int = 0
                     ) -> dict[str, Timing]:
    """Time every variant `repeats` rounds; each round calls each variant `settle` times untimed,
    then `inner` times in a row (synchronised before and after) and records the mean time per
    call. The variant order rotates from round to round so none always follows the same
    neighbour. Results are not kept between calls, so every call allocates as it would in a loop.

    settle: untimed calls first, to time only steps that follow a step of the same model (as in
    a training run) rather than another variant's."""
    if not variants:
        raise ValueError("time_interleaved needs at least one variant")
    if inner < 1 or settle < 0:
        raise ValueError(f"inner must be >= 1 and settle >= 0, got {inner} and {settle}")
    if clock not in ("wall", "thread"):
        raise ValueError(f"clock must be 'wall' or 'thread', got {clock!r}")
    names = list(variants)
    wall: dict[str, list[float]] = {name: [] for name in names}
    thread: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            fn = variants[name]
            for _ in range(settle):
                fn()
            synchronize(device)
            start_wall, start_thread = time.perf_counter(), time.thread_time()
            for _ in range(inner):
                fn()
            synchronize(device)
            end_wall, end_thread = time.perf_counter(), time.thread_time()
            if round_index >= warmup:
                wall[name].append((end_wall - start_wall) * 1e3 / inner)
                thread[name].append((end_thread - start_thread) * 1e3 / inner)
    chosen = wall if clock == "wall" else thread
    return {name: Timing(name, tuple(chosen[name]), tuple(wall[name]), tuple(thread[name])) for name in names}


def median_ratio(timings: Mapping[str, Timing], name: str, reference: str) -> float:
    """Median over rounds of time(name) / time(reference), both measured in the same round."""
    pairs = zip(timings[name].times_ms, timings[reference].times_ms)
    return statistics.median(a / b for a, b in pairs)


def environment_info(device: torch.device, threads: int, clock: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "clock": clock,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "device": str(device),
        "load_average_1m_5m_15m": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "argv": sys.argv,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # the quantizer benchmark does not need it
        info["transformers"] = None
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_json(path: str | None, payload: Mapping[str, Any]) -> None:
    """Write `payload` to `path` (parents created) via a temporary file, if a path is given."""
    if path is None:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    tmp.replace(target)
    print(f"wrote {target}")


def finish(benchmark: str, args: argparse.Namespace, environment: Mapping[str, Any], results: Any,
           columns: Sequence[str], rows: Sequence[Sequence[Any]], **fields: Any) -> dict[str, Any]:
    """Print the table, write the JSON payload to --out (if given) and return it. `fields` add to
    the payload (e.g. preset); `config` defaults to every flag."""
    payload = {"benchmark": benchmark, **fields, "environment": environment, "results": results,
               "load_average_end": list(os.getloadavg())}
    payload.setdefault("config", vars(args))
    print(format_table(columns, rows))
    write_json(args.out, payload)
    return payload


def _json_default(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, (torch.device, torch.dtype, Path)):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain fixed-width table; floats get 3 significant decimals."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return "-" if value is None else str(value)

    text = [[cell(v) for v in row] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in text)) if text else len(c) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths)))  # noqa: E731
    return "\n".join([line(list(columns)), line(["-" * w for w in widths])] + [line(r) for r in text])
