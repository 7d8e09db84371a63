"""Run flags as the launcher sees them: a run's argv split into one segment per flag
(eval/cli_flags.py `split_argv`), and a `key=value` override (from `--sweep` or an experiments
file) turned into the tokens of that flag.

The base command line gives each flag once (`refuse_repeated_run_flags`, as every CLI of the
project: eval/cli_flags.py), and an override replaces its flag there, so the run sees each flag
once; an experiment setting one flag twice (a sweep and its entry, or two names) is refused.
Keys are run flag names without the dashes (`learning_rate`, `model`, `no-quantize_pooler` is
not a key: booleans take `true`/`false`). Errors are `LaunchError` with one line naming the bad
key or value and the way out.
"""
from __future__ import annotations

import argparse
import difflib
from typing import Any, Sequence

from eval.cli_flags import FlagSegment, flag_actions, option_map, repeated_flag_error


class LaunchError(ValueError):
    """A bad launch request (flags, sweep, experiments file, devices): one line, exit code 2."""


# The launcher passes --overwrite_output_dir itself, to the completed runs its --overwrite runs again.
OVERWRITE_REASON = ("the launcher replaces completed runs with its own --overwrite (and passes --overwrite_output_dir "
                    "to the runs it replaces)")
# The launcher assigns devices itself and names every run; these keys cannot be swept.
RESERVED_KEYS = {
    "cuda_visible_devices": "the launcher assigns GPUs to runs; pick them with --gpus or --num_gpus",
    "overwrite_output_dir": OVERWRITE_REASON,
}
TRUE_WORDS, FALSE_WORDS = ("true",), ("false",)


def refuse_repeated_run_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """The run flags of a launch give each flag once, as `python -m eval.eval_run` requires: an
    override replaces every occurrence of its flag, so a repeat such as `--seed 0 --seed 1` would
    otherwise vanish under `--sweep seed=...` instead of being refused."""
    message = repeated_flag_error(parser, argv)
    if message is not None:
        raise LaunchError(message)


def resolve_key(parser: argparse.ArgumentParser, key: str) -> argparse.Action:
    """The run flag `key` names (an option name without dashes, e.g. `model` or `model_type`)."""
    options = option_map(parser)
    action = options.get(f"--{key}")
    if action is None:
        names = sorted({option[2:] for option in options if option.startswith("--")})
        close = difflib.get_close_matches(key, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see python -m eval.eval_run --help"
        raise LaunchError(f"{key!r} is not a run flag{hint}")
    if isinstance(action, argparse.BooleanOptionalAction) and f"--{key}" not in _positive_options(action):
        # `no-X: true` would otherwise resolve to X's action and turn X on: the opposite of its words.
        positive = _positive_options(action)[0][2:]
        raise LaunchError(f"{key!r} is not a key: on/off flags are set by their name, e.g. {positive}: false "
                          f"(--sweep {positive}=false)")
    if action.dest in RESERVED_KEYS:
        raise LaunchError(f"{key} cannot be set per experiment: {RESERVED_KEYS[action.dest]}")
    if action.dest == "exp_name":
        raise LaunchError("exp_name cannot be swept: give each entry of --experiments its own exp_name, or let "
                          "the launcher name the runs")
    return action


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS + FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise LaunchError(f"{key} is an on/off flag: give true or false, not {value!r}")


def value_text(key: str, value: Any) -> str:
    """The command-line text of an override value (lists become comma-separated, like '4,8')."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        if not value:
            raise LaunchError(f"{key}: an empty list is not a value; leave the key out to keep the default")
        return ",".join(value_text(key, item) for item in value)
    if isinstance(value, (str, int, float)):
        return str(value)
    raise LaunchError(f"{key}: {value!r} is a {type(value).__name__}; give a string, number, true/false or a list")


# Integral floats below this are named like ints (3.0 -> "3"); above, repr's exponent is shorter.
_INTEGRAL_NAME_LIMIT = 1e16


def number_text(number: int | float) -> str:
    """One spelling per number: ints and integral floats as ints ("3"), others as Python's
    shortest repr ("0.001" for 1e-3, "1e-05" for 0.00001)."""
    if isinstance(number, float) and number.is_integer() and abs(number) < _INTEGRAL_NAME_LIMIT:
        return str(int(number))
    return str(number) if isinstance(number, int) else repr(number)


def name_text(parser: argparse.ArgumentParser, key: str, value: Any) -> str:
    """The text of an override value in a run name: what the run reads, in one spelling. A number
    flag's value as the number it parses to (`1e-3`, `0.001` and JSON's 1e-3 are all `0.001`), an
    on/off flag's as true/false; other values as written (value_text)."""
    action = resolve_key(parser, key)
    if action.nargs == 0:
        return "true" if _as_bool(key, value) else "false"
    text = value_text(key, value)
    if action.type is None:
        return text
    try:
        parsed = action.type(text)
    except (ValueError, TypeError, argparse.ArgumentTypeError):  # the run's parser names the bad value
        return text
    if isinstance(parsed, bool) or not isinstance(parsed, (int, float)):
        return text
    return number_text(parsed)


def _positive_options(action: argparse.Action) -> list[str]:
    """A BooleanOptionalAction's option strings that turn it on (not its `--no-` ones)."""
    return [o for o in action.option_strings if not o.startswith("--no-")]


def _boolean_tokens(parser: argparse.ArgumentParser, key: str, action: argparse.Action, on: bool) -> list[str]:
    if isinstance(action, argparse.BooleanOptionalAction):
        positive = _positive_options(action)[0]
        negative = next(o for o in action.option_strings if o.startswith("--no-"))
        return [positive if on else negative]
    # store_true / store_false: the value the destination should end up with, and a flag that sets it.
    wanted = action.const if on else not action.const
    for candidate in flag_actions(parser):
        if candidate.dest == action.dest and candidate.nargs == 0 and candidate.const == wanted:
            return [candidate.option_strings[0]]
    if parser.get_default(action.dest) == wanted:
        return []
    raise LaunchError(f"{key}={'true' if on else 'false'} cannot be expressed with the run's flags")


def override_tokens(parser: argparse.ArgumentParser, key: str, value: Any) -> tuple[str, list[str]]:
    """(destination, tokens) that set run flag `key` to `value`; `None` keeps the run's default."""
    action = resolve_key(parser, key)
    if value is None:
        return action.dest, []
    if action.nargs == 0:
        return action.dest, _boolean_tokens(parser, key, action, _as_bool(key, value))
    if isinstance(value, bool):
        raise LaunchError(f"{key} takes a value, not {str(value).lower()}")
    text = value_text(key, value)
    # `--flag=-0.5` keeps a leading dash from being read as another option.
    return action.dest, [f"--{key}={text}"] if text.startswith("-") else [f"--{key}", text]


def apply_overrides(parser: argparse.ArgumentParser, base: Sequence[FlagSegment],
                    overrides: Sequence[tuple[str, Any]]) -> list[str]:
    """The base argv with every overridden flag replaced by its override (appended in order)."""
    replaced: dict[str, list[str]] = {}
    for key, value in overrides:
        dest, tokens = override_tokens(parser, key, value)
        if dest in replaced:
            raise LaunchError(f"{key} is set twice for one experiment (as a sweep and in --experiments, or "
                              "under two names); set it in one place")
        replaced[dest] = tokens
    argv = [token for segment in base if segment.dest not in replaced for token in segment.tokens]
    for tokens in replaced.values():
        argv.extend(tokens)
    return argv
