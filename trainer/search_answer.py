"""The answer of a search: the formats it picked, on the layers, with statistics to match.

After (and during) the search the answer is the most likely assignment, held to the cost band
(`ReinforceConfig.final_selection`, trainer/final_selection.py). `finalize_search` puts it on the
quantized layers and can re-estimate the BatchNorm statistics for it: during the search they
averaged over every sampled format. The shared weights are used as they are (no retraining).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from policy.simple_policy import SimplePolicy
from quant.quant_module import QuantModule
from quant.surgery import set_layer_formats
from trainer.final_selection import FinalSelection, constrained_argmax, is_one_sided
from trainer.norm_statistics import recalibrate_batchnorm
from trainer.reinforce_config import ReinforceConfig
from trainer.search_space import DecisionCostTable, SearchSpace


@dataclass(frozen=True)
class DecisionResult:
    layers: tuple[str, ...]
    format: str
    probabilities: dict[str, float]


class SearchAnswer:
    """The answer's methods of ReinforceTrainer (a mixin: the trainer owns the policy, the
    layers, and the Trainer's loader, accelerator and input preparation it uses)."""

    reinforce_config: ReinforceConfig
    search_space: SearchSpace
    cost_table: DecisionCostTable
    policy: SimplePolicy
    quant_layers: dict[str, QuantModule]
    model: nn.Module
    accelerator: Any  # accelerate.Accelerator: reduces the statistics over DDP ranks
    _prepare_inputs: Callable[[dict[str, Any]], dict[str, Any]]
    get_train_dataloader: Callable[[], Any]

    def apply_option_indices(self, indices: torch.Tensor) -> None:
        set_layer_formats(self.quant_layers, self.search_space.assignment(indices))

    def final_indices(self) -> torch.Tensor:
        config = self.reinforce_config
        if config.final_selection is FinalSelection.ARGMAX:
            return self.policy.argmax()
        with torch.no_grad():
            log_probs = self.policy.log_probabilities()
        return constrained_argmax(log_probs, self.cost_table.table, config.cost_target, config.target_tolerance,
                                  one_sided=is_one_sided(config.cost_function))

    def final_decisions(self) -> dict[str, DecisionResult]:
        """The answer: the most likely option of every decision, with the final probabilities."""
        with torch.no_grad():
            probs = self.policy().cpu()
        names = self.search_space.option_names
        return {
            decision: DecisionResult(layers, names[int(k)], dict(zip(names, map(float, p))))
            for (decision, layers), k, p in zip(self.search_space.decisions.items(), self.final_indices(), probs)
        }

    def apply_final_assignment(self) -> None:
        self.apply_option_indices(self.final_indices())

    def final_cost(self) -> float:
        return self.cost_table.cost(self.final_indices())

    def finalize_search(self, recalibration_batches: int = 0) -> int:
        """Fix the answer on the layers and, optionally, re-estimate the BatchNorm statistics
        for it: during the search they averaged over every sampled format. No weight changes.
        Returns the number of batches the statistics were re-estimated on (0: none changed)."""
        self.apply_final_assignment()
        if recalibration_batches <= 0:
            return 0
        used = recalibrate_batchnorm(self.model, self._train_batches(recalibration_batches), self._prepare_inputs)
        if used and self.accelerator.num_processes > 1:
            for buffer in self.model.buffers():
                if buffer.is_floating_point():
                    buffer.copy_(self.accelerator.reduce(buffer, reduction="mean"))
        return used

    def _train_batches(self, count: int) -> Iterator[dict[str, Any]]:
        loader = self.get_train_dataloader()
        seen = 0
        while seen < count:
            start = seen
            for batch in loader:
                yield batch
                seen += 1
                if seen == count:
                    return
            if seen == start:  # an empty training set: nothing to recalibrate on
                return
