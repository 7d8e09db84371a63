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

Where the layers reading one input run at different formats (a search), the share also keeps the
backward from holding one quantized tensor per format: it remembers, from the model's last forward
with gradients, which layers read one input, and when the first of them reads it again while
their formats differ, their matmuls save the recipe of their Q(x) instead of the tensor
(quant/input_recompute.py): x once, Q(x) recomputed per format in the backward. A search then
keeps no more activations than the fixed-format model. FLIQS_RECOMPUTE_INPUTS=off (or 0), or
`set_recompute_mode("off")`, keeps the tensors; `all` recomputes every quantized input (the
memory of float training where x is kept anyway, at one quantizer call per layer in the backward).
"""
from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from enum import Enum
from typing import Hashable, Sequence

import torch
from torch import nn

from quant.formats import CastFormat, NumberFormat
from quant.forward_scoped import ForwardScoped, attach, detach
from quant.input_recompute import RecomputedInput, hooks_usable, saved_as_recipe
from quant.quant_module import QuantModule, _version
from quant.quant_utils import (_check_floating_point, checked_scale_options, input_range, quantize_checked,
                               quantized_values)
from quant.scales import Granularity

class RecomputeMode(str, Enum):
    """Which quantized inputs the backward recomputes from x instead of keeping (quant/input_recompute.py)."""

    OFF = "off"  # keep every quantized input
    MIXED = "mixed"  # where the layers that read one input run at different formats (default)
    # Every quantized input read while gradients are recorded: the memory of float training where
    # x is kept anyway (a conv after a ReLU, which keeps its output), one quantizer call per layer
    # more in the backward.
    ALL = "all"


def parse_recompute_mode(value: RecomputeMode | str, source: str = "recompute mode") -> RecomputeMode:
    """A RecomputeMode from itself or its name (case-insensitive; "0" and "1" for off and mixed)."""
    if isinstance(value, RecomputeMode):
        return value
    name = {"0": "off", "1": "mixed"}.get(str(value).strip().lower(), str(value).strip().lower())
    try:
        return RecomputeMode(name)
    except ValueError:
        raise ValueError(f"{source} {value!r} is not one of off, mixed (the default), all") from None


_enabled = os.environ.get("FLIQS_SHARED_INPUTS", "1").strip() != "0"
_recompute_mode = parse_recompute_mode(os.environ.get("FLIQS_RECOMPUTE_INPUTS", "mixed"), "FLIQS_RECOMPUTE_INPUTS")
_NO_HOOKS = nullcontext()


def set_enabled(enabled: bool) -> None:
    """Share the quantization of a common input (default), or let every layer quantize its own."""
    global _enabled
    if not isinstance(enabled, bool):
        raise TypeError(f"set_enabled takes True or False, got {enabled!r}")
    _enabled = enabled


def is_enabled() -> bool:
    return _enabled


def set_recompute_mode(mode: RecomputeMode | str) -> None:
    """Which quantized inputs the backward recomputes (`RecomputeMode`; default mixed, or the
    environment's FLIQS_RECOMPUTE_INPUTS)."""
    global _recompute_mode
    _recompute_mode = parse_recompute_mode(mode)


def recompute_mode() -> RecomputeMode:
    return _recompute_mode


class InputShare(ForwardScoped):
    """Shares the quantized inputs of `layers` during each forward of `model` (see the module
    docstring). `remove()` takes its hooks off again."""

    key = "_fliqs_input_share"

    def __init__(self, model: nn.Module, layers: Sequence[QuantModule]) -> None:
        self.layers = tuple(layers)
        own = set(self.layers)
        self._names = {layer: name for name, layer in model.named_modules() if layer in own}  # for errors
        self._active: list[QuantModule] = []
        self._inputs: list[_SharedInput] = []  # the latest last
        # The layers that read each input in the model's last forward with gradients, by the first
        # of them; and those of this forward, committed when it ends.
        self._readers: dict[QuantModule, tuple[QuantModule, ...]] = {}
        self._readers_now: dict[QuantModule, list[QuantModule]] = {}
        # The recipe for the quantized input just returned to a layer, for its matmul's saves.
        self._pending: tuple[torch.Tensor, RecomputedInput] | None = None
        super().__init__(model)

    def _before_forward(self, module: nn.Module, args: tuple) -> None:
        self._clear()
        # A DataParallel replica's layers are copies (they keep the per-layer path), and a
        # forward traced by torch.compile keeps it too (identity checks on tensors would guard);
        # so does one under torch.func transforms, whose wrapped tensors have no storage for the
        # recompute check, and which disable the saved-tensor hooks it relies on.
        if (not _enabled or module is not self.model or torch.compiler.is_compiling()
                or torch._C._are_functorch_transforms_active()):
            return
        for layer in self.layers:
            layer.__dict__["_input_share"] = self  # read by QuantModule.quantize_input
        self._active = list(self.layers)

    def _clear(self) -> None:
        for layer in self._active:
            layer.__dict__.pop("_input_share", None)
        if self._readers_now:  # a forward with gradients: every input it read is there
            self._readers = {first: tuple(readers) for first, readers in self._readers_now.items()}
        self._active, self._inputs, self._readers_now, self._pending = [], [], {}, None

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

    def _read_by(self, entry: _SharedInput, layer: QuantModule, x: torch.Tensor) -> None:
        """Count `layer` among `entry`'s readers; at its first reader (with gradients), whether the
        layers' matmuls save recipes for Q(x) (`RecomputeMode`)."""
        readers = entry.readers
        readers.append(layer)
        if len(readers) > 1:
            if entry.readers_left is not None:
                entry.readers_left -= 1
            return
        if not entry.grad:
            return
        self._readers_now[layer] = readers  # the list, which the later readers join
        group = self._readers.get(layer)
        mode = _recompute_mode
        wanted = mode is RecomputeMode.ALL or (
            mode is RecomputeMode.MIXED and group is not None and len({_output_key(m, x) for m in group}) > 1)
        # Not for a view of a larger tensor (BERT's pooler reads the first token): keeping it would
        # keep all of that tensor.
        entry.recompute = (wanted and 0 < x.numel() * x.element_size() == x.untyped_storage().nbytes()
                           and hooks_usable())
        # The readers still to come, as in the last forward (unknown at a model's first forward).
        entry.readers_left = None if group is None else len(group) - 1

    def quantize(self, layer: QuantModule, x: torch.Tensor) -> torch.Tensor:
        """`layer`'s quantized input: shared with the layers before it in this forward that read
        the same `x` at the same settings, else computed (and kept for the ones after)."""
        entry = self._entry(x)
        self._read_by(entry, layer, x)
        output_key = _output_key(layer, x)
        if output_key is None:
            return x
        _check_floating_point(x, "quantize")
        fmt, granularity, feature_dim, percentile = output_key
        dim: int = layer.act_feature_dim
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
            if entry.recompute:
                entry.recipes[output_key] = RecomputedInput(
                    x, lambda: _recompute(x, fmt, granularity, dim, percentile, value_range),
                    self._names.get(entry.readers[0], type(layer).__name__))  # the input's first reader
        if entry.recompute:
            self._pending = (out, entry.recipes[output_key])
            if entry.readers_left is not None and entry.readers_left <= 0:
                entry.outputs.clear()  # the last expected reader: keeping the tensors would undo the saving
        return out

    def saved_input_hooks(self, x_q: torch.Tensor) -> AbstractContextManager:
        """The context for the matmul of the layer that `quantize` has just given `x_q`: hooks
        that save x_q as its recipe where its input is recomputed, else nothing."""
        pending, self._pending = self._pending, None
        if pending is None or pending[0] is not x_q:
            return _NO_HOOKS
        return saved_as_recipe(x_q, pending[1])


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
    readers: list[QuantModule] = field(default_factory=list)  # the layers that read it, in order
    recompute: bool = False  # its layers' matmuls save recipes (`recipes`, by output) for Q(x)
    recipes: dict[Hashable, RecomputedInput] = field(default_factory=dict)
    readers_left: int | None = None  # readers of the last forward still to come (None: unknown)


def _recompute(x: torch.Tensor, fmt: NumberFormat, granularity: Granularity, dim: int, percentile: float,
               value_range: torch.Tensor | None) -> torch.Tensor:
    """A shared input's Q(x) again, in a backward pass: the values alone, or, where that backward
    records a graph (create_graph), with the straight-through node the forward made."""
    if torch.is_grad_enabled():
        return quantize_checked(x, fmt, granularity, dim, percentile, value_range)
    return quantized_values(x, fmt, granularity, dim, percentile, value_range)


def _output_key(layer: QuantModule, x: torch.Tensor) -> tuple[NumberFormat, Granularity, int, float] | None:
    """What decides `layer`'s Q(x): (format, granularity, feature dim, clipping percentile), or None
    where the layer takes x itself. Layers with equal keys share one quantized tensor. ValueError /
    TypeError for bad scale options."""
    fmt: NumberFormat = layer._act_format
    if not fmt.quantizes:
        return None
    percentile: float = layer.act_range_percentile
    dim: int = layer.act_feature_dim
    # The feature dim as a non-negative index: a Linear's -1 and a conv's 1 name different dims of
    # a 4-d input, and the same one of a 2-d input.
    feature_dim = dim % x.dim() if x.dim() else dim
    return fmt, checked_scale_options(layer.act_granularity, percentile), feature_dim, percentile


def install(model: nn.Module, layers: Sequence[QuantModule]) -> InputShare:
    """Share the quantized inputs of `layers` at every forward of `model`, replacing an earlier share."""
    return attach(model, InputShare, layers)


def uninstall(model: nn.Module) -> None:
    detach(model, InputShare)
