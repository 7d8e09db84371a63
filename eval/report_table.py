"""The comparison table over the runs under an output root (`build_report`).

Every run directory found is either a table row (alone or aggregated with its seed replicas as
mean and sample std) or listed as invalid with the reason: failed, incomplete, missing or
non-finite metric/cost, grouped with runs that differ in more than the seed, or two runs of one
setting with the same seed. Rows on the Pareto frontier (cost vs metric, per task and model) are
marked, and searches are compared with the line between the uniform baselines (`vs_uniform`).
Rendering is eval/report_render.py; the CLI is eval/report.py.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from eval.pareto import family_key, interpolate_uniform_line, layers_label, metric_higher_is_better, pareto_mask
from eval.results import RunRecord
from eval.results_schema import COMPLETED, FAILED, INCOMPLETE
from eval.run_compare import REPLICA_ARGS, RunGroup, available_group_keys, formats_label, group_runs

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
                                   f"run; {_unknown_keys_hint(unknown, valid)}{', '.join(valid)}")


def _unknown_keys_hint(unknown: Sequence[str], valid: Sequence[str]) -> str:
    """What unknown --group_by keys probably meant, ending in the lead-in of the valid keys' list:
    the list runs to a hundred names, so a typo's fix and a misplaced OUTPUT_ROOT go first."""
    parts = []
    dirs = [key for key in unknown if key and Path(key).is_dir()]  # `ROOT --group_by method ROOT`
    if dirs:
        parts.append(f"{', '.join(map(repr, dirs))} {'is a directory' if len(dirs) == 1 else 'are directories'}, "
                     "not a key: give OUTPUT_ROOT once, before --group_by")
    guesses = []
    for key in unknown:
        close = [] if key in dirs else (difflib.get_close_matches(key, valid, n=3, cutoff=0.6)
                                        or [name for name in valid if key and name.startswith(key)][:3])
        if close:
            guesses.append(" or ".join(close) + (f" (for {key})" if len(unknown) > 1 else ""))
    if guesses:
        parts.append(f"did you mean {', '.join(guesses)}?")
    return "; ".join(parts) + (" Valid keys: " if guesses else "; valid keys: " if parts else "valid keys: ")


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
    row = dict(zip(row_columns(cost_column), cells))
    # What the cost prices: its quantized layers (json output only; see pareto.family_key).
    layers = first.results.get("layers") if first.results else None
    row["quantized_layers"] = len(layers) if isinstance(layers, dict) else None
    row["float_memory_mib"] = first.cost.get("float_memory_mib")
    row["quantized_layers_id"] = _layers_id(layers)
    return row


def _layers_id(layers: Any) -> str | None:
    """A short digest of the quantized layers' names and sizes (None when not recorded)."""
    if not isinstance(layers, dict):
        return None
    described = sorted((name, layer.get("num_weights") if isinstance(layer, dict) else None)
                       for name, layer in layers.items())
    return hashlib.sha1(json.dumps(described).encode()).hexdigest()[:12]


def _repeated_seed_reason(group: RunGroup) -> str:
    parts = [f"seed {seed}: {', '.join(labels)}" for seed, labels in group.repeated_seeds.items()]
    return (f"runs of one setting share a seed ({'; '.join(parts)}): the same run twice (relaunched under another "
            "name?), not replicas; delete the duplicate run directory or give the runs distinct seeds")


_SEED_PART = re.compile(r"(^|_)(seed=-?\d+|s-?\d+)(?=_|$)")


def _name_without_seed(run: RunRecord) -> str:
    """The run's name without its seed's part (`seed=N` or `sN`, N the seed it recorded; any
    such part where it recorded none): `s3_seed=0` keeps its `s3`."""
    seed = run.args.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool):
        return _SEED_PART.sub("", run.exp_name)
    return re.sub(rf"(^|_)(seed={seed}|s{seed})(?=_|$)", "", run.exp_name)


def _split_notes(groups: Sequence[RunGroup]) -> list[str]:
    """Runs whose names differ only in the seed but that landed in different groups: say what splits them."""
    by_stem: dict[tuple[str, str], list[RunGroup]] = {}
    for group in groups:
        for stem in dict.fromkeys((run.task, _name_without_seed(run)) for run in group.runs):
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


def _mark_frontier(rows: list[dict[str, Any]], cost_column: str, report: Report) -> list[str]:
    """Mark `pareto` and `vs_uniform` within each family (pareto.family_key); the families' notes."""
    families: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        families.setdefault(family_key(row), []).append(row)
    for (_, _, metric, _), members in families.items():
        higher_is_better = report.higher_is_better(metric)
        mask = pareto_mask([r[cost_column] for r in members], [r["value"] for r in members], higher_is_better)
        uniform = [(r[cost_column], r["value"]) for r in members if r["method"] == "uniform"]
        for row, on_frontier in zip(members, mask):
            row["pareto"] = on_frontier
            # How far a searched model sits above (+) or below (-) the uniform line at its cost.
            line = interpolate_uniform_line(uniform, row[cost_column], higher_is_better) \
                if row["method"] in ("search", "loaded") else None
            row["vs_uniform"] = None if line is None else (row["value"] - line) * (1 if higher_is_better else -1)
    return _layer_set_notes(families, cost_column)


def _layer_set_notes(families: dict[tuple[Any, ...], list[dict[str, Any]]], cost_column: str) -> list[str]:
    """One note per task/model/metric whose runs quantize different sets of layers (their costs do
    not compare: a run leaving its largest layers in float would look cheapest)."""
    by_model: dict[tuple[Any, ...], list[list[dict[str, Any]]]] = {}
    for key, members in families.items():
        by_model.setdefault(key[:3], []).append(members)
    notes = []
    for (task, model, metric), sets in by_model.items():
        if len(sets) < 2:
            continue
        sets.sort(key=lambda members: (members[0]["float_memory_mib"] is None, members[0]["float_memory_mib"] or 0.0))
        parts = ["{}: {}".format(layers_label(members[0]),
                                 ", ".join(r["run"] for r in sorted(members, key=lambda r: r[cost_column])))
                 for members in sets]
        notes.append(f"{task}/{model}/{metric}: runs quantize different sets of layers ({'; '.join(parts)}), and a "
                     "cost counts only the quantized layers, so each set has its own pareto frontier and uniform line "
                     "(vs_uniform is empty for a search whose set has no uniform baselines); to compare them, run "
                     "them with the same --quantize_*/--config_overrides flags")
    return notes


def _direction_note(report: Report) -> str:
    names = sorted({row["metric"] for row in report.rows})
    parts = [f"{name} ({'higher' if report.higher_is_better(name) else 'lower'} is better)" for name in names]
    source = ("as --higher_is_better/--lower_is_better says" if report.direction_override is not None else
              "told from the name (loss, perplexity, error, mse and mae are lower-is-better; "
              "--higher_is_better/--lower_is_better override it)")
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
        value, cost = run.metrics.get(name), run.cost.get(column)
        if name not in run.metrics:
            report.invalid.append(_invalid(run, "missing_metric", f"metric {name!r} is not in this run's metrics "
                                                                  f"(has: {', '.join(sorted(run.metrics))})"))
        elif column not in run.cost:  # e.g. a cost type added after the run: its results.json lacks it
            report.invalid.append(_invalid(run, "missing_cost", f"cost.{column} is not in this run's results.json "
                                                                f"(written before that cost type existed?); rerun "
                                                                f"it, or report another --cost"))
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
    family_notes = _mark_frontier(report.rows, column, report)
    report.rows.sort(key=lambda r: (r["task"], r["model"], r["metric"], r["float_memory_mib"] is None,
                                    r["float_memory_mib"] or 0.0, r["quantized_layers_id"] or "", r[column],
                                    -r["value"] if report.higher_is_better(r["metric"]) else r["value"]))

    counts = {status: sum(run.status == status for run in runs) for status in (COMPLETED, FAILED, INCOMPLETE)}
    replicas = ", ".join(sorted(REPLICA_ARGS))
    report.notes = [
        f"{len(runs)} run directories: {counts[COMPLETED]} completed, {counts[FAILED]} failed, "
        f"{counts[INCOMPLETE]} incomplete; {len(report.rows)} table rows from "
        f"{sum(row['n'] for row in report.rows)} runs; {len(report.invalid)} invalid runs listed separately",
        f"{_direction_note(report)}; cost: {report.cost_label}; pareto: on the frontier of metric vs cost within "
        "its task/model/metric and quantized layers; vs_uniform: a searched (or loaded) model's "
        "metric minus the line through the uniform baselines at its cost (positive = better than uniform)",
        (f"grouped by {', '.join(report.group_by)} (and, for fixed-format runs, their formats): runs that agree on "
         f"them and differ only in {replicas}"
         if report.group_by else f"grouped automatically by every argument except {replicas} (and those a run "
        "does not read: search-only flags of a run that does not search, settings its kind of search ignores, scale "
        "flags of unscaled weights or activations, data_seed where it draws no --max_*_samples subset): seed replicas")
        + " are aggregated as mean and sample std over n runs"
        + ("" if report.group_by else "; pass --group_by KEY ... to choose the keys"),
    ]
    report.notes += _split_notes(groups) + family_notes
    if cost_note:
        report.notes.append(cost_note)
    if any(run.method == "search" and run.cost["cost_type"] != cost_type for run in valid):
        report.notes.append("cost_target and ratio are in each search's own cost_type, not in the reported cost")
    return report
