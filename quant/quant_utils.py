"""Fake quantization: one rounding core per format kind, straight-through gradients, scales.

`fake_quantize(x, fmt, scale)` returns Q(x / scale) * scale with the dtype and shape of `x`.
Q rounds to the nearest value of `fmt` (ties to even) and saturates at +-fmt.max; FP formats
keep subnormals. Like torch's fake-quant kernels, x / scale is computed as x * (1 / scale) in
float32, so INT results equal `torch.fake_quantize_per_tensor_affine` bit for bit.

Gradient (straight-through): grad where x / scale rounds onto the format's range, 0 where it
saturated. "Rounds onto" is torch's INT rule (round(x / scale) within [qmin, qmax]) applied to
every format: x / scale lies within `rounding_bounds(fmt)`, i.e. rounding it to the format's grid
without a range limit gives a value within +-fmt.max. (A stricter |x / scale| <= fmt.max would
drop the gradient of a tensor's largest element whenever x * (1 / scale) rounds an ulp above
fmt.max: ~20% of random tensors under abs-max scaling.)
Scales are treated as constants (no gradient), as with abs-max observers.

Non-finite inputs propagate instead of being hidden, so that the trainer's non-finite-step
check catches them. With a given finite scale, a NaN element gives NaN (torch's
`fake_quantize_per_tensor_affine` maps NaN to qmin instead) and +-inf saturates like any value
past the range. With a computed abs-max scale, a NaN element makes its group's scale NaN and an
inf element makes it inf, so every output of that group (the whole tensor, per tensor) is NaN
(a clipping percentile below 100 may leave them out of the scale: then as with a given scale).
Empty tensors give empty outputs (of the same shape and dtype) and scales of ones.

Nothing here calls `.item()` or otherwise synchronises with the device, except the argument
checks of the public `fake_quantize`; layers use `quantize` / `fake_quantize_unchecked`.
On CUDA the forward runs as one fused Triton kernel where it applies (quant/fused_quantize.py),
bit-identical to the eager path below.
"""
from __future__ import annotations

import functools
import numbers
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Hashable, cast

import torch

from quant import cpu_quantize, fused_quantize
from quant.formats import CastFormat, FloatFormat, IntFormat, NumberFormat, SpecialCodes, parse_format, rounding_bounds

_FP32_TINY = torch.finfo(torch.float32).tiny
_FP32_MANTISSA_BITS = 23
_FP32_EXP_BIAS = 127
_FP32_EXPONENT_FIELD = 0x7F800000  # the 8 exponent bits of a float32, in place


def _float_step_(y: torch.Tensor, fmt: FloatFormat, out: torch.Tensor) -> torch.Tensor:
    """Spacing of `fmt`'s grid at each element of float32 `y` (within `rounding_bounds(fmt)`, so
    in the binade of fmt.max at most), as float32:
    2^(max(floor(log2|y|), emin) - man_bits), built in the exponent field so it is exact.
    Written into `out` (a float32 scratch buffer shaped like y) and returned.

    Masking the exponent field gives 2^floor(log2|y|) as a bit pattern (the sign bit drops
    out); subtracting man_bits from the field divides by 2^man_bits; the clamp lifts everything
    below the format's normal range (its subnormals, float32 subnormals, zero) to the subnormal
    step.
    """
    smallest_step = (fmt.emin - fmt.man_bits + _FP32_EXP_BIAS) << _FP32_MANTISSA_BITS
    step = torch.bitwise_and(y.view(torch.int32), _FP32_EXPONENT_FIELD, out=out.view(torch.int32))
    step.sub_(fmt.man_bits << _FP32_MANTISSA_BITS).clamp_(min=smallest_step)
    return step.view(torch.float32)


def _round_to_float_format_(y: torch.Tensor, fmt: FloatFormat, scratch: torch.Tensor) -> torch.Tensor:
    """Round `y` (float32, clamped to +-fmt.max or to the rounding bounds) in place; `scratch` is
    a float32 buffer shaped like y that the caller gives up."""
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


@functools.lru_cache(maxsize=None)
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
        # agree bit for bit (tests/quant/test_quant_utils.py::test_cuda_matches_cpu).
        return y.copy_(y.to(native)), mask
    return _round_to_float_format_(y, fmt, cast(torch.Tensor, scratch)), mask


def _native_float8_dtype(fmt: FloatFormat) -> torch.dtype | None:
    """torch's float8 dtype with exactly `fmt`'s values (E4M3FN, E5M2), if any."""
    return _NATIVE_FLOAT8.get((fmt.exp_bits, fmt.man_bits, fmt.special))


def quantize_scaled(y: torch.Tensor, fmt: NumberFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Q(y) and the straight-through mask (bool, True where the gradient passes) for float32 `y`
    that is already divided by the scale."""
    q, mask = _quantize_scaled_(y.clone(), fmt, need_mask=True)
    return q, cast(torch.Tensor, mask).view(torch.bool)


def _eager_forward(x: torch.Tensor, fmt: NumberFormat, scale32: torch.Tensor, need_mask: bool
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Q(x / scale) * scale in x's dtype and the uint8 pass mask (or None): the reference."""
    y = x.to(torch.float32) * torch.reciprocal(scale32)  # a fresh temporary: rounded in place
    q, mask = _quantize_scaled_(y, fmt, need_mask)
    return q.mul_(scale32).to(x.dtype), mask


def _eager_with_mask(x: torch.Tensor, fmt: NumberFormat, scale32: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out, mask = _eager_forward(x, fmt, scale32, need_mask=True)
    return out, cast(torch.Tensor, mask)


def _fused_applies(x: torch.Tensor) -> bool:
    """Whether the fused kernel may run on x's device: a GPU, Triton, and the kernel has matched
    the eager path there (checked once per device)."""
    return (x.is_cuda and fused_quantize.is_available()
            and fused_quantize.verified_on(x.device, _eager_with_mask, scale_from_range))


def _forward(x: torch.Tensor, fmt: NumberFormat, scale32: torch.Tensor, need_mask: bool
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    # On a GPU, one fused kernel (quant/fused_quantize.py) instead of ~8 passes, where it
    # applies and once it has matched the eager path on this device.
    if x.is_cuda:
        if _fused_applies(x):
            fused = fused_quantize.fused_fake_quantize(x, fmt, scale32, need_mask)
            if fused is not None:
                return fused
    else:
        # On the CPU, the same core on cache-sized slices (quant/cpu_quantize.py).
        sliced = cpu_quantize.sliced_forward(x, fmt, scale32, need_mask, _quantize_scaled_)
        if sliced is not None:
            return sliced
    return _eager_forward(x, fmt, scale32, need_mask)


def _forward_from_range(x: torch.Tensor, fmt: NumberFormat, value_range: torch.Tensor, need_mask: bool
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`_forward` with the scale `scale_from_range(value_range, fmt)`: on a GPU the fused kernel
    derives it itself (the divide, clamp and reciprocal are launches of their own in eager)."""
    if _fused_applies(x):
        fused = fused_quantize.fused_fake_quantize_from_range(x, fmt, value_range, need_mask)
        if fused is not None:
            return fused
    return _forward(x, fmt, scale_from_range(value_range, fmt), need_mask)


class _FakeQuantizeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, fmt: NumberFormat, scale: torch.Tensor,  # type: ignore[override]
                can_saturate: bool, is_range: bool) -> torch.Tensor:
        """is_range: `scale` is the value range (float32) and the scale is derived from it."""
        # The mask is the only thing backward needs: skip it when no gradient flows to x, or
        # when no element can saturate (then it would be all ones).
        need_mask = ctx.needs_input_grad[0] and can_saturate
        if is_range:
            out, mask = _forward_from_range(x, fmt, scale, need_mask)
        else:
            out, mask = _forward(x, fmt, scale.to(torch.float32), need_mask)
        if mask is not None:
            ctx.save_for_backward(mask)
        return out

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        if not ctx.saved_tensors:  # nothing saturated: the straight-through gradient is the identity
            return grad_output, None, None, None, None
        (mask,) = ctx.saved_tensors
        return grad_output * mask, None, None, None, None


def fake_quantize_unchecked(x: torch.Tensor, fmt: NumberFormat, scale: torch.Tensor) -> torch.Tensor:
    """`fake_quantize` without argument checks, for the per-step path (no host sync)."""
    if not fmt.quantizes:
        return x
    return _FakeQuantizeFunction.apply(x, fmt, scale, True, False)


def _as_scale_tensor(x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    if isinstance(scale, torch.Tensor):
        scale_t = scale
    elif isinstance(scale, (int, float)) and not isinstance(scale, bool):
        scale_t = torch.tensor(float(scale), dtype=torch.float32, device=x.device)
    else:
        raise ValueError(f"scale must be a positive float or tensor, got {scale!r}")
    if not torch.is_floating_point(scale_t):
        raise ValueError(f"scale must be a floating-point tensor, got dtype {scale_t.dtype}")
    hint = "use a scalar, a per-channel scale shaped like (C, 1, ...) or a per-token scale shaped like (..., 1)"
    try:
        shape = torch.broadcast_shapes(scale_t.shape, x.shape)
    except RuntimeError:
        raise ValueError(
            f"scale of shape {tuple(scale_t.shape)} does not broadcast against x of shape {tuple(x.shape)}; {hint}"
        ) from None
    if shape != x.shape:  # the result must keep x's shape
        raise ValueError(
            f"scale of shape {tuple(scale_t.shape)} would broadcast x of shape {tuple(x.shape)} to {tuple(shape)}; "
            f"the result keeps x's shape, so {hint}, with no more dimensions than x"
        )
    bad = ~(torch.isfinite(scale_t) & (scale_t > 0))
    if bool(bad.any()):  # user-facing check: the one place a sync is acceptable
        first = scale_t.detach().flatten()[bad.flatten()][0].item()
        raise ValueError(f"scale must be positive and finite everywhere, got {first!r}; compute it with compute_scale")
    return scale_t


def fake_quantize(x: torch.Tensor, fmt: NumberFormat | str | int, scale: torch.Tensor | float) -> torch.Tensor:
    """Q(x / scale) * scale, same shape and dtype as `x`; `scale` broadcasts against `x`."""
    fmt = parse_format(fmt)
    if not torch.is_floating_point(x):
        raise ValueError(f"fake_quantize needs a floating-point tensor, got dtype {x.dtype}")
    return fake_quantize_unchecked(x, fmt, _as_scale_tensor(x, scale))


_DEVICE_CONSTANTS: dict[tuple[Hashable, torch.device], torch.Tensor] = {}


def _device_constant(key: Hashable, device: torch.device, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`build()` (a CPU tensor) on `device`, copied there once and cached: a copy at each call
    would make the host wait for the GPU (a copy from pageable memory synchronizes)."""
    tensor = _DEVICE_CONSTANTS.get((key, device))
    if tensor is None:
        with torch.inference_mode(False):  # a normal tensor, usable later with autograd on
            tensor = _DEVICE_CONSTANTS.setdefault((key, device), build().to(device))
    return tensor


def divide_exactly(t: torch.Tensor, divisor: float) -> torch.Tensor:
    """t / divisor, correctly rounded on every device. On CUDA, torch turns division by a
    Python number into multiplication by its float32 reciprocal, up to 1 ulp off (amax / 7 is
    off for most amax), so the same scale would differ between CPU and GPU; dividing by a
    0-dim tensor on the device (cached, so no allocation per step) keeps the true division.
    The CPU takes the same path, so that no device depends on how it treats Python numbers.
    For float32 `t` (the scales' dtype); the divisor is rounded to float32."""
    tensor = _device_constant(("divisor", divisor), t.device,
                              lambda: torch.tensor(divisor, dtype=torch.float32, device="cpu"))
    return t / tensor


class Granularity(str, Enum):
    """Which elements share one scale."""

    PER_TENSOR = "per_tensor"
    PER_CHANNEL = "per_channel"  # weights: one scale per output channel
    PER_TOKEN = "per_token"  # activations: one scale per token (per position for conv inputs)


def _reduce_dims(x: torch.Tensor, granularity: Granularity, keep_dim: int) -> tuple[int, ...]:
    """The dimensions one scale spans; raises ValueError for a `keep_dim` that `x` lacks."""
    if granularity is Granularity.PER_TENSOR:
        return tuple(range(x.dim()))
    ndim = x.dim()
    if ndim == 0:
        raise ValueError(f"{granularity.value} scales need a tensor with at least 1 dimension, got a 0-dim tensor; "
                         "use per_tensor")
    if not -ndim <= keep_dim < ndim:
        raise ValueError(f"dim {keep_dim} is out of range for a tensor of shape {tuple(x.shape)} ({ndim} dims); "
                         f"give -{ndim} <= dim < {ndim}")
    keep = keep_dim % ndim
    if granularity is Granularity.PER_CHANNEL:
        return tuple(d for d in range(x.dim()) if d != keep)
    return (keep,)  # per token: reduce over the feature dimension only


def _abs_max_over(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """max |x| over `dims` (keepdim, float32) as max(max x, -min x): reductions that read x
    without writing an |x| temporary (the max and min are exact, so the result is the same).
    On a GPU the infinity norm is the same number in one kernel launch (on the CPU it is ~20x
    slower than these reductions)."""
    if x.is_cuda:
        return torch.linalg.vector_norm(x, float("inf"), dim=dims, keepdim=True, dtype=torch.float32)
    if len(dims) == x.dim():
        low, high = torch.aminmax(x)  # one pass for the whole tensor
        amax = torch.maximum(high, low.neg()).reshape((1,) * x.dim())
    else:
        amax = torch.maximum(x.amax(dim=dims, keepdim=True), x.amin(dim=dims, keepdim=True).neg_())
    return amax.to(torch.float32)


def abs_max(
    x: torch.Tensor, granularity: Granularity, *, dim: int = 0, range_percentile: float = 100.0
) -> torch.Tensor:
    """Abs-max per group, shaped to broadcast against `x` (keepdim), in float32.

    `dim` is the channel dimension kept for PER_CHANNEL, or the feature dimension reduced for
    PER_TOKEN. A `range_percentile` in (0, 100) takes that percentile of |x| instead of the max.
    """
    return _abs_max(x, _reduce_dims(x, Granularity(granularity), dim), range_percentile)


def _abs_max(x: torch.Tensor, dims: tuple[int, ...], range_percentile: float) -> torch.Tensor:
    if range_percentile >= 100.0:
        return _abs_max_over(x.detach(), dims)
    a = x.detach().abs().to(torch.float32)
    # Move the reduced dims last and take the k-th smallest of each group.
    kept = [d for d in range(a.dim()) if d not in dims]
    group_shape = [a.shape[d] for d in kept]
    flat = a.permute(*kept, *dims).reshape(*group_shape, -1)  # (*kept, n)
    k = max(1, min(flat.shape[-1], int(round(range_percentile / 100.0 * flat.shape[-1]))))
    kth = flat.kthvalue(k, dim=-1).values  # (*kept)
    out_shape = [1 if d in dims else a.shape[d] for d in range(a.dim())]
    return kth.reshape(out_shape)


# MSE clipping search: a geometric grid of clip ratios (8% apart from 1 down to 1/128), then a
# linear refinement between the neighbours of the best coarse ratio. Ratio 1 (plain abs-max) is
# always a candidate, so the result is never worse than abs-max.
_MSE_COARSE_RATIOS = torch.logspace(0, -7, 64, base=2.0).tolist()
_MSE_FINE_STEPS = 16


def _group_squared_error(x: torch.Tensor, fmt: NumberFormat, scale: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Sum of the squared quantization errors per group, in float64: the square of a float32
    is exact there and the sum's rounding too small to reorder candidates, so CPU and CUDA
    (which sum in different orders) pick the same clipping range. In float32 near-ties
    between candidates came out differently on the two devices."""
    q, _ = _quantize_scaled_(x * torch.reciprocal(scale), fmt, need_mask=False)
    return (q * scale - x).to(torch.float64).square_().sum(dim=dims, keepdim=True)


def mse_optimal_abs_max(x: torch.Tensor, fmt: NumberFormat | str | int, granularity: Granularity | str, *,
                        dim: int = 0) -> torch.Tensor:
    """The clipping range per group that minimises the quantization MSE of `x` in `fmt`."""
    return _mse_optimal_abs_max(x, parse_format(fmt), _reduce_dims(x, Granularity(granularity), dim))


def _mse_optimal_abs_max(x: torch.Tensor, fmt: NumberFormat, dims: tuple[int, ...]) -> torch.Tensor:
    x32 = x.detach().to(torch.float32)
    amax = x32.abs().amax(dim=dims, keepdim=True).clamp_(min=_FP32_TINY)

    def search(ratios: torch.Tensor) -> torch.Tensor:  # ratios: (R, *amax.shape) -> best ratio per group
        best_err = torch.full_like(amax, float("inf"), dtype=torch.float64)
        best_ratio = torch.ones_like(amax)
        for ratio in ratios:
            err = _group_squared_error(x32, fmt, divide_exactly(amax * ratio, fmt.max).clamp_(min=_FP32_TINY), dims)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_ratio = torch.where(better, ratio.expand_as(amax), best_ratio)
        return best_ratio

    coarse = _device_constant("mse_coarse_ratios", x.device,
                              lambda: torch.tensor(_MSE_COARSE_RATIOS, dtype=torch.float32, device="cpu"))
    coarse = coarse.view(-1, *([1] * x.dim()))
    best = search(coarse.expand(-1, *amax.shape))
    # Refine between best/1.08 and best*1.08, capped at 1.
    factor = _MSE_COARSE_RATIOS[0] / _MSE_COARSE_RATIOS[1]
    lo, hi = divide_exactly(best, factor), (best * factor).clamp(max=1.0)
    # Built on the CPU: CUDA's linspace may round its points differently.
    steps = _device_constant("mse_fine_steps", x.device,
                             lambda: torch.linspace(0, 1, _MSE_FINE_STEPS, dtype=torch.float32, device="cpu"))
    steps = steps.view(-1, *([1] * x.dim()))
    fine = torch.cat([best.unsqueeze(0), lo + (hi - lo) * steps])
    return amax * search(fine)


def check_range_percentile(value: float, name: str = "range_percentile") -> None:
    """TypeError unless `value` is a real number, ValueError unless it is in (0, 100] or negative
    (NaN fails every comparison, so it is rejected too)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in (0, 100] or negative, got {value!r}")
    if not (value < 0 or 0 < value <= 100):
        raise ValueError(
            f"{name} must be in (0, 100] or negative (100 = abs-max, negative = MSE-optimal clipping), got {value!r}"
        )


def compute_scale(
    x: torch.Tensor,
    fmt: NumberFormat | str | int,
    granularity: Granularity | str = Granularity.PER_TENSOR,
    *,
    dim: int = 0,
    range_percentile: float = 100.0,
) -> torch.Tensor:
    """Symmetric scale amax / fmt.max per group (keepdim, float32, always > 0).

    range_percentile: 100 = abs-max; in (0, 100) = that percentile of |x|; negative = the
    MSE-optimal clipping. Cast formats (bf16/fp16) carry their own range: scale 1. An empty `x`
    has no range: its scale is ones (keepdim shape).
    """
    fmt = parse_format(fmt)
    check_range_percentile(range_percentile)
    return _compute_scale(x, fmt, Granularity(granularity), dim, range_percentile)


def _compute_scale(x: torch.Tensor, fmt: NumberFormat, granularity: Granularity, dim: int,
                   range_percentile: float) -> torch.Tensor:
    """`compute_scale` with its arguments already checked."""
    if isinstance(fmt, CastFormat) or not fmt.quantizes:
        return torch.ones((1,) * x.dim(), dtype=torch.float32, device=x.device)
    dims = _reduce_dims(x, granularity, dim)
    if x.numel() == 0:  # the reductions below reject empty dimensions
        shape = [1 if d in dims else size for d, size in enumerate(x.shape)]
        return torch.ones(shape, dtype=torch.float32, device=x.device)
    return scale_from_range(_value_range(x, fmt, dims, range_percentile), fmt)


def _value_range(x: torch.Tensor, fmt: NumberFormat, dims: tuple[int, ...], range_percentile: float) -> torch.Tensor:
    """The range per group (float32, keepdim) that the scale maps onto fmt.max; x non-empty."""
    if range_percentile < 0:
        return _mse_optimal_abs_max(x, fmt, dims)
    return _abs_max(x, dims, range_percentile)


def scale_from_range(value_range: torch.Tensor, fmt: NumberFormat) -> torch.Tensor:
    """The scale that maps `value_range` (float32) onto fmt.max: range / fmt.max, correctly
    rounded, and at least 2^-126 (a zero range would divide by zero)."""
    return divide_exactly(value_range, fmt.max).clamp_(min=_FP32_TINY)


@dataclass(frozen=True)
class QuantizerSpec:
    """How one tensor is quantized: its format, scale granularity and clipping."""

    fmt: NumberFormat
    granularity: Granularity = Granularity.PER_TENSOR
    dim: int = 0
    range_percentile: float = 100.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "fmt", parse_format(self.fmt))
        object.__setattr__(self, "granularity", Granularity(self.granularity))
        check_range_percentile(self.range_percentile)


def quantize(x: torch.Tensor, fmt: NumberFormat | str | int, granularity: Granularity | str, *, dim: int = 0,
             range_percentile: float = 100.0) -> torch.Tensor:
    """Compute the scale of `x` and fake-quantize it: the per-step entry point of the layers."""
    fmt = parse_format(fmt)  # a NumberFormat passes through (one isinstance check)
    if not fmt.quantizes:
        return x
    check_range_percentile(range_percentile)
    # With an abs-max scale no finite element leaves the rounding bounds: the mask would be all
    # ones, so it is not computed and backward is the identity.
    can_saturate = range_percentile < 100.0 or not abs_max_scaling_cannot_saturate(fmt)
    granularity = Granularity(granularity)
    if x.is_cuda and x.numel() and not isinstance(fmt, CastFormat):
        # Pass the range and let the GPU kernel derive the scale: 2 launches per call, not 5.
        value_range = _value_range(x, fmt, _reduce_dims(x, granularity, dim), range_percentile)
        return _FakeQuantizeFunction.apply(x, fmt, value_range, can_saturate, True)
    scale = _compute_scale(x, fmt, granularity, dim, range_percentile)
    return _FakeQuantizeFunction.apply(x, fmt, scale, can_saturate, False)
