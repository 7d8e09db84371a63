"""Notes about flags a run ignores: one line each on stderr (`note: ...`), never an error.

An experiments file gives every run the same base flags, so a fixed-format run ignoring its
search-only flags, a search ignoring the settings of another kind of search (or of a search
without a delay or an entropy penalty), scale flags of weights or activations a run leaves
unscaled, an unused --data_seed or a one-format search space are noted, not refused. `eval.eval_parse` prints these
after `eval.run_args.resolve_run_args` has resolved the run's mode; they are kept apart from
run_args, which checks and resolves flags, because they only describe a resolved run.
"""
from __future__ import annotations

import argparse

from eval.run_compare import (SCALE_FLAG_SIDES, SEARCH_ONLY_FLAGS, SEARCH_SETTING_READERS, unread_search_settings,
                               unscaled_sides)
from eval.run_args import DEFAULT_DATA_SEED
from quant.formats import parse_format

# SEARCH_ONLY_FLAGS (eval/run_compare.py): a fixed-format or float run ignores them. An experiments
# file gives every run the same base flags, so this is a note, not an error. (--single_decision,
# --block_search and --weight_only_search without a search are errors: they name a search.)


def ignored_search_flags(args: argparse.Namespace, defaults: dict[str, object]) -> list[str]:
    """The search-only flags set away from their defaults in a run that does not search."""
    if args.mode == "search":
        return []
    ignored = []
    for name in SEARCH_ONLY_FLAGS:
        value = getattr(args, name)
        if value != defaults[name]:
            ignored.append(f"--no-{name}" if value is False and defaults[name] is True else f"--{name}")
    return ignored


def _unread_setting_clause(args: argparse.Namespace, name: str, given: frozenset[str] = frozenset(),
                           defaults: dict[str, object] | None = None) -> str:
    """Why this search does not read search setting `name` (SEARCH_SETTING_READERS), and the way to
    a search that does (`given`: the dests the command line named; a flag given is changed, not added;
    `defaults`: the parser's, for a value to suggest)."""
    value = getattr(args, name)
    # A resumed search keeps the checkpoint's delay and entropy penalty (eval/run_inputs.py
    # check_resume_matches): the only way out is to drop the flag.
    resumed = getattr(args, "resume_from_checkpoint", None) is not None
    if name == "precision_warmup":
        flag = "--precision_warmup" if value else "--no-precision_warmup"
        if resumed:
            recorded = "" if "delay_steps" in given else "recorded in its config.json: "
            return (f"{flag} only applies to the --delay_steps warm-up, and the run being resumed has --delay_steps 0 "
                    f"({recorded}the policy samples from the first step): it ignores it (drop the flag)")
        return (f"{flag} only applies to the --delay_steps warm-up, and this search has --delay_steps 0 (the policy "
                f"samples from the first step): it ignores it (to warm up first, change --delay_steps 0 to the number "
                f"of warm-up steps, or drop --delay_steps for the default, half of the steps)")
    if name == "entropy_schedule_type":
        beta = f"--max_entropy_beta {args.max_entropy_beta:g}"
        if resumed:
            return (f"--entropy_schedule_type {value} only shapes the rise of the entropy penalty to --max_entropy_beta, "
                    f"and the run being resumed has {beta} (no penalty): it ignores it (drop the flag)")
        suggested = (defaults or {}).get("max_entropy_beta") or 0.1
        return (f"--entropy_schedule_type {value} only shapes the rise of the entropy penalty to --max_entropy_beta, "
                f"and this search has {beta} (no penalty): it ignores it (to push every decision to converge, change "
                f"{beta} to a positive value such as {suggested:g})")
    if name == "heldout_fraction":
        way = (f"change --reward_source {args.reward_source} to --reward_source heldout" if "reward_source" in given
               else "add --reward_source heldout")
        return (f"--heldout_fraction {value:g} only applies to --reward_source heldout, and this search takes its "
                f"reward from the batch just trained on (--reward_source {args.reward_source}): it ignores it (to "
                f"score the policy on a held-out split, {way})")
    if name == "target_tolerance":
        return (f"--target_tolerance {value:g} only applies to --final_selection constrained, and this search answers "
                f"with --final_selection {args.final_selection}: it ignores it (to pick the answer within that band "
                f"of the target, drop --final_selection {args.final_selection})")
    return (f"--bn_recalibration_batches {value} only applies to models with BatchNorm, and {args.model_type} has "
            f"none (it normalises with LayerNorm): the search ignores it (drop the flag)")


def unread_settings_note(args: argparse.Namespace, defaults: dict[str, object],
                         given: frozenset[str] = frozenset()) -> str | None:
    """One line telling a search which of its explicitly set flags its kind of search does not
    read (SEARCH_SETTING_READERS: recorded, but not compared between runs), or None. Explicitly
    set: away from the default, as for `ignored_search_flags`, or among `given` (the dests the
    command line named, where the caller knows them: a default typed out is set too)."""
    if args.mode != "search":
        return None  # a run that does not search names them among all its search-only flags
    unread = unread_search_settings(vars(args))
    clauses = [_unread_setting_clause(args, name, given, defaults) for name in SEARCH_SETTING_READERS
               if name in unread and (getattr(args, name) != defaults[name] or name in given)]
    return f"note: {'; '.join(clauses)}" if clauses else None


def ignored_flags_note(args: argparse.Namespace, defaults: dict[str, object], *,
                       no_search_given: bool = False, given: frozenset[str] = frozenset()) -> str | None:
    """One line telling a run which of its flags it ignores, or None: a fixed-format or float run
    its search-only flags, a search the settings of other kinds of search (`unread_settings_note`).
    no_search_given: the command line said --no-search (a way out must drop it too). given: the
    dests the command line named (eval.cli_flags.split_argv), for the search's note."""
    ignored = ignored_search_flags(args, defaults)
    if not ignored:
        return unread_settings_note(args, defaults, given)
    if args.load_config is not None:
        fixed, way_out = f"formats from --load_config {args.load_config}", "drop --load_config"
    else:
        fixed = "float" if args.mode == "float" else f"weights {args.weight_format}, activations {args.act_format}"
        given = [f"--{name}" for name in ("bits", "weight_bits", "activation_bits") if getattr(args, name) is not None]
        given += ["--no-search"] if no_search_given else []  # else it stays a fixed run without them
        way_out = f"drop {'/'.join(given)}"
    verb = "applies" if len(ignored) == 1 else "apply"
    return (f"note: {' '.join(ignored)} only {verb} to a search; this run has fixed formats ({fixed}) and ignores "
            f"them (to search instead, {way_out})")


def _scale_flag_text(name: str, value: object) -> str:
    """A scale flag as typed: `--per_token`, `--act_range_percentile 99.9`."""
    return f"--{name}" if isinstance(value, bool) else f"--{name} {value:g}"


def _side_state(args: argparse.Namespace, sides: list[str]) -> str:
    """How this run leaves `sides` unscaled: in float, or cast to bf16/fp16 ("casts its weights
    and activations to bf16, ..." where both sides share the format)."""
    formats = {side: args.act_format if side == "activations" else args.weight_format for side in sides}
    if len(set(formats.values())) > 1:
        return ", and ".join(_side_state(args, [side]) for side in sides)
    fmt, what = formats[sides[0]], " and ".join(sides)
    # a side left unscaled (eval.run_compare.unscaled_sides) that quantizes is a cast
    return f"casts its {what} to {fmt}, which takes no scale" if parse_format(fmt).quantizes else \
        f"keeps its {what} in float"


def _way_to_scale(args: argparse.Namespace, sides: list[str]) -> str:
    """The flags that give `sides` of this run a scaled format: --bits if typed (it sets both),
    else each side's own flag, changed if typed and added if not."""
    if args.bits is not None:
        return f"change --bits {args.bits} to 8"
    ways = []
    for side in sides:
        flag = "weight_bits" if side == "weights" else "activation_bits"
        value = getattr(args, flag)
        ways.append(f"change --{flag} {value} to 8" if value is not None else f"add --{flag} 8")
    return " and ".join(ways)


def unscaled_side_scale_note(args: argparse.Namespace, defaults: dict[str, object],
                             given: frozenset[str] = frozenset()) -> str | None:
    """A note for scale flags (SCALE_FLAG_SIDES) explicitly set for weights or activations that
    every layer of this run leaves unscaled (`eval.run_compare.unscaled_sides`: format none, which
    quantize returns unchanged, or a bf16/fp16 cast, whose scale is 1), or None. Explicitly set:
    away from `defaults` or among `given`. A --load_config run takes its formats from that run
    (eval.run_inputs.load_config_note)."""
    sides = unscaled_sides(vars(args))
    unread = [name for name, side in SCALE_FLAG_SIDES.items()
              if side in sides and (getattr(args, name) != defaults[name] or name in given)]
    if not unread:
        return None
    flags = " ".join(_scale_flag_text(name, getattr(args, name)) for name in unread)
    verb, them = ("applies", "it") if len(unread) == 1 else ("apply", "them")
    noted = [side for side in ("weights", "activations") if any(SCALE_FLAG_SIDES[name] == side for name in unread)]
    what = "layers" if len(noted) == 2 else noted[0]
    way_out = _way_to_scale(args, noted)
    if args.mode == "float":
        why = "this run is float"
    elif args.mode == "search":
        why, way_out = _search_why(args, noted)
    else:
        why = (f"this run {_side_state(args, noted)} (weights {args.weight_format}, "
               f"activations {args.act_format})")
    return (f"note: {flags} only {verb} to scaled {what}, and {why}: it ignores {them} (to quantize the {what} with "
            f"a scale, {way_out})")


def _search_why(args: argparse.Namespace, noted: list[str]) -> tuple[str, str]:
    """Why a search leaves `noted` unscaled, and the way to scale them: the sides it searches
    over a space without a format that takes a scale, and a weight-only search's fixed activations."""
    searched = ["weights"] if args.weight_only_search else ["weights", "activations"]
    whys, ways = [], []
    if any(side in searched for side in noted):
        whys.append(f"no format of --search_space {args.search_space} takes a scale (none and the bf16/fp16 casts "
                    f"do not)")
        ways.append("add a format that takes one, e.g. int8, to --search_space")
    if "activations" in noted and "activations" not in searched:
        whys.append(f"this weight-only search {_side_state(args, ['activations'])} (activations {args.act_format})")
        ways.append(_way_to_scale(args, ["activations"]))
    return " and ".join(whys), " and ".join(ways)


def data_seed_note(args: argparse.Namespace, given: frozenset[str] = frozenset()) -> str | None:
    """A note when --data_seed is set but draws nothing: without --max_*_samples a run takes whole
    splits (and the report and launcher compare such runs without it)."""
    if args.max_train_samples is not None or args.max_eval_samples is not None:
        return None
    if args.data_seed == DEFAULT_DATA_SEED and "data_seed" not in given:
        return None
    return (f"note: --data_seed {args.data_seed} only draws the --max_train_samples/--max_eval_samples subsets, and "
            f"this run takes whole splits: it ignores it")


def single_option_note(args: argparse.Namespace) -> str | None:
    """A note for a search whose space has one format: every decision has nothing to choose."""
    if args.mode != "search" or len(args.search_formats) != 1:
        return None
    only = args.search_formats[0]
    fixed = f"--weight_bits {only}" if args.weight_only_search else f"--bits {only}"
    return (f"note: --search_space {args.search_space} has one format ({only}): every decision takes it, so this "
            f"search is a fixed-format run with extra steps; list several formats (e.g. 4,8) to search, or run "
            f"{fixed} instead")
