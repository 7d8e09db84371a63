"""The CPU's sliced forward equals the eager forward bit for bit, for every layout it accepts."""
import pytest
import torch

from quant import cpu_quantize
from quant.formats import parse_format
from quant.quant_utils import _eager_forward, quantize
from quant.rounding import _quantize_scaled_
from quant.scales import Granularity, compute_scale

FORMATS = ["int4", "int8", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1", "e2m5", "bf16"]


@pytest.fixture
def small_slices(monkeypatch):
    """Slices of 60 elements, so small tensors take the sliced path with a ragged last slice."""
    monkeypatch.setattr(cpu_quantize, "SLICE_ELEMENTS", 60)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    assert a.dtype == b.dtype and a.shape == b.shape
    bits = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[a.dtype]
    return torch.equal(a.contiguous().view(bits), b.contiguous().view(bits))


def inputs(shape, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen) * torch.rand(shape[0], *([1] * (len(shape) - 1)), generator=gen) * 20
    x.view(-1)[:4] = torch.tensor([float("nan"), float("inf"), -0.0, 1e30])
    return x


def check(x: torch.Tensor, token: str, scale: torch.Tensor, need_mask: bool) -> None:
    fmt = parse_format(token)
    sliced = cpu_quantize.sliced_forward(x, fmt, scale, need_mask, _quantize_scaled_)
    if token.startswith("int") and not need_mask:
        assert sliced is None  # eager is as fast there
        return
    assert sliced is not None
    out, mask = sliced
    want, want_mask = _eager_forward(x, fmt, scale, need_mask)
    assert same_bits(out, want), token
    assert (mask is None and want_mask is None) or torch.equal(mask, want_mask)


@pytest.mark.parametrize("need_mask", [False, True])
@pytest.mark.parametrize("token", FORMATS)
def test_scale_layouts(small_slices, token, need_mask):
    x = inputs((7, 3, 5))  # 15 elements per row: 4 rows per slice, the last slice 3 rows
    fmt = parse_format(token)
    scales = [
        torch.tensor(0.37),  # 0-dim
        torch.full((1, 1, 1), 0.37),  # per tensor, keepdim
        compute_scale(x.nan_to_num(0, 0, 0), fmt, Granularity.PER_CHANNEL, dim=0),  # (7, 1, 1)
        compute_scale(x.nan_to_num(0, 0, 0), fmt, Granularity.PER_CHANNEL, dim=2),  # (1, 1, 5): Conv1D-like
        compute_scale(x.nan_to_num(0, 0, 0), fmt, Granularity.PER_TOKEN, dim=-1),  # (7, 3, 1)
        torch.rand(3, 5, generator=torch.Generator().manual_seed(1)) + 0.1,  # fewer dims than x
    ]
    for scale in scales:
        check(x, token, scale, need_mask)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("token", ["fp8_e4m3", "int8"])
def test_low_precision_and_strided_inputs(small_slices, token, dtype):
    x = inputs((9, 16)).to(dtype)
    check(x, token, torch.tensor(0.05), need_mask=True)
    check(inputs((16, 9)).t(), token, torch.tensor(0.05), need_mask=True)  # not contiguous
    check(inputs((2, 100)), token, torch.tensor(0.05), need_mask=True)  # rows longer than a slice: one per slice


def test_when_it_does_not_apply(small_slices):
    fp8 = parse_format("fp8_e4m3")
    one = torch.tensor(1.0)
    assert cpu_quantize.sliced_forward(torch.randn(60), fp8, one, True, _quantize_scaled_) is None  # one slice
    assert cpu_quantize.sliced_forward(torch.randn(1, 200), fp8, one, True, _quantize_scaled_) is None  # one row
    assert cpu_quantize.sliced_forward(torch.tensor(3.0), fp8, one, True, _quantize_scaled_) is None  # 0-dim
    assert cpu_quantize.sliced_forward(torch.randn(8, 30), fp8, torch.ones(2, 8, 30), True, _quantize_scaled_) is None
    assert cpu_quantize.sliced_forward(torch.randn(8, 30), parse_format("int8"), one, False, _quantize_scaled_) is None
    # Only the CPU: its buffers are CPU tensors (meta stands in for MPS, XPU and the like).
    on_meta = torch.empty(8, 30, device="meta")
    assert cpu_quantize.sliced_forward(on_meta, fp8, one.to("meta"), True, _quantize_scaled_) is None


@pytest.mark.parametrize("token", ["fp8_e4m3", "int8"])
def test_layers_path_uses_it_and_matches_eager(token):
    """`quantize` on a tensor above the default slice size: sliced forward, same output and
    gradient as the eager forward with the same scale."""
    fmt = parse_format(token)
    x = inputs((80, 4096)).nan_to_num(0, 0, 0).requires_grad_()  # 327680 elements > 2^18
    assert x.numel() > cpu_quantize.SLICE_ELEMENTS
    upstream = torch.randn(80, 4096, generator=torch.Generator().manual_seed(2))
    out = quantize(x, fmt, Granularity.PER_TENSOR, range_percentile=99.0)  # clipping: the mask is needed
    (grad,) = torch.autograd.grad(out, x, upstream)
    scale = compute_scale(x, fmt, Granularity.PER_TENSOR, range_percentile=99.0)
    want, mask = _eager_forward(x.detach(), fmt, scale, need_mask=True)
    assert same_bits(out.detach(), want)
    assert torch.equal(grad, upstream * mask)
    assert 0 < int(mask.sum()) < x.numel()
