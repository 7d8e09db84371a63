"""Tables and Pareto plots over the runs under an output root.

`python -m eval.eval_parse OUTPUT_ROOT [--format md|csv|json] [--plot FILE.png] [--metric NAME]
[--cost memory|compute] [--group_by KEY ...] [--lower_is_better|--higher_is_better] [--layers RUN]`

Every run directory found is either a table row (alone or aggregated with its seed replicas as
mean and sample std) or listed in the "invalid" section with the reason: failed, incomplete,
missing or non-finite metric/cost, grouped with runs that differ in more than the seed, or two
runs of one setting with the same seed. Output formats: md (sections with pipe tables), csv
(`# ` note lines, then one table: the runs; the invalid runs go to stderr, one line each, so
that stdout stays one table), json (one object; non-finite numbers are null). Exit code 0
whenever the report was produced (invalid runs included), 2 for bad CLI input or an output that
cannot be written, with one error line.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from eval.pareto import (interpolate_uniform_line, metric_higher_is_better, new_figure, pareto_mask, plot_pareto,
                         save_figure)
from eval.results import (COMPLETED, COST_TYPES, FAILED, INCOMPLETE, PSEUDO_KEYS, REPLICA_ARGS, RUN_MARKERS,
                          RunGroup, RunRecord, available_group_keys, formats_label, group_runs, load_run, load_runs)

PROG = "python -m eval.eval_parse"
FORMATS = ("md", "csv", "json")
# cost type -> (table column, axis label)
COST_COLUMNS = {"memory": ("memory_mib", "model size (MiB)"), "compute": ("gbops", "compute (GBOPs)")}
INVALID_COLUMNS = ("run", "status", "reason", "path")


class ReportInputError(ValueError):
    """Bad CLI input; the message names the bad value and the way out. The CLI exits with code 2."""


@dataclass(frozen=True)
class Aggregate:
    mean: float
    std: float | None  # sample standard deviation; None for a single value
    n: int


def aggregate(values: Sequence[float]) -> Aggregate:
    if not values:
        raise ValueError("aggregate needs at least one value")
    std = statistics.stdev(values) if len(values) > 1 else None
    return Aggregate(statistics.fmean(values), std, len(values))


def row_columns(cost_column: str) -> tuple[str, ...]:
    return ("run", "task", "model", "method", "formats", "search_space", "granularity", "cost_target", "ratio",
            cost_column, f"{cost_column}_std", "metric", "value", "std", "n", "pareto", "vs_uniform")


@dataclass
class Report:
    output_root: str
    metric: str | None  # --metric, or None for each run's main_metric
    direction_override: bool | None  # --higher_is_better (True) / --lower_is_better (False); None: from the name
    cost_type: str
    group_by: tuple[str, ...] | None  # None: automatic (every argument except REPLICA_ARGS)
    rows: list[dict[str, Any]] = field(default_factory=list)
    invalid: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    directions: dict[str, bool] = field(default_factory=dict)  # metric -> higher is better

    def higher_is_better(self, metric: str) -> bool:
        if self.direction_override is not None:
            return self.direction_override
        return self.directions.get(metric, metric_higher_is_better(metric))

    @property
    def cost_column(self) -> str:
        return COST_COLUMNS[self.cost_type][0]

    @property
    def cost_label(self) -> str:
        return COST_COLUMNS[self.cost_type][1]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _invalid(run: RunRecord, status: str, reason: str | None) -> dict[str, str]:
    return {"run": run.label, "status": status, "reason": reason or "", "path": str(run.run_dir)}


def _resolve_cost_type(runs: Sequence[RunRecord], requested: str | None) -> tuple[str, str | None]:
    if requested is not None:
        return requested, None
    searched = [run for run in runs if run.method == "search"] or list(runs)
    types = sorted({run.cost["cost_type"] for run in searched})
    if len(types) == 1:
        return types[0], None
    if not types:
        return "memory", None
    return "memory", f"the runs optimised different cost types ({', '.join(types)}): reporting memory; pass --cost"


def _check_inputs(runs: Sequence[RunRecord], metric: str | None, group_by: Sequence[str] | None) -> None:
    if metric is not None and not any(metric in run.metrics for run in runs):
        names = sorted(set().union(*(run.metrics for run in runs)))
        raise ReportInputError(f"--metric {metric!r} is in no run's metrics; metrics that exist: "
                               f"{', '.join(names) or 'none (no completed runs)'}")
    if group_by is not None:
        valid = available_group_keys(runs)
        unknown = [key for key in group_by if key not in valid]
        if unknown:
            raise ReportInputError(f"--group_by {', '.join(unknown)}: not a pseudo-key or an argument of any completed "
                                   f"run; valid keys: {', '.join(valid)}")


def _mismatch_reason(group: RunGroup, mismatches: dict[str, dict[str, list[str]]]) -> str:
    keys = ", ".join(f"{name}={value}" for name, value in group.key) if group.key else "nothing"
    parts = ["{} ({})".format(name, "; ".join(f"{value}: {', '.join(labels)}" for value, labels in by_value.items()))
             for name, by_value in mismatches.items()]
    return (f"grouped on {keys} with runs that differ in {' and '.join(parts)}; "
            "add those keys to --group_by, or rerun the sweep with matching arguments")


def _row(group: RunGroup, measured: dict[int, tuple[str, float, float]], cost_column: str) -> dict[str, Any]:
    first = group.runs[0]
    metric_name = measured[id(first)][0]
    values = aggregate([measured[id(run)][1] for run in group.runs])
    costs = aggregate([measured[id(run)][2] for run in group.runs])
    ratios = [run.cost.get("ratio") for run in group.runs]
    formats = {formats_label(run) for run in group.runs}
    search = first.search or {}
    cells = (", ".join(run.label for run in group.runs), first.task, first.model_type, first.method,
             formats.pop() if len(formats) == 1 else "mixed", ",".join(search.get("search_space", [])),
             search.get("granularity", ""), first.cost.get("target"),
             aggregate(ratios).mean if all(map(_finite, ratios)) else None,
             costs.mean, costs.std, metric_name, values.mean, values.std, values.n, False, None)
    return dict(zip(row_columns(cost_column), cells))


def _repeated_seed_reason(group: RunGroup) -> str:
    parts = [f"seed {seed}: {', '.join(labels)}" for seed, labels in group.repeated_seeds.items()]
    return (f"runs of one setting share a seed ({'; '.join(parts)}): the same run twice (relaunched under another "
            "name?), not replicas; delete the duplicate run directory or give the runs distinct seeds")


_SEED_PART = re.compile(r"(^|_)(seed=-?\d+|s-?\d+)(?=_|$)")


def _split_notes(groups: Sequence[RunGroup]) -> list[str]:
    """Runs whose names differ only in the seed but that landed in different groups: say what splits them."""
    by_stem: dict[tuple[str, str], list[RunGroup]] = {}
    for group in groups:
        for stem in dict.fromkeys((run.task, _SEED_PART.sub("", run.exp_name)) for run in group.runs):
            by_stem.setdefault(stem, []).append(group)
    notes = []
    for (task, stem), members in by_stem.items():
        if len(members) < 2:
            continue
        keys = [dict(group.key) for group in members]
        differing = [name for name in dict.fromkeys(k for key in keys for k in key)
                     if len({key.get(name) for key in keys}) > 1]
        parts = ["{} ({})".format(name, "; ".join(f"{key.get(name, 'missing')}: {group.runs[0].label}"
                                                  for key, group in zip(keys, members))) for name in differing]
        notes.append(f"{task}/{stem}: runs named alike apart from the seed are in {len(members)} groups, not "
                     f"aggregated, because they differ in {' and '.join(parts) or 'their group keys'}; rerun them "
                     "with matching flags to aggregate them")
    return notes


def _mark_frontier(rows: list[dict[str, Any]], cost_column: str, report: Report) -> None:
    families: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        families.setdefault((row["task"], row["model"], row["metric"]), []).append(row)
    for (_, _, metric), members in families.items():
        higher_is_better = report.higher_is_better(metric)
        mask = pareto_mask([r[cost_column] for r in members], [r["value"] for r in members], higher_is_better)
        uniform = [(r[cost_column], r["value"]) for r in members if r["method"] == "uniform"]
        for row, on_frontier in zip(members, mask):
            row["pareto"] = on_frontier
            # How far a searched model sits above (+) or below (-) the uniform line at its cost.
            line = interpolate_uniform_line(uniform, row[cost_column], higher_is_better) \
                if row["method"] == "search" else None
            row["vs_uniform"] = None if line is None else (row["value"] - line) * (1 if higher_is_better else -1)


def _direction_note(report: Report) -> str:
    names = sorted({row["metric"] for row in report.rows})
    parts = [f"{name} ({'higher' if report.higher_is_better(name) else 'lower'} is better)" for name in names]
    source = ("as --higher_is_better/--lower_is_better says" if report.direction_override is not None else
              "from the name: loss, perplexity, error, mse, mae mean lower is better; --higher_is_better or "
              "--lower_is_better overrides it")
    return f"metric: {report.metric or 'each run main_metric'}: {', '.join(parts) or 'no rows'}, {source}"


def build_report(runs: Sequence[RunRecord], output_root: str, metric: str | None = None, cost_type: str | None = None,
                 group_by: Sequence[str] | None = None, higher_is_better: bool | None = None) -> Report:
    """Validate, group, aggregate and mark the frontier. Raises ReportInputError for bad metric/keys.
    `higher_is_better`: the metric's direction, None to tell it from each metric's name."""
    if cost_type is not None and cost_type not in COST_COLUMNS:
        raise ReportInputError(f"cost type {cost_type!r} is not one of {', '.join(COST_COLUMNS)}")
    completed = [run for run in runs if run.status == COMPLETED]
    _check_inputs(completed, metric, group_by)
    cost_type, cost_note = _resolve_cost_type(completed, cost_type)
    report = Report(output_root, metric, higher_is_better, cost_type, tuple(group_by) if group_by else None)
    column = report.cost_column
    report.invalid = [_invalid(run, run.status, run.reason) for run in runs if run.status != COMPLETED]
    measured: dict[int, tuple[str, float, float]] = {}
    for run in completed:
        name = metric or run.main_metric
        value, cost = run.metrics.get(name), run.cost[column]
        if name not in run.metrics:
            report.invalid.append(_invalid(run, "missing_metric", f"metric {name!r} is not in this run's metrics "
                                                                  f"(has: {', '.join(sorted(run.metrics))})"))
        elif not _finite(value):
            report.invalid.append(_invalid(run, "non_finite", f"metric {name} is {value!r}"))
        elif not _finite(cost):
            report.invalid.append(_invalid(run, "non_finite", f"cost.{column} is {cost!r}"))
        else:
            measured[id(run)] = (name, float(value), float(cost))
    valid = [run for run in completed if id(run) in measured]
    groups = group_runs(valid, report.group_by)
    for group in groups:
        mismatches = {name: dict(by_value) for name, by_value in group.mismatches.items()}
        metric_names: dict[str, list[str]] = {}
        for run in group.runs:
            metric_names.setdefault(measured[id(run)][0], []).append(run.label)
        if len(metric_names) > 1:
            mismatches["main_metric"] = metric_names
        if mismatches:
            reason = _mismatch_reason(group, mismatches)
            report.invalid.extend(_invalid(run, "mismatched_args", reason) for run in group.runs)
        elif group.repeated_seeds:
            reason = _repeated_seed_reason(group)
            report.invalid.extend(_invalid(run, "repeated_seed", reason) for run in group.runs)
        else:
            report.rows.append(_row(group, measured, column))
    report.directions = {name: report.higher_is_better(name) for name in {row["metric"] for row in report.rows}}
    _mark_frontier(report.rows, column, report)
    report.rows.sort(key=lambda r: (r["task"], r["model"], r["metric"], r[column],
                                    -r["value"] if report.higher_is_better(r["metric"]) else r["value"]))

    counts = {status: sum(run.status == status for run in runs) for status in (COMPLETED, FAILED, INCOMPLETE)}
    replicas = ", ".join(sorted(REPLICA_ARGS))
    report.notes = [
        f"{len(runs)} run directories: {counts[COMPLETED]} completed, {counts[FAILED]} failed, "
        f"{counts[INCOMPLETE]} incomplete; {len(report.rows)} table rows from "
        f"{sum(row['n'] for row in report.rows)} runs; {len(report.invalid)} invalid runs listed separately",
        f"{_direction_note(report)}; cost: {report.cost_label}; pareto: on the frontier of metric vs cost within "
        "its task/model/metric; vs_uniform: a searched model's "
        "metric minus the line through the uniform baselines at its cost (positive = better than uniform)",
        (f"grouped by {', '.join(report.group_by)} (and, for fixed-format runs, their formats): runs that agree on "
         f"them and differ only in {replicas}"
         if report.group_by else f"grouped automatically by every argument except {replicas}: seed replicas")
        + " are aggregated as mean and sample std over n runs"
        + ("" if report.group_by else "; pass --group_by KEY ... to choose the keys"),
    ]
    report.notes += _split_notes(groups)
    if cost_note:
        report.notes.append(cost_note)
    if any(run.method == "search" and run.cost["cost_type"] != cost_type for run in valid):
        report.notes.append("cost_target and ratio are in each search's own cost_type, not in the reported cost")
    return report


@dataclass
class Document:
    """What gets rendered: notes, then named sections of rows; `meta` goes into the json output only."""

    title: str
    notes: list[str]
    sections: list[tuple[str, str, Sequence[str], list[dict[str, Any]]]]  # (json key, heading, columns, rows)
    meta: dict[str, Any] = field(default_factory=dict)


def report_document(report: Report) -> Document:
    meta = {"output_root": report.output_root, "metric": report.metric, "higher_is_better": report.directions,
            "cost_type": report.cost_type, "cost_column": report.cost_column,
            "group_by": list(report.group_by) if report.group_by else "auto"}
    return Document(f"FLIQS results: {report.output_root}", report.notes,
                    [("rows", "Runs", row_columns(report.cost_column), report.rows),
                     ("invalid", f"Invalid runs ({len(report.invalid)})", INVALID_COLUMNS, report.invalid)], meta)


def layer_document(run: RunRecord) -> Document:
    """Per-layer formats and cost of one completed run, with its decision's final probabilities."""
    search = run.search or {}
    decisions = search.get("decisions", {})
    options = search.get("search_space", []) if run.method == "search" else []
    decision_of = {layer: name for name, decision in decisions.items() for layer in decision["layers"]}
    columns = ("layer", "decision", "weight_format", "act_format", "memory_mib", "gbops") + \
        tuple(f"p_{option}" for option in options)
    rows = []
    for name, layer in run.layers.items():
        decision = decision_of.get(name)
        probabilities = decisions[decision]["probabilities"] if decision else {}
        cells = (name, decision or "", layer["weight_format"], layer["act_format"], layer["memory_mib"], layer["gbops"])
        rows.append(dict(zip(columns, cells + tuple(probabilities.get(option) for option in options))))
    cost = run.cost
    notes = [f"run {run.label} ({run.run_dir}): {run.method} on {run.task} / {run.model_type}",
             f"total {cost['memory_mib']:.6g} MiB of {cost['float_memory_mib']:.6g} MiB at fp32; "
             f"{cost['gbops']:.6g} GBOPs of {cost['float_gbops']:.6g} at fp32"]
    if search:
        notes.append(f"search space {','.join(options)}, granularity {search['granularity']}, "
                     f"{len(decisions)} decisions; p_* are the final probabilities of the layer's decision")
    meta = {"run": run.label, "path": str(run.run_dir), "method": run.method, "cost": cost, "decisions": decisions}
    return Document(f"Layers of {run.label}", notes, [("layers", "Layers", columns, rows)], meta)


def _cell(value: Any, precise: bool) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return repr(value) if precise else f"{value:.6g}"
    return " ".join(str(value).split())


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (JSON has no NaN or infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def render(document: Document, fmt: str) -> str:
    """The document as md, csv or json text (each parses back; see the module docstring). csv holds
    the notes and the first section only: one table (`invalid_lines` gives the report's invalid runs)."""
    if fmt == "json":
        payload = dict(document.meta, notes=document.notes)
        payload.update({key: rows for key, _, _, rows in document.sections})
        return json.dumps(json_safe(payload), indent=2, allow_nan=False) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        buffer.writelines(f"# {note}\n" for note in document.notes)
        _, _, columns, rows = document.sections[0]
        writer.writerow(columns)
        writer.writerows([_cell(row[c], precise=True) for c in columns] for row in rows)
        return buffer.getvalue()
    if fmt != "md":
        raise ReportInputError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    lines = [f"# {document.title}", ""] + [f"- {note}" for note in document.notes]
    for _, heading, columns, rows in document.sections:
        lines += ["", f"## {heading}", ""]
        if not rows:
            lines.append("none")
            continue
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "|".join("---" for _ in columns) + "|")
        lines += ["| " + " | ".join(_cell(row[c], False).replace("|", "\\|") for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def resolve_run(runs: Sequence[RunRecord], output_root: Path, spec: str) -> RunRecord:
    """The completed run named by `spec`: a run directory (as given or under the root) or an exp_name."""
    for candidate in (Path(spec), output_root / spec):
        if candidate.is_dir() and any((candidate / marker).exists() for marker in RUN_MARKERS):
            same = [run for run in runs if run.run_dir.resolve() == candidate.resolve()]
            run = same[0] if same else load_run(candidate)
            break
    else:
        matches = [run for run in runs if spec in (run.exp_name, run.label)]
        if not matches:
            names = [run.label for run in runs]
            listed = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise ReportInputError(f"--layers {spec!r} is neither a run directory nor an exp_name under "
                                   f"{output_root}; runs: {listed or 'none'}")
        if len(matches) > 1:
            raise ReportInputError(f"--layers {spec!r} names {len(matches)} runs "
                                   f"({', '.join(str(r.run_dir) for r in matches)}); pass the run directory instead")
        run = matches[0]
    if run.status != COMPLETED:
        raise ReportInputError(f"--layers {spec!r}: the run is {run.status} ({run.reason}); "
                               "only a completed run has final layer formats to show")
    return run


def invalid_lines(report: Report) -> list[str]:
    """The invalid runs as one line each (where csv output puts them: stderr)."""
    return [f"invalid run {row['run']} ({row['status']}): {' '.join(row['reason'].split())} [{row['path']}]"
            for row in report.invalid]


# Heat map geometry (inches): the width of one character of the labels, fonts 7 (decisions) and 9 (title).
_CHAR_IN_7PT, _CHAR_IN_9PT = 0.062, 0.085


def plot_decision_heatmap(run: RunRecord, path: str | Path) -> None:
    """Write a compact PNG heat map of a search run's final probabilities (decisions x options)."""
    search = run.search or {}
    options, decisions = search.get("search_space", []), search.get("decisions", {})
    if not decisions:
        raise ValueError(f"run {run.label} has no search decisions; a heat map needs a search run")
    matrix = [[decision["probabilities"][option] for option in options] for decision in decisions.values()]
    title = f"{run.label}: final probabilities"
    # Sized from the labels: the longest decision name fits left of the cells, the colorbar and its
    # label right of them, the title above; the layout engine then places them without clipping.
    labels_in = _CHAR_IN_7PT * max(len(name) for name in decisions)
    width = max(labels_in + 0.6 * len(options) + 1.8, _CHAR_IN_9PT * len(title) + 0.4)
    figure = new_figure(width, 1.4 + 0.22 * len(decisions))
    figure.set_layout_engine("constrained")
    ax = figure.subplots()
    image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(options)), options, fontsize=8)
    ax.set_yticks(range(len(decisions)), list(decisions), fontsize=7)
    if len(decisions) * len(options) <= 400:  # numbers stay legible
        for i, row in enumerate(matrix):
            for j, p in enumerate(row):
                ax.text(j, i, f"{p:.2f}", ha="center", va="center", fontsize=6, color="white" if p < 0.5 else "black")
    ax.set_xlabel("format")
    ax.set_title(title, fontsize=9)
    figure.colorbar(image, ax=ax, label="probability")
    save_figure(figure, path, dpi=120)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one clear line and exit code 2, via main, instead of usage + SystemExit
        raise ReportInputError(message)


def create_report_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Tables and Pareto plots over FLIQS run outputs.")
    parser.add_argument("output_root", metavar="OUTPUT_ROOT", help="the --output_root_dir the runs wrote to")
    parser.add_argument("--format", choices=FORMATS, default="md",
                        help="output format (default md); csv prints one table, the invalid runs go to stderr")
    parser.add_argument("--plot", metavar="FILE.png", help="write a Pareto plot (or, with --layers, a heat map)")
    parser.add_argument("--metric", help="metric to compare (default: each run's main_metric)")
    parser.add_argument("--cost", choices=COST_TYPES, help="cost axis (default: the runs' cost_type, else memory)")
    parser.add_argument("--group_by", nargs="+", metavar="KEY",
                        help=f"aggregate seed replicas per KEY value: argument names or {', '.join(PSEUDO_KEYS)}; "
                             "fixed-format runs are always kept apart by their formats (default: every argument "
                             "except the seed and those that do not change results: names, output paths, logging, "
                             "device)")
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument("--lower_is_better", dest="higher_is_better", action="store_const", const=False,
                           help="the metric is lower-is-better (default: told from its name; loss, perplexity, "
                                "error, mse and mae are lower-is-better)")
    direction.add_argument("--higher_is_better", dest="higher_is_better", action="store_const", const=True,
                           help="the metric is higher-is-better, whatever its name")
    parser.add_argument("--layers", metavar="RUN", help="per-layer table of one run (run directory or exp_name)")
    return parser


def check_output_file(path: Path, flag: str) -> None:
    """`path` can be written (checked before any work): not a directory, and its nearest existing
    ancestor is a directory in which a file can be created. Permission bits alone say nothing for
    root, read-only mounts or /proc, so a probe file is created and removed."""
    if path.is_dir():
        raise ReportInputError(f"{flag} {str(path)!r} is a directory; name a .png file in it")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ReportInputError(f"{flag} {str(path)!r} cannot be written: {str(ancestor)!r} is a file, not a "
                               "directory; choose another path")
    try:
        fd, probe = tempfile.mkstemp(dir=ancestor, prefix=".fliqs-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise ReportInputError(f"{flag} {str(path)!r} cannot be written: no file can be created in {str(ancestor)!r} "
                               f"({error.strerror or error}); choose a writable location") from None


def _write_plot(path: Path, draw: Any, *args: Any) -> None:
    """Create the plot's directory and draw into it (atomically); an OS error is one error line."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        draw(*args)
    except OSError as error:
        raise ReportInputError(f"--plot {str(path)!r} could not be written ({error.strerror or error}); choose "
                               "another path") from None


@dataclass
class Output:
    """What the CLI prints: `text` on stdout, `messages` on stderr (one line each)."""

    text: str
    messages: list[str] = field(default_factory=list)


def run_report(args: argparse.Namespace) -> Output:
    """Everything `main` does, minus printing; raises ReportInputError for bad input."""
    root = Path(args.output_root)
    if not root.is_dir():
        raise ReportInputError(f"OUTPUT_ROOT {str(root)!r} is not a directory; pass the --output_root_dir of the runs")
    plot_path = Path(args.plot) if args.plot else None
    if plot_path is not None:
        if plot_path.suffix.lower() != ".png":
            raise ReportInputError(f"--plot {args.plot!r} must name a .png file")
        check_output_file(plot_path, "--plot")
    runs = load_runs(root)
    if args.layers is not None:
        given = [flag for flag, value in (("--metric", args.metric), ("--cost", args.cost),
                                          ("--group_by", args.group_by),
                                          ("--lower_is_better", args.higher_is_better is False),
                                          ("--higher_is_better", args.higher_is_better is True))
                 if value]
        if given:
            raise ReportInputError(f"--layers shows one run's layers; {', '.join(given)} do not apply, drop them")
        run = resolve_run(runs, root, args.layers)
        document = layer_document(run)
        if plot_path is not None:
            if run.method != "search" or not (run.search or {}).get("decisions"):
                raise ReportInputError(f"--plot with --layers draws decision probabilities, but {run.label} is a "
                                       f"{run.method} run without decisions; pass a search run")
            _write_plot(plot_path, plot_decision_heatmap, run, plot_path)
            document.notes.append(f"heat map written to {plot_path}")
        return Output(render(document, args.format))
    if not runs:
        raise ReportInputError(f"no run directories under {str(root)!r} (a run directory holds one of "
                               f"{', '.join(RUN_MARKERS)}); check OUTPUT_ROOT")
    report = build_report(runs, str(root), args.metric, args.cost, args.group_by, args.higher_is_better)
    if plot_path is not None:
        _write_plot(plot_path, plot_pareto, report.rows, plot_path, report.cost_column, report.cost_label,
                    report.directions)
        report.notes.append(f"plot written to {plot_path}")
    if args.format == "csv":  # stdout stays one table: the invalid runs go to stderr
        report.notes.append(f"{len(report.invalid)} invalid runs: on stderr, one line each")
        return Output(render(report_document(report), args.format), invalid_lines(report))
    return Output(render(report_document(report), args.format))


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null so that the interpreter's final flush of what could not be written
    fails silently instead of printing a second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (tests capture it): nothing will flush there
        pass


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: prints the report and returns 0, or prints one error line and returns 2."""
    try:
        output = run_report(create_report_parser().parse_args(argv))
    except ReportInputError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help
        return exit_.code if isinstance(exit_.code, int) else 0
    for message in output.messages:
        print(f"{PROG}: {message}", file=sys.stderr)
    try:
        sys.stdout.write(output.text)
        sys.stdout.flush()
    except BrokenPipeError:  # `... | head`: the reader has what it wanted
        _silence_stdout()
    except OSError as error:
        _silence_stdout()
        print(f"{PROG}: error: cannot write the report to stdout ({error.strerror or error}); redirect it to a "
              "writable file", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
