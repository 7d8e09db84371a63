"""The multi-tensor kernels equal the per-layer `quantize(x, fmt, per_tensor)` bit for bit.

Kernel tests run on CUDA, or on the CPU under Triton's interpreter
(`TRITON_INTERPRET=1 python -m pytest tests/quant/test_fused_multi_quantize.py`); without
either they skip. The table rows and the applicability rules are checked everywhere.
"""
from __future__ import annotations

import pytest
import torch

from quant import fused_multi_quantize, fused_quantize
from quant.formats import parse_format
from quant.fused_multi_quantize import applies, format_row, fused_multi_fake_quantize
from quant.quant_utils import quantize
from quant.scales import Granularity
from tests.quant.test_fused_quantize import FORMATS, KERNEL_DEVICES, _all_codes_probe, _same_bits, needs_kernel


def _per_layer_eager(x: torch.Tensor, fmt, per_channel: bool = False) -> torch.Tensor:
    """The per-layer path with the fused kernel off: the eager reference on x's device."""
    enabled = fused_quantize._enabled
    fused_quantize.set_enabled(False)
    try:
        return quantize(x, fmt, Granularity.PER_CHANNEL if per_channel else Granularity.PER_TENSOR, dim=0)
    finally:
        fused_quantize.set_enabled(enabled)


def _check(tensors: list[torch.Tensor], tokens: list[str], per_channel: list[bool] | None = None) -> None:
    fmts = [parse_format(t) for t in tokens]
    per_channel = per_channel or [False] * len(tensors)
    want = [_per_layer_eager(x, fmt, channel) for x, fmt, channel in zip(tensors, fmts, per_channel)]
    assert applies(tensors, fmts, per_channel)
    got = fused_multi_fake_quantize(tensors, fmts, per_channel)
    for x, token, g, w in zip(tensors, tokens, got, want):
        assert g.shape == x.shape and g.dtype == x.dtype and g.stride() == w.stride(), token
        assert _same_bits(g, w), (token, tuple(x.shape))
    # views of one buffer, in order, each slot starting on a 16-element boundary and not overlapping the next
    assert len({g.untyped_storage().data_ptr() for g in got}) == 1
    offsets = [g.storage_offset() for g in got]
    assert all(offset % 16 == 0 for offset in offsets)
    assert all(b - a >= x.numel() for a, b, x in zip(offsets, offsets[1:], tensors))


def test_format_rows_hold_the_kernel_params_as_int32() -> None:
    # fmt.max, lo, hi as float32 bits, then the step bounds and the mantissa shift.
    assert format_row(parse_format("int8")) == (0x42FE0000, -0x3CFF8000, 0x42FEFFFF, 127 << 23, 127 << 23, 0)
    e4m3 = format_row(parse_format("fp8_e4m3"))
    assert e4m3 == (0x43E00000, -0x3C180000, 0x43E80000, (-6 - 3 + 127) << 23, 0x7F800000, 3 << 23)
    assert format_row(parse_format("bf16")) is None and format_row(parse_format("none")) is None


@needs_kernel
@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("token", FORMATS)
def test_every_code_and_tie_in_one_call(device: str, token: str) -> None:
    """Every code, tie and near-tie of the format (finite values only: an inf would be the
    range) at four magnitudes, as four tensors of one call."""
    probe = _all_codes_probe(parse_format(token), device)
    probe = probe[probe.isfinite()]
    tensors = [probe * s for s in (1.0, 0.37, 3.0e-3, 2.0**-20)]
    _check(tensors, [token] * len(tensors))


@needs_kernel
@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_every_format_mixed_in_one_call_across_block_edges(device: str, dtype: torch.dtype) -> None:
    if device == "cpu" and dtype is torch.bfloat16:
        pytest.skip("Triton's interpreter does not round float32 -> bfloat16 to nearest even, as the GPU does")
    generator = torch.Generator().manual_seed(0)
    sizes = [1, 15, 1023, 1024, 1025, 4097, (7, 3, 3, 3), (64, 33)]
    tensors, tokens = [], []
    for i, token in enumerate(FORMATS):
        shape = sizes[i % len(sizes)]
        magnitude = 10.0 ** (i % 5 - 2)
        tensors.append((torch.randn(shape, generator=generator) * magnitude).to(device, dtype))
        tokens.append(token)
    _check(tensors, tokens)


@needs_kernel
@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_per_channel_scales_mixed_with_per_tensor_ones(device: str, dtype: torch.dtype) -> None:
    """Rows of 16 elements up to rows longer than a block (several blocks per row, the last
    one partial), rows of different magnitudes (a zero row too), every format, with per-tensor
    tensors in the same call."""
    if device == "cpu" and dtype is torch.bfloat16:
        pytest.skip("Triton's interpreter does not round float32 -> bfloat16 to nearest even, as the GPU does")
    generator = torch.Generator().manual_seed(1)
    shapes = [(8, 16), (5, 3, 4, 4), (3, 2064), (4, 1024), (6, 48), (2, 2048)]
    tensors, tokens, per_channel = [], [], []
    for i, token in enumerate(FORMATS):
        shape = shapes[i % len(shapes)]
        x = torch.randn(shape, generator=generator) * torch.logspace(-3, 2, shape[0]).view(-1, *[1] * (len(shape) - 1))
        x[0] = 0.0
        tensors.append(x.to(device, dtype))
        tokens.append(token)
        per_channel.append(i % 3 != 2)  # every third per tensor
    _check(tensors, tokens, per_channel)


@needs_kernel
@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("token", ["int8", "fp8_e4m3", "fp4_e2m1", "int2"])
def test_every_code_per_channel(device: str, token: str) -> None:
    """Every code and tie of the format in each row, each row at its own magnitude."""
    probe = _all_codes_probe(parse_format(token), device)
    probe = probe[probe.isfinite()]
    width = probe.numel() // 16 * 16
    rows = torch.stack([probe[:width] * s for s in (1.0, 0.37, 3.0e-3, 2.0**-20)])
    _check([rows, rows.flip(1).contiguous()], [token, token], [True, True])


@needs_kernel
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_zero_nan_and_inf_tensors(device: str) -> None:
    """A zero tensor (scale 2^-126), one with a NaN (the range is NaN, as torch's max gives),
    one with an inf, one of -0.0: each as the per-layer path."""
    tensors = [torch.zeros(50), torch.tensor([1.0, float("nan"), -3.0] * 400), torch.tensor([2.0, -float("inf"), 0.5]),
               torch.full((17,), -0.0), torch.randn(3000)]
    _check([t.to(device) for t in tensors], ["int8", "fp8_e4m3", "int4", "fp4_e2m1", "int2"])


@needs_kernel
@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_layouts_are_cached_per_address_and_evicted_oldest_first(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused_multi_quantize, "_layouts", type(fused_multi_quantize._layouts)())
    fmts = [parse_format("int8")] * 2
    tensors = [torch.randn(100, device=device), torch.randn(5, 7, device=device)]
    first = fused_multi_fake_quantize(tensors, fmts)
    tensors[0].mul_(2.0)  # an in-place update (an optimizer step): same tables, new values
    second = fused_multi_fake_quantize(tensors, fmts)
    assert len(fused_multi_quantize._layouts) == 1
    assert _same_bits(second[0], first[0] * 2.0)  # a power of two scales the range and Q exactly
    others = [[torch.randn(n + 1, device=device)] for n in range(fused_multi_quantize._LAYOUT_CACHE_SIZE)]
    for other in others:
        fused_multi_fake_quantize(other, fmts[:1])
    assert len(fused_multi_quantize._layouts) == fused_multi_quantize._LAYOUT_CACHE_SIZE
    first_key = (tensors[0].device, (100, 35), (1, 1), (tensors[0].data_ptr(), tensors[1].data_ptr()))
    assert first_key not in fused_multi_quantize._layouts


@pytest.mark.parametrize(("case", "expected"), [
    ("plain", True),
    ("not contiguous", False),
    ("misaligned", False),
    ("empty", False),
    ("integer dtype", False),
    ("mixed dtypes", False),
    ("cast format", False),
    ("no-quant format", False),
    ("fewer formats", False),
    ("no tensors", False),
    ("per channel", True),
    ("per channel, rows not a multiple of 16", False),
    ("per channel, 1-D", False),
    ("fewer per-channel flags", False),
])
def test_what_the_kernels_cover(case: str, expected: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused_quantize, "is_available", lambda: True)  # the rules, with or without Triton
    a, b = torch.randn(8, 4), torch.randn(33)
    tensors, fmts = [a, b], [parse_format("int8"), parse_format("fp4_e2m1")]
    per_channel = None
    if case == "not contiguous":
        tensors[0] = a.t()
    elif case == "misaligned":
        tensors[1] = b[1:]  # 4 bytes past an aligned start
    elif case == "empty":
        tensors[1] = torch.empty(0)
    elif case == "integer dtype":
        tensors = [a.int(), b.int()]
    elif case == "mixed dtypes":
        tensors[1] = b.half()
    elif case == "cast format":
        fmts[1] = parse_format("bf16")
    elif case == "no-quant format":
        fmts[1] = parse_format("none")
    elif case == "fewer formats":
        fmts = fmts[:1]
    elif case == "no tensors":
        tensors, fmts = [], []
    elif case == "per channel":
        tensors[0], per_channel = torch.randn(8, 2, 8), [True, False]
    elif case == "per channel, rows not a multiple of 16":
        per_channel = [True, False]  # rows of 4
    elif case == "per channel, 1-D":
        tensors[1], per_channel = torch.randn(32), [False, True]
    elif case == "fewer per-channel flags":
        per_channel = [False]
    assert applies(tensors, fmts, per_channel) is expected


def test_nothing_applies_without_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fused_quantize, "is_available", lambda: False)
    assert applies([torch.randn(8)], [parse_format("int8")]) is False


def test_layout_tables_come_from_one_upload(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-tensor rows cross from the host in one copy; the per-block tables are expanded on the
    device (on CUDA: no wait for the GPU's queue, host work in proportion to the tensors)."""
    uploads = []
    real = fused_multi_quantize._upload
    monkeypatch.setattr(fused_multi_quantize, "_upload", lambda values, device, dtype: uploads.append(len(values))
                        or real(values, device, dtype))
    block = fused_multi_quantize._BLOCK
    # a per-tensor tensor of a block and one, a tiny one, and 2 rows of a block and a half per channel
    layout = fused_multi_quantize._build_layout(torch.device("cpu"), [block + 1, 5, 3 * block], [1, 1, 2],
                                                [4096, 8192, 12288])
    assert uploads == [21]
    assert layout.x_ptrs.tolist() == [4096, 8192, 12288]
    assert layout.slot_offsets == (0, block + 16, block + 32)  # slots of block + 16, 16 and 3 * block
    assert layout.out_offsets.tolist() == list(layout.slot_offsets)
    assert layout.out_numel == 4 * block + 32 and layout.num_groups == 4
    half = block // 2
    assert layout.block_tensor.tolist() == [0, 0, 1, 2, 2, 2, 2]
    assert layout.block_start.tolist() == [0, block, 0, 0, block, block + half, 2 * block + half]
    assert layout.block_end.tolist() == [block + 1, block + 1, 5, block + half, block + half, 3 * block, 3 * block]
    assert layout.block_group.tolist() == [0, 0, 1, 2, 2, 3, 3]
    assert {t.dtype for t in (layout.block_tensor, layout.block_start, layout.block_end, layout.block_group)} == {
        torch.int32}


def test_tensors_near_2_to_the_31_are_left_to_the_per_layer_path() -> None:
    """The kernels index in int32: the last block's start + BLOCK must not wrap (meta tensors:
    no memory, address 0)."""
    int8 = parse_format("int8")
    largest = fused_multi_quantize._MAX_NUMEL
    assert largest == 2**31 - fused_multi_quantize._BLOCK
    assert fused_multi_quantize.tensor_applies(torch.empty(largest, device="meta"), int8)
    assert not fused_multi_quantize.tensor_applies(torch.empty(largest + 1, device="meta"), int8)
    assert not fused_multi_quantize.tensor_applies(torch.empty(7, 306783376, device="meta"), int8, per_channel=True)
