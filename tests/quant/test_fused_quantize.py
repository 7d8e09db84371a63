"""The fused GPU kernel equals the eager fake quantization bit for bit.

The kernel runs on CUDA, or on the CPU under Triton's interpreter (TRITON_INTERPRET=1 set
before the import, as `TRITON_INTERPRET=1 python -m pytest tests/quant/test_fused_quantize.py`);
without either those tests skip. Format and layout coverage is checked everywhere.
"""
from __future__ import annotations

import os

import pytest
import torch

from quant import fused_quantize
from quant.formats import FloatFormat, IntFormat, parse_format
from quant.fused_quantize import (
    KernelParams,
    _scale_layout,
    fused_fake_quantize,
    fused_fake_quantize_from_range,
    kernel_params,
)
from quant.quant_utils import _eager_forward, fake_quantize
from quant.scales import Granularity, abs_max, compute_scale, scale_from_range

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# The CUDA cases carry the gpu mark, so that `pytest -m gpu` (benchmarks/gpu_check.sh) runs them.
KERNEL_DEVICES = ([pytest.param("cuda", marks=pytest.mark.gpu)] if torch.cuda.is_available() else []) \
    + (["cpu"] if INTERPRETED else [])
needs_kernel = pytest.mark.skipif(fused_quantize.triton is None or not KERNEL_DEVICES,
                                  reason="needs Triton with a CUDA device, or TRITON_INTERPRET=1")

FORMATS = ["int2", "int3", "int4", "int6", "int8", "int16", "fp8_e4m3", "fp8_e5m2", "fp8_e3m4", "fp6_e2m3",
           "fp6_e3m2", "fp4_e2m1", "e2m2", "e1m6", "e5m0"]


def test_kernel_params_of_int8_and_fp8() -> None:
    assert kernel_params(IntFormat(8)) == KernelParams(-128.5, 127.49999237060547, 127 << 23, 127 << 23, 0, 127.0)
    e4m3 = parse_format("fp8_e4m3")
    # FP clamps to its rounding bounds too: 464 = 448 + half the top step rounds (to even) to 448.
    assert kernel_params(e4m3) == KernelParams(-464.0, 464.0, (-6 - 3 + 127) << 23, 0x7F800000, 3 << 23, 448.0)


@pytest.mark.parametrize("token", ["bf16", "fp16", "none"])
def test_cast_formats_fall_back(token: str) -> None:
    assert kernel_params(parse_format(token)) is None


def test_every_int_and_generic_fp_format_is_covered() -> None:
    tokens = [f"int{b}" for b in range(2, 17)]
    tokens += [f"e{e}m{m}" for e in range(1, 6) for m in range(0, 8) if e + m <= 7]
    assert [t for t in tokens if kernel_params(parse_format(t)) is None] == []


@pytest.mark.parametrize(("x_shape", "scale_shape", "inner"), [
    ((8, 3, 3, 3), (1, 1, 1, 1), 216),  # per tensor
    ((8, 3, 3, 3), (), 216),
    ((8, 3, 3, 3), (8, 1, 1, 1), 27),  # per output channel
    ((2, 5, 16), (2, 5, 1), 16),  # per token
    ((16, 8), (1, 8), None),  # per channel on the last dim (GPT-2 Conv1D): eager
    ((2, 5, 16), (1, 5, 1), None),
])
def test_scale_layouts(x_shape: tuple[int, ...], scale_shape: tuple[int, ...], inner: int | None) -> None:
    assert _scale_layout(torch.empty(x_shape), torch.empty(scale_shape)) == inner


def _all_codes_probe(fmt, device: str) -> torch.Tensor:
    """Every representable value of `fmt` at scale 1, the midpoints between neighbours (ties),
    values just either side of them, the band above the maximum that still rounds to it (and the
    tie at its edge), past the maximum, -0, NaN and infinities."""
    if isinstance(fmt, IntFormat):
        grid = torch.arange(fmt.qmin, fmt.qmax + 1, dtype=torch.float64)
    else:
        assert isinstance(fmt, FloatFormat)
        positive = [0.0]
        for e in range(fmt.emin, fmt.emax + 1):
            positive += [2.0**e * (1 + m / 2**fmt.man_bits) for m in range(2**fmt.man_bits)]
        positive += [2.0**fmt.emin * m / 2**fmt.man_bits for m in range(1, 2**fmt.man_bits)]
        positive = sorted(v for v in set(positive) if v <= fmt.max)
        grid = torch.tensor(positive, dtype=torch.float64)
        grid = torch.cat([-grid.flip(0), grid])
    mids = (grid[1:] + grid[:-1]) / 2
    band = fmt.max + fmt.top_step * torch.tensor([0.25, 0.5 - 2**-20, 0.5, 0.5 + 2**-20, 0.75], dtype=torch.float64)
    values = torch.cat([grid, mids, mids * (1 + 2**-20), mids * (1 - 2**-20), band, -band, grid * 1.5,
                        torch.tensor([-0.0, 1e6, -1e6, 1e-30, -1e-30])]).float()
    special = torch.tensor([float("nan"), float("inf"), -float("inf")])
    return torch.cat([values, special]).to(device)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality, NaN payloads aside."""
    nan = a.isnan()
    if not torch.equal(nan, b.isnan()):
        return False
    a_bits = a.float().view(torch.int32)[~nan]
    b_bits = b.float().view(torch.int32)[~nan]
    return torch.equal(a_bits, b_bits)


def _check_against_eager(fused, x: torch.Tensor, fmt, scale_or_range: torch.Tensor, scale: torch.Tensor,
                         label: object) -> None:
    """`fused(x, fmt, scale_or_range, need_mask)` equals the eager path at `scale`, with the mask and without."""
    out, mask = fused(x, fmt, scale_or_range, need_mask=True)
    want, want_mask = _eager_forward(x, fmt, scale, need_mask=True)
    assert _same_bits(out, want), label
    assert torch.equal(mask, want_mask), label
    out_no_mask, none = fused(x, fmt, scale_or_range, need_mask=False)
    assert none is None and _same_bits(out_no_mask, want), label


@needs_kernel
@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("token", FORMATS)
def test_every_code_and_tie_matches_the_eager_path(device: str, token: str) -> None:
    fmt = parse_format(token)
    probe = _all_codes_probe(fmt, device)
    for scale_value in (1.0, 0.37, 3.0e-3, 2.0**-20):
        scale = torch.tensor([scale_value], device=device)
        _check_against_eager(fused_fake_quantize, probe * scale_value, fmt, scale, scale, (token, scale_value))


def _random_input(device: str, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """(12, 3, 5, 7) float32 on the CPU, 12 groups of different magnitudes. Skips bf16 under the
    interpreter, which does not round float32 -> bfloat16 to nearest even as the GPU does."""
    if device == "cpu" and dtype is torch.bfloat16:
        pytest.skip("Triton's interpreter does not round float32 -> bfloat16 to nearest even, as the GPU does")
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(12, 3, 5, 7, generator=generator) * torch.rand(12, 1, 1, 1, generator=generator) * 9


@needs_kernel
@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("granularity", list(Granularity))
@pytest.mark.parametrize("token", ["int8", "int4", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "fp6_e2m3"])
def test_random_tensors_every_granularity_and_dtype(device: str, dtype: torch.dtype, granularity: Granularity,
                                                    token: str) -> None:
    fmt = parse_format(token)
    x = _random_input(device, dtype, seed=7).to(dtype).to(device)
    scale = compute_scale(x, fmt, granularity, dim=0 if granularity is Granularity.PER_CHANNEL else -1)
    if granularity is not Granularity.PER_TENSOR:  # clip some elements too
        scale = scale * 0.6
    out, mask = fused_fake_quantize(x, fmt, scale, need_mask=True)
    want, want_mask = _eager_forward(x, fmt, scale, need_mask=True)
    assert out.dtype == dtype and _same_bits(out, want)
    assert torch.equal(mask, want_mask)


@needs_kernel
@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("token", FORMATS)
def test_scale_from_a_range_matches_the_eager_path(device: str, token: str) -> None:
    """Given the range, the kernel derives the scale (range / fmt.max, correctly rounded, at
    least 2^-126) exactly as `scale_from_range` does, for every code: odd ranges, ranges whose
    quotient is inexact, zero and subnormal ranges (clamped), and inf and NaN ranges."""
    fmt = parse_format(token)
    probe = _all_codes_probe(fmt, device)
    # 3e38: the scale's reciprocal is subnormal for the small formats (nothing may flush it to 0).
    ranges = [fmt.max, fmt.max * 0.37, 11.70470905303955, 3.0e-3, 1.0e-30, 0.0, 1.0e-40, 3.0e38, float("inf"),
              float("nan")]
    for value in ranges:
        value_range = torch.tensor([value], device=device)
        scale = scale_from_range(value_range, fmt)
        x = probe * (scale if scale.isfinite().all() else 1.0)
        _check_against_eager(fused_fake_quantize_from_range, x, fmt, value_range, scale, (token, value))


@needs_kernel
@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("granularity", list(Granularity))
@pytest.mark.parametrize("token", ["int8", "int4", "fp8_e4m3", "fp4_e2m1", "fp6_e2m3"])
def test_scale_from_a_range_every_granularity(device: str, dtype: torch.dtype, granularity: Granularity,
                                              token: str) -> None:
    fmt = parse_format(token)
    x = _random_input(device, dtype, seed=11)
    x[3] = 0.0  # a group whose range is 0
    x = x.to(dtype).to(device)
    dim = 0 if granularity is Granularity.PER_CHANNEL else -1
    for value_range in (abs_max(x, granularity, dim=dim), abs_max(x, granularity, dim=dim) * 0.6):
        out, mask = fused_fake_quantize_from_range(x, fmt, value_range, need_mask=True)
        want, want_mask = _eager_forward(x, fmt, scale_from_range(value_range, fmt), need_mask=True)
        assert out.dtype == dtype and _same_bits(out, want)
        assert torch.equal(mask, want_mask)


@needs_kernel
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_the_one_time_check_covers_both_modes(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from quant.quant_utils import _eager_with_mask

    monkeypatch.setattr(fused_quantize, "_verified", {})
    assert fused_quantize.verified_on(torch.device(device), _eager_with_mask, scale_from_range) is True
    # A range mode that derived its scale differently (here: without the clamp) is caught.
    monkeypatch.setattr(fused_quantize, "_verified", {})
    unclamped = lambda r, fmt: r / torch.tensor(fmt.max, device=r.device)  # noqa: E731
    with pytest.warns(UserWarning, match="disagrees with the eager path"):
        assert fused_quantize.verified_on(torch.device(device), _eager_with_mask, unclamped) is False


@needs_kernel
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_unsupported_layouts_return_none(device: str) -> None:
    x = torch.randn(6, 4, device=device)
    fmt = IntFormat(8)
    assert fused_fake_quantize(x.t(), fmt, torch.ones(1, 1, device=device), need_mask=False) is None  # not contiguous
    assert fused_fake_quantize(x, fmt, torch.ones(1, 4, device=device), need_mask=False) is None  # last-dim scale
    assert fused_fake_quantize(x, parse_format("bf16"), torch.ones(1, 1, device=device), need_mask=False) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or fused_quantize.triton is None, reason="needs CUDA and Triton")
def test_cuda_fake_quantize_takes_the_fused_path_and_its_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    # The one-time check against the eager path passes (and is done before counting calls).
    from quant.quant_utils import _eager_with_mask
    assert fused_quantize.verified_on(torch.device("cuda", torch.cuda.current_device()), _eager_with_mask,
                                      scale_from_range) is True
    calls = []
    real = fused_quantize.fused_fake_quantize
    monkeypatch.setattr(fused_quantize, "fused_fake_quantize", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    x = (torch.randn(64, 32, device="cuda") * 3).requires_grad_()
    scale = torch.full((64, 1), 0.05, device="cuda")
    out = fake_quantize(x, "fp4_e2m1", scale)
    out.backward(torch.ones_like(out))
    assert calls == [parse_format("fp4_e2m1")]
    fused_quantize.set_enabled(False)
    try:
        x_eager = x.detach().clone().requires_grad_()
        want = fake_quantize(x_eager, "fp4_e2m1", scale)
        want.backward(torch.ones_like(want))
    finally:
        fused_quantize.set_enabled(True)
    assert _same_bits(out, want)
    assert torch.equal(x.grad, x_eager.grad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or fused_quantize.triton is None, reason="needs CUDA and Triton")
@pytest.mark.parametrize("percentile", [100.0, 99.0])
def test_cuda_layers_quantize_from_the_range_in_one_kernel(monkeypatch: pytest.MonkeyPatch, percentile: float) -> None:
    """The layers' `quantize` on CUDA hands the kernel the range (no separate scale launches)
    and gives the eager path's values and gradients."""
    from quant.quant_utils import quantize

    calls = []
    real = fused_quantize.fused_fake_quantize_from_range
    monkeypatch.setattr(fused_quantize, "fused_fake_quantize_from_range",
                        lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    x = (torch.randn(64, 32, device="cuda") * 3).requires_grad_()
    out = quantize(x, "fp4_e2m1", Granularity.PER_TOKEN, dim=-1, range_percentile=percentile)
    out.backward(torch.arange(out.numel(), device="cuda", dtype=torch.float32).view_as(out))
    assert calls == [parse_format("fp4_e2m1")]
    fused_quantize.set_enabled(False)
    try:
        x_eager = x.detach().clone().requires_grad_()
        want = quantize(x_eager, "fp4_e2m1", Granularity.PER_TOKEN, dim=-1, range_percentile=percentile)
        want.backward(torch.arange(want.numel(), device="cuda", dtype=torch.float32).view_as(want))
    finally:
        fused_quantize.set_enabled(True)
    assert _same_bits(out, want)
    assert torch.equal(x.grad, x_eager.grad)
