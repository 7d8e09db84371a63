"""Rounding to a format: one rounding core per format kind, and the straight-through mask.

Q rounds to the nearest value of `fmt` (ties to even) and saturates at +-fmt.max; FP formats
keep subnormals. "Even" is the even multiple of the grid's local spacing, which is the even code
wherever the format has mantissa bits; a format without (eXm0: powers of two only) rounds a tie
between two powers up, to the larger one, as torch's float8_e8m0fnu cast does. The core (`_quantize_scaled_`) rounds float32 y that is already divided by the
scale (quant/quant_utils.py divides, and multiplies back), in place and in few full-size passes.

The straight-through mask (uint8, 1 where the gradient passes) is 1 where y lies within
`rounding_bounds(fmt)`, i.e. rounding it to the format's grid without a range limit gives a
value within +-fmt.max; NaN counts as saturated (quant/quant_utils.py gives the rule's reasons).

Nothing here calls `.item()` or otherwise synchronises with the device.
"""
from __future__ import annotations

from typing import cast

import torch

from quant.formats import (CastFormat, FloatFormat, IntFormat, NumberFormat, SpecialCodes, cached_per_format,
                           rounding_bounds)

_FP32_MANTISSA_BITS = 23
_FP32_EXP_BIAS = 127
_FP32_EXPONENT_FIELD = 0x7F800000  # the 8 exponent bits of a float32, in place


def _float_step_(y: torch.Tensor, fmt: FloatFormat, out: torch.Tensor | None) -> torch.Tensor:
    """Spacing of `fmt`'s grid at each element of float32 `y` (within `rounding_bounds(fmt)`, so
    in the binade of fmt.max at most), as float32:
    2^(max(floor(log2|y|), emin) - man_bits), built in the exponent field so it is exact.
    Written into `out` (a float32 scratch buffer shaped like y) and returned; into a fresh
    tensor for None (torch.func.vmap refuses out= arguments on batched tensors).

    Masking the exponent field gives 2^floor(log2|y|) as a bit pattern (the sign bit drops
    out); subtracting man_bits from the field divides by 2^man_bits; the clamp lifts everything
    below the format's normal range (its subnormals, float32 subnormals, zero) to the subnormal
    step.
    """
    smallest_step = (fmt.emin - fmt.man_bits + _FP32_EXP_BIAS) << _FP32_MANTISSA_BITS
    step = torch.bitwise_and(y.view(torch.int32), _FP32_EXPONENT_FIELD,
                             out=None if out is None else out.view(torch.int32))
    step.sub_(fmt.man_bits << _FP32_MANTISSA_BITS).clamp_(min=smallest_step)
    return step.view(torch.float32)


def _round_to_float_format_(y: torch.Tensor, fmt: FloatFormat, scratch: torch.Tensor | None) -> torch.Tensor:
    """Round `y` (float32, clamped to +-fmt.max or to the rounding bounds) in place; `scratch` is
    a float32 buffer shaped like y that the caller gives up (None: a fresh one)."""
    step = _float_step_(y, fmt, scratch)
    # Dividing and multiplying by a power of two are exact, so the only rounding is
    # torch.round (half to even) on the multiple of the step.
    return y.div_(step).round_().mul_(step)


def round_to_float_format(y: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """Round float32 `y` to the nearest value of `fmt`, ties to even, saturating at +-fmt.max."""
    clamped = y.clamp(-fmt.max, fmt.max)
    return _round_to_float_format_(clamped, fmt, torch.empty_like(clamped))


def _pass_mask(outside: torch.Tensor) -> torch.Tensor:
    """The straight-through mask from a float32 tensor that is nonzero (or NaN) exactly where
    the value saturated (y - clamp(y)): uint8, 1 where the gradient passes.

    Built without float comparisons and applied in backward as a multiply: on the CPU, ops
    that produce or select with bool tensors cost several times a plain arithmetic pass.
    """
    return outside.to(torch.bool).view(torch.uint8).bitwise_xor_(1)


# x * (1 / (amax / max)) is amax / amax * max within 3 float32 roundings: at most
# max * (1 + 3 * 2^-24); checked against the rounding bound with margin.
_ABS_MAX_RELATIVE_OVERSHOOT = 2.0**-22


@cached_per_format
def abs_max_scaling_cannot_saturate(fmt: NumberFormat) -> bool:
    """True when every finite x / scale stays within `rounding_bounds(fmt)` for a scale computed
    as abs-max / fmt.max: then the straight-through mask would be all ones and backward is the
    identity. Holds for every INT and FP format here (their top half-step is far wider than the
    rounding error); not for cast formats, whose scale is 1."""
    if isinstance(fmt, CastFormat) or not isinstance(fmt, (IntFormat, FloatFormat)):
        return False
    lo, hi = rounding_bounds(fmt)
    return fmt.max * (1 + _ABS_MAX_RELATIVE_OVERSHOOT) < min(hi, -lo)


_NATIVE_FLOAT8: dict[tuple[int, int, SpecialCodes], torch.dtype] = {
    (4, 3, SpecialCodes.FN): torch.float8_e4m3fn,
    (5, 2, SpecialCodes.IEEE): torch.float8_e5m2,
}


def _quantize_scaled_(y: torch.Tensor, fmt: NumberFormat, need_mask: bool, scratch: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Round float32 `y` (already divided by the scale) to `fmt` in place and return it, with the
    uint8 mask (1 = gradient passes) when `need_mask`, else None. `scratch`: an optional float32
    buffer shaped like y for the temporaries (allocated here when needed and not given).

    Every format: clamp to `rounding_bounds(fmt)` (the mask is where that changes y; NaN counts
    as saturated), then round. Few full-size passes: the CPU is memory-bound on these, so each
    pass saved is time saved.
    """
    if not isinstance(fmt, (IntFormat, FloatFormat, CastFormat)):
        raise TypeError(f"no rounding rule for format {fmt!r}")
    lo, hi = rounding_bounds(fmt)
    mask: torch.Tensor | None = None
    if need_mask or isinstance(fmt, FloatFormat):
        scratch = torch.empty_like(y) if scratch is None else scratch
    if need_mask:
        outside = torch.sub(y, torch.clamp(y, lo, hi, out=scratch), out=scratch)  # 0 inside the bounds
        mask = _pass_mask(outside)
    y.clamp_(lo, hi)
    if isinstance(fmt, IntFormat):
        return y.round_(), mask
    if isinstance(fmt, CastFormat):
        return y.copy_(y.to(fmt.torch_dtype)), mask
    native = _native_float8_dtype(fmt) if y.is_cuda else None
    if native is not None:
        # On CUDA torch's float8 cast (round to nearest even, c10's conversion) is one fused pass;
        # on the CPU it is a scalar loop, slower than the core below. The GPU tests check the two
        # agree bit for bit (tests/quant/test_quant_utils.py::test_cuda_eager_path_matches_cpu).
        return y.copy_(y.to(native)), mask
    return _round_to_float_format_(y, fmt, cast(torch.Tensor, scratch)), mask


def _quantize_scaled_batchable_(y: torch.Tensor, fmt: NumberFormat) -> torch.Tensor:
    """`_quantize_scaled_(y, fmt, need_mask=False)[0]`, the same operations and so the same values,
    without out= arguments, which torch.func.vmap refuses on batched tensors: for the MSE clipping
    search (quant/scales.py) under vmap. `y` float32, rounded in place."""
    if isinstance(fmt, FloatFormat) and not (y.is_cuda and _native_float8_dtype(fmt) is not None):
        lo, hi = rounding_bounds(fmt)
        return _round_to_float_format_(y.clamp_(lo, hi), fmt, None)
    return _quantize_scaled_(y, fmt, need_mask=False)[0]  # INT, cast, native float8: in place only


def _native_float8_dtype(fmt: FloatFormat) -> torch.dtype | None:
    """torch's float8 dtype with exactly `fmt`'s values (E4M3FN, E5M2), if any."""
    return _NATIVE_FLOAT8.get((fmt.exp_bits, fmt.man_bits, fmt.special))


def quantize_scaled(y: torch.Tensor, fmt: NumberFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Q(y) and the straight-through mask (bool, True where the gradient passes) for float32 `y`
    that is already divided by the scale."""
    q, mask = _quantize_scaled_(y.clone(), fmt, need_mask=True)
    return q, cast(torch.Tensor, mask).view(torch.bool)
