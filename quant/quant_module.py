"""What every quantized layer shares: its formats, how it scales, and what it costs.

A quantized layer is a subclass of the float layer it replaces (so `state_dict` keys, HF
`save_pretrained` and optimizers see the same parameters) mixed with `QuantModule`. The search
changes `weight_format` / `act_format` between steps; nothing is re-allocated.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
from torch import nn

from quant.formats import NO_QUANT, NumberFormat, parse_format
from quant.quant_utils import quantize
from quant.scales import Granularity, check_range_percentile

BYTES_PER_MIB = 2**20
_NO_HOOKS = nullcontext()
BOPS_PER_GBOPS = 1e9


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
        for name in ("per_channel", "per_token"):
            value = getattr(self, name)
            if not isinstance(value, bool):  # a truthy "no" would silently switch the granularity
                raise TypeError(f"QuantConfig.{name} must be True or False, got {value!r}")
        check_range_percentile(self.weight_range_percentile, "weight_range_percentile")
        check_range_percentile(self.act_range_percentile, "act_range_percentile")


def _version(weight: torch.Tensor) -> int | None:
    """The version counter of `weight`; None for an inference tensor (made under
    torch.inference_mode), which has none and cannot be changed outside that mode."""
    return None if weight.is_inference() else weight._version


class GroupedWeight(NamedTuple):
    """Q(weight) computed ahead of a layer's forward (quant/weight_group.py), with what it was
    computed from: the format, the scale granularity, the weight Parameter and its version counter."""

    fmt: NumberFormat
    granularity: Granularity
    weight: torch.Tensor
    version: int | None
    value: torch.Tensor

    @classmethod
    def of(cls, fmt: NumberFormat, granularity: Granularity, weight: torch.Tensor,
           value: torch.Tensor) -> "GroupedWeight":
        return cls(fmt, granularity, weight, _version(weight), value)

    def is_current(self, fmt: NumberFormat, granularity: Granularity, weight: torch.Tensor) -> bool:
        """Whether it was computed from this format, granularity and weight, unchanged since."""
        return (self.fmt is fmt and self.granularity is granularity and self.weight is weight
                and self.version == _version(weight))


class InputShareLike(Protocol):
    """What a layer asks of quant.input_share.InputShare (which imports this module)."""

    def quantize(self, layer: "QuantModule", x: torch.Tensor) -> torch.Tensor: ...

    def saved_input_hooks(self, x_q: torch.Tensor) -> AbstractContextManager: ...


class FormatAttribute:
    """A layer's format, parsed on assignment: a token ("int8") works and a bad one fails there
    rather than at the next forward, which only reads the stored NumberFormat (`_<name>`)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.stored = f"_{name}"

    def __get__(self, layer: object, owner: type | None = None) -> NumberFormat:
        if layer is None:
            return self  # type: ignore[return-value]
        return layer.__dict__[self.stored]

    def __set__(self, layer: object, fmt: NumberFormat | str | int) -> None:
        layer.__dict__[self.stored] = parse_format(fmt)


class QuantModule:
    """Mixin for nn.Linear / nn.Conv2d / Conv1D subclasses. Subclasses define the class
    attributes below and call `_init_quant` after the float layer's own initialisation."""

    weight_channel_dim: int  # output-channel dimension of `weight` (per-channel scales)
    act_feature_dim: int  # feature dimension of the input (per-token scales reduce over it)
    weight: nn.Parameter
    # Each subclass defines macs_for_input_shape(input_shape) -> int: MACs for one sample whose
    # input (batch dimension included) has that shape.

    _weight_format: NumberFormat
    _act_format: NumberFormat
    # (format, weight Parameter, its version counter) when the weight was marked prequantized.
    _prequantized_for: tuple[NumberFormat, torch.Tensor, int | None] | None
    # Q(weight) computed with every other layer's at the start of the model's forward
    # (quant/weight_group.py), set for the length of that forward only.
    _grouped_weight: GroupedWeight | None = None
    # The model's InputShare (quant/input_share.py), set for the length of each model forward only:
    # layers reading the same input take one range and, at the same format, one quantized tensor.
    _input_share: "InputShareLike | None" = None
    # True during quant.surgery.record_geometry's forward only: each call adds its MACs (a layer
    # applied twice per forward costs twice). Otherwise the first forward's geometry stays.
    _summing_geometry: bool = False
    # The float layer's own subclass, for a class made by `quantized_subclass`: to_float returns one.
    _float_subclass: type[nn.Module] | None = None

    def _init_quant(self, config: QuantConfig) -> None:
        if not isinstance(config, QuantConfig):  # a dict would fail later as an AttributeError
            raise TypeError(f"{type(self).__name__} takes its formats and scale options as a QuantConfig, got a "
                            f"{type(config).__name__} ({config!r}); write e.g. QuantConfig('int4', 'int8', "
                            f"per_channel=True)")
        self.weight_format = config.weight_format
        self.act_format = config.act_format
        self.weight_granularity = Granularity.PER_CHANNEL if config.per_channel else Granularity.PER_TENSOR
        self.act_granularity = Granularity.PER_TOKEN if config.per_token else Granularity.PER_TENSOR
        self.weight_range_percentile = config.weight_range_percentile
        self.act_range_percentile = config.act_range_percentile
        # MACs for one sample, from the first forward or `set_input_shape`; during
        # quant.surgery.record_geometry, summed over every call of the layer in that forward (a
        # plain forward cannot tell a second call from the next batch's: it keeps the first).
        self.macs_per_sample: int | None = None
        self.weight_prequantized = False

    weight_format = FormatAttribute()
    act_format = FormatAttribute()

    @property
    def weight_prequantized(self) -> bool:
        """True while `weight` holds Q(w) for the current `weight_format` (a checkpoint loaded
        from its low-bit form): then the forward uses it as is, since re-quantizing would
        recompute the scale from Q(w) and could move values by an ulp. Setting it True records
        the format and the weight's version counter; the mark lapses (the layer quantizes again)
        while the format differs, and for good once the weight is updated in place
        (load_state_dict, copy_, a non-fused optimizer step), another Parameter is assigned, or
        the layer runs a forward in training mode (fused optimizers do not bump the version
        counter). Writes through `weight.data` bypass all of these: set it False after those."""
        mark = self._prequantized_for
        if mark is None:
            return False
        fmt, weight, version = mark
        return fmt == self._weight_format and weight is self.weight and _version(weight) == version

    @weight_prequantized.setter
    def weight_prequantized(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"weight_prequantized must be True or False, got {value!r}")
        self._prequantized_for = (self._weight_format, self.weight, _version(self.weight)) if value else None

    def __setstate__(self, state: dict) -> None:
        # deepcopy and pickle give the copy a new weight Parameter (version counter 0) holding the
        # same values: a copy of a prequantized layer is prequantized too.
        super().__setstate__(state)  # type: ignore[misc]
        mark = self.__dict__.get("_prequantized_for")
        if mark is not None and mark[1] is self.weight:
            self._prequantized_for = (mark[0], self.weight, _version(self.weight))

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

    @classmethod
    def _check_float_layer(cls, module: object, float_class: type[nn.Module]) -> None:
        """from_float's first step: TypeError unless `module` is a float `float_class` (or a
        subclass of it); a mismatched layer would fail at its first forward, or not at all."""
        if isinstance(module, QuantModule):
            raise TypeError(f"{cls.__name__}.from_float got a {type(module).__name__}, which is already quantized; "
                            "set its weight_format/act_format instead, or call its to_float() first")
        if not isinstance(module, float_class):
            raise TypeError(f"{cls.__name__}.from_float takes a {float_class.__module__}.{float_class.__name__} (or a "
                            f"subclass), got {type(module).__name__}; quant.surgery.quantize_model picks the quantized "
                            "class of each layer")

    def _finish_from_float(self, module: nn.Module) -> None:
        """from_float's last step: the float layer's hooks and other state (`carry_module_state`)."""
        carry_module_state(module, self)

    def _finish_to_float(self, plain: nn.Module) -> nn.Module:
        """to_float's last step: the float layer's own subclass again, with the hooks and other
        state (none of the quantized layer's own)."""
        if self._float_subclass is not None:
            plain.__class__ = self._float_subclass
        carry_module_state(self, plain, skip=QUANT_ATTRIBUTES)  # type: ignore[arg-type]
        return plain

    def set_formats(self, weight_format: NumberFormat | str | int, act_format: NumberFormat | str | int) -> None:
        weight_format, act_format = parse_format(weight_format), parse_format(act_format)  # both or neither
        # Into the attributes' stored slots, past nn.Module.__setattr__: its checks for
        # parameters, modules and buffers cost ~1.5 us per assignment, and a search sets every
        # layer's formats at every step (BERT-base: 74 layers).
        vars(self).update(_weight_format=weight_format, _act_format=act_format)

    def quantized_weight(self) -> torch.Tensor:
        grouped = self._grouped_weight
        # Only for the format and weight values it was computed from: a hook that ran after the
        # group's and changed the format, replaced the weight or changed it in place gets the
        # per-layer path.
        if grouped is not None and grouped.is_current(self._weight_format, self.weight_granularity, self.weight):
            return grouped.value
        if self._prequantized_for is not None:
            if self.training:  # training changes the weight, possibly without a version bump
                self._prequantized_for = None
            elif self.weight_prequantized:
                return self.weight
        return quantize(self.weight, self.weight_format, self.weight_granularity,
                        dim=self.weight_channel_dim, range_percentile=self.weight_range_percentile)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        share = self._input_share
        if share is not None:
            return share.quantize(self, x)
        return quantize(x, self.act_format, self.act_granularity,
                        dim=self.act_feature_dim, range_percentile=self.act_range_percentile)

    def saved_input_hooks(self, x_q: torch.Tensor) -> AbstractContextManager:
        """The context of the layer's matmul on `x_q` (from `quantize_input`): the input share's
        saved-tensor hooks where x_q is recomputed in the backward (quant/input_recompute.py)."""
        share = self._input_share
        return _NO_HOOKS if share is None else share.saved_input_hooks(x_q)

    # --- cost -------------------------------------------------------------------------------
    def set_input_shape(self, input_shape: tuple[int, ...]) -> None:
        self.macs_per_sample = self.macs_for_input_shape(tuple(input_shape))  # type: ignore[attr-defined]

    def _record_geometry(self, x: torch.Tensor) -> None:
        if self.macs_per_sample is None:
            self.set_input_shape(tuple(x.shape))
        elif self._summing_geometry:
            self.macs_per_sample += self.macs_for_input_shape(tuple(x.shape))  # type: ignore[attr-defined]

    def memory_cost(self) -> float:
        """MiB of this layer's weights stored at weight_format.bits."""
        return self.weight.numel() * self.weight_format.bits / 8 / BYTES_PER_MIB

    def compute_cost(self) -> float:
        """GBOPs per sample: MACs x weight bits x activation bits / 1e9."""
        if self.macs_per_sample is None:
            raise RuntimeError(
                f"{type(self).__name__} has no recorded input geometry: call quant.surgery.record_geometry(model, "
                "example_inputs) before asking for its compute cost (a plain forward records a layer's first call "
                "only, too few MACs for a layer called more than once per forward), or set_input_shape"
            )
        return self.macs_per_sample * self.weight_format.bits * self.act_format.bits / BOPS_PER_GBOPS

    def extra_repr(self) -> str:
        base = super().extra_repr()  # type: ignore[misc]
        return (f"{base}, weight_format={self.weight_format.name}, act_format={self.act_format.name}, "
                f"weight_scale={self.weight_granularity.value}, act_scale={self.act_granularity.value}")


# nn.Module's hook dictionaries (and the flag of full backward hooks), read from torch itself.
HOOK_ATTRIBUTES = tuple(name for name in vars(nn.Module()) if "hook" in name)
# What `_init_quant` and the per-step code set on a quantized layer: not carried back to a float layer.
QUANT_ATTRIBUTES = frozenset({
    "_weight_format", "_act_format", "weight_granularity", "act_granularity", "weight_range_percentile",
    "act_range_percentile", "macs_per_sample", "_prequantized_for", "_grouped_weight", "_groupable_format",
    "_summing_geometry", "_input_share"})


def carry_module_state(source: nn.Module, target: nn.Module, skip: frozenset[str] = frozenset()) -> None:
    """Give `target`, a layer built to replace `source` (from_float / to_float), what else `source`
    holds: its hooks, as the same dictionaries (they keep firing, and a handle from before the swap
    still removes its hook), every attribute `target` lacks (set by a library, e.g. HF's
    `_is_hf_initialized`, or by a subclass's __init__) except `skip`, and any parameters, buffers
    and submodules beyond the layer's own."""
    state, own = vars(source), vars(target)
    for name in HOOK_ATTRIBUTES:
        if name in state:
            own[name] = state[name]
    for name, value in state.items():
        if name not in own and name not in skip:
            own[name] = value
    for registry in ("_parameters", "_buffers", "_modules"):
        for key, value in state[registry].items():
            own[registry].setdefault(key, value)
    own["_non_persistent_buffers_set"] = own["_non_persistent_buffers_set"] | state["_non_persistent_buffers_set"]


_QUANTIZED_SUBCLASSES: dict[tuple[type, type], type] = {}


def quantized_subclass(quant_cls: type[QuantModule], float_subclass: type[nn.Module]) -> type[QuantModule]:
    """The quantized class of a subclass of quant_cls's float layer (e.g. HF EfficientNet's
    depthwise Conv2d): a subclass of both, so the swapped layer is still an instance of its class
    and keeps its methods, while quant_cls's forward runs. One class per pair, made once; its
    instances pickle and deepcopy through `_new_quantized_subclass_instance`. The subclass must
    not override the forward (quant.surgery refuses those)."""
    key = (quant_cls, float_subclass)
    cls = _QUANTIZED_SUBCLASSES.get(key)
    if cls is None:
        name = f"Quant{float_subclass.__name__}"
        cls = type(name, (quant_cls, float_subclass), {
            "__module__": __name__, "__qualname__": name, "_float_subclass": float_subclass,
            "__reduce_ex__": _reduce_quantized_subclass_instance})
        _QUANTIZED_SUBCLASSES[key] = cls
    return cls


def _new_quantized_subclass_instance(quant_cls: type[QuantModule], float_subclass: type[nn.Module]) -> QuantModule:
    cls = quantized_subclass(quant_cls, float_subclass)
    return cls.__new__(cls)  # type: ignore[call-overload]


def _reduce_quantized_subclass_instance(self: QuantModule, protocol: int) -> tuple:
    # The class is made at run time and cannot be found by name: rebuild it from its two bases.
    reduced = object.__reduce_ex__(self, max(protocol, 2))  # (copyreg.__newobj__, (cls,), state, ...)
    cls = type(self)
    return (_new_quantized_subclass_instance, (cls.__bases__[0], cls._float_subclass)) + tuple(reduced[2:])


def new_without_allocation(cls: type[nn.Module], *args, **kwargs) -> nn.Module:
    """Build a layer on the meta device: its parameters are replaced by the float layer's own."""
    with torch.device("meta"):
        return cls(*args, **kwargs)
