"""Peak memory of a training step: fixed-format quantized vs search, and the search's growth
with the number of options (one-shot search shares every weight, so it must stay flat).

Peak = the most tensor memory alive at once during steady-state training steps (after one
warm-up step has created the optimizer state): weights, gradients, optimizer state, saved
activations and temporaries, as the allocator sees them.

- CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`; the variants run one
  after another in this process (memory of the previous one freed; `allocated` is exact).
- CPU: every variant runs in a fresh subprocess under `torch.profiler` with
  profile_memory=True, which records each allocation and free of PyTorch's CPU allocator in
  order; their running sum, started before the model is built, is the live tensor memory, and
  its maximum over the measured steps is the peak. Deterministic (no sampling, independent of
  machine load and of malloc caching), unlike process RSS, which is reported beside it
  (`ru_maxrss` of the subprocess: includes the interpreter and libraries, ~hundreds of MiB).

    python -m benchmarks.bench_memory                                   # CPU preset
    python -m benchmarks.bench_memory --device cuda --out benchmarks/out/memory_gpu.json

Goal: search peak <= 1.05x the fixed-format peak, flat in the number of options (2, 4, 8).
Reported against fixed INT8 and against the largest fixed-format peak (FP layers keep a
1-byte gradient mask per element; INT layers with abs-max scales need none).
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import tempfile
from typing import Any

import torch

from benchmarks.common import MIB, environment_info, finish
from benchmarks.step_setup import (ModelCase, StepVariant, TrainerStep, add_model_args, build_trainer, chosen_cases,
                                   preset_cases)
from eval.cli_flags import OnceArgumentParser

# Option lists of growing size; every list contains the smaller ones.
# Half INT, half FP at every size, so the lists differ in length, not in the kind of rounding.
OPTION_LISTS: dict[int, tuple[str, ...]] = {
    2: ("int8", "fp8_e4m3"),
    4: ("int4", "int8", "fp4_e2m1", "fp8_e4m3"),
    8: ("int2", "int4", "int6", "int8", "fp4_e2m1", "fp6_e2m3", "fp8_e4m3", "fp8_e5m2"),
}
MARKER = "fliqs_measured_steps"
REFERENCE = "fixed_int8"


def memory_variants(option_counts: list[int], heldout: bool) -> list[StepVariant]:
    bad = [k for k in option_counts if k not in OPTION_LISTS]
    if bad:
        raise ValueError(f"--options {bad} unsupported; choose from {sorted(OPTION_LISTS)}")
    variants = [StepVariant("float", "float"), StepVariant(REFERENCE, "fixed", ("int8",)),
                StepVariant("fixed_fp8_e4m3", "fixed", ("fp8_e4m3",))]
    variants += [StepVariant(f"search_{k}", "search", OPTION_LISTS[k]) for k in option_counts]
    if heldout:
        k = option_counts[-1]
        variants.append(StepVariant(f"search_{k}_heldout", "search", OPTION_LISTS[k], "heldout"))
    return variants


def _profiled_peak(prof: Any) -> tuple[float, float]:
    """(live bytes when the measured steps start, peak live bytes during them) from the
    profiler's allocator records, summed in time order from the start of profiling."""
    results = getattr(getattr(prof, "profiler", None), "kineto_results", None)
    if results is None:  # the raw event list is not a public API: fail clearly if it moves
        raise RuntimeError("this torch's profiler does not expose its allocator records "
                           "(prof.profiler.kineto_results); measure peak memory with --device cuda")
    events = results.events()
    marks = [e.start_ns() for e in events if e.name() == MARKER]
    if not marks:
        raise RuntimeError(f"the profiler recorded no {MARKER!r} range; cannot locate the measured steps")
    start_ns = marks[0]
    records = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    live, start_live, peak = 0.0, None, 0.0
    for time_ns, nbytes in records:
        if start_live is None and time_ns >= start_ns:
            start_live = peak = live
        live += nbytes
        if start_live is not None:
            peak = max(peak, live)
    if start_live is None:  # no allocation inside the measured steps
        start_live = peak = live
    return start_live, peak


def measure_cpu(case: ModelCase, variant: StepVariant, steps: int, seed: int) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile, record_function

    with tempfile.TemporaryDirectory() as output_dir:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            step = TrainerStep(build_trainer(case, variant, device=torch.device("cpu"), output_dir=output_dir,
                                             seed=seed))
            step()  # warm-up: creates the optimizer state
            with record_function(MARKER):
                for _ in range(steps):
                    step()
    start, peak = _profiled_peak(prof)
    maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"start_mib": start / MIB, "peak_mib": peak / MIB, "maxrss_mib": maxrss_kib / 1024}


def measure_cuda(case: ModelCase, variant: StepVariant, steps: int, seed: int) -> dict[str, Any]:
    device = torch.device("cuda")
    gc.collect()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    with tempfile.TemporaryDirectory() as output_dir:
        step = TrainerStep(build_trainer(case, variant, device=device, output_dir=output_dir, seed=seed))
        step()
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device) - base
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(steps):
            step()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del step
    gc.collect()
    torch.cuda.empty_cache()
    return {"start_mib": start / MIB, "peak_mib": peak / MIB, "maxrss_mib": None}


def _run_child(case: ModelCase, variant: StepVariant, args: argparse.Namespace) -> dict[str, Any]:
    """One CPU variant in a fresh interpreter; its result is the last line of its stdout."""
    spec = {"model": case.name, "preset": args.preset_name, "variant": variant.name, "kind": variant.kind.value,
            "formats": list(variant.formats), "reward_source": variant.reward_source, "steps": args.steps,
            "seed": args.seed, "threads": args.threads}
    cmd = [sys.executable, "-m", "benchmarks.bench_memory", "--child", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.child_timeout)
    if done.returncode != 0:
        raise RuntimeError(f"memory child for {case.name}/{variant.name} failed ({done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    torch.set_num_threads(spec["threads"])
    case = preset_cases(spec["preset"], [spec["model"]])[0]
    variant = StepVariant(spec["variant"], spec["kind"], tuple(spec["formats"]), spec["reward_source"])
    print(json.dumps(measure_cpu(case, variant, spec["steps"], spec["seed"])))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = OnceArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (default cpu)")
    add_model_args(parser)
    parser.add_argument("--options", default="2,4,8", help="search-space sizes to compare (default 2,4,8)")
    parser.add_argument("--no_heldout", action="store_true", help="skip the reward_source heldout variant")
    parser.add_argument("--steps", type=int, default=2, help="measured steps after one warm-up step (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op CPU threads (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the models and batches (default 0)")
    parser.add_argument("--child_timeout", type=int, default=600, help="seconds per CPU subprocess (default 600)")
    parser.add_argument("--out", default=None, help="write the results as JSON to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child_main(args.child)
        return {}
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch sees no CUDA device; run with --device cpu")
    torch.set_num_threads(args.threads)
    environment = environment_info(torch.device(args.device), args.threads, "none")  # load before the run
    args.preset_name, cases = chosen_cases(args)  # the name goes to the CPU subprocesses too
    variants = memory_variants([int(k) for k in args.options.split(",")], not args.no_heldout)

    results = []
    for case in cases:
        rows = []
        for variant in variants:
            if args.device == "cuda":
                measured = measure_cuda(case, variant, args.steps, args.seed)
            else:
                measured = _run_child(case, variant, args)
            rows.append({"name": variant.name, "kind": variant.kind.value, "formats": list(variant.formats),
                         "reward_source": variant.reward_source, **measured})
            print(f"{case.name} {variant.name}: peak {measured['peak_mib']:.1f} MiB", flush=True)
        reference = next(r for r in rows if r["name"] == REFERENCE)
        # FP layers save a 1-byte mask per element that INT layers with abs-max scales do not
        # need, so a search over INT and FP is compared with the largest fixed-format peak too.
        fixed_max = max(r["peak_mib"] for r in rows if r["kind"] == "fixed")
        for row in rows:
            row["peak_vs_fixed_int8"] = row["peak_mib"] / reference["peak_mib"]
            row["peak_vs_fixed_max"] = row["peak_mib"] / fixed_max
        results.append({"model": case.name, "variants": rows})
    rows = [[r["model"], v["name"], v["start_mib"], v["peak_mib"], v["peak_vs_fixed_int8"], v["peak_vs_fixed_max"],
             v["maxrss_mib"]] for r in results for v in r["variants"]]
    return finish("memory", args, environment, results,
                  ["model", "variant", "start MiB", "peak MiB", "x fixed_int8", "x max fixed", "maxrss MiB"], rows,
                  preset=args.preset_name, config={k: v for k, v in vars(args).items() if k != "child"},
                  method="cuda.max_memory_allocated" if args.device == "cuda" else "profiler allocator records")


if __name__ == "__main__":
    main()
