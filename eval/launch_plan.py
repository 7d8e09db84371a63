"""The experiments of a launch: sweeps and an experiments file expanded, validated and named.

Each experiment is the base run flags with its overrides applied (experiments-file entry x sweep
combination, cartesian product). Every experiment is validated with `parse_run_args` before
anything starts, so a bad value in the 7th experiment fails the whole launch, naming it.

Naming: a run's name is the `exp_name` it was given (run flags or its experiments-file entry) or
the run's default name (built from its flags), then `key=value` for every flag its
experiments-file entry sets (`..._s42_learning_rate=0.01`; sorted, and not those that leave
results unchanged, such as --device), unless the entry has its own exp_name, and for every
`--sweep` key (`float_seed=0`, `..._s42_learning_rate=0.001`). A default name skips
the keys it already shows (DEFAULT_NAME_KEYS: `_s42` is the seed; the target and search space
only in a search's name). So a run's name never depends on which other runs are in the launch:
relaunching one value of a sweep, or one entry of a file, finds the run it named before. Values
are named as the run reads them, in one spelling (name_text: `1e-3` and 0.001 are `0.001`), so a
relaunch from a sweep, JSON or YAML (which reads `1e-3` as a string) finds the same directory. Two
runs that still share a directory (a duplicate entry, or two entries with the same exp_name) fail
the launch: two runs never share a directory; nor may two runs of different names agree in every
flag (the same run twice).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from eval.cli_flags import FlagSegment, split_argv
from eval.eval_parse import create_arg_parser, parse_run_args
from eval.launch_flags import LaunchError, apply_overrides, name_text, resolve_key, value_text
from eval.run_compare import NON_RESULT_ARGS, ignored_args, same_settings, same_value, unread_args
from quant.formats import parse_format_list

MAX_NAME_LENGTH = 200  # file systems allow 255 bytes per name
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._+=-]+")
# Run flags (destinations) that the default run name (eval.run_args.default_exp_name) shows: a
# swept one is not appended to a default name again. tests/eval/test_launch_plan.py checks that
# changing each of them changes the default name.
DEFAULT_NAME_KEYS = frozenset({
    "seed", "model_type", "search", "bits", "weight_bits", "activation_bits", "search_space", "single_decision",
    "block_search", "weight_only_search", "cost_type", "cost_target", "cost_target_bits",
})
# Of those, the ones only a search's default name shows (a fixed-format run's name has no target).
SEARCH_NAME_KEYS = frozenset({"search_space", "single_decision", "block_search", "weight_only_search", "cost_type",
                              "cost_target", "cost_target_bits"})


@dataclass(frozen=True)
class SweepAxis:
    """One `--sweep KEY=V1,V2,...`: a run flag and the values it takes."""

    key: str
    values: tuple[str, ...]
    separator: str = field(default=",", compare=False)  # between the values as written: ',' or ';'

    def __post_init__(self) -> None:
        if not self.key:
            raise LaunchError("--sweep needs KEY=V1,V2,... with KEY a run flag name, e.g. --sweep seed=1,2,3")
        if not self.values or any(not v for v in self.values):
            raise LaunchError(f"--sweep {self.key}: every value must be non-empty, got {list(self.values)}")
        if len(set(self.values)) != len(self.values):
            raise LaunchError(f"--sweep {self.key}: values repeat in {list(self.values)}; list each value once")


def parse_sweep(text: str) -> SweepAxis:
    """`KEY=V1,V2` (values split on ',' or, if the text has any ';', on ';' so that values can hold
    commas: `search_space=4,8;2,4,8`)."""
    key, sep, values = text.partition("=")
    if not sep:
        raise LaunchError(f"--sweep {text!r} must look like KEY=V1,V2,... (e.g. --sweep seed=1,2,3)")
    separator = ";" if ";" in values else ","
    return SweepAxis(key.strip().lstrip("-"), tuple(v.strip() for v in values.split(separator)), separator)


def refuse_one_format_search_spaces(axis: SweepAxis) -> None:
    """A --sweep of search spaces that are all one format each (`search_space=4,8`: split on the
    comma, two "searches" with nothing to choose, int4 alone and int8 alone) almost surely meant
    one search over those formats: refused with both ways out. A sweep that mixes such a value with
    searches over several formats (`'search_space=8;4,8'`) stays: each run notes its own. Values
    that are no formats are left to the run's own check, which names them."""
    if len(axis.values) < 2:
        return
    try:
        if any(len(parse_format_list(value, "search space")) != 1 for value in axis.values):
            return
    except ValueError:
        return
    written = shlex.quote(f"{axis.key}={axis.separator.join(axis.values)}")
    formats = ",".join(axis.values)
    # Split on ';' the user already separated search spaces: each must list several formats.
    several = ("give each search space several formats (--sweep 'search_space=4,8;2,4,8')" if axis.separator == ";"
               else "to sweep several search spaces separate them with ';' (--sweep 'search_space=4,8;2,4,8')")
    raise LaunchError(f"--sweep {written} would run {len(axis.values)} searches of one format each "
                      f"({', '.join(axis.values)}), with nothing to choose; for one search over these formats give "
                      f"--search_space {formats} (outside --sweep), {several}, or for uniform baselines sweep the "
                      f"fixed format (--sweep bits={formats})")


@dataclass(frozen=True)
class Experiment:
    """One run of the launch: its flags (with `--exp_name`), name and output directory."""

    index: int  # 1-based, in launch order
    overrides: tuple[tuple[str, str], ...]  # (key, value text) that set this run apart from the base flags
    argv: tuple[str, ...]  # the run's flags as passed to `python -m eval.eval_run`
    exp_name: str
    task: str
    output_root_dir: str
    device: str | None  # the run's --device (None: cuda when available)
    # A --cuda_visible_devices among the run flags: the launcher's GPU choice (removed from argv,
    # where it would override the device the launcher gives the run).
    cuda_visible_devices: str | None = None
    # Every argument of the run as it will record them (results.json "args"), JSON values.
    args: Mapping[str, Any] = field(default_factory=dict)
    # The run's `note:` lines from validating its flags (e.g. search flags a fixed-format run ignores).
    notes: tuple[str, ...] = ()

    @property
    def run_dir(self) -> Path:
        return Path(self.output_root_dir) / self.task / self.exp_name


def load_experiments_file(path: str | Path) -> list[dict[str, Any]]:
    """A JSON or YAML list of dicts of run-flag overrides (each may hold its own `exp_name`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise LaunchError(f"--experiments {str(path)!r} cannot be read: {error.strerror or error}") from None
    except UnicodeDecodeError as error:  # e.g. an accented exp_name saved as Latin-1
        line = error.object[:error.start].count(b"\n") + 1
        raise LaunchError(f"--experiments {str(path)!r} is not UTF-8 text (byte 0x{error.object[error.start]:02x} on "
                          f"line {line}); save it as UTF-8") from None
    # Both parsers let the last of two equal keys win: an entry setting a flag twice (a copy-paste
    # slip) is refused instead, naming the key and the entry. `repeated`: id of a mapping -> its key.
    repeated: dict[int, str] = {}
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            data = _load_yaml(text, repeated)
        else:
            data = json.loads(text, object_pairs_hook=lambda pairs: _unique_pairs(pairs, repeated))
    except Exception as error:  # noqa: BLE001 - json and yaml raise different types; both mean "bad file"
        kind = "YAML" if path.suffix.lower() in (".yaml", ".yml") else "JSON (use .yaml/.yml for YAML)"
        detail = " ".join(str(error).split())
        raise LaunchError(f"--experiments {str(path)!r} is not valid {kind}: {detail}") from None
    if not isinstance(data, list) or not data:
        raise LaunchError(f"--experiments {str(path)!r} must hold a non-empty list of objects of run-flag overrides, "
                          'e.g. [{"seed": 1}, {"seed": 2, "learning_rate": 0.01}]')
    for number, entry in enumerate(data, 1):
        if not isinstance(entry, dict) or not all(isinstance(k, str) for k in entry):
            raise LaunchError(f"--experiments {str(path)!r}: entry {number} is {entry!r}, expected an object of "
                              "run flag name -> value")
        if id(entry) in repeated:
            raise LaunchError(f"--experiments {str(path)!r}: entry {number} sets {repeated[id(entry)]} twice; keep one "
                              "of its values")
        # A key may be written as the flag (--bits): one spelling from here on, exp_name included.
        keys = [key.lstrip("-") for key in entry]
        twice = next((key for key in keys if keys.count(key) > 1), None)
        if twice is not None:
            spelled = " and ".join(repr(key) for key in entry if key.lstrip("-") == twice)
            raise LaunchError(f"--experiments {str(path)!r}: entry {number} sets {twice} twice (as {spelled}); keep "
                              "one of its values")
        data[number - 1] = entry = {key.lstrip("-"): value for key, value in entry.items()}
        name = entry.get("exp_name")
        if "exp_name" in entry and (not isinstance(name, str) or not name or "/" in name):
            raise LaunchError(f"--experiments {str(path)!r}: entry {number} has exp_name {name!r}; give a "
                              "non-empty name without '/'")
    return data


def _unique_pairs(pairs: list[tuple[str, Any]], repeated: dict[int, str]) -> dict[str, Any]:
    """json's object_pairs_hook: the object, with its first repeated key noted in `repeated`."""
    mapping: dict[str, Any] = {}
    for key, value in pairs:
        if key in mapping and id(mapping) not in repeated:
            repeated[id(mapping)] = key
        mapping[key] = value
    return mapping


def _load_yaml(text: str, repeated: dict[int, str]) -> Any:
    """yaml.safe_load, with the first repeated key of each mapping noted in `repeated` (by the id
    of the dict it becomes)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            # The keys as written, before the base class merges `<<: *entry` in (whose keys the
            # mapping may override on purpose).
            written = [key_node.value for key_node, _ in node.value
                       if isinstance(key_node, yaml.ScalarNode) and key_node.tag == "tag:yaml.org,2002:str"]
            mapping = super().construct_mapping(node, deep=deep)
            twice = next((key for i, key in enumerate(written) if key in written[:i]), None)
            if twice is not None:
                repeated[id(mapping)] = twice
            return mapping

        def construct_yaml_map(self, node: yaml.MappingNode) -> Any:
            data: dict[Any, Any] = {}
            yield data
            value = self.construct_mapping(node)
            data.update(value)
            if id(value) in repeated:
                repeated[id(data)] = repeated.pop(id(value))

    UniqueKeyLoader.add_constructor("tag:yaml.org,2002:map", UniqueKeyLoader.construct_yaml_map)
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader


def _combinations(sweeps: Sequence[SweepAxis], entries: Sequence[dict[str, Any]],
                  parser: argparse.ArgumentParser) -> list[tuple[str | None, list[tuple[str, Any]]]]:
    """(explicit exp_name, overrides) for every entry x sweep combination, in launch order."""
    seen: dict[str, str] = {}
    for axis in sweeps:
        dest = resolve_key(parser, axis.key).dest
        if dest in seen:
            raise LaunchError(f"--sweep {axis.key} and --sweep {seen[dest]} set the same flag; merge their values "
                              "into one --sweep")
        seen[dest] = axis.key
        spelled: dict[str, str] = {}
        for value in axis.values:
            text = name_text(parser, axis.key, value)
            if text in spelled:
                raise LaunchError(f"--sweep {axis.key}: {spelled[text]} and {value} are the same value ({text}); list "
                                  "each value once")
            spelled[text] = value
        if dest == "search_space":
            refuse_one_format_search_spaces(axis)
    combos = []
    for entry in entries:
        name = entry.get("exp_name")
        pairs = [(k.lstrip("-"), v) for k, v in entry.items() if k != "exp_name"]
        for values in itertools.product(*(axis.values for axis in sweeps)):
            combos.append((name, pairs + [(axis.key, v) for axis, v in zip(sweeps, values)]))
    return combos


def _validate(argv: list[str], label: str) -> argparse.Namespace:
    return _validate_with_notes(argv, label)[0]


def _validate_with_notes(argv: list[str], label: str) -> tuple[argparse.Namespace, tuple[str, ...]]:
    """The run's parsed flags and its `note:` lines (without the `eval_run: ` prefix)."""
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            args = parse_run_args(argv, prog="eval_run")
        notes = tuple(line.removeprefix("eval_run: ") for line in captured.getvalue().splitlines()
                      if line.startswith("eval_run: note: "))
        return args, notes
    except SystemExit:
        message = captured.getvalue().strip().splitlines()
        detail = message[-1].split("error: ", 1)[-1] if message else "invalid run flags"
        raise LaunchError(f"{label}: {detail}" if label else detail) from None


def _name_part(key: str, text: str) -> str:
    return _UNSAFE_NAME_CHARS.sub("-", f"{key}={text}")


def _name_pairs(pairs: list[tuple[str, str]], swept_keys: Sequence[str], own_name: bool, given_name: bool,
                parser: argparse.ArgumentParser, mode: str) -> list[tuple[str, str]]:
    """The (key, value) pairs that go into a run's name, in a fixed order: the entry's flags
    (sorted, so that the order they are written in does not matter; not those that leave results
    unchanged, such as --device or --eval_steps), unless the entry has its own exp_name, which
    stands for them; then the swept ones. After a default name, only those it does not show (it
    shows the search-only keys for searches only)."""
    dest = {k: resolve_key(parser, k).dest for k, _ in pairs}
    swept = [(k, v) for k, v in pairs if k in swept_keys]
    entry = [] if own_name else sorted(((k, v) for k, v in pairs if k not in swept_keys
                                        and dest[k] not in NON_RESULT_ARGS), key=lambda pair: dest[pair[0]])
    if given_name or own_name:
        return entry + swept
    shown = DEFAULT_NAME_KEYS if mode == "search" else DEFAULT_NAME_KEYS - SEARCH_NAME_KEYS
    return [(k, v) for k, v in entry + swept if dest[k] not in shown]


class _PairOfRuns:
    """Two experiments that are one run, named as the user wrote them: the expanded runs' numbers
    (entry x sweep value) are in no file, so the entries of --experiments and the sweep values are
    named instead, with the way out that applies (a copy that --sweep made cannot be removed)."""

    def __init__(self, entries: Sequence[dict[str, Any]] | None, sweeps: Sequence[SweepAxis],
                 combos: list[tuple[str | None, list[tuple[str, Any]]]]) -> None:
        self.entries = list(entries) if entries is not None else None
        self.sweeps = list(sweeps)
        self.combos = combos
        self.per_entry = len(combos) // len(self.entries) if self.entries else len(combos)

    def entry_of(self, i: int) -> int:
        """The 1-based entry of the file (1 without a file) that experiment i (0-based) expands."""
        return i // self.per_entry + 1

    def copies(self, i: int, j: int) -> bool:
        """Experiments i and j are --sweep's copies of one entry of the file (or of the command line)."""
        return bool(self.sweeps) and self.entry_of(i) == self.entry_of(j)

    def _entry_text(self, number: int) -> str:
        entry = self.entries[number - 1] if self.entries else {}
        return ", ".join(f"{key}={value}" for key, value in entry.items()) or "no flags"

    def _swept(self, i: int) -> list[tuple[str, Any]]:
        return self.combos[i][1][len(self.combos[i][1]) - len(self.sweeps):]

    def subject(self, i: int, j: int) -> str:
        """The two experiments (0-based, i before j), as the subject of "are"/"would"."""
        if not self.sweeps:  # the experiments are the file's entries
            return f"experiments {i + 1} and {j + 1}"
        if self.copies(i, j):
            values = "; ".join(f"{key}={a} and {key}={b}" for (key, a), (_, b) in zip(self._swept(i), self._swept(j))
                               if a != b)
            entry = self.entry_of(i)
            where = f" of entry {entry} of --experiments ({self._entry_text(entry)})" if self.entries else ""
            return f"--sweep {values}{where}"

        def sweep_text(k: int) -> str:
            return ", ".join(f"{key}={value}" for key, value in self._swept(k))

        first, second = self.entry_of(i), self.entry_of(j)
        return (f"entry {first} of --experiments ({self._entry_text(first)}) under --sweep {sweep_text(i)} and entry "
                f"{second} ({self._entry_text(second)}) under --sweep {sweep_text(j)}")

    def same_directory_way_out(self, i: int, j: int) -> str:
        if self.copies(i, j):  # values spelled twice (8 and int8): caught here, by their run's directory
            return "list each value once"
        return "remove the duplicate or give them distinct exp_name values in --experiments"

    def same_setting_way_out(self, i: int, j: int, search_only: list[str], others: list[str]) -> str:
        ways = []
        if search_only:
            names = ", ".join(search_only)
            ways.append(f"a run that does not search ignores {names}: " + (
                "set it only in the search entries of --experiments" if self.entries is not None else
                f"drop --sweep {names}, or launch from an --experiments file that sets it only in its search entries"))
        if others:  # e.g. --heldout_fraction with --reward_source train, --data_seed without subsets
            names = ", ".join(others)
            ways.append(f"these runs do not read {names} (each run's note says why): " + (
                "sweep or set it only where a run reads it" if self.entries is not None or not self.copies(i, j)
                else f"drop --sweep {names}"))
        if not ways:
            ways.append("remove one of them" if not self.copies(i, j) else
                        f"launch entry {self.entry_of(i)} on its own, without --sweep" if self.entries is not None
                        else "list each value once")
        elif not self.copies(i, j):
            ways.insert(0, "remove one of them")
        return "; ".join(ways)


def plan_experiments(run_argv: Sequence[str], sweeps: Sequence[SweepAxis] = (),
                     entries: Sequence[dict[str, Any]] | None = None) -> list[Experiment]:
    """Expand, validate and name the experiments; raises LaunchError naming the first bad one."""
    parser = create_arg_parser("eval_run")
    base: list[FlagSegment] = split_argv(parser, run_argv)
    base_without_name = [s for s in base if s.dest != "exp_name"]
    combos = _combinations(sweeps, entries if entries is not None else [{}], parser)
    total = len(combos)

    resolved: list[argparse.Namespace] = []
    override_texts: list[list[tuple[str, str]]] = []
    name_texts: list[list[tuple[str, str]]] = []
    for number, (name, pairs) in enumerate(combos, 1):
        label = f"experiment {number} of {total} ({', '.join(f'{k}={v}' for k, v in pairs)})" if pairs else ""
        try:
            argv = apply_overrides(parser, base_without_name if name else base, pairs)
        except LaunchError as error:
            raise LaunchError(f"{label}: {error}" if label else str(error)) from None
        if name:
            argv += ["--exp_name", name]
        resolved.append(_validate(argv, label))
        override_texts.append([(k, "default" if v is None else value_text(k, v)) for k, v in pairs])
        # Numbers in one spelling: `1e-3` (a sweep, or YAML's string) and 0.001 name one directory.
        name_texts.append([(k, "default" if v is None else name_text(parser, k, v)) for k, v in pairs])

    def run_dir(args: argparse.Namespace, name: str) -> Path:
        return Path(os.path.abspath(Path(args.output_root_dir) / args.task / name))  # ./out and out are one

    swept_keys = [axis.key for axis in sweeps]
    pair_of = _PairOfRuns(entries, sweeps, combos)
    given_name = any(segment.dest == "exp_name" for segment in base)
    names = ["_".join([args.exp_name, *(_name_part(k, v) for k, v in
                                        _name_pairs(pairs, swept_keys, bool(name), given_name, parser, args.mode))])
             for pairs, (name, _), args in zip(name_texts, combos, resolved)]
    dirs = [run_dir(args, name) for args, name in zip(resolved, names)]
    first_of: dict[Path, int] = {}
    for i, (run_dir, name) in enumerate(zip(dirs, names)):
        if run_dir in first_of:
            raise LaunchError(f"{pair_of.subject(first_of[run_dir], i)} would both write to {run_dir} "
                              f"(they are the same run); {pair_of.same_directory_way_out(first_of[run_dir], i)}")
        first_of[run_dir] = i
        if len(name) > MAX_NAME_LENGTH:
            named = combos[i][0] is not None or given_name
            raise LaunchError(f"experiment {i + 1}: the run name {name[:60]!r}... is {len(name)} characters; give "
                              + ("it a shorter exp_name" if named else "its entry in --experiments an exp_name"))

    launcher_owned = [s for s in base_without_name if s.dest != "cuda_visible_devices"]
    experiments = []
    for i, (args, name, pairs, (_, combo)) in enumerate(zip(resolved, names, override_texts, combos)):
        argv = apply_overrides(parser, launcher_owned, combo) + ["--exp_name", name]
        final, notes = _validate_with_notes(argv, f"experiment {i + 1} of {total}")
        recorded = json.loads(json.dumps(vars(final), default=str))  # as results.json will hold them
        experiments.append(Experiment(i + 1, tuple(pairs), tuple(argv), final.exp_name, final.task,
                                      final.output_root_dir, final.device, args.cuda_visible_devices, recorded,
                                      notes))
    exported_by: dict[Path, Experiment] = {}
    for experiment in experiments:
        export_dir = experiment.args.get("export_dir")
        if export_dir is None:
            continue
        path = Path(os.path.abspath(os.path.expanduser(export_dir)))
        if path in exported_by:
            first = exported_by[path]
            raise LaunchError(f"experiments {first.index} and {experiment.index} would both export to {path} "
                              f"(--export_dir); give each experiment its own export_dir in --experiments, or export "
                              f"after the sweep: python -m quant.export RUN_DIR --out DIR")
        exported_by[path] = experiment
    first_with: dict[str, Experiment] = {}
    for experiment in experiments:
        key = same_settings(experiment.args, ignore={"exp_name"})
        if key in first_with:
            first = first_with[key]
            unread = sorted(name for name in unread_args(experiment.args) if name in experiment.args
                            and not same_value(name, first.args.get(name), experiment.args[name]))
            search_only = [name for name in unread if name in ignored_args(experiment.args)]
            others = [name for name in unread if name not in search_only]
            way_out = pair_of.same_setting_way_out(first.index - 1, experiment.index - 1, search_only, others)
            raise LaunchError(f"{pair_of.subject(first.index - 1, experiment.index - 1)} are the same run under two "
                              f"names ({first.exp_name!r} and {experiment.exp_name!r}: every other flag means the "
                              f"same); {way_out}")
        first_with[key] = experiment
    return experiments
