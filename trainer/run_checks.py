"""What ReinforceTrainer refuses, or warns about, before it searches.

When it is built: a held-out reward without a held-out split, a search space naming layers that
are not quantized or quantized layers of another model, label names the reward cannot read.
When train() begins: a resumed run with no step left, a delay that leaves no search step, a cost
target no assignment of the space comes near. Each error names the bad value and the way out.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from cost.cost import rewards_for_costs
from quant.quant_module import QuantModule
from trainer.reinforce_config import ReinforceConfig, RewardSource
from trainer.search_space import DecisionCostTable, SearchSpace


def check_search_inputs(model: nn.Module, config: ReinforceConfig, space: SearchSpace,
                        quant_layers: Mapping[str, QuantModule], heldout_dataset: Any) -> None:
    """Raise ValueError unless the search's inputs fit together and fit `model`."""
    if config.reward_source is RewardSource.HELDOUT and heldout_dataset is None:
        raise ValueError("reward_source 'heldout' needs a heldout_dataset (carved out of the training set)")
    unknown = [layer for layers in space.decisions.values() for layer in layers if layer not in quant_layers]
    if unknown:
        raise ValueError(f"search space names layers that are not quantized: {unknown[:5]}")
    # By identity: layers of another model (e.g. the original's, after copy.deepcopy(model))
    # would take every format while this model trains in float, and the answer mean nothing.
    submodules = {id(module) for module in model.modules()}
    foreign = [name for name, layer in quant_layers.items() if id(layer) not in submodules]
    if foreign:
        raise ValueError(f"quant layer {foreign[0]!r} is not a submodule of the model this trainer trains, so its "
                         "formats would never reach that model (e.g. the layers of the original after "
                         "copy.deepcopy(model)); pass this model's own quantized layers "
                         "(quant.surgery.quantized_layers(model))")


def reward_label_key(label_names: Sequence[str] | None) -> str:
    """The one batch key the reward compares the logits with: the Trainer's label name ("labels"
    when it found none, the HF convention); ValueError for several."""
    names = list(label_names) if label_names else ["labels"]
    if len(names) != 1:
        raise ValueError(f"the search's reward compares the logits with one label tensor, but the Trainer's label "
                         f"names are {names} (TrainingArguments.label_names, or the model's forward "
                         "arguments with 'label' in their name); set TrainingArguments.label_names to the one key "
                         "of the labels")
    return names[0]


def check_steps_left(global_step: int, max_steps: int) -> None:
    """A resumed run must have steps left: transformers does not check, and trains one step past
    a max_steps at or below the checkpoint's step (unless that step ends an epoch)."""
    if global_step > 0 and global_step >= max_steps:
        raise ValueError(
            f"this run's max_steps ({max_steps}, TrainingArguments.max_steps or from num_train_epochs) is "
            f"not above the checkpoint's step {global_step}: nothing is left to search; resume with more "
            f"steps than {global_step}, or start a new run")


def check_run_length(delay_steps: int, total_steps: int) -> None:
    """Refuse a run whose delay leaves no step for the policy to learn."""
    if delay_steps >= total_steps:
        raise ValueError(
            f"delay_steps={delay_steps} leaves no search step in this run's {total_steps} steps "
            "(TrainingArguments.max_steps, or from num_train_epochs): the policy would never learn and the answer "
            f"would be its initial guess; set ReinforceConfig.delay_steps below {total_steps}")


def unreachable_target_message(cost_table: DecisionCostTable, config: ReinforceConfig) -> str | None:
    """What is wrong with a cost target that no assignment of the space reaches, and what the
    reward then does; None for a reachable one."""
    low, high = cost_table.min_cost(), cost_table.max_cost()
    # A relative margin: a target of 8 average bits is the 8-bit model's cost up to float rounding.
    margin = 1e-9 * high
    if low - margin <= config.cost_target <= high + margin:
        return None
    unit = cost_table.cost_type.unit
    # What the reward does on this side of the target: two costs there, at the same quality.
    side, ratios = ("below", (1.5, 2.0)) if config.cost_target < low else ("above", (0.5, 0.9))
    nearer, farther = rewards_for_costs(config.cost_function, torch.tensor(ratios, dtype=torch.float64) *
                                        config.cost_target, config.cost_beta, config.cost_target, 1.0).tolist()
    if nearer == farther:  # e.g. one-sided forms above the target: no model is penalised
        effect = f"{config.cost_function} gives every model of this space the same cost term, so the decisions " \
            "follow quality alone"
    else:
        end = "cheapest" if nearer > farther else "most expensive"
        effect = f"the cost term pushes every decision towards its {end} option"
    return (f"cost_target {config.cost_target:.6g} {unit} is {side} every cost this search space can reach "
            f"([{low:.6g}, {high:.6g}] {unit}): {effect}")
