"""Model surgery: swap selected float layers for their quantized subclasses, and back.

The swap shares the float layer's parameters (no copy), so a quantized model's `state_dict`
has exactly the original keys and values, and `save_pretrained` writes a float checkpoint.
The quantized layer takes over the float layer's hooks (the same dictionaries: they keep firing,
and handles from before the swap still remove them) and its other attributes; a subclass of
Linear/Conv2d/Conv1D that keeps its forward (HF EfficientNet's depthwise conv) becomes a class
derived from both (`quant.quant_module.quantized_subclass`), so isinstance and its methods hold.
dequantize_model gives back the original class, hooks included.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.utils import parametrize
from transformers.pytorch_utils import Conv1D

from quant import input_share, weight_group
from quant.formats import NumberFormat, parse_format
from quant.quant_conv2d import QuantConv2d
from quant.quant_linear import QuantConv1D, QuantLinear
from quant.quant_module import QuantConfig, QuantModule, quantized_subclass

# Most specific float class first: QuantLinear must not swallow a Conv1D (it is not a Linear,
# but order keeps the rule obvious if that ever changes).
QUANTIZED_CLASS_FOR: tuple[tuple[type[nn.Module], type[QuantModule]], ...] = (
    (Conv1D, QuantConv1D),
    (nn.Conv2d, QuantConv2d),
    (nn.Linear, QuantLinear),
)
QUANTIZABLE_TYPES = tuple(float_cls for float_cls, _ in QUANTIZED_CLASS_FOR)
# What the quantized class re-implements: a subclass overriding any of these would lose that
# behaviour in the swap (QuantConv2d's forward calls _conv_forward itself).
_FORWARD_METHODS: dict[type[nn.Module], tuple[str, ...]] = {
    Conv1D: ("forward",), nn.Conv2d: ("forward", "_conv_forward"), nn.Linear: ("forward",)}


def _class_pair(module: nn.Module) -> tuple[type[nn.Module], type[QuantModule]] | None:
    """(float class, quantized class) of the first entry of QUANTIZED_CLASS_FOR `module` is an
    instance of (read at each call: an entry added in front of it counts)."""
    return next(((float_cls, quant_cls) for float_cls, quant_cls in QUANTIZED_CLASS_FOR
                 if isinstance(module, float_cls)), None)


def _float_class(module: nn.Module) -> type[nn.Module] | None:
    pair = _class_pair(module)
    return None if pair is None else pair[0]


def _overridden_forward(module: nn.Module, float_cls: type[nn.Module]) -> str | None:
    """The first forward method `module`'s class overrides from `float_cls`, if any."""
    return next((name for name in _FORWARD_METHODS.get(float_cls, ("forward",))
                 if getattr(type(module), name) is not getattr(float_cls, name)), None)


def _computed_tensor(module: nn.Module) -> str | None:
    """'weight' or 'bias' where `module` computes it from other tensors instead of holding it as a
    Parameter (torch.nn.utils.parametrize, the older weight_norm and spectral_norm hooks)."""
    if parametrize.is_parametrized(module):
        return next(iter(module.parametrizations))  # type: ignore[union-attr]
    return next((name for name in ("weight", "bias") if name not in module._parameters), None)


def _why_not_quantizable(module: nn.Module) -> str | None:
    """Why `module` cannot be swapped for a quantized layer: the end of a sentence that starts
    with the layer's name; None where it can. Whether its parent calls it is checked by
    `quantizable_layer_names` / `quantize_model`."""
    kind = type(module).__name__
    if isinstance(module, QuantModule):
        return "is already quantized; quantize a model only once"
    float_cls = _float_class(module)
    if float_cls is None:
        return f"is a {kind}, not a Linear, Conv2d or GPT-2 Conv1D"
    if isinstance(module, LazyModuleMixin):
        return (f"is a {kind}, whose parameters are not initialised yet: run one forward pass first (it then "
                f"becomes a {float_cls.__name__}), or leave it out of the spec")
    computed = _computed_tensor(module)
    if computed is not None:
        return (f"computes its {computed} from other tensors (torch.nn.utils.parametrize, weight_norm or "
                f"spectral_norm), which a quantized layer cannot hold: remove the parametrization first "
                f"(torch.nn.utils.parametrize.remove_parametrizations, torch.nn.utils.remove_weight_norm), or "
                f"leave it out of the spec")
    overridden = _overridden_forward(module, float_cls)
    if overridden is not None:
        return (f"is a {kind}, a {float_cls.__name__} subclass with its own {overridden}: the quantized layer "
                f"would drop that behaviour; leave it out of the spec, or write a quantized class for it "
                f"(docs/extending.md)")
    if "forward" in vars(module):  # e.g. accelerate's hooks: the swapped layer would run the old forward
        return ("has its forward replaced on the instance (e.g. by accelerate's hooks), which the quantized "
                "layer would keep calling; remove it first, or leave the layer out of the spec")
    if type(module) is not float_cls:
        try:
            quantized_subclass(_class_pair(module)[1], type(module))  # type: ignore[index]
        except TypeError as error:  # e.g. an inconsistent method resolution order
            return (f"is a {kind}, a {float_cls.__name__} subclass from which no quantized class can be derived "
                    f"({error}); leave it out of the spec, or write a quantized class for it (docs/extending.md)")
    return None


def is_quantizable(module: nn.Module) -> bool:
    """A Linear, Conv2d or GPT-2 Conv1D, or a subclass that keeps its forward (a subclass with its
    own, e.g. a weight-standardised conv, would lose it in the swap), holding its parameters (not
    lazy, not parametrized). Not already quantized. Whether its parent calls it is checked by
    `quantizable_layer_names` / `quantize_model`."""
    return _why_not_quantizable(module) is None


def _read_by_parent(model: nn.Module) -> set[int]:
    """ids of the Linear children of nn.MultiheadAttention: its functional path reads out_proj's
    weight and bias directly, never calling its forward, so a quantized out_proj would change
    nothing while its cost was counted."""
    return {id(sub) for _, module in model.named_modules() if isinstance(module, nn.MultiheadAttention)
            for sub in module.children() if isinstance(sub, nn.Linear)}


def _format_pair(what: str, pair: object) -> tuple[NumberFormat, NumberFormat]:
    """(weight format, activation format) from a pair of formats or tokens."""
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:  # "int4" would unpack as "i", "n", ...
        raise ValueError(f"{what} must be a (weight format, activation format) pair, e.g. ('int4', 'int8'), "
                         f"got {pair!r}")
    return parse_format(pair[0]), parse_format(pair[1])


@dataclass(frozen=True)
class QuantSpec:
    """Which layers to quantize and how.

    layer_names: the layers to replace (module names as in `model.named_modules()`). A module
        registered under several names (shared) may be named by any of them, once.
    config: formats and scale options for every selected layer.
    layer_formats: optional per-layer (weight_format, act_format) overriding config's formats,
        e.g. a searched assignment re-applied with --load_config.
    """

    layer_names: Sequence[str]
    config: QuantConfig = field(default_factory=QuantConfig)
    layer_formats: Mapping[str, tuple[NumberFormat, NumberFormat]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.layer_names, str):  # tuple("fc") would be ("f", "c")
            raise TypeError(f"QuantSpec.layer_names must be a sequence of layer names, got the string "
                            f"{self.layer_names!r}; write [{self.layer_names!r}]")
        object.__setattr__(self, "layer_names", tuple(self.layer_names))
        not_names = [n for n in self.layer_names if not isinstance(n, str)]
        if not_names:
            raise TypeError(f"QuantSpec.layer_names must hold module names (strings), got {not_names[0]!r}")
        duplicates = sorted({n for n in self.layer_names if self.layer_names.count(n) > 1})
        if duplicates:
            raise ValueError(f"layers listed more than once: {duplicates}")
        unknown = sorted(set(self.layer_formats) - set(self.layer_names))
        if unknown:
            raise ValueError(f"layer_formats names layers that are not selected for quantization: {unknown}")
        object.__setattr__(self, "layer_formats", {
            name: _format_pair(f"layer_formats[{name!r}]", pair) for name, pair in self.layer_formats.items()})


def quantizable_layer_names(model: nn.Module) -> list[str]:
    """The layers `quantize_model` can quantize, in module order. A module registered under
    several names (shared) is listed once, under its first name."""
    skipped = _read_by_parent(model)
    return [name for name, module in model.named_modules()
            if name and is_quantizable(module) and id(module) not in skipped]


def _quantized_copy(module: nn.Module, config: QuantConfig) -> QuantModule:
    """The quantized layer that replaces `module` (one `_why_not_quantizable` accepts): of its own
    subclass where it is one (`quantized_subclass`), with its hooks and attributes."""
    pair = _class_pair(module)
    if pair is None:
        raise TypeError(f"no quantized class for {type(module).__name__}")
    float_cls, quant_cls = pair
    new = quant_cls.from_float(module, config)  # type: ignore[attr-defined]
    if type(module) is not float_cls:
        new.__class__ = quantized_subclass(quant_cls, type(module))
    return new


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _replace_every_path(model: nn.Module, replacement: Callable[[nn.Module], nn.Module | None]) -> None:
    """Put `replacement(module)` (built once per module) at every name of each module it returns a
    layer for: a module registered under several names (shared) stays one object, at all of them."""
    built: dict[int, nn.Module | None] = {}
    for name, module in list(model.named_modules(remove_duplicate=False)):
        if name:  # the model itself has no parent to hold a replacement
            if id(module) not in built:
                built[id(module)] = replacement(module)
            new = built[id(module)]
            if new is not None:
                _set_submodule(model, name, new)


def quantize_model(model: nn.Module, spec: QuantSpec) -> tuple[nn.Module, dict[str, QuantModule]]:
    """Replace the layers in `spec` in place; return the model and an ordered name -> layer map
    (in `named_modules` order, whatever order `spec.layer_names` had). A module registered under
    several names (shared) becomes one quantized layer at every one of them, keyed in the map (as
    in `quantized_layers` and the cost) by its first name in `named_modules` order."""
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"quantize_model takes a QuantSpec (the layer names and their QuantConfig), got "
                        f"{type(spec).__name__}; e.g. QuantSpec(['fc'], QuantConfig('int8', 'int8'))")
    paths = dict(model.named_modules(remove_duplicate=False))  # every name of every module
    read_by_parent = _read_by_parent(model)
    spec_name: dict[int, str] = {}  # the name the spec gives each selected module
    weight_owner: dict[int, str] = {}  # id(weight parameter) -> the selected layer holding it
    for name in spec.layer_names:
        if name not in paths:
            raise ValueError(f"no module named {name!r} in {type(model).__name__}; "
                             f"quantizable layers are e.g. {quantizable_layer_names(model)[:5]}")
        module = paths[name]
        if not name:
            raise ValueError(f"the model itself is a {type(module).__name__}; quantize a module that holds it, e.g. "
                             f"nn.Sequential(model)")
        if id(module) in spec_name:
            raise ValueError(f"layers {spec_name[id(module)]!r} and {name!r} are one module registered under both "
                             f"names; list it once (it is quantized under every name)")
        why_not = _why_not_quantizable(module)
        if why_not is not None:
            raise ValueError(f"layer {name!r} {why_not}")
        if id(module) in read_by_parent:
            raise ValueError(f"layer {name!r} belongs to an nn.MultiheadAttention, which reads its weight directly "
                             f"instead of calling it: quantizing it would change nothing; leave it out of the spec")
        tied = weight_owner.get(id(module.weight))
        if tied is not None:
            raise ValueError(f"layers {tied!r} and {name!r} share one weight tensor (tied weights): the cost would "
                             f"count it twice and the search could give it two formats; quantize one of them, or "
                             f"untie them first (model.{name}.weight = nn.Parameter(model.{name}.weight.detach().clone()))")
        weight_owner[id(module.weight)] = name
        spec_name[id(module)] = name

    def quantized(module: nn.Module) -> QuantModule | None:
        name = spec_name.get(id(module))
        if name is None:
            return None
        config = spec.config
        if name in spec.layer_formats:
            weight_format, act_format = spec.layer_formats[name]
            config = replace(config, weight_format=weight_format, act_format=act_format)
        return _quantized_copy(module, config)

    _replace_every_path(model, quantized)
    layers = quantized_layers(model)
    weight_group.install(model, list(layers.values()))  # one batch of weight quantization per forward
    input_share.install(model, list(layers.values()))  # one quantization per input read by several layers
    return model, layers


def quantized_layers(model: nn.Module) -> dict[str, QuantModule]:
    """Every quantized layer of `model`, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantModule)}


def has_low_bit_layers(layers: Mapping[str, QuantModule]) -> bool:
    """Whether some layer's weights or inputs leave float (not every format 'none')."""
    return any(layer.weight_format.quantizes or layer.act_format.quantizes for layer in layers.values())


def dequantize_model(model: nn.Module) -> nn.Module:
    """Swap every quantized layer back to its float class (parameters shared), at every name."""
    weight_group.uninstall(model)
    input_share.uninstall(model)
    _replace_every_path(model, lambda module: module.to_float()  # type: ignore[attr-defined]
                        if isinstance(module, QuantModule) else None)
    return model


def set_layer_formats(layers: Mapping[str, QuantModule],
                      formats: Mapping[str, tuple[NumberFormat, NumberFormat]]) -> None:
    """Set (weight_format, act_format) per layer name; every name must be a quantized layer."""
    for name, pair in formats.items():
        layer = layers.get(name)
        if layer is None:
            raise KeyError(f"{name!r} is not a quantized layer")
        if type(pair) is not tuple or len(pair) != 2:  # the search passes 2-tuples every step: no message built
            pair = _format_pair(f"the formats of layer {name!r}", pair)
        layer.set_formats(*pair)  # parses each format (a NumberFormat passes through)


def record_geometry(model: nn.Module, example_inputs: Mapping, layers: Mapping[str, QuantModule] | None = None) -> None:
    """Record every quantized layer's MACs per sample from one forward pass (in eval mode, without
    gradients) on `example_inputs`, the keyword arguments of the model's forward. A layer called
    more than once in that forward (applied in a loop, or shared) counts every call; each call's
    MACs are for one sample of its input's leading (batch) dimension. On an error, every layer
    keeps its earlier geometry and every module its training mode."""
    if not isinstance(example_inputs, Mapping):
        raise TypeError(f"record_geometry takes the example inputs as a mapping of the model's keyword arguments, "
                        f"got a {type(example_inputs).__name__}; pass e.g. {{'pixel_values': x}} or "
                        f"{{'input_ids': ids}}")
    layers = quantized_layers(model) if layers is None else layers
    previous = {name: layer.macs_per_sample for name, layer in layers.items()}
    modes = [(module, module.training) for module in model.modules()]
    recorded = False
    try:
        for layer in layers.values():
            layer.macs_per_sample = None
            vars(layer)["_summing_geometry"] = True
        model.eval()
        with torch.no_grad():
            model(**example_inputs)
        missing = [name for name, layer in layers.items() if layer.macs_per_sample is None]
        if missing:
            raise RuntimeError(f"layers not reached by the example forward pass (no cost geometry): {missing[:5]}")
        recorded = True
    finally:
        for layer in layers.values():
            vars(layer).pop("_summing_geometry", None)
        model.train(modes[0][1])
        for module, training in modes:  # submodules whose mode differed from the model's (a frozen BatchNorm)
            if module.training != training:
                module.training = training
        if not recorded:
            for name, layer in layers.items():
                layer.macs_per_sample = previous[name]
