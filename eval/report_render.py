"""Rendering a report: documents (notes + sections of rows) as md, csv or json, the per-layer
view of one run, and the heat map of a search's final probabilities."""
from __future__ import annotations

import csv
import io
import json
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from eval.pareto import new_figure, save_figure
from eval.report_table import INVALID_COLUMNS, Report, ReportInputError, row_columns
from eval.results import RUN_MARKERS, RunRecord, load_run
from eval.results_schema import COMPLETED

FORMATS = ("md", "csv", "json")


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
             f"{cost['gbops']:.6g} GBOPs of {cost['float_gbops']:.6g} at fp32 (the quantized layers only)"]
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


# Heat map geometry: the width (inches) of one character of the decision labels (font 7), and the
# longest title line; a longer run name wraps instead of widening the figure without bound.
_CHAR_IN_7PT = 0.062
_TITLE_LINE_CHARS = 100
_TITLE_MARGIN_IN = 0.3


def heatmap_title_lines(label: str) -> list[str]:
    """The heat map's title as lines of at most _TITLE_LINE_CHARS characters: one line where it
    fits, else the run name (cut anywhere: it has no spaces to wrap at) above "final probabilities"."""
    title = f"{label}: final probabilities"
    if len(title) <= _TITLE_LINE_CHARS:
        return [title]
    return textwrap.wrap(f"{label}:", _TITLE_LINE_CHARS, break_long_words=True, break_on_hyphens=False) + \
        ["final probabilities"]


def plot_decision_heatmap(run: RunRecord, path: str | Path) -> None:
    """Write a compact PNG heat map of a search run's final probabilities (decisions x options)."""
    search = run.search or {}
    options, decisions = search.get("search_space", []), search.get("decisions", {})
    if not decisions:
        raise ValueError(f"run {run.label} has no search decisions; a heat map needs a search run")
    matrix = [[decision["probabilities"][option] for option in options] for decision in decisions.values()]
    title = heatmap_title_lines(run.label)
    # Sized from the labels: the longest decision name fits left of the cells, the colorbar and its
    # label right of them; the layout engine then places them without clipping.
    labels_in = _CHAR_IN_7PT * max(len(name) for name in decisions)
    width, height = labels_in + 0.6 * len(options) + 1.8, 1.25 + 0.15 * len(title) + 0.22 * len(decisions)
    figure = new_figure(width, height)
    figure.set_layout_engine("constrained")
    # A figure title, centred on the figure (an axes title is centred on the cells, which sit right
    # of the labels, so a long one ran off the right edge); the figure is widened to its measured width.
    title_artist = figure.suptitle("\n".join(title), fontsize=9)
    title_in = title_artist.get_window_extent(figure.canvas.get_renderer()).width / figure.dpi
    if title_in + _TITLE_MARGIN_IN > width:
        figure.set_size_inches(title_in + _TITLE_MARGIN_IN, height)
    ax = figure.subplots()
    image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(options)), options, fontsize=8)
    ax.set_yticks(range(len(decisions)), list(decisions), fontsize=7)
    if len(decisions) * len(options) <= 400:  # numbers stay legible
        for i, row in enumerate(matrix):
            for j, p in enumerate(row):
                ax.text(j, i, f"{p:.2f}", ha="center", va="center", fontsize=6, color="white" if p < 0.5 else "black")
    ax.set_xlabel("format")
    figure.colorbar(image, ax=ax, label="probability")
    save_figure(figure, path, dpi=120)
