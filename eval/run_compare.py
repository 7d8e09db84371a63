"""Comparing runs by their recorded arguments: which arguments change what a run measures.

`NON_RESULT_ARGS` (names, paths, logging, device) never do; `SEARCH_ONLY_FLAGS`,
`SEARCH_SETTING_READERS` and `SCALE_FLAG_SIDES` say which flags a run did not read (`unread_args`), and runs recorded
before --data_seed compare by the seed that drew their subsets (`recorded_data_seed`).
`same_settings` and `changed_args` compare one run's args with another's (the launcher's
--skip_completed, duplicate runs); `group_runs` decides which runs are replicas of one setting
(they differ only in `REPLICA_ARGS`: seed, name, output paths, logging and device placement) so
that the report can aggregate them; a group whose runs differ in anything else carries
`mismatches`, and one with two runs of the same seed carries `repeated_seeds`, so that the report
can refuse to average apples with oranges (or a run with itself).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from eval.results import RunRecord

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
# (eval/run_flag_notes.py). A recorded arg that is missing counts as read (compared, as before).
SEARCH_SETTING_READERS: dict[str, Callable[[Mapping[str, Any]], bool]] = {
    # the warm-up's sampling: no delay, no warm-up step (a planned default None is half the steps)
    "precision_warmup": lambda args: args.get("delay_steps") != 0,
    # the shape of the entropy penalty's rise to max_entropy_beta: 0 times any shape is 0
    "entropy_schedule_type": lambda args: args.get("max_entropy_beta") != 0,
    "heldout_fraction": lambda args: args.get("reward_source", "heldout") == "heldout",
    # argmax answers without a cost band (its end-of-search note quotes the band as the way out)
    "target_tolerance": lambda args: args.get("final_selection", "constrained") == "constrained",
    "bn_recalibration_batches": lambda args: has_batchnorm(args.get("model_type")),
}


def unread_search_settings(args: Mapping[str, Any]) -> frozenset[str]:
    """The SEARCH_SETTING_READERS flags that `args`' search does not read (empty for a run that
    does not search: `ignored_args` names all of its search-only flags)."""
    if args.get("mode", "search") != "search":
        return frozenset()
    return frozenset(name for name, reads in SEARCH_SETTING_READERS.items() if not reads(args))


# The scale flags (eval/run_inputs.py SCALE_FLAGS) by the side of a layer they scale: a side every
# layer leaves unscaled reads neither of its flags.
SCALE_FLAG_SIDES: dict[str, str] = {"per_channel": "weights", "weight_range_percentile": "weights",
                                    "per_token": "activations", "act_range_percentile": "activations"}


def takes_no_scale(name: Any) -> bool:
    """Whether recorded format `name` leaves its values unscaled (NumberFormat.takes_scale: none,
    and the bf16/fp16 casts); False for what is no format name (such a record is compared)."""
    from quant.formats import parse_format  # torch: only once records are read, as eval/results_schema.py

    try:
        return isinstance(name, str) and not parse_format(name).takes_scale
    except ValueError:
        return False


def unscaled_sides(args: Mapping[str, Any]) -> frozenset[str]:
    """The sides ("weights", "activations") that every layer of `args`' run leaves unscaled
    (`takes_no_scale`): both in a float run, those at such a format in a fixed-format run; in a
    search, the side(s) it searches where no format of its space takes a scale (`--search_space
    bf16,fp16`) and the activations of a weight-only search without --activation_bits (or with a
    cast). None of a --load_config run (its formats are in that file; older records of one say mode
    uniform with both formats none) or a run that does not record them."""
    mode = args.get("mode")
    if args.get("load_config") is not None:
        return frozenset()
    if mode == "float":
        return frozenset({"weights", "activations"})
    if mode == "uniform":
        return frozenset(side for side, key in (("weights", "weight_format"), ("activations", "act_format"))
                         if takes_no_scale(args.get(key)))
    if mode != "search":
        return frozenset()
    sides = set()
    weight_only = args.get("weight_only_search")
    if unscaled_search_space(args.get("search_formats")) and weight_only in (True, False):
        sides |= {"weights"} if weight_only else {"weights", "activations"}
    if weight_only is True and takes_no_scale(args.get("act_format")):
        sides.add("activations")
    return frozenset(sides)


def unscaled_search_space(formats: Any) -> bool:
    """Whether every format of a recorded search space takes no scale (`takes_no_scale`); False
    for what is no list of format names."""
    return isinstance(formats, list) and len(formats) > 0 and all(takes_no_scale(name) for name in formats)


def unread_scale_settings(args: Mapping[str, Any]) -> frozenset[str]:
    """The scale flags of the sides `args`' run leaves unscaled (`unscaled_sides`): it does not read them."""
    sides = unscaled_sides(args)
    return frozenset(name for name, side in SCALE_FLAG_SIDES.items() if side in sides)


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
    """`ignored_args`, the search settings its kind of search does not read, the scale flags of the
    sides it leaves unscaled, and data_seed where the run drew no subset (it then changes nothing)."""
    unread = ignored_args(args) | unread_search_settings(args) | unread_scale_settings(args)
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
    SEARCH_ONLY_FLAGS; between two searches, SEARCH_SETTING_READERS flags neither reads; the scale
    flags of a side both leave unscaled). A planned None of RUN_TIME_DEFAULTS reads `default`."""
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
