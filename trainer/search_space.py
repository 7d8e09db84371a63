"""The search space: decisions (which layers share a choice), options (which formats), costs.

Option k of every decision is format k of the search space, applied to the weights and the
input activations of the decision's layers (or to the weights only, with the activations kept
at a fixed format, for a weight-only search). Because every cost is a sum over layers, the cost
of any sample is a sum of per-(decision, option) contributions: `DecisionCostTable` holds them,
so the trainer prices a sample with one gather and knows the cheapest and dearest models exactly.
"""
from __future__ import annotations

import numbers
from collections import Counter
from dataclasses import dataclass
from enum import Enum
from typing import Mapping, Sequence, Union

import torch

from cost.model_cost import CostType, LayerCost, parse_cost_type
from quant.formats import NO_QUANT, NumberFormat, parse_format, parse_format_list
from trainer.setting_names import parse_setting


class Granularity(str, Enum):
    """How many layers share one decision."""

    LAYER = "layer"  # one decision per quantized layer (default)
    BLOCK = "block"  # one per block partition (eval.eval_partitions)
    SINGLE = "single"  # one decision for the whole model


def parse_granularity(name: Granularity | str) -> Granularity:
    """`Granularity` from its name (case-insensitive) or itself; ValueError listing the valid names."""
    return parse_setting(Granularity, name, "granularity")


# What a search space's formats may be given as: a comma-separated string ("int4,fp8_e4m3"), or
# a sequence of tokens ("int4", 8) and NumberFormats.
FormatList = Union[str, Sequence[Union[str, int, NumberFormat]]]


@dataclass(frozen=True)
class SearchSpace:
    formats: tuple[NumberFormat, ...]  # option k is formats[k]
    decisions: Mapping[str, tuple[str, ...]]  # decision name -> its layers, in model order
    weight_only: bool = False
    fixed_act_format: NumberFormat = NO_QUANT  # activations of a weight-only search

    def __post_init__(self) -> None:
        # Tokens become NumberFormats here: a string would be split into characters ('4', ',', '8')
        # and a token list would fail only when a step reads its `.bits`.
        formats = self.formats
        if isinstance(formats, str):
            formats = parse_format_list(formats)
        elif isinstance(formats, NumberFormat):
            formats = (formats,)
        formats = tuple(parse_format(f) for f in formats)
        object.__setattr__(self, "formats", formats)
        object.__setattr__(self, "fixed_act_format", parse_format(self.fixed_act_format))
        if not self.formats:
            raise ValueError("the search space needs at least one format, e.g. '4,8' or ('int4', 'fp8_e4m3')")
        if len(set(self.formats)) != len(self.formats):
            raise ValueError(f"duplicate formats in the search space: {[f.name for f in self.formats]}")
        if not self.decisions:
            raise ValueError("the search has no decisions: no quantized layer was selected")
        seen: dict[str, str] = {}
        for decision, layers in self.decisions.items():
            if not layers:
                raise ValueError(f"decision {decision!r} has no layers")
            for layer in layers:
                if seen.get(layer) == decision:
                    raise ValueError(f"layer {layer!r} is listed twice in decision {decision!r}: list each layer once")
                if layer in seen:
                    raise ValueError(f"layer {layer!r} is in two decisions: {seen[layer]!r} and {decision!r}")
                seen[layer] = decision

    @classmethod
    def build(cls, layer_names: Sequence[str], formats: FormatList, granularity: Granularity | str,
              partitions: Mapping[str, Sequence[str]] | None = None, weight_only: bool = False,
              fixed_act_format: NumberFormat | str = NO_QUANT) -> "SearchSpace":
        """`formats`: a comma-separated string or a sequence of tokens / NumberFormats."""
        granularity = parse_granularity(granularity)
        # One decision per name would merge a repeated layer into one silently.
        repeated = [name for name, count in Counter(layer_names).items() if count > 1]
        if repeated:
            raise ValueError(f"layer names must be unique; repeated: {repeated[:5]}")
        if granularity is Granularity.LAYER:
            decisions = {name: (name,) for name in layer_names}
        elif granularity is Granularity.SINGLE:
            decisions = {"model": tuple(layer_names)} if layer_names else {}
        else:
            if partitions is None:
                raise ValueError("a block search needs the block partitions of the model")
            decisions = {block: tuple(layers) for block, layers in partitions.items() if layers}
            covered = {layer for layers in decisions.values() for layer in layers}
            missing = [name for name in layer_names if name not in covered]
            extra = sorted(covered - set(layer_names))
            if missing or extra:
                raise ValueError(f"block partitions do not match the quantized layers: missing {missing[:5]}, "
                                 f"unknown {extra[:5]}")
        return cls(formats, decisions, weight_only, fixed_act_format)

    @property
    def decision_names(self) -> list[str]:
        return list(self.decisions)

    @property
    def option_names(self) -> list[str]:
        return [f.name for f in self.formats]

    @property
    def num_decisions(self) -> int:
        return len(self.decisions)

    @property
    def num_options(self) -> int:
        return len(self.formats)

    def option_formats(self, option: int) -> tuple[NumberFormat, NumberFormat]:
        """(weight format, activation format) of option `option`."""
        fmt = self.formats[option]
        return fmt, (self.fixed_act_format if self.weight_only else fmt)

    def assignment(self, indices: Sequence[int] | torch.Tensor) -> dict[str, tuple[NumberFormat, NumberFormat]]:
        """Layer name -> (weight format, act format) for one option index per decision."""
        indices = indices.tolist() if isinstance(indices, torch.Tensor) else list(indices)
        if len(indices) != self.num_decisions:
            raise ValueError(f"expected {self.num_decisions} option indices, got {len(indices)}")
        # A negative index would silently pick an option from the end. Plain ints (what a sampled
        # tensor's tolist() gives, every step) take the fast check; other types the full one.
        num_options = self.num_options
        plain = all(type(option) is int for option in indices)
        if not plain or (indices and (min(indices) < 0 or max(indices) >= num_options)):
            for option in indices:
                if isinstance(option, bool) or not isinstance(option, numbers.Integral) or not 0 <= option < num_options:
                    raise ValueError(f"option index {option!r} is not an option of this search space: each index "
                                     f"must be an integer in [0, {num_options - 1}] (one of {self.option_names})")
        out: dict[str, tuple[NumberFormat, NumberFormat]] = {}
        for layers, option in zip(self.decisions.values(), indices):
            formats = self.option_formats(option)
            out.update({layer: formats for layer in layers})
        return out


class DecisionCostTable:
    """table[d, k] = cost of decision d's layers under option k; a sample costs sum_d table[d, k_d]."""

    def __init__(self, space: SearchSpace, layer_costs: Sequence[LayerCost], cost_type: CostType | str) -> None:
        cost_type = parse_cost_type(cost_type)  # a string such as "memory" too
        by_name = {c.name: c for c in layer_costs}
        missing = [layer for layers in space.decisions.values() for layer in layers if layer not in by_name]
        if missing:
            raise ValueError(f"no cost information for layers {missing[:5]}")
        self.cost_type = cost_type
        rows = []
        for layers in space.decisions.values():
            rows.append([sum(by_name[layer].cost(cost_type, *space.option_formats(k)) for layer in layers)
                         for k in range(space.num_options)])
        self.table = torch.tensor(rows, dtype=torch.float64)  # (D, K)

    def cost(self, indices: torch.Tensor) -> float:
        """Cost of one sample: indices (D,) of option per decision."""
        return float(self.table.gather(1, indices.view(-1, 1).to(torch.long)).sum())

    def min_cost(self, mask: torch.Tensor | None = None) -> float:
        table = self.table if mask is None else self.table.masked_fill(~mask, float("inf"))
        return float(table.min(dim=1).values.sum())

    def max_cost(self, mask: torch.Tensor | None = None) -> float:
        table = self.table if mask is None else self.table.masked_fill(~mask, float("-inf"))
        return float(table.max(dim=1).values.sum())

    def uniform_cost(self, option: int) -> float:
        return float(self.table[:, option].sum())
