import bisect
import math

import ml_dtypes
import numpy as np
import pytest
import torch

from quant.formats import FloatFormat, IntFormat, parse_format, rounding_bounds
from quant.quant_utils import (
    Granularity,
    QuantizerSpec,
    abs_max,
    abs_max_scaling_cannot_saturate,
    compute_scale,
    fake_quantize,
    quantize,
)

ML_DTYPES = {
    "fp8_e4m3": ml_dtypes.float8_e4m3fn,
    "fp8_e5m2": ml_dtypes.float8_e5m2,
    "fp8_e3m4": ml_dtypes.float8_e3m4,
    "fp6_e2m3": ml_dtypes.float6_e2m3fn,
    "fp6_e3m2": ml_dtypes.float6_e3m2fn,
    "fp4_e2m1": ml_dtypes.float4_e2m1fn,
}
SCALES = [1.0, 0.25, 0.37, 3.0, 1e-3, 2.0**-20]


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape
    return torch.equal(a.view(torch.int32), b.view(torch.int32))


def finite_grid(dtype) -> np.ndarray:
    """Sorted non-negative finite values of an ml_dtypes format, by enumerating its codes
    (sub-byte ml_dtypes formats are stored one value per byte)."""
    codes = np.arange(2 ** ml_dtypes.finfo(dtype).bits, dtype=np.uint8)
    values = codes.view(dtype).astype(np.float64)
    return np.unique(np.abs(values[np.isfinite(values)]))


def stress_inputs(fmt_max: float, grid: np.ndarray, seed: int = 0) -> torch.Tensor:
    """Subnormals, normals, values past max, exact ties, +-0, and every representable value."""
    gen = torch.Generator().manual_seed(seed)
    exps = torch.randint(-30, int(math.log2(fmt_max)) + 4, (20000,), generator=gen).float()
    random = torch.randn(20000, generator=gen) * torch.exp2(exps)
    mids = (grid[1:] + grid[:-1]) / 2  # exact ties in float32 for these small formats
    pieces = [
        random,
        torch.tensor(grid, dtype=torch.float32),
        torch.tensor(mids, dtype=torch.float32),
        -torch.tensor(mids, dtype=torch.float32),
        torch.tensor([0.0, -0.0, fmt_max, -fmt_max, fmt_max * 1.01, fmt_max * 1e6, -3e38, 1e-40, -1e-45]),
    ]
    return torch.cat(pieces)


@pytest.mark.parametrize("name", sorted(ML_DTYPES))
def test_every_code_is_a_fixed_point(name):
    fmt, dtype = parse_format(name), ML_DTYPES[name]
    grid = finite_grid(dtype)
    assert grid.max() == fmt.max
    values = torch.tensor(np.concatenate([grid, -grid]), dtype=torch.float32)
    assert bits_equal(fake_quantize(values, fmt, 1.0), values)
    # Number of distinct finite non-negative values = what the definition gives.
    assert len(grid) == 2 ** (fmt.bits - 1) - (1 if name == "fp8_e4m3" else 0) - (
        2 ** fmt.man_bits if fmt.special.value == "ieee" else 0
    )


@pytest.mark.parametrize("name", sorted(ML_DTYPES))
@pytest.mark.parametrize("scale", SCALES)
def test_named_fp_formats_match_ml_dtypes_bit_for_bit(name, scale):
    fmt, dtype = parse_format(name), ML_DTYPES[name]
    x = stress_inputs(fmt.max, finite_grid(dtype)) * scale
    scale_t = torch.tensor(scale)
    got = fake_quantize(x, fmt, scale_t)
    y = (x * torch.reciprocal(scale_t)).clamp(-fmt.max, fmt.max).numpy()
    ref = torch.from_numpy(y.astype(dtype).astype(np.float32)) * scale_t
    assert bits_equal(got, ref)
    assert torch.isfinite(got).all()


def reference_round(x: float, grid: list[float]) -> float:
    """Independent float64 rounding to a sorted non-negative grid: nearest, ties to the even
    multiple of the local spacing, saturating at the largest value, sign kept (also for zero)."""
    a = min(abs(x), grid[-1])
    i = bisect.bisect_left(grid, a)
    if grid[i] == a:
        r = a
    else:
        lo, hi = grid[i - 1], grid[i]
        if a - lo != hi - a:
            r = lo if a - lo < hi - a else hi
        else:
            step = hi - lo
            r = lo if round(lo / step) % 2 == 0 else hi
    return math.copysign(r, x)


def generic_grid(exp_bits: int, man_bits: int) -> list[float]:
    """All non-negative values of a generic (all-codes-finite) eXmY format, from the definition."""
    bias = 2 ** (exp_bits - 1) - 1
    values = set()
    for e in range(2**exp_bits):
        for m in range(2**man_bits):
            if e == 0:
                values.add(2.0 ** (1 - bias) * m / 2**man_bits)
            else:
                values.add(2.0 ** (e - bias) * (1 + m / 2**man_bits))
    return sorted(values)


@pytest.mark.parametrize("token", ["e1m0", "e1m3", "e2m0", "e2m5", "e3m3", "e4m3g", "e5m0", "e5m2g", "e3m1", "e1m6"])
def test_generic_exmy_matches_float64_reference(token):
    exp_bits, man_bits = int(token[1]), int(token[3])
    fmt = FloatFormat(exp_bits, man_bits)  # all-codes-finite (e4m3g/e5m2g: the generic variants)
    grid = generic_grid(exp_bits, man_bits)
    assert fmt.max == grid[-1] and fmt.min_positive == grid[1]
    x = stress_inputs(fmt.max, np.array(grid), seed=exp_bits * 10 + man_bits)
    got = fake_quantize(x, fmt, 1.0)
    ref = torch.tensor([reference_round(v, grid) for v in x.tolist()], dtype=torch.float32)
    assert bits_equal(got, ref)


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


@pytest.mark.parametrize("name", [f"int{b}" for b in range(2, 17)] + sorted(ML_DTYPES) + ["e2m5", "e5m0", "e1m6"])
def test_abs_max_scaling_cannot_saturate(name):
    fmt = parse_format(name)
    assert abs_max_scaling_cannot_saturate(fmt)
    lo, hi = rounding_bounds(fmt)
    # The claim, checked on x / scale for tensors whose largest element lands above fmt.max.
    gen = torch.Generator().manual_seed(0)
    overshoots = 0
    for _ in range(200):
        x = torch.randn(64, generator=gen) * torch.rand(1, generator=gen) * 100
        y = x * torch.reciprocal(compute_scale(x, fmt))
        assert lo <= float(y.min()) and float(y.max()) <= hi
        overshoots += int(float(y.abs().max()) > fmt.max)
    if not math.log2(fmt.max).is_integer():  # dividing by a power of two is exact: no overshoot
        assert overshoots > 0  # the case a |y| <= max rule would have masked


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_cast_formats_can_saturate(name):
    assert not abs_max_scaling_cannot_saturate(parse_format(name))  # their scale is 1, not abs-max


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


def test_cast_formats_round_like_torch_and_saturate():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10000, generator=gen) * 100
    assert bits_equal(fake_quantize(x, "bf16", 1.0), x.to(torch.bfloat16).float())
    assert bits_equal(fake_quantize(x, "fp16", 1.0), x.to(torch.float16).float())
    big = torch.tensor([7e4, -1e30, 65504.0, 1e39])
    assert fake_quantize(big, "fp16", 1.0).tolist() == [65504.0, -65504.0, 65504.0, 65504.0]


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


def test_sign_of_zero_is_kept():
    out = fake_quantize(torch.tensor([-0.0, -1e-30, 0.0]), "fp8_e4m3", 1.0)
    assert out.view(torch.int32).tolist() == torch.tensor([-0.0, -0.0, 0.0]).view(torch.int32).tolist()


@pytest.mark.parametrize(
    "scale, match",
    [
        (0.0, "scale must be positive and finite everywhere, got 0.0"),
        (-1.0, r"got -1.0"),
        (float("nan"), r"got nan"),
        (torch.tensor([1.0, -2.0, 3.0]), r"got -2.0"),
        (torch.ones(3, 2), r"scale of shape \(3, 2\) does not broadcast against x of shape \(3,\)"),
        ("1", "scale must be a positive float or tensor"),
        (torch.tensor([1, 2, 3]), "floating-point tensor"),
    ],
)
def test_bad_scales(scale, match):
    with pytest.raises(ValueError, match=match):
        fake_quantize(torch.ones(3), "int8", scale)


def test_bad_inputs():
    with pytest.raises(ValueError, match="floating-point tensor, got dtype torch.int64"):
        fake_quantize(torch.ones(3, dtype=torch.long), "int8", 1.0)
    with pytest.raises(ValueError, match="unknown format 'int8x'"):
        fake_quantize(torch.ones(3), "int8x", 1.0)
    with pytest.raises(ValueError, match=r"range_percentile must be in \(0, 100\] or negative"):
        compute_scale(torch.ones(3), parse_format("int8"), range_percentile=101)


def test_scales_per_tensor_channel_token():
    x = torch.tensor([[1.0, -4.0, 2.0], [0.5, 0.25, -0.125]])
    int8, e4m3 = parse_format("int8"), parse_format("e4m3")
    f32 = lambda rows: torch.tensor(rows, dtype=torch.float32)  # noqa: E731
    assert torch.equal(compute_scale(x, int8), f32([[4.0]]) / 127)
    assert torch.equal(compute_scale(x, e4m3, Granularity.PER_CHANNEL, dim=0), f32([[4.0], [0.5]]) / 448)
    assert torch.equal(compute_scale(x, int8, Granularity.PER_CHANNEL, dim=1), f32([[1.0, 4.0, 2.0]]) / 127)
    assert torch.equal(compute_scale(x, int8, Granularity.PER_TOKEN, dim=-1), f32([[4.0], [0.5]]) / 127)
    assert compute_scale(x, parse_format("bf16")).tolist() == [[1.0]]
    # An all-zero tensor gets a tiny positive scale and quantizes to zero, not NaN.
    zeros = torch.zeros(4)
    assert compute_scale(zeros, int8).item() > 0
    assert torch.equal(quantize(zeros, int8, Granularity.PER_TENSOR), zeros)


def test_range_percentile_takes_the_kth_abs_value():
    x = torch.arange(1, 101, dtype=torch.float32) * torch.tensor([1.0, -1.0]).repeat(50)
    assert abs_max(x, Granularity.PER_TENSOR, range_percentile=99.0).item() == 99.0
    assert abs_max(x, Granularity.PER_TENSOR, range_percentile=50.0).item() == 50.0
    rows = torch.stack([x, 2 * x])  # per channel: each row's own percentile
    assert abs_max(rows, Granularity.PER_CHANNEL, dim=0, range_percentile=90.0).flatten().tolist() == [90.0, 180.0]


def test_per_channel_error_beats_per_tensor_on_uneven_channels():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=gen) * torch.logspace(-4, 1, 64).unsqueeze(1)

    def channel_relative_error(q: torch.Tensor) -> torch.Tensor:
        # Each output channel's error relative to its own energy: per-tensor scales crush the
        # small channels (INT: few levels; FP: below the smallest subnormal).
        return ((q - w).square().sum(1) / w.square().sum(1)).mean()

    for name in ["int4", "int8", "fp8_e4m3", "fp8_e5m2", "fp6_e2m3", "fp4_e2m1"]:
        fmt = parse_format(name)
        err_tensor = channel_relative_error(quantize(w, fmt, Granularity.PER_TENSOR))
        err_channel = channel_relative_error(quantize(w, fmt, Granularity.PER_CHANNEL, dim=0))
        assert err_channel < err_tensor, name


def test_mse_clipping_beats_abs_max_on_heavy_tails():
    gen = torch.Generator().manual_seed(0)
    # Student-t with 3 degrees of freedom: a few huge outliers stretch the abs-max range.
    normal = torch.randn(50000, generator=gen)
    chi2 = torch.randn(3, 50000, generator=gen).square().sum(0)
    x = normal / torch.sqrt(chi2 / 3)
    for name in ["int4", "fp4_e2m1"]:
        fmt = parse_format(name)
        err_absmax = (quantize(x, fmt, Granularity.PER_TENSOR) - x).square().mean()
        err_mse = (quantize(x, fmt, Granularity.PER_TENSOR, range_percentile=-1) - x).square().mean()
        assert err_mse < 0.5 * err_absmax, name
    # Per channel, the MSE search never loses to abs-max in any channel.
    w = torch.cat([x[:25000].view(50, 500), torch.randn(50, 500, generator=gen)])
    fmt = parse_format("int4")
    per_row = lambda q: (q - w).square().mean(dim=1)  # noqa: E731
    assert (per_row(quantize(w, fmt, Granularity.PER_CHANNEL, range_percentile=-1))
            <= per_row(quantize(w, fmt, Granularity.PER_CHANNEL))).all()


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


@pytest.mark.gpu
@pytest.mark.parametrize("percentile", [100.0, 99.0, -1.0])
@pytest.mark.parametrize("name", ["int4", "int8", "fp8_e4m3", "fp4_e2m1"])
def test_cuda_scales_equal_cpu_scales(name, percentile):
    """amax / fmt.max is the same number on both devices (CUDA would otherwise multiply by a
    rounded reciprocal: 13 of 15 format/granularity pairs of the test above came out 1 ulp off)."""
    fmt = parse_format(name)
    x = torch.randn(16, 4, 9, generator=torch.Generator().manual_seed(3)) * 5
    for granularity in Granularity:
        dim = 0 if granularity is Granularity.PER_CHANNEL else -1
        cpu = compute_scale(x, fmt, granularity, dim=dim, range_percentile=percentile)
        cuda = compute_scale(x.cuda(), fmt, granularity, dim=dim, range_percentile=percentile).cpu()
        assert bits_equal(cuda, cpu), (granularity, percentile)


@pytest.mark.parametrize("name", ["int4", "fp4_e2m1", "int8"])
def test_mse_clipping_does_not_depend_on_cudas_scalar_division(monkeypatch, name):
    """On CUDA, `tensor / python_number` multiplies by the number's float32 reciprocal (up to an
    ulp off the true quotient). The MSE search must not divide that way, or CUDA picks other
    clipping ranges than the CPU (it did for 6 of 64 INT4 per-token groups). Emulated here by
    giving the CPU CUDA's rule; the GPU test above checks the real thing."""
    fmt = parse_format(name)
    x = torch.randn(16, 4, 9, generator=torch.Generator().manual_seed(3)) * 5
    want = compute_scale(x, fmt, Granularity.PER_TOKEN, dim=-1, range_percentile=-1)
    true_division = torch.Tensor.__truediv__

    def cuda_like_division(self, other):
        if isinstance(other, float):
            return self * float(np.float32(1) / np.float32(other))
        return true_division(self, other)

    monkeypatch.setattr(torch.Tensor, "__truediv__", cuda_like_division)
    assert bits_equal(compute_scale(x, fmt, Granularity.PER_TOKEN, dim=-1, range_percentile=-1), want)


@pytest.mark.parametrize("percentile", [100.0, 99.0, -1.0])
@pytest.mark.parametrize("name", ["int4", "fp8_e4m3"])
def test_the_range_form_of_the_fake_quantize_function_equals_the_scale_form(name, percentile):
    """On CUDA `quantize` passes the range and the kernel derives the scale; elsewhere (and where
    the kernel does not apply) the range form falls back to scale_from_range: same values and
    gradients as passing that scale."""
    from quant.quant_utils import _FakeQuantizeFunction, _reduce_dims, _value_range, scale_from_range

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


def test_divide_exactly_is_true_division():
    from quant.quant_utils import divide_exactly
    amax = torch.tensor([11.70470905303955, 1.0, 3.0e-38, 448.0])
    for divisor in (7.0, 127.0, 448.0, 6.0):
        assert bits_equal(divide_exactly(amax, divisor), amax / torch.tensor(divisor))
        assert bits_equal(divide_exactly(amax, divisor), torch.from_numpy(amax.numpy() / np.float32(divisor)))
    # Its cached divisor, first made under inference_mode, still serves a tensor that needs a gradient.
    with torch.inference_mode():
        divide_exactly(amax, 3.5)
    leaf = amax.clone().requires_grad_()
    divide_exactly(leaf, 3.5).sum().backward()
    assert bits_equal(leaf.grad, torch.full_like(amax, 1 / 3.5))


def test_the_mse_search_grids_are_built_once_per_device(monkeypatch):
    """The MSE search's ratio grids are copied to the device once, not at every call (on CUDA a
    copy from pageable memory makes the host wait for the GPU): the same tensors serve every
    call, and they hold the grids the search defines."""
    from quant import quant_utils

    x = torch.randn(4, 6, 8, generator=torch.Generator().manual_seed(9)) * 4
    fmt = parse_format("int4")
    want = quant_utils._mse_optimal_abs_max(x, fmt, (2,))
    monkeypatch.setattr(quant_utils, "_DEVICE_CONSTANTS", {})
    built = []
    real = quant_utils._device_constant

    def counting(key, device, build):
        return real(key, device, lambda: built.append(key) or build())

    monkeypatch.setattr(quant_utils, "_device_constant", counting)
    for _ in range(3):
        assert bits_equal(quant_utils._mse_optimal_abs_max(x, fmt, (2,)), want)
    # the coarse ratios, the fine steps, and divide_exactly's two divisors (fmt.max, the step factor)
    factor = quant_utils._MSE_COARSE_RATIOS[0] / quant_utils._MSE_COARSE_RATIOS[1]
    assert sorted(map(str, built)) == sorted(map(str, ["mse_coarse_ratios", "mse_fine_steps",
                                                       ("divisor", fmt.max), ("divisor", factor)]))
    constants = quant_utils._DEVICE_CONSTANTS
    assert torch.equal(constants[("mse_coarse_ratios", x.device)], torch.logspace(0, -7, 64, base=2.0))
    assert torch.equal(constants[("mse_fine_steps", x.device)], torch.linspace(0, 1, 16))


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


def test_scale_dims_are_checked():
    x = torch.randn(4, 4)
    int8 = parse_format("int8")
    with pytest.raises(ValueError, match=r"dim 5 is out of range for a tensor of shape \(4, 4\) \(2 dims\); "
                                         r"give -2 <= dim < 2"):
        compute_scale(x, int8, "per_channel", dim=5)
    with pytest.raises(ValueError, match=r"dim -3 is out of range"):
        quantize(x, int8, Granularity.PER_TOKEN, dim=-3)
    with pytest.raises(ValueError, match=r"dim 2 is out of range"):
        abs_max(x, Granularity.PER_CHANNEL, dim=2)
    scalar = torch.tensor(3.0)
    for granularity in ("per_channel", "per_token"):
        with pytest.raises(ValueError, match=rf"{granularity} scales need a tensor with at least 1 dimension, "
                                             r"got a 0-dim tensor; use per_tensor"):
            compute_scale(scalar, int8, granularity)
    assert bits_equal(compute_scale(scalar, int8), torch.tensor(3.0) / 127)
    assert quantize(scalar, int8, Granularity.PER_TENSOR).item() == 3.0
    # Per tensor, dim is unused and not checked.
    assert bits_equal(compute_scale(x, int8, dim=9), compute_scale(x, int8))


@pytest.mark.parametrize("percentile", [float("nan"), 0, 0.0, 100.5, float("inf")])
def test_bad_range_percentiles(percentile):
    pattern = rf"range_percentile must be in \(0, 100\] or negative \(100 = abs-max, negative = MSE-optimal " \
              rf"clipping\), got {percentile!r}"
    with pytest.raises(ValueError, match=pattern):
        compute_scale(torch.ones(3), parse_format("int8"), range_percentile=percentile)
    with pytest.raises(ValueError, match=pattern):
        quantize(torch.ones(3), parse_format("fp4"), Granularity.PER_TENSOR, range_percentile=percentile)
    with pytest.raises(ValueError, match=pattern):
        QuantizerSpec(parse_format("int8"), range_percentile=percentile)


def test_range_percentile_type():
    with pytest.raises(TypeError, match=r"range_percentile must be a number in \(0, 100\] or negative, got '99'"):
        compute_scale(torch.ones(3), parse_format("int8"), range_percentile="99")
    with pytest.raises(TypeError, match="range_percentile must be a number .*got True"):
        QuantizerSpec(parse_format("int8"), range_percentile=True)
    assert QuantizerSpec("int8", range_percentile=-2).range_percentile == -2


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


def test_scale_edge_cases_of_formats_without_a_range():
    import numpy as np

    # bf16 / none carry their own range: scale 1 whatever the granularity, 0-dim tensors included
    assert compute_scale(torch.tensor(1.5), "bf16", "per_channel").tolist() == 1.0
    assert compute_scale(torch.tensor(1.5), "none", "per_token").tolist() == 1.0
    # any real percentile (numpy too)
    x = torch.arange(1.0, 101.0)
    assert compute_scale(x, "int8", range_percentile=np.float32(50.0)).item() == compute_scale(
        x, "int8", range_percentile=50.0).item()
