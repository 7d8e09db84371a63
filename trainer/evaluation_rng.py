"""Evaluation that leaves the training's random stream where it was.

The evaluation's DataLoader draws its base seed from the global CPU RNG when it starts. During
training (`--eval_steps`) that moved the dropout masks of every later step, so turning periodic
evaluation on changed the trained model: of a search and of a uniform baseline alike, which the
report compares as one setting (eval_steps does not change results). The evaluation runs under
`torch.random.fork_rng` on the CPU generator; CUDA's dropout generator is not drawn from.
"""
from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer


class RngPreservingEvaluation:
    """Mixin for a Trainer: evaluate() and predict() leave the CPU RNG as they found it."""

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        with torch.random.fork_rng(devices=[]):
            return super().evaluate(*args, **kwargs)  # type: ignore[misc]

    def predict(self, *args: Any, **kwargs: Any):
        with torch.random.fork_rng(devices=[]):
            return super().predict(*args, **kwargs)  # type: ignore[misc]


class BaselineTrainer(RngPreservingEvaluation, Trainer):
    """The Trainer of fixed-format and float runs (the searches' is ReinforceTrainer)."""
