"""ReinforceConfig: everything the search adds to a normal training run, validated up front."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from enum import Enum
from typing import Any

from cost.cost import REWARD_FORMS
from cost.model_cost import CostType
from trainer.entropy_schedule import EntropySchedule
from trainer.final_selection import FinalSelection
from trainer.setting_names import parse_setting

# The search's state in every checkpoint of a search run (next to the Trainer's own files).
SEARCH_STATE_NAME = "reinforce_state.pt"

# The fields that shape the search itself (its samples, rewards and policy updates): a resumed
# run must keep them, or it would finish as a mix of two searches. Not listed: final_selection
# and target_tolerance, which only read the answer out of the policy at the end.
SEARCH_SETTINGS = (
    "cost_target", "cost_type", "cost_function", "cost_beta", "rl_learning_rate", "delay_steps",
    "precision_warmup", "max_entropy_beta", "entropy_schedule", "baseline_decay", "advantage",
    "reward_metric", "reward_source", "policy_temperature", "policy_seed",
)


def unread_search_settings(settings: dict[str, Any]) -> set[str]:
    """The SEARCH_SETTINGS that a search of these `settings` (search_settings()) never reads, so a
    resume may change them: precision_warmup acts only during a delay (delay_steps > 0), the
    entropy schedule only shapes a non-zero max_entropy_beta. (The CLI's rule for comparing runs,
    eval/run_compare.py SEARCH_SETTING_READERS, follows the same two.)"""
    unread = set()
    if settings.get("delay_steps") == 0:
        unread.add("precision_warmup")
    if settings.get("max_entropy_beta") == 0:
        unread.add("entropy_schedule")
    return unread


# The defaults that depend on other settings, one rule for the Python API and the CLI
# (eval/run_args.py, eval/run_trainer.py build_trainer).
# tunas_abs / one_sided: a 10 % miss of the target costs 0.5 in loss units, more than the loss
# difference between most formats, so searches land near the target (measured on digits).
DEFAULT_COST_BETA = 5.0
# The exponential forms reward quality * ratio**beta: beta < 0 (MnasNet's value).
DEFAULT_EXPONENTIAL_COST_BETA = -0.07
# The CLI's run-length rules (a ReinforceConfig does not know the run's length): the delay is
# this fraction of the steps, and the policy learning rate AUTO_RL_LOGIT_BUDGET / search steps,
# so Adam can move a logit by about that much over the search whatever its length (enough for
# p > 0.9999), capped at MAX_AUTO_RL_LEARNING_RATE.
DEFAULT_DELAY_FRACTION = 0.5
AUTO_RL_LOGIT_BUDGET = 10.0
MAX_AUTO_RL_LEARNING_RATE = 0.1


class RewardMetric(str, Enum):
    """The quality half of the reward, measured on one batch."""

    LOSS = "loss"  # quality = -cross-entropy (or -MSE for regression)
    LIKELIHOOD = "likelihood"  # quality = exp(-loss), in (0, 1]: for the multiplicative rewards
    ACCURACY = "accuracy"  # quality = fraction of the batch classified correctly


def _is_exponential(cost_function: str) -> bool:
    if cost_function not in REWARD_FORMS:
        raise ValueError(f"unknown cost_function {cost_function!r}; valid: {list(REWARD_FORMS)}")
    return REWARD_FORMS[cost_function].exponential


def default_cost_beta(cost_function: str) -> float:
    """cost_beta when none is given: DEFAULT_COST_BETA (5.0) for the additive forms (tunas_abs,
    one_sided_tunas_abs, ...), DEFAULT_EXPONENTIAL_COST_BETA (-0.07) for the exponential ones."""
    return DEFAULT_EXPONENTIAL_COST_BETA if _is_exponential(cost_function) else DEFAULT_COST_BETA


def default_reward_metric(cost_function: str) -> RewardMetric:
    """reward_metric when none is given: 'likelihood' for the exponential forms (they multiply the
    quality by the cost ratio, so it must be non-negative), 'loss' for the others."""
    return RewardMetric.LIKELIHOOD if _is_exponential(cost_function) else RewardMetric.LOSS


def default_delay_steps(total_steps: int) -> int:
    """The CLI's delay_steps for a run of `total_steps` optimizer steps: half of them."""
    return int(round(DEFAULT_DELAY_FRACTION * total_steps))


def default_rl_learning_rate(total_steps: int, delay_steps: int) -> float:
    """The CLI's rl_learning_rate for a run of `total_steps` optimizer steps that searches after
    `delay_steps`: 10 / (total_steps - delay_steps), at most 0.1."""
    return min(MAX_AUTO_RL_LEARNING_RATE, AUTO_RL_LOGIT_BUDGET / max(1, total_steps - delay_steps))


class AdvantageMode(str, Enum):
    """How each decision's advantage is formed (both are unbiased REINFORCE estimators)."""

    # reward - EMA(reward), shared by every decision (TuNAS / the original FLIQS code).
    GLOBAL = "global"
    # reward - E_{k ~ p_d}[reward(cost with decision d at option k, EMA(quality))]: the cost part
    # of each decision's baseline is computed exactly (costs are sums over layers), so one
    # decision is no longer judged by the noise of every other decision's cost.
    PER_DECISION = "per_decision"


class RewardSource(str, Enum):
    """Which batch the quality is measured on."""

    TRAIN = "train"  # the batch just trained on: free (no extra forward pass)
    HELDOUT = "heldout"  # a batch of a split carved out of the training set, forward only


@dataclass
class ReinforceConfig:
    """Settings of the REINFORCE search (the training settings stay in TrainingArguments).

    cost_target: the cost the search aims at, in MiB (memory) or GBOPs (compute).
    cost_beta: strength of the cost term; positive for tunas_abs / one_sided_tunas_abs,
        negative for the exponential forms (as in MnasNet). None (default): derived from
        cost_function as the CLI does (default_cost_beta: 5.0, or -0.07 for the exponential forms).
    rl_learning_rate: the policy's Adam learning rate. Default 0.05; the CLI derives it from the
        run's length instead: 10 / (steps after the delay), at most 0.1 (default_rl_learning_rate).
    delay_steps: warm-up steps with uniformly sampled formats and no policy update, so the
        shared weights learn to work in every format before the policy starts judging them.
        Default 0 (the policy learns from the first step); the CLI's default is half of the
        run's steps (default_delay_steps).
    precision_warmup: during the delay, each decision uses the most precise format of the
        search space (the most bits; of formats with equal bits, the first listed) with a probability falling linearly from 1 to 0 (else a uniform draw), so
        the shared weights learn the task before they must cope with every format (after
        TuNAS's filter warm-up). Matters when the space holds a destructive format such as INT2.
    max_entropy_beta / entropy_schedule: the entropy penalty, 0 during the delay, rising to
        max_entropy_beta (positive values push every decision to converge).
    baseline_decay: EMA decay of the baseline (of the reward for advantage 'global', of the
        quality for 'per_decision').
    advantage: 'per_decision' (default) or 'global'; see AdvantageMode.
    final_selection / target_tolerance: the answer is the per-decision argmax ('argmax'), or the
        most likely assignment within cost_target * (1 +- target_tolerance) ('constrained',
        default; the argmax itself when it is inside); see trainer.final_selection.
    reward_metric: the quality half of the reward (RewardMetric). None (default): derived from
        cost_function as the CLI does (default_reward_metric: 'likelihood' for the exponential
        forms, 'loss' for the others).
    policy_seed: seed of the sampling generator (identical on every DDP rank).

    cost_beta and reward_metric hold the derived values after construction (what checkpoints
    record and resumed runs compare).
    """

    cost_target: float
    cost_type: CostType = CostType.MEMORY
    cost_function: str = "tunas_abs"
    cost_beta: float | None = None  # None: default_cost_beta(cost_function)
    rl_learning_rate: float = 0.05
    delay_steps: int = 0
    precision_warmup: bool = True
    max_entropy_beta: float = 0.0
    entropy_schedule: EntropySchedule = EntropySchedule.LINEAR
    baseline_decay: float = 0.9
    advantage: AdvantageMode = AdvantageMode.PER_DECISION
    final_selection: FinalSelection = FinalSelection.CONSTRAINED
    target_tolerance: float = 0.05
    reward_metric: RewardMetric | str | None = None  # None: default_reward_metric(cost_function)
    reward_source: RewardSource = RewardSource.TRAIN
    policy_temperature: float = 1.0
    policy_seed: int = 0

    def __post_init__(self) -> None:
        # The defaults that follow from cost_function first, so that the checks below only ever
        # judge values the user gave (and name them as given).
        if not isinstance(self.cost_function, str) or self.cost_function not in REWARD_FORMS:
            raise ValueError(f"unknown cost_function {self.cost_function!r}; valid: {list(REWARD_FORMS)}")
        if self.cost_beta is None:
            self.cost_beta = default_cost_beta(self.cost_function)
        if self.reward_metric is None:
            self.reward_metric = default_reward_metric(self.cost_function)
        # Types next: NaN passes every `<` check below, and a string fails them with a TypeError
        # that names nothing.
        for name in ("cost_target", "cost_beta", "rl_learning_rate", "max_entropy_beta", "baseline_decay",
                     "target_tolerance", "policy_temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            setattr(self, name, float(value))  # numpy scalars become plain floats
        for name in ("delay_steps", "policy_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            setattr(self, name, int(value))
        if not isinstance(self.precision_warmup, bool):
            raise ValueError(f"precision_warmup must be True or False, got {self.precision_warmup!r}")
        self.cost_type = parse_setting(CostType, self.cost_type, "cost_type")  # type: ignore[assignment]
        self.entropy_schedule = parse_setting(EntropySchedule, self.entropy_schedule, "entropy_schedule")  # type: ignore[assignment]
        self.reward_metric = parse_setting(RewardMetric, self.reward_metric, "reward_metric")  # type: ignore[assignment]
        self.reward_source = parse_setting(RewardSource, self.reward_source, "reward_source")  # type: ignore[assignment]
        self.advantage = parse_setting(AdvantageMode, self.advantage, "advantage")  # type: ignore[assignment]
        self.final_selection = parse_setting(FinalSelection, self.final_selection, "final_selection")  # type: ignore[assignment]
        if not 0 <= self.target_tolerance < 1:
            raise ValueError(f"target_tolerance must be in [0, 1), got {self.target_tolerance}")
        if not self.cost_target > 0:
            raise ValueError(f"cost_target must be a positive number (MiB or GBOPs), got {self.cost_target!r}")
        exponential = REWARD_FORMS[self.cost_function].exponential
        # Only a cost_beta the user gave can fail these (a derived one fits its form): each
        # message names the form's default too, which leaving cost_beta unset gives.
        default_beta = default_cost_beta(self.cost_function)
        if exponential and self.cost_beta > 0:
            raise ValueError(
                f"cost_beta={self.cost_beta} with {self.cost_function} would reward larger models: the "
                f"reward is quality * ratio**beta; use a negative value such as {-abs(self.cost_beta)}, or leave "
                f"cost_beta unset for {self.cost_function}'s default, {default_beta}"
            )
        if not exponential and self.cost_beta < 0:
            raise ValueError(
                f"cost_beta={self.cost_beta} with {self.cost_function} would reward missing the target: "
                f"the reward is quality - beta*|1 - ratio|; use a positive value such as {abs(self.cost_beta)}, "
                f"or leave cost_beta unset for {self.cost_function}'s default, {default_beta}"
            )
        if exponential and self.reward_metric is RewardMetric.LOSS:
            raise ValueError(
                f"{self.cost_function} multiplies the quality by the cost ratio, which needs a non-negative "
                "quality; with reward_metric 'loss' (quality = -loss) it would favour larger losses. "
                "Use reward_metric 'likelihood' (exp(-loss); the default for this cost_function when "
                "reward_metric is left unset) or 'accuracy'"
            )
        if self.rl_learning_rate <= 0:
            raise ValueError(f"rl_learning_rate must be > 0, got {self.rl_learning_rate}")
        if self.delay_steps < 0:
            raise ValueError(f"delay_steps must be >= 0, got {self.delay_steps}")
        if not 0 <= self.baseline_decay < 1:
            raise ValueError(f"baseline_decay must be in [0, 1), got {self.baseline_decay}")
        if self.policy_temperature <= 0:
            raise ValueError(f"policy_temperature must be > 0, got {self.policy_temperature}")

    def search_settings(self) -> dict[str, Any]:
        """The SEARCH_SETTINGS as plain values (enums by their value), to store in a checkpoint."""
        values = {name: getattr(self, name) for name in SEARCH_SETTINGS}
        return {name: v.value if isinstance(v, Enum) else v for name, v in values.items()}
