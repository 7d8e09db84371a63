import math
import re

import numpy as np
import pytest
import torch

from quant.formats import FloatFormat, IntFormat, parse_format, rounding_bounds
from quant.quant_utils import LARGEST_SCALE, SMALLEST_SCALE, QuantizerSpec, fake_quantize, quantize
from quant.scales import Granularity, compute_scale
from tests.quant.test_rounding import (
    ML_DTYPES,
    bits_equal,
    finite_grid,
    generic_grid,
    reference_round,
    stress_inputs,
)


@pytest.mark.parametrize("bits", [2, 3, 4, 8, 16])
def test_int_matches_torch_per_tensor_forward_and_gradient(bits):
    fmt = IntFormat(bits)
    gen = torch.Generator().manual_seed(bits)
    x = (torch.randn(4096, generator=gen) * 3).requires_grad_()
    scale = 2.5 / fmt.qmax
    ref = torch.fake_quantize_per_tensor_affine(x, scale, 0, fmt.qmin, fmt.qmax)
    got = fake_quantize(x, fmt, scale)
    # Equal values (torch writes +0 where we keep the sign of a rounded-away negative: -0.0 == 0.0).
    assert torch.equal(got.detach(), ref.detach())
    upstream = torch.randn(4096, generator=gen)
    (g_ref,) = torch.autograd.grad(ref, x, upstream)
    (g_got,) = torch.autograd.grad(got, x, upstream)
    assert torch.equal(g_got, g_ref)
    assert 0 < int((g_got == 0).sum()) < x.numel()  # some values saturated, some not


@pytest.mark.parametrize("bits", [4, 8])
def test_int_matches_torch_per_channel(bits):
    fmt = IntFormat(bits)
    gen = torch.Generator().manual_seed(0)
    w = (torch.randn(16, 64, generator=gen) * torch.rand(16, 1, generator=gen) * 5).requires_grad_()
    scale = compute_scale(w, fmt, Granularity.PER_CHANNEL, dim=0)
    assert scale.shape == (16, 1)
    ref = torch.fake_quantize_per_channel_affine(w, scale.flatten(), torch.zeros(16, dtype=torch.int32), 0,
                                                 fmt.qmin, fmt.qmax)
    got = fake_quantize(w, fmt, scale)
    assert torch.equal(got.detach(), ref.detach())
    upstream = torch.randn_like(w)
    assert torch.equal(torch.autograd.grad(got, w, upstream)[0], torch.autograd.grad(ref, w, upstream)[0])


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp4_e2m1", "e2m5", "bf16", "fp16"])
def test_fp_gradient_is_masked_straight_through(name):
    fmt = parse_format(name)
    scale = 0.5
    x = torch.tensor([0.0, 0.1, -1.0, fmt.max * scale, fmt.max * scale * 1.5, -fmt.max * scale * 3], requires_grad=True)
    upstream = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    (grad,) = torch.autograd.grad(fake_quantize(x, fmt, scale), x, upstream)
    assert torch.equal(grad, torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, 0.0]))


def below(value: float) -> float:
    return torch.nextafter(torch.tensor(value), torch.tensor(0.0)).item()


def above(value: float) -> float:
    return torch.nextafter(torch.tensor(value), torch.tensor(math.inf)).item()


def reference_gradient_passes(y: float, grid: list[float]) -> bool:
    """Whether float64 rounding of y onto the grid extended by one top step stays within max."""
    top_step = grid[-1] - grid[-2]
    return math.isfinite(y) and abs(reference_round(y, grid + [grid[-1] + top_step])) <= grid[-1]


@pytest.mark.parametrize("name", sorted(ML_DTYPES) + ["e2m5", "e1m0", "e3m1"])
def test_fp_gradient_passes_exactly_where_rounding_stays_in_range(name):
    if name in ML_DTYPES:
        fmt, grid = parse_format(name), finite_grid(ML_DTYPES[name]).tolist()
    else:
        fmt = FloatFormat(int(name[1]), int(name[3]))
        grid = generic_grid(fmt.exp_bits, fmt.man_bits)
    top_step = grid[-1] - grid[-2]
    band = [fmt.max, above(fmt.max), fmt.max + top_step / 4, fmt.max + top_step / 2, below(fmt.max + top_step / 2),
            above(fmt.max + top_step / 2), fmt.max + top_step, math.inf, math.nan]
    x = torch.cat([stress_inputs(fmt.max, np.array(grid), seed=5), torch.tensor(band), -torch.tensor(band)])
    x.requires_grad_()
    (grad,) = torch.autograd.grad(fake_quantize(x, fmt, 1.0), x, torch.ones_like(x))
    want = torch.tensor([float(reference_gradient_passes(v, grid)) for v in x.tolist()])
    assert torch.equal(grad, want)
    assert 0 < int(want.sum()) < x.numel()


@pytest.mark.parametrize("granularity", list(Granularity))
@pytest.mark.parametrize("name", ["int4", "int8", "fp8_e4m3", "fp8_e5m2", "fp6_e3m2", "fp4_e2m1"])
def test_abs_max_quantize_skips_the_mask_exactly(name, granularity):
    """`quantize` (abs-max scale, no mask) has the same output and gradient as `fake_quantize`
    with the same scale, which computes the mask: the skipped mask would have been all ones."""
    fmt = parse_format(name)
    dim = 0 if granularity is Granularity.PER_CHANNEL else -1
    gen = torch.Generator().manual_seed(7)
    for _ in range(20):
        x = (torch.randn(8, 33, generator=gen) * torch.rand(8, 1, generator=gen) * 30).requires_grad_()
        upstream = torch.randn(8, 33, generator=gen)
        fast = quantize(x, fmt, granularity, dim=dim)
        (fast_grad,) = torch.autograd.grad(fast, x, upstream)
        masked = fake_quantize(x, fmt, compute_scale(x, fmt, granularity, dim=dim))
        (masked_grad,) = torch.autograd.grad(masked, x, upstream)
        assert bits_equal(fast.detach(), masked.detach())
        assert torch.equal(fast_grad, masked_grad) and torch.equal(fast_grad, upstream)


def test_no_quant_is_identity():
    x = torch.randn(10, requires_grad=True)
    assert fake_quantize(x, "none", 1.0) is x
    assert quantize(x, parse_format("none"), Granularity.PER_TENSOR) is x


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["int4", "int8", "fp8_e4m3", "fp4_e2m1"])
def test_low_precision_inputs_keep_their_dtype(dtype, name):
    fmt = parse_format(name)
    x = (torch.randn(2048, generator=torch.Generator().manual_seed(1)) * 4).to(dtype)
    scale = torch.tensor(0.03)
    got = fake_quantize(x, fmt, scale)
    assert got.dtype == dtype and torch.isfinite(got).all()
    # Same as quantizing the exactly-upcast values in float32 and rounding the result to dtype.
    assert torch.equal(got, fake_quantize(x.float(), fmt, scale).to(dtype))


@pytest.mark.parametrize(
    "scale, match",
    [
        (0.0, r"scale must lie in \[2.94e-39, 3.4e\+38\] everywhere \(positive and finite in float32, with a "
              r"finite reciprocal\), got 0.0; compute it with compute_scale"),
        (-1.0, r"got -1.0"),
        (float("nan"), r"got nan"),
        (float("inf"), r"got inf"),
        # 1 / scale overflows in float32: 0 * inf would be NaN
        (1e-40, r"got 1e-40;"),
        (2.0**-128, r"got 2.938735877055719e-39;"),
        (torch.tensor([1.0, 1e-39, 3.0]), r"got 1.00000\d*e-39;"),
        # finite in float64, not once in float32
        (torch.tensor(1e300, dtype=torch.float64), r"got 1e\+300;"),
        (torch.tensor(1e-50, dtype=torch.float64), r"got 1e-50;"),
        (torch.tensor([1.0, -2.0, 3.0]), r"got -2.0"),
        (torch.ones(3, 2), r"scale of shape \(3, 2\) does not broadcast against x of shape \(3,\)"),
        (torch.tensor([1, 2, 3]), "floating-point tensor"),
    ],
)
def test_bad_scales(scale, match):
    with pytest.raises(ValueError, match=match):
        fake_quantize(torch.ones(3), "int8", scale)


@pytest.mark.parametrize("scale, shown", [("1", "'1' (str)"), (True, "True (bool)"), (np.True_, "True (bool)"),
                                          (None, "None (NoneType)"), ([0.5], "[0.5] (list)")])
def test_scales_of_another_type(scale, shown):
    shown = f"{scale!r} ({type(scale).__name__})" if isinstance(scale, np.bool_) else shown  # numpy's repr varies
    with pytest.raises(TypeError, match=rf"^scale must be a positive number or a floating-point tensor, got "
                                        rf"{re.escape(shown)}$"):
        fake_quantize(torch.ones(3), "int8", scale)


@pytest.mark.parametrize("scale", [0.5, 2, np.float32(0.5), np.float64(0.5), np.int64(2), np.float16(0.5)])
def test_python_and_numpy_number_scales_equal_a_tensor_scale(scale):
    x = torch.linspace(-3, 3, 41)
    want = fake_quantize(x, "int4", torch.tensor(float(scale)))
    torch.testing.assert_close(fake_quantize(x, "int4", scale), want, atol=0, rtol=0)


@pytest.mark.parametrize("token", ["int8", "int2", "fp8_e4m3", "fp4"])
@pytest.mark.parametrize("scale", [SMALLEST_SCALE, LARGEST_SCALE])
def test_extreme_accepted_scales_keep_finite_inputs_finite(token, scale):
    """At the smallest and largest scales accepted, finite inputs give finite outputs; INT ones
    equal round-half-even(x * (1 / scale)) clamped, times the scale, all in float32."""
    fmt = parse_format(token)
    x = torch.tensor([0.0, -0.0, 1e-39, -2.3e-39, 7e-39, -1e-38, 1.0, 3e38, -3e38, 1e-45])
    got = fake_quantize(x, fmt, scale)
    assert torch.isfinite(got).all(), got
    scale32 = torch.tensor(scale, dtype=torch.float32)
    largest = -fmt.qmin if isinstance(fmt, IntFormat) else fmt.max  # the INT grid reaches -2^(N-1)
    assert got.abs().max() <= largest * scale32
    if isinstance(fmt, IntFormat):
        expected = torch.round(x * torch.reciprocal(scale32)).clamp(fmt.qmin, fmt.qmax) * scale32
        assert torch.equal(got, expected)


def test_bad_inputs():
    with pytest.raises(ValueError, match="floating-point tensor, got dtype torch.int64"):
        fake_quantize(torch.ones(3, dtype=torch.long), "int8", 1.0)
    with pytest.raises(ValueError, match="unknown format 'int8x'"):
        fake_quantize(torch.ones(3), "int8x", 1.0)
    with pytest.raises(ValueError, match=r"range_percentile must be in \(0, 100\] or negative"):
        compute_scale(torch.ones(3), parse_format("int8"), range_percentile=101)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["int4", "int8", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "e2m5", "bf16"])
def test_cuda_matches_cpu(name):
    fmt = parse_format(name)
    x = stress_inputs(fmt.max, np.array([0.0, fmt.max]))
    scale = torch.tensor(0.37)
    assert bits_equal(fake_quantize(x.cuda(), fmt, scale.cuda()).cpu(), fake_quantize(x, fmt, scale))


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2", "int8", "fp4_e2m1"])
def test_cuda_eager_path_matches_cpu(name):
    """CUDA's eager path (the fallback of the fused kernel; torch's native float8 casts for
    E4M3/E5M2): same values and masks as the CPU, including the band between fmt.max and the
    rounding bound, where torch's cast must round down to fmt.max."""
    from quant.quant_utils import _eager_forward  # the eager path, whether or not the kernel is on

    fmt = parse_format(name)
    lo, hi = rounding_bounds(fmt)
    band = torch.linspace(fmt.max, hi, 257)
    x = torch.cat([stress_inputs(fmt.max, np.array([0.0, fmt.max])), band, -band, torch.tensor([above(hi), lo])])
    scale = torch.tensor(1.0)
    out, mask = _eager_forward(x.cuda(), fmt, scale.cuda(), need_mask=True)
    want, want_mask = _eager_forward(x, fmt, scale, need_mask=True)
    assert bits_equal(out.cpu(), want) and torch.equal(mask.cpu(), want_mask)
    assert (want[-(2 * 257 + 2):-2].abs() == fmt.max).all()


@pytest.mark.gpu
@pytest.mark.parametrize("granularity", list(Granularity))
@pytest.mark.parametrize("name", ["int4", "int8", "fp8_e4m3", "fp4_e2m1", "fp6_e3m2"])
def test_cuda_quantize_and_gradient_match_cpu(name, granularity):
    """The per-step path of the layers (scale + fused kernel + masked gradient) on CUDA equals
    the CPU's eager path bit for bit, with clipping (range percentile) and without."""
    fmt = parse_format(name)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(16, 4, 9, generator=gen) * torch.rand(16, 1, 1, generator=gen) * 5
    for percentile in (100.0, 99.0):
        results = []
        for device in ("cpu", "cuda"):
            leaf = x.detach().to(device).requires_grad_()  # a leaf on each device
            out = quantize(leaf, fmt, granularity, dim=0 if granularity is Granularity.PER_CHANNEL else -1,
                           range_percentile=percentile)
            out.backward(torch.ones_like(out))
            results.append((out.detach().cpu(), leaf.grad.cpu()))
        (cpu_out, cpu_grad), (cuda_out, cuda_grad) = results
        assert bits_equal(cuda_out, cpu_out), (name, granularity, percentile)
        assert torch.equal(cuda_grad, cpu_grad), (name, granularity, percentile)


@pytest.mark.parametrize("percentile", [100.0, 99.0, -1.0])
@pytest.mark.parametrize("name", ["int4", "fp8_e4m3"])
def test_the_range_form_of_the_fake_quantize_function_equals_the_scale_form(name, percentile):
    """On CUDA `quantize` passes the range and the kernel derives the scale; elsewhere (and where
    the kernel does not apply) the range form falls back to scale_from_range: same values and
    gradients as passing that scale."""
    from quant.quant_utils import _FakeQuantizeFunction
    from quant.scales import _reduce_dims, _value_range, scale_from_range

    fmt = parse_format(name)
    x = torch.randn(6, 5, 7, generator=torch.Generator().manual_seed(5)) * 3
    value_range = _value_range(x, fmt, _reduce_dims(x, Granularity.PER_TOKEN, -1), percentile)
    grads = []
    outs = []
    for value, is_range in ((value_range, True), (scale_from_range(value_range, fmt), False)):
        leaf = x.clone().requires_grad_()
        out = _FakeQuantizeFunction.apply(leaf, fmt, value, percentile < 100.0, is_range)
        out.backward(torch.arange(out.numel(), dtype=torch.float32).view_as(out))
        outs.append(out.detach())
        grads.append(leaf.grad)
    assert bits_equal(outs[0], outs[1]) and torch.equal(grads[0], grads[1])
    assert bits_equal(outs[0], quantize(x, fmt, Granularity.PER_TOKEN, dim=-1, range_percentile=percentile))


def test_a_bad_range_percentile_is_named_before_it_is_used():
    with pytest.raises(TypeError, match=r"range_percentile must be a number in \(0, 100\] or negative, got None"):
        quantize(torch.ones(3), "int8", "per_tensor", range_percentile=None)


def test_format_tokens_are_accepted_everywhere():
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(7))
    int4, e4m3 = parse_format("int4"), parse_format("fp8_e4m3")
    assert bits_equal(compute_scale(x, "int4"), compute_scale(x, int4))
    assert bits_equal(compute_scale(x, 4, "per_channel"), compute_scale(x, int4, Granularity.PER_CHANNEL))
    assert bits_equal(quantize(x, "fp8_e4m3", "per_token", dim=-1), quantize(x, e4m3, Granularity.PER_TOKEN, dim=-1))
    assert quantize(x, "none", "per_tensor") is x
    with pytest.raises(ValueError, match="unknown format 'int4x'"):
        quantize(x, "int4x", Granularity.PER_TENSOR)
    with pytest.raises(ValueError, match="unknown format 'int4x'"):
        compute_scale(x, "int4x")


@pytest.mark.parametrize("name", ["int8", "int4", "fp8_e4m3", "e2m5", "bf16"])
@pytest.mark.parametrize("granularity, dim", [("per_tensor", 0), ("per_channel", 0), ("per_channel", 1),
                                              ("per_token", -1), ("per_token", 0)])
@pytest.mark.parametrize("percentile", [100.0, 99.0, -1.0])
def test_empty_tensors_give_empty_outputs_and_unit_scales(name, granularity, dim, percentile):
    fmt = parse_format(name)
    for shape in [(0, 4), (4, 0), (0, 0)]:
        x = torch.empty(shape, requires_grad=True)
        out = quantize(x, fmt, granularity, dim=dim, range_percentile=percentile)
        assert out.shape == shape and out.dtype == torch.float32
        out.sum().backward()
        assert x.grad.shape == shape
        assert quantize(x.detach().to(torch.bfloat16), fmt, granularity, dim=dim).dtype == torch.bfloat16
        scale = compute_scale(x, fmt, granularity, dim=dim, range_percentile=percentile)
        reduced = {"per_tensor": (0, 1), "per_channel": (1 - dim,), "per_token": (dim % 2,)}[granularity]
        want_shape = (1, 1) if name == "bf16" else tuple(1 if d in reduced else s for d, s in enumerate(shape))
        assert scale.dtype == torch.float32 and torch.equal(scale, torch.ones(want_shape))
    assert fake_quantize(torch.empty(0, 3), fmt, torch.ones(1, 3)).shape == (0, 3)


@pytest.mark.parametrize("x_shape, scale_shape", [((3,), (2, 3)), ((3,), (1, 3)), ((), (1,)), ((4, 1), (4, 5)),
                                                  ((2, 3), (1, 1, 1))])
def test_scale_must_not_change_the_shape_of_x(x_shape, scale_shape):
    x, scale = torch.randn(x_shape), torch.ones(scale_shape)
    out = str(tuple(torch.broadcast_shapes(x_shape, scale_shape))).replace("(", r"\(").replace(")", r"\)")
    xs, ss = (str(tuple(s)).replace("(", r"\(").replace(")", r"\)") for s in (x_shape, scale_shape))
    with pytest.raises(ValueError, match=rf"scale of shape {ss} would broadcast x of shape {xs} to {out}; the result "
                                         r"keeps x's shape, so use a scalar, .* with no more dimensions than x"):
        fake_quantize(x, "int4", scale)


def test_non_finite_inputs_propagate():
    """Pinned (see quant_utils' docstring): NaN stays NaN and inf saturates under a given scale;
    under an abs-max scale either one makes its whole group NaN, so the trainer's non-finite
    check sees it. torch's fake quant would turn NaN into qmin instead."""
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([1.0, nan, inf, -inf, 0.5])

    def same(got: torch.Tensor, want: list) -> None:
        torch.testing.assert_close(got, torch.tensor(want), rtol=0, atol=0, equal_nan=True)

    same(fake_quantize(x, "int8", 1.0), [1.0, nan, 127.0, -128.0, 0.0])
    same(fake_quantize(x, "fp8_e4m3", 0.5), [1.0, nan, 224.0, -224.0, 0.5])
    same(fake_quantize(x, "bf16", 1.0), [1.0, nan, 3.3895313892515355e38, -3.3895313892515355e38, 0.5])
    assert torch.fake_quantize_per_tensor_affine(x, 1.0, 0, -128, 127)[1].item() == -128.0  # torch: NaN -> qmin
    int8, fp4 = parse_format("int8"), parse_format("fp4")
    for bad in (nan, inf, -inf):
        t = torch.tensor([1.0, 2.0, bad])
        assert compute_scale(t, int8).isnan().item() == (bad != bad)
        assert torch.isnan(quantize(t, int8, Granularity.PER_TENSOR)).all()
        assert torch.isnan(quantize(t, fp4, Granularity.PER_TENSOR)).all()
    # Per channel only the group holding the value is affected.
    rows = torch.tensor([[1.0, 2.0], [3.0, nan], [inf, 1.0], [0.5, -4.0]])
    got = quantize(rows, int8, Granularity.PER_CHANNEL, dim=0)
    assert torch.isnan(got[1:3]).all()
    assert bits_equal(got[[0, 3]], quantize(rows[[0, 3]], int8, Granularity.PER_CHANNEL, dim=0))


@pytest.mark.parametrize("fmt", ["int4", "fp8_e4m3", "bf16", "none"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool])
def test_quantize_refuses_non_float_tensors_like_fake_quantize(fmt, dtype):
    """quantize(arange(4), int4) used to return [0, 0, 2, 3]: Q(x / scale) * scale truncated to int64."""
    x = torch.arange(4).to(dtype)
    message = rf"needs a floating-point tensor, got dtype {dtype}; convert it first, e.g. x.float\(\)"
    with pytest.raises(ValueError, match=r"^quantize " + message):
        quantize(x, fmt, "per_tensor")
    with pytest.raises(ValueError, match=r"^fake_quantize " + message):
        fake_quantize(x, fmt, 1.0)


def test_unknown_granularity_names_the_valid_values():
    x = torch.ones(2, 3)
    pattern = r"unknown scale granularity 'per_row'; valid values: per_tensor, per_channel, per_token"
    with pytest.raises(ValueError, match=pattern):
        quantize(x, "int8", "per_row")
    with pytest.raises(ValueError, match=pattern):
        compute_scale(x, "int8", "per_row")
    with pytest.raises(ValueError, match=pattern):
        QuantizerSpec("int8", "per_row")
    assert QuantizerSpec("int8", "per_token").granularity is Granularity.PER_TOKEN


@pytest.mark.parametrize("fmt", ["int2", "int4", "int8", "fp4_e2m1", "fp6_e2m3", "fp8_e4m3", "fp8_e5m2", "bf16", "none"])
@pytest.mark.parametrize(("granularity", "percentile"), [("per_tensor", 100.0), ("per_token", 100.0),
                                                         ("per_tensor", 99.0), ("per_token", -1.0)])
def test_quantized_values_equal_quantize_checked_without_a_graph(fmt, granularity, percentile):
    """The backward's recomputation of a shared input (quant/input_recompute.py) needs these equal."""
    from quant.quant_utils import checked_scale_options, input_range, quantize_checked, quantized_values

    torch.manual_seed(0)
    x = (torch.randn(6, 40) * 4).requires_grad_(True)
    fmt = parse_format(fmt)
    parsed = checked_scale_options(granularity, percentile)
    value_range = input_range(x, fmt, parsed, -1, percentile)
    expected = quantize_checked(x, fmt, parsed, -1, percentile, value_range)
    with torch.no_grad():
        got = quantized_values(x, fmt, parsed, -1, percentile, value_range)
    assert torch.equal(got, expected) and got.dtype == expected.dtype
    assert got.grad_fn is None
