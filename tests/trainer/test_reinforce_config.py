import pytest

from trainer.quality import batch_quality
from trainer.reinforce_config import ReinforceConfig, RewardMetric

import torch


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(cost_target=0), r"cost_target must be a positive number \(MiB or GBOPs\), got 0"),
        (dict(cost_target=-1.5), "got -1.5"),
        (dict(cost_target=float("nan")), "got nan"),
        (dict(cost_target=1, cost_function="hard_exponential", cost_beta=0.5, reward_metric="accuracy"),
         r"cost_beta=0.5 with hard_exponential would reward larger models.*use a negative value such as -0.5"),
        (dict(cost_target=1, cost_beta=-1.0),
         r"cost_beta=-1.0 with tunas_abs would reward missing the target.*positive value such as 1.0"),
        (dict(cost_target=1, cost_function="soft_exponential", cost_beta=-0.1),
         r"favour larger losses. Use reward_metric 'likelihood' \(exp\(-loss\)\) or 'accuracy'$"),
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
