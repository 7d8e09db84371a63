"""Fake quantization: Q(x / scale) * scale with straight-through gradients.

`fake_quantize(x, fmt, scale)` returns Q(x / scale) * scale with the dtype and shape of `x`.
Q (quant/rounding.py) rounds to the nearest value of `fmt` (ties to even) and saturates at
+-fmt.max; FP formats keep subnormals. Like torch's fake-quant kernels, x / scale is computed as
x * (1 / scale) in float32, so INT results equal `torch.fake_quantize_per_tensor_affine` bit for
bit. `quantize` computes the scale first (quant/scales.py).

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

torch.func transforms (grad, vmap, jvp, vjp, jacrev, jacfwd, hessian; per-sample gradients with
vmap(grad(functional_call(...)))) give the eager numbers bit for bit, forward mode taking the
straight-through tangent (tests/quant/test_torch_func.py); functionalize raises, saying so.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch

from quant import cpu_quantize, fused_quantize
from quant.formats import CastFormat, NumberFormat, parse_format
from quant.rounding import _quantize_scaled_, abs_max_scaling_cannot_saturate
from quant.scales import (
    Granularity,
    _compute_scale,
    _reduce_dims,
    _value_range,
    check_range_percentile,
    parse_granularity,
    scale_from_range,
)


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


# autograd.Function.apply's C core. Function.apply wraps it in Python (functorch's dead-wrapper
# unwrapping, a setup_context check) that costs ~2 us per call on a 2-core VM and ~4x that on a
# GPU host, where a training step's host work, not the GPU, sets its pace; layers call this every
# step (BERT-base: 74 activation quantizers).
_apply_core = super(torch.autograd.Function, _FakeQuantizeFunction).apply


class _TransformableFakeQuantize(torch.autograd.Function):
    """`_FakeQuantizeFunction` in the form torch.func transforms take (grad, vmap, jvp, jacrev,
    jacfwd, hessian and their compositions): the same forward and straight-through gradient, bit
    for bit, used only while a transform is active (`_apply_fake_quantize`).

    forward returns (Q(x / scale) * scale, mask or None). Without a ctx, forward cannot ask
    needs_input_grad, so it builds the uint8 mask whenever an element can saturate: one byte per
    element kept for backward (x would be 2-4, and recomputing the mask from it would repeat
    the scaling pass), and only for as long as a transform records a graph that needs it. Under
    abs-max scaling (`can_saturate` False, the layers' default) there is no mask, as in eager.
    """

    @staticmethod
    def forward(x: torch.Tensor, fmt: NumberFormat, scale: torch.Tensor,  # type: ignore[override]
                can_saturate: bool, is_range: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if is_range:
            return _forward_from_range(x, fmt, scale, can_saturate)
        return _forward(x, fmt, scale.to(torch.float32), can_saturate)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: tuple[torch.Tensor, torch.Tensor | None]) -> None:
        mask = output[1]
        ctx.has_mask = mask is not None
        if mask is not None:
            ctx.mark_non_differentiable(mask)
            ctx.save_for_backward(mask)  # reverse mode (grad, vjp, jacrev)
            ctx.save_for_forward(mask)  # forward mode (jvp, jacfwd)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor, _grad_mask: torch.Tensor | None):  # type: ignore[override]
        if not ctx.has_mask:  # nothing could saturate: the straight-through gradient is the identity
            return grad_output, None, None, None, None
        (mask,) = ctx.saved_tensors
        return grad_output * mask, None, None, None, None

    @staticmethod
    def jvp(ctx, x_tangent: torch.Tensor | None, *_constant_tangents: object  # type: ignore[override]
            ) -> tuple[torch.Tensor | None, None]:
        # The straight-through estimator's forward-mode twin: the tangent passes where the
        # gradient would (the scale is a constant, as in backward). A fresh tensor: autograd
        # rejects an input tangent returned as an output's.
        if x_tangent is None:
            return None, None
        if not ctx.has_mask:
            return x_tangent.clone(), None
        (mask,) = ctx.saved_tensors
        return x_tangent * mask, None

    @staticmethod
    def vmap(info, in_dims: tuple, x: torch.Tensor, fmt: NumberFormat, scale: torch.Tensor,  # type: ignore[override]
             can_saturate: bool, is_range: bool) -> tuple[tuple, tuple]:
        # The whole batch in one call on the physical tensors: batch dim first, and a batched
        # scale (one per sample: a per-tensor scale of each sample, say) given leading size-1
        # dims so that it broadcasts against x as it did per sample. Elementwise, so every
        # element is computed as in the per-sample call. (generate_vmap_rule cannot: the forward
        # writes into tensors it allocates, which vmap refuses for batched inputs.)
        x_dim, _, scale_dim, _, _ = in_dims
        x = x.movedim(x_dim, 0) if x_dim is not None else x.expand(info.batch_size, *x.shape)
        if scale_dim is not None:
            scale = scale.movedim(scale_dim, 0)
            scale = scale.reshape(scale.shape[0], *([1] * (x.dim() - scale.dim())), *scale.shape[1:])
        out, mask = _TransformableFakeQuantize.apply(x, fmt, scale, can_saturate, is_range)
        return (out, mask), (0, None if mask is None else 0)


def _check_no_functionalize() -> None:
    """RuntimeError, saying what to do, under torch.func.functionalize at any level: torch has no
    functionalize rule for a custom autograd.Function (its own error, "NYI: Functionalize rule
    for custom_function_call", names neither the quantizer nor a way out)."""
    functorch = torch._C._functorch
    stack = getattr(functorch, "get_interpreter_stack", None)
    interpreters = stack() if stack is not None else [functorch.peek_interpreter_stack()]
    if any(i is not None and i.key() == functorch.TransformType.Functionalize for i in interpreters):
        raise RuntimeError(
            "torch.func.functionalize cannot run fake quantization (quant.quant_utils): torch has no functionalize "
            "rule for its custom autograd.Function. Call the quantized model or function outside functionalize; "
            "torch.func.grad, vmap, jvp, vjp, jacrev, jacfwd and hessian support it, and torch.compile traces it")


def _apply_fake_quantize(x: torch.Tensor, fmt: NumberFormat, scale: torch.Tensor, can_saturate: bool,
                         is_range: bool) -> torch.Tensor:
    """`_FakeQuantizeFunction.apply(...)`: through the C core; under torch.func transforms, the
    same numbers through `_TransformableFakeQuantize` (the old-style Function cannot run there);
    while torch.compile traces, through Function.apply (it knows that, not the core). The fast
    path pays one C call for the two checks, as before."""
    if torch._C._are_functorch_transforms_active():
        _check_no_functionalize()
        return _TransformableFakeQuantize.apply(x, fmt, scale, can_saturate, is_range)[0]
    if torch.compiler.is_compiling():
        return _FakeQuantizeFunction.apply(x, fmt, scale, can_saturate, is_range)
    return _apply_core(x, fmt, scale, can_saturate, is_range)


def fake_quantize_unchecked(x: torch.Tensor, fmt: NumberFormat, scale: torch.Tensor) -> torch.Tensor:
    """`fake_quantize` without argument checks, for the per-step path (no host sync)."""
    if not fmt.quantizes:
        return x
    return _apply_fake_quantize(x, fmt, scale, True, False)


# The smallest float32 scale whose float32 reciprocal is finite: the next float after 2^-128.
SMALLEST_SCALE = float(torch.nextafter(torch.tensor(2.0**-128), torch.tensor(1.0)))
LARGEST_SCALE = torch.finfo(torch.float32).max


def _as_scale_tensor(x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    if isinstance(scale, torch.Tensor):
        scale_t = scale
    elif isinstance(scale, numbers.Real) and not isinstance(scale, (bool, np.bool_)):  # numpy floats too
        scale_t = torch.tensor(float(scale), dtype=torch.float32, device=x.device)
    else:
        raise TypeError(f"scale must be a positive number or a floating-point tensor, got {scale!r} "
                        f"({type(scale).__name__})")
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
    # x / scale is computed as x * (1 / scale) in float32: the scale must stay positive and finite
    # in float32 and so must its reciprocal, which overflows below 2^-128 (~2.9e-39; then 0 * inf
    # would give NaN). Scales that compute_scale returns are at least 2^-126.
    checked = scale_t.detach()
    if torch._C._are_functorch_transforms_active():
        # Under vmap a scale may differ per sample, and a batched tensor cannot decide an `if`:
        # check the values of every sample at once, unwrapped.
        functorch = torch._C._functorch
        while functorch.is_functorch_wrapped_tensor(checked):
            checked = functorch.get_unwrapped(checked)
    scale32 = checked.to(torch.float32)
    bad = ~(torch.isfinite(scale32) & (scale32 > 0) & torch.isfinite(torch.reciprocal(scale32)))
    if bool(bad.any()):  # user-facing check: the one place a sync is acceptable
        first = scale if scale_t is not scale else checked.flatten()[bad.flatten()][0].item()
        raise ValueError(f"scale must lie in [{SMALLEST_SCALE:.3g}, {LARGEST_SCALE:.3g}] everywhere (positive and "
                         f"finite in float32, with a finite reciprocal), got {first!r}; compute it with compute_scale")
    return scale_t


def _check_floating_point(x: torch.Tensor, caller: str) -> None:
    # Rounding an integer tensor's Q(x / scale) * scale back into its dtype would truncate it.
    if not torch.is_floating_point(x):
        raise ValueError(f"{caller} needs a floating-point tensor, got dtype {x.dtype}; convert it first, "
                         f"e.g. x.float()")


def fake_quantize(x: torch.Tensor, fmt: NumberFormat | str | int, scale: torch.Tensor | float) -> torch.Tensor:
    """Q(x / scale) * scale, same shape and dtype as `x`; `scale` broadcasts against `x`."""
    fmt = parse_format(fmt)
    _check_floating_point(x, "fake_quantize")
    return fake_quantize_unchecked(x, fmt, _as_scale_tensor(x, scale))


@dataclass(frozen=True)
class QuantizerSpec:
    """How one tensor is quantized: its format, scale granularity and clipping."""

    fmt: NumberFormat
    granularity: Granularity = Granularity.PER_TENSOR
    dim: int = 0
    range_percentile: float = 100.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "fmt", parse_format(self.fmt))
        object.__setattr__(self, "granularity", parse_granularity(self.granularity))
        check_range_percentile(self.range_percentile)


def checked_scale_options(granularity: Granularity | str, range_percentile: float) -> Granularity:
    """`quantize`'s checks of the scale options: the granularity, parsed; ValueError / TypeError
    naming a bad one. No work on the device."""
    if range_percentile != 100.0:  # abs-max, the layers' default, needs no check
        check_range_percentile(range_percentile)
    return parse_granularity(granularity)


def input_range(x: torch.Tensor, fmt: NumberFormat, granularity: Granularity, dim: int,
                range_percentile: float) -> torch.Tensor | None:
    """The range per scale group (float32, keepdim) that `quantize` derives x's scale from, or
    None where it takes none: a format that does not quantize or a cast format (scale 1), an
    empty x. `granularity` parsed, `range_percentile` checked (`checked_scale_options`)."""
    if not fmt.quantizes or isinstance(fmt, CastFormat) or x.numel() == 0:
        return None
    return _value_range(x, fmt, _reduce_dims(x, granularity, dim), range_percentile)


def quantize_checked(x: torch.Tensor, fmt: NumberFormat, granularity: Granularity, dim: int,
                     range_percentile: float, value_range: torch.Tensor | None) -> torch.Tensor:
    """`quantize` with checked arguments and x's `input_range` computed already (quant/input_share.py
    shares one range between the layers that read the same input); a cast format ignores it."""
    if not fmt.quantizes:
        return x
    # With an abs-max scale no finite element leaves the rounding bounds: the mask would be all
    # ones, so it is not computed and backward is the identity.
    can_saturate = range_percentile < 100.0 or not abs_max_scaling_cannot_saturate(fmt)
    scale, is_range = _scale_argument(x, fmt, granularity, dim, range_percentile, value_range)
    return _apply_fake_quantize(x, fmt, scale, can_saturate, is_range)


def quantized_values(x: torch.Tensor, fmt: NumberFormat, granularity: Granularity, dim: int,
                     range_percentile: float, value_range: torch.Tensor | None) -> torch.Tensor:
    """`quantize_checked`'s values without autograd (no node, no mask): what recomputing them in
    a backward pass needs (quant/input_recompute.py)."""
    if not fmt.quantizes:
        return x
    scale, is_range = _scale_argument(x, fmt, granularity, dim, range_percentile, value_range)
    if is_range:
        return _forward_from_range(x, fmt, scale, False)[0]
    return _forward(x, fmt, scale.to(torch.float32), False)[0]


def _scale_argument(x: torch.Tensor, fmt: NumberFormat, granularity: Granularity, dim: int, range_percentile: float,
                    value_range: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
    """What the forward takes for x's scale: (the scale, False), or on a GPU, given the range,
    (the range, True): the kernel derives the scale itself, 2 launches per call instead of 5."""
    if value_range is None or isinstance(fmt, CastFormat):
        return _compute_scale(x, fmt, granularity, dim, range_percentile), False
    if x.is_cuda:
        return value_range, True
    return scale_from_range(value_range, fmt), False


def quantize(x: torch.Tensor, fmt: NumberFormat | str | int, granularity: Granularity | str, *, dim: int = 0,
             range_percentile: float = 100.0) -> torch.Tensor:
    """Compute the scale of `x` and fake-quantize it: the per-step entry point of the layers."""
    _check_floating_point(x, "quantize")  # a dtype check: no work on the device
    fmt = parse_format(fmt)  # a NumberFormat passes through (one isinstance check)
    if not fmt.quantizes:
        return x
    granularity = checked_scale_options(granularity, range_percentile)
    return quantize_checked(x, fmt, granularity, dim, range_percentile,
                            input_range(x, fmt, granularity, dim, range_percentile))
