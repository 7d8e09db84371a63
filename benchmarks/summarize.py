"""The short table of benchmark results against the goals, from the JSON files of one run.

    python -m benchmarks.summarize benchmarks/out

Reads the JSON files in the folder (written with --out by the quantizer, step, memory and
profile benchmarks) and prints one line per goal: the measured value, the goal, and PASS / MISS;
figures without a goal are marked info.
Goals depend on the device the file was measured on (benchmarks/README.md).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import format_table
from eval.cli_flags import OnceArgumentParser

# (device type, goal name) -> (threshold, "max" when the value must stay at or below it, "min" at or above)
GOALS: dict[tuple[str, str], tuple[float, str]] = {
    ("cpu", "fixed-format step / float"): (1.4, "max"),  # every fixed format measured
    ("cpu", "search_train step / float"): (1.5, "max"),
    ("cuda", "search_train step / float"): (1.25, "max"),
    ("cuda", "quantizer fwd % of copy (worst format)"): (80.0, "min"),
    ("cpu", "search peak / fixed-format peak"): (1.05, "max"),
    ("cuda", "search peak / fixed-format peak"): (1.05, "max"),
}


@dataclass(frozen=True)
class Line:
    source: str
    subject: str
    metric: str
    value: float
    device: str

    def verdict(self) -> tuple[str, str]:
        goal = GOALS.get((self.device, self.metric))
        if goal is None:
            return "-", "info"
        threshold, sense = goal
        ok = self.value <= threshold if sense == "max" else self.value >= threshold
        return f"{'<=' if sense == 'max' else '>='} {threshold:g}", "PASS" if ok else "MISS"


def _device(payload: dict[str, Any]) -> str:
    return "cuda" if str(payload["environment"]["device"]).startswith("cuda") else "cpu"


def quantizer_lines(path: Path, payload: dict[str, Any]) -> list[Line]:
    device, lines = _device(payload), []
    # The goal applies to fake_quantize as the layers call it; the eager path it replaces on a
    # GPU and a torch.compile'd core are reference points.
    # The goal covers both forms of the kernel: given the scale, and given the range (the layers' form).
    for prefixes, metric in ((("fq fwd ", "fq range fwd "), "quantizer fwd % of copy (worst format)"),
                             (("eager fwd ",), "reference fwd % of copy (worst format)"),
                             (("compiled fwd ",), "reference fwd % of copy (worst format)")):
        rows = [r for r in payload["results"] if r["name"].startswith(prefixes)]
        if rows:
            worst = min(rows, key=lambda r: r["pct_of_copy"])
            lines.append(Line(path.name, worst["name"], metric, worst["pct_of_copy"], device))
    for r in payload["results"]:
        if r["name"].startswith("torch fwd ") and r["granularity"] and r["format"] == "int8":
            lines.append(Line(path.name, r["name"], "torch fake-quant fwd % of copy", r["pct_of_copy"], device))
    return lines


def step_lines(path: Path, payload: dict[str, Any]) -> list[Line]:
    lines = _step_lines(path, payload)
    return [_info(line) for line in lines] if payload.get("preset") == "host" else lines


def _info(line: Line) -> Line:
    """The host preset's line: the goals are set on the cpu and gpu presets' models, not on its
    host-only steps, so its metric names carry the preset and no goal."""
    return Line(line.source, line.subject, f"{line.metric} (host preset)", line.value, line.device)


def _step_lines(path: Path, payload: dict[str, Any]) -> list[Line]:
    device, lines = _device(payload), []
    for result in payload["results"]:
        for v in result["variants"]:
            if v.get("per_layer_weights"):  # the comparison's other side: no goal of its own
                lines.append(Line(path.name, result["model"], f"{v['name']} step / float", v["ratio_to_float"], device))
                continue
            if v.get("ratio_to_per_layer") is not None:
                grouped = v.get("grouped_layers")  # 0 would mean the comparison compared nothing
                subject = result["model"] if grouped is None else f"{result['model']} ({grouped} layers grouped)"
                lines.append(Line(path.name, subject, f"{v['name']} step / per-layer weights",
                                  v["ratio_to_per_layer"], device))
            if v["name"].startswith("fixed_"):
                lines.append(Line(path.name, f"{result['model']} {v['name']}", "fixed-format step / float",
                                  v["ratio_to_float"], device))
            elif v["name"] != "float":
                lines.append(Line(path.name, result["model"], f"{v['name']} step / float", v["ratio_to_float"], device))
    return lines


def memory_lines(path: Path, payload: dict[str, Any]) -> list[Line]:
    device, lines = _device(payload), []
    for result in payload["results"]:
        for v in result["variants"]:
            if v["kind"] == "search":
                lines.append(Line(path.name, f"{result['model']} {v['name']}", "search peak / fixed-format peak",
                                  v["peak_vs_fixed_max"], device))
                lines.append(Line(path.name, f"{result['model']} {v['name']}", "search peak / fixed_int8 peak",
                                  v["peak_vs_fixed_int8"], device))
    return lines


def profile_lines(path: Path, payload: dict[str, Any]) -> list[Line]:
    """Why a step takes its time (no goal): the shares of its wall time the host was busy (of
    the profiled steps) and the device was busy (benchmarks/profile_step.py). Files written
    before the profiled wall was recorded give the device's share only."""
    device, lines = _device(payload), []
    for result in payload["results"]:
        for v in result["variants"]:
            subject = f"{result['model']} {v['name']}"
            if "profiled_wall_ms" in v:
                lines.append(Line(path.name, subject, "host busy / wall", v["host_busy_ms"] / v["profiled_wall_ms"],
                                  device))
            if v["device_busy_ms"] is not None:
                lines.append(Line(path.name, subject, "device busy / wall", v["device_busy_ms"] / v["wall_ms"], device))
    return lines


def launch_lines(path: Path, payload: dict[str, Any]) -> list[Line]:
    """Host time per quantizer call (no goal, benchmarks/bench_launch.py): each variant's microseconds.
    Files of the seventh session also hold a ratio row (a direct launch against Triton's dispatch)."""
    device, lines = _device(payload), []
    for row in payload["results"]:
        if "us_per_call" in row:
            lines.append(Line(path.name, row["name"], "host us per call", row["us_per_call"], device))
        else:
            lines.append(Line(path.name, row["name"], "ratio", row["ratio"], device))
    return lines


READERS = {"quantizer": quantizer_lines, "search_step": step_lines, "memory": memory_lines,
           "profile_step": profile_lines, "launch": launch_lines}


def summarize(folder: Path) -> list[Line]:
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder; pass the --out folder of the benchmarks (e.g. benchmarks/out)")
    lines: list[Line] = []
    for path in sorted(folder.glob("*.json")):
        try:
            payload = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}); remove it or rerun its benchmark") from None
        reader = READERS.get(payload.get("benchmark", ""))
        if reader is not None:
            lines += reader(path, payload)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = OnceArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    try:
        lines = summarize(args.folder)
    except (ValueError, OSError) as error:  # not a folder, an unreadable or malformed JSON file
        print(f"summarize: error: {error}", file=sys.stderr)
        return 2
    if not lines:
        print(f"no benchmark JSON in {args.folder}")
        return 1
    rows = [[l.source, l.device, l.subject, l.metric, l.value, *l.verdict()] for l in lines]
    print(format_table(["file", "device", "subject", "metric", "value", "goal", "verdict"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
