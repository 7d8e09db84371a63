"""The search policy: one independent categorical distribution per decision.

A decision is a layer, a block of layers, or the whole model; an option is one numeric format of
the search space. The policy holds one learnable logit per (decision, option), starting at zero
(uniform), and is trained by REINFORCE (`policy.reinforce`). After the search, `argmax()` is the
answer.

Where the work happens, and why on CPU: the policy has D x K parameters (tens to hundreds), and
every sampled index must reach Python anyway to set `weight_format`/`act_format` on the layers,
so drawing on an accelerator would only add a device sync per step. Sampling draws its noise
from a CPU `torch.Generator` passed in by the caller; seeding that generator identically on
every DDP rank makes every rank pick the same formats without any communication. The log-prob
and entropy are computed on the logits' device so that they stay differentiable wherever the
caller keeps the policy.

Sampling uses the Gumbel-max trick, argmax(log p + Gumbel noise), with noise of fixed shape
(D, K): the generator advances by the same amount whatever the probabilities are (so ranks stay
in lockstep even if their policies were to differ by rounding), and a disallowed option (log p =
-inf) can never win.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import nn


def _is_int_at_least_one(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and value >= 1


def _is_finite_positive(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return math.isfinite(float(value)) and value > 0


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors field-wise is ambiguous
class PolicySample:
    """One draw of a format per decision, with what REINFORCE needs to learn from it.

    indices:  LongTensor (D,) on CPU, the chosen option per decision.
    log_prob: scalar, sum over decisions of log p(indices[d]) under the current policy;
              differentiable w.r.t. the logits.
    entropy:  scalar, sum over decisions of that decision's entropy (nats) under the current
              policy; differentiable w.r.t. the logits.
    """

    indices: torch.Tensor
    decision_log_probs: torch.Tensor
    log_prob: torch.Tensor
    entropy: torch.Tensor


@dataclass(frozen=True, eq=False)
class ScoreGradients:
    """(D, K) float64 gradients w.r.t. a policy's logits: of each decision's log-probability of
    its sampled option (row d: d log p_d(k_d) / d logits[d], zero in the other rows) and of the
    entropy. A REINFORCE loss is linear in them (`policy.reinforce.reinforce_gradient`)."""

    log_prob: torch.Tensor
    entropy: torch.Tensor


class SimplePolicy(nn.Module):
    """Independent softmax(logits / temperature) per decision, optionally masked.

    Args:
        num_decisions: D, the number of independent choices (>= 1).
        num_options: K, the number of formats in the search space (>= 1).
        temperature: divides the logits before the softmax (> 0); it is a constant, not learned.
        mask: optional bool tensor (D, K); True marks an option allowed for that decision. Every
            row needs at least one True. Disallowed options get probability exactly 0 and are
            never sampled. The mask is a buffer, so it travels with `state_dict()`.
    """

    def __init__(
        self,
        num_decisions: int,
        num_options: int,
        temperature: float = 1.0,
        mask: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if not _is_int_at_least_one(num_decisions):
            raise ValueError(
                f"num_decisions={num_decisions!r} must be an int >= 1 (one per layer, block or "
                "the whole model)"
            )
        if not _is_int_at_least_one(num_options):
            raise ValueError(
                f"num_options={num_options!r} must be an int >= 1 (one per format in the search "
                "space)"
            )
        if not _is_finite_positive(temperature):
            raise ValueError(
                f"temperature={temperature!r} must be a finite number > 0 (1.0 is the plain "
                "softmax)"
            )
        self.num_decisions = int(num_decisions)
        self.num_options = int(num_options)
        self.temperature = float(temperature)
        self.logits = nn.Parameter(torch.zeros(self.num_decisions, self.num_options))
        mask = self._validated_mask(mask, self.num_decisions, self.num_options)
        self.register_buffer("mask", mask)

    @staticmethod
    def _validated_mask(
        mask: torch.Tensor | None, num_decisions: int, num_options: int
    ) -> torch.Tensor:
        if mask is None:
            return torch.ones(num_decisions, num_options, dtype=torch.bool)
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = f"dtype {mask.dtype}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(
                f"mask must be a bool torch.Tensor of shape ({num_decisions}, {num_options}), got "
                f"{got}; build it with dtype=torch.bool (True = option allowed)"
            )
        if tuple(mask.shape) != (num_decisions, num_options):
            raise ValueError(
                f"mask has shape {tuple(mask.shape)} but the policy has (num_decisions, "
                f"num_options) = ({num_decisions}, {num_options})"
            )
        empty_rows = (~mask.any(dim=1)).nonzero().flatten().tolist()
        if empty_rows:
            raise ValueError(
                f"mask allows no option for decision(s) {empty_rows}; every decision needs at "
                "least one True (allowed) option"
            )
        return mask.detach().clone().cpu()

    def extra_repr(self) -> str:
        return (
            f"num_decisions={self.num_decisions}, num_options={self.num_options}, "
            f"temperature={self.temperature}, masked_options={int((~self.mask).sum())}"
        )

    # -- distribution -----------------------------------------------------------------------

    def _masked_scaled_logits(self) -> torch.Tensor:
        # -inf makes softmax return exactly 0 for a disallowed option.
        mask = self.mask.to(self.logits.device)
        return (self.logits / self.temperature).masked_fill(~mask, float("-inf"))

    def log_probabilities(self) -> torch.Tensor:
        """(D, K) log-probabilities; -inf for disallowed options."""
        return torch.log_softmax(self._masked_scaled_logits(), dim=-1)

    def forward(self) -> torch.Tensor:
        """(D, K) probabilities, rows summing to 1, disallowed options exactly 0."""
        return torch.softmax(self._masked_scaled_logits(), dim=-1)

    def entropy_per_decision(self) -> torch.Tensor:
        """(D,) entropy of each decision in nats, differentiable w.r.t. the logits."""
        return self._entropy_per_decision(self.log_probabilities())

    def _entropy_per_decision(self, log_probs: torch.Tensor) -> torch.Tensor:
        mask = self.mask.to(log_probs.device)
        # 0 * log 0 = 0. Filling the -inf entries before the product (instead of masking the
        # product) keeps NaN out of the backward pass: masked_fill passes no gradient there.
        safe_log_probs = log_probs.masked_fill(~mask, 0.0)
        return -(log_probs.exp() * safe_log_probs).sum(dim=-1)

    def entropy(self) -> torch.Tensor:
        """Scalar: sum over decisions of each decision's entropy (nats)."""
        return self.entropy_per_decision().sum()

    def log_prob(self, indices: torch.Tensor) -> torch.Tensor:
        """Scalar: sum over decisions of log p(indices[d]); differentiable w.r.t. the logits."""
        return self._log_prob(self.log_probabilities(), self._validated_indices(indices))

    @staticmethod
    def _log_prob(log_probs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return SimplePolicy._decision_log_probs(log_probs, indices).sum()

    @staticmethod
    def _decision_log_probs(log_probs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return log_probs.gather(1, indices.to(log_probs.device).unsqueeze(1)).squeeze(1)  # (D,)

    def score_gradients(self, indices: torch.Tensor, *, check: bool = True) -> ScoreGradients:
        """The gradients w.r.t. `logits` that a REINFORCE step on `indices` combines, in closed
        form and float64, without autograd (policy/reinforce.py: the loss is linear in them).

        Row d of each depends on decision d's logits only (the decisions are independent):
            d log p_d(k_d) / d logits[d, j] = (1[j = k_d] - p_dj) / T
            d H_d / d logits[d, j]          = -p_dj (log p_dj + H_d) / T
        Disallowed options get 0 in both (their logits do not reach the distribution).
        check=False skips the check of `indices` (a quarter of the work), for indices this policy
        drew itself: the search's call, every step."""
        indices = (self._validated_indices(indices) if check else indices).cpu()
        mask = self.mask.cpu()
        # In float64 from the logits on: more accurate than autograd through the float32 softmax.
        scaled = (self.logits.detach().cpu().double() / self.temperature).masked_fill(~mask, float("-inf"))
        log_probs = torch.log_softmax(scaled, dim=-1)  # (D, K), -inf where disallowed
        probs = log_probs.exp()  # exactly 0 where disallowed
        safe_log_probs = log_probs.masked_fill(~mask, 0.0)
        entropy = -(probs * safe_log_probs).sum(dim=1, keepdim=True)  # (D, 1)
        chosen = torch.zeros_like(probs).scatter_(1, indices.unsqueeze(1), 1.0)  # (D, K) one-hot
        return ScoreGradients(log_prob=(chosen - probs) / self.temperature,
                              entropy=(-probs * (safe_log_probs + entropy)).masked_fill_(~mask, 0.0) / self.temperature)

    def argmax(self) -> torch.LongTensor:
        """(D,) most likely allowed option per decision, on CPU (ties: the lowest index)."""
        return self._masked_scaled_logits().detach().argmax(dim=-1).cpu()

    # -- sampling -----------------------------------------------------------------------------

    def sample(self, generator: torch.Generator) -> PolicySample:
        """Draw one option per decision from the policy (deterministic given `generator`)."""
        log_probs = self.log_probabilities()
        return self._sample(log_probs, log_probs.detach().cpu().double(), generator)

    def sample_uniform(self, generator: torch.Generator) -> PolicySample:
        """Draw uniformly over each decision's allowed options (warm-up steps).

        The log-prob and entropy are still those of the current policy, so a caller that trains
        on these samples gets the policy's gradient for them.
        """
        scores = torch.zeros(self.num_decisions, self.num_options, dtype=torch.float64)
        scores = scores.masked_fill(~self.mask.cpu(), float("-inf"))
        return self._sample(self.log_probabilities(), scores, generator)

    def sample_warmup(self, generator: torch.Generator, preferred: torch.Tensor,
                      preferred_probability: float) -> PolicySample:
        """Like `sample_uniform`, but decision d takes option `preferred[d]` with probability
        `preferred_probability` (and otherwise a uniformly drawn allowed option)."""
        if not 0.0 <= preferred_probability <= 1.0:
            raise ValueError(f"preferred_probability={preferred_probability!r} must be in [0, 1]")
        preferred = self._validated_indices(preferred).cpu()
        allowed = self.mask.cpu().double()
        mixture = (1.0 - preferred_probability) * allowed / allowed.sum(dim=1, keepdim=True)
        mixture[torch.arange(self.num_decisions), preferred] += preferred_probability
        return self._sample(self.log_probabilities(), mixture.log(), generator)

    def _sample(
        self, log_probs: torch.Tensor, scores: torch.Tensor, generator: torch.Generator
    ) -> PolicySample:
        """Gumbel-max over `scores` (CPU, float64); log-prob and entropy from `log_probs`."""
        if not isinstance(generator, torch.Generator):
            raise ValueError(
                f"generator must be a torch.Generator, got {type(generator).__name__}; pass "
                "torch.Generator().manual_seed(seed) (the same seed on every rank)"
            )
        if generator.device.type != "cpu":
            raise ValueError(
                f"generator is on {generator.device}, but the policy samples on CPU; pass "
                "torch.Generator(device='cpu').manual_seed(seed)"
            )
        uniform = torch.rand(scores.shape, generator=generator, dtype=torch.float64)
        # Clamp away 0 so that the Gumbel noise is finite: an allowed option can always win.
        uniform = uniform.clamp_min(torch.finfo(torch.float64).tiny)
        gumbel = -torch.log(-torch.log(uniform))
        indices = (scores + gumbel).argmax(dim=-1)
        decision_log_probs = self._decision_log_probs(log_probs, indices)
        return PolicySample(
            indices=indices,
            decision_log_probs=decision_log_probs,
            log_prob=decision_log_probs.sum(),
            entropy=self._entropy_per_decision(log_probs).sum(),
        )

    def _validated_indices(self, indices: torch.Tensor) -> torch.Tensor:
        if not isinstance(indices, torch.Tensor) or indices.dtype != torch.long:
            is_tensor = isinstance(indices, torch.Tensor)
            got = f"dtype {indices.dtype}" if is_tensor else type(indices).__name__
            raise ValueError(
                f"indices must be a LongTensor (torch.long) of shape ({self.num_decisions},), got "
                f"{got}"
            )
        if tuple(indices.shape) != (self.num_decisions,):
            raise ValueError(
                f"indices has shape {tuple(indices.shape)}; expected ({self.num_decisions},), "
                "one option index per decision"
            )
        cpu_indices = indices.detach().cpu()
        out_of_range = ((cpu_indices < 0) | (cpu_indices >= self.num_options)).nonzero().flatten()
        if out_of_range.numel():
            decision = int(out_of_range[0])
            raise ValueError(
                f"indices[{decision}]={int(cpu_indices[decision])} is out of range; valid "
                f"options are 0..{self.num_options - 1}"
            )
        allowed = self.mask.cpu().gather(1, cpu_indices.unsqueeze(1)).squeeze(1)
        disallowed = (~allowed).nonzero().flatten()
        if disallowed.numel():
            decision = int(disallowed[0])
            raise ValueError(
                f"indices[{decision}]={int(cpu_indices[decision])} is masked out for decision "
                f"{decision} (probability 0); choose one of "
                f"{self.mask[decision].nonzero().flatten().tolist()}"
            )
        return indices
