"""Entropy-regularisation schedules: how strongly the policy is pushed to converge at each step.

The value returned is the `entropy_beta` of `policy.reinforce.reinforce_loss`, where a positive
value penalises entropy. It is 0 during the delay (`step < delay_steps`, pure exploration), then
rises from 0 to `max_entropy_beta` with the progress

    p = clamp((step - delay_steps) / max(1, total_steps - delay_steps), 0, 1)

following one of these shapes (each multiplied by `max_entropy_beta`):

    linear     p
    cosine     (1 - cos(pi * p)) / 2          (slow start, slow finish)
    constant   1                              (full strength right after the delay)
    heaviside  0 if p < 0.5 else 1            (explore for the first half, then force convergence)

If `total_steps <= delay_steps` the ramp is one step long: p = 0 at `delay_steps` and 1 after.
"""
from __future__ import annotations

import math
import numbers
from enum import Enum

from trainer.setting_names import parse_setting


class EntropySchedule(str, Enum):
    LINEAR = "linear"
    COSINE = "cosine"
    CONSTANT = "constant"
    HEAVISIDE = "heaviside"


def parse_entropy_schedule(name: str | EntropySchedule) -> EntropySchedule:
    """`EntropySchedule` from its name (case-insensitive); ValueError listing valid names."""
    return parse_setting(EntropySchedule, name, "entropy schedule")


def _shape(schedule: EntropySchedule, progress: float) -> float:
    if schedule is EntropySchedule.LINEAR:
        return progress
    if schedule is EntropySchedule.COSINE:
        return (1.0 - math.cos(math.pi * progress)) / 2.0
    if schedule is EntropySchedule.CONSTANT:
        return 1.0
    if schedule is EntropySchedule.HEAVISIDE:
        return 0.0 if progress < 0.5 else 1.0
    raise AssertionError(f"unhandled entropy schedule {schedule!r}")


def _non_negative_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name}={value!r} must be an int >= 0")
    return int(value)


def entropy_beta(
    step: int,
    *,
    schedule: str | EntropySchedule,
    delay_steps: int,
    total_steps: int,
    max_entropy_beta: float,
) -> float:
    """The entropy coefficient at `step` (0-based global step); see the module docstring."""
    schedule = parse_entropy_schedule(schedule)
    step = _non_negative_int("step", step)
    delay_steps = _non_negative_int("delay_steps", delay_steps)
    total_steps = _non_negative_int("total_steps", total_steps)
    max_entropy_beta = float(max_entropy_beta)
    if not math.isfinite(max_entropy_beta):
        raise ValueError(
            f"max_entropy_beta={max_entropy_beta!r} must be finite (positive pushes the policy "
            "to converge, negative rewards exploration, 0 disables the term)"
        )
    if step < delay_steps:
        return 0.0
    progress = (step - delay_steps) / max(1, total_steps - delay_steps)
    progress = min(1.0, max(0.0, progress))
    return max_entropy_beta * _shape(schedule, progress)
