"""Quantize every layer's weight at once, at the start of the model's forward.

Each QuantModule quantizes its own weight in its forward: one autograd node and, on a GPU, two
kernel launches per layer, each with tens of microseconds of host work. A GPU training step of
ResNet-18 or BERT-base spent more time in that host work than the GPU spent quantizing (see
benchmarks/RESULTS.md). A `WeightQuantizerGroup`, installed on the model by
`quant.surgery.quantize_model`, does it for all layers in one go:

    model forward pre-hook:  Q(w) for every grouped layer, one autograd node, three launches
                             per weight dtype (quant/fused_multi_quantize.py)
    each layer's forward:    uses its Q(w) (QuantModule.quantized_weight)
    model forward hook:      drops them (also when the forward raises)

A layer is grouped for a forward when its weight takes an abs-max scale per tensor or per
output channel (dim 0 of the weight: Linear and Conv2d, not GPT-2's Conv1D) with a quantizing
INT/FP format, is not marked prequantized, trains (requires_grad) and has no
gradient yet, and gradients are on (under no_grad each layer's Q(w) is freed right after its
use, which grouping would undo). Everything else keeps the per-layer path; so does every layer
under DDP with more than one rank and with HF gradient checkpointing (`groupable` says why).
Grouping changes no number: values and gradients equal the per-layer path's bit for bit
(tests/quant/test_weight_group.py; one Parameter shared by three or more grouped uses could sum
its gradients in another order). A layer takes its grouped Q(w) only while its format, weight
and the weight's version counter are the ones it was computed from. Modes (`set_mode`, or the
environment variable FLIQS_GROUPED_WEIGHTS: 0 or off, 1 or auto, always):

    auto    on CUDA, where the multi-tensor kernels have matched the per-layer path (checked
            once per device); the CPU keeps the per-layer path, which is no slower there
    off     the per-layer path everywhere
    always  also on the CPU, computing each Q(w) with the per-layer function: for tests, and
            no faster there (benchmarks/RESULTS.md)
"""
from __future__ import annotations

import contextlib
import os
import warnings
from enum import Enum
from typing import Sequence

import torch
from torch import nn

from quant import forward_scoped, fused_multi_quantize, fused_quantize
from quant.formats import CastFormat, NumberFormat, parse_format
from quant.forward_scoped import ForwardScoped, attach, detach
from quant.quant_module import GroupedWeight, QuantModule
from quant.quant_utils import quantize
from quant.rounding import abs_max_scaling_cannot_saturate
from quant.scales import Granularity

_ENV_SWITCH = "FLIQS_GROUPED_WEIGHTS"


class GroupMode(str, Enum):
    AUTO = "auto"
    OFF = "off"
    ALWAYS = "always"


_ENV_VALUES = {"": GroupMode.AUTO, "1": GroupMode.AUTO, "0": GroupMode.OFF,
               **{mode.value: mode for mode in GroupMode}}


def mode_from_environment(value: str | None) -> GroupMode:
    """The mode FLIQS_GROUPED_WEIGHTS asks for: unset, "1" or "auto"; "0" or "off"; "always"."""
    key = (value or "").strip().lower()
    if key not in _ENV_VALUES:
        warnings.warn(f"{_ENV_SWITCH}={value!r} is not one of 0, 1, {', '.join(m.value for m in GroupMode)}; "
                      f"using auto")
        return GroupMode.AUTO
    return _ENV_VALUES[key]


_mode = mode_from_environment(os.environ.get(_ENV_SWITCH))
_verified: dict[torch.device, bool] = {}
_PROBE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def set_mode(mode: GroupMode | str) -> None:
    """Where weights are quantized in one batch: "auto" (CUDA, the default), "off" or "always"."""
    global _mode
    try:
        _mode = GroupMode(mode)
    except ValueError:
        raise ValueError(f"grouped weight mode must be one of {[m.value for m in GroupMode]}, got {mode!r}") from None


def get_mode() -> GroupMode:
    return _mode


def _groupable_format(fmt: NumberFormat) -> bool:
    # Cast formats carry no scale; formats that could saturate under abs-max would need a mask.
    return (fmt.quantizes and not isinstance(fmt, CastFormat) and abs_max_scaling_cannot_saturate(fmt)
            and fused_multi_quantize.format_row(fmt) is not None)


def _groupable_format_of(layer_state: dict) -> bool:
    """`_groupable_format` of a layer's weight format, remembered on the layer for that format
    object: an identity check per layer and forward instead of two cached lookups (each hashing
    the frozen dataclass) and the type checks."""
    fmt = layer_state["_weight_format"]
    known = layer_state.get("_groupable_format")
    if known is None or known[0] is not fmt:
        known = layer_state["_groupable_format"] = (fmt, _groupable_format(fmt))
    return known[1]


def _reference(weights: Sequence[torch.Tensor], fmts: Sequence[NumberFormat],
               per_channel: Sequence[bool]) -> list[torch.Tensor]:
    """What each layer computes on its own: the per-layer path, one weight at a time."""
    return [quantize(w, fmt, Granularity.PER_CHANNEL if channel else Granularity.PER_TENSOR, dim=0)
            for w, fmt, channel in zip(weights, fmts, per_channel)]


def verified_on(device: torch.device) -> bool:
    """Whether the multi-tensor kernels match the per-layer path on `device` for a probe of
    tensors of every kernel dtype, odd sizes, per-tensor and per-channel scales and INT/FP
    formats (checked once per device; on a mismatch, a warning and the per-layer path)."""
    def matches() -> bool:
        ok = True
        generator = torch.Generator().manual_seed(0)
        # per tensor: odd sizes, a zero tensor; per channel: rows of 16 to more than a block
        shapes = [(64, 33), (3000,), (7, 3, 3, 3), (1,), (2049,), (6, 16), (3, 2064), (5, 4, 4, 4)]
        per_channel = [False] * 5 + [True] * 3
        tokens = ("int8", "fp8_e4m3", "int4", "fp4_e2m1", "fp8_e5m2", "int8", "fp8_e4m3", "int4")
        fmts = [parse_format(token) for token in tokens]
        for dtype in _PROBE_DTYPES:
            probe = [(torch.randn(shape, generator=generator) * 10 ** (i % 5 - 2)).to(device, dtype)
                     for i, shape in enumerate(shapes)]
            probe[3].zero_()  # a zero range
            probe[5][2].zero_()  # a zero row
            if not fused_multi_quantize.applies(probe, fmts, per_channel):
                ok = False
                break
            got_all = fused_multi_quantize.fused_multi_fake_quantize(probe, fmts, per_channel)
            for got, want in zip(got_all, _reference(probe, fmts, per_channel)):
                bits = torch.int32 if dtype is torch.float32 else torch.int16  # -0.0 is not 0.0
                ok &= torch.equal(got.view(bits), want.view(bits))
        return ok

    return fused_quantize.verify_once(_verified, device, matches, "grouped weight quantization", "per-layer path",
                                      _ENV_SWITCH)


def _use_kernels(device: torch.device) -> bool:
    """Whether a batch on `device` runs on the multi-tensor kernels. The batch itself is covered
    already (`quantize_weights` batches only what `tensor_applies` admits, one device and dtype
    per batch), so this per-step check does not go over the tensors again. The one-time check
    compares with the per-layer path as it runs on this device (fused kernel or eager)."""
    return device.type == "cuda" and fused_quantize.is_available() and verified_on(device)


def kernels_verified(device: torch.device) -> bool | None:
    """Whether the multi-tensor kernels passed their one-time check on `device` (an indexed
    device, as a weight's); None where they were never checked (the CPU, grouping off)."""
    return _verified.get(device)


def quantize_weights(weights: Sequence[torch.Tensor], fmts: Sequence[NumberFormat],
                     per_channel: Sequence[bool]) -> list[torch.Tensor]:
    """Abs-max Q(w) of each weight, per tensor or per output channel (dim 0): in one batch per
    (device, dtype) of the weights that the multi-tensor kernels cover, where they have been
    verified; the rest one at a time."""
    out: list[torch.Tensor | None] = [None] * len(weights)
    batches: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    alone: list[int] = []
    for i, (w, fmt, channel) in enumerate(zip(weights, fmts, per_channel)):
        if fused_multi_quantize.tensor_applies(w, fmt, channel):
            batches.setdefault((w.device, w.dtype), []).append(i)
        else:  # e.g. a channels-last conv weight: the others still batch
            alone.append(i)
    for (device, _), indices in batches.items():
        batch, batch_fmts = [weights[i] for i in indices], [fmts[i] for i in indices]
        batch_channel = [per_channel[i] for i in indices]
        if _use_kernels(device):
            results = fused_multi_quantize.fused_multi_fake_quantize(batch, batch_fmts, batch_channel)
        else:
            results = _reference(batch, batch_fmts, batch_channel)
        for i, result in zip(indices, results):
            out[i] = result
    lone = _reference([weights[i] for i in alone], [fmts[i] for i in alone], [per_channel[i] for i in alone])
    for i, result in zip(alone, lone):
        out[i] = result
    return out  # type: ignore[return-value]


def _distributed_world_size() -> int:
    distributed = torch.distributed
    return distributed.get_world_size() if distributed.is_available() and distributed.is_initialized() else 1


class _GroupedFakeQuantize(torch.autograd.Function):
    """Q(w) of many weights as one autograd node. Under abs-max scaling nothing saturates, so the
    straight-through gradient of each weight is its output's gradient, unchanged."""

    @staticmethod
    def forward(ctx, fmts: tuple[NumberFormat, ...], per_channel: tuple[bool, ...],  # type: ignore[override]
                *weights: torch.Tensor):
        ctx.set_materialize_grads(False)  # an unused Q(w) passes None, not a zero tensor
        return tuple(quantize_weights(weights, fmts, per_channel))

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None):  # type: ignore[override]
        return (None, None, *grads)


class WeightQuantizerGroup(ForwardScoped):
    """Quantizes the weights of `layers` in one batch at the start of each forward of `model`
    (see the module docstring). `remove()` takes the hooks off again."""

    key = "_fliqs_weight_group"

    def __init__(self, model: nn.Module, layers: Sequence[QuantModule]) -> None:
        self.layers = tuple(layers)
        # Modules with HF's gradient_checkpointing switch, found once: asking the model
        # (is_activation_checkpointing) walks every module at every forward.
        self._checkpointing_switches = [module for module in model.modules()
                                        if isinstance(vars(module).get("gradient_checkpointing"), bool)]
        self._grouped: list[QuantModule] = []
        super().__init__(model)

    def groupable(self) -> list[QuantModule]:
        """The layers whose weight this forward would quantize in the batch.

        Not under DDP (world size > 1) in mode auto: all weights' gradients would be ready only
        at the end of backward, which stops DDP from overlapping its all-reduce with it. Only
        weights that train (a frozen one would get a gradient computed for nothing) and have no
        gradient yet: with gradient accumulation the later micro-batches' weight gradients would
        otherwise all wait for the end of backward, beside the accumulated ones. Not with HF
        gradient checkpointing: the Q(w) of checkpointed layers would stay in memory through the
        backward (they are views of one buffer that unchecked layers keep), which checkpointing
        is there to avoid."""
        mode = _mode
        if self.paused or mode is GroupMode.OFF or not torch.is_grad_enabled():
            return []
        # Under torch.func transforms (per-sample gradients, Hessians) the per-layer path, which
        # supports them and gives the same numbers: the batch saves host work in training steps
        # only, and its weights may be batched per sample, which one batch cannot scale per layer.
        if torch._C._are_functorch_transforms_active():
            return []
        if mode is GroupMode.AUTO and (not fused_quantize.is_available() or _distributed_world_size() > 1):
            return []
        if any(module.gradient_checkpointing for module in self._checkpointing_switches):
            return []
        # Run at every forward, for every layer: plain attribute reads, no format hashing.
        chosen = []
        for layer in self.layers:
            state = vars(layer)
            weight = state["_parameters"].get("weight")  # layer.weight, without Module.__getattr__
            granularity = state["weight_granularity"]
            if (weight is not None and state.get("_prequantized_for") is None
                    and (granularity is Granularity.PER_TENSOR
                         or (granularity is Granularity.PER_CHANNEL and layer.weight_channel_dim == 0))
                    and state["weight_range_percentile"] >= 100.0 and _groupable_format_of(state)
                    and weight.requires_grad and weight.grad is None
                    and (mode is GroupMode.ALWAYS or weight.is_cuda)):
                chosen.append(layer)
        return chosen

    def _before_forward(self, module: nn.Module, args: tuple) -> None:
        if self.paused:
            return
        self._clear()
        if module is not self.model:  # a DataParallel replica: its layers are copies, left per-layer
            return
        layers = self.groupable()
        if len(layers) < 2:  # one layer gains nothing from a batch
            return
        fmts = tuple(vars(layer)["_weight_format"] for layer in layers)
        granularities = [vars(layer)["weight_granularity"] for layer in layers]
        per_channel = tuple(granularity is Granularity.PER_CHANNEL for granularity in granularities)
        weights = [vars(layer)["_parameters"]["weight"] for layer in layers]
        quantized = _GroupedFakeQuantize.apply(fmts, per_channel, *weights)
        for layer, fmt, granularity, weight, value in zip(layers, fmts, granularities, weights, quantized):
            # read by QuantModule.quantized_weight
            layer.__dict__["_grouped_weight"] = GroupedWeight.of(fmt, granularity, weight, value)
        self._grouped = layers

    def _clear(self) -> None:
        for layer in self._grouped:
            layer.__dict__.pop("_grouped_weight", None)
        self._grouped = []


def install(model: nn.Module, layers: Sequence[QuantModule]) -> WeightQuantizerGroup:
    """Group the weights of `layers` at every forward of `model`, replacing an earlier group."""
    return attach(model, WeightQuantizerGroup, layers)


def uninstall(model: nn.Module) -> None:
    detach(model, WeightQuantizerGroup)


def paused(model: nn.Module) -> contextlib.AbstractContextManager[None]:
    """Keep `model`'s group from grouping during the block (an export that swaps layers and
    traces the forward)."""
    return forward_scoped.paused(model, WeightQuantizerGroup)
