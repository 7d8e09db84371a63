"""Checks of a run's search flags that do not depend on the run's mode: their values, and the
refusal of --eval_only where the run would search.

`check_search_flag_values` runs for every run (a search or not), so a bad value of a search flag
is refused even where the run ignores it; `refuse_eval_only_search` says what an --eval_only run
that would search needs. Both raise ValueError with one line naming the way out, as everything
in eval/run_args.py, which calls them; they are kept apart from it so that it holds the
resolution of a run's flags and this module the search flags' own checks. `check_choice` is the
one-of check of every choice flag (run_args' too).
"""
from __future__ import annotations

import argparse

from cost.cost import REWARD_FORMS
from trainer.entropy_schedule import parse_entropy_schedule
from trainer.final_selection import FinalSelection
from trainer.reinforce_config import AdvantageMode, RewardMetric, RewardSource


def check_choice(value: str, valid: list[str] | tuple[str, ...], flag: str) -> str:
    """`value` if it is one of `valid`, else ValueError naming `flag` (every choice flag of a run)."""
    if value not in valid:
        raise ValueError(f"{flag} {value!r} is not one of {list(valid)}")
    return value


def check_search_flag_values(args: argparse.Namespace) -> None:
    """The values of search flags that are wrong whatever the run: checked in every run, so that a
    typo such as --heldout_fraction 1.5 is refused, not silently recorded, where the flag is
    ignored (a fixed-format run, a search with --reward_source train), and an experiments file's
    base flags fail on the baselines as on the searches. What depends on other flags (--cost_beta's
    sign, the reachable --cost_target_bits) is checked by the search alone."""
    check_choice(args.cost_function, list(REWARD_FORMS), "--cost_function")
    try:  # case-insensitive: recorded (and passed on) by its canonical name
        args.entropy_schedule_type = parse_entropy_schedule(args.entropy_schedule_type).value
    except ValueError as error:
        raise ValueError(f"--entropy_schedule_type: {error}") from None
    if args.reward_metric is not None:  # else resolved from --cost_function by a search
        check_choice(args.reward_metric, [m.value for m in RewardMetric], "--reward_metric")
    check_choice(args.reward_source, [s.value for s in RewardSource], "--reward_source")
    check_choice(args.advantage, [a.value for a in AdvantageMode], "--advantage")
    check_choice(args.final_selection, [f.value for f in FinalSelection], "--final_selection")
    if not 0 <= args.target_tolerance < 1:
        raise ValueError(f"--target_tolerance must be in [0, 1), got {args.target_tolerance}")
    if not 0 < args.heldout_fraction <= 0.5:
        raise ValueError(f"--heldout_fraction must be in (0, 0.5], got {args.heldout_fraction}")
    if not 0 <= args.baseline_decay < 1:
        raise ValueError(f"--baseline_decay must be in [0, 1), got {args.baseline_decay}")
    if args.bn_recalibration_batches < 0:
        raise ValueError(f"--bn_recalibration_batches must be >= 0 (0 = off), got {args.bn_recalibration_batches}")
    if args.delay_steps is not None and args.delay_steps < 0:
        raise ValueError(f"--delay_steps must be >= 0, got {args.delay_steps}")
    if args.cost_target is not None and args.cost_target_bits is not None:
        raise ValueError("--cost_target and --cost_target_bits are mutually exclusive; give one target")
    if args.cost_target is not None and not args.cost_target > 0:
        raise ValueError(f"--cost_target must be > 0 (MiB for memory, GBOPs for compute), got {args.cost_target}")
    if args.cost_target_bits is not None and not 0 < args.cost_target_bits <= 32:
        raise ValueError(f"--cost_target_bits must be in (0, 32], got {args.cost_target_bits}")


def refuse_eval_only_search(args: argparse.Namespace, search_asked: list[str]) -> None:
    """--eval_only evaluates trained weights at fixed formats, and this run would search: say what
    it needs (README: with --load_config or --model_name_or_path), not "not with a search" to a user
    who only left the formats out (a search is the default then)."""
    formats = "--bits N (or --weight_bits and --activation_bits; --bits 0 = float)"
    if search_asked:
        asked = "/".join(search_asked)
        raise ValueError(f"--eval_only evaluates trained weights at fixed formats, and {asked} asks for a search, "
                         f"which trains: drop {asked} and give fixed formats, --load_config RUN/results.json or "
                         f"{formats}; or drop --eval_only to search")
    if args.model_name_or_path is not None:
        raise ValueError(f"--eval_only evaluates --model_name_or_path {args.model_name_or_path} at fixed formats, and "
                         f"none are given (without them a run searches): add {formats}")
    raise ValueError(f"--eval_only evaluates trained weights at fixed formats, and this run gives neither (without "
                     f"formats a run searches): give --load_config RUN/results.json (a completed run's formats and "
                     f"its final_model/), or --model_name_or_path DIR with {formats}")
