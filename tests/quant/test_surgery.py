import copy
import pickle
import re

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from quant.formats import parse_format
from quant.quant_conv2d import QuantConv2d
from quant.quant_linear import QuantConv1D, QuantLinear
from quant.quant_module import QuantConfig
from quant.surgery import (
    QUANTIZED_CLASS_FOR,
    QuantSpec,
    dequantize_model,
    quantizable_layer_names,
    quantize_model,
    quantized_layers,
    record_geometry,
    set_layer_formats,
)

INT4, INT8 = parse_format("int4"), parse_format("int8")


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.ReLU(), nn.BatchNorm2d(4))
        self.proj = Conv1D(6, 4)
        self.head = nn.Linear(6, 3)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        h = self.block(self.stem(pixel_values)).mean(dim=(2, 3))  # (B, 4)
        return self.head(self.proj(h.unsqueeze(1)).squeeze(1))


def make() -> Tiny:
    torch.manual_seed(0)
    return Tiny()


def test_quantizable_names_in_module_order():
    assert quantizable_layer_names(make()) == ["stem", "block.0", "proj", "head"]


def test_surgery_replaces_exactly_the_selected_layers():
    model = make()
    _, layers = quantize_model(model, QuantSpec(["head", "stem", "proj"], QuantConfig(INT8, INT8)))
    assert list(layers) == ["stem", "proj", "head"]  # model order, not spec order
    assert type(model.stem) is QuantConv2d and type(model.block[0]) is nn.Conv2d
    assert type(model.proj) is QuantConv1D and type(model.head) is QuantLinear
    assert all(layer.weight_format == INT8 for layer in layers.values())


def test_none_everywhere_equals_float_model_bitwise():
    x = torch.randn(2, 3, 8, 8)
    float_model = make().eval()
    quant_model, _ = quantize_model(make().eval(), QuantSpec(quantizable_layer_names(make())))
    assert torch.equal(float_model(x), quant_model(x))


def test_state_dict_round_trip_between_float_and_quantized():
    float_model = make()
    quant_model, _ = quantize_model(make(), QuantSpec(quantizable_layer_names(make()), QuantConfig(INT4, INT8)))
    with torch.no_grad():
        for p in quant_model.parameters():
            p.add_(1.0)
    state = quant_model.state_dict()
    assert list(state) == list(float_model.state_dict())
    float_model.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(float_model.state_dict().values(), state.values()))
    fresh, _ = quantize_model(make(), QuantSpec(["stem"]))
    fresh.load_state_dict(float_model.state_dict())
    assert torch.equal(fresh.stem.weight, quant_model.stem.weight)


def test_per_layer_formats_and_set_layer_formats():
    model = make()
    spec = QuantSpec(["stem", "head"], QuantConfig(INT8, INT8, per_channel=True), layer_formats={"head": ("int4", "fp8_e4m3")})
    _, layers = quantize_model(model, spec)
    assert (layers["stem"].weight_format, layers["head"].weight_format) == (INT8, INT4)
    assert layers["head"].act_format == parse_format("fp8_e4m3")
    assert layers["head"].quant_config.per_channel
    set_layer_formats(layers, {"stem": (INT4, INT4)})
    assert model.stem.weight_format == INT4
    with pytest.raises(KeyError, match="'proj' is not a quantized layer"):
        set_layer_formats(layers, {"proj": (INT4, INT4)})


def test_dequantize_restores_float_classes_with_shared_parameters():
    model = make()
    weight = model.head.weight
    quantize_model(model, QuantSpec(quantizable_layer_names(model), QuantConfig(INT4)))
    dequantize_model(model)
    assert quantized_layers(model) == {}
    assert type(model.head) is nn.Linear and model.head.weight is weight and type(model.proj) is Conv1D


def test_record_geometry():
    model, layers = quantize_model(make(), QuantSpec(quantizable_layer_names(make())))
    record_geometry(model, {"pixel_values": torch.randn(1, 3, 8, 8)})
    assert {n: l.macs_per_sample for n, l in layers.items()} == {
        "stem": 8 * 8 * 4 * 27, "block.0": 8 * 8 * 4 * 9, "proj": 4 * 6, "head": 6 * 3}
    assert model.training  # restored


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(layer_names=["nope"]), r"no module named 'nope' in Tiny"),
        (dict(layer_names=["block.1"]), r"layer 'block.1' is a ReLU, not a Linear, Conv2d or GPT-2 Conv1D"),
    ],
)
def test_surgery_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        quantize_model(make(), QuantSpec(**kwargs))


def test_spec_errors():
    with pytest.raises(ValueError, match=r"layers listed more than once: \['stem'\]"):
        QuantSpec(["stem", "stem"])
    with pytest.raises(ValueError, match=r"not selected for quantization: \['head'\]"):
        QuantSpec(["stem"], layer_formats={"head": ("int4", "int4")})
    model, _ = quantize_model(make(), QuantSpec(["stem"]))
    with pytest.raises(ValueError, match="'stem' is already quantized"):
        quantize_model(model, QuantSpec(["stem"]))
    with pytest.raises(TypeError, match=r"^quantize_model takes a QuantSpec \(the layer names and their QuantConfig\), "
                                        r"got list; e.g. QuantSpec\(\['fc'\], QuantConfig\('int8', 'int8'\)\)$"):
        quantize_model(make(), ["stem"])


class WeightStandardizedConv2d(nn.Conv2d):
    """A Conv2d subclass with its own forward: a plain QuantConv2d would drop the standardisation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        return self._conv_forward(x, (w - w.mean(dim=(1, 2, 3), keepdim=True)) / w.std(dim=(1, 2, 3), keepdim=True),
                                  self.bias)


class PaddedConv2d(nn.Conv2d):
    def _conv_forward(self, x, weight, bias):
        return super()._conv_forward(torch.nn.functional.pad(x, (1, 1, 1, 1)), weight, bias)


class ScaledLinear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


class RenamedLinear(nn.Linear):
    """Keeps nn.Linear's forward: quantizable."""


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ws = WeightStandardizedConv2d(3, 4, 3)
        self.padded = PaddedConv2d(4, 4, 3)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.scaled = ScaledLinear(4, 4)
        self.renamed = RenamedLinear(4, 4)
        self.proj = Conv1D(4, 4)


def test_subclasses_with_their_own_forward_and_attention_projections_are_not_quantizable():
    assert quantizable_layer_names(Mixed()) == ["renamed", "proj"]
    _, layers = quantize_model(Mixed(), QuantSpec(["renamed", "proj"], QuantConfig(INT8)))
    assert isinstance(layers["renamed"], QuantLinear) and isinstance(layers["renamed"], RenamedLinear)
    assert type(layers["proj"]) is QuantConv1D


@pytest.mark.parametrize("name, match", [
    ("ws", r"layer 'ws' is a WeightStandardizedConv2d, a Conv2d subclass with its own forward: the quantized "
           r"layer would drop that behaviour; leave it out of the spec"),
    ("padded", r"layer 'padded' is a PaddedConv2d, a Conv2d subclass with its own _conv_forward"),
    ("scaled", r"layer 'scaled' is a ScaledLinear, a Linear subclass with its own forward"),
    ("attn.out_proj", r"layer 'attn.out_proj' belongs to an nn.MultiheadAttention, which reads its weight directly "
                      r"instead of calling it: quantizing it would change nothing; leave it out of the spec"),
    ("attn", r"layer 'attn' is a MultiheadAttention, not a Linear, Conv2d or GPT-2 Conv1D"),
])
def test_surgery_refuses_layers_it_would_break_or_not_reach(name, match):
    with pytest.raises(ValueError, match=match):
        quantize_model(Mixed(), QuantSpec([name]))


def test_attention_projection_is_skipped_at_the_top_level_too():
    assert quantizable_layer_names(nn.MultiheadAttention(4, 2)) == []
    assert quantizable_layer_names(nn.TransformerEncoderLayer(8, 2, 16)) == ["linear1", "linear2"]


def test_spec_needs_a_sequence_of_names():
    with pytest.raises(TypeError, match=r"QuantSpec.layer_names must be a sequence of layer names, got the string "
                                        r"'head'; write \['head'\]"):
        QuantSpec("head")
    with pytest.raises(TypeError, match=r"QuantSpec.layer_names must hold module names \(strings\), got 3"):
        QuantSpec(["head", 3])
    assert QuantSpec(("head", "stem")).layer_names == ("head", "stem")


class Twice(nn.Module):
    """One Linear applied to two inputs of different shapes in one forward."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.bn = nn.BatchNorm1d(8)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        y = self.lin(self.lin(x))  # (B, 8), twice
        return y if tokens is None else y.sum() + self.lin(tokens).sum()  # (B, 10, 8)


def test_record_geometry_counts_every_call_of_a_layer():
    model, layers = quantize_model(Twice(), QuantSpec(["lin"], QuantConfig(INT4, INT8)))
    record_geometry(model, {"x": torch.randn(2, 8)})
    assert layers["lin"].macs_per_sample == 2 * 64
    record_geometry(model, {"x": torch.randn(2, 8), "tokens": torch.randn(2, 10, 8)})
    assert layers["lin"].macs_per_sample == 2 * 64 + 10 * 64 == 768
    assert layers["lin"].compute_cost() == 768 * 4 * 8 / 1e9
    model(torch.randn(3, 8))  # outside record_geometry the recorded geometry stays
    assert layers["lin"].macs_per_sample == 768
    fresh = QuantLinear.from_float(nn.Linear(8, 8), QuantConfig())
    fresh(torch.randn(2, 8))
    fresh(torch.randn(2, 10, 8))
    assert fresh.macs_per_sample == 64  # without record_geometry: the first forward's (documented)


@pytest.mark.parametrize("inputs", [torch.randn(2, 8), (torch.randn(2, 8),), [torch.randn(2, 8)]])
def test_record_geometry_needs_keyword_inputs(inputs):
    model, _ = quantize_model(Twice(), QuantSpec(["lin"]))
    name = type(inputs).__name__
    with pytest.raises(TypeError, match=rf"^record_geometry takes the example inputs as a mapping of the model's "
                                        rf"keyword arguments, got a {name}; pass e.g. \{{'pixel_values': x\}}"):
        record_geometry(model, inputs)


def test_record_geometry_restores_modes_and_geometry_when_the_forward_fails():
    model, layers = quantize_model(Twice(), QuantSpec(["lin"]))
    record_geometry(model, {"x": torch.randn(2, 8)})
    model.bn.eval()  # a frozen BatchNorm in a training model keeps its own mode
    with pytest.raises(RuntimeError, match=r"mat1 and mat2 shapes cannot be multiplied"):
        record_geometry(model, {"x": torch.randn(2, 5)})
    assert model.training and model.lin.training and not model.bn.training
    assert layers["lin"].macs_per_sample == 128 and not layers["lin"]._summing_geometry
    model.eval()
    record_geometry(model, {"x": torch.randn(2, 8)})
    assert not model.training and not model.bn.training


def test_record_geometry_keeps_the_earlier_geometry_when_a_layer_is_not_reached():
    model = Twice()
    model.unused = nn.Linear(8, 8)
    model, layers = quantize_model(model, QuantSpec(["lin", "unused"]))
    layers["unused"].set_input_shape((1, 8))
    with pytest.raises(RuntimeError, match=r"layers not reached by the example forward pass \(no cost geometry\): "
                                           r"\['unused'\]"):
        record_geometry(model, {"x": torch.randn(2, 8)})
    assert layers["lin"].macs_per_sample is None and layers["unused"].macs_per_sample == 64


class Aliased(nn.Module):
    """One Linear under two names ('a' and 'b'), and one shared by two Sequentials."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.b = self.a
        shared = nn.Linear(8, 8)
        self.first = nn.Sequential(shared, nn.ReLU())
        self.second = nn.Sequential(nn.ReLU(), shared)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(self.b(x)))


@pytest.mark.parametrize("names", [["a", "first.0"], ["b", "second.1"], ["b", "first.0"]])
def test_a_shared_module_is_quantized_under_every_name(names):
    torch.manual_seed(0)
    model = Aliased()
    x = torch.randn(4, 8)
    shared = QuantLinear.from_float(model.first[0], QuantConfig(INT4, INT4))
    want = shared(torch.relu(shared(QuantLinear.from_float(model.a, QuantConfig(INT4, INT4))(x))))
    assert quantizable_layer_names(model) == ["a", "first.0"]  # each module once, by its first name
    _, layers = quantize_model(model, QuantSpec(names, QuantConfig(INT4, INT4)))
    assert list(layers) == ["a", "first.0"]
    assert type(model.a) is QuantLinear and model.b is model.a
    assert type(model.first[0]) is QuantLinear and model.second[1] is model.first[0]
    assert torch.equal(model(x), want)
    record_geometry(model, {"x": x})
    assert (layers["a"].macs_per_sample, layers["first.0"].macs_per_sample) == (64, 128)  # shared: called twice
    dequantize_model(model)
    assert type(model.a) is nn.Linear and model.b is model.a
    assert type(model.first[0]) is nn.Linear and model.second[1] is model.first[0]


def test_layers_with_tied_weights_are_refused():
    """Two layers sharing one weight Parameter: its cost would count twice and a search could
    give it two formats."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    model[2].weight = model[0].weight
    with pytest.raises(ValueError, match=r"^layers '0' and '2' share one weight tensor \(tied weights\): the cost "
                                         r"would count it twice and the search could give it two formats; quantize "
                                         r"one of them, or untie them first \(model.2.weight = "
                                         r"nn.Parameter\(model.2.weight.detach\(\).clone\(\)\)\)$"):
        quantize_model(model, QuantSpec(["0", "2"]))
    assert type(model[0]) is nn.Linear and type(model[2]) is nn.Linear  # nothing replaced
    _, layers = quantize_model(model, QuantSpec(["2"]))  # one of them is fine
    assert list(layers) == ["2"] and layers["2"].weight is model[0].weight


def test_a_shared_module_is_listed_once():
    with pytest.raises(ValueError, match=r"layers 'a' and 'b' are one module registered under both names; list it "
                                         r"once \(it is quantized under every name\)"):
        quantize_model(Aliased(), QuantSpec(["a", "b"]))
    _, layers = quantize_model(Aliased(), QuantSpec(["b"], QuantConfig(INT8), layer_formats={"b": ("int4", "int2")}))
    assert (layers["a"].weight_format, layers["a"].act_format) == (INT4, parse_format("int2"))


def test_the_model_itself_is_not_a_layer_of_itself():
    assert quantizable_layer_names(nn.Linear(4, 4)) == []
    with pytest.raises(ValueError, match=r"the model itself is a Linear; quantize a module that holds it, e.g. "
                                         r"nn.Sequential\(model\)"):
        quantize_model(nn.Linear(4, 4), QuantSpec([""]))



class TaggedLinear(nn.Linear):
    """A Linear subclass that keeps nn.Linear's forward, with an attribute and a method of its own."""

    def __init__(self, features: int, tag: str) -> None:  # not nn.Linear's signature
        super().__init__(features, features)
        self.tag = tag
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def describe(self) -> str:
        return f"{self.tag}: {self.in_features}"


class Hooked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.tagged = TaggedLinear(8, "mine")
        self.plain = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.plain(self.tagged(x))


def test_quantized_layers_keep_their_subclass_attributes_and_hooks():
    torch.manual_seed(0)
    model = Hooked()
    model.plain.note = "kept"
    x = torch.randn(3, 8)
    want = 2 * QuantLinear.from_float(model.plain, QuantConfig(INT4, INT8))(
        QuantLinear.from_float(model.tagged, QuantConfig(INT4, INT8))(x))
    seen = []
    handles = [model.tagged.register_forward_pre_hook(lambda m, args: seen.append(("pre", type(m).__name__))),
               model.plain.register_forward_hook(lambda m, args, out: out * 2),
               model.plain.register_forward_hook(lambda m, args, kwargs, out: seen.append(("kw", kwargs)),
                                                 with_kwargs=True)]
    _, layers = quantize_model(model, QuantSpec(["tagged", "plain"], QuantConfig(INT4, INT8)))
    tagged = layers["tagged"]
    assert isinstance(tagged, TaggedLinear) and isinstance(tagged, QuantLinear)
    assert type(tagged).__name__ == "QuantTaggedLinear" and tagged.describe() == "mine: 8"
    assert torch.equal(tagged.calls, torch.zeros((), dtype=torch.int64)) and list(tagged.state_dict()) == [
        "weight", "bias", "calls"]
    assert model.plain.note == "kept"
    assert torch.equal(model(x), want)  # the output hook still doubles
    assert seen == [("pre", "QuantTaggedLinear"), ("kw", {})]
    handles[1].remove()  # a handle from before the swap still removes its hook
    assert torch.equal(model(x), want / 2)
    copied = copy.deepcopy(model)
    assert type(copied.tagged) is type(tagged) and torch.equal(copied(x), want / 2)
    unhooked, _ = quantize_model(Hooked(), QuantSpec(["tagged"], QuantConfig(INT4, INT8)))  # hooks are lambdas
    restored = pickle.loads(pickle.dumps(unhooked))
    assert type(restored.tagged) is type(tagged) and restored.tagged.describe() == "mine: 8"
    assert torch.equal(restored(x), unhooked(x))
    dequantize_model(model)
    assert type(model.tagged) is TaggedLinear and model.tagged.describe() == "mine: 8"
    assert type(model.plain) is nn.Linear and model.plain.note == "kept"
    assert not hasattr(model.tagged, "_weight_format") and not hasattr(model.plain, "macs_per_sample")
    seen.clear()
    model(x)
    assert seen == [("pre", "TaggedLinear"), ("kw", {})]


def test_quant_attributes_lists_what_a_quantized_layer_adds():
    """to_float leaves out QUANT_ATTRIBUTES: it must hold every attribute a quantized layer adds."""
    from quant.quant_module import QUANT_ATTRIBUTES
    for float_layer in (nn.Linear(2, 2), nn.Conv2d(2, 2, 1), Conv1D(2, 2)):
        _, layers = quantize_model(nn.Sequential(float_layer), QuantSpec(["0"]))
        layer = layers["0"]
        layer(torch.randn(1, 2, 1, 1) if isinstance(float_layer, nn.Conv2d) else torch.randn(1, 2))
        assert set(vars(layer)) - set(vars(float_layer)) <= QUANT_ATTRIBUTES


def test_parametrized_and_lazy_layers_are_refused_by_name():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.LazyLinear(4), nn.Linear(4, 4), nn.Linear(4, 4))
    torch.nn.utils.parametrizations.weight_norm(model[0])
    torch.nn.utils.weight_norm(model[1])  # the older hook form
    torch.nn.utils.parametrize.register_parametrization(model[3], "bias", nn.Identity())
    assert quantizable_layer_names(model) == ["4"]
    parametrized = (r"computes its {} from other tensors \(torch.nn.utils.parametrize, weight_norm or spectral_norm\), "
                    r"which a quantized layer cannot hold: remove the parametrization first "
                    r"\(torch.nn.utils.parametrize.remove_parametrizations, torch.nn.utils.remove_weight_norm\), or "
                    r"leave it out of the spec")
    for name, match in [("0", parametrized.format("weight")), ("1", parametrized.format("weight")),
                        ("3", parametrized.format("bias")),
                        ("2", r"is a LazyLinear, whose parameters are not initialised yet: run one forward pass first "
                              r"\(it then becomes a Linear\), or leave it out of the spec")]:
        with pytest.raises(ValueError, match=rf"^layer '{name}' {match}$"):
            quantize_model(model, QuantSpec([name]))
    model(torch.randn(2, 4))  # initialises the LazyLinear: now a Linear
    assert quantizable_layer_names(model) == ["2", "4"]


def test_a_forward_replaced_on_the_instance_is_refused():
    model = nn.Sequential(nn.Linear(4, 4))
    model[0].forward = lambda x: x
    assert quantizable_layer_names(model) == []
    with pytest.raises(ValueError, match=r"layer '0' has its forward replaced on the instance \(e.g. by accelerate's "
                                         r"hooks\), which the quantized layer would keep calling"):
        quantize_model(model, QuantSpec(["0"]))


def test_a_registered_quantized_class_for_a_subclass_with_its_own_forward(monkeypatch):
    """The docs/extending.md recipe: a quantized class of one's own, in front of QUANTIZED_CLASS_FOR."""
    import quant.surgery as surgery

    class QuantScaledLinear(QuantLinear, ScaledLinear):
        _float_subclass = ScaledLinear  # to_float gives a ScaledLinear back

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * QuantLinear.forward(self, x)

    monkeypatch.setattr(surgery, "QUANTIZED_CLASS_FOR", ((ScaledLinear, QuantScaledLinear),) + QUANTIZED_CLASS_FOR)
    model = Mixed()
    x = torch.randn(3, 4)
    want = 2 * QuantLinear.from_float(model.scaled, QuantConfig(INT4, INT4))(x)
    assert "scaled" in quantizable_layer_names(model)
    _, layers = quantize_model(model, QuantSpec(["scaled"], QuantConfig(INT4, INT4)))
    assert type(layers["scaled"]) is QuantScaledLinear and torch.equal(model.scaled(x), want)
    dequantize_model(model)
    assert type(model.scaled) is ScaledLinear



@pytest.mark.parametrize("pair", ["int4", ("int4",), ("int4", "int8", "int8"), INT4])
def test_layer_formats_are_weight_and_activation_pairs(pair):
    shown = re.escape(repr(pair))
    with pytest.raises(ValueError, match=rf"^layer_formats\['head'\] must be a \(weight format, activation format\) "
                                         rf"pair, e.g. \('int4', 'int8'\), got {shown}$"):
        QuantSpec(["head"], layer_formats={"head": pair})
    _, layers = quantize_model(make(), QuantSpec(["head"]))
    with pytest.raises(ValueError, match=rf"^the formats of layer 'head' must be a \(weight format, activation "
                                         rf"format\) pair, e.g. \('int4', 'int8'\), got {shown}$"):
        set_layer_formats(layers, {"head": pair})
    set_layer_formats(layers, {"head": ["int4", "int8"]})
    assert (layers["head"].weight_format, layers["head"].act_format) == (INT4, INT8)
