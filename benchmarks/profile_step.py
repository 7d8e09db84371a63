"""Where a training step's time goes: host work, waits for the device, and device work.

The step benchmark (bench_search_step) gives each variant's wall time; this explains it. For
each variant (float, fixed-format, search) it profiles a few steps with torch.profiler and
reports per step:

- wall ms: unprofiled, synchronised after each step, the median of `--repeats` steps;
- device busy ms: the union of kernel, copy and memset intervals on the device (CUDA only);
  device idle = wall - device busy is the time the device waited for the host;
- kernels, launches: device kernels run (copies and memsets not counted), and host launch calls
  (cudaLaunchKernel, cuLaunchKernel);
- profiled wall ms, host wait ms, host busy ms: from the profiled steps (also synchronised after
  each step): the mean wall time, the time the host spent blocked on the device (synchronise
  calls and blocking copies: `.item()`/`.tolist()`, copies from pageable memory), and the rest,
  the host's own work (Python, dispatch, launches), which the profiler inflates a little;
- the top host ops by self CPU time per step (the profiler's own records left out).

If the device idles for much of the step while the host is busy, the step is bound by the host:
every launch and Python call it adds lengthens it. If device busy is close to wall, the device
work is what to cut.

    python -m benchmarks.profile_step                                          # CPU preset
    python -m benchmarks.profile_step --device cuda --preset gpu --out benchmarks/out/profile_gpu.json
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any, Iterable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from benchmarks.bench_search_step import DEFAULT_FIXED_FORMATS, DEFAULT_SEARCH_SPACE, step_variants
from benchmarks.common import add_runtime_args, environment_info, finish, setup_runtime, synchronize
from benchmarks.step_setup import TrainerStep, add_model_args, build_trainer, chosen_cases
from eval.cli_flags import OnceArgumentParser

# Host calls that block until the device catches up (the D2H copy of .item() blocks too).
WAIT_CALLS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy",
              "cudaMemcpyAsync", "cuStreamSynchronize", "cuCtxSynchronize")
LAUNCH_PREFIXES = ("cudaLaunchKernel", "cuLaunchKernel")
DEVICE_TYPES = (DeviceType.CUDA,)
NOT_KERNELS = ("Memcpy", "Memset")  # device events that are copies or memsets
PROFILER_RECORDS = ("Activity Buffer Request",)  # the profiler's own host work


def _merged_length(intervals: Iterable[tuple[float, float]]) -> float:
    """Total length covered by the (start, end) intervals (overlaps counted once)."""
    total, current_start, current_end = 0.0, None, None
    for start, end in sorted(intervals):
        if current_end is None or start > current_end:
            if current_end is not None:
                total += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        total += current_end - current_start
    return total


def summarize_events(events: Iterable[Any], steps: int, top: int) -> dict[str, Any]:
    """Per-step figures from a profiler's FunctionEvents (times in us there, ms here)."""
    device_intervals: list[tuple[float, float]] = []
    kernels = launches = 0
    wait_us = 0.0
    host_self_us: dict[str, float] = {}
    host_calls: dict[str, int] = {}
    for event in events:
        if event.device_type in DEVICE_TYPES:
            device_intervals.append((event.time_range.start, event.time_range.end))
            kernels += not event.name.startswith(NOT_KERNELS)
            continue
        name = event.name
        if name in PROFILER_RECORDS:
            continue
        if name.startswith(LAUNCH_PREFIXES):
            launches += 1
        if name in WAIT_CALLS:
            wait_us += event.time_range.elapsed_us()
        host_self_us[name] = host_self_us.get(name, 0.0) + event.self_cpu_time_total
        host_calls[name] = host_calls.get(name, 0) + 1
    ranked = sorted(host_self_us, key=host_self_us.get, reverse=True)[:top]
    return {
        "kernels_per_step": kernels / steps,
        "launches_per_step": launches / steps,
        "device_busy_ms": _merged_length(device_intervals) / 1e3 / steps if device_intervals else None,
        "host_wait_ms": wait_us / 1e3 / steps,
        "top_host_ops": [{"name": n, "self_ms_per_step": host_self_us[n] / 1e3 / steps,
                          "calls_per_step": host_calls[n] / steps} for n in ranked],
    }


def profile_variant(step: TrainerStep, device: torch.device, repeats: int, profiled_steps: int,
                    top: int) -> dict[str, Any]:
    wall = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        wall.append((time.perf_counter() - start) * 1e3)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    profiled_ms = 0.0
    with profile(activities=activities) as prof:
        for _ in range(profiled_steps):
            start = time.perf_counter()
            step()
            synchronize(device)  # as the wall loop: the wait includes the step's last device work
            profiled_ms += (time.perf_counter() - start) * 1e3
    summary = summarize_events(prof.events(), profiled_steps, top)
    profiled_wall_ms = profiled_ms / profiled_steps
    summary.update(wall_ms=statistics.median(wall), profiled_wall_ms=profiled_wall_ms,
                   host_busy_ms=profiled_wall_ms - summary["host_wait_ms"])
    return summary


def run_case(case, variants, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    rows = []
    with tempfile.TemporaryDirectory() as output_dir:
        for variant in variants:
            built = build_trainer(case, variant, device=device, output_dir=output_dir, seed=args.seed)
            step = TrainerStep(built)
            for _ in range(args.warmup):
                step()
            rows.append({"name": variant.name, **profile_variant(step, device, args.repeats, args.steps, args.top)})
            del step, built
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return {"model": case.name, "model_type": case.model_type, "batch_size": case.batch_size, "variants": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = OnceArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runtime_args(parser, repeats=10, warmup=3)
    add_model_args(parser)
    parser.add_argument("--steps", type=int, default=5, help="profiled steps per variant (default 5)")
    parser.add_argument("--top", type=int, default=12, help="host ops listed per variant (default 12)")
    parser.add_argument("--fixed_formats", default=DEFAULT_FIXED_FORMATS.split(",")[0],
                        help="fixed-format variants (default int8)")
    parser.add_argument("--search_space", default=DEFAULT_SEARCH_SPACE,
                        help=f"options of the search variant (default {DEFAULT_SEARCH_SPACE})")
    parser.add_argument("--per_layer_weights", action="store_true",
                        help="also profile the quantized variants with each layer quantizing its own weight "
                             "(as <name>_per_layer)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.top < 1:
        parser.error(f"--steps and --top must be >= 1, got {args.steps} and {args.top}")
    if args.clock != "auto":
        parser.error("--clock does not apply: the wall column is wall time and the rest comes from the profiler")
    device = setup_runtime(args)
    environment = environment_info(device, args.threads, "wall")
    preset, cases = chosen_cases(args)
    variants = step_variants([f.strip() for f in args.fixed_formats.split(",") if f.strip()],
                             [f.strip() for f in args.search_space.split(",")], ["train"], args.per_layer_weights)
    results = [run_case(case, variants, args, device) for case in cases]
    rows = [[r["model"], v["name"], v["wall_ms"], v["device_busy_ms"], v["profiled_wall_ms"], v["host_busy_ms"],
             v["host_wait_ms"], v["launches_per_step"], v["kernels_per_step"]] for r in results for v in r["variants"]]
    payload = finish("profile_step", args, environment, results,
                     ["model", "variant", "wall ms", "device busy ms", "profiled wall ms", "host busy ms",
                      "host wait ms", "launches", "kernels"], rows, preset=preset)
    for result in results:
        for variant in result["variants"]:
            ops = ", ".join(f"{op['name']} {op['self_ms_per_step']:.2f} ms x{op['calls_per_step']:.0f}"
                            for op in variant["top_host_ops"])
            print(f"{result['model']}/{variant['name']} top host ops per step: {ops}")
    return payload


if __name__ == "__main__":
    main()
