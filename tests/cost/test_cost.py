"""Reward functions against hand-computed values; breakdown, registry and input errors."""
import math

import pytest
import torch

from cost.cost import (
    REWARD_FORMS,
    REWARD_FUNCTIONS,
    RewardBreakdown,
    RewardForm,
    compute_reward,
    get_reward_function,
    hard_exponential,
    one_sided_tunas_abs,
    rewards_for_costs,
    soft_exponential,
    tunas_abs,
)
from trainer.final_selection import is_one_sided

# (function, (cost, beta, target, quality), reward) -- every reward worked out by hand.
HAND_COMPUTED = [
    (tunas_abs, (15, 1, 5, 0.8), -1.2),  # r=3: 0.8 - 1*2
    (tunas_abs, (3, 2, 5, 0.95), 0.15),  # r=0.6: 0.95 - 2*0.4
    (tunas_abs, (5, 3, 5, 0.7), 0.7),  # on target: no penalty
    (tunas_abs, (15, -1, 5, 0.8), 2.8),  # negative beta rewards missing the target
    (one_sided_tunas_abs, (3, 2, 5, 0.95), 0.95),  # under target: free
    (one_sided_tunas_abs, (15, 1, 5, 0.8), -1.2),  # over target: same as tunas_abs
    (one_sided_tunas_abs, (6, 0.5, 4, 0.9), 0.65),  # r=1.5: 0.9 - 0.5*0.5
    (soft_exponential, (10, 1, 5, 0.8), 1.6),  # r=2: 0.8 * 2
    (soft_exponential, (3, 2, 6, 0.9), 0.225),  # r=0.5: 0.9 * 0.25
    (soft_exponential, (10, -1, 5, 0.8), 0.4),  # MnasNet sign: 0.8 * 2**-1
    (soft_exponential, (2, -1, 8, 0.5), 2.0),  # r=0.25: 0.5 * 4 (soft: under target is rewarded)
    (soft_exponential, (0, 1, 5, 0.8), 0.0),  # zero cost, positive beta
    (hard_exponential, (3, 2, 5, 0.95), 0.95),  # under target: free
    (hard_exponential, (10, -0.5, 2.5, 0.9), 0.45),  # r=4: 0.9 * 4**-0.5
    (hard_exponential, (2, -1, 8, 0.5), 0.5),  # under target: free even with negative beta
    (hard_exponential, (0, -1, 5, 0.8), 0.8),  # zero cost is under target
]


@pytest.mark.parametrize(("function", "args", "reward"), HAND_COMPUTED)
def test_reward_functions_match_hand_computed_values(function, args, reward):
    assert function(*args) == pytest.approx(reward, abs=1e-12)
    assert compute_reward(function.__name__, *args).reward == pytest.approx(reward, abs=1e-12)


def test_breakdown_of_additive_form_has_penalty_only():
    breakdown = compute_reward("tunas_abs", cost=15, cost_beta=1, cost_target=5, quality=0.8)
    assert breakdown == RewardBreakdown(
        name="tunas_abs",
        reward=pytest.approx(-1.2, abs=1e-12),
        quality=0.8,
        cost=15.0,
        cost_target=5.0,
        cost_beta=1.0,
        cost_ratio=3.0,
        penalty=2.0,
        multiplier=None,
    )
    assert breakdown.to_log_dict() == {
        "reward": pytest.approx(-1.2, abs=1e-12),
        "quality": 0.8,
        "cost": 15.0,
        "cost_target": 5.0,
        "cost_beta": 1.0,
        "cost_ratio": 3.0,
        "penalty": 2.0,
    }


def test_breakdown_of_multiplicative_form_has_multiplier_only():
    breakdown = compute_reward("soft_exponential", cost=3, cost_beta=2, cost_target=6, quality=0.9)
    assert breakdown.cost_ratio == 0.5
    assert breakdown.multiplier == 0.25
    assert breakdown.penalty is None
    assert "penalty" not in breakdown.to_log_dict()
    assert breakdown.to_log_dict()["multiplier"] == 0.25


def test_registry_holds_the_four_functions_and_get_reward_function_finds_them():
    assert REWARD_FUNCTIONS == {
        "tunas_abs": tunas_abs,
        "one_sided_tunas_abs": one_sided_tunas_abs,
        "soft_exponential": soft_exponential,
        "hard_exponential": hard_exponential,
    }
    for name, function in REWARD_FUNCTIONS.items():
        assert get_reward_function(name) is function
        assert function.__name__ == name


def test_unknown_name_lists_valid_names():
    valid = r"valid names: tunas_abs, one_sided_tunas_abs, soft_exponential, hard_exponential"
    with pytest.raises(ValueError, match=r"unknown reward function 'tunas'; " + valid):
        get_reward_function("tunas")
    with pytest.raises(ValueError, match=r"unknown reward function 'globals'; " + valid):
        compute_reward("globals", 1.0, 1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((1.0, 1.0, 0.0, 0.5), r"cost_target=0.0 must be > 0 \(in the unit of the cost"),
        ((1.0, 1.0, -2.0, 0.5), r"cost_target=-2.0 must be > 0"),
        ((-1.0, 1.0, 5.0, 0.5), r"cost=-1.0 must be >= 0"),
        ((1.0, 1.0, 5.0, float("nan")), r"quality=nan must be finite"),
        ((float("inf"), 1.0, 5.0, 0.5), r"cost=inf must be finite"),
        ((1.0, float("nan"), 5.0, 0.5), r"cost_beta=nan must be finite"),
        ((1.0, 1.0, "five", 0.5), r"cost_target='five' must be a real number"),
    ],
)
@pytest.mark.parametrize("name", sorted(REWARD_FUNCTIONS))
def test_invalid_inputs_raise_clear_errors(name, args, match):
    with pytest.raises(ValueError, match=match):
        get_reward_function(name)(*args)


def test_soft_exponential_rejects_zero_cost_with_negative_beta():
    with pytest.raises(ValueError, match=r"soft_exponential with cost=0 and cost_beta=-0.5 < 0 gives an infinite reward"):
        soft_exponential(0.0, -0.5, 5.0, 0.8)


@pytest.mark.parametrize("name", sorted(REWARD_FORMS))
def test_rewards_for_costs_equals_compute_reward_at_every_cost(name):
    """The search prices each decision's alternatives with the tensor form: it must give the
    scalar form's reward for every cost, below, at and above the target. The additive forms
    agree bit for bit; a float64 tensor's `**` may round an ulp away from Python's (libm's) pow,
    so the multiplicative ones agree within 2 ulp."""
    costs = torch.linspace(0.05, 12.0, 997, dtype=torch.float64)
    exact = not REWARD_FORMS[name].exponential
    for beta in (-0.07, -1.3, 0.5, 2.0):
        priced = rewards_for_costs(name, costs, beta, 3.0, 0.83).tolist()
        for cost, got in zip(costs.tolist(), priced):
            want = compute_reward(name, cost, beta, 3.0, 0.83).reward
            assert got == want if exact else abs(got - want) <= 2 * math.ulp(want), (beta, cost, got, want)


@pytest.mark.parametrize("name", sorted(REWARD_FORMS))
def test_each_form_declares_what_it_does_below_the_target(name):
    """`penalises_below_target` (which makes the final selection's band two-sided) matches the
    rewards: with the beta sign that penalises cost, a cheaper model than the target loses
    reward exactly when it is declared."""
    form = REWARD_FORMS[name]
    beta = -0.5 if form.exponential else 0.5
    cheaper = compute_reward(name, 1.0, beta, 3.0, 0.8).reward
    on_target = compute_reward(name, 3.0, beta, 3.0, 0.8).reward
    assert form.penalises_below_target == (cheaper < on_target)
    assert is_one_sided(name) is not form.penalises_below_target
    assert REWARD_FUNCTIONS[name].__doc__ == f"`{form.formula}`: {form.meaning}."


def test_the_built_in_forms_traits():
    assert [name for name in REWARD_FORMS if not is_one_sided(name)] == ["tunas_abs"]
    assert [name for name, form in REWARD_FORMS.items() if form.exponential] == ["soft_exponential",
                                                                                "hard_exponential"]
    with pytest.raises(ValueError, match=r"unknown reward function 'tunas'; valid names: tunas_abs, "):
        is_one_sided("tunas")


def test_a_form_registered_at_run_time_is_known_everywhere(monkeypatch):
    from trainer.reinforce_config import ReinforceConfig

    form = RewardForm("quality - cost_beta * (1 - cost / cost_target) ** 2", "small misses cost little",
                      "subtract", lambda ratio, beta: beta * (1.0 - ratio) ** 2, penalises_below_target=True)
    monkeypatch.setitem(REWARD_FORMS, "squared_tunas", form)
    assert get_reward_function("squared_tunas")(6.0, 0.5, 3.0, 0.8) == pytest.approx(0.8 - 0.5, abs=1e-15)
    assert not is_one_sided("squared_tunas")
    assert ReinforceConfig(cost_target=1.0, cost_function="squared_tunas").cost_function == "squared_tunas"


@pytest.mark.parametrize(
    ("costs", "args", "match"),
    [
        ([1.0, 2.0], (1.0, 0.0, 0.5), r"cost_target=0.0 must be > 0 \(in the unit of the cost"),
        ([1.0, 2.0], (1.0, 5.0, float("nan")), r"quality=nan must be finite"),
        ([1.0, 2.0], (float("inf"), 5.0, 0.5), r"cost_beta=inf must be finite"),
        ([1.0, -1.0], (1.0, 5.0, 0.5), r"cost=-1.0 must be >= 0; a model cost \(MiB or GBOPs\) is never negative"),
        ([1.0, float("nan")], (1.0, 5.0, 0.5), r"cost=nan must be finite"),
    ],
)
@pytest.mark.parametrize("name", sorted(REWARD_FORMS))
def test_rewards_for_costs_validates_as_compute_reward(name, costs, args, match):
    # It used to price anything: a target of 0 gave NaN rewards, a negative cost a reward.
    with pytest.raises(ValueError, match=match):
        rewards_for_costs(name, torch.tensor(costs, dtype=torch.float64), *args)


def test_rewards_for_costs_rejects_zero_cost_in_soft_exponential_with_negative_beta():
    # It used to return inf for the zero cost.
    message = r"soft_exponential with cost=0 and cost_beta=-0.5 < 0 gives an infinite reward"
    with pytest.raises(ValueError, match=message):
        rewards_for_costs("soft_exponential", torch.tensor([0.0, 1.0], dtype=torch.float64), -0.5, 5.0, 0.8)
    costs = torch.tensor([0.0, 5.0], dtype=torch.float64)
    assert rewards_for_costs("soft_exponential", costs, 0.5, 5.0, 0.8).tolist() == [0.0, 0.8]
    with pytest.raises(ValueError, match=r"^costs must be a tensor of model costs, got list$"):
        rewards_for_costs("tunas_abs", [1.0], 1.0, 5.0, 0.8)
