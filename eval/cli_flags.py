"""Command lines as the project's CLIs read them: an argv split into flag occurrences, every flag
given once, and the program named as the user typed it.

argparse lets a repeated flag's last value win (`--seed 0 ... --seed 1` runs seed 1). Commands
are composed from copied snippets and sweep scripts, so a repeat is almost always a mistake that
silently changes the experiment: `OnceArgumentParser` refuses it, with argparse's own matching
(exact name, `--name=value`, unique prefixes where the parser allows abbreviations). Flags meant
to repeat (`action="append"`, `"extend"`, `"count"`) keep doing so. The launcher splits its run
flags with the same `split_argv` (eval/launch_flags.py), so both agree on what a flag is.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from dataclasses import dataclass
from typing import Sequence

# argparse's own test for a negative number (a value, not an option, in a parser without
# options that look like negative numbers: none of the project's has one).
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")
# Actions whose repetition is their meaning (a list, a count).
_REPEATABLE = (argparse._AppendAction, argparse._AppendConstAction, argparse._CountAction)  # noqa: SLF001


@dataclass(frozen=True)
class FlagSegment:
    """The tokens of one flag occurrence in an argv (`dest` None: no flag of the parser, i.e. a
    positional, a token after `--`, or one argparse will reject)."""

    dest: str | None
    tokens: tuple[str, ...]


@dataclass(frozen=True)
class _Occurrence:
    """One flag as written: the action it selects, the option string it names (the full one,
    also for an abbreviation) and its tokens (the flag, then its values)."""

    action: argparse.Action | None
    option: str | None
    tokens: tuple[str, ...]

    @property
    def typed(self) -> str:
        """The flag as written (an abbreviation stays one), without a `=value`."""
        return self.tokens[0].split("=", 1)[0]

    @property
    def values(self) -> tuple[str, ...]:
        if "=" in self.tokens[0]:
            return (self.tokens[0].split("=", 1)[1],)
        return self.tokens[1:]


def flag_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The flags of `parser` but --help."""
    # argparse has no public accessor for its actions; `_actions` has been stable since Python 2.7.
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]  # noqa: SLF001


def option_map(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every option string of `parser` (but --help) -> its action."""
    return {option: action for action in flag_actions(parser) for option in action.option_strings}


def _match_option(options: dict[str, argparse.Action], token: str,
                  allow_abbrev: bool) -> tuple[str, argparse.Action] | None:
    """(option string, action) `token` selects, with argparse's rules (exact name, `--name=value`,
    unique prefix where abbreviations are allowed); None for a value or an unknown flag."""
    if token in options:
        return token, options[token]
    if not token.startswith("--") or token == "--":
        return None
    name = token.split("=", 1)[0]
    if name in options:
        return name, options[name]
    if not allow_abbrev:
        return None
    matches = {id(action): (option, action) for option, action in options.items() if option.startswith(name)}
    return next(iter(matches.values())) if len(matches) == 1 else None


def _looks_like_flag(options: dict[str, argparse.Action], token: str, allow_abbrev: bool) -> bool:
    """argparse's test of whether `token` is an option (not a value the flag before it takes)."""
    if not token.startswith("-") or token == "-":
        return False
    if token == "--" or _match_option(options, token, allow_abbrev) is not None:
        return True
    return not _NEGATIVE_NUMBER.match(token) and " " not in token


def _value_count(action: argparse.Action, available: int) -> int:
    """How many of the `available` value-like tokens after `action`'s flag argparse gives it."""
    nargs = action.nargs
    if nargs is None:
        return min(1, available)
    if isinstance(nargs, int):
        return min(nargs, available)
    if nargs == argparse.OPTIONAL:
        return min(1, available)
    return available  # "*", "+", REMAINDER: as many as there are


def _occurrences(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[_Occurrence]:
    """`argv` split into flags with their values; other tokens (positionals, unknown flags, all
    after `--`) are occurrences without an action, one token each."""
    options = option_map(parser)
    allow_abbrev = parser.allow_abbrev
    found: list[_Occurrence] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            found.extend(_Occurrence(None, None, (rest,)) for rest in argv[i:])
            break
        match = _match_option(options, token, allow_abbrev)
        if match is None:
            found.append(_Occurrence(None, None, (token,)))
            i += 1
            continue
        option, action = match
        available = 0
        if action.nargs != 0 and "=" not in token:
            while i + 1 + available < len(argv) and not _looks_like_flag(options, argv[i + 1 + available],
                                                                          allow_abbrev):
                available += 1
        count = _value_count(action, available)
        found.append(_Occurrence(action, option, tuple(argv[i:i + 1 + count])))
        i += 1 + count
    return found


def split_argv(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[FlagSegment]:
    """Split `argv` into flag occurrences; unknown tokens are kept (dest None) for the parser to
    reject with its own message."""
    return [FlagSegment(None if o.action is None else o.action.dest, o.tokens) for o in _occurrences(parser, argv)]


def _needs_value(action: argparse.Action) -> bool:
    return action.nargs is None or action.nargs == argparse.ONE_OR_MORE or (
        isinstance(action.nargs, int) and action.nargs > 0)


def _times(n: int) -> str:
    return "twice" if n == 2 else f"{n} times"


def _listed(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _polarity(action: argparse.Action, option: str) -> bool:
    """A BooleanOptionalAction's option string: True for --X, False for --no-X."""
    return not (isinstance(action, argparse.BooleanOptionalAction) and option.startswith("--no-"))


def _describe(action: argparse.Action, found: Sequence[_Occurrence]) -> str:
    """The error line for one flag given more than once (`found`: its occurrences, in order)."""
    polarities = [_polarity(action, o.option) for o in found]
    if len(set(polarities)) > 1:  # --X and --no-X: a contradiction, not a repeat
        on = next(option for option in action.option_strings if _polarity(action, option))
        off = next(option for option in action.option_strings if not _polarity(action, option))
        first, second = (on, off) if polarities[0] else (off, on)
        return f"{first} and {second} both given: give one of them"
    spellings = {o.typed for o in found}
    if len(spellings) == 1 and all(len(o.values) <= 1 for o in found):
        name = found[0].option
        values = [shlex.quote(o.values[0]) for o in found if o.values]
        shown = f" ({_listed(values)})" if values else ""
    else:  # an alias or abbreviation, or several values per flag: each occurrence as written
        name = next(option for option in action.option_strings if _polarity(action, option) == polarities[0])
        shown = f" ({_listed([shlex.join(o.tokens) for o in found])})"
    return f"{name} given {_times(len(found))}{shown}: give it once"


def repeated_flag_error(parser: argparse.ArgumentParser, argv: Sequence[str]) -> str | None:
    """The error line for the first flag of `parser` that `argv` gives more than once, or None.

    Flags meant to repeat (append, count), --help, and occurrences argparse will reject anyway (a
    flag missing its value) are not counted; unknown tokens are left to the parser too.
    """
    seen: dict[int, list[_Occurrence]] = {}
    repeated: list[int] = []
    for occurrence in _occurrences(parser, argv):
        action = occurrence.action
        if action is None or isinstance(action, _REPEATABLE) or action.dest == argparse.SUPPRESS:
            continue
        if _needs_value(action) and not occurrence.values:
            continue
        seen.setdefault(id(action), []).append(occurrence)
        if len(seen[id(action)]) == 2:
            repeated.append(id(action))
    if not repeated:
        return None
    found = seen[repeated[0]]
    return _describe(found[0].action, found)


class OnceArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser that refuses a flag given more than once (argparse keeps the last one)
    with `parser.error`, so each CLI reports it in its own error style, exit status 2."""

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        argv = list(sys.argv[1:] if args is None else args)
        message = repeated_flag_error(self, argv)
        if message is not None:
            self.error(message)
        return super().parse_known_args(argv, namespace)


def program_name(default: str, script: str, modules: Sequence[str] = ()) -> str:
    """The command as the user typed it, to start error lines with: the console script `script`
    when run as it (`fliqs-export`), `python -m MODULE` when run with -m as one of `modules`, else
    `default` (also in-process, e.g. under pytest)."""
    typed = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    typed = re.sub(r"(-script\.pyw?|\.exe)$", "", typed)  # Windows' console-script launchers
    if typed == script:
        return script
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name in modules:
        return f"python -m {spec.name}"
    return default
