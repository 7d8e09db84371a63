"""Pareto frontier of quality vs cost.

A point (cost, metric) is on the frontier when no other point is at least as good in both
(cost no higher, metric no worse) and strictly better in one. Exact duplicates therefore do not
dominate each other: both copies are on the frontier. Cost is always lower-is-better; the metric
is higher-is-better unless `higher_is_better=False`; `metric_higher_is_better` tells from a
metric's name (loss, perplexity, error, mse, mae: lower is better). `plot_pareto` draws the
points and the frontier (matplotlib, Agg canvas).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

# Words of a metric name that mean lower is better (eval_loss, eval_perplexity, eval_mse, test_error_rate).
LOWER_IS_BETTER_WORDS = frozenset({"loss", "perplexity", "ppl", "error", "err", "mse", "mae", "rmse", "wer", "cer"})


def metric_higher_is_better(name: str) -> bool:
    """False when a word of the metric's name says lower is better (see LOWER_IS_BETTER_WORDS)."""
    return not any(word in LOWER_IS_BETTER_WORDS for word in re.split(r"[^a-z0-9]+", name.lower()))


def family_key(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """The report rows whose costs compare: one task, model and metric, quantizing the same layers.

    A run's cost counts only its quantized layers (cost/model_cost.py), so runs that quantize
    other layers (--no-quantize_*, other --config_overrides) price different things: each set of
    layers (names and sizes: `quantized_layers_id`) gets its own frontier and uniform line. The
    input size is not part of it: runs at two image sizes compare on one compute axis.
    """
    return row["task"], row["model"], row["metric"], row.get("quantized_layers_id")


def layers_label(row: Mapping[str, Any]) -> str:
    """'N layers, X MiB at fp32': a row's set of quantized layers, for notes and plot titles."""
    count, memory = row.get("quantized_layers"), row.get("float_memory_mib")
    if count is None or memory is None:
        return "layers not recorded"
    return f"{count} layer{'' if count == 1 else 's'}, {memory:.6g} MiB at fp32"


def _check_points(costs: Sequence[float], metrics: Sequence[float]) -> None:
    if len(costs) != len(metrics):
        raise ValueError(f"got {len(costs)} costs but {len(metrics)} metrics; pass one of each per point")
    for i, (cost, metric) in enumerate(zip(costs, metrics)):
        if not (math.isfinite(cost) and math.isfinite(metric)):
            raise ValueError(f"point {i} is (cost={cost}, metric={metric}); the frontier needs finite values, "
                             "drop or report non-finite runs before computing it")


def dominates(a: tuple[float, float], b: tuple[float, float], higher_is_better: bool = True) -> bool:
    """True when point a = (cost, metric) dominates point b."""
    sign = 1.0 if higher_is_better else -1.0
    no_worse = a[0] <= b[0] and sign * a[1] >= sign * b[1]
    return no_worse and (a[0] < b[0] or sign * a[1] > sign * b[1])


def pareto_mask(costs: Sequence[float], metrics: Sequence[float], higher_is_better: bool = True) -> list[bool]:
    """For each point, whether it is on the frontier. O(n log n): sort by cost, sweep the best metric."""
    _check_points(costs, metrics)
    sign = 1.0 if higher_is_better else -1.0
    quality = [sign * m for m in metrics]
    # Cheapest first; at equal cost the best first, so a worse point at the same cost is dominated.
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -quality[i]))
    mask = [False] * len(costs)
    best_quality, best_cost = -math.inf, math.nan
    for i in order:
        if quality[i] > best_quality:
            mask[i] = True
            best_quality, best_cost = quality[i], costs[i]
        elif quality[i] == best_quality and costs[i] == best_cost:
            mask[i] = True  # an exact duplicate of a frontier point
    return mask


def pareto_indices(costs: Sequence[float], metrics: Sequence[float], higher_is_better: bool = True) -> list[int]:
    """Indices of the frontier points in increasing cost (the order to draw the frontier line in)."""
    mask = pareto_mask(costs, metrics, higher_is_better)
    sign = 1.0 if higher_is_better else -1.0
    return sorted((i for i, on in enumerate(mask) if on), key=lambda i: (costs[i], -sign * metrics[i], i))


def new_figure(width_in: float, height_in: float) -> Any:
    """A matplotlib Figure of that size (inches) on the Agg canvas."""
    # Figure + the Agg canvas directly: no pyplot, so no global backend state and no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in))
    FigureCanvasAgg(figure)
    return figure


def uniform_line(uniform: Sequence[tuple[float, float]], higher_is_better: bool = True) -> list[tuple[float, float]]:
    """The Pareto-optimal uniform baselines (cost, metric), by increasing cost: the vertices of the
    line that mixing neighbouring uniform models would be expected to follow."""
    mask = pareto_mask([c for c, _ in uniform], [m for _, m in uniform], higher_is_better)
    return sorted({point for point, keep in zip(uniform, mask) if keep})


def interpolate_uniform_line(uniform: Sequence[tuple[float, float]], cost: float,
                             higher_is_better: bool = True) -> float | None:
    """The metric of `uniform_line(uniform)` at `cost`. None when `cost` lies outside the
    baselines' cost range (no line to compare with). Past the line's last vertex, up to the
    costliest baseline (dominated, e.g. INT8 below INT4 on a stalled seed), the line stays at that
    vertex's metric: at such costs uniform precision does no better than it."""
    line = uniform_line(uniform, higher_is_better)
    if not line or not line[0][0] <= cost <= max(c for c, _ in uniform):
        return None
    if cost >= line[-1][0]:
        return line[-1][1]
    for (c0, m0), (c1, m1) in zip(line, line[1:]):
        if c0 <= cost <= c1:
            return m0 if c1 == c0 else m0 + (m1 - m0) * (cost - c0) / (c1 - c0)
    return line[0][1]  # a single baseline exactly at `cost`


def save_figure(figure: Any, path: str | Path, **kwargs: Any) -> None:
    """Write `figure` as a PNG atomically: readers see the old file or the whole new one, never a part."""
    from eval.run_outputs import atomic_write

    atomic_write(path, lambda f: figure.savefig(f, format="png", **kwargs))


def plot_pareto(rows: Sequence[dict[str, Any]], path: str | Path, cost_column: str, cost_label: str,
                higher_is_better: bool | Mapping[str, bool] = True) -> None:
    """Write a PNG of metric vs cost, one panel per (task, model, metric).

    `rows` are report rows (eval.report_table.row_columns): keys task, model, metric, method, formats,
    value, std, `cost_column`, `{cost_column}_std`, pareto. `higher_is_better`: one direction for
    every metric, or metric name -> direction (default: from the name). Uniform baselines and searched models
    are two series with error bars where aggregated; float runs are horizontal lines (their cost is
    far to the right); the frontier over the quantized points is a highlighted staircase.
    """
    families: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        families.setdefault(family_key(row), []).append(row)
    # Name the set of quantized layers in the titles where one task/model has several.
    sets_per_model = Counter(key[:3] for key in families)
    figure = new_figure(6.4 * max(1, len(families)), 4.8)
    axes = figure.subplots(1, max(1, len(families)), squeeze=False)[0]
    if not families:
        axes[0].text(0.5, 0.5, "no valid runs to plot", ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_xlabel(cost_label)
    for ax, ((task, model, metric, _), members) in zip(axes, families.items()):
        higher = higher_is_better.get(metric, metric_higher_is_better(metric)) \
            if isinstance(higher_is_better, Mapping) else higher_is_better
        # One series for the uniform baselines, one per search space for the searched models, one
        # for runs that applied another run's formats (--load_config).
        series = [("uniform", "uniform", "s", "tab:blue")]
        spaces = sorted({r.get("search_space") or "" for r in members if r["method"] == "search"})
        colors = ("tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive")
        series += [("search", space, "o", colors[i % len(colors)]) for i, space in enumerate(spaces)]
        series.append(("loaded", "loaded", "D", "tab:gray"))
        for method, space, marker, color in series:
            points = [r for r in members if r["method"] == method and (method != "search" or
                                                                        (r.get("search_space") or "") == space)]
            if not points:
                continue
            label = {"uniform": "uniform", "loaded": "formats loaded from a run"}.get(
                method, f"search over {space}" if space else "search")
            ax.errorbar([r[cost_column] for r in points], [r["value"] for r in points],
                        xerr=[r[f"{cost_column}_std"] or 0.0 for r in points], yerr=[r["std"] or 0.0 for r in points],
                        fmt=marker, color=color, capsize=3, label=label, zorder=3)
            if method == "uniform":
                # Baselines at the same cost (INT4 and FP4, say) share one label, stacked.
                stacked: dict[float, int] = {}
                for r in sorted(points, key=lambda r: -r["value"] if higher else r["value"]):
                    rank = stacked.get(r[cost_column], 0)
                    stacked[r[cost_column]] = rank + 1
                    ax.annotate(r["formats"], (r[cost_column], r["value"]), textcoords="offset points",
                                xytext=(4, -10 - 9 * rank), fontsize=7, color=color)
                # The line between the best uniform baselines: what mixing them is expected to give.
                line = uniform_line([(r[cost_column], r["value"]) for r in points], higher)
                if len(line) > 1:
                    ax.plot([c for c, _ in line], [m for _, m in line], ":", color=color,
                            linewidth=1, label="uniform, interpolated", zorder=1)
        for r in (r for r in members if r["method"] == "float"):
            ax.axhline(r["value"], color="gray", linestyle="--", label=f"float ({r['value']:.4g})")
        frontier = sorted((r for r in members if r["pareto"] and r["method"] != "float"), key=lambda r: r[cost_column])
        if frontier:
            xs, ys = [r[cost_column] for r in frontier], [r["value"] for r in frontier]
            ax.plot(xs, ys, drawstyle="steps-post", color="tab:red", linewidth=1.5, zorder=2)
            ax.plot(xs, ys, "o", markersize=12, markerfacecolor="none", markeredgecolor="tab:red",
                    label="Pareto frontier", zorder=4)
        ax.set_xlabel(cost_label)
        ax.set_ylabel(f"{metric} ({'higher' if higher else 'lower'} is better)")
        several_sets = sets_per_model[task, model, metric] > 1
        ax.set_title(f"{task} / {model}" + (f" ({layers_label(members[0])})" if several_sets else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, path, dpi=120)
