import re

import numpy as np
import pytest
import torch

from quant.formats import parse_format
from quant.quant_utils import QuantizerSpec, quantize
from quant.scales import Granularity, abs_max, compute_scale
from tests.quant.test_rounding import bits_equal


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
    one = abs_max(torch.tensor(-3.0), Granularity.PER_TENSOR, range_percentile=99.0)  # 0-dim: its own |value|
    assert one.shape == () and one.dtype == torch.float32 and one.item() == 3.0


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
@pytest.mark.parametrize("percentile", [100.0, 99.0, -1.0])
@pytest.mark.parametrize("name", ["int4", "int8", "fp8_e4m3", "fp4_e2m1"])
def test_cuda_scales_equal_cpu_scales(name, percentile):
    """amax / fmt.max is the same number on both devices (CUDA would otherwise multiply by a
    rounded reciprocal: 13 of 15 format/granularity pairs of
    test_quant_utils.py::test_cuda_quantize_and_gradient_match_cpu came out 1 ulp off)."""
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


def test_divide_exactly_is_true_division():
    from quant.scales import divide_exactly
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
    from quant import scales

    x = torch.randn(4, 6, 8, generator=torch.Generator().manual_seed(9)) * 4
    fmt = parse_format("int4")
    want = scales._mse_optimal_abs_max(x, fmt, (2,))
    monkeypatch.setattr(scales, "_DEVICE_CONSTANTS", {})
    built = []
    real = scales._device_constant

    def counting(key, device, build):
        return real(key, device, lambda: built.append(key) or build())

    monkeypatch.setattr(scales, "_device_constant", counting)
    for _ in range(3):
        assert bits_equal(scales._mse_optimal_abs_max(x, fmt, (2,)), want)
    # the coarse ratios, the fine steps, and divide_exactly's two divisors (fmt.max, the step factor)
    factor = scales._MSE_COARSE_RATIOS[0] / scales._MSE_COARSE_RATIOS[1]
    assert sorted(map(str, built)) == sorted(map(str, ["mse_coarse_ratios", "mse_fine_steps",
                                                       ("divisor", fmt.max), ("divisor", factor)]))
    constants = scales._DEVICE_CONSTANTS
    assert torch.equal(constants[("mse_coarse_ratios", x.device)], torch.logspace(0, -7, 64, base=2.0))
    assert torch.equal(constants[("mse_fine_steps", x.device)], torch.linspace(0, 1, 16))


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


def test_scale_edge_cases_of_formats_without_a_range():
    import numpy as np

    # bf16 / none carry their own range: scale 1 whatever the granularity, 0-dim tensors included
    assert compute_scale(torch.tensor(1.5), "bf16", "per_channel").tolist() == 1.0
    assert compute_scale(torch.tensor(1.5), "none", "per_token").tolist() == 1.0
    # any real percentile (numpy too)
    x = torch.arange(1.0, 101.0)
    assert compute_scale(x, "int8", range_percentile=np.float32(50.0)).item() == compute_scale(
        x, "int8", range_percentile=50.0).item()


@pytest.mark.parametrize("dim", [1.5, "1", None, True, torch.tensor(1.0)])
@pytest.mark.parametrize("granularity", ["per_channel", "per_token", "per_tensor"])
def test_dim_must_be_an_integer(dim, granularity):
    """1.5 used to keep no dimension: a per-tensor scale under the name per_channel."""
    x = torch.randn(4, 6)
    match = rf"^dim must be an integer \(the channel or feature dimension\), got {re.escape(repr(dim))} " \
            rf"\({type(dim).__name__}\)$"
    with pytest.raises(TypeError, match=match):
        compute_scale(x, "int4", granularity, dim=dim)
    with pytest.raises(TypeError, match=match):
        quantize(x, "int4", granularity, dim=dim)
    with pytest.raises(TypeError, match=match):
        abs_max(x, granularity, dim=dim)


def test_integer_dims_of_other_types_equal_the_int():
    x = torch.randn(4, 6) * torch.arange(1, 7.0)
    want = compute_scale(x, "int4", "per_channel", dim=1)
    for dim in (np.int64(1), torch.tensor(1), -1):
        assert bits_equal(compute_scale(x, "int4", "per_channel", dim=dim), want)


@pytest.mark.parametrize("percentile, error, match", [
    (-5, ValueError, r"^abs_max takes range_percentile in \(0, 100\], got -5 \(MSE-optimal clipping, a negative "
                     r"range_percentile, is compute_scale's\)$"),
    (0, ValueError, r"^abs_max takes range_percentile in \(0, 100\], got 0 \("),
    (101, ValueError, r"^abs_max takes range_percentile in \(0, 100\], got 101 \("),
    (float("nan"), ValueError, r"^abs_max takes range_percentile in \(0, 100\], got nan \("),
    ("99", TypeError, r"^range_percentile must be a number in \(0, 100\], got '99'$"),
])
def test_abs_max_checks_its_range_percentile(percentile, error, match):
    """-5 used to return the smallest |x| (the k-th value with k clamped to 1)."""
    with pytest.raises(error, match=match):
        abs_max(torch.randn(8), "per_tensor", range_percentile=percentile)
