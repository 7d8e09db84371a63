import bisect
import math

import ml_dtypes
import numpy as np
import pytest
import torch

from quant.formats import FloatFormat, parse_format, rounding_bounds
from quant.quant_utils import fake_quantize
from quant.rounding import abs_max_scaling_cannot_saturate
from quant.scales import compute_scale

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


def test_cast_formats_round_like_torch_and_saturate():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10000, generator=gen) * 100
    assert bits_equal(fake_quantize(x, "bf16", 1.0), x.to(torch.bfloat16).float())
    assert bits_equal(fake_quantize(x, "fp16", 1.0), x.to(torch.float16).float())
    big = torch.tensor([7e4, -1e30, 65504.0, 1e39])
    assert fake_quantize(big, "fp16", 1.0).tolist() == [65504.0, -65504.0, 65504.0, 65504.0]


def test_sign_of_zero_is_kept():
    out = fake_quantize(torch.tensor([-0.0, -1e-30, 0.0]), "fp8_e4m3", 1.0)
    assert out.view(torch.int32).tolist() == torch.tensor([-0.0, -0.0, 0.0]).view(torch.int32).tolist()
