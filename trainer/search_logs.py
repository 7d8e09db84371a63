"""The search's metrics in the Trainer's logs.

Every optimizer step records its cost, reward, advantage, ... (trainer/policy_update.py); a
training log (and the summary at the end of training) carries them under `search/`, each the
mean over the steps since the previous log (counts: their sum), with the policy's probabilities
under `search/p/<decision>/<format>`. They reach TensorBoard and trainer_state.json only through
Trainer.log: nothing here writes anywhere.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Mapping

import torch

from policy.simple_policy import SimplePolicy
from trainer.search_space import SearchSpace

LOG_PREFIX = "search/"
PROBABILITY_LOG_PREFIX = f"{LOG_PREFIX}p/"
# Logged as their sum over the steps since the previous log (a count); every other search log is
# the mean over those steps.
SUMMED_LOGS = frozenset({"non_finite_steps"})


def is_training_log(logs: Mapping[str, float]) -> bool:
    """A training log, or the summary at the end of training (which takes the steps since the
    last training log); not an evaluation's."""
    return "loss" in logs or "train_loss" in logs


class SearchMetrics:
    """Per-step values since the last log, by name (in the order first recorded)."""

    def __init__(self) -> None:
        self._values: dict[str, list[float]] = defaultdict(list)

    def add(self, name: str, value: float) -> None:
        self._values[name].append(value)

    def __bool__(self) -> bool:
        return bool(self._values)

    def drain(self) -> dict[str, float]:
        """`search/<name>`: the mean (a count: the sum) of each metric's values; forgets them."""
        values, self._values = self._values, defaultdict(list)
        return {LOG_PREFIX + name: sum(v) if name in SUMMED_LOGS else sum(v) / len(v) for name, v in values.items()}


def probability_logs(policy: SimplePolicy, space: SearchSpace) -> dict[str, float]:
    """`search/p/<decision>/<format>`: the policy's probability of each option of each decision."""
    with torch.no_grad():
        probs = policy().cpu()
    names = space.option_names
    return {f"{PROBABILITY_LOG_PREFIX}{decision}/{names[k]}": float(probs[d, k])
            for d, decision in enumerate(space.decision_names) for k in range(len(names))}
