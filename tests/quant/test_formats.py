import math
import re

import ml_dtypes
import numpy as np
import pytest
import torch

from quant.formats import (
    NO_QUANT,
    CastFormat,
    FloatFormat,
    IntFormat,
    SpecialCodes,
    parse_format,
    parse_format_list,
    rounding_bounds,
)

# token -> (canonical name, bits, max, is_float)
NAMED = {
    "fp8_e4m3": ("fp8_e4m3", 8, 448.0, True),
    "E4M3": ("fp8_e4m3", 8, 448.0, True),
    "fp8_e5m2": ("fp8_e5m2", 8, 57344.0, True),
    "e5m2": ("fp8_e5m2", 8, 57344.0, True),
    "fp8_e3m4": ("fp8_e3m4", 8, 15.5, True),
    "e3m4": ("fp8_e3m4", 8, 15.5, True),
    "fp6_e2m3": ("fp6_e2m3", 6, 7.5, True),
    "fp6_e3m2": ("fp6_e3m2", 6, 28.0, True),
    "fp4_e2m1": ("fp4_e2m1", 4, 6.0, True),
    "FP4": ("fp4_e2m1", 4, 6.0, True),
    "int8": ("int8", 8, 127.0, False),
    "8": ("int8", 8, 127.0, False),
    "4": ("int4", 4, 7.0, False),
    " Int2 ": ("int2", 2, 1.0, False),
    "16": ("int16", 16, 32767.0, False),
    "bf16": ("bf16", 16, 3.3895313892515355e38, True),
    "fp16": ("fp16", 16, 65504.0, True),
    "none": ("none", 32, 3.4028234663852886e38, True),
    "0": ("none", 32, 3.4028234663852886e38, True),
    "FP32": ("none", 32, 3.4028234663852886e38, True),
}


@pytest.mark.parametrize("token", sorted(NAMED))
def test_a_format_takes_a_scale_where_the_scale_is_not_one(token):
    """takes_scale (read by the run flags' notes and comparison, eval/run_compare.py) is what the
    scale computation does: a range mapped onto fmt.max, or ones for none and the casts."""
    import torch

    from quant.scales import compute_scale

    fmt = parse_format(token)
    x = torch.tensor([[1234.5678, -3.0], [0.5, 7.25]])
    for granularity in ("per_tensor", "per_channel"):
        scale = compute_scale(x, fmt, granularity)
        assert fmt.takes_scale == (not torch.equal(scale, torch.ones_like(scale))), (token, granularity)
    assert fmt.takes_scale == (NAMED[token][0] not in ("none", "bf16", "fp16"))


@pytest.mark.parametrize("token", sorted(NAMED))
def test_named_tokens(token):
    fmt = parse_format(token)
    name, bits, fmax, is_float = NAMED[token]
    assert (fmt.name, fmt.bits, fmt.max, fmt.is_float) == (name, bits, fmax, is_float)
    assert parse_format(fmt.name) == fmt  # the canonical name parses back to the same format


def test_plain_ints_and_int_tokens_agree():
    assert parse_format(4) == parse_format("4") == parse_format("int4") == IntFormat(4)
    assert parse_format(0) is NO_QUANT
    assert not NO_QUANT.quantizes and parse_format("int4").quantizes
    assert (IntFormat(3).qmin, IntFormat(3).qmax) == (-4, 3)


def test_generic_float_parameters_derive_from_bits():
    e2m5 = parse_format("e2m5")
    assert isinstance(e2m5, FloatFormat) and e2m5.special is SpecialCodes.FINITE
    assert (e2m5.bits, e2m5.bias, e2m5.emin, e2m5.emax) == (8, 1, 0, 2)
    assert e2m5.max == (2 - 2**-5) * 4 and e2m5.min_positive == 2**-5
    # Generic tokens that coincide with the OCP FP6/FP4 definitions are the same format.
    assert parse_format("e2m3") == parse_format("fp6_e2m3")
    assert parse_format("e2m1") == parse_format("fp4")
    # e1m0: values {0, 2}; e5m2 generic is the named IEEE-style E5M2 (alias wins).
    e1m0 = parse_format("e1m0")
    assert (e1m0.bits, e1m0.max, e1m0.min_positive) == (2, 2.0, 2.0)
    assert parse_format("e5m2").special is SpecialCodes.IEEE


def test_named_formats_special_codes():
    e4m3 = parse_format("fp8_e4m3")
    assert (e4m3.bias, e4m3.emin, e4m3.emax, e4m3.min_positive) == (7, -6, 8, 2**-9)
    e5m2 = parse_format("fp8_e5m2")
    assert (e5m2.bias, e5m2.emin, e5m2.emax, e5m2.min_positive) == (15, -14, 15, 2**-16)
    assert isinstance(parse_format("bf16"), CastFormat)


@pytest.mark.parametrize(
    "token, match",
    [
        ("int1", r"'int1'.*2 <= bits <= 16"),
        ("1", r"'1'.*2 <= bits <= 16"),
        ("17", r"'17'.*2 <= bits <= 16"),
        ("int17", r"'int17'.*2 <= bits <= 16"),
        ("e5m3", r"'e5m3'.*X\+Y<=7"),
        ("e6m1", r"'e6m1'.*1<=X<=5"),
        ("e0m3", r"'e0m3'.*1<=X<=5"),
        ("e2m8", r"'e2m8'.*0<=Y<=7"),
        ("fp8", r"unknown format 'fp8'.*valid forms"),
        ("", r"unknown format ''"),
        ("int4.5", r"unknown format 'int4.5'"),
        ("uint8", r"unknown format 'uint8'"),
    ],
)
def test_bad_tokens_name_the_value_and_valid_forms(token, match):
    with pytest.raises(ValueError, match=match) as info:
        parse_format(token)
    assert "valid forms" in str(info.value)


def test_bad_token_types():
    with pytest.raises(ValueError, match="string or int, got 4.0"):
        parse_format(4.0)
    with pytest.raises(ValueError, match="string or int, got True"):
        parse_format(True)
    with pytest.raises(ValueError, match="2 <= bits <= 16, got 1"):
        IntFormat(1)


def test_format_lists():
    assert parse_format_list("4,8") == (IntFormat(4), IntFormat(8))
    mixed = parse_format_list("int4, fp8_e4m3,fp4")
    assert [f.name for f in mixed] == ["int4", "fp8_e4m3", "fp4_e2m1"]
    with pytest.raises(ValueError, match=r"empty search space ''"):
        parse_format_list("")
    with pytest.raises(ValueError, match=r"search space '4,,8' has an empty entry \(entry 2\): give comma-separated formats without empty ones"):
        parse_format_list("4,,8")
    with pytest.raises(ValueError, match=r"duplicate format 'int8' \(int8\)"):
        parse_format_list("8,int8")
    for bad, kind in ((None, "NoneType"), (8, "int")):
        with pytest.raises(ValueError, match=rf"^search space {bad!r} is a {kind}: give comma-separated formats as a "
                                             rf"string or a list, e.g. '4,8' or \['int4', 'fp8_e4m3'\]$"):
            parse_format_list(bad)


def test_formats_are_hashable_and_printable():
    assert len({parse_format("e4m3"), parse_format("fp8_e4m3"), parse_format("int4")}) == 2
    assert str(parse_format("fp4")) == "fp4_e2m1"
    assert "max=448" in repr(parse_format("e4m3"))
    assert math.isclose(parse_format("e3m2").max, 28.0)


def below(value: float) -> float:
    return torch.nextafter(torch.tensor(value), torch.tensor(0.0)).item()


def above(value: float) -> float:
    return torch.nextafter(torch.tensor(value), torch.tensor(math.inf)).item()


@pytest.mark.parametrize("name, want", [("int8", 1.0), ("fp8_e4m3", 32.0), ("fp8_e5m2", 8192.0), ("fp4_e2m1", 2.0),
                                        ("e2m5", 2.0**-3), ("fp16", 32.0), ("bf16", 2.0**120)])
def test_top_step(name, want):
    fmt = parse_format(name)
    assert fmt.top_step == want
    assert (fmt.max / fmt.top_step).is_integer()  # max lies on the grid of that spacing


@pytest.mark.parametrize("name, want", [
    ("int8", (-128.5, below(127.5))),  # qmin = -128 is even: its tie is in; qmax = 127 odd: out
    ("int2", (-2.5, below(1.5))),
    ("fp8_e4m3", (-464.0, 464.0)),  # 448 = 14 steps of 32 (even): the tie 464 rounds down to it
    ("fp8_e5m2", (-below(61440.0), below(61440.0))),  # 57344 = 7 steps of 8192 (odd)
    ("fp4_e2m1", (-below(7.0), below(7.0))),
    ("fp6_e2m3", (-below(7.75), below(7.75))),
    ("fp16", (-below(65520.0), below(65520.0))),
    ("bf16", (-below(2.0**128 - 2.0**119), below(2.0**128 - 2.0**119))),
])
def test_rounding_bounds_values(name, want):
    assert rounding_bounds(parse_format(name)) == want


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2", "fp8_e3m4", "bf16", "fp16", "int4", "int8", "int16"])
def test_rounding_bounds_are_the_last_values_that_round_into_range(name):
    """Independent references without a range limit: ml_dtypes' casts (overflow to inf/NaN),
    torch's casts to bf16/fp16 (overflow to inf) and torch.round for INT."""
    fmt = parse_format(name)
    lo, hi = rounding_bounds(fmt)
    if name.startswith("fp8"):
        dtype = {"fp8_e4m3": ml_dtypes.float8_e4m3fn, "fp8_e5m2": ml_dtypes.float8_e5m2,
                 "fp8_e3m4": ml_dtypes.float8_e3m4}[name]
        def rounded(v): return float(np.float32(v).astype(dtype).astype(np.float64))
    elif name in ("bf16", "fp16"):
        def rounded(v): return torch.tensor(v, dtype=torch.float32).to(fmt.torch_dtype).item()
    else:
        def rounded(v): return torch.tensor(v, dtype=torch.float32).round().item()
    low = fmt.qmin if name.startswith("int") else -fmt.max
    assert rounded(hi) == fmt.max and rounded(lo) == low
    assert not abs(rounded(above(hi))) <= fmt.max  # inf, NaN or qmax + 1
    assert not rounded(-above(-lo)) >= low


def every_token_form() -> list:
    """One token of every form parse_format accepts, in several spellings."""
    lo, hi = 2, 16
    tokens: list = ["0", 0, "none", "NONE", "fp32", " fp32 ", "bf16", "BF16", "fp16"]
    tokens += ["fp8_e4m3", "e4m3", "fp8_e5m2", "e5m2", "fp8_e3m4", "e3m4", "fp6_e2m3", "fp6_e3m2", "fp4_e2m1", "fp4"]
    tokens += [f"int{n}" for n in range(lo, hi + 1)] + [str(n) for n in range(lo, hi + 1)]
    tokens += list(range(lo, hi + 1)) + ["INT8", " int4 "]
    tokens += [f"e{x}m{y}" for x in range(1, 6) for y in range(0, 8) if x + y <= 7] + ["E2M5"]
    return tokens


@pytest.mark.parametrize("token", every_token_form(), ids=repr)
def test_every_token_form_round_trips_through_its_name(token):
    fmt = parse_format(token)
    assert parse_format(fmt.name) == fmt
    assert parse_format(fmt.name).name == fmt.name


@pytest.mark.parametrize("token", ["e05m02", "e5m02", "e04m3", "int08", "08", "00", "016", "int004"])
def test_leading_zeros_are_rejected(token):
    # "e05m02" used to parse as a generic all-finite E5M2 named "e5m2", which re-parses as the IEEE one.
    with pytest.raises(ValueError, match=rf"invalid format '{token}': numbers in format tokens have no leading "
                                         r"zeros .*valid forms"):
        parse_format(token)


@pytest.mark.parametrize("token", ["int٨", "٨", "e٢m٥", "int８", "e2m５"])
def test_only_ascii_digits(token):
    with pytest.raises(ValueError, match=rf"unknown format '{token}'; valid forms"):
        parse_format(token)


def test_numpy_and_torch_integers_are_integers():
    assert parse_format(np.int64(8)) == parse_format("int8") == IntFormat(8)
    assert parse_format(np.uint8(4)) == parse_format(torch.tensor(4)) == IntFormat(4)
    assert parse_format(np.int64(0)) is parse_format(0)
    fmt = IntFormat(np.int64(8))
    assert fmt == IntFormat(8) and hash(fmt) == hash(IntFormat(8)) and type(fmt.num_bits) is int
    assert FloatFormat(np.int64(4), torch.tensor(3), "fn") == parse_format("fp8_e4m3")
    assert FloatFormat(np.int64(2), 5).name == "e2m5"
    with pytest.raises(ValueError, match=r"INT format needs 2 <= bits <= 16, got 1;"):
        IntFormat(np.int64(1))
    for token in [np.True_, torch.tensor(True), np.float64(8.0), torch.tensor(8.0)]:  # still not integers
        with pytest.raises(ValueError, match=rf"format token must be a string or int, got {re.escape(repr(token))}; "
                                             r"valid forms"):
            parse_format(token)


@pytest.mark.parametrize("make, match", [
    (lambda: IntFormat(2.5), r"IntFormat bits must be an integer, got 2.5 \(float\); e.g. IntFormat\(8\)"),
    (lambda: IntFormat(True), r"IntFormat bits must be an integer, got True \(bool\)"),
    (lambda: IntFormat("8"), r"IntFormat bits must be an integer, got '8' \(str\)"),
    (lambda: FloatFormat(2.5, 1), r"FloatFormat exp_bits must be an integer, got 2.5 \(float\); e.g. FloatFormat\(4, 3\)"),
    (lambda: FloatFormat(True, 1), r"FloatFormat exp_bits must be an integer, got True \(bool\)"),
    (lambda: FloatFormat(2, np.True_), r"FloatFormat man_bits must be an integer, got np.True_ \(bool\)"),
])
def test_format_constructors_need_integer_bits(make, match):
    with pytest.raises(TypeError, match=match):
        make()


def test_format_constructors_name_the_valid_enum_values():
    with pytest.raises(ValueError, match=r"FloatFormat special must be one of 'ieee', 'fn', 'finite', got 'xx'"):
        FloatFormat(4, 3, "xx")
    with pytest.raises(ValueError, match=r"CastFormat dtype must be one of 'bf16', 'fp16', got 'xx'"):
        CastFormat("xx")
    assert FloatFormat(4, 3, "fn") == parse_format("e4m3") and CastFormat("bf16") == parse_format("bf16")


@pytest.mark.parametrize("exp_bits, man_bits, special, match", [
    (2, 0, "fn", r"^FloatFormat\(2, 0, special='fn'\) has no finite value at its top exponent \(with no mantissa bits "
                 r"its one code there is the NaN\); use special='finite' \(every code finite\) or 'ieee' \(top exponent "
                 r"inf/NaN\)$"),
    (5, 0, SpecialCodes.FN, r"^FloatFormat\(5, 0, special='fn'\) has no finite value"),
    (1, 1, "ieee", r"^FloatFormat\(1, 1, special='ieee'\) has no normal values \(its one non-zero exponent is "
                   r"reserved for inf/NaN\); use special='finite' or 'fn', or more exponent bits$"),
    (1, 0, SpecialCodes.IEEE, r"^FloatFormat\(1, 0, special='ieee'\) has no normal values"),
])
def test_special_codes_that_leave_no_largest_value_are_refused(exp_bits, man_bits, special, match):
    """Their `max` (the all-ones mantissa of the top finite exponent) is no value of the format:
    FN E2M0 would claim 0 (every output NaN), IEEE E1M1 1.5 (outputs up to 2)."""
    with pytest.raises(ValueError, match=match):
        FloatFormat(exp_bits, man_bits, special)


@pytest.mark.parametrize("exp_bits, man_bits, special", [(2, 1, "fn"), (1, 1, "fn"), (2, 0, "ieee"), (2, 1, "ieee"),
                                                         (1, 0, "finite"), (2, 0, "finite")])
def test_max_is_the_largest_finite_code_of_the_smallest_formats(exp_bits, man_bits, special):
    """Enumerated from the bit patterns: every code's value by the docstring's formula, the
    reserved ones (FN: all ones; IEEE: the top exponent) left out."""
    fmt = FloatFormat(exp_bits, man_bits, special)
    values = []
    for exponent in range(2**exp_bits):
        for mantissa in range(2**man_bits):
            top = exponent == 2**exp_bits - 1
            if (special == "ieee" and top) or (special == "fn" and top and mantissa == 2**man_bits - 1):
                continue
            if exponent == 0:
                values.append(2.0 ** (1 - fmt.bias) * mantissa / 2**man_bits)
            else:
                values.append(2.0 ** (exponent - fmt.bias) * (1 + mantissa / 2**man_bits))
    assert fmt.max == max(values)


def every_float_format() -> list[FloatFormat]:
    """Every FloatFormat the class accepts (test_float_format_bits_are_those_parse_format_accepts:
    no other (X, Y))."""
    formats = []
    for exp_bits in range(1, 6):
        for man_bits in range(0, 8 - exp_bits):
            for special in SpecialCodes:
                try:
                    formats.append(FloatFormat(exp_bits, man_bits, special))
                except ValueError:  # FN without a mantissa bit, IEEE with one exponent bit
                    pass
    return formats


def test_every_float_format_s_name_parses_back_to_it():
    """A name is what results.json and an exported checkpoint record: one that parsed to another
    format (FloatFormat(4, 2, 'ieee') was named e4m2, the all-finite E4M2) reloaded other numbers."""
    formats = every_float_format()
    assert len(formats) == 3 * 25 - 5 - 7  # (X, Y) pairs x special codes, less the refused ones
    for fmt in formats:
        assert parse_format(fmt.name) == fmt, fmt
    assert len({fmt.name for fmt in formats}) == len(formats)
    assert [FloatFormat(4, 3).name, FloatFormat(4, 2, "ieee").name, FloatFormat(2, 1, "fn").name,
            FloatFormat(2, 1).name, FloatFormat(2, 5).name] == ["e4m3_finite", "e4m2_ieee", "e2m1_fn", "fp4_e2m1", "e2m5"]
    assert parse_format("E4M3_FN") is parse_format("fp8_e4m3")  # a named format by its special codes
    assert parse_format("e4m3_finite").max == 480.0 and parse_format("e4m2_ieee").max == 224.0


@pytest.mark.parametrize("token, match", [
    ("e2m0_fn", r"^invalid format 'e2m0_fn': FloatFormat\(2, 0, special='fn'\) has no finite value at its top exponent"),
    ("e1m2_ieee", r"^invalid format 'e1m2_ieee': FloatFormat\(1, 2, special='ieee'\) has no normal values"),
    ("e4m3_fnuz", r"^unknown format 'e4m3_fnuz'; valid forms"),
    ("e6m1_ieee", r"^invalid format 'e6m1_ieee': generic eXmY needs 1<=X<=5"),
    ("e04m2_ieee", r"^invalid format 'e04m2_ieee': numbers in format tokens have no leading zeros"),
])
def test_bad_special_code_tokens(token, match):
    with pytest.raises(ValueError, match=match):
        parse_format(token)


@pytest.mark.parametrize("exp_bits, man_bits", [(6, 1), (7, 0), (6, 0), (0, 3), (4, 4), (1, 7), (5, 3)])
def test_float_format_bits_are_those_parse_format_accepts(exp_bits, man_bits):
    """FloatFormat(6, 1, 'ieee') was accepted, and named e6m1_ieee, a token parse_format refuses:
    a record or an export of it would not load back."""
    with pytest.raises(ValueError, match=rf"^FP format needs 1 <= exp_bits <= 5, 0 <= man_bits <= 7 and exp_bits \+ "
                                         rf"man_bits <= 7 \(at most 8 bits with the sign\), got e{exp_bits}m{man_bits}$"):
        FloatFormat(exp_bits, man_bits, "ieee")
