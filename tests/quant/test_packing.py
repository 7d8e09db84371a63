"""Codes and bit packing: every code of every format round-trips bit for bit."""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
import torch

from quant.formats import FloatFormat, IntFormat, parse_format
from quant.packing import (
    PackedTensor,
    decode,
    encode,
    is_bit_packed,
    pack,
    pack_bits,
    packed_nbytes,
    storage_dtype,
    unpack,
    unpack_bits,
    valid_codes,
)
from quant.rounding import round_to_float_format

INT_TOKENS = [f"int{b}" for b in range(2, 17)]
FP_TOKENS = ["fp8_e4m3", "fp8_e5m2", "fp8_e3m4", "fp6_e2m3", "fp6_e3m2", "fp4", "e2m5", "e1m6", "e1m0", "e5m0",
             "e4m2", "e3m3", "e2m2", "e1m1"]
ML_DTYPES = {"fp8_e4m3": ml_dtypes.float8_e4m3fn, "fp8_e5m2": ml_dtypes.float8_e5m2, "fp8_e3m4": ml_dtypes.float8_e3m4,
             "fp6_e2m3": ml_dtypes.float6_e2m3fn, "fp6_e3m2": ml_dtypes.float6_e3m2fn, "fp4": ml_dtypes.float4_e2m1fn}
STORAGE = {"int2": torch.uint8, "int7": torch.uint8, "int8": torch.int8, "int9": torch.int16, "int16": torch.int16,
           "fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2, "fp8_e3m4": torch.uint8,
           "fp6_e2m3": torch.uint8, "fp4": torch.uint8, "e2m5": torch.uint8, "bf16": torch.bfloat16,
           "fp16": torch.float16, "none": torch.float32}


def bits_of(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


@pytest.mark.parametrize("token", INT_TOKENS + FP_TOKENS)
def test_every_code_round_trips_bit_exactly(token):
    fmt = parse_format(token)
    codes = valid_codes(fmt)
    values = decode(codes, fmt)
    assert torch.equal(encode(values, fmt), codes)
    packed = pack(values, fmt)
    assert packed.data.dtype == storage_dtype(fmt)
    assert packed.nbytes == packed_nbytes(codes.numel(), fmt) == (
        math.ceil(codes.numel() * fmt.bits / 8) if is_bit_packed(fmt) else codes.numel() * storage_dtype(fmt).itemsize)
    assert torch.equal(bits_of(unpack(packed)), bits_of(values))


@pytest.mark.parametrize("token", INT_TOKENS)
def test_int_codes_are_the_whole_signed_grid(token):
    fmt = parse_format(token)
    assert torch.equal(valid_codes(fmt), torch.arange(-(2 ** (fmt.bits - 1)), 2 ** (fmt.bits - 1), dtype=torch.int32))


@pytest.mark.parametrize("token", list(ML_DTYPES))
def test_named_fp_codes_match_ml_dtypes(token):
    fmt = parse_format(token)
    all_codes = np.arange(2**fmt.bits, dtype=np.uint8)
    reference = all_codes.view(ML_DTYPES[token]).astype(np.float32)
    finite = np.isfinite(reference)
    assert torch.equal(valid_codes(fmt), torch.from_numpy(all_codes[finite].astype(np.int32)))
    assert np.array_equal(decode(valid_codes(fmt), fmt).numpy().view(np.int32), reference[finite].view(np.int32))


@pytest.mark.parametrize("token", FP_TOKENS)
def test_fp_codes_span_the_format_and_are_its_rounding_grid(token):
    fmt = parse_format(token)
    values = decode(valid_codes(fmt), fmt)
    positive = values[values > 0]
    assert positive.max().item() == fmt.max and positive.min().item() == fmt.min_positive
    assert positive.unique().numel() == positive.numel()  # no two codes share a value
    assert torch.equal(bits_of(round_to_float_format(values, fmt)), bits_of(values))
    assert (values == 0).sum().item() == 2  # +0 and -0


def test_generic_e1m0_by_hand():
    fmt = parse_format("e1m0")  # bias 0: codes 00 -> 0, 01 -> 2, 10 -> -0, 11 -> -2
    assert decode(valid_codes(fmt), fmt).tolist() == [0.0, 2.0, -0.0, -2.0]


def test_pack_bits_by_hand():
    assert pack_bits(torch.tensor([1, 2, 3]), 4).tolist() == [0x21, 0x03]
    assert pack(torch.tensor([-1.0, 2.0]), parse_format("int4")).data.tolist() == [0x2F]  # -1 -> 0b1111, low nibble
    assert pack(torch.tensor([1.0, -2.0, 0.0, -1.0]), parse_format("int2")).data.tolist() == [0b11001001]
    # FP6: 4 values in 3 bytes, 1 | 2 << 6 | 3 << 12 | 63 << 18 = 0xFC3081
    assert pack_bits(torch.tensor([1, 2, 3, 63]), 6).tolist() == [0x81, 0x30, 0xFC]
    assert unpack_bits(torch.tensor([0x81, 0x30, 0xFC], dtype=torch.uint8), 6, 4).tolist() == [1, 2, 3, 63]
    fp4 = parse_format("fp4")  # 1.5 = 0|01|1 = 3, -6 = 1|11|1 = 15
    assert pack(torch.tensor([1.5, -6.0]), fp4).data.tolist() == [0xF3]


BIT_PACKED = ["int2", "int3", "int4", "int5", "int7", "fp6_e2m3", "fp6_e3m2", "fp4", "e2m2", "e1m0"]


@pytest.mark.parametrize("token", BIT_PACKED)
@pytest.mark.parametrize("shape", [(1,), (3,), (5,), (7,), (3, 5), (2, 3, 3)])
def test_odd_element_counts_round_trip(token, shape):
    fmt = parse_format(token)
    grid = decode(valid_codes(fmt), fmt)
    generator = torch.Generator().manual_seed(math.prod(shape))
    values = grid[torch.randint(0, grid.numel(), shape, generator=generator)]
    packed = pack(values, fmt)
    assert packed.data.numel() == math.ceil(values.numel() * fmt.bits / 8)
    assert packed.shape == shape
    restored = unpack(packed)
    assert restored.shape == shape
    assert torch.equal(bits_of(restored), bits_of(values)) or isinstance(fmt, IntFormat)
    assert torch.equal(restored, values)


def test_signed_zero_kept_for_fp_and_folded_for_int():
    values = torch.tensor([-0.0, 0.0])
    assert bits_of(unpack(pack(values, parse_format("fp4")))).tolist() == bits_of(values).tolist()
    assert bits_of(unpack(pack(values, parse_format("fp8_e4m3")))).tolist() == bits_of(values).tolist()
    assert bits_of(unpack(pack(values, parse_format("int4")))).tolist() == [0, 0]  # one zero on an INT grid


@pytest.mark.parametrize("token", ["bf16", "fp16", "none"])
def test_cast_and_float_storage_round_trip(token):
    fmt = parse_format(token)
    values = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    if token != "none":
        values = values.to(fmt.torch_dtype).to(torch.float32)
    packed = pack(values, fmt)
    assert packed.data.dtype == STORAGE[token] and packed.nbytes == values.numel() * fmt.bits // 8
    assert torch.equal(bits_of(unpack(packed)), bits_of(values))


@pytest.mark.parametrize("token", list(STORAGE))
def test_storage_dtypes(token):
    assert storage_dtype(parse_format(token)) == STORAGE[token]


@pytest.mark.parametrize("token, dtype", [("fp8_e4m3", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)])
def test_torch_float8_casts_agree_with_the_format_rounding(token, dtype):
    fmt = parse_format(token)
    grid = decode(valid_codes(fmt), fmt)
    positive = grid[grid > 0].sort().values
    ties = (positive[:-1] + positive[1:]) / 2  # exact midpoints: both must round half to even
    generator = torch.Generator().manual_seed(0)
    random = (torch.rand(4096, generator=generator) * 2 - 1) * fmt.max
    tiny = torch.randn(1024, generator=generator) * fmt.min_positive * 4  # subnormal range
    y = torch.cat([ties, -ties, random, tiny, grid])
    assert torch.equal(bits_of(round_to_float_format(y, fmt)), bits_of(y.to(dtype).to(torch.float32)))


@pytest.mark.parametrize("token, value", [("int4", 0.5), ("int4", 8.0), ("fp8_e4m3", 0.3), ("fp4", 5.0),
                                          ("fp6_e2m3", float("nan")), ("e3m4", float("inf")), ("bf16", 1.0 + 2**-10),
                                          ("int12", 2048.0),
                                          # NaN and inf: decoded to the same pattern, or stored by a cast
                                          ("fp8_e3m4", float("nan")), ("fp8_e5m2", float("nan")),
                                          ("fp8_e5m2", float("inf")), ("fp8_e4m3", float("nan")),
                                          ("bf16", float("inf")), ("fp16", float("-inf")), ("fp16", float("nan")),
                                          ("int8", float("nan")), ("e2m5", float("-inf"))])
def test_off_grid_values_are_rejected(token, value):
    fmt = parse_format(token)
    with pytest.raises(ValueError, match=rf"value .* \(flat index 1\) is not on the grid of {fmt.name}; pack grid"):
        pack(torch.tensor([0.0, value]), fmt)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="pack needs floating-point grid values, got dtype torch.int64"):
        pack(torch.tensor([1, 2]), parse_format("int4"))
    with pytest.raises(ValueError, match=r"pack_bits packs 1..8 bits per value, got bits=9"):
        pack_bits(torch.tensor([1]), 9)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 15\] to pack 4 bits each"):
        pack_bits(torch.tensor([16]), 4)
    with pytest.raises(ValueError, match="5 codes of 4 bits need 3 uint8 bytes, got 2 of dtype torch.uint8"):
        unpack_bits(torch.zeros(2, dtype=torch.uint8), 4, 5)
    with pytest.raises(ValueError, match="int8 is stored as torch.int8, got a torch.uint8 tensor"):
        unpack(PackedTensor(torch.zeros(2, dtype=torch.uint8), (2,), parse_format("int8")))
    with pytest.raises(TypeError, match="has no integer codes"):
        encode(torch.zeros(1), parse_format("bf16"))
    with pytest.raises(ValueError, match=r"^4 int8 values \(shape \(2, 2\)\) are stored in 4 torch.int8 elements, "
                                         r"got 3: the data and the shape do not belong together$"):
        unpack(PackedTensor(torch.zeros(3, dtype=torch.int8), (2, 2), parse_format("int8")))
    with pytest.raises(ValueError, match=r"^6 fp8_e4m3 values \(shape \(2, 3\)\) are stored in 6 "
                                         r"torch.float8_e4m3fn elements, got 8"):
        unpack(PackedTensor(torch.zeros(8, dtype=torch.float8_e4m3fn), (2, 3), parse_format("fp8_e4m3")))
    with pytest.raises(ValueError, match=r"^5 int4 values \(shape \(5,\)\) are stored in 3 torch.uint8 elements, got 2"):
        unpack(PackedTensor(torch.zeros(2, dtype=torch.uint8), (5,), parse_format("int4")))


@pytest.mark.parametrize("token", ["int4", "int8", "fp4", "fp8_e4m3", "e2m5", "bf16", "none"])
def test_pack_encode_and_decode_take_format_tokens(token):
    """As the rest of the API does ('int4' was 'has no integer codes')."""
    fmt = parse_format(token)
    values = torch.tensor([0.0, 1.0, -1.0, 2.0])
    by_token, by_format = pack(values, token), pack(values, fmt)
    assert by_token.fmt == fmt and torch.equal(by_token.data, by_format.data) and by_token.shape == by_format.shape
    if isinstance(fmt, (IntFormat, FloatFormat)):
        codes = encode(values, token)
        assert torch.equal(codes, encode(values, fmt))
        assert torch.equal(decode(codes, token), decode(codes, fmt))


def test_float_format_codes_include_nan_patterns_only_where_the_format_has_them():
    assert valid_codes(parse_format("fp8_e4m3")).numel() == 256 - 2  # S.1111.111 are NaN
    assert valid_codes(parse_format("fp8_e5m2")).numel() == 256 - 8  # exponent 11111: inf and NaN
    assert valid_codes(FloatFormat(2, 3)).numel() == 64  # every FP6 code is finite
