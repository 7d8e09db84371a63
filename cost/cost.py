"""Reward functions: combine a quality signal with a cost (memory or BOPs) against a target.

Every function has the signature `(cost, cost_beta, cost_target, quality) -> float` and uses the
cost ratio r = cost / cost_target:

    tunas_abs            quality - beta * |1 - r|           (TuNAS absolute reward)
    one_sided_tunas_abs  quality - beta * |1 - max(1, r)|   (only exceeding the target costs)
    soft_exponential     quality * r ** beta                (MnasNet soft constraint)
    hard_exponential     quality * max(1, r) ** beta        (MnasNet hard constraint)

Sign of `cost_beta`: in the two absolute (additive) forms a POSITIVE beta penalises missing the
target; in the two exponential (multiplicative) forms a NEGATIVE beta penalises cost, as in
MnasNet (e.g. beta = -0.07). Positive beta in an exponential form rewards cost.

The multiplicative forms assume a non-negative quality (e.g. accuracy, or exp(-loss)): with a
negative quality a larger multiplier makes the reward worse, inverting the trade-off.

These are pure functions: they never log. `compute_reward` returns the reward together with its
intermediates (ratio, penalty or multiplier) for the caller to log.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Literal, Union

import torch

RewardFunction = Callable[[float, float, float, float], float]


@dataclass(frozen=True)
class RewardBreakdown:
    """A reward and how it was made. Exactly one of `penalty` / `multiplier` is set.

    penalty:    the amount subtracted from quality (additive forms).
    multiplier: the factor quality is multiplied by (exponential forms).
    """

    name: str
    reward: float
    quality: float
    cost: float
    cost_target: float
    cost_beta: float
    cost_ratio: float
    penalty: float | None = None
    multiplier: float | None = None

    def to_log_dict(self) -> dict[str, float]:
        """The numeric fields that are set, for a logger (e.g. Trainer.log)."""
        return {
            key: value
            for key, value in asdict(self).items()
            if key != "name" and value is not None
        }


def finite_float(name: str, value: float) -> float:
    """`value` as a float; ValueError naming `name` if it is not a real, finite number."""
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} must be a real number") from None
    if not math.isfinite(as_float):
        raise ValueError(
            f"{name}={value!r} must be finite; check the metric or cost that produced it for "
            "NaN/inf (e.g. a diverged loss)"
        )
    return as_float


def _validated_inputs(
    cost: float, cost_beta: float, cost_target: float, quality: float
) -> tuple[float, float, float, float]:
    cost = finite_float("cost", cost)
    cost_beta = finite_float("cost_beta", cost_beta)
    cost_target = finite_float("cost_target", cost_target)
    quality = finite_float("quality", quality)
    if cost_target <= 0:
        raise ValueError(
            f"cost_target={cost_target!r} must be > 0 (in the unit of the cost: MiB for memory, "
            "GBOPs for compute)"
        )
    if cost < 0:
        raise ValueError(
            f"cost={cost!r} must be >= 0; a model cost (MiB or GBOPs) is never negative"
        )
    return cost, cost_beta, cost_target, quality


# -- cost terms as functions of (ratio, beta) ----------------------------------------------------


# Each works on a float or, element-wise, on a tensor of ratios (see `rewards_for_costs`).
Ratio = Union[float, torch.Tensor]


def _at_least_one(cost_ratio: Ratio) -> Ratio:
    return cost_ratio.clamp(min=1.0) if isinstance(cost_ratio, torch.Tensor) else max(1.0, cost_ratio)


def _abs_penalty(cost_ratio: Ratio, cost_beta: float) -> Ratio:
    return cost_beta * abs(1.0 - cost_ratio)


def _one_sided_abs_penalty(cost_ratio: Ratio, cost_beta: float) -> Ratio:
    return cost_beta * abs(1.0 - _at_least_one(cost_ratio))


def _soft_exponential_multiplier(cost_ratio: Ratio, cost_beta: float) -> Ratio:
    # (A tensor of ratios is checked by rewards_for_costs, which callers may skip per step.)
    if not isinstance(cost_ratio, torch.Tensor) and cost_ratio == 0.0 and cost_beta < 0:
        raise ValueError(
            f"soft_exponential with cost=0 and cost_beta={cost_beta!r} < 0 gives an infinite "
            "reward (0 ** negative); use a positive cost or hard_exponential"
        )
    return cost_ratio**cost_beta


def _hard_exponential_multiplier(cost_ratio: Ratio, cost_beta: float) -> Ratio:
    return _at_least_one(cost_ratio) ** cost_beta


@dataclass(frozen=True)
class RewardForm:
    """One reward function: `quality - term` ("subtract") or `quality * term` ("multiply"),
    with term = cost_term(cost / cost_target, cost_beta).

    penalises_below_target: whether a model cheaper than the target loses reward. Only then is
    the final selection's cost band two-sided (trainer.final_selection.is_one_sided); a form
    that does not penalise it (or rewards it) only bounds the cost from above.
    """

    formula: str  # the reward, for the docstring of its function
    meaning: str  # what it does with the cost, likewise
    combine: Literal["subtract", "multiply"]
    cost_term: Callable[[Ratio, float], Ratio]
    penalises_below_target: bool

    @property
    def exponential(self) -> bool:
        """A multiplicative (MnasNet) form: its beta is negative to penalise cost."""
        return self.combine == "multiply"


# The one registry of reward functions: add a form here and every part of the search, the CLI
# (--cost_function) and the final selection know it.
REWARD_FORMS: dict[str, RewardForm] = {
    "tunas_abs": RewardForm("quality - cost_beta * |1 - cost / cost_target|", "any miss of the target costs",
                            "subtract", _abs_penalty, penalises_below_target=True),
    "one_sided_tunas_abs": RewardForm("quality - cost_beta * |1 - max(1, cost / cost_target)|",
                                      "only exceeding the target costs",
                                      "subtract", _one_sided_abs_penalty, penalises_below_target=False),
    "soft_exponential": RewardForm("quality * (cost / cost_target) ** cost_beta", "a negative beta penalises cost",
                                   "multiply", _soft_exponential_multiplier, penalises_below_target=False),
    "hard_exponential": RewardForm("quality * max(1, cost / cost_target) ** cost_beta",
                                   "a negative beta penalises overshoot",
                                   "multiply", _hard_exponential_multiplier, penalises_below_target=False),
}


def get_reward_form(name: str) -> RewardForm:
    """The registered form `name`; ValueError listing the valid names otherwise."""
    if name not in REWARD_FORMS:
        raise ValueError(f"unknown reward function {name!r}; valid names: {', '.join(REWARD_FORMS)}")
    return REWARD_FORMS[name]


def compute_reward(
    name: str, cost: float, cost_beta: float, cost_target: float, quality: float
) -> RewardBreakdown:
    """The reward of reward function `name`, with its intermediates for logging."""
    form = get_reward_form(name)
    cost, cost_beta, cost_target, quality = _validated_inputs(cost, cost_beta, cost_target, quality)
    cost_ratio = cost / cost_target
    term = form.cost_term(cost_ratio, cost_beta)
    common = dict(
        name=name,
        quality=quality,
        cost=cost,
        cost_target=cost_target,
        cost_beta=cost_beta,
        cost_ratio=cost_ratio,
    )
    if form.combine == "subtract":
        return RewardBreakdown(reward=quality - term, penalty=term, **common)
    return RewardBreakdown(reward=quality * term, multiplier=term, **common)


def rewards_for_costs(name: str, costs: torch.Tensor, cost_beta: float, cost_target: float,
                      quality: float, *, check: bool = True) -> torch.Tensor:
    """The reward of every cost in `costs` at one quality, element-wise (the search uses it to
    price the alternatives of each decision). Same formulas and checks as `compute_reward`
    (the checks read `costs`: keep it on the CPU, as the search does, or they wait for its device).
    check=False skips them, for inputs already checked (the search's cost table and config:
    this runs every step)."""
    form = get_reward_form(name)
    if check:
        if not isinstance(costs, torch.Tensor):
            raise ValueError(f"costs must be a tensor of model costs, got {type(costs).__name__}")
        bad = ~torch.isfinite(costs) | (costs < 0)
        if form.cost_term is _soft_exponential_multiplier and cost_beta < 0:
            bad |= costs == 0  # 0 ** negative: an infinite reward
        first_bad = costs[bad][0].item() if bool(bad.any()) else 0.0
        # Raises for the first bad cost, and for a bad beta, target or quality, as compute_reward does.
        _, cost_beta, cost_target, quality = _validated_inputs(first_bad, cost_beta, cost_target, quality)
        if first_bad == 0.0 and bool(bad.any()):  # only a zero cost was bad: soft_exponential's rule
            _soft_exponential_multiplier(0.0, cost_beta)
    term = form.cost_term(costs / cost_target, cost_beta)
    return quality - term if form.combine == "subtract" else quality * term


def _reward_function(name: str) -> RewardFunction:
    def reward(cost: float, cost_beta: float, cost_target: float, quality: float) -> float:
        return compute_reward(name, cost, cost_beta, cost_target, quality).reward

    reward.__name__ = reward.__qualname__ = name
    form = REWARD_FORMS[name]
    reward.__doc__ = f"`{form.formula}`: {form.meaning}."
    return reward


# Each form as a plain function `(cost, cost_beta, cost_target, quality) -> reward`.
REWARD_FUNCTIONS: dict[str, RewardFunction] = {name: _reward_function(name) for name in REWARD_FORMS}
tunas_abs = REWARD_FUNCTIONS["tunas_abs"]
one_sided_tunas_abs = REWARD_FUNCTIONS["one_sided_tunas_abs"]
soft_exponential = REWARD_FUNCTIONS["soft_exponential"]
hard_exponential = REWARD_FUNCTIONS["hard_exponential"]


def get_reward_function(name: str) -> RewardFunction:
    """The reward function registered as `name`; ValueError listing valid names otherwise."""
    get_reward_form(name)
    # A form registered after import has no entry yet: its function is made on demand.
    return REWARD_FUNCTIONS[name] if name in REWARD_FUNCTIONS else _reward_function(name)
