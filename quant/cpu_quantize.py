"""The forward of fake quantization on the CPU, in cache-sized slices, bit-identical to eager.

The eager core (`quant_utils._eager_forward`) makes ~5 (INT) to ~9 (FP) full-size passes plus a
fresh full-size temporary or two. On the CPU each pass over a large tensor goes to DRAM, and
each fresh temporary is page-faulted in (on the 2-core development VM the page faults of one
16 MiB scratch buffer cost more than all of INT8's arithmetic). Running the same core on slices
of 1 MiB along dim 0 keeps every pass of a slice in L2, reuses one scratch slice, and writes the
result (and mask) once into tensors allocated once. Same operations on the same elements, so the
same bits (tests/quant/test_cpu_quantize.py); only the order of the work changes.
Measured with benchmarks/bench_quantizer.py on the 2-core VM (benchmarks/RESULTS.md): the FP8
and FP4 forward on 4M elements 6.6-7.0 -> 4.1 ms. INT without a mask (four passes, no scratch)
stays eager: slicing it was 1.1-1.35x slower.
"""
from __future__ import annotations

from typing import Callable

import torch

from quant.formats import IntFormat, NumberFormat

# Elements per slice: float32 temporaries of 1 MiB, a few of which fit a 2 MiB L2 together.
SLICE_ELEMENTS = 1 << 18

# (y, fmt, need_mask, scratch) -> (y rounded in place, uint8 mask or None): quant/rounding.py's core.
ScaledCore = Callable[[torch.Tensor, NumberFormat, bool, torch.Tensor], tuple[torch.Tensor, "torch.Tensor | None"]]


def _rows(t: torch.Tensor, rows: slice, x_dim: int) -> torch.Tensor:
    """The part of a broadcasting scale that applies to rows `rows` of x's dim 0."""
    if t.dim() == x_dim and t.shape[0] > 1:
        return t[rows]
    return t  # constant along x's dim 0


def sliced_forward(x: torch.Tensor, fmt: NumberFormat, scale32: torch.Tensor, need_mask: bool,
                   core: ScaledCore) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(Q(x / scale) * scale in x's dtype, uint8 mask or None) computed slice by slice along
    dim 0 (at least one row per slice), or None when slicing does not apply (small tensors, a
    single row, a scale with more dimensions than x, INT without a mask): then the caller runs
    the eager path on the whole tensor. `scale32` is float32 and broadcasts against x."""
    if x.device.type != "cpu" or x.dim() == 0 or x.numel() <= SLICE_ELEMENTS or scale32.dim() > x.dim():
        return None
    if torch.compiler.is_compiling():  # a graph of one op per slice: the compiler schedules the whole itself
        return None
    if isinstance(fmt, IntFormat) and not need_mask:
        # Four passes and no scratch buffer: eager is as fast, without the per-slice overhead.
        return None
    row_elements = x.numel() // x.shape[0]
    rows_per_slice = max(1, SLICE_ELEMENTS // row_elements)  # at least one row, however long
    if rows_per_slice >= x.shape[0]:
        return None
    reciprocal = torch.reciprocal(scale32)
    # Each slice is computed in place in its rows of the float32 result; one scratch slice is
    # reused by all of them (fresh buffers per slice would be page-faulted in again).
    out32 = torch.empty(x.shape, dtype=torch.float32)
    scratch = torch.empty((rows_per_slice, *x.shape[1:]), dtype=torch.float32)
    mask = torch.empty(x.shape, dtype=torch.uint8) if need_mask else None
    for start in range(0, x.shape[0], rows_per_slice):
        rows = slice(start, start + rows_per_slice)
        y = out32[rows]
        # Upcast first: a 0-dim float32 reciprocal would not promote bf16/fp16 rows to float32.
        torch.mul(x[rows].to(torch.float32), _rows(reciprocal, rows, x.dim()), out=y)
        _, slice_mask = core(y, fmt, need_mask, scratch[: y.shape[0]])
        y.mul_(_rows(scale32, rows, x.dim()))
        if mask is not None:
            mask[rows] = slice_mask
    return out32.to(x.dtype), mask
