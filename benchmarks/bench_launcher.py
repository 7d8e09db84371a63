"""Launcher efficiency: N tiny runs on W CPU workers vs N/W x the time of one run alone.

    python benchmarks/bench_launcher.py --runs 4 --workers 2 [--baseline_repeats 1] [--out bench.json]

The baseline is one run launched alone with the same --workers (so it gets the same
OMP_NUM_THREADS as each run of the sweep). Efficiency = (N / W x baseline) / sweep wall time, where
the sweep wall time is from the first run's start to the last run's end. Reported apart: the
launcher's planning (flag validation), the longest time a worker sat idle between two runs (the
launcher's own overhead), the CPU time per run alone and in the sweep (equal CPU time but longer
wall time means the runs waited for cores, e.g. on a machine shared with other jobs) and the
load average. Prints a table; --out writes it as JSON. Run flags after `--` replace the default tiny
run (digits, ResNet-18 with 8 channels, 3 steps).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eval.cli_flags import OnceArgumentParser  # noqa: E402
from eval.launch_cli import launch, make_jobs, prepare  # noqa: E402
from eval.launch_queue import DONE  # noqa: E402

TINY_RUN = ["--task", "digits", "--model_type", "resnet18", "--config_overrides",
            "depths=[1,1,1,1],hidden_sizes=[8,8,8,8],embedding_size=8", "--max_steps", "3",
            "--max_train_samples", "64", "--max_eval_samples", "32", "--train_batch_size", "16",
            "--search_space", "4,8", "--device", "cpu", "--report_to", "none"]


def run_sweep(run_flags: list[str], seeds: list[int], workers: int, root: Path) -> dict[str, float]:
    """Launch one run per seed on `workers` CPU workers; times in seconds."""
    started = time.monotonic()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    argv = [*run_flags, "--output_root_dir", str(root), "--sweep", "seed=" + ",".join(map(str, seeds)),
            "--workers", str(workers)]
    options, experiments, resources = prepare(argv, available_gpus=[])
    jobs = make_jobs(experiments, resources, skip_completed=False)
    planned = time.monotonic()
    code = launch(jobs, resources, out=io.StringIO(), tty=False)
    failed = [f"{job.name}: {job.reason}" for job in jobs if job.state != DONE]
    if code != 0 or failed:
        raise SystemExit(f"bench_launcher: a run failed, nothing to measure: {failed}")
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    first = min(job.started_at for job in jobs)
    last = max(job.ended_at for job in jobs)
    # Launcher overhead proper: how long a worker sat idle between one run's end and the next start.
    gaps = []
    for worker in range(workers):
        mine = sorted((job for job in jobs if job.slot.worker == worker), key=lambda job: job.started_at)
        gaps += [b.started_at - a.ended_at for a, b in zip(mine, mine[1:])]
    return {"plan_s": planned - started, "queue_wall_s": last - first,
            "mean_run_s": statistics.fmean(job.ended_at - job.started_at for job in jobs),
            "max_gap_s": max(gaps, default=0.0), "cpu_per_run_s": cpu_s / len(jobs),
            "omp_threads": resources.omp_threads}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    run_flags = TINY_RUN
    if "--" in argv:
        split = argv.index("--")
        argv, run_flags = argv[:split], argv[split + 1:]
    parser = OnceArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=4, help="N, runs in the sweep (default 4)")
    parser.add_argument("--workers", type=int, default=2, help="W, parallel CPU workers (default 2)")
    parser.add_argument("--baseline_repeats", type=int, default=1,
                        help="single runs timed; the median is used (default 1)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.workers < 1 or args.baseline_repeats < 1:
        parser.error("--runs, --workers and --baseline_repeats must be >= 1")

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_launcher_") as tmp:
        singles = [run_sweep(run_flags, [1000 + i], args.workers, Path(tmp) / f"alone{i}")
                   for i in range(args.baseline_repeats)]
        sweep = run_sweep(run_flags, list(range(1, args.runs + 1)), args.workers, Path(tmp) / "sweep")
    alone_s = statistics.median(s["queue_wall_s"] for s in singles)
    ideal_s = args.runs / args.workers * alone_s
    result = {
        "runs": args.runs, "workers": args.workers, "cores": len(os.sched_getaffinity(0)),
        "omp_threads_per_run": sweep["omp_threads"], "one_run_alone_s": alone_s,
        "one_run_alone_all_s": [s["queue_wall_s"] for s in singles], "ideal_s": ideal_s,
        "sweep_wall_s": sweep["queue_wall_s"], "sweep_mean_run_s": sweep["mean_run_s"],
        "efficiency": ideal_s / sweep["queue_wall_s"], "max_idle_gap_s": sweep["max_gap_s"],
        "plan_s": sweep["plan_s"], "cpu_per_run_alone_s": statistics.median(s["cpu_per_run_s"] for s in singles),
        "cpu_per_run_in_sweep_s": sweep["cpu_per_run_s"],
        "load_average_1m_before": load_before, "load_average_1m_after": os.getloadavg()[0],
        "python": platform.python_version(), "run_flags": run_flags,
    }
    rows = [("runs x workers", f"{args.runs} x {args.workers} (OMP_NUM_THREADS={sweep['omp_threads']} each, "
                               f"{result['cores']} cores)"),
            ("one run alone", f"{alone_s:.2f} s"),
            ("ideal N/W x alone", f"{ideal_s:.2f} s"),
            ("sweep wall (first start to last end)", f"{sweep['queue_wall_s']:.2f} s"),
            ("mean run time in the sweep", f"{sweep['mean_run_s']:.2f} s"),
            ("efficiency", f"{result['efficiency']:.3f}"),
            ("longest idle worker between runs", f"{sweep['max_gap_s'] * 1000:.0f} ms"),
            ("CPU time per run: alone / in the sweep",
             f"{result['cpu_per_run_alone_s']:.2f} s / {result['cpu_per_run_in_sweep_s']:.2f} s"),
            ("planning of the sweep (flag validation)", f"{sweep['plan_s']:.2f} s"),
            ("1-min load average before / after", f"{load_before:.2f} / {result['load_average_1m_after']:.2f}")]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
