"""Search settings named by strings (granularity, entropy schedule, reward metric, ...): the enum
member a name stands for, in any case, so that a config, the CLI and a resumed run's record all
read "Linear", "linear" and EntropySchedule.LINEAR as one setting."""
from __future__ import annotations

from enum import Enum
from typing import TypeVar

E = TypeVar("E", bound=Enum)


def parse_setting(enum_cls: type[E], value: object, what: str) -> E:
    """The member of `enum_cls` whose value is `value` (any case, surrounding spaces ignored), or
    `value` itself if it is one; ValueError naming `what` and listing the valid names."""
    if isinstance(value, enum_cls):
        return value
    if isinstance(value, str):
        wanted = value.strip().lower()
        for member in enum_cls:
            if member.value == wanted:
                return member
    raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(member.value for member in enum_cls)}")
