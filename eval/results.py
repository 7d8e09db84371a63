"""Find run directories under an output root, load and validate their results.json, group runs.

A run directory is one holding `results.json`, or one holding `config.json`, `output.txt` or
`stdout.log` without run directories below it (docs/results_schema.md): a stray log at the output
root does not turn the root into a run, and a run's checkpoints (config.json only) are not runs.
Every directory found becomes a `RunRecord` with a status:
`completed`, `failed` (the run caught its own crash and says why), or `incomplete` (no
results.json, or one that does not parse or lacks required fields: killed, still running, or a
truncated write). Nothing found is dropped; the report lists non-completed runs with the reason.

Grouping decides which runs are replicas of one setting (they differ only in seed, name, output
paths, logging and device placement) so that the report can aggregate them; a group whose runs
differ in anything else carries `mismatches`, and one with two runs of the same seed carries
`repeated_seeds`, so that the report can refuse to average apples with oranges (or a run with
itself).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from eval.results_schema import FAILED, INCOMPLETE, RESULTS_NAME, validate_results

RUN_MARKERS = (RESULTS_NAME, "config.json", "output.txt", "stdout.log")
# Files only a run directory gets (HF checkpoints and saved models inside a run hold config.json too).
RUN_ONLY_MARKERS = (RESULTS_NAME, "output.txt", "stdout.log")
# The weights file of a checkpoint written by quant.export (quant.export.WEIGHTS_NAME): its folder
# holds a config.json too, but is no run, wherever it was exported to.
EXPORTED_WEIGHTS = "fliqs_model.safetensors"
# The launcher's line before each launch's output in stdout.log: `# CUDA_VISIBLE_DEVICES=... command`.
LAUNCH_HEADER = "# CUDA_VISIBLE_DEVICES="
# Arguments that do not change what a run measures: its name, where it writes, logs and checkpoints,
# and which device it ran on. The launcher's --skip_completed ignores them too.
NON_RESULT_ARGS = frozenset({
    "exp_name", "run_name", "output_root_dir", "output_dir", "logging_dir", "overwrite_output_dir",
    "cuda_visible_devices", "device", "report_to", "log_steps", "eval_steps", "save_strategy", "save_steps",
    "resume_from_checkpoint", "export_dir", "gradient_checkpointing", "ddp_find_unused_parameters",
    "recompute_inputs",  # the same values and gradients in every mode
    "derived_defaults",  # DERIVED_DEFAULTS_KEY: a record of how RUN_TIME_DEFAULTS were set, not a flag
})
# Flags that only a search reads: a fixed-format or float run ignores them (and says so), so for
# such runs they are neither compared (--skip_completed, duplicate runs) nor grouped on.
SEARCH_ONLY_FLAGS = (
    "search_space", "cost_function", "cost_target", "cost_target_bits", "cost_beta", "delay_steps",
    "rl_learning_rate", "precision_warmup", "max_entropy_beta", "entropy_schedule_type", "reward_metric",
    "reward_source", "heldout_fraction", "advantage", "baseline_decay", "policy_temperature", "final_selection",
    "target_tolerance", "bn_recalibration_batches",
)
_NOT_READ_WITHOUT_SEARCH = frozenset(SEARCH_ONLY_FLAGS)


def ignored_args(args: Mapping[str, Any]) -> frozenset[str]:
    """The recorded arguments that `args`' run did not read: the search-only flags, unless it
    searched (or does not record its mode)."""
    return frozenset() if args.get("mode", "search") == "search" else _NOT_READ_WITHOUT_SEARCH


# Model types whose models hold no BatchNorm (they normalise with LayerNorm), by name prefix: the
# report reads this without importing transformers (eval.model_configs); a test checks it against
# every registered model type, built on the meta device.
NO_BATCHNORM_MODEL_PREFIXES = ("bert", "roberta", "gpt2", "deit")


def has_batchnorm(model_type: Any) -> bool:
    """Whether `model_type`'s models hold BatchNorm layers (True for a name not known to have
    none, so that such runs are still compared on --bn_recalibration_batches)."""
    return not (isinstance(model_type, str) and model_type.startswith(NO_BATCHNORM_MODEL_PREFIXES))


# Search flags that only some searches read: name -> whether a search of these recorded args reads
# it. A search that does not (e.g. --heldout_fraction with --reward_source train) measures the same
# as one without the flag, so it is neither compared nor grouped on; the run says so in a note
# (eval/run_args.py). A recorded arg that is missing counts as read (compared, as before).
SEARCH_SETTING_READERS: dict[str, Callable[[Mapping[str, Any]], bool]] = {
    "heldout_fraction": lambda args: args.get("reward_source", "heldout") == "heldout",
    # argmax answers without a cost band (the run's end-of-search note still quotes it)
    "target_tolerance": lambda args: args.get("final_selection", "constrained") == "constrained",
    "bn_recalibration_batches": lambda args: has_batchnorm(args.get("model_type")),
}


def unread_search_settings(args: Mapping[str, Any]) -> frozenset[str]:
    """The SEARCH_SETTING_READERS flags that `args`' search does not read (empty for a run that
    does not search: `ignored_args` names all of its search-only flags)."""
    if args.get("mode", "search") != "search":
        return frozenset()
    return frozenset(name for name, reads in SEARCH_SETTING_READERS.items() if not reads(args))


def recorded_data_seed(args: Mapping[str, Any]) -> Any:
    """The seed `args`' run drew its --max_*_samples subsets with: its data_seed, or for a run
    recorded before that flag its seed (None where it recorded neither)."""
    return args["data_seed"] if "data_seed" in args else args.get("seed")


def _with_data_seed(args: Mapping[str, Any]) -> Mapping[str, Any]:
    """`args` with the data_seed a run recorded before the flag used (its seed), so that it compares
    with newer runs by the examples it drew."""
    if "data_seed" in args or "seed" not in args:
        return args
    return {**args, "data_seed": args["seed"]}


def unread_args(args: Mapping[str, Any]) -> frozenset[str]:
    """`ignored_args`, the search settings its kind of search does not read, and data_seed where
    the run drew no subset (it then changes nothing)."""
    unread = ignored_args(args) | unread_search_settings(args)
    if args.get("max_train_samples") is None and args.get("max_eval_samples") is None:
        unread |= {"data_seed"}
    return unread


# Arguments that differ between replicas of one setting: the seed, and everything above. Not
# data_seed: it draws the --max_*_samples subsets, so runs of other data seeds trained and were
# evaluated on other examples (recorded_data_seed: what a run recorded before the flag drew).
REPLICA_ARGS = NON_RESULT_ARGS | {"seed"}
# Group keys that are not (only) CLI arguments but read from results.json itself. `fixed_formats`:
# a fixed-format or float run's formats (None for a search, whose formats are its result).
PSEUDO_KEYS = ("method", "task", "model_type", "granularity", "fixed_formats")
_MISSING = "<missing>"
# Flags as typed whose meaning a run also records resolved: "--search_space INT4" and "4" are both
# search_formats ["int4"], "--bits 8" is weight_format and act_format int8. Where both sides
# record the resolved arguments, those are compared instead of the spellings.
SPELLED_ARGS: dict[str, tuple[str, ...]] = {
    "search_space": ("search_formats",), "bits": ("weight_format", "act_format"),
    "weight_bits": ("weight_format",), "activation_bits": ("act_format",),
}
# Names the CLI takes in any case (runs from before it recorded them canonically kept the spelling).
CASE_INSENSITIVE_ARGS = frozenset({"entropy_schedule_type"})


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


def formats_label(run: RunRecord) -> str:
    """`w=int4 a=int8` when every layer has the same formats ('mixed' where they differ; '' without layers)."""
    weight = {layer["weight_format"] for layer in run.layers.values()}
    act = {layer["act_format"] for layer in run.layers.values()}
    if not weight:
        return ""
    one = lambda formats: next(iter(formats)) if len(formats) == 1 else "mixed"  # noqa: E731
    return f"w={one(weight)} a={one(act)}"


def group_value(run: RunRecord, key: str) -> Any:
    """The value of group key `key` for `run`: a pseudo-key from results.json or a CLI argument."""
    if key == "method":
        return run.method
    if key == "task":
        return run.task
    if key == "model_type":
        return run.model_type
    if key == "granularity":
        return (run.search or {}).get("granularity")
    if key == "fixed_formats":
        return None if run.method == "search" else formats_label(run)
    return _with_data_seed(run.args).get(key, _MISSING)


def _canonical(value: Any) -> str:
    return value if value is _MISSING else json.dumps(value, sort_keys=True, default=str)


def _canonical_arg(key: str, value: Any) -> str:
    """`_canonical` of an argument's value, case-insensitive names lowercased."""
    if key in CASE_INSENSITIVE_ARGS and isinstance(value, str):
        value = value.strip().lower()
    return _canonical(value)


def same_value(key: str, a: Any, b: Any) -> bool:
    """Whether two values of argument `key` mean the same (as same_settings compares them)."""
    return _canonical_arg(key, a) == _canonical_arg(key, b)


def _spelled_elsewhere(key: str, *args: Mapping[str, Any]) -> bool:
    """Whether `key` is a spelling (SPELLED_ARGS) whose resolved arguments every mapping records."""
    resolved = SPELLED_ARGS.get(key)
    return resolved is not None and all(name in a for a in args for name in resolved)


def same_settings(args: Mapping[str, Any], ignore: frozenset[str] | set[str] = frozenset()) -> str:
    """A text equal for two runs' args exactly when they agree in every argument but `ignore`,
    spellings compared by what they resolve to (SPELLED_ARGS, CASE_INSENSITIVE_ARGS)."""
    args = _with_data_seed(args)
    ignore = frozenset(ignore) | unread_args(args)
    return json.dumps({key: _canonical_arg(key, value) for key, value in sorted(args.items())
                       if key not in ignore and not _spelled_elsewhere(key, args)})


@dataclass(frozen=True)
class RunGroup:
    """Runs that agree on `key`. `mismatches`: argument -> value -> labels, for arguments (other
    than REPLICA_ARGS) in which the runs still differ; empty for a clean group of replicas.
    `repeated_seeds`: seed -> labels, for seeds that more than one run of the group used."""

    key: tuple[tuple[str, str], ...]
    runs: tuple[RunRecord, ...]
    mismatches: Mapping[str, Mapping[str, list[str]]]
    repeated_seeds: Mapping[str, list[str]] = field(default_factory=dict)


def group_names(run: RunRecord, keys: Sequence[str] | None) -> list[str]:
    """The group keys of `run`: `keys`, or (None) every argument outside REPLICA_ARGS and the
    pseudo-keys. Explicit keys always get `fixed_formats` too: two uniform baselines of other
    formats are never replicas, whatever keys (null for them, like cost_target_bits) were asked for."""
    if keys is None:
        args = _with_data_seed(run.args)
        spellings = {key for key in args if _spelled_elsewhere(key, args)}
        return sorted(set(args) - REPLICA_ARGS - spellings - unread_args(args) | set(PSEUDO_KEYS))
    return list(keys) + ([] if "fixed_formats" in keys else ["fixed_formats"])


def group_runs(runs: Sequence[RunRecord], keys: Sequence[str] | None = None) -> list[RunGroup]:
    """Group runs on `keys` (plus fixed_formats), or (None) automatically on every argument outside REPLICA_ARGS."""
    buckets: dict[tuple[tuple[str, str], ...], list[RunRecord]] = {}
    for run in runs:
        key = tuple((name, _canonical_arg(name, group_value(run, name))) for name in group_names(run, keys))
        buckets.setdefault(key, []).append(run)
    groups = []
    for key, members in buckets.items():
        mismatches: dict[str, dict[str, list[str]]] = {}
        member_args = [_with_data_seed(run.args) for run in members]
        names = sorted(set().union(*(set(args) - unread_args(args) for args in member_args)) - REPLICA_ARGS)
        for name in names:
            if _spelled_elsewhere(name, *member_args):
                continue
            by_value: dict[str, list[str]] = {}
            for run, args in zip(members, member_args):
                by_value.setdefault(_canonical_arg(name, args.get(name, _MISSING)), []).append(run.label)
            if len(by_value) > 1:
                mismatches[name] = by_value
        by_seed: dict[str, list[str]] = {}
        for run in members:
            if "seed" in run.args:  # runs that do not record their seed cannot be told apart by it
                by_seed.setdefault(_canonical(run.args["seed"]), []).append(run.label)
        repeated = {seed: labels for seed, labels in by_seed.items() if len(labels) > 1}
        groups.append(RunGroup(key, tuple(members), mismatches, repeated))
    return groups


def available_group_keys(runs: Sequence[RunRecord]) -> list[str]:
    """Pseudo-keys plus every argument name some run records, for error messages."""
    return list(PSEUDO_KEYS) + sorted(set().union(*(run.args for run in runs)) - set(PSEUDO_KEYS))


# Arguments a run may leave at None and fill in itself from its step count (results.json and
# config.json record the values it resolved).
RUN_TIME_DEFAULTS = ("rl_learning_rate", "delay_steps")
# The recorded argument listing which of RUN_TIME_DEFAULTS the run derived itself (a search run
# writes it; the others were given). A planned None is compared loosely only with those.
DERIVED_DEFAULTS_KEY = "derived_defaults"


def _left_to_run(key: str, value: Any, planned: Mapping[str, Any], recorded: Mapping[str, Any]) -> bool:
    """Whether a planned None for `key` stands for what the recorded run resolved: a default the
    run derived itself (runs recorded before DERIVED_DEFAULTS_KEY: assumed so), or one a resumed
    run takes from its checkpoint's run, whatever it was. A value the user gave is compared."""
    if key not in RUN_TIME_DEFAULTS or value is not None:
        return False
    derived = recorded.get(DERIVED_DEFAULTS_KEY)
    if not isinstance(derived, list):
        return True
    return key in derived or planned.get("resume_from_checkpoint") is not None


def changed_flags(planned: Mapping[str, Any], record: RunRecord) -> list[str]:
    """`key old -> new` for every argument in which a completed run's recorded args differ from the
    planned run's, except NON_RESULT_ARGS (names, paths, logging, device) and run-time defaults the
    plan leaves to the run where the run derived them too. An argument the run did not record (it
    predates the flag) is not compared."""
    return changed_args(planned, record.args)


def changed_args(planned: Mapping[str, Any], recorded: Mapping[str, Any],
                 ignore: frozenset[str] = frozenset()) -> list[str]:
    """`changed_flags` against a mapping of recorded args (results.json "args" or config.json),
    also ignoring `ignore` and what neither run reads (between two runs that do not search,
    SEARCH_ONLY_FLAGS; between two searches, SEARCH_SETTING_READERS flags neither reads). A planned
    None of RUN_TIME_DEFAULTS reads `default`."""
    def new_text(key: str, value: Any) -> str:
        return "default" if key in RUN_TIME_DEFAULTS and value is None else _canonical(value)

    seed_drew = "data_seed" not in recorded  # recorded before --data_seed: its --seed drew its subsets
    planned, recorded = _with_data_seed(planned), _with_data_seed(recorded)
    ignore = ignore | (unread_args(planned) & unread_args(recorded))  # a changed mode is itself listed

    def change(key: str, value: Any) -> str:
        text = f"{key} {_canonical(recorded[key])} -> {new_text(key, value)}"
        if key == "data_seed" and seed_drew:  # the user changed no flag: say why, and the way to match
            text += (f" (recorded before --data_seed, it drew its --max_*_samples subsets with its --seed "
                     f"{_canonical(recorded[key])}: pass --data_seed {_canonical(recorded[key])} to draw the same)")
        return text

    return [change(key, value) for key, value in planned.items()
            if key not in NON_RESULT_ARGS and key not in ignore and key in recorded
            and not _spelled_elsewhere(key, planned, recorded)
            and _canonical_arg(key, recorded[key]) != _canonical_arg(key, value)
            and not _left_to_run(key, value, planned, recorded)]


MAX_LISTED_CHANGES = 6


def list_changes(changes: Sequence[str]) -> str:
    """`changed_args` output for a message: the first few, and how many more."""
    more = len(changes) - MAX_LISTED_CHANGES
    return ", ".join(changes[:MAX_LISTED_CHANGES]) + (f", and {more} more" if more > 0 else "")
