"""Fake quantization under torch.func transforms gives the eager numbers, bit for bit.

Outside transforms the quantizer runs `_FakeQuantizeFunction` through autograd's C core; under
them `_TransformableFakeQuantize` (quant/quant_utils.py). Each transform is compared with an
eager reference at atol=0, rtol=0 (bit patterns, so -0.0 is not 0.0): grad with `.grad`, vmap
with a Python loop over the samples, vmap(grad) with per-sample backward passes, jvp / jacfwd /
jacrev / hessian with the straight-through derivative eager autograd gives.

Through a layer, a batched matmul may sum in another order than the per-sample loop's (a float
model's per-sample gradients under vmap differ from the loop's in the last bits), so the layer
tests use values on a dyadic grid whose every partial sum is exact in float32 (`grid_values`):
then any order gives the same bits and a mismatch can only come from the quantizer.
"""
from __future__ import annotations

from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, functionalize, grad, hessian, jacfwd, jacrev, jvp, vmap

from quant import scales, weight_group
from quant.formats import parse_format
from quant.quant_conv2d import QuantConv2d
from quant.quant_linear import QuantLinear
from quant.quant_module import QuantConfig
from quant.quant_utils import _TransformableFakeQuantize, fake_quantize, quantize

# Every op under vmap has a batching rule: a per-sample fallback (its performance warning) fails the test.
pytestmark = pytest.mark.filterwarnings("error:There is a performance drop:UserWarning")

# An INT of each width class, FP8, FP4, a power-of-two-only FP (no mantissa), and a cast format.
FORMATS = ["int8", "int4", "fp8_e4m3", "fp4_e2m1", "e2m0", "bf16"]
# abs_max: no element can saturate, so no mask (the layers' default); percentile: clipping, a
# mask; given: a fixed scale at half the abs-max one, a mask with many saturated elements.
SCALINGS = ["abs_max", "percentile", "given"]
GRANULARITIES = ["per_tensor", "per_channel"]


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns of a float32 or 16-bit float tensor (exact equality, signed zeros included)."""
    return t.contiguous().view(torch.int32 if t.element_size() == 4 else torch.int16)


def assert_same(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(bits(got), bits(want))


def quantizer(token: str, scaling: str, granularity: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Q(x) of one (sample) tensor: output channels, for per_channel, on dim 0."""
    fmt = parse_format(token)
    if scaling == "given":
        def given(x: torch.Tensor) -> torch.Tensor:
            # From the values (and out of the graph: scales are constants), per sample under vmap.
            scale = scales.compute_scale(x.detach(), fmt, granularity) * 0.5
            return fake_quantize(x, fmt, scale)
        return given
    percentile = 90.0 if scaling == "percentile" else 100.0
    return lambda x: quantize(x, fmt, granularity, dim=0, range_percentile=percentile)


def sample_batch(batch: int = 4, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(batch, 6, 10) random values over several binades, with a zero row and exact zeros."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 6, 10, generator=generator) * torch.logspace(-2, 1, 10)
    x[:, 2] = 0.0
    x[:, :, 3] = 0.0
    return x.to(dtype)


def eager_grad(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, upstream: torch.Tensor) -> torch.Tensor:
    leaf = x.clone().requires_grad_()
    (f(leaf) * upstream).sum().backward()
    return leaf.grad


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("scaling", SCALINGS)
@pytest.mark.parametrize("token", FORMATS)
def test_grad_vmap_and_per_sample_grads_match_eager(token: str, scaling: str, granularity: str) -> None:
    f = quantizer(token, scaling, granularity)
    xs = sample_batch()
    upstream = torch.randn(xs.shape, generator=torch.Generator().manual_seed(1))
    x, w = xs[0], upstream[0]
    want = eager_grad(f, x, w)
    if scaling == "given" and token != "bf16":  # the mask is there: some gradients are cut
        assert ((want == 0) & (x != 0)).any()
    assert_same(grad(lambda t: (f(t) * w).sum())(x), want)
    # vmap over the batch, batch dim first and in the middle, against a loop over the samples
    loop = torch.stack([f(sample) for sample in xs])
    assert_same(vmap(f)(xs), loop)
    assert_same(vmap(f, in_dims=1, out_dims=1)(xs.transpose(0, 1)), loop.transpose(0, 1))
    # per-sample gradients
    per_sample = vmap(grad(lambda t, u: (f(t) * u).sum()))(xs, upstream)
    assert_same(per_sample, torch.stack([eager_grad(f, s, u) for s, u in zip(xs, upstream)]))


@pytest.mark.parametrize("token", ["int8", "fp8_e4m3", "fp4_e2m1"])
def test_bfloat16_inputs(token: str) -> None:
    f = quantizer(token, "given", "per_channel")
    xs = sample_batch(dtype=torch.bfloat16)
    upstream = torch.randn(xs.shape, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    assert_same(vmap(f)(xs), torch.stack([f(sample) for sample in xs]))
    per_sample = vmap(grad(lambda t, u: (f(t) * u).sum()))(xs, upstream)
    assert_same(per_sample, torch.stack([eager_grad(f, s, u) for s, u in zip(xs, upstream)]))


def test_vmap_over_scales_only() -> None:
    """One x, a batch of given scales (x unbatched, the scale batched): a loop over the scales."""
    x = sample_batch(1)[0]
    scale_batch = torch.tensor([0.01, 0.05, 0.2])
    f = lambda s: fake_quantize(x, "fp8_e4m3", s)  # noqa: E731
    assert_same(vmap(f)(scale_batch), torch.stack([f(s) for s in scale_batch]))
    per_channel = torch.rand(3, 6, 1, generator=torch.Generator().manual_seed(2)) / 4 + 0.01
    assert_same(vmap(f)(per_channel), torch.stack([f(s) for s in per_channel]))


def test_a_bad_scale_of_one_sample_raises_under_vmap() -> None:
    x = sample_batch(1)[0]
    with pytest.raises(ValueError, match="scale must lie in"):
        vmap(lambda s: fake_quantize(x, "int8", s))(torch.tensor([0.1, -1.0]))


@pytest.mark.parametrize("token", ["int8", "fp8_e4m3", "fp4_e2m1"])
def test_forward_mode_takes_the_straight_through_tangent(token: str) -> None:
    f = quantizer(token, "given", "per_channel")
    x = sample_batch(1)[0]
    tangent = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    out, out_tangent = jvp(f, (x,), (tangent,))
    assert_same(out, f(x))
    # elementwise, so the tangent is what reverse mode gives the same vector: tangent * mask
    assert_same(out_tangent, eager_grad(f, x, tangent))
    small = x[:2, :4]
    ones_grad = eager_grad(f, small, torch.ones_like(small))
    want = torch.diag_embed(ones_grad.flatten()).reshape(*small.shape, *small.shape)
    assert_same(jacrev(f)(small), want)
    assert_same(jacfwd(f)(small), want)


def test_hessian_matches_eager_double_backward() -> None:
    """Second derivatives through the straight-through estimator (sensitivity analysis): dyadic
    values and a power-of-two scale keep every sum exact, so both orders give the same bits."""
    generator = torch.Generator().manual_seed(4)
    w = torch.randint(-16, 17, (3, 4), generator=generator) / 4  # some beyond int4's +-3.5
    a = torch.randint(-8, 9, (4, 2), generator=generator) / 4

    def loss(weights: torch.Tensor) -> torch.Tensor:
        return ((fake_quantize(weights, "int4", 0.5) @ a) ** 2).sum()

    want = torch.autograd.functional.hessian(loss, w)
    assert want.abs().sum() > 0
    assert_same(hessian(loss)(w), want)


def grid_values(shape: tuple[int, ...], fmt_max: float, generator: torch.Generator, max_dim: int = 1) -> torch.Tensor:
    """fmt_max * k / 32 for random integers k in [-32, 32], with |k| = 32 at index 0 of `max_dim`
    (so every output channel, token or position has abs-max fmt_max and a power-of-two scale),
    each index of dim 0 times 2^0 or 2^1: Q(x) is a small multiple of a power of two, and the
    products and sums of a layer's forward and backward are exact in float32."""
    k = torch.randint(-32, 33, shape, generator=generator).float()
    top = k.select(max_dim, 0)
    top.copy_(torch.where(torch.rand(top.shape, generator=generator) < 0.5, -32.0, 32.0))
    exponent = torch.randint(0, 2, (shape[0],) + (1,) * (len(shape) - 1), generator=generator).float()
    return fmt_max * k / 32 * torch.exp2(exponent)


def with_clipped_tail(x: torch.Tensor, fmt_max: float, generator: torch.Generator) -> torch.Tensor:
    """Per sample: 3 of every 24 elements at |x| = fmt_max (2^e times) and 2 of them beyond, so
    that a 90th-percentile range is fmt_max exactly and those 2 saturate (mask 0)."""
    flat = x.flatten(1).clone()
    scale = flat.abs().amax(dim=1, keepdim=True) / fmt_max  # 1 or 2 per sample (`grid_values`)
    flat = torch.where(flat.abs() >= fmt_max * scale, flat.sign() * fmt_max * 0.75 * scale, flat)
    for row in range(flat.shape[0]):
        positions = torch.randperm(flat.shape[1], generator=generator)[:5]
        flat[row, positions] = torch.tensor([1.0, -1.0, 1.0, -1.25, 1.5]) * fmt_max * scale[row]
    return flat.reshape(x.shape)


# (weight format, activation format, per_channel, per_token, activation range percentile)
LAYER_CONFIGS = [
    ("int8", "fp4_e2m1", False, False, 100.0),
    ("fp8_e4m3", "int4", True, True, 100.0),
    ("fp4_e2m1", "int8", True, False, 90.0),  # activations clipped: the mask under vmap(grad)
    ("int4", "fp8_e4m3", False, True, 100.0),
]


def per_sample_gradients(layer: torch.nn.Module, x: torch.Tensor, upstream: torch.Tensor
                         ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """(d loss / d parameters, d loss / d input) of each sample, loss = sum(layer(x_i) * upstream_i),
    through vmap(grad(functional_call))."""
    params = {name: p.detach() for name, p in layer.named_parameters()}

    def loss(p: dict[str, torch.Tensor], sample: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return (functional_call(layer, p, (sample[None],)) * up[None]).sum()

    return vmap(grad(loss, argnums=(0, 1)), in_dims=(None, 0, 0))(params, x, upstream)


def assert_per_sample_gradients_match_loop(layer: torch.nn.Module, x: torch.Tensor, upstream: torch.Tensor) -> None:
    got_params, got_input = per_sample_gradients(layer, x, upstream)
    for i in range(x.shape[0]):
        layer.zero_grad(set_to_none=True)
        sample = x[i:i + 1].clone().requires_grad_()
        (layer(sample) * upstream[i:i + 1]).sum().backward()
        assert_same(got_input[i], sample.grad[0])
        for name, p in layer.named_parameters():
            assert_same(got_params[name][i], p.grad)
    # the forward too: vmap over the samples against the loop
    outputs = vmap(lambda sample: layer(sample[None])[0])(x)
    assert_same(outputs, torch.cat([layer(x[i:i + 1]) for i in range(x.shape[0])]))


@pytest.mark.parametrize("weight_token, act_token, per_channel, per_token, percentile", LAYER_CONFIGS)
def test_quant_linear_per_sample_gradients(weight_token: str, act_token: str, per_channel: bool, per_token: bool,
                                           percentile: float) -> None:
    generator = torch.Generator().manual_seed(5)
    config = QuantConfig(weight_token, act_token, per_channel=per_channel, per_token=per_token,
                         act_range_percentile=percentile)
    layer = QuantLinear(8, 6, config=config)
    weight_max, act_max = parse_format(weight_token).max, parse_format(act_token).max
    with torch.no_grad():
        layer.weight.copy_(grid_values((6, 8), weight_max, generator))
        layer.bias.copy_(torch.randint(-8, 9, (6,), generator=generator) / 4)
    x = grid_values((4, 3, 8), act_max, generator, max_dim=2)  # (samples, tokens, features)
    if percentile < 100.0:
        x = with_clipped_tail(x, act_max, generator)
    upstream = torch.randint(-8, 9, (4, 3, 6), generator=generator) / 4
    assert_per_sample_gradients_match_loop(layer, x, upstream)


@pytest.mark.parametrize("weight_token, act_token, per_channel, per_token, percentile", LAYER_CONFIGS)
def test_quant_conv2d_per_sample_gradients(weight_token: str, act_token: str, per_channel: bool, per_token: bool,
                                           percentile: float) -> None:
    generator = torch.Generator().manual_seed(6)
    config = QuantConfig(weight_token, act_token, per_channel=per_channel, per_token=per_token,
                         act_range_percentile=percentile)
    layer = QuantConv2d(2, 3, 3, padding=1, config=config)
    weight_max, act_max = parse_format(weight_token).max, parse_format(act_token).max
    with torch.no_grad():
        layer.weight.copy_(grid_values((3, 2, 3, 3), weight_max, generator))
        layer.bias.copy_(torch.randint(-8, 9, (3,), generator=generator) / 4)
    x = grid_values((4, 2, 4, 4), act_max, generator)  # per sample (C, H, W); channel 0 holds the max
    if percentile < 100.0:
        x = with_clipped_tail(x, act_max, generator)
    upstream = torch.randint(-8, 9, (4, 3, 4, 4), generator=generator) / 4
    assert_per_sample_gradients_match_loop(layer, x, upstream)


def test_quantized_model_under_grad_takes_the_per_layer_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model from quantize_model (weight group in mode "always", input share): eager runs the
    grouped weights, torch.func.grad the per-layer path, and the gradients are the same."""
    from tests.quant.test_weight_group import build

    before = weight_group.get_mode()
    weight_group.set_mode("always")
    try:
        model, _ = build()
        grouped_calls = []
        original = weight_group._GroupedFakeQuantize

        class Counting(original):  # type: ignore[misc, valid-type]
            @staticmethod
            def forward(ctx, *args):  # type: ignore[override]
                grouped_calls.append(1)
                return original.forward(ctx, *args)

        monkeypatch.setattr(weight_group, "_GroupedFakeQuantize", Counting)
        x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(7))
        target = torch.tensor([1, 3])

        def loss(params: dict[str, torch.Tensor]) -> torch.Tensor:
            return F.cross_entropy(functional_call(model, params, (x,)), target)

        loss(dict(model.named_parameters())).backward()
        assert grouped_calls == [1]  # the eager reference ran the group
        got = grad(loss)({name: p.detach() for name, p in model.named_parameters()})
        assert grouped_calls == [1]  # the transform did not
        for name, p in model.named_parameters():
            if p.grad is not None:
                assert_same(got[name], p.grad)
    finally:
        weight_group.set_mode(before)


def test_functionalize_says_what_to_do() -> None:
    x = sample_batch(1)[0]
    with pytest.raises(RuntimeError, match=r"torch\.func\.functionalize cannot run fake quantization.*outside "
                                           r"functionalize; torch\.func\.grad, vmap"):
        functionalize(lambda t: quantize(t, "int8", "per_tensor"))(x)
    with pytest.raises(RuntimeError, match=r"torch\.func\.functionalize cannot run"):
        functionalize(grad(lambda t: fake_quantize(t, "fp8_e4m3", 0.01).sum()))(x)
    # A scale constant first needed under functionalize is cached plain, not wrapped for its level.
    functionalize(lambda t: scales.divide_exactly(t, 12345.0))(x)
    constant = scales._DEVICE_CONSTANTS[(("divisor", 12345.0), x.device)]
    assert not torch._C._functorch.is_functorch_wrapped_tensor(constant)


def test_eager_path_keeps_the_c_core(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside transforms the transform-compatible Function is never called."""
    def refuse(*args: object) -> None:
        raise AssertionError("_TransformableFakeQuantize used outside torch.func")

    monkeypatch.setattr(_TransformableFakeQuantize, "apply", refuse)
    x = sample_batch(1)[0].requires_grad_()
    out = fake_quantize(x, "int8", 0.01)
    assert type(out.grad_fn).__name__ == "_FakeQuantizeFunctionBackward"
    out.sum().backward()
