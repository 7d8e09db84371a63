"""REINFORCE for the search policy: the loss and the moving-average reward baseline.

The policy loss for one sampled configuration is

    loss = -advantage * log_prob + entropy_beta * entropy
         (= -sum_d advantage_d * log p_d(k_d) + entropy_beta * entropy with one advantage per
          decision d, when the caller gives each decision its own baseline)

where `advantage = reward - baseline` and `log_prob`, `entropy` come from a `PolicySample`.
Minimising `-advantage * log_prob` raises the probability of configurations that did better
than the baseline (the score-function estimator of d E[reward] / d logits).

Sign convention of `entropy_beta`: the loss is minimised, so a POSITIVE `entropy_beta`
PENALISES entropy and pushes every decision towards one option. FLIQS raises this term over the
search (see `trainer.entropy_schedule`) so that the argmax read out at the end is a confident
choice, not a near-tie. A NEGATIVE `entropy_beta` rewards entropy (an exploration bonus).

The baseline is an exponential moving average of past rewards, as in TuNAS. The advantage of a
step uses the baseline from before that step's reward is folded in, so the baseline never
depends on the sample it judges.
"""
from __future__ import annotations

from typing import Any

import torch

from cost.cost import finite_float
from policy.simple_policy import PolicySample, ScoreGradients


def reinforce_loss(sample: PolicySample, advantage: float | torch.Tensor, entropy_beta: float) -> torch.Tensor:
    """`-sum_d advantage_d * log p_d(sample_d) + entropy_beta * sample.entropy` (scalar tensor).

    `advantage` is one float shared by every decision (plain REINFORCE: `-A * log_prob`), or a
    (D,) tensor with one advantage per decision (a per-decision baseline, see the trainer).
    A positive `entropy_beta` penalises entropy (drives convergence); a negative one rewards it.
    """
    entropy_beta = finite_float("entropy_beta", entropy_beta)
    if isinstance(advantage, torch.Tensor):
        advantage = advantage.detach().to(sample.decision_log_probs)
        if advantage.shape != sample.decision_log_probs.shape:
            raise ValueError(f"per-decision advantages have shape {tuple(advantage.shape)}; expected "
                             f"{tuple(sample.decision_log_probs.shape)} (one per decision)")
        if not bool(torch.isfinite(advantage).all()):
            raise ValueError("per-decision advantages must be finite; check the reward's quality and cost for NaN")
        return -(advantage * sample.decision_log_probs).sum() + entropy_beta * sample.entropy
    advantage = finite_float("advantage", advantage)
    return -advantage * sample.log_prob + entropy_beta * sample.entropy


def reinforce_gradient(gradients: ScoreGradients, advantage: float | torch.Tensor, entropy_beta: float) -> torch.Tensor:
    """The gradient of `reinforce_loss` w.r.t. the policy's logits, (D, K) float64, from the
    sample's `ScoreGradients`: `-advantage_d * gradients.log_prob + entropy_beta * gradients.entropy`.

    The same gradient as autograd through the loss (up to rounding), but the score gradients do
    not need the reward: a caller can compute them while the reward is still on its way (the
    trainer does, while the device finishes the backward pass) and only combine them after.
    """
    entropy_beta = finite_float("entropy_beta", entropy_beta)
    num_decisions = gradients.log_prob.shape[0]
    if isinstance(advantage, torch.Tensor):
        advantage = advantage.detach().to(dtype=torch.float64, device=gradients.log_prob.device)
        if advantage.shape != (num_decisions,):
            raise ValueError(f"per-decision advantages have shape {tuple(advantage.shape)}; expected "
                             f"({num_decisions},) (one per decision)")
        if not bool(torch.isfinite(advantage).all()):
            raise ValueError("per-decision advantages must be finite; check the reward's quality and cost for NaN")
        scaled = gradients.log_prob * advantage.neg().unsqueeze(1)  # (D, K) * (D, 1)
    else:
        scaled = gradients.log_prob * -finite_float("advantage", advantage)
    return scaled.add_(gradients.entropy, alpha=entropy_beta)


class EmaBaseline:
    """Exponential moving average of rewards: `value <- decay * value + (1 - decay) * reward`.

    The first reward initialises the value (and gets advantage 0), so the baseline does not
    start biased towards an arbitrary constant such as 0.

    Args:
        decay: weight of the old value, in [0, 1). Larger is smoother; 0 makes the baseline
            the previous reward.
    """

    def __init__(self, decay: float = 0.9) -> None:
        decay = finite_float("decay", decay)
        if not 0.0 <= decay < 1.0:
            raise ValueError(
                f"decay={decay!r} must be in [0, 1) (e.g. 0.9); it is the weight of the old "
                "baseline in the moving average"
            )
        self.decay = decay
        self.value: float | None = None  # None until the first reward
        self.num_updates = 0

    def update(self, reward: float) -> float:
        """Fold in `reward` and return its advantage, `reward - baseline before this update`."""
        reward = finite_float("reward", reward)
        if self.value is None:
            advantage = 0.0
            self.value = reward
        else:
            advantage = reward - self.value
            self.value = self.decay * self.value + (1.0 - self.decay) * reward
        self.num_updates += 1
        return advantage

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "value": self.value, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        expected = {"decay", "value", "num_updates"}
        if set(state) != expected:
            raise ValueError(
                f"EmaBaseline state has keys {sorted(state)}; expected {sorted(expected)} (as "
                "written by EmaBaseline.state_dict())"
            )
        if float(state["decay"]) != self.decay:
            raise ValueError(
                f"checkpoint baseline has decay={state['decay']!r} but this one has "
                f"decay={self.decay!r}; construct EmaBaseline(decay={state['decay']!r}) to resume"
            )
        value = state["value"]
        num_updates = int(state["num_updates"])
        if (value is None) != (num_updates == 0):
            raise ValueError(
                f"inconsistent EmaBaseline state: value={value!r} with num_updates={num_updates}; "
                "the value is None exactly when no reward has been seen"
            )
        self.value = None if value is None else finite_float("value", value)
        self.num_updates = num_updates

    def __repr__(self) -> str:
        return (
            f"EmaBaseline(decay={self.decay}, value={self.value}, num_updates={self.num_updates})"
        )
