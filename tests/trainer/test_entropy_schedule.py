"""Entropy schedules: exact values at chosen steps, delay boundaries, degenerate horizons."""
import math

import pytest

from trainer.entropy_schedule import EntropySchedule, entropy_beta, parse_entropy_schedule

# delay 10, total 110: progress p = (step - 10) / 100; max_entropy_beta = 2.
COMMON = {"delay_steps": 10, "total_steps": 110, "max_entropy_beta": 2.0}

# Values at STEPS = 0, 9, 10 (delay boundary), 35 (p=0.25), 60 (p=0.5), 59 (p=0.49), 110 (p=1), 500.
EXPECTED = {
    "linear": [0.0, 0.0, 0.0, 0.5, 1.0, 0.98, 2.0, 2.0],
    "cosine": [0.0, 0.0, 0.0, 1.0 - math.sqrt(0.5), 1.0, 1.0 - math.cos(math.pi * 0.49), 2.0, 2.0],
    "constant": [0.0, 0.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0],
    "heaviside": [0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 2.0, 2.0],
}
STEPS = [0, 9, 10, 35, 60, 59, 110, 500]


@pytest.mark.parametrize("schedule", list(EntropySchedule))
def test_schedule_values_at_chosen_steps(schedule):
    values = [entropy_beta(step, schedule=schedule, **COMMON) for step in STEPS]
    assert values == pytest.approx(EXPECTED[schedule.value], abs=1e-12)


def test_schedule_accepts_its_name_as_a_string():
    assert entropy_beta(35, schedule="linear", **COMMON) == 0.5
    assert entropy_beta(35, schedule="Cosine", **COMMON) == pytest.approx(1.0 - math.sqrt(0.5), abs=1e-12)


@pytest.mark.parametrize("schedule", list(EntropySchedule))
def test_zero_throughout_the_delay(schedule):
    assert all(entropy_beta(step, schedule=schedule, **COMMON) == 0.0 for step in range(10))


def test_no_delay_starts_the_ramp_at_step_zero():
    kwargs = {"delay_steps": 0, "total_steps": 4, "max_entropy_beta": 1.0}
    assert [entropy_beta(s, schedule="linear", **kwargs) for s in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert [entropy_beta(s, schedule="heaviside", **kwargs) for s in range(5)] == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert entropy_beta(0, schedule="constant", **kwargs) == 1.0


@pytest.mark.parametrize("total_steps", [10, 5, 0])
def test_total_steps_not_after_delay_gives_a_one_step_ramp(total_steps):
    kwargs = {"delay_steps": 10, "total_steps": total_steps, "max_entropy_beta": 3.0}
    assert [entropy_beta(s, schedule="linear", **kwargs) for s in (9, 10, 11, 50)] == [0.0, 0.0, 3.0, 3.0]
    assert [entropy_beta(s, schedule="cosine", **kwargs) for s in (9, 10, 11)] == [0.0, 0.0, 3.0]
    assert [entropy_beta(s, schedule="constant", **kwargs) for s in (9, 10, 11)] == [0.0, 3.0, 3.0]
    assert [entropy_beta(s, schedule="heaviside", **kwargs) for s in (9, 10, 11)] == [0.0, 0.0, 3.0]


def test_negative_max_entropy_beta_scales_the_shape():
    assert entropy_beta(35, schedule="linear", delay_steps=10, total_steps=110, max_entropy_beta=-0.4) == pytest.approx(-0.1, abs=1e-12)


def test_parse_entropy_schedule():
    assert parse_entropy_schedule("linear") is EntropySchedule.LINEAR
    assert parse_entropy_schedule(" HeaviSide ") is EntropySchedule.HEAVISIDE
    assert parse_entropy_schedule(EntropySchedule.COSINE) is EntropySchedule.COSINE
    assert EntropySchedule.CONSTANT == "constant"
    with pytest.raises(ValueError, match=r"unknown entropy schedule 'exp'; valid: linear, cosine, constant, heaviside"):
        parse_entropy_schedule("exp")
    with pytest.raises(ValueError, match=r"unknown entropy schedule None; valid: linear"):
        parse_entropy_schedule(None)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"step": -1}, r"step=-1 must be an int >= 0"),
        ({"step": 1.5}, r"step=1.5 must be an int >= 0"),
        ({"delay_steps": -2}, r"delay_steps=-2 must be an int >= 0"),
        ({"total_steps": -1}, r"total_steps=-1 must be an int >= 0"),
        ({"max_entropy_beta": float("nan")}, r"max_entropy_beta=nan must be finite"),
        ({"schedule": "step"}, r"unknown entropy schedule 'step'"),
    ],
)
def test_invalid_arguments_raise_clear_errors(kwargs, match):
    arguments = {"step": 5, "schedule": "linear", "delay_steps": 1, "total_steps": 10, "max_entropy_beta": 1.0}
    arguments.update(kwargs)
    step = arguments.pop("step")
    with pytest.raises(ValueError, match=match):
        entropy_beta(step, **arguments)
