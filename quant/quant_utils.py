"""Fake quantization: one rounding core per format kind, straight-through gradients, scales.

`fake_quantize(x, fmt, scale)` returns Q(x / scale) * scale with the dtype and shape of `x`.
Q rounds to the nearest value of `fmt` (ties to even) and saturates at +-fmt.max; FP formats
keep subnormals. Like torch's fake-quant kernels, x / scale is computed as x * (1 / scale) in
float32, so INT results equal `torch.fake_quantize_per_tensor_affine` bit for bit.

Gradient (straight-through): grad where the value is representable, 0 where it saturated.
Scales are treated as constants (no gradient), as with abs-max observers.

Nothing here calls `.item()` or otherwise synchronises with the device, except the argument
checks of the public `fake_quantize`; layers use `quantize` / `fake_quantize_unchecked`.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch

from quant.formats import CastFormat, FloatFormat, IntFormat, NumberFormat, parse_format

_FP32_TINY = torch.finfo(torch.float32).tiny
_FP32_MANTISSA_BITS = 23
_FP32_EXP_BIAS = 127


def _pow2(exponent: torch.Tensor) -> torch.Tensor:
    """2**exponent as float32, built from the bit pattern so it is exact on every device."""
    return ((exponent + _FP32_EXP_BIAS) << _FP32_MANTISSA_BITS).view(torch.float32)


def round_to_float_format(y: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """Round float32 `y` to the nearest value of `fmt`, ties to even, saturating at +-fmt.max."""
    y = y.clamp(-fmt.max, fmt.max)
    # floor(log2|y|) from the float32 exponent field; float32 subnormals read as -127 and are
    # lifted to emin like the format's own subnormals (fixed step 2^(emin - m)).
    exponent = ((y.view(torch.int32) >> _FP32_MANTISSA_BITS) & 0xFF) - _FP32_EXP_BIAS
    step_exponent = exponent.clamp_(min=fmt.emin) - fmt.man_bits
    # Scaling by powers of two is exact, so the only rounding is torch.round (half to even).
    return torch.round(y * _pow2(-step_exponent)) * _pow2(step_exponent)


def round_to_cast_format(y: torch.Tensor, fmt: CastFormat) -> torch.Tensor:
    return y.clamp(-fmt.max, fmt.max).to(fmt.torch_dtype).to(torch.float32)


def quantize_scaled(y: torch.Tensor, fmt: NumberFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Q(y) and the straight-through mask for float32 `y` that is already divided by the scale."""
    if isinstance(fmt, IntFormat):
        q = torch.round(y)
        # torch's convention: the gradient passes where the *rounded* value is on the grid.
        mask = (q >= fmt.qmin) & (q <= fmt.qmax)
        return q.clamp_(fmt.qmin, fmt.qmax), mask
    mask = y.abs() <= fmt.max
    if isinstance(fmt, FloatFormat):
        return round_to_float_format(y, fmt), mask
    if isinstance(fmt, CastFormat):
        return round_to_cast_format(y, fmt), mask
    raise TypeError(f"no rounding rule for format {fmt!r}")


class _FakeQuantizeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, fmt: NumberFormat, scale: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        scale32 = scale.to(torch.float32)
        y = x.to(torch.float32) * torch.reciprocal(scale32)
        q, mask = quantize_scaled(y, fmt)
        if x.requires_grad:
            ctx.save_for_backward(mask)
        return (q * scale32).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        (mask,) = ctx.saved_tensors
        return grad_output * mask, None, None


def fake_quantize_unchecked(x: torch.Tensor, fmt: NumberFormat, scale: torch.Tensor) -> torch.Tensor:
    """`fake_quantize` without argument checks, for the per-step path (no host sync)."""
    if not fmt.quantizes:
        return x
    return _FakeQuantizeFunction.apply(x, fmt, scale)


def _as_scale_tensor(x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    if isinstance(scale, torch.Tensor):
        scale_t = scale
    elif isinstance(scale, (int, float)) and not isinstance(scale, bool):
        scale_t = torch.tensor(float(scale), dtype=torch.float32, device=x.device)
    else:
        raise ValueError(f"scale must be a positive float or tensor, got {scale!r}")
    if not torch.is_floating_point(scale_t):
        raise ValueError(f"scale must be a floating-point tensor, got dtype {scale_t.dtype}")
    try:
        torch.broadcast_shapes(scale_t.shape, x.shape)
    except RuntimeError:
        raise ValueError(
            f"scale of shape {tuple(scale_t.shape)} does not broadcast against x of shape {tuple(x.shape)}; "
            "use a scalar, a per-channel scale shaped like (C, 1, ...) or a per-token scale shaped like (..., 1)"
        ) from None
    bad = ~(torch.isfinite(scale_t) & (scale_t > 0))
    if bool(bad.any()):  # user-facing check: the one place a sync is acceptable
        first = scale_t.detach().flatten()[bad.flatten()][0].item()
        raise ValueError(f"scale must be positive and finite everywhere, got {first!r}; compute it with compute_scale")
    return scale_t


def fake_quantize(x: torch.Tensor, fmt: NumberFormat | str, scale: torch.Tensor | float) -> torch.Tensor:
    """Q(x / scale) * scale, same shape and dtype as `x`; `scale` broadcasts against `x`."""
    fmt = parse_format(fmt)
    if not torch.is_floating_point(x):
        raise ValueError(f"fake_quantize needs a floating-point tensor, got dtype {x.dtype}")
    return fake_quantize_unchecked(x, fmt, _as_scale_tensor(x, scale))


class Granularity(str, Enum):
    """Which elements share one scale."""

    PER_TENSOR = "per_tensor"
    PER_CHANNEL = "per_channel"  # weights: one scale per output channel
    PER_TOKEN = "per_token"  # activations: one scale per token (per position for conv inputs)


def _reduce_dims(x: torch.Tensor, granularity: Granularity, keep_dim: int) -> tuple[int, ...]:
    if granularity is Granularity.PER_TENSOR:
        return tuple(range(x.dim()))
    keep = keep_dim % x.dim()
    if granularity is Granularity.PER_CHANNEL:
        return tuple(d for d in range(x.dim()) if d != keep)
    return (keep,)  # per token: reduce over the feature dimension only


def abs_max(
    x: torch.Tensor, granularity: Granularity, *, dim: int = 0, range_percentile: float = 100.0
) -> torch.Tensor:
    """Abs-max per group, shaped to broadcast against `x` (keepdim), in float32.

    `dim` is the channel dimension kept for PER_CHANNEL, or the feature dimension reduced for
    PER_TOKEN. A `range_percentile` in (0, 100) takes that percentile of |x| instead of the max.
    """
    granularity = Granularity(granularity)
    a = x.detach().abs().to(torch.float32)
    dims = _reduce_dims(a, granularity, dim)
    if range_percentile >= 100.0:
        return a.amax(dim=dims, keepdim=True)
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


def _group_mse(x: torch.Tensor, fmt: NumberFormat, scale: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    y = x * torch.reciprocal(scale)
    q, _ = quantize_scaled(y, fmt)
    return (q * scale - x).square().mean(dim=dims, keepdim=True)


def mse_optimal_abs_max(x: torch.Tensor, fmt: NumberFormat, granularity: Granularity, *, dim: int = 0) -> torch.Tensor:
    """The clipping range per group that minimises the quantization MSE of `x` in `fmt`."""
    granularity = Granularity(granularity)
    x32 = x.detach().to(torch.float32)
    dims = _reduce_dims(x32, granularity, dim)
    amax = x32.abs().amax(dim=dims, keepdim=True).clamp_(min=_FP32_TINY)

    def search(ratios: torch.Tensor) -> torch.Tensor:  # ratios: (R, *amax.shape) -> best ratio per group
        best_err = torch.full_like(amax, float("inf"))
        best_ratio = torch.ones_like(amax)
        for ratio in ratios:
            err = _group_mse(x32, fmt, (amax * ratio / fmt.max).clamp_(min=_FP32_TINY), dims)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_ratio = torch.where(better, ratio.expand_as(amax), best_ratio)
        return best_ratio

    coarse = torch.tensor(_MSE_COARSE_RATIOS, device=x.device).view(-1, *([1] * x.dim()))
    best = search(coarse.expand(-1, *amax.shape))
    # Refine between best/1.08 and best*1.08, capped at 1.
    factor = _MSE_COARSE_RATIOS[0] / _MSE_COARSE_RATIOS[1]
    lo, hi = best / factor, (best * factor).clamp(max=1.0)
    steps = torch.linspace(0, 1, _MSE_FINE_STEPS, device=x.device).view(-1, *([1] * x.dim()))
    fine = torch.cat([best.unsqueeze(0), lo + (hi - lo) * steps])
    return amax * search(fine)


def compute_scale(
    x: torch.Tensor,
    fmt: NumberFormat,
    granularity: Granularity | str = Granularity.PER_TENSOR,
    *,
    dim: int = 0,
    range_percentile: float = 100.0,
) -> torch.Tensor:
    """Symmetric scale amax / fmt.max per group (keepdim, float32, always > 0).

    range_percentile: 100 = abs-max; in (0, 100) = that percentile of |x|; negative = the
    MSE-optimal clipping. Cast formats (bf16/fp16) carry their own range: scale 1.
    """
    granularity = Granularity(granularity)
    if isinstance(fmt, CastFormat) or not fmt.quantizes:
        return torch.ones((1,) * x.dim(), dtype=torch.float32, device=x.device)
    if range_percentile == 0 or range_percentile > 100:
        raise ValueError(
            f"range_percentile must be in (0, 100] or negative (MSE-optimal clipping), got {range_percentile}"
        )
    if range_percentile < 0:
        amax = mse_optimal_abs_max(x, fmt, granularity, dim=dim)
    else:
        amax = abs_max(x, granularity, dim=dim, range_percentile=range_percentile)
    return (amax / fmt.max).clamp_(min=_FP32_TINY)


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
        if self.range_percentile == 0 or self.range_percentile > 100:
            raise ValueError(
                f"range_percentile must be in (0, 100] or negative (MSE-optimal clipping), got {self.range_percentile}"
            )


def quantize(x: torch.Tensor, fmt: NumberFormat, granularity: Granularity, *, dim: int = 0,
             range_percentile: float = 100.0) -> torch.Tensor:
    """Compute the scale of `x` and fake-quantize it: the per-step entry point of the layers."""
    if not fmt.quantizes:
        return x
    scale = compute_scale(x, fmt, granularity, dim=dim, range_percentile=range_percentile)
    return fake_quantize_unchecked(x, fmt, scale)
