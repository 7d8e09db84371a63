"""What every quantized layer shares: its formats, how it scales, and what it costs.

A quantized layer is a subclass of the float layer it replaces (so `state_dict` keys, HF
`save_pretrained` and optimizers see the same parameters) mixed with `QuantModule`. The search
changes `weight_format` / `act_format` between steps; nothing is re-allocated.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from quant.formats import NO_QUANT, NumberFormat, parse_format
from quant.quant_utils import Granularity, quantize

BYTES_PER_MIB = 2**20
BOPS_PER_GBOPS = 1e9


def _check_percentile(name: str, value: float) -> None:
    if value == 0 or value > 100:
        raise ValueError(
            f"{name} must be in (0, 100] (100 = abs-max) or negative (MSE-optimal clipping), got {value}"
        )


@dataclass(frozen=True)
class QuantConfig:
    """Formats and scale options of a quantized layer.

    per_channel: one weight scale per output channel (else per tensor).
    per_token: one activation scale per token, i.e. per row of a Linear input or per spatial
        position of a conv input (else per tensor).
    *_range_percentile: 100 = abs-max; (0, 100) = that percentile of |x|; negative = the clipping
        that minimises the quantization MSE.
    """

    weight_format: NumberFormat = NO_QUANT
    act_format: NumberFormat = NO_QUANT
    per_channel: bool = False
    per_token: bool = False
    weight_range_percentile: float = 100.0
    act_range_percentile: float = 100.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight_format", parse_format(self.weight_format))
        object.__setattr__(self, "act_format", parse_format(self.act_format))
        _check_percentile("weight_range_percentile", self.weight_range_percentile)
        _check_percentile("act_range_percentile", self.act_range_percentile)


class QuantModule:
    """Mixin for nn.Linear / nn.Conv2d / Conv1D subclasses. Subclasses define the class
    attributes below and call `_init_quant` after the float layer's own initialisation."""

    weight_channel_dim: int  # output-channel dimension of `weight` (per-channel scales)
    act_feature_dim: int  # feature dimension of the input (per-token scales reduce over it)
    weight: nn.Parameter
    # Each subclass defines macs_for_input_shape(input_shape) -> int: MACs for one sample whose
    # input (batch dimension included) has that shape.

    def _init_quant(self, config: QuantConfig) -> None:
        self.weight_format: NumberFormat = config.weight_format
        self.act_format: NumberFormat = config.act_format
        self.weight_granularity = Granularity.PER_CHANNEL if config.per_channel else Granularity.PER_TENSOR
        self.act_granularity = Granularity.PER_TOKEN if config.per_token else Granularity.PER_TENSOR
        self.weight_range_percentile = config.weight_range_percentile
        self.act_range_percentile = config.act_range_percentile
        # MACs for one sample, from the first forward or `set_input_shape`.
        self.macs_per_sample: int | None = None
        # True when `weight` already holds Q(w) (a checkpoint loaded from its low-bit form):
        # re-quantizing would recompute the scale from Q(w) and could move values by an ulp.
        self.weight_prequantized = False

    @property
    def quant_config(self) -> QuantConfig:
        return QuantConfig(
            weight_format=self.weight_format,
            act_format=self.act_format,
            per_channel=self.weight_granularity is Granularity.PER_CHANNEL,
            per_token=self.act_granularity is Granularity.PER_TOKEN,
            weight_range_percentile=self.weight_range_percentile,
            act_range_percentile=self.act_range_percentile,
        )

    def set_formats(self, weight_format: NumberFormat, act_format: NumberFormat) -> None:
        self.weight_format = weight_format
        self.act_format = act_format

    def quantized_weight(self) -> torch.Tensor:
        if self.weight_prequantized:
            return self.weight
        return quantize(self.weight, self.weight_format, self.weight_granularity,
                        dim=self.weight_channel_dim, range_percentile=self.weight_range_percentile)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return quantize(x, self.act_format, self.act_granularity,
                        dim=self.act_feature_dim, range_percentile=self.act_range_percentile)

    # --- cost -------------------------------------------------------------------------------
    def set_input_shape(self, input_shape: tuple[int, ...]) -> None:
        self.macs_per_sample = self.macs_for_input_shape(tuple(input_shape))  # type: ignore[attr-defined]

    def _record_geometry(self, x: torch.Tensor) -> None:
        if self.macs_per_sample is None:
            self.set_input_shape(tuple(x.shape))

    def memory_cost(self) -> float:
        """MiB of this layer's weights stored at weight_format.bits."""
        return self.weight.numel() * self.weight_format.bits / 8 / BYTES_PER_MIB

    def compute_cost(self) -> float:
        """GBOPs per sample: MACs x weight bits x activation bits / 1e9."""
        if self.macs_per_sample is None:
            raise RuntimeError(
                f"{type(self).__name__} has no recorded input geometry: run one forward pass "
                "(or call set_input_shape) before asking for its compute cost"
            )
        return self.macs_per_sample * self.weight_format.bits * self.act_format.bits / BOPS_PER_GBOPS

    def extra_repr(self) -> str:
        base = super().extra_repr()  # type: ignore[misc]
        return (f"{base}, weight_format={self.weight_format.name}, act_format={self.act_format.name}, "
                f"weight_scale={self.weight_granularity.value}, act_scale={self.act_granularity.value}")


def new_without_allocation(cls: type[nn.Module], *args, **kwargs) -> nn.Module:
    """Build a layer on the meta device: its parameters are replaced by the float layer's own."""
    with torch.device("meta"):
        return cls(*args, **kwargs)
