"""Scales: which elements share one (`Granularity`) and the range each group maps onto fmt.max.

A group's range is its abs-max, a percentile of |x| (clipping), or the MSE-optimal clipping
range; its scale is range / fmt.max, correctly rounded on every device (`divide_exactly`), and
at least 2^-126. Cast formats (bf16/fp16) carry their own range: scale 1.
With a computed abs-max scale, a NaN element makes its group's scale NaN and an inf element
makes it inf (a clipping percentile below 100 may leave them out of the scale).
Empty tensors give scales of ones.

Nothing here calls `.item()` or otherwise synchronises with the device.
"""
from __future__ import annotations

import numbers
from enum import Enum
from typing import Callable, Hashable

import torch

from quant.formats import NumberFormat, _as_int, parse_format
from quant.rounding import _quantize_scaled_, _quantize_scaled_batchable_

_FP32_TINY = torch.finfo(torch.float32).tiny


_DEVICE_CONSTANTS: dict[tuple[Hashable, torch.device], torch.Tensor] = {}


def _device_constant(key: Hashable, device: torch.device, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`build()` (a CPU tensor) on `device`, copied there once and cached: a copy at each call
    would make the host wait for the GPU (a copy from pageable memory synchronizes)."""
    if torch.compiler.is_compiling():  # traced: a constant of the graph (no host copy at run time)
        return build().to(device)
    tensor = _DEVICE_CONSTANTS.get((key, device))
    if tensor is None:
        # A normal tensor, usable later with autograd on, and a plain one when first asked for
        # under a torch.func transform (functionalize would wrap it, for its level only).
        with torch.inference_mode(False), torch._C._DisableFuncTorch():
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


def parse_granularity(granularity: Granularity | str) -> Granularity:
    """A Granularity from itself or its value ("per_tensor", "per_channel", "per_token")."""
    if isinstance(granularity, Granularity):  # the per-step path: one isinstance check
        return granularity
    try:
        return Granularity(granularity)
    except ValueError:
        raise ValueError(f"unknown scale granularity {granularity!r}; valid values: "
                         f"{', '.join(g.value for g in Granularity)}") from None


def _reduce_dims(x: torch.Tensor, granularity: Granularity, keep_dim: int) -> tuple[int, ...]:
    """The dimensions one scale spans; raises TypeError for a `keep_dim` that is no integer (1.5
    would keep no dimension: a per-tensor scale), ValueError for one that `x` lacks."""
    if isinstance(keep_dim, bool) or not isinstance(keep_dim, int):
        index = _as_int(keep_dim)
        if index is None:
            raise TypeError(f"dim must be an integer (the channel or feature dimension), got {keep_dim!r} "
                            f"({type(keep_dim).__name__})")
        keep_dim = index
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
    if isinstance(range_percentile, bool) or not isinstance(range_percentile, numbers.Real):
        raise TypeError(f"range_percentile must be a number in (0, 100], got {range_percentile!r}")
    if not 0 < range_percentile <= 100:  # NaN fails it too
        raise ValueError(f"abs_max takes range_percentile in (0, 100], got {range_percentile!r} (MSE-optimal "
                         "clipping, a negative range_percentile, is compute_scale's)")
    return _abs_max(x, _reduce_dims(x, parse_granularity(granularity), dim), range_percentile)


def _abs_max(x: torch.Tensor, dims: tuple[int, ...], range_percentile: float) -> torch.Tensor:
    if range_percentile >= 100.0:
        return _abs_max_over(x.detach(), dims)
    a = x.detach().abs().to(torch.float32)
    if a.dim() == 0:  # one element: its own percentile (and nothing to permute)
        return a
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
    y = x * torch.reciprocal(scale)
    if torch._C._are_functorch_transforms_active():  # vmap: no out= into a scratch buffer
        q = _quantize_scaled_batchable_(y, fmt)
    else:
        q, _ = _quantize_scaled_(y, fmt, need_mask=False)
    return (q * scale - x).to(torch.float64).square_().sum(dim=dims, keepdim=True)


def mse_optimal_abs_max(x: torch.Tensor, fmt: NumberFormat | str | int, granularity: Granularity | str, *,
                        dim: int = 0) -> torch.Tensor:
    """The clipping range per group that minimises the quantization MSE of `x` in `fmt`."""
    return _mse_optimal_abs_max(x, parse_format(fmt), _reduce_dims(x, parse_granularity(granularity), dim))


def _mse_optimal_abs_max(x: torch.Tensor, fmt: NumberFormat, dims: tuple[int, ...]) -> torch.Tensor:
    x32 = x.detach().to(torch.float32)
    amax = x32.abs().amax(dim=dims, keepdim=True).clamp_min_(_FP32_TINY)

    def search(ratios: torch.Tensor) -> torch.Tensor:  # ratios: (R, *amax.shape) -> best ratio per group
        best_err = torch.full_like(amax, float("inf"), dtype=torch.float64)
        best_ratio = torch.ones_like(amax)
        for ratio in ratios:
            err = _group_squared_error(x32, fmt, divide_exactly(amax * ratio, fmt.max).clamp_min_(_FP32_TINY), dims)
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
    return _compute_scale(x, fmt, parse_granularity(granularity), dim, range_percentile)


def _compute_scale(x: torch.Tensor, fmt: NumberFormat, granularity: Granularity, dim: int,
                   range_percentile: float) -> torch.Tensor:
    """`compute_scale` with its arguments already checked."""
    if not fmt.takes_scale:
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
    return divide_exactly(value_range, fmt.max).clamp_min_(_FP32_TINY)  # clamp_min_: vmap has a batching rule for it
