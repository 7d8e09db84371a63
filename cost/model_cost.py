"""Model cost of a format assignment, computed without running the model.

memory (MiB)  = sum over quantized layers of  num_weights x weight bits / 8 / 2^20
compute (GBOPs) = sum over quantized layers of  MACs per sample x weight bits x act bits / 1e9
BOPs as in Baskin et al., "UNIQ" (2018) and used by FLIQS: bit operations of a MAC = b_w * b_a.
A layer's MACs come from its real geometry (a conv counts its output spatial size), recorded by
`quant.surgery.record_geometry` or `QuantModule.set_input_shape`.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from enum import Enum
from typing import Mapping, Sequence

from quant.formats import NO_QUANT, NumberFormat
from quant.quant_module import BOPS_PER_GBOPS, BYTES_PER_MIB, QuantModule


class CostType(str, Enum):
    MEMORY = "memory"  # MiB of quantized weights
    COMPUTE = "compute"  # GBOPs per sample

    @property
    def unit(self) -> str:
        if self is CostType.MEMORY:
            return "MiB"
        if self is CostType.COMPUTE:
            return "GBOPs"
        raise unhandled_cost_type(self, "CostType.unit")


def unhandled_cost_type(cost_type: CostType, where: str) -> NotImplementedError:
    """The error of a cost type that `where` has no branch for: every function that prices a cost
    type names each one, so a new member cannot fall into another's formula unnoticed."""
    return NotImplementedError(f"cost type {cost_type.value!r} has no formula in {where}; add one (docs/extending.md, "
                               f"'Add a cost type')")


def parse_cost_type(name: str | CostType) -> CostType:
    """`CostType` from its exact name or itself; ValueError listing the valid names. (Exact: the
    CLI validates --cost_type with it and then takes CostType(value).)"""
    try:
        return CostType(name)
    except ValueError:
        raise ValueError(f"unknown cost type {name!r}; valid: {[c.value for c in CostType]}") from None


@dataclass(frozen=True)
class LayerCost:
    """What a layer's cost depends on, independent of its formats."""

    name: str
    num_weights: int
    macs_per_sample: int

    def memory_mib(self, weight_format: NumberFormat) -> float:
        return self.num_weights * weight_format.bits / 8 / BYTES_PER_MIB

    def gbops(self, weight_format: NumberFormat, act_format: NumberFormat) -> float:
        return self.macs_per_sample * weight_format.bits * act_format.bits / BOPS_PER_GBOPS

    def cost(self, cost_type: CostType | str, weight_format: NumberFormat, act_format: NumberFormat) -> float:
        # Parsed, not compared by identity: the string "memory" is not CostType.MEMORY, and
        # would silently have been priced in GBOPs.
        kind = parse_cost_type(cost_type)
        if kind is CostType.MEMORY:
            return self.memory_mib(weight_format)
        if kind is CostType.COMPUTE:
            return self.gbops(weight_format, act_format)
        raise unhandled_cost_type(kind, "LayerCost.cost")


def layer_costs(layers: Mapping[str, QuantModule]) -> list[LayerCost]:
    """LayerCost of every layer (in order); layers need recorded geometry."""
    costs = []
    for name, layer in layers.items():
        if layer.macs_per_sample is None:
            raise RuntimeError(f"layer {name!r} has no recorded geometry; call quant.surgery.record_geometry first")
        costs.append(LayerCost(name, layer.weight.numel(), layer.macs_per_sample))
    return costs


@dataclass(frozen=True)
class ModelCost:
    memory_mib: float
    gbops: float
    float_memory_mib: float  # the same layers at 32 bits
    float_gbops: float  # the same layers at 32 x 32 bits

    def value(self, cost_type: CostType | str) -> float:
        kind = parse_cost_type(cost_type)
        if kind is CostType.MEMORY:
            return self.memory_mib
        if kind is CostType.COMPUTE:
            return self.gbops
        raise unhandled_cost_type(kind, "ModelCost.value")


def model_cost(costs: Sequence[LayerCost], assignment: Mapping[str, tuple[NumberFormat, NumberFormat]]) -> ModelCost:
    """Cost of `assignment` (layer name -> (weight format, act format)) over every layer in `costs`."""
    missing = [c.name for c in costs if c.name not in assignment]
    if missing:
        raise ValueError(f"no formats given for layers {missing[:5]}")
    memory = sum(c.memory_mib(assignment[c.name][0]) for c in costs)
    gbops = sum(c.gbops(*assignment[c.name]) for c in costs)
    float_memory = sum(c.memory_mib(NO_QUANT) for c in costs)
    float_gbops = sum(c.gbops(NO_QUANT, NO_QUANT) for c in costs)
    return ModelCost(memory, gbops, float_memory, float_gbops)


def current_assignment(layers: Mapping[str, QuantModule]) -> dict[str, tuple[NumberFormat, NumberFormat]]:
    return {name: (layer.weight_format, layer.act_format) for name, layer in layers.items()}


# Average bits of a cost target: above 0 (a cost is positive), at most float32's 32 bits.
MAX_AVERAGE_BITS = 32


def _average_bits(name: str, bits: float) -> float:
    if isinstance(bits, bool) or not isinstance(bits, numbers.Real) or not math.isfinite(bits) \
            or not 0 < bits <= MAX_AVERAGE_BITS:
        raise ValueError(f"{name}={bits!r} must be a number of bits in (0, {MAX_AVERAGE_BITS}], e.g. 4.5")
    return float(bits)


def average_bits_cost(costs: Sequence[LayerCost], cost_type: CostType | str, weight_bits: float,
                      act_bits: float | None = None) -> float:
    """Cost of the layers with every weight at `weight_bits` (and every activation at `act_bits`,
    default the same): a target such as "4.5 bits on average" in MiB or GBOPs."""
    weight_bits = _average_bits("weight_bits", weight_bits)
    act_bits = weight_bits if act_bits is None else _average_bits("act_bits", act_bits)
    kind = parse_cost_type(cost_type)
    if kind is CostType.MEMORY:
        return sum(c.num_weights for c in costs) * weight_bits / 8 / BYTES_PER_MIB
    if kind is CostType.COMPUTE:
        return sum(c.macs_per_sample for c in costs) * weight_bits * act_bits / BOPS_PER_GBOPS
    raise unhandled_cost_type(kind, "average_bits_cost")
