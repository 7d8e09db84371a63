import pytest

from trainer.quality import batch_quality
from trainer.reinforce_config import (ReinforceConfig, RewardMetric, default_cost_beta, default_delay_steps,
                                      default_reward_metric, default_rl_learning_rate)

import torch


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(cost_target=0), r"cost_target must be a positive number \(MiB or GBOPs\), got 0"),
        (dict(cost_target=-1.5), "got -1.5"),
        (dict(cost_target=float("nan")), "got nan"),
        (dict(cost_target=1, cost_function="hard_exponential", cost_beta=0.5, reward_metric="accuracy"),
         r"^cost_beta=0.5 with hard_exponential would reward larger models: the reward is quality \* ratio\*\*beta; "
         r"use a negative value such as -0.5, or leave cost_beta unset for hard_exponential's default, -0.07$"),
        (dict(cost_target=1, cost_beta=-1.0),
         r"^cost_beta=-1.0 with tunas_abs would reward missing the target: the reward is quality - beta\*\|1 - ratio\|; "
         r"use a positive value such as 1.0, or leave cost_beta unset for tunas_abs's default, 5.0$"),
        (dict(cost_target=1, cost_function="soft_exponential", cost_beta=-0.1, reward_metric="loss"),
         r"favour larger losses. Use reward_metric 'likelihood' \(exp\(-loss\); the default for this cost_function "
         r"when reward_metric is left unset\) or 'accuracy'$"),
        (dict(cost_target=1, cost_function=None), r"^unknown cost_function None; valid: \['tunas_abs'"),
        (dict(cost_target=1, cost_function="nope"), r"unknown cost_function 'nope'; valid: \['tunas_abs'"),
        (dict(cost_target=1, cost_type="latency"), r"unknown cost_type 'latency'; valid: memory, compute$"),
        (dict(cost_target=1, entropy_schedule="step"), r"unknown entropy_schedule 'step'"),
        (dict(cost_target=1, reward_source="eval"), r"unknown reward_source 'eval'; valid: train, heldout$"),
        (dict(cost_target=1, reward_metric="f1"), r"unknown reward_metric 'f1'"),
        (dict(cost_target=1, advantage="local"), r"unknown advantage 'local'; valid: global, per_decision$"),
        (dict(cost_target=1, rl_learning_rate=0), "rl_learning_rate must be > 0"),
        (dict(cost_target=1, delay_steps=-1), "delay_steps must be >= 0"),
        (dict(cost_target=1, baseline_decay=1.0), r"baseline_decay must be in \[0, 1\)"),
        (dict(cost_target=1, policy_temperature=0), "policy_temperature must be > 0"),
        (dict(cost_target=1, cost_beta=float("nan")), "cost_beta must be a finite number, got nan"),
        (dict(cost_target=1, rl_learning_rate=float("inf")), "rl_learning_rate must be a finite number, got inf"),
        (dict(cost_target=1, cost_beta="5"), "cost_beta must be a finite number, got '5'"),
        (dict(cost_target=True), "cost_target must be a finite number, got True"),
        (dict(cost_target=1, delay_steps=2.5), "delay_steps must be an integer, got 2.5"),
        (dict(cost_target=1, policy_seed="abc"), "policy_seed must be an integer, got 'abc'"),
        (dict(cost_target=1, precision_warmup="no"), "precision_warmup must be True or False, got 'no'"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ReinforceConfig(**kwargs)


def test_valid_exponential_config():
    config = ReinforceConfig(cost_target=2.0, cost_function="soft_exponential", cost_beta=-0.07,
                             reward_metric="likelihood", cost_type="compute")
    assert config.reward_metric is RewardMetric.LIKELIHOOD and config.cost_type.value == "compute"


def test_batch_quality_values():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    labels = torch.tensor([0, 0, 0])
    ce = torch.nn.functional.cross_entropy(logits, labels)
    assert batch_quality(logits, labels, RewardMetric.LOSS).item() == -ce.item()
    assert batch_quality(logits, labels, RewardMetric.LIKELIHOOD).item() == pytest.approx(torch.exp(-ce).item(), rel=1e-7)
    assert batch_quality(logits, labels, RewardMetric.ACCURACY).item() == pytest.approx(2 / 3)
    regression = torch.tensor([[1.0], [3.0]])
    assert batch_quality(regression, torch.tensor([2.0, 2.0]), RewardMetric.LOSS).item() == -1.0
    with pytest.raises(ValueError, match="needs a classification task"):
        batch_quality(regression, torch.tensor([2.0, 2.0]), RewardMetric.ACCURACY)


def test_search_settings_are_plain_values():
    config = ReinforceConfig(cost_target=2.0, cost_function="soft_exponential", cost_beta=-0.07,
                             reward_metric="likelihood", cost_type="compute", final_selection="argmax")
    assert config.search_settings() == {
        "cost_target": 2.0, "cost_type": "compute", "cost_function": "soft_exponential", "cost_beta": -0.07,
        "rl_learning_rate": 0.05, "delay_steps": 0, "precision_warmup": True, "max_entropy_beta": 0.0,
        "entropy_schedule": "linear", "baseline_decay": 0.9, "advantage": "per_decision",
        "reward_metric": "likelihood", "reward_source": "train", "policy_temperature": 1.0, "policy_seed": 0,
    }
    assert all(type(v) in (str, float, int, bool) for v in config.search_settings().values())


def test_numpy_numbers_are_plain_numbers():
    import numpy as np

    config = ReinforceConfig(cost_target=np.float32(5.0), delay_steps=np.int64(3), cost_beta=np.float64(2.0))
    assert (config.cost_target, config.delay_steps, config.cost_beta) == (5.0, 3, 2.0)
    assert type(config.cost_target) is float and type(config.delay_steps) is int


def test_enum_settings_are_case_insensitive_and_stored_canonical():
    # "Linear" was refused although the CLI's parse_entropy_schedule takes any case.
    from cost.model_cost import CostType
    from trainer.entropy_schedule import EntropySchedule
    from trainer.reinforce_config import AdvantageMode, RewardSource

    config = ReinforceConfig(cost_target=1, entropy_schedule="Linear", cost_type=" MEMORY", reward_metric="Accuracy",
                             reward_source="HeldOut", advantage="Global", final_selection="ArgMax")
    assert config.entropy_schedule is EntropySchedule.LINEAR and config.cost_type is CostType.MEMORY
    assert config.reward_metric is RewardMetric.ACCURACY and config.reward_source is RewardSource.HELDOUT
    assert config.advantage is AdvantageMode.GLOBAL and config.final_selection.value == "argmax"
    assert config.search_settings()["entropy_schedule"] == "linear"
    with pytest.raises(ValueError, match=r"^unknown entropy_schedule 3; valid: linear, cosine, constant, heaviside$"):
        ReinforceConfig(cost_target=1, entropy_schedule=3)


@pytest.mark.parametrize("cost_function, beta, metric", [
    ("tunas_abs", 5.0, RewardMetric.LOSS), ("one_sided_tunas_abs", 5.0, RewardMetric.LOSS),
    ("soft_exponential", -0.07, RewardMetric.LIKELIHOOD), ("hard_exponential", -0.07, RewardMetric.LIKELIHOOD),
])
def test_cost_beta_and_reward_metric_default_as_in_the_cli(cost_function, beta, metric):
    """Left unset, they follow cost_function as the CLI's flags do (one rule: default_cost_beta /
    default_reward_metric): an exponential form needs no other setting to be valid."""
    config = ReinforceConfig(cost_target=1.0, cost_function=cost_function)
    assert (config.cost_beta, config.reward_metric) == (beta, metric)
    assert (default_cost_beta(cost_function), default_reward_metric(cost_function)) == (beta, metric)
    assert config.search_settings()["cost_beta"] == beta  # checkpoints record the derived value
    assert config.search_settings()["reward_metric"] == metric.value


def test_given_cost_beta_and_reward_metric_are_kept():
    config = ReinforceConfig(cost_target=1.0, cost_function="soft_exponential", cost_beta=-1.0, reward_metric="accuracy")
    assert (config.cost_beta, config.reward_metric) == (-1.0, RewardMetric.ACCURACY)
    config = ReinforceConfig(cost_target=1.0, cost_beta=1.0)  # the API's default before it followed the CLI's
    assert (config.cost_beta, config.reward_metric) == (1.0, RewardMetric.LOSS)


def test_run_length_defaults_are_the_clis_rule():
    """delay_steps / rl_learning_rate stay 0 / 0.05 in the config (it does not know the run's
    length); the CLI's rule for a run's length is offered as functions."""
    config = ReinforceConfig(cost_target=1.0)
    assert (config.delay_steps, config.rl_learning_rate) == (0, 0.05)
    assert default_delay_steps(400) == 200 and default_delay_steps(7) == 4  # round half to even: 3.5 -> 4
    assert default_rl_learning_rate(400, 200) == 0.05
    assert default_rl_learning_rate(40, 20) == 0.1  # 10 / 20 = 0.5, capped
    assert default_rl_learning_rate(10, 10) == 0.1  # no search step: capped, no division by zero
