"""Layers that read the same input share its quantization, within one forward of the model.

BERT's query, key and value projections read the same hidden states; a ResNet stage's first
block feeds its input to its first conv and to its shortcut conv. Each of those layers used to
quantize that tensor on its own: on a GPU two kernel launches and tens of microseconds of host
work per layer (the pace of a GPU training step, see benchmarks/RESULTS.md), and on the CPU a
pass over the tensor each. An `InputShare`, installed on the model by
`quant.surgery.quantize_model`, remembers during each forward of the model the last inputs that
quantized layers read (four while gradients are recorded, as autograd keeps those tensors anyway;
one without), and per input:

    the range      (abs-max, percentile or MSE clipping; per tensor or per token) of each
                   granularity, computed once and shared by every layer that reads that input
    the output     Q(x) of each format and granularity, computed once: layers at the same
                   activation format (a fixed-format run, or a search whose decisions agree)
                   take the same tensor, and autograd sums their gradients into its one node

"The same input" is the same tensor object at the same version counter, in the same grad mode,
so an input changed in place, a fresh tensor at a reused address, or a forward under no_grad
followed by one with gradients never takes a stale value. Values equal the per-layer path's bit
for bit (tests/quant/test_input_share.py); the gradient reaching the input is the same sum, added
in another order where three or more layers share an output (float addition is not associative,
so its last bit may differ). A layer called outside the model's forward (directly, or in
activation checkpointing's recomputation, which runs no model hook) quantizes on its own. The
environment variable FLIQS_SHARED_INPUTS=0, or `set_enabled(False)`, turns sharing off.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Hashable, Sequence

import torch
from torch import nn

from quant.formats import CastFormat, NumberFormat
from quant.forward_scoped import ForwardScoped, attach, detach
from quant.quant_module import QuantModule, _version
from quant.quant_utils import _check_floating_point, checked_scale_options, input_range, quantize_checked

_ENV_SWITCH = "FLIQS_SHARED_INPUTS"
_enabled = os.environ.get(_ENV_SWITCH, "1").strip() != "0"


def set_enabled(enabled: bool) -> None:
    """Share the quantization of a common input (default), or let every layer quantize its own."""
    global _enabled
    if not isinstance(enabled, bool):
        raise TypeError(f"set_enabled takes True or False, got {enabled!r}")
    _enabled = enabled


def is_enabled() -> bool:
    return _enabled


class InputShare(ForwardScoped):
    """Shares the quantized inputs of `layers` during each forward of `model` (see the module
    docstring). `remove()` takes its hooks off again."""

    key = "_fliqs_input_share"

    def __init__(self, model: nn.Module, layers: Sequence[QuantModule]) -> None:
        self.layers = tuple(layers)
        self._active: list[QuantModule] = []
        self._inputs: list[_SharedInput] = []  # the latest last
        super().__init__(model)

    def _before_forward(self, module: nn.Module, args: tuple) -> None:
        self._clear()
        # A DataParallel replica's layers are copies (they keep the per-layer path), and a
        # forward traced by torch.compile keeps it too (identity checks on tensors would guard).
        if not _enabled or module is not self.model or torch.compiler.is_compiling():
            return
        for layer in self.layers:
            layer.__dict__["_input_share"] = self  # read by QuantModule.quantize_input
        self._active = list(self.layers)

    def _clear(self) -> None:
        for layer in self._active:
            layer.__dict__.pop("_input_share", None)
        self._active = []
        self._inputs = []

    def _entry(self, x: torch.Tensor) -> _SharedInput:
        """What is known of `x` in this forward: found by identity, version counter and grad mode."""
        version, grad = _version(x), torch.is_grad_enabled()
        for entry in reversed(self._inputs):
            if entry.input is x and entry.version == version and entry.grad == grad:
                return entry
        entry = _SharedInput(x, version, grad)
        # With gradients every kept tensor is one autograd keeps anyway (Q(x) is saved for the
        # layer's backward); without, keep only the latest input, so no extra activation lives on.
        kept = _INPUTS_KEPT_WITH_GRAD if grad else 1
        self._inputs = [*self._inputs[-(kept - 1):], entry] if kept > 1 else [entry]
        return entry

    def quantize(self, layer: QuantModule, x: torch.Tensor) -> torch.Tensor:
        """`layer`'s quantized input: shared with the layers before it in this forward that read
        the same `x` at the same settings, else computed (and kept for the ones after)."""
        fmt: NumberFormat = layer._act_format
        if not fmt.quantizes:
            return x
        _check_floating_point(x, "quantize")
        percentile: float = layer.act_range_percentile
        granularity = checked_scale_options(layer.act_granularity, percentile)
        dim: int = layer.act_feature_dim
        entry = self._entry(x)
        # The feature dim as a non-negative index: a Linear's -1 and a conv's 1 name different
        # dims of a 4-d input, and the same one of a 2-d input.
        feature_dim = dim % x.dim() if x.dim() else dim
        output_key = (fmt, granularity, feature_dim, percentile)
        out = entry.outputs.get(output_key)
        if out is None:
            value_range = None  # a cast format takes no range (scale 1)
            if not isinstance(fmt, CastFormat):
                # The MSE clipping range depends on the format; abs-max and percentiles do not.
                range_key = (granularity, feature_dim, percentile, fmt if percentile < 0 else None)
                if range_key in entry.ranges:
                    value_range = entry.ranges[range_key]
                else:
                    value_range = entry.ranges[range_key] = input_range(x, fmt, granularity, dim, percentile)
            out = entry.outputs[output_key] = quantize_checked(x, fmt, granularity, dim, percentile, value_range)
        return out


# Inputs remembered at once while gradients are recorded: a ResNet block's input is read by its
# shortcut conv after two other convs read theirs (HF ResNet), and BERT's by three projections in a row.
_INPUTS_KEPT_WITH_GRAD = 4


@dataclass
class _SharedInput:
    """One input of this forward: its ranges and quantized outputs, by settings."""

    input: torch.Tensor
    version: int | None
    grad: bool
    ranges: dict[Hashable, torch.Tensor | None] = field(default_factory=dict)
    outputs: dict[Hashable, torch.Tensor] = field(default_factory=dict)


def install(model: nn.Module, layers: Sequence[QuantModule]) -> InputShare:
    """Share the quantized inputs of `layers` at every forward of `model`, replacing an earlier share."""
    return attach(model, InputShare, layers)


def uninstall(model: nn.Module) -> None:
    detach(model, InputShare)
