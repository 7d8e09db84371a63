"""The forward of fake quantization as one fused GPU kernel (Triton), bit-identical to the eager core.

Eager, `_FakeQuantizeFunction` runs ~8 elementwise passes (scale, clamp, mask, step, round,
rescale, cast); on a GPU each is a kernel launch and a trip through memory, so a layer's
quantizer ran at ~10-20% of copy bandwidth on an H200. This kernel reads x once and writes the
result (and, when a gradient is needed, the 1-byte straight-through mask) once.

One kernel serves every INT and FP format, with the format's numbers passed as runtime
arguments (so a search that switches formats every step never recompiles):

    scale = max(range / fmt.max, 2^-126)            only when given the range (`fused_fake_quantize_from_range`):
                                                    as eager's divide_exactly + clamp, IEEE division
    y    = x * (1 / scale)                          as eager: torch's reciprocal, then one multiply
    c    = clamp(y, lo, hi)                         the rounding bounds (formats.rounding_bounds)
    step = 2^(clamp(floor(log2|c|), e_lo, e_hi) - m)   built in the exponent field, exact;
                                                    INT: e_lo = e_hi = 0, m = 0 -> step 1
    q    = round_half_even(c / step) * step         c / step = c * 2^-k: exact; rounding by the
                                                    1.5 * 2^23 trick (exact for |c / step| <= 2^22)
    out  = q * scale, cast to x's dtype;  mask = (y == c)   (NaN: no gradient)

Every operation is exact or the same single rounding eager does, and contraction into FMAs is
switched off, so the result equals the eager path bit for bit (tests/quant/test_fused_quantize.py,
on CUDA, and on the CPU with TRITON_INTERPRET=1). Formats the tricks do not cover (cast formats,
INT wider than 22 bits, FP with more than 21 mantissa bits or steps outside float32's normal
range) and layouts other than a contiguous x with a per-tensor or leading-dimension scale fall
back to the eager path; so does everything when Triton is missing.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from quant.formats import FloatFormat, IntFormat, NumberFormat, cached_per_format, parse_format, rounding_bounds

try:  # Triton ships with CUDA builds of torch; CPU builds have none.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the torch build
    triton = None

_FP32_EXPONENT_FIELD = 0x7F800000
_FP32_ONE_BITS = 127 << 23  # bits of 1.0: an exponent field of 0
_FP32_NORMAL_MIN_FIELD = 1 << 23  # 2^-126
_FP32_NORMAL_MAX_FIELD = 253 << 23  # 2^126: its reciprocal is still normal
_MAX_ROUNDED_MAGNITUDE = 2**22
_BLOCK = 1024
_ENV_SWITCH = "FLIQS_FUSED_QUANTIZE"  # "0" turns the fused kernel off


@dataclass(frozen=True)
class KernelParams:
    """A format's numbers as the kernel takes them (float32 values and float32 bit patterns)."""

    lo: float
    hi: float
    step_min_bits: int
    step_max_bits: int
    man_shift: int
    fmt_max: float  # the format's largest value, which a range maps onto


@cached_per_format  # formats are frozen dataclasses; called on every forward
def kernel_params(fmt: NumberFormat) -> KernelParams | None:
    """The kernel arguments for `fmt`, or None when the fused kernel does not cover it."""
    if isinstance(fmt, IntFormat):
        if fmt.qmax + 1 > _MAX_ROUNDED_MAGNITUDE:
            return None
        lo, hi = rounding_bounds(fmt)
        return KernelParams(lo, hi, _FP32_ONE_BITS, _FP32_ONE_BITS, 0, float(fmt.max))
    if isinstance(fmt, FloatFormat):
        smallest = (fmt.emin - fmt.man_bits + 127) << 23
        largest = (fmt.emax - fmt.man_bits + 127) << 23
        if (2 ** (fmt.man_bits + 1) > _MAX_ROUNDED_MAGNITUDE or smallest < _FP32_NORMAL_MIN_FIELD
                or largest > _FP32_NORMAL_MAX_FIELD or fmt.max > torch.finfo(torch.float32).max):
            return None
        # Values in (max, hi] share max's binade, so the step from the exponent field rounds them to max.
        lo, hi = rounding_bounds(fmt)
        return KernelParams(lo, hi, smallest, _FP32_EXPONENT_FIELD, fmt.man_bits << 23, float(fmt.max))
    return None  # cast formats (bf16/fp16) and no-quant: eager


if triton is not None:
    # Triton links libdevice with flush-to-zero on, so tl.math.div_rn compiles to
    # div.rn.ftz.f32: 1 / scale for a scale above 2^126 would be 0, not torch's subnormal. On a
    # GPU the kernels divide with PTX's div.rn.f32 (IEEE, subnormals kept); the interpreter,
    # which has no PTX, with div_rn (numpy's IEEE division there).
    _PTX_DIVISION: tl.constexpr = tl.constexpr(os.environ.get("TRITON_INTERPRET") != "1")

    @triton.jit
    def divide_rn(a, b):
        """a / b correctly rounded, subnormal results kept, as torch's division on CUDA."""
        if _PTX_DIVISION:
            return tl.inline_asm_elementwise("div.rn.f32 $0, $1, $2;", "=f,f,f", [a, b], dtype=tl.float32,
                                             is_pure=True, pack=1)
        else:
            return tl.math.div_rn(a, b)

    @triton.jit
    def scale_from_range_rn(value_range, fmt_max):
        """(scale, 1 / scale) from a range, as eager's `scale_from_range` and `torch.reciprocal`.

        IEEE divisions (divide_rn), as torch's CUDA division and reciprocal; a NaN range stays NaN
        through the clamp, as with torch.clamp. Scales are >= 2^-126 (normal); the reciprocal of
        a huge scale is subnormal and kept (tests: range 3e38)."""
        scale = divide_rn(value_range, fmt_max)
        scale = tl.where(scale < 1.1754943508222875e-38, 1.1754943508222875e-38, scale)  # 2^-126
        inv_scale = divide_rn(tl.full(scale.shape, 1.0, tl.float32), scale)
        return scale, inv_scale

    @triton.jit
    def fake_quantize_values(x, scale, inv_scale, lo, hi, step_min_bits, step_max_bits, man_shift):
        """(Q(x / scale) * scale in float32, pass mask) for float32 x: the formula above."""
        y = x * inv_scale
        c = tl.where(y < lo, lo, tl.where(y > hi, hi, y))  # NaN stays NaN, as torch.clamp
        step_bits = (c.to(tl.int32, bitcast=True) & 0x7F800000) - man_shift
        step_bits = tl.minimum(tl.maximum(step_bits, step_min_bits), step_max_bits)
        step = step_bits.to(tl.float32, bitcast=True)
        inv_step = (0x7F000000 - step_bits).to(tl.float32, bitcast=True)  # 2^-k from 2^k: exact
        v = c * inv_step
        r = (v + 12582912.0) - 12582912.0  # 1.5 * 2^23: rounds |v| <= 2^22 half to even
        # Keep v's sign so that -0.4 rounds to -0.0 as torch.round does.
        v_bits = v.to(tl.int32, bitcast=True)
        r_bits = (r.to(tl.int32, bitcast=True) & 0x7FFFFFFF) | (v_bits ^ (v_bits & 0x7FFFFFFF))
        return (r_bits.to(tl.float32, bitcast=True) * step) * scale, y == c

    @triton.jit
    def store_in_dtype(ptr, values, mask):
        """Store float32 `values` in ptr's dtype; bf16 / fp16 round to nearest even, as torch's .to()."""
        if ptr.dtype.element_ty == tl.float32:
            tl.store(ptr, values, mask=mask)
        else:
            tl.store(ptr, values.to(ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=mask)

    @triton.jit
    def _fake_quantize_kernel(x_ptr, scale_ptr, inv_scale_ptr, out_ptr, pass_ptr, n, inner, fmt_max,
                              lo, hi, step_min_bits, step_max_bits, man_shift,
                              PER_GROUP: tl.constexpr, FROM_RANGE: tl.constexpr, WRITE_PASS: tl.constexpr,
                              BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        in_range = offs < n
        x = tl.load(x_ptr + offs, mask=in_range, other=0.0).to(tl.float32)
        # FROM_RANGE: scale_ptr holds the range (abs-max) of each group and the scale is derived
        # here, which saves the three launches of eager's divide, clamp and reciprocal.
        if PER_GROUP:  # scale per leading index: element i belongs to group i // inner
            group = offs // inner
            scale = tl.load(scale_ptr + group, mask=in_range, other=1.0)
            if not FROM_RANGE:
                inv_scale = tl.load(inv_scale_ptr + group, mask=in_range, other=1.0)
        else:
            scale = tl.load(scale_ptr)
            if not FROM_RANGE:
                inv_scale = tl.load(inv_scale_ptr)
        if FROM_RANGE:
            scale, inv_scale = scale_from_range_rn(scale, fmt_max)
        out, passes = fake_quantize_values(x, scale, inv_scale, lo, hi, step_min_bits, step_max_bits, man_shift)
        store_in_dtype(out_ptr + offs, out, in_range)
        if WRITE_PASS:
            tl.store(pass_ptr + offs, passes.to(tl.uint8), mask=in_range)


def _scale_layout(x: torch.Tensor, scale: torch.Tensor) -> int | None:
    """Elements per scale (`inner`) when `scale` is per tensor or varies over leading dims of
    x only (per output channel, per token); else None."""
    if scale.numel() == 1:
        return x.numel()
    if scale.dim() != x.dim():
        return None
    varying = [d for d in range(x.dim()) if scale.shape[d] != 1]
    if varying != list(range(len(varying))) or any(scale.shape[d] != x.shape[d] for d in varying):
        return None
    return x.numel() // scale.numel()


_enabled = os.environ.get(_ENV_SWITCH, "1") != "0"
_verified: dict[torch.device, bool] = {}


def set_enabled(enabled: bool) -> None:
    """Use the fused kernel where it applies (default), or always the eager path."""
    global _enabled
    _enabled = enabled


def is_available() -> bool:
    # Inside torch.compile the eager path is traced instead: the compiler fuses it itself, and
    # the launch's checks (and the once-per-device verification) are host work it cannot trace.
    return triton is not None and _enabled and not torch.compiler.is_compiling()


def fused_fake_quantize(x: torch.Tensor, fmt: NumberFormat, scale: torch.Tensor, need_mask: bool
                        ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(Q(x / scale) * scale in x's dtype, the uint8 pass mask or None), or None when the fused
    kernel does not apply. `scale` is float32 and positive."""
    return _launch(x, fmt, scale, need_mask, from_range=False)


def fused_fake_quantize_from_range(x: torch.Tensor, fmt: NumberFormat, value_range: torch.Tensor, need_mask: bool
                                   ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """As `fused_fake_quantize` with scale = max(value_range / fmt.max, 2^-126) (quant/scales.py's
    `scale_from_range`) computed inside the kernel: one launch instead of four. `value_range`
    is float32 and >= 0 (abs-max or a clipping range), per tensor or per leading-dim group."""
    return _launch(x, fmt, value_range, need_mask, from_range=True)


def on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """Make `device` the current CUDA device for a launch (Triton launches on the current one):
    a no-op where it already is, and for the CPU (Triton's interpreter)."""
    if device.type != "cuda" or device.index is None or device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def _launch(x: torch.Tensor, fmt: NumberFormat, scale: torch.Tensor, need_mask: bool, from_range: bool
            ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    # Every layer's quantizer runs this each step, and on a GPU the step's pace is the host's:
    # each check is as cheap as it can be (a per-tensor scale skips the layout check).
    numel = x.numel()
    # int32 offsets: the last block's pid * BLOCK + BLOCK must stay below 2^31
    if not is_available() or numel == 0 or numel > 2**31 - _BLOCK or not x.is_contiguous():
        return None
    params = kernel_params(fmt)
    if params is None:
        return None
    per_group = scale.numel() > 1
    inner = _scale_layout(x, scale) if per_group else numel
    if inner is None:
        return None
    scale = scale.contiguous()
    # Given a scale: the eager path's reciprocal, so y is the same (a scale below 2^-126 is
    # allowed there, and its reciprocal may be inf). From a range the kernel derives both.
    inv_scale = scale if from_range else torch.reciprocal(scale)
    out = torch.empty_like(x)
    # Without a mask the kernel never touches pass_ptr; `out` stands in for it.
    mask = torch.empty(x.shape, dtype=torch.uint8, device=x.device) if need_mask else out
    grid = (triton.cdiv(numel, _BLOCK),)
    with on_device(x.device):
        _fake_quantize_kernel[grid](
            x, scale, inv_scale, out, mask, numel, inner, params.fmt_max,
            params.lo, params.hi, params.step_min_bits, params.step_max_bits, params.man_shift,
            PER_GROUP=per_group, FROM_RANGE=from_range, WRITE_PASS=need_mask, BLOCK=_BLOCK,
            enable_fp_fusion=False,
        )
    return out, (mask if need_mask else None)


EagerForward = Callable[[torch.Tensor, NumberFormat, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
ScaleFromRange = Callable[[torch.Tensor, NumberFormat], torch.Tensor]


def verified_on(device: torch.device, eager: EagerForward, scale_from_range: ScaleFromRange) -> bool:
    """Whether the fused kernel matches `eager(x, fmt, scale)` on a probe of every INT8 and
    FP8 E4M3 code (plus ties, saturation, NaN and -0) on `device`, given a scale and given a
    range (whose scale `scale_from_range` computes): checked once per device, so an unusual GPU
    or Triton build falls back to the eager path with a warning instead of silently computing
    different numbers."""
    def matches() -> bool:
        ok = True
        probe = torch.linspace(-300.0, 300.0, 4097, device=device)
        probe = torch.cat([probe, torch.tensor([0.5, 1.5, 2.5, -0.0, -0.3, float("nan"), 1e30], device=device)])
        finite = ~probe.isnan()
        # The probe's own range (an odd scale), and 0 and a subnormal (both clamp to 2^-126);
        # then one range per row of the probe.
        ranges = torch.tensor([[300.0], [0.0], [1e-40]], device=device)
        rows = probe[:4096].view(64, 64)
        row_ranges = torch.linspace(0.0, 600.0, 64, device=device).view(64, 1)
        given_scale = torch.tensor([0.37], device=device)
        for token in ("int8", "int4", "fp8_e4m3", "fp4_e2m1"):
            fmt = parse_format(token)
            cases = [(fused_fake_quantize(probe, fmt, given_scale, need_mask=True), given_scale)]
            cases += [(fused_fake_quantize_from_range(probe, fmt, r, need_mask=True), scale_from_range(r, fmt))
                      for r in ranges]
            for fused, scale in cases:
                if fused is None:
                    continue
                want_out, want_mask = eager(probe, fmt, scale)
                ok &= torch.equal(fused[0].view(torch.int32)[finite], want_out.view(torch.int32)[finite])
                ok &= torch.equal(fused[1], want_mask)
            per_row = fused_fake_quantize_from_range(rows, fmt, row_ranges, need_mask=True)
            if per_row is not None:
                want_out, want_mask = eager(rows, fmt, scale_from_range(row_ranges, fmt))
                ok &= torch.equal(per_row[0].view(torch.int32), want_out.view(torch.int32))
                ok &= torch.equal(per_row[1], want_mask)
        return ok

    return verify_once(_verified, device, matches, "fused fake-quantization kernel", "eager path", _ENV_SWITCH)


def verify_once(cache: dict[torch.device, bool], device: torch.device, matches: Callable[[], bool], what: str,
                fallback: str, env_switch: str) -> bool:
    """`matches()` on `device` once, remembered in `cache`: whether `what` computes what
    `fallback` does there. An exception or a mismatch gives a warning and False, so that an unusual GPU or
    Triton build falls back instead of silently computing different numbers."""
    known = cache.get(device)
    if known is not None:
        return known
    try:
        ok = bool(matches())
    except Exception as error:  # a Triton/driver problem: the fallback still works
        warnings.warn(f"{what} unavailable on {device} ({error}); using the {fallback}")
        ok = False
    else:
        if not ok:
            warnings.warn(f"{what} disagrees with the {fallback} on {device}; using the {fallback} "
                          f"(set {env_switch}=0 to skip this check)")
    cache[device] = ok
    return ok
