"""Abs-max fake quantization of many tensors at once, in three GPU launches.

A training step quantizes every layer's weight: on a GPU each call was two launches (the
abs-max, then the fused kernel of quant/fused_quantize.py) plus ~60-90 us of host work (Python,
autograd, Triton's launcher), and that host work, not the GPU, bounded the step (see
benchmarks/RESULTS.md). Here all weights of one dtype take:

    1. a memset of one int32 range per scale group (a whole tensor, or one output channel);
    2. `_multi_abs_max_kernel`: each block of up to BLOCK elements of one group g takes max |x|
       as the bit pattern of a non-negative float32 (those order as integers, and a NaN's is
       above inf's, so NaN propagates as in torch's max) and atomically maxes it into range[g];
    3. `_multi_fake_quantize_kernel`: each block derives its group's scale from range[g] and
       writes Q(x / scale) * scale into one flat output, with the format read from a table.

Tensors are reached through a table of their addresses, so nothing is copied in. Both kernels
share the fused kernel's Triton helpers, so the result equals `quantize(x, fmt, per_tensor)`
(or `per_channel`, dim 0) bit for bit (tests/quant/test_fused_multi_quantize.py, on CUDA and
under TRITON_INTERPRET=1). No pass mask is written: under abs-max scaling no element of any INT
or FP format can saturate (`rounding.abs_max_scaling_cannot_saturate`), so the
straight-through gradient is the identity.
"""
from __future__ import annotations

import itertools
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch

from quant import fused_quantize
from quant.formats import NumberFormat, cached_per_format

triton = fused_quantize.triton
if triton is not None:
    import triton.language as tl

    from quant.fused_quantize import fake_quantize_values, scale_from_range_rn, store_in_dtype

_BLOCK = 1024
_MAX_NUMEL = 2**31 - _BLOCK  # int32 offsets: the last block's start + BLOCK stays below 2^31
_LAYOUT_CACHE_SIZE = 16
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

if triton is not None:
    _TL_DTYPE = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}

    @triton.jit
    def _block_of(x_ptrs, block_tensor_ptr, block_start_ptr, block_end_ptr, block_group_ptr,
                  X_DTYPE: tl.constexpr, BLOCK: tl.constexpr):
        """(tensor index, its pointer, element offsets, in-range mask, whether the block is full,
        the block's scale group) of this program's block. A block lies within one scale group (a
        whole tensor, or one output channel's row) and ends at `end` (exclusive). `applies`
        admits 16-byte aligned tensors whose groups start at multiples of 16 elements only: the
        hints let a full block load and store in vectors (a loaded pointer and a loaded bound
        tell the compiler nothing of either)."""
        block = tl.program_id(0)
        t = tl.load(block_tensor_ptr + block)
        start = tl.multiple_of(tl.load(block_start_ptr + block), 16)
        end = tl.load(block_end_ptr + block)
        x_ptr = tl.multiple_of(tl.load(x_ptrs + t).to(tl.pointer_type(X_DTYPE)), 16)
        offs = start + tl.arange(0, BLOCK)
        return t, x_ptr, offs, offs < end, start + BLOCK <= end, tl.load(block_group_ptr + block)

    @triton.jit
    def _load_block(x_ptr, offs, in_range, full):
        """The block's x as float32: without a mask where the block is full (vector loads)."""
        if full:
            x = tl.load(x_ptr + offs).to(tl.float32)
        else:
            x = tl.load(x_ptr + offs, mask=in_range, other=0.0).to(tl.float32)
        return x

    @triton.jit
    def _multi_abs_max_kernel(x_ptrs, block_tensor_ptr, block_start_ptr, block_end_ptr, block_group_ptr,
                              range_bits_ptr, X_DTYPE: tl.constexpr, BLOCK: tl.constexpr):
        _, x_ptr, offs, in_range, full, group = _block_of(x_ptrs, block_tensor_ptr, block_start_ptr, block_end_ptr,
                                                          block_group_ptr, X_DTYPE, BLOCK)
        x = _load_block(x_ptr, offs, in_range, full)
        bits = tl.max(x.to(tl.int32, bitcast=True) & 0x7FFFFFFF, axis=0)  # |x| as ordered integers
        tl.atomic_max(range_bits_ptr + group, bits)

    @triton.jit
    def _multi_fake_quantize_kernel(x_ptrs, block_tensor_ptr, block_start_ptr, block_end_ptr, block_group_ptr,
                                    range_ptr, params_ptr, out_ptr, out_offset_ptr,
                                    X_DTYPE: tl.constexpr, BLOCK: tl.constexpr):
        t, x_ptr, offs, in_range, full, group = _block_of(x_ptrs, block_tensor_ptr, block_start_ptr, block_end_ptr,
                                                          block_group_ptr, X_DTYPE, BLOCK)
        x = _load_block(x_ptr, offs, in_range, full)
        params = params_ptr + t * 6  # one row of 6 int32 per tensor (format_row)
        fmt_max = tl.load(params).to(tl.float32, bitcast=True)
        lo = tl.load(params + 1).to(tl.float32, bitcast=True)
        hi = tl.load(params + 2).to(tl.float32, bitcast=True)
        scale, inv_scale = scale_from_range_rn(tl.load(range_ptr + group), fmt_max)
        out, _ = fake_quantize_values(x, scale, inv_scale, lo, hi, tl.load(params + 3),
                                      tl.load(params + 4), tl.load(params + 5))
        # Output slots start at multiples of 16 elements (`_build_layout`): aligned as the input.
        out_ptrs = out_ptr + tl.multiple_of(tl.load(out_offset_ptr + t), 16) + offs
        if full:
            store_in_dtype(out_ptrs, out, None)
        else:
            store_in_dtype(out_ptrs, out, in_range)


def _float_bits(value: float) -> int:
    return struct.unpack("<i", struct.pack("<f", value))[0]


@cached_per_format
def format_row(fmt: NumberFormat) -> tuple[int, ...] | None:
    """The kernel's table row for `fmt` (int32 values), or None when the kernel does not cover it."""
    params = fused_quantize.kernel_params(fmt)
    if params is None:
        return None
    return (_float_bits(float(fmt.max)), _float_bits(params.lo), _float_bits(params.hi),
            params.step_min_bits, params.step_max_bits, params.man_shift)


@dataclass(frozen=True)
class _Layout:
    """Device tables for one list of tensors: their addresses, blocks, scale groups and output slots."""

    x_ptrs: torch.Tensor  # int64 (N,)
    out_offsets: torch.Tensor  # int64 (N,): where tensor t starts in the flat output
    block_tensor: torch.Tensor  # int32 (B,): the tensor of each block
    block_start: torch.Tensor  # int32 (B,): the block's first element within its tensor
    block_end: torch.Tensor  # int32 (B,): the end (exclusive) of the block's scale group
    block_group: torch.Tensor  # int32 (B,): the block's scale group, an index into the ranges
    num_groups: int  # scale groups of all tensors (1 per tensor, or 1 per output channel)
    out_numel: int  # elements of the flat output (each slot padded to a 16-element boundary)
    slot_offsets: tuple[int, ...]  # where each tensor's slot starts in the flat output, on the host


def _prefix_sums(values: Sequence[int]) -> list[int]:
    """[0, v0, v0 + v1, ...] without the total: where each item starts."""
    return list(itertools.accumulate(values[:-1], initial=0))


def _build_layout(device: torch.device, numels: Sequence[int], groups: Sequence[int], ptrs: Sequence[int]) -> _Layout:
    """The tables of one list of tensors, tensor t in groups[t] scale groups of numels[t] /
    groups[t] consecutive elements, each group cut into blocks of BLOCK. Only per-tensor rows
    cross from the host (one pinned, non-blocking copy); the per-block tables are expanded on
    the device, so a new layout costs no wait for the GPU and host work in proportion to the
    number of tensors, not of blocks."""
    sizes = [n // g for n, g in zip(numels, groups)]  # elements per group
    chunks = [-(-size // _BLOCK) for size in sizes]  # blocks per group
    blocks = [g * c for g, c in zip(groups, chunks)]
    slots = [-(-n // 16) * 16 for n in numels]  # 64-byte aligned slots keep every store aligned
    count = len(numels)
    table = _upload([*ptrs, *_prefix_sums(slots), *blocks, *_prefix_sums(blocks), *sizes, *chunks,
                     *_prefix_sums(groups)], device, torch.int64).view(7, count)
    x_ptrs, out_offsets, blocks_t, first_block, sizes_t, chunks_t, first_group = table.unbind(0)
    total = sum(blocks)
    # (B,) tensor of each block; the size given, so no sync to find it
    tensor = torch.repeat_interleave(torch.arange(count, device=device), blocks_t, output_size=total)
    local = torch.arange(total, device=device) - first_block[tensor]  # block index within its tensor
    group, chunk = local // chunks_t[tensor], local % chunks_t[tensor]  # its group and place in it
    size = sizes_t[tensor]
    start = group * size + chunk * _BLOCK
    return _Layout(x_ptrs=x_ptrs, out_offsets=out_offsets, block_tensor=tensor.to(torch.int32),
                   block_start=start.to(torch.int32), block_end=((group + 1) * size).to(torch.int32),
                   block_group=(first_group[tensor] + group).to(torch.int32), num_groups=sum(groups),
                   out_numel=sum(slots), slot_offsets=tuple(_prefix_sums(slots)))


_layouts: OrderedDict[tuple, _Layout] = OrderedDict()


def _layout_for(tensors: Sequence[torch.Tensor], groups: Sequence[int]) -> _Layout:
    """The cached tables of these tensors. Keyed by address, size and groups: a training step
    updates the weights in place, so the same tables serve every step."""
    numels = [t.numel() for t in tensors]
    ptrs = [t.data_ptr() for t in tensors]
    key = (tensors[0].device, tuple(numels), tuple(groups), tuple(ptrs))
    layout = _layouts.get(key)
    if layout is None:
        layout = _layouts[key] = _build_layout(tensors[0].device, numels, groups, ptrs)
        if len(_layouts) > _LAYOUT_CACHE_SIZE:
            _layouts.popitem(last=False)
    else:
        _layouts.move_to_end(key)
    return layout


def _upload(values: list[int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Copy a small table to `device` without making the host wait for the GPU's queue (a copy
    from pageable memory would synchronize the stream; the pinned buffer is reused only once
    the copy is done, which torch's pinned-memory allocator tracks)."""
    table = torch.tensor(values, dtype=dtype, pin_memory=device.type == "cuda")
    return table.to(device, non_blocking=True)


def scale_groups(x: torch.Tensor, per_channel: bool) -> int:
    """Scale groups of `x`: 1 per tensor, or one per index of dim 0 (output channel)."""
    return x.shape[0] if per_channel and x.dim() > 0 else 1


def tensor_applies(x: torch.Tensor, fmt: NumberFormat, per_channel: bool = False) -> bool:
    """Whether the kernels cover `x` with `fmt`: a float dtype they store, non-empty, contiguous,
    16-byte aligned, a format with a kernel row, and at most 2^31 - BLOCK elements (the kernels
    index in int32: start + BLOCK must not wrap); per channel (along dim 0), at least 2 dims and
    rows of a multiple of 16 elements (so every block starts aligned)."""
    if not (x.dtype in _KERNEL_DTYPES and x.is_contiguous() and 0 < x.numel() <= _MAX_NUMEL
            and not x.data_ptr() % 16 and format_row(fmt) is not None):
        return False
    return not per_channel or (x.dim() >= 2 and (x.numel() // x.shape[0]) % 16 == 0)


def applies(tensors: Sequence[torch.Tensor], fmts: Sequence[NumberFormat],
            per_channel: Sequence[bool] | None = None) -> bool:
    """Whether `fused_multi_fake_quantize` covers these tensors and formats: Triton is available,
    every tensor is covered (`tensor_applies`), and all are on one device with one dtype."""
    per_channel = per_channel or [False] * len(tensors)
    if not fused_quantize.is_available() or not tensors or not len(tensors) == len(fmts) == len(per_channel):
        return False
    device, dtype = tensors[0].device, tensors[0].dtype
    return all(x.device == device and x.dtype == dtype and tensor_applies(x, fmt, channel)
               for x, fmt, channel in zip(tensors, fmts, per_channel))


def fused_multi_fake_quantize(tensors: Sequence[torch.Tensor], fmts: Sequence[NumberFormat],
                              per_channel: Sequence[bool] | None = None) -> list[torch.Tensor]:
    """[Q(x / s) * s for each x, fmt] with s = max(max |x| / fmt.max, 2^-126) per tensor, or per
    output channel (dim 0) where `per_channel` says so: the abs-max `quantize` of each tensor,
    as views of one new buffer. Needs `applies`."""
    device, dtype = tensors[0].device, tensors[0].dtype
    groups = [scale_groups(x, channel) for x, channel in zip(tensors, per_channel or [False] * len(tensors))]
    with fused_quantize.on_device(device):  # Triton launches on the current device
        layout = _layout_for(tensors, groups)
        rows = [value for fmt in fmts for value in format_row(fmt)]  # type: ignore[union-attr]
        params = _upload(rows, device, torch.int32)
        range_bits = torch.zeros(layout.num_groups, dtype=torch.int32, device=device)
        out = torch.empty(layout.out_numel, dtype=dtype, device=device)
        grid = (len(layout.block_tensor),)
        x_dtype = _TL_DTYPE[dtype]
        tables = (layout.x_ptrs, layout.block_tensor, layout.block_start, layout.block_end, layout.block_group)
        _multi_abs_max_kernel[grid](*tables, range_bits, X_DTYPE=x_dtype, BLOCK=_BLOCK)
        _multi_fake_quantize_kernel[grid](*tables, range_bits.view(torch.float32), params, out, layout.out_offsets,
                                          X_DTYPE=x_dtype, BLOCK=_BLOCK, enable_fp_fusion=False)
    # One view per tensor, straight from the flat buffer (a split, then a slice and a view of
    # each slot, cost three times the host work: ~0.4 ms per BERT-base step on a 2-core VM).
    return [out.as_strided(x.shape, x.stride(), offset) for x, offset in zip(tensors, layout.slot_offsets)]
