"""Integer codes and storage of quantized values: the real low-bit form of every format.

The values packed here are grid values Q(w / scale) (not multiplied by the scale). Storage:

    none               float32, as is
    bf16, fp16         that torch dtype
    int8               torch.int8;  int9..int16: torch.int16 (two's complement)
    int2..int7         two's complement codes bit-packed densely (int4: 2 per byte, int2: 4)
    fp8_e4m3, fp8_e5m2 torch.float8_e4m3fn / torch.float8_e5m2
    other FP (fp6, fp4, e3m4, eXmY)
                       sign|exponent|mantissa codes bit-packed densely (fp6: 4 in 3 bytes, fp4: 2 per byte)

Bit packing is little-endian: element i holds bits [i*b, (i+1)*b) of the stream and byte j
holds stream bits [8j, 8j+8), least significant first (ONNX's INT4 nibble order). Every pack
checks that its input is exactly on the grid, so unpack(pack(v)) == v bit for bit (signed zeros
included; INT grids have a single zero, so there -0.0 comes back as 0.0) and nothing off the
grid is ever silently rounded. `grid_values_and_scale` gives a quantized layer's weight in this
form (grid values and scale), exactly as the layer's forward quantizes it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from quant.formats import CastFormat, FloatFormat, IntFormat, NoQuantFormat, NumberFormat, SpecialCodes, parse_format
from quant.quant_module import QuantModule
from quant.rounding import quantize_scaled
from quant.scales import compute_scale

_FP32_MANTISSA_BITS = 23
_FP32_EXP_BIAS = 127
_BITS_PER_BYTE = 8
# FP formats whose torch dtype has exactly the format's values (OCP E4M3FN, IEEE E5M2).
_TORCH_FLOAT8: dict[tuple[int, int, SpecialCodes], torch.dtype] = {
    (4, 3, SpecialCodes.FN): torch.float8_e4m3fn,
    (5, 2, SpecialCodes.IEEE): torch.float8_e5m2,
}


def _pow2(exponent: torch.Tensor) -> torch.Tensor:
    """2**exponent (int32 tensor) as exact float32, built from the bit pattern."""
    return ((exponent + _FP32_EXP_BIAS) << _FP32_MANTISSA_BITS).view(torch.float32)


def torch_float8_dtype(fmt: NumberFormat) -> torch.dtype | None:
    """The torch float8 dtype holding exactly `fmt`'s values, or None."""
    if not isinstance(fmt, FloatFormat):
        return None
    return _TORCH_FLOAT8.get((fmt.exp_bits, fmt.man_bits, fmt.special))


def is_bit_packed(fmt: NumberFormat) -> bool:
    """True where codes are bit-packed into uint8 (INT below 8 bits, FP without a torch dtype)."""
    if isinstance(fmt, IntFormat):
        return fmt.num_bits < _BITS_PER_BYTE
    return isinstance(fmt, FloatFormat) and torch_float8_dtype(fmt) is None


def storage_dtype(fmt: NumberFormat) -> torch.dtype:
    """The dtype of the stored tensor for `fmt`."""
    if isinstance(fmt, NoQuantFormat):
        return torch.float32
    if isinstance(fmt, CastFormat):
        return fmt.torch_dtype
    if is_bit_packed(fmt):
        return torch.uint8
    if isinstance(fmt, IntFormat):
        return torch.int8 if fmt.num_bits == _BITS_PER_BYTE else torch.int16
    if isinstance(fmt, FloatFormat):
        return torch_float8_dtype(fmt)  # type: ignore[return-value]
    raise TypeError(f"no storage rule for format {fmt!r}")


def packed_nbytes(numel: int, fmt: NumberFormat) -> int:
    """Bytes of the stored tensor for `numel` values of `fmt`."""
    if is_bit_packed(fmt):
        return math.ceil(numel * fmt.bits / _BITS_PER_BYTE)
    return numel * storage_dtype(fmt).itemsize


# --- codes ----------------------------------------------------------------------------------

def valid_codes(fmt: IntFormat | FloatFormat) -> torch.Tensor:
    """Every code of `fmt` that is a finite value, ascending, as int32 (INT: the signed values;
    FP: sign|exponent|mantissa bit patterns, NaN/inf patterns left out)."""
    if isinstance(fmt, IntFormat):
        return torch.arange(fmt.qmin, fmt.qmax + 1, dtype=torch.int32)
    if not isinstance(fmt, FloatFormat):
        raise TypeError(f"{fmt!r} has no integer codes")
    codes = torch.arange(2**fmt.bits, dtype=torch.int32)
    return codes[_finite_code_mask(codes, fmt)]


def _finite_code_mask(codes: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    exponent = (codes >> fmt.man_bits) & (2**fmt.exp_bits - 1)
    mantissa = codes & (2**fmt.man_bits - 1)
    top = 2**fmt.exp_bits - 1
    if fmt.special is SpecialCodes.IEEE:
        return exponent != top
    if fmt.special is SpecialCodes.FN:
        return ~((exponent == top) & (mantissa == 2**fmt.man_bits - 1))
    return torch.ones_like(codes, dtype=torch.bool)


def decode_float(codes: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """float32 values of sign|exponent|mantissa codes (finite codes only)."""
    codes = codes.to(torch.int32)
    sign = (codes >> (fmt.exp_bits + fmt.man_bits)) & 1
    exponent = (codes >> fmt.man_bits) & (2**fmt.exp_bits - 1)
    mantissa = codes & (2**fmt.man_bits - 1)
    normal = exponent > 0
    significand = (mantissa + torch.where(normal, 2**fmt.man_bits, 0)).to(torch.float32)
    step_exponent = torch.where(normal, exponent - fmt.bias, fmt.emin) - fmt.man_bits
    magnitude = significand * _pow2(step_exponent)  # exact: an integer times a power of two
    return torch.where(sign == 1, -magnitude, magnitude)


def encode_float(values: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """sign|exponent|mantissa codes (int32) of float32 values that lie on `fmt`'s grid. Values
    off the grid give codes that do not decode back to them: callers check (see `encode`)."""
    bits32 = values.to(torch.float32).contiguous().view(torch.int32)
    sign = (bits32 >> 31) & 1  # keeps the sign of zero
    magnitude = values.to(torch.float32).abs()
    exponent32 = ((magnitude.view(torch.int32) >> _FP32_MANTISSA_BITS) & 0xFF) - _FP32_EXP_BIAS
    normal = exponent32 >= fmt.emin
    exponent = exponent32.clamp(min=fmt.emin)
    significand = magnitude * _pow2(fmt.man_bits - exponent)  # an integer for on-grid values
    significand = significand.clamp(0, 2 ** (fmt.man_bits + 1) - 1).to(torch.int32)
    biased = torch.where(normal, exponent + fmt.bias, 0).clamp(0, 2**fmt.exp_bits - 1)
    mantissa = significand - torch.where(normal, 2**fmt.man_bits, 0)
    mantissa = mantissa.clamp(0, 2**fmt.man_bits - 1)
    return (sign << (fmt.exp_bits + fmt.man_bits)) | (biased << fmt.man_bits) | mantissa


def _check_on_grid(values: torch.Tensor, decoded: torch.Tensor, fmt: NumberFormat) -> None:
    """Check that `decoded` reproduces `values` bit for bit; INT grids have one zero, so there
    -0.0 (what rounding -0.3 gives) is accepted as the code 0. NaN and +-inf are never grid
    values (every format saturates): a NaN can decode to the same bit pattern (a format's NaN
    code, or a clamped code read back as NaN), and the float8/bf16/fp16 casts store inf."""
    decoded = decoded.to(torch.float32).contiguous()
    if isinstance(fmt, IntFormat):
        same = decoded == values
    else:
        same = decoded.view(torch.int32) == values.view(torch.int32)
    same &= torch.isfinite(values)
    if not bool(same.all()):
        index = int((~same).flatten().nonzero()[0])
        raise ValueError(
            f"value {values.flatten()[index].item()!r} (flat index {index}) is not on the grid of {fmt.name}; "
            f"pack grid values Q(w / scale), e.g. from quant.rounding.quantize_scaled(w / scale, fmt)")


def encode(values: torch.Tensor, fmt: IntFormat | FloatFormat | str | int) -> torch.Tensor:
    """int32 codes of on-grid float values (INT: the signed integers; FP: bit patterns).
    ValueError if any value is off the grid (or NaN/inf)."""
    values, fmt = _as_float32(values), parse_format(fmt)
    if isinstance(fmt, IntFormat):
        codes = values.clamp(fmt.qmin, fmt.qmax).nan_to_num(0.0).to(torch.int32)
        _check_on_grid(values, codes.to(torch.float32), fmt)
        return codes
    if isinstance(fmt, FloatFormat):
        codes = encode_float(values, fmt)
        decoded = torch.where(_finite_code_mask(codes, fmt), decode_float(codes, fmt), torch.nan)
        _check_on_grid(values, decoded, fmt)
        return codes
    raise TypeError(f"{fmt!r} has no integer codes; valid: IntFormat or FloatFormat")


def decode(codes: torch.Tensor, fmt: IntFormat | FloatFormat | str | int) -> torch.Tensor:
    """float32 values of int codes (the inverse of `encode`)."""
    fmt = parse_format(fmt)
    if isinstance(fmt, IntFormat):
        return codes.to(torch.float32)
    if isinstance(fmt, FloatFormat):
        return decode_float(codes, fmt)
    raise TypeError(f"{fmt!r} has no integer codes; valid: IntFormat or FloatFormat")


# --- dense bit packing ----------------------------------------------------------------------

def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative codes < 2**bits (any shape, read flat) into a dense uint8 stream."""
    if not 1 <= bits <= _BITS_PER_BYTE:
        raise ValueError(f"pack_bits packs 1..8 bits per value, got bits={bits}")
    flat = codes.flatten().to(torch.int32)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2**bits):
        raise ValueError(f"codes must lie in [0, {2**bits - 1}] to pack {bits} bits each")
    shifts = torch.arange(bits, dtype=torch.int32)
    stream = ((flat.unsqueeze(1) >> shifts) & 1).to(torch.uint8).flatten()
    stream = torch.nn.functional.pad(stream, (0, -stream.numel() % _BITS_PER_BYTE))
    weights = (1 << torch.arange(_BITS_PER_BYTE, dtype=torch.int32))
    return (stream.view(-1, _BITS_PER_BYTE).to(torch.int32) * weights).sum(dim=1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The first `count` codes (int32, flat) of a stream written by `pack_bits`."""
    if not 1 <= bits <= _BITS_PER_BYTE:
        raise ValueError(f"unpack_bits reads 1..8 bits per value, got bits={bits}")
    needed = math.ceil(count * bits / _BITS_PER_BYTE)
    if packed.dtype != torch.uint8 or packed.numel() != needed:
        raise ValueError(f"{count} codes of {bits} bits need {needed} uint8 bytes, got {packed.numel()} "
                         f"of dtype {packed.dtype}")
    shifts = torch.arange(_BITS_PER_BYTE, dtype=torch.int32)
    stream = ((packed.flatten().to(torch.int32).unsqueeze(1) >> shifts) & 1).flatten()[: count * bits]
    weights = (1 << torch.arange(bits, dtype=torch.int32))
    return (stream.view(count, bits) * weights).sum(dim=1, dtype=torch.int32)


# --- values <-> stored tensor ---------------------------------------------------------------

@dataclass(frozen=True)
class PackedTensor:
    """Grid values of `fmt` in their stored form; `shape` is the logical shape."""

    data: torch.Tensor
    shape: tuple[int, ...]
    fmt: NumberFormat

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()


def _as_float32(values: torch.Tensor) -> torch.Tensor:
    if not torch.is_floating_point(values):
        raise ValueError(f"pack needs floating-point grid values, got dtype {values.dtype}")
    return values.detach().to(torch.float32).contiguous()


def pack(values: torch.Tensor, fmt: NumberFormat | str | int) -> PackedTensor:
    """Store on-grid values of `fmt` (a format or token; float tensor, any shape) in their low-bit form."""
    values, fmt = _as_float32(values), parse_format(fmt)
    shape = tuple(values.shape)
    if isinstance(fmt, NoQuantFormat):
        return PackedTensor(values.clone(), shape, fmt)
    if isinstance(fmt, CastFormat):
        data = values.to(fmt.torch_dtype)
        _check_on_grid(values, data, fmt)
        return PackedTensor(data, shape, fmt)
    float8 = torch_float8_dtype(fmt)
    if float8 is not None:
        data = values.to(float8)  # exact for on-grid values; checked bit for bit below
        _check_on_grid(values, data, fmt)
        return PackedTensor(data, shape, fmt)
    codes = encode(values, fmt)  # type: ignore[arg-type]
    if not is_bit_packed(fmt):
        return PackedTensor(codes.to(storage_dtype(fmt)), shape, fmt)
    unsigned = codes & (2**fmt.bits - 1)  # two's complement for INT, the bit pattern for FP
    return PackedTensor(pack_bits(unsigned, fmt.bits), shape, fmt)


def unpack(packed: PackedTensor) -> torch.Tensor:
    """float32 grid values (logical shape) of a PackedTensor: the inverse of `pack`."""
    fmt, shape, data = packed.fmt, packed.shape, packed.data
    if data.dtype != storage_dtype(fmt):
        raise ValueError(f"{fmt.name} is stored as {storage_dtype(fmt)}, got a {data.dtype} tensor")
    stored = packed_nbytes(math.prod(shape), fmt) // data.element_size()
    if data.numel() != stored:
        raise ValueError(f"{math.prod(shape)} {fmt.name} values (shape {tuple(shape)}) are stored in {stored} "
                         f"{data.dtype} elements, got {data.numel()}: the data and the shape do not belong together")
    if not is_bit_packed(fmt):
        return data.to(torch.float32).reshape(shape)
    unsigned = unpack_bits(data, fmt.bits, math.prod(shape))
    if isinstance(fmt, IntFormat):  # back from two's complement
        unsigned = torch.where(unsigned >= 2 ** (fmt.bits - 1), unsigned - 2**fmt.bits, unsigned)
    return decode(unsigned, fmt).reshape(shape)  # type: ignore[arg-type]


# --- a quantized layer's weight ------------------------------------------------------------

def grid_values_and_scale(layer: QuantModule) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(Q(w / scale), scale) of a quantized layer's weight, computed exactly as its forward does;
    scale is None for formats without one (none, bf16, fp16). Checked against quantized_weight()."""
    fmt, weight = layer.weight_format, layer.weight.detach()
    if not bool(torch.isfinite(weight).all()):
        bad = int((~torch.isfinite(weight)).sum())
        raise ValueError(f"the weight has {bad} NaN/inf values (a diverged training run?); it has no low-bit form")
    if not fmt.quantizes:
        return weight.to(torch.float32), None
    if layer.weight_prequantized:
        scale = getattr(layer, "weight_scale", None)
        if scale is None and not isinstance(fmt, CastFormat):
            raise ValueError("layer weights are prequantized but the layer has no weight_scale buffer (it was not "
                             "loaded by load_quantized_checkpoint); export the model before loading low-bit weights")
    else:
        scale = compute_scale(weight, fmt, layer.weight_granularity, dim=layer.weight_channel_dim,
                              range_percentile=layer.weight_range_percentile)
    scale32 = torch.ones((), dtype=torch.float32) if scale is None else scale.to(torch.float32)
    values, _ = quantize_scaled(weight.to(torch.float32) * torch.reciprocal(scale32), fmt)
    if not torch.equal((values * scale32).to(weight.dtype), layer.quantized_weight().detach()):
        raise RuntimeError(f"re-deriving the {fmt.name} codes did not reproduce the layer's quantized weight (its "
                           f"forward uses other values than {fmt.name} codes times its scale); nothing was written")
    return values, (None if isinstance(fmt, CastFormat) else scale32)
