import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from quant.formats import parse_format
from quant.quant_conv2d import QuantConv2d, QuantConv2D
from quant.quant_linear import QuantConv1D, QuantLinear
from quant.quant_module import QuantConfig
from quant.quant_utils import fake_quantize
from quant.scales import Granularity, compute_scale

INT4, INT8, E4M3 = parse_format("int4"), parse_format("int8"), parse_format("fp8_e4m3")


def seeded(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def check_none_is_bitwise_float(float_layer: nn.Module, quant_cls, x: torch.Tensor) -> None:
    quant_layer = quant_cls.from_float(float_layer, QuantConfig())
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_float, y_quant = float_layer(x1), quant_layer(x2)
    assert torch.equal(y_float, y_quant)
    g = seeded(*y_float.shape, seed=1)
    grads_float = torch.autograd.grad(y_float, [x1, float_layer.weight], g)
    grads_quant = torch.autograd.grad(y_quant, [x2, quant_layer.weight], g)
    assert all(torch.equal(a, b) for a, b in zip(grads_float, grads_quant))


def test_none_format_is_bitwise_float_for_every_layer():
    torch.manual_seed(0)
    check_none_is_bitwise_float(nn.Linear(16, 8), QuantLinear, seeded(4, 5, 16))
    check_none_is_bitwise_float(nn.Conv2d(4, 8, 3, stride=2, padding=1), QuantConv2d, seeded(2, 4, 9, 9))
    check_none_is_bitwise_float(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), QuantConv2d, seeded(2, 8, 6, 6))
    check_none_is_bitwise_float(Conv1D(12, 16), QuantConv1D, seeded(2, 3, 16))


def test_quant_linear_matches_torch_fake_quant_reference():
    torch.manual_seed(0)
    linear = nn.Linear(32, 16)
    x = seeded(4, 7, 32)
    layer = QuantLinear.from_float(linear, QuantConfig(weight_format=INT4, act_format=INT8))
    w_scale = linear.weight.detach().abs().max() / 7
    x_scale = x.abs().max() / 127
    ref = F.linear(torch.fake_quantize_per_tensor_affine(x, x_scale.item(), 0, -128, 127),
                   torch.fake_quantize_per_tensor_affine(linear.weight, w_scale.item(), 0, -8, 7), linear.bias)
    assert torch.equal(layer(x), ref)


def test_per_channel_weights_and_per_token_inputs():
    torch.manual_seed(0)
    linear = nn.Linear(32, 16)
    layer = QuantLinear.from_float(linear, QuantConfig(INT4, E4M3, per_channel=True, per_token=True))
    x = seeded(3, 5, 32) * torch.arange(1, 6).view(1, 5, 1)
    w_scale = linear.weight.detach().abs().amax(dim=1) / 7
    ref_w = torch.fake_quantize_per_channel_affine(linear.weight, w_scale, torch.zeros(16, dtype=torch.int32), 0, -8, 7)
    assert torch.equal(layer.quantized_weight(), ref_w)
    x_scale = x.abs().amax(dim=-1, keepdim=True) / 448  # one scale per token
    assert torch.equal(layer.quantize_input(x), fake_quantize(x, E4M3, x_scale))
    assert torch.equal(layer(x), F.linear(fake_quantize(x, E4M3, x_scale), ref_w, linear.bias))
    # Conv1D keeps its output channels on dim 1 of the (nx, nf) weight.
    conv1d = Conv1D(16, 32)
    q1 = QuantConv1D.from_float(conv1d, QuantConfig(INT4, per_channel=True))
    assert torch.equal(q1.quantized_weight(), fake_quantize(conv1d.weight, INT4, conv1d.weight.detach().abs().amax(0, keepdim=True) / 7))
    # Conv2d inputs: one scale per spatial position.
    conv = QuantConv2d.from_float(nn.Conv2d(4, 4, 1), QuantConfig(act_format=INT8, per_token=True))
    xc = seeded(2, 4, 3, 3)
    assert torch.equal(conv.quantize_input(xc), fake_quantize(xc, INT8, compute_scale(xc, INT8, Granularity.PER_TOKEN, dim=1)))


def test_conv_on_an_unbatched_input_equals_the_batch_of_one():
    """nn.Conv2d takes (C, H, W); per-token scales must still reduce over C (not over H)."""
    torch.manual_seed(0)
    conv = QuantConv2d.from_float(nn.Conv2d(3, 4, 3, padding=1), QuantConfig(INT4, INT4, per_token=True))
    x = seeded(3, 5, 5) * torch.arange(1, 6).view(1, 5, 1)  # rows of H differ in range
    assert torch.equal(conv(x), conv(x[None])[0])
    assert torch.equal(conv.quantize_input(x), fake_quantize(x, INT4, x.abs().amax(dim=0, keepdim=True) / 7))
    assert conv.macs_per_sample == 5 * 5 * 4 * 27


def test_formats_change_between_steps_without_reallocation():
    linear = nn.Linear(8, 8)
    layer = QuantLinear.from_float(linear, QuantConfig(INT8, INT8))
    params = [id(p) for p in layer.parameters()]
    ptrs = [p.data_ptr() for p in layer.parameters()]
    x = seeded(2, 8)
    y8 = layer(x)
    layer.set_formats(parse_format("int2"), parse_format("int2"))
    y2 = layer(x)
    assert not torch.equal(y8, y2)
    assert [id(p) for p in layer.parameters()] == params and [p.data_ptr() for p in layer.parameters()] == ptrs
    layer.weight_format = INT8
    layer.act_format = INT8
    assert torch.equal(layer(x), y8)


def test_parameters_are_shared_and_state_dict_keys_unchanged():
    conv = nn.Conv2d(3, 6, 3, stride=2, padding=1, dilation=1, groups=3, bias=True, padding_mode="reflect")
    layer = QuantConv2D.from_float(conv, QuantConfig(INT4))
    assert QuantConv2D is QuantConv2d and isinstance(layer, nn.Conv2d)
    assert layer.weight is conv.weight and layer.bias is conv.bias
    assert list(layer.state_dict()) == list(conv.state_dict())
    assert (layer.stride, layer.padding, layer.groups, layer.padding_mode) == ((2, 2), (1, 1), 3, "reflect")
    back = layer.to_float()
    assert type(back) is nn.Conv2d and back.weight is conv.weight
    x = seeded(1, 3, 8, 8)
    assert torch.equal(back(x), conv(x))
    lin = QuantLinear.from_float(nn.Linear(4, 2, bias=False), QuantConfig(INT8))
    assert lin.bias is None and type(lin.to_float()) is nn.Linear and lin.to_float().bias is None
    c1 = Conv1D(5, 4)
    assert type(QuantConv1D.from_float(c1, QuantConfig()).to_float()) is Conv1D


def test_layer_costs_hand_computed():
    # Linear(64 -> 10) on (B, T=5, 64): 5 * 64 * 10 = 3200 MACs per sample.
    lin = QuantLinear.from_float(nn.Linear(64, 10), QuantConfig(INT4, INT8))
    with pytest.raises(RuntimeError, match=r"^QuantLinear has no recorded input geometry: call quant.surgery."
                                           r"record_geometry\(model, example_inputs\) before asking for its compute "
                                           r"cost \(a plain forward records a layer's first call only, too few MACs "
                                           r"for a layer called more than once per forward\), or set_input_shape$"):
        lin.compute_cost()
    lin(seeded(2, 5, 64))
    assert lin.macs_per_sample == 3200
    assert lin.memory_cost() == 640 * 4 / 8 / 2**20
    assert lin.compute_cost() == 3200 * 4 * 8 / 1e9
    # Strided conv 3 -> 8, k3 s2 p1 on 32x32: output 16x16, each output 3*3*3 MACs.
    conv = QuantConv2d.from_float(nn.Conv2d(3, 8, 3, stride=2, padding=1), QuantConfig(E4M3, INT8))
    conv.set_input_shape((1, 3, 32, 32))
    assert conv.macs_per_sample == 16 * 16 * 8 * 27 == 55296
    assert conv.compute_cost() == 55296 * 8 * 8 / 1e9
    assert conv.memory_cost() == 8 * 3 * 9 * 8 / 8 / 2**20
    # Depthwise 16 channels k3 p1 on 8x8: output 8x8x16, each output 9 MACs.
    dw = QuantConv2d.from_float(nn.Conv2d(16, 16, 3, padding=1, groups=16), QuantConfig(INT4, INT4))
    dw(seeded(2, 16, 8, 8))
    assert dw.macs_per_sample == 8 * 8 * 16 * 9 == 9216
    assert dw.compute_cost() == 9216 * 16 / 1e9
    # Dilation and 'valid'/'same' padding follow PyTorch's output-size formula.
    dil = QuantConv2d.from_float(nn.Conv2d(2, 2, 3, dilation=2, stride=3), QuantConfig())
    assert dil.output_hw(20, 11) == tuple(dil(seeded(1, 2, 20, 11)).shape[-2:]) == (6, 3)  # (20 - 4 - 1) // 3 + 1, (11 - 4 - 1) // 3 + 1
    same = QuantConv2d.from_float(nn.Conv2d(2, 2, 5, padding="same"), QuantConfig())
    assert same.output_hw(7, 9) == (7, 9)
    # GPT-2 Conv1D (nx=16 -> nf=48) on (B, T=4, 16): 4 * 16 * 48 MACs.
    c1 = QuantConv1D.from_float(Conv1D(48, 16), QuantConfig(INT8, INT8))
    c1(seeded(3, 4, 16))
    assert c1.macs_per_sample == 3072 and c1.memory_cost() == 768 / 2**20
    # No quantization counts 32 bits.
    assert QuantLinear.from_float(nn.Linear(64, 10), QuantConfig()).memory_cost() == 640 * 4 / 2**20


def test_quant_config_validation_and_repr():
    with pytest.raises(ValueError, match=r"act_range_percentile must be in \(0, 100\].*got 0"):
        QuantConfig(act_range_percentile=0)
    with pytest.raises(ValueError, match=r"weight_range_percentile .* got 150"):
        QuantConfig(weight_range_percentile=150)
    with pytest.raises(ValueError, match="unknown format 'int4b'"):
        QuantConfig(weight_format="int4b")
    assert QuantConfig("4", "fp4").weight_format == INT4
    layer = QuantLinear.from_float(nn.Linear(4, 4), QuantConfig(INT4, E4M3, per_channel=True))
    assert "weight_format=int4, act_format=fp8_e4m3, weight_scale=per_channel" in repr(layer)
    assert layer.quant_config == QuantConfig(INT4, E4M3, per_channel=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_layers_run_under_autocast_and_low_precision(dtype):
    layer = QuantLinear.from_float(nn.Linear(16, 8), QuantConfig(INT8, E4M3))
    x = seeded(2, 16)
    if dtype is torch.bfloat16:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
        assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    layer_lp = QuantLinear.from_float(nn.Linear(16, 8).to(dtype), QuantConfig(INT8, E4M3))
    y = layer_lp(x.to(dtype))
    assert y.dtype == dtype and torch.isfinite(y).all()


INT2 = parse_format("int2")


def prequantized_linear() -> tuple[QuantLinear, torch.Tensor]:
    """An INT8 layer whose weight already holds Q(w), marked as a checkpoint load does (in eval
    mode, as load_quantized_checkpoint returns it)."""
    layer = QuantLinear.from_float(nn.Linear(16, 8), QuantConfig(INT8, INT8))
    with torch.no_grad():
        layer.weight.copy_(layer.quantized_weight())
    layer.weight_prequantized = True
    return layer.eval(), seeded(3, 16)


def test_prequantized_weight_is_used_as_is_while_format_and_weight_are_unchanged():
    layer, x = prequantized_linear()
    assert layer.weight_prequantized and layer.quantized_weight() is layer.weight
    assert torch.equal(layer(x), F.linear(layer.quantize_input(x), layer.weight, layer.bias))
    # Another format: quantize as usual (the weight is on the INT8 grid, not INT2's).
    layer.weight_format = INT2
    assert not layer.weight_prequantized
    want = fake_quantize(layer.weight, INT2, compute_scale(layer.weight, INT2))
    assert layer.quantized_weight() is not layer.weight and torch.equal(layer.quantized_weight(), want)
    assert torch.equal(layer(x), F.linear(layer.quantize_input(x), want, layer.bias))
    # Back to the format it was stored in, unchanged weight: the stored weight again.
    layer.set_formats("int8", "int8")
    assert layer.weight_prequantized and layer.quantized_weight() is layer.weight
    layer.weight_prequantized = False
    assert not layer.weight_prequantized and layer.quantized_weight() is not layer.weight


def test_prequantized_mark_lapses_after_in_place_updates():
    layer, _ = prequantized_linear()
    with torch.no_grad():
        layer.weight.mul_(1.5)
    assert not layer.weight_prequantized
    assert torch.equal(layer.quantized_weight(), fake_quantize(layer.weight, INT8, compute_scale(layer.weight, INT8)))
    layer.weight_format, layer.weight_format = INT2, INT8  # a format change does not bring it back
    assert not layer.weight_prequantized
    # load_state_dict copies in place: the mark lapses even for identical values.
    layer, _ = prequantized_linear()
    layer.load_state_dict(layer.state_dict())
    assert not layer.weight_prequantized
    # Another Parameter (even at the same version) is not the weight that was marked.
    layer, _ = prequantized_linear()
    version = layer.weight._version
    other = nn.Parameter(layer.weight.detach().clone())
    with torch.no_grad():
        while other._version < version:
            other.mul_(1.0)
    layer.weight = other
    assert other._version == version and not layer.weight_prequantized


@pytest.mark.parametrize("optimizer_kwargs", [dict(foreach=False), dict(foreach=True), dict(fused=True)],
                         ids=["for-loop", "foreach", "fused"])
def test_prequantized_mark_lapses_when_the_layer_trains(optimizer_kwargs):
    # A forward in training mode ends the mark: fused optimizers do not bump the version counter.
    layer, x = prequantized_linear()
    optimizer = torch.optim.AdamW(layer.parameters(), lr=0.1, **optimizer_kwargs)
    layer.train()(x).sum().backward()
    assert not layer.weight_prequantized
    optimizer.step()
    layer.eval()
    assert not layer.weight_prequantized
    assert torch.equal(layer.quantized_weight(), fake_quantize(layer.weight, INT8, compute_scale(layer.weight, INT8)))
    # Evaluation keeps it.
    layer, x = prequantized_linear()
    with torch.no_grad():
        layer(x)
    assert layer.weight_prequantized and layer.quantized_weight() is layer.weight


def test_prequantized_mark_on_inference_tensors():
    # Built under inference_mode (no version counter): the format still decides.
    with torch.inference_mode():
        layer, x = prequantized_linear()
        assert layer.weight.is_inference() and layer.weight_prequantized and layer.quantized_weight() is layer.weight
        layer.weight_format = INT2
        assert not layer.weight_prequantized
        assert torch.equal(layer.quantized_weight(), fake_quantize(layer.weight, INT2, compute_scale(layer.weight, INT2)))


def test_weight_prequantized_takes_a_bool():
    layer, _ = prequantized_linear()
    with pytest.raises(TypeError, match="weight_prequantized must be True or False, got 1"):
        layer.weight_prequantized = 1
    assert layer.weight_prequantized


def test_formats_are_parsed_on_assignment():
    layer = QuantLinear.from_float(nn.Linear(8, 4), QuantConfig())
    x = seeded(2, 8)
    layer.weight_format = "int4"
    layer.act_format = 8
    assert (layer.weight_format, layer.act_format) == (INT4, INT8)
    assert torch.equal(layer(x), QuantLinear.from_float(layer.to_float(), QuantConfig(INT4, INT8))(x))
    layer.set_formats("fp8_e4m3", "none")
    assert (layer.weight_format, layer.act_format) == (E4M3, parse_format("none"))
    assert "weight_format" not in vars(layer) and "act_format" not in vars(layer)  # properties, not attributes
    with pytest.raises(ValueError, match="unknown format 'int4b'; valid forms"):
        layer.weight_format = "int4b"
    with pytest.raises(ValueError, match="unknown format 'fp5'; valid forms"):
        layer.set_formats("int8", "fp5")
    assert (layer.weight_format, layer.act_format) == (E4M3, parse_format("none"))  # neither changed
    conv = QuantConv2d.from_float(nn.Conv2d(2, 2, 1), QuantConfig())
    conv.set_formats("int8", "e2m5")
    assert (conv.weight_format, conv.act_format) == (INT8, parse_format("e2m5"))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(weight_range_percentile=float("nan")), ValueError,
     r"weight_range_percentile must be in \(0, 100\] .*got nan"),
    (dict(act_range_percentile=float("nan")), ValueError, r"act_range_percentile must be in .*got nan"),
    (dict(act_range_percentile="50"), TypeError, r"act_range_percentile must be a number .*got '50'"),
    (dict(per_channel="no"), TypeError, r"QuantConfig.per_channel must be True or False, got 'no'"),
    (dict(per_token=1), TypeError, r"QuantConfig.per_token must be True or False, got 1"),
])
def test_quant_config_rejects_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        QuantConfig(**kwargs)


def test_layers_run_on_an_empty_batch_like_the_float_layers():
    cases = [(nn.Linear(6, 4), QuantLinear, torch.empty(0, 6)), (nn.Linear(6, 4), QuantLinear, torch.empty(2, 0, 6)),
             (nn.Conv2d(3, 4, 3, padding=1), QuantConv2d, torch.empty(0, 3, 5, 5)),
             (Conv1D(4, 6), QuantConv1D, torch.empty(0, 6))]
    for float_layer, quant_cls, x in cases:
        for config in (QuantConfig(INT4, INT8), QuantConfig(E4M3, INT4, per_channel=True, per_token=True)):
            layer = quant_cls.from_float(float_layer, config)
            inputs = x.clone().requires_grad_()
            got, want = layer(inputs), float_layer(inputs)
            assert got.shape == want.shape and got.dtype == want.dtype and got.numel() == 0
            got.sum().backward()
            assert inputs.grad.shape == x.shape and layer.weight.grad is not None


def test_a_copy_of_a_prequantized_layer_is_prequantized():
    import copy
    import pickle

    layer, x = prequantized_linear()
    for clone in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert clone.weight_prequantized and clone.quantized_weight() is clone.weight
        assert torch.equal(clone(x), layer(x))
        clone.weight_format = INT2  # and it lapses as usual
        assert not clone.weight_prequantized



@pytest.mark.parametrize("make", [
    lambda config: QuantLinear.from_float(nn.Linear(4, 4), config),
    lambda config: QuantConv2d.from_float(nn.Conv2d(2, 2, 1), config),
    lambda config: QuantConv1D.from_float(Conv1D(4, 4), config),
    lambda config: QuantLinear(4, 4, config=config),
])
def test_layers_take_their_options_as_a_quant_config(make):
    for config in ({"weight_format": "int4"}, {}, "int4"):
        with pytest.raises(TypeError, match=r"^Quant\w+ takes its formats and scale options as a QuantConfig, got a "
                                            rf"{type(config).__name__} \({re.escape(repr(config))}\); write e.g. "
                                            r"QuantConfig\('int4', 'int8', per_channel=True\)$"):
            make(config)
    assert make(QuantConfig(INT4)).weight_format == INT4


@pytest.mark.parametrize("quant_class, module, match", [
    (QuantConv2d, nn.Conv1d(2, 3, 3), r"^QuantConv2d.from_float takes a torch.nn.modules.conv.Conv2d \(or a subclass\), "
                                      r"got Conv1d; quant.surgery.quantize_model picks the quantized class of each layer$"),
    (QuantConv2d, nn.Conv3d(2, 3, 3), r"takes a torch.nn.modules.conv.Conv2d \(or a subclass\), got Conv3d"),
    (QuantLinear, nn.Conv2d(2, 3, 3), r"^QuantLinear.from_float takes a torch.nn.modules.linear.Linear \(or a "
                                      r"subclass\), got Conv2d"),
    (QuantConv1D, nn.Linear(2, 3), r"^QuantConv1D.from_float takes a transformers.pytorch_utils.Conv1D \(or a subclass\), "
                                   r"got Linear"),
    (QuantLinear, QuantLinear.from_float(nn.Linear(2, 3), QuantConfig("int8")),
     r"^QuantLinear.from_float got a QuantLinear, which is already quantized; set its weight_format/act_format "
     r"instead, or call its to_float\(\) first$"),
])
def test_from_float_refuses_other_layer_classes(quant_class, module, match):
    """A Conv1d used to be accepted and fail at its first forward (IndexError)."""
    with pytest.raises(TypeError, match=match):
        quant_class.from_float(module, QuantConfig("int4", "int8"))
