"""Numeric formats: every parameter derived from (exponent bits, mantissa bits) or INT bits here.

A format answers three questions for the rest of the toolkit: how many storage bits an element
costs (`bits`, used by the cost model), the largest finite value (`max`, used for scales and
saturation, with `top_step` and `rounding_bounds` the exact interval that rounds onto the range),
and how to round (`quant.rounding` dispatches on the class).

Tokens accepted by `parse_format` (case-insensitive):
    0, none, fp32               no quantization (identity)
    bf16, fp16                  round to that torch dtype (saturating at its max)
    N, intN  (2 <= N <= 16)     signed symmetric integer, grid [-2^(N-1), 2^(N-1)-1]
    fp8_e4m3, e4m3              OCP E4M3FN: max 448, no inf, only S.1111.111 is NaN
    fp8_e5m2, e5m2              IEEE-style E5M2: max 57344, top exponent is inf/NaN
    fp8_e3m4, e3m4              IEEE-style E3M4: max 15.5
    fp6_e2m3, fp6_e3m2          OCP MX FP6: max 7.5 / 28, every code finite
    fp4_e2m1, fp4               OCP MX FP4: max 6, every code finite
    eXmY                        generic: 1 <= X <= 5, 0 <= Y <= 7, X+Y <= 7, every code finite
    eXmY_finite/_fn/_ieee       the same with those special codes (SpecialCodes): the name of a
                                FloatFormat no token above names, e.g. e4m3_finite (max 480)
Numbers are ASCII digits without leading zeros, so a format's `name` parses back to that format
(a generic "e05m02" would otherwise be named "e5m2", the IEEE-style E5M2).
"""
from __future__ import annotations

import functools
import math
import operator
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, ClassVar, TypeVar

import torch

VALID_FORMS = (
    "0/none/fp32 (no quantization), bf16, fp16, N or intN with 2<=N<=16 (e.g. 4, int8), "
    "fp8_e4m3/e4m3, fp8_e5m2/e5m2, fp8_e3m4/e3m4, fp6_e2m3, fp6_e3m2, fp4_e2m1/fp4, "
    "or a generic eXmY with 1<=X<=5, 0<=Y<=7, X+Y<=7 (e.g. e2m5), also with _fn, _ieee or _finite special "
    "codes (e.g. e4m2_ieee, e4m3_finite)"
)

INT_BITS_RANGE = (2, 16)


def _as_int(value: object) -> int | None:
    """`value` as a Python int where it is an integer: int, numpy or torch integer scalars
    (operator.index); None for anything else, bools included (True would be int1)."""
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype is torch.bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def _bits_argument(value: object, what: str, example: str) -> int:
    bits = _as_int(value)
    if bits is None:
        raise TypeError(f"{what} must be an integer, got {value!r} ({type(value).__name__}); e.g. {example}")
    return bits


def _enum_argument(enum_cls: type[Enum], value: object, what: str) -> Enum:
    try:
        return enum_cls(value)
    except ValueError:
        raise ValueError(f"{what} must be one of {', '.join(repr(m.value) for m in enum_cls)}, "
                         f"got {value!r}") from None


class NumberFormat:
    """Base of every format. Concrete formats are frozen dataclasses (hashable, comparable)."""

    name: str
    bits: int  # storage bits per element, used by the cost model
    max: float  # largest finite value
    is_float: bool

    @property
    def quantizes(self) -> bool:
        """False only for the identity format, so callers can skip all work for it."""
        return True

    @property
    def takes_scale(self) -> bool:
        """Whether values are scaled onto the format (range / max): not for the identity format nor
        for the casts to a torch dtype, whose scale is 1 (so no scale option changes them)."""
        return self.quantizes

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class NoQuantFormat(NumberFormat):
    """Identity: the layer computes exactly what the float layer computes."""

    is_float: ClassVar[bool] = True
    bits: ClassVar[int] = 32
    max: ClassVar[float] = float(torch.finfo(torch.float32).max)

    @property
    def name(self) -> str:  # type: ignore[override]
        return "none"

    @property
    def quantizes(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "NoQuantFormat()"


class CastDtype(str, Enum):
    BF16 = "bf16"
    FP16 = "fp16"

    @property
    def torch_dtype(self) -> torch.dtype:
        return {CastDtype.BF16: torch.bfloat16, CastDtype.FP16: torch.float16}[self]


@dataclass(frozen=True)
class CastFormat(NumberFormat):
    """Round to a native torch dtype (round-to-nearest-even), saturating at its max."""

    dtype: CastDtype
    is_float: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", _enum_argument(CastDtype, self.dtype, "CastFormat dtype"))

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.dtype.value

    @property
    def takes_scale(self) -> bool:
        return False

    @property
    def bits(self) -> int:  # type: ignore[override]
        return 16

    @property
    def max(self) -> float:  # type: ignore[override]
        return float(torch.finfo(self.dtype.torch_dtype).max)

    @property
    def torch_dtype(self) -> torch.dtype:
        return self.dtype.torch_dtype

    @property
    def top_step(self) -> float:
        """Spacing of the grid just below max."""
        _, exponent = math.frexp(self.max)  # max = m * 2^exponent, m in [0.5, 1)
        return torch.finfo(self.torch_dtype).eps * 2.0 ** (exponent - 1)

    def __repr__(self) -> str:
        return f"CastFormat({self.name}, max={self.max:g})"


@dataclass(frozen=True)
class IntFormat(NumberFormat):
    """Signed symmetric integer: grid [-2^(bits-1), 2^(bits-1)-1], scale maps amax to qmax."""

    num_bits: int
    is_float: ClassVar[bool] = False

    def __post_init__(self) -> None:
        lo, hi = INT_BITS_RANGE
        bits = _bits_argument(self.num_bits, "IntFormat bits", "IntFormat(8)")
        object.__setattr__(self, "num_bits", bits)  # np.int64(8) -> 8: equal and hashed as IntFormat(8)
        if not lo <= bits <= hi:
            raise ValueError(
                f"INT format needs {lo} <= bits <= {hi}, got {self.num_bits!r}; valid forms: {VALID_FORMS}"
            )

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"int{self.num_bits}"

    @property
    def bits(self) -> int:  # type: ignore[override]
        return self.num_bits

    @property
    def qmin(self) -> int:
        return -(2 ** (self.num_bits - 1))

    @property
    def qmax(self) -> int:
        return 2 ** (self.num_bits - 1) - 1

    @property
    def max(self) -> float:  # type: ignore[override]
        return float(self.qmax)

    @property
    def top_step(self) -> float:
        """Spacing of the grid just below max."""
        return 1.0

    def __repr__(self) -> str:
        return f"IntFormat({self.name}, grid=[{self.qmin}, {self.qmax}])"


class SpecialCodes(str, Enum):
    """What the top exponent codes mean; this alone fixes the largest finite value."""

    IEEE = "ieee"  # top exponent reserved for inf/NaN (E5M2, E3M4)
    FN = "fn"  # only the all-ones code is NaN, no inf (OCP E4M3FN)
    FINITE = "finite"  # every code is a finite value (FP6, FP4, generic eXmY)


# (exp_bits, man_bits, special) -> canonical name, and the aliases that name it.
_NAMED_FLOATS: dict[tuple[int, int, SpecialCodes], tuple[str, ...]] = {
    (4, 3, SpecialCodes.FN): ("fp8_e4m3", "e4m3"),
    (5, 2, SpecialCodes.IEEE): ("fp8_e5m2", "e5m2"),
    (3, 4, SpecialCodes.IEEE): ("fp8_e3m4", "e3m4"),
    (2, 3, SpecialCodes.FINITE): ("fp6_e2m3",),
    (3, 2, SpecialCodes.FINITE): ("fp6_e3m2",),
    (2, 1, SpecialCodes.FINITE): ("fp4_e2m1", "fp4"),
}
GENERIC_EXP_RANGE = (1, 5)
GENERIC_MAN_RANGE = (0, 7)
GENERIC_MAX_PAYLOAD_BITS = 7  # X + Y, so sign + X + Y fits in one byte


@dataclass(frozen=True)
class FloatFormat(NumberFormat):
    """Sign + exp_bits + man_bits, bias 2^(exp_bits-1)-1, with subnormals.

    Values: normal (-1)^s * 2^(E - bias) * (1 + M / 2^m) for E >= 1, subnormal
    (-1)^s * 2^(1 - bias) * (M / 2^m) for E == 0.
    """

    exp_bits: int
    man_bits: int
    special: SpecialCodes = SpecialCodes.FINITE
    is_float: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "special", _enum_argument(SpecialCodes, self.special, "FloatFormat special"))
        # Integers only: FloatFormat(True, 1) would be named 'eTruem1', FloatFormat(2.5, 1) 'e2.5m1'.
        object.__setattr__(self, "exp_bits", _bits_argument(self.exp_bits, "FloatFormat exp_bits", "FloatFormat(4, 3)"))
        object.__setattr__(self, "man_bits", _bits_argument(self.man_bits, "FloatFormat man_bits", "FloatFormat(4, 3)"))
        (elo, ehi), (mlo, mhi) = GENERIC_EXP_RANGE, GENERIC_MAN_RANGE
        if not (elo <= self.exp_bits <= ehi and mlo <= self.man_bits <= mhi
                and self.exp_bits + self.man_bits <= GENERIC_MAX_PAYLOAD_BITS):
            # What parse_format accepts, so that every format's name parses back; packing stores a
            # code in one byte, and the rounding core keeps its steps in float32's normal range.
            raise ValueError(f"FP format needs {elo} <= exp_bits <= {ehi}, {mlo} <= man_bits <= {mhi} and exp_bits + "
                             f"man_bits <= {GENERIC_MAX_PAYLOAD_BITS} (at most 8 bits with the sign), got "
                             f"e{self.exp_bits}m{self.man_bits}")
        # Special codes that leave the top exponent (or every non-zero exponent) without a finite
        # value: `max` (the all-ones mantissa below the reserved codes) would not be a value.
        if self.special is SpecialCodes.FN and self.man_bits == 0:
            raise ValueError(f"FloatFormat({self.exp_bits}, 0, special='fn') has no finite value at its top exponent "
                             "(with no mantissa bits its one code there is the NaN); use special='finite' (every "
                             "code finite) or 'ieee' (top exponent inf/NaN)")
        if self.special is SpecialCodes.IEEE and self.exp_bits == 1:
            raise ValueError(f"FloatFormat(1, {self.man_bits}, special='ieee') has no normal values (its one non-zero "
                             "exponent is reserved for inf/NaN); use special='finite' or 'fn', or more exponent bits")

    @property
    def bias(self) -> int:
        return 2 ** (self.exp_bits - 1) - 1

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal value (also the subnormal exponent)."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Exponent of the largest finite value."""
        top = 2**self.exp_bits - 1
        return (top - 1 if self.special is SpecialCodes.IEEE else top) - self.bias

    @property
    def max(self) -> float:  # type: ignore[override]
        # The largest mantissa is all ones, except FN where all-ones with the top exponent is NaN.
        top_mantissa = 2**self.man_bits - (2 if self.special is SpecialCodes.FN else 1)
        return float((1 + top_mantissa / 2**self.man_bits) * 2.0**self.emax)

    @property
    def top_step(self) -> float:
        """Spacing of the grid just below max: 2^(emax - man_bits)."""
        return float(2.0 ** (self.emax - self.man_bits))

    @property
    def min_positive(self) -> float:
        """Smallest positive value: the subnormal step 2^(emin - man_bits)."""
        return float(2.0 ** (self.emin - self.man_bits))

    @property
    def bits(self) -> int:  # type: ignore[override]
        return 1 + self.exp_bits + self.man_bits

    @property
    def name(self) -> str:  # type: ignore[override]
        """The token that parses back to this format: its canonical name if it has one, else
        eXmY for every code finite, else eXmY with its special codes (e4m2_ieee; and e4m3_finite,
        as e4m3 names the FN format)."""
        aliases = _NAMED_FLOATS.get((self.exp_bits, self.man_bits, self.special))
        if aliases:
            return aliases[0]
        generic = f"e{self.exp_bits}m{self.man_bits}"
        if self.special is SpecialCodes.FINITE and generic not in _FIXED_TOKENS:
            return generic
        return f"{generic}_{self.special.value}"

    def __repr__(self) -> str:
        return f"FloatFormat({self.name}, e{self.exp_bits}m{self.man_bits}, bias={self.bias}, max={self.max:g})"


_Result = TypeVar("_Result")
_MISSING = object()


def cached_per_format(function: Callable[[Any], _Result]) -> Callable[[Any], _Result]:
    """`functools.lru_cache` for a function of one format (a frozen, hashable dataclass), as a
    plain dict: torch.compile traces a dict lookup, where it skips lru_cache's wrapper with a
    warning about possible silent incorrectness. While tracing, a result is computed, not stored
    (the store would be a side effect of the graph)."""
    cache: dict[Any, _Result] = {}

    @functools.wraps(function)
    def cached(fmt: Any) -> _Result:
        result = cache.get(fmt, _MISSING)  # one hash of the dataclass (`in` then `[]` took two)
        if result is not _MISSING:
            return result  # type: ignore[return-value]
        result = function(fmt)
        if not torch.compiler.is_compiling():
            cache[fmt] = result
        return result

    return cached


@cached_per_format
def rounding_bounds(fmt: IntFormat | FloatFormat | CastFormat) -> tuple[float, float]:
    """[lo, hi]: exactly the float32 values that round (half to even) onto the format's range
    when rounded to its grid without a range limit. hi is max plus half the top step, or the
    float32 just below it when that tie would round up (max an odd multiple of the step: qmax of
    INT, the all-ones mantissa of most FP formats); lo is -hi, or qmin - 0.5 for INT (qmin is
    even). Rounding commutes with clamping to these bounds, so clamp-then-round equals
    round-then-saturate for every input, infinities included. The fake quantization clamps to
    them, and its straight-through gradient passes exactly inside them."""
    if not isinstance(fmt, (IntFormat, FloatFormat, CastFormat)):
        raise TypeError(f"no rounding rule for format {fmt!r}")
    hi = fmt.max + fmt.top_step / 2  # exact in float32: one bit more than max has
    if (fmt.max / fmt.top_step) % 2 == 1:
        hi = torch.nextafter(torch.tensor(hi), torch.tensor(0.0)).item()
    lo = fmt.qmin - 0.5 if isinstance(fmt, IntFormat) else -hi
    return lo, hi


NO_QUANT = NoQuantFormat()
_FIXED_TOKENS: dict[str, NumberFormat] = {"0": NO_QUANT, "none": NO_QUANT, "fp32": NO_QUANT}
_FIXED_TOKENS.update({d.value: CastFormat(d) for d in CastDtype})
for (_e, _m, _special), _aliases in _NAMED_FLOATS.items():
    for _alias in _aliases:
        _FIXED_TOKENS[_alias] = FloatFormat(_e, _m, _special)

# ASCII digits only (`\d` also matches e.g. Arabic-Indic digits). Numbers with leading zeros
# match too, so that parse_format can reject them by name: "e05m02" must not become a generic
# E5M2 whose name "e5m2" re-parses as the IEEE format.
_INT_RE = re.compile(r"(?:int)?([0-9]+)")
_GENERIC_RE = re.compile(r"e([0-9]+)m([0-9]+)(?:_(finite|fn|ieee))?")


def _has_leading_zero(number: str) -> bool:
    return len(number) > 1 and number[0] == "0"


def parse_format(token: str | int | NumberFormat) -> NumberFormat:
    """Parse one format token (see the module docstring). A NumberFormat passes through."""
    if isinstance(token, NumberFormat):
        return token
    number = None if isinstance(token, str) else _as_int(token)  # numpy / torch integers as well
    if not isinstance(token, str) and number is None:
        raise ValueError(f"format token must be a string or int, got {token!r}; valid forms: {VALID_FORMS}")
    text = str(number) if number is not None else token.strip().lower()
    if text in _FIXED_TOKENS:
        return _FIXED_TOKENS[text]
    match = _INT_RE.fullmatch(text) or _GENERIC_RE.fullmatch(text)
    if match is None:
        raise ValueError(f"unknown format {token!r}; valid forms: {VALID_FORMS}")
    if any(_has_leading_zero(number) for number in match.groups()[:2]):
        raise ValueError(
            f"invalid format {token!r}: numbers in format tokens have no leading zeros (each format has one "
            f"token, e.g. int8, e2m5); valid forms: {VALID_FORMS}"
        )
    if match.re is _INT_RE:
        bits = int(match.group(1))
        lo, hi = INT_BITS_RANGE
        if not lo <= bits <= hi:
            raise ValueError(
                f"invalid format {token!r}: INT formats need {lo} <= bits <= {hi} (0 means no quantization); "
                f"valid forms: {VALID_FORMS}"
            )
        return IntFormat(bits)
    exp_bits, man_bits = int(match.group(1)), int(match.group(2))
    (elo, ehi), (mlo, mhi) = GENERIC_EXP_RANGE, GENERIC_MAN_RANGE
    if not (elo <= exp_bits <= ehi and mlo <= man_bits <= mhi and exp_bits + man_bits <= GENERIC_MAX_PAYLOAD_BITS):
        raise ValueError(
            f"invalid format {token!r}: generic eXmY needs {elo}<=X<={ehi}, {mlo}<=Y<={mhi} and X+Y<="
            f"{GENERIC_MAX_PAYLOAD_BITS} (at most 8 bits with the sign); valid forms: {VALID_FORMS}"
        )
    special = SpecialCodes(match.group(3) or SpecialCodes.FINITE.value)
    try:
        fmt = FloatFormat(exp_bits, man_bits, special)
        return _FIXED_TOKENS.get(fmt.name, fmt)  # a named format (e4m3_fn): its one object
    except ValueError as error:  # special codes that leave no largest value (e2m0_fn)
        raise ValueError(f"invalid format {token!r}: {error}; valid forms: {VALID_FORMS}") from None


def parse_format_list(text: str | list | tuple, what: str = "search space") -> tuple[NumberFormat, ...]:
    """Parse a comma-separated list such as '4,8' or 'int4,fp8_e4m3,fp4' (order kept)."""
    if not isinstance(text, (str, list, tuple)):
        raise ValueError(f"{what} {text!r} is a {type(text).__name__}: give comma-separated formats as a string or "
                         f"a list, e.g. '4,8' or ['int4', 'fp8_e4m3']")
    items = [t for t in (text.split(",") if isinstance(text, str) else list(text))]
    tokens = [t.strip() if isinstance(t, str) else t for t in items]
    if not tokens or tokens == [""]:
        raise ValueError(f"empty {what} {text!r}: give comma-separated formats, e.g. '4,8' or 'int4,fp8_e4m3,fp4'")
    if "" in tokens:
        raise ValueError(f"{what} {text!r} has an empty entry (entry {tokens.index('') + 1}): give comma-separated "
                         f"formats without empty ones, e.g. '4,8' or 'int4,fp8_e4m3,fp4'")
    formats = tuple(parse_format(t) for t in tokens)
    seen: set[NumberFormat] = set()
    for fmt, token in zip(formats, tokens):
        if fmt in seen:
            raise ValueError(f"duplicate format {token!r} ({fmt.name}) in {what} {text!r}: list each format once")
        seen.add(fmt)
    return formats
