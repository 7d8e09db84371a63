"""The policy's side of a search step: the reward, each decision's advantage, one REINFORCE step.

Once per optimizer step, after the cycle's quality is known:

    reward     = cost function(cost of the sample, target, quality)
    advantages = reward - baseline, per decision (`AdvantageMode`)
    logits    -= Adam step on  -sum_d advantage_d * log p_d(k_d) + entropy_beta * entropy

What needs no reward (the cost, the per-decision baselines at the running mean quality, the
score gradients, the entropy coefficient) is computed first, as a `PolicyUpdatePlan`: on a GPU
the host does that while the device finishes the backward pass, before the reward's read waits.

The numbers are pure functions of the policy, the cost table and the settings
(`expected_rewards`); `PolicyUpdates` updates the state they read (baseline, worst reward,
Adam) and records what a step did in the search's metrics, which reach the Trainer's log.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from cost.cost import compute_reward, rewards_for_costs
from policy.reinforce import EmaBaseline, reinforce_gradient, reinforce_loss
from policy.simple_policy import PolicySample, ScoreGradients, SimplePolicy
from trainer.entropy_schedule import entropy_beta
from trainer.reinforce_config import AdvantageMode, ReinforceConfig
from trainer.search_logs import SearchMetrics
from trainer.search_space import DecisionCostTable, SearchSpace


@dataclass(frozen=True)
class PolicyUpdatePlan:
    """What a step's policy update needs besides its reward, computed before the reward is read."""

    cost: float  # of the sample
    # (D,) expected reward of each decision's options at the running mean quality (the per-decision
    # baselines); None with --advantage global, or before any quality was seen.
    expected_rewards: torch.Tensor | None
    entropy_beta: float | None  # None during the delay (no policy step)
    gradients: ScoreGradients | None  # likewise


def expected_rewards(policy: SimplePolicy, cost_table: DecisionCostTable, config: ReinforceConfig,
                     sample: PolicySample, cost: float, mean_quality: float) -> torch.Tensor:
    """(D,) expected reward of each decision switched over its options (the others as sampled),
    at `mean_quality`: decision d's baseline, which does not depend on d's own choice."""
    table = cost_table.table  # (D, K)
    own = table.gather(1, sample.indices.view(-1, 1))  # (D, 1)
    alternative_costs = cost - own + table  # (D, K): decision d switched to option k
    # Unchecked: the table and config were checked when the trainer was built, and costs of
    # table entries (>= 0, finite) stay so; this runs every step.
    alternative_rewards = rewards_for_costs(config.cost_function, alternative_costs, config.cost_beta,
                                            config.cost_target, mean_quality, check=False)
    with torch.no_grad():
        probs = policy().double().cpu()
    return (probs * alternative_rewards).sum(dim=1)


class PolicyUpdates:
    """The policy update of ReinforceTrainer (a mixin: the trainer owns the state it reads and
    updates, and logs `_search_metrics` through Trainer.log)."""

    reinforce_config: ReinforceConfig
    search_space: SearchSpace
    cost_table: DecisionCostTable
    policy: SimplePolicy
    policy_optimizer: torch.optim.Optimizer
    baseline: EmaBaseline
    worst_reward: float | None
    state: Any  # transformers.TrainerState: max_steps sets the entropy schedule's length
    _search_metrics: SearchMetrics

    def _plan_policy_update(self, sample: PolicySample, step: int, searching: bool) -> PolicyUpdatePlan:
        """The parts of the policy update that do not depend on the step's reward."""
        config = self.reinforce_config
        cost = self.cost_table.cost(sample.indices)
        expected = None
        if config.advantage is AdvantageMode.PER_DECISION and self.baseline.value is not None:
            expected = self._expected_rewards(sample, cost, self.baseline.value)
        if not searching:
            return PolicyUpdatePlan(cost, expected, None, None)
        beta = entropy_beta(step, schedule=config.entropy_schedule, delay_steps=config.delay_steps,
                            total_steps=self.state.max_steps, max_entropy_beta=config.max_entropy_beta)
        # Unchecked: the indices were drawn from this policy (sample, sample_uniform, sample_warmup).
        return PolicyUpdatePlan(cost, expected, beta, self.policy.score_gradients(sample.indices, check=False))

    def _update_policy(self, sample: PolicySample, quality: float | None, step: int, searching: bool,
                       plan: PolicyUpdatePlan | None = None) -> None:
        """The step's reward, advantages and REINFORCE step; `plan` as `_plan_policy_update` made it
        for this sample (computed here if not given). `quality` None: the step was dropped (not finite)."""
        config = self.reinforce_config
        if plan is None:
            plan = self._plan_policy_update(sample, step, searching)
        cost = plan.cost
        record = self._search_metrics.add
        record("cost", cost)
        record("cost_ratio", cost / config.cost_target)
        record("non_finite_steps", 0.0 if quality is not None else 1.0)
        if quality is not None:
            reward = compute_reward(config.cost_function, cost, config.cost_beta, config.cost_target, quality).reward
            self.worst_reward = reward if self.worst_reward is None else min(self.worst_reward, reward)
            record("quality", quality)
        else:
            reward = self.worst_reward  # None before any finite step: nothing to learn from yet
        if reward is None:
            return
        advantages = self._advantages(sample, plan, reward, quality)
        record("reward", reward)
        record("advantage", float(advantages.mean()))
        # The EMA follows the reward with --advantage global, and the quality with per_decision
        # (whose baselines are the expected rewards at that quality): named for what it holds.
        record("baseline_ema" if config.advantage is AdvantageMode.GLOBAL else "quality_ema", float(self.baseline.value))
        if not searching:
            return
        assert plan.gradients is not None and plan.entropy_beta is not None  # planned as searching
        beta = plan.entropy_beta
        # The loss's gradient from the planned score gradients (no autograd after the reward);
        # the loss itself only for the log.
        logits = self.policy.logits
        logits.grad = reinforce_gradient(plan.gradients, advantages, beta).to(logits.dtype)
        self.policy_optimizer.step()
        with torch.no_grad():
            policy_loss = reinforce_loss(sample, advantages, beta)
        record("policy_loss", float(policy_loss))
        record("entropy", float(sample.entropy.detach()))
        record("entropy_beta", beta)

    def _advantages(self, sample: PolicySample, plan: PolicyUpdatePlan, reward: float,
                    quality: float | None) -> torch.Tensor:
        """(D,) advantage of each decision; updates the EMA baseline."""
        config = self.reinforce_config
        num_decisions = self.search_space.num_decisions
        if config.advantage is AdvantageMode.GLOBAL:
            return torch.full((num_decisions,), self.baseline.update(reward), dtype=torch.float64)
        # Baseline of decision d: the expected reward over d's own options, the other decisions
        # kept as sampled, at the running mean quality (the first quality itself, before any). It
        # does not depend on d's own choice, so the estimator stays unbiased.
        expected = plan.expected_rewards
        if expected is None and quality is not None:  # no mean quality when planned: the first one
            expected = self._expected_rewards(sample, plan.cost, quality)
        if quality is not None:
            self.baseline.update(quality)
        if expected is None:  # a non-finite first step: nothing to compare with yet
            return torch.zeros(num_decisions, dtype=torch.float64)
        return reward - expected

    def _expected_rewards(self, sample: PolicySample, cost: float, mean_quality: float) -> torch.Tensor:
        """(D,) expected reward of each decision switched over its options (the others as sampled)."""
        return expected_rewards(self.policy, self.cost_table, self.reinforce_config, sample, cost, mean_quality)
