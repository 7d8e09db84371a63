"""Find run directories under an output root, load and validate their results.json.

A run directory is one holding `results.json`, or one holding `config.json`, `output.txt` or
`stdout.log` without run directories below it (docs/results_schema.md): a stray log at the output
root does not turn the root into a run, and a run's checkpoints (config.json only) are not runs.
Every directory found becomes a `RunRecord` with a status:
`completed`, `failed` (the run caught its own crash and says why), or `incomplete` (no
results.json, or one that does not parse or lacks required fields: killed, still running, or a
truncated write). Nothing found is dropped; the report lists non-completed runs with the reason.

Comparing and grouping the loaded runs by their arguments is eval/run_compare.py.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from eval.results_schema import FAILED, INCOMPLETE, RESULTS_NAME, validate_results

RUN_MARKERS = (RESULTS_NAME, "config.json", "output.txt", "stdout.log")
# Files only a run directory gets (HF checkpoints and saved models inside a run hold config.json too).
RUN_ONLY_MARKERS = (RESULTS_NAME, "output.txt", "stdout.log")
# The weights file of a checkpoint written by quant.export (quant.export.WEIGHTS_NAME): its folder
# holds a config.json too, but is no run, wherever it was exported to.
EXPORTED_WEIGHTS = "fliqs_model.safetensors"
# The launcher's line before each launch's output in stdout.log: `# CUDA_VISIBLE_DEVICES=... command`.
LAUNCH_HEADER = "# CUDA_VISIBLE_DEVICES="


@dataclass(frozen=True)
class RunRecord:
    """One run directory. `results` is the parsed results.json of completed and failed runs."""

    run_dir: Path
    exp_name: str
    status: str
    reason: str | None = None
    results: dict[str, Any] | None = None
    args: dict[str, Any] = field(default_factory=dict)
    label: str = ""  # exp_name, or the path under the root when exp_names collide

    def _get(self, key: str, default: Any = None) -> Any:
        return (self.results or {}).get(key, default)

    @property
    def task(self) -> str:
        return self._get("task") or self.args.get("task") or self.run_dir.parent.name

    @property
    def model_type(self) -> str:
        return self._get("model_type") or self.args.get("model_type") or ""

    @property
    def method(self) -> str:
        method = self._get("method") or ""
        # Runs from before "loaded" existed recorded a --load_config run as uniform.
        if method == "uniform" and self.args.get("load_config"):
            return "loaded"
        return method

    @property
    def main_metric(self) -> str:
        return self._get("main_metric") or ""

    @property
    def metrics(self) -> dict[str, Any]:
        return self._get("metrics") or {}

    @property
    def cost(self) -> dict[str, Any]:
        return self._get("cost") or {}

    @property
    def layers(self) -> dict[str, dict[str, Any]]:
        return self._get("layers") or {}

    @property
    def search(self) -> dict[str, Any] | None:
        return self._get("search")


def _find(directory: Path) -> list[Path]:
    """Run directories at or below `directory` (see the module docstring)."""
    try:
        entries = list(os.scandir(directory))
    except OSError:  # unreadable: nothing to report below it
        return []
    files = {e.name for e in entries if not e.is_dir()}
    if RESULTS_NAME in files:
        return [directory]
    if EXPORTED_WEIGHTS in files:
        return []
    below = [run for entry in sorted(entries, key=lambda e: e.name)
             if entry.is_dir(follow_symlinks=False) and not entry.name.startswith(".")  # no link loops
             for run in _find(Path(entry.path))]
    if any(marker in files for marker in RUN_MARKERS):
        runs_below = any(any((run / marker).is_file() for marker in RUN_ONLY_MARKERS) for run in below)
        return below if runs_below else [directory]  # below: checkpoints and saved models of this run
    return below


def find_run_dirs(output_root: str | os.PathLike[str]) -> list[Path]:
    """Every run directory at any depth under `output_root` (or the root itself), sorted."""
    root = Path(output_root)
    if not root.is_dir():
        raise FileNotFoundError(f"output root {str(root)!r} is not a directory; pass the --output_root_dir of the runs")
    return sorted(_find(root))


def _read_config_args(run_dir: Path) -> dict[str, Any]:
    try:
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def latest_launch(log_lines: Sequence[str]) -> Sequence[str]:
    """The lines of stdout.log after its last launcher header (each launch appends its own)."""
    starts = [i for i, line in enumerate(log_lines) if line.startswith(LAUNCH_HEADER)]
    return log_lines[starts[-1] + 1:] if starts else log_lines


# The one error line a run prints when it refuses its input: "eval_run: error: ...", or the
# name it was started as ("fliqs-run: error: ...", "python -m eval.eval_run: error: ...").
_REFUSAL_LINE = re.compile(r"^[\w.\-/ ]{1,60}: error: ")


def is_refusal_line(line: str) -> bool:
    """Whether a run's last output line is the one error line of a refused input (exit code 2;
    the launcher and the report both list such a run as refused)."""
    return _REFUSAL_LINE.match(line) is not None


def _last_log_line(run_dir: Path) -> str | None:
    """The run's last output line, not the launcher's `# command` header of stdout.log."""
    for name in ("stdout.log", "output.txt"):
        try:
            lines = (run_dir / name).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        if name == "stdout.log":
            lines = latest_launch(lines)
        lines = [ln.strip() for ln in lines if ln.strip()]
        if lines:
            return f"{name}: {lines[-1][:200]}"
    return None


def load_run(run_dir: str | os.PathLike[str]) -> RunRecord:
    """Read one run directory; never raises for a broken run, it returns an incomplete record instead."""
    run_dir = Path(run_dir)
    args = _read_config_args(run_dir)
    exp_name = args.get("exp_name") if isinstance(args.get("exp_name"), str) else run_dir.name
    results_path = run_dir / RESULTS_NAME

    def incomplete(reason: str) -> RunRecord:
        return RunRecord(run_dir, exp_name, INCOMPLETE, reason, None, args, exp_name)

    if not results_path.exists():
        hint = _last_log_line(run_dir)
        if hint is not None and is_refusal_line(hint.split(": ", 1)[1]):
            # eval_run refuses bad input (exit 2) before it writes anything: not killed, refused
            return incomplete(f"no results.json: the run refused its input before starting; {hint}")
        return incomplete("no results.json (killed or still running)" + (f"; last log line {hint}" if hint else ""))
    try:
        data = json.loads(results_path.read_text(encoding="utf-8"))
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
        return incomplete(f"results.json does not parse ({err}); a truncated write?")
    except OSError as err:
        return incomplete(f"results.json cannot be read: {err}")
    problems = validate_results(data)
    if problems:
        return incomplete("results.json is invalid: " + "; ".join(problems))
    if isinstance(data.get("exp_name"), str):
        exp_name = data["exp_name"]
    if isinstance(data.get("args"), dict):
        args = data["args"]
    reason = " ".join(data["error"].split()) if data["status"] == FAILED else None
    return RunRecord(run_dir, exp_name, data["status"], reason, data, args, exp_name)


def load_runs(output_root: str | os.PathLike[str]) -> list[RunRecord]:
    """Load every run under `output_root`; labels are exp_names, or root-relative paths where those collide."""
    root = Path(output_root)
    runs = [load_run(d) for d in find_run_dirs(root)]
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.exp_name] = counts.get(run.exp_name, 0) + 1
    labelled = []
    for run in runs:
        label = run.exp_name
        if counts[run.exp_name] > 1:
            relative = run.run_dir.relative_to(root).as_posix()
            label = run.run_dir.name if relative == "." else relative
        labelled.append(replace(run, label=label))
    return labelled
