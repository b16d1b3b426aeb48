"""Round float32 tensors onto a format's grid, and convert between values and bit codes.

`quantize` is a handful of whole-tensor torch ops on one result buffer and one scratch
buffer (no per-element Python, no host syncs), so it runs the same on CPU and CUDA and
traces cleanly under torch.compile. Two exact rounding mechanisms, chosen per format:

* narrow formats (every FP8/FP6/FP4 here): round |x| to the step 2^(max(e, emin) - M) of its
  binade by adding and subtracting C = 2^(max(e, emin) + 23 - M). float32's own addition
  rounds to nearest-even at exactly that step, subnormals included, so ties are exact.
* formats whose subnormals coincide with float32's (emin = -126: bf16, e8m0): round the
  float32 bit pattern directly (add half-step-minus-one plus the kept LSB, then truncate).
  Eager, bfloat16's layout itself rounds to nearest by torch's own cast to torch.bfloat16,
  which rounds exactly so (ties to even, subnormals kept, overflow to inf), several times
  faster. Not when traced: inductor drops a cast down and back up as a no-op (unless
  emulate_precision_casts is set), and it fuses the bit-pattern path into one loop anyway.

Stochastic rounding adds uniform random bits below the kept mantissa and truncates, which
picks the upper neighbour with probability exactly (distance to lower) / step. Values in
the subnormal range are first shifted up by 2^emin, where float32's step is the format's
subnormal step, so one truncation serves both ranges; the shift itself rounds |x| to
2^(emin - 23), which bounds the bias by 2^(M - 23) of a step (invisible at 8 bits). The
random bits come from random_bits.py: the generator when eager, a keyed counter hash when
traced by torch.compile (round-to-nearest and the telemetry are bit-identical either way).

Deliberate difference from ml_dtypes: with `saturate=True` (the default, as in training
recipes) overflow clamps to ±max instead of becoming inf/NaN; `saturate=False` follows the
format's own rule (ieee: inf, fn: NaN, none: there is no special, so it still saturates).
Unsigned formats map negative inputs to 0 (saturate) or NaN. With no mantissa bits (e7m0,
e8m0) there is no mantissa bit to make even: ties round away from zero (1.5 * 2^k to
2^(k+1), the nearer neighbour in log space), as ml_dtypes does for float8_e8m0fnu.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from .formats import FloatFormat, get_format, per_format_constants
from .random_bits import random_bits, random_source

_EXP_MASK = 0x7F800000
_BFLOAT16 = FloatFormat(8, 7, specials="ieee")  # torch.bfloat16's layout


@dataclass(frozen=True)
class _RoundingPlan:
    """Per-format constants for the rounding kernels, computed once."""

    int_path: bool  # round the float32 bit pattern directly (emin == -126 formats)
    cast_dtype: torch.dtype | None  # a torch dtype with this layout: round to nearest by casting
    drop: int  # float32 mantissa bits dropped in the normal range: 23 - M
    c_lo: int  # bits of 2^emin: smallest binade the magic constant may take
    c_hi: int  # bits of 2^(exponent of max): largest binade (E = 0: all values share emin's step)
    max_value: float
    min_normal: float
    fix_nan: bool  # bit arithmetic may turn a NaN into inf or a number: restore it


@per_format_constants
def _plan(fmt: FloatFormat) -> _RoundingPlan:
    drop = 23 - fmt.man_bits
    top_exp = math.frexp(fmt.max_value)[1] - 1
    magic_fits = top_exp + drop <= 127 and fmt.emin >= -126
    if not magic_fits and fmt.emin != -126:
        raise ValueError(f"{fmt.name}: no exact float32 rounding for this bias ({fmt.bias})")
    return _RoundingPlan(
        int_path=not magic_fits,
        cast_dtype=torch.bfloat16 if fmt == _BFLOAT16 else None,
        drop=drop,
        c_lo=(fmt.emin + 127) << 23,
        c_hi=(max(top_exp, fmt.emin) + 127) << 23,
        max_value=fmt.max_value,
        min_normal=fmt.min_normal,
        # Float ops keep NaN quiet (bit 22 set), which survives truncation unless M = 0;
        # the bit-pattern path sees raw NaN payloads. RNE on the magic path is pure float.
        fix_nan=not magic_fits or fmt.man_bits == 0,
    )


class QuantStats:
    """What quantization did to the values it saw: running counts kept as device tensors.

    Counting adds no host sync; read `rates()` / `counts()` when logging (that syncs once).
    overflow  = inputs outside the format's range: beyond ±max, inf included (they saturate, or
                become inf/NaN when not saturating); for an unsigned format, every negative input
    underflow = non-zero inputs that became zero
    subnormal = results in the subnormal range (non-zero, below min_normal)
    nonfinite = NaN or inf inputs
    `histogram=True` also keeps a 256-bin histogram of the codes produced (formats <= 8 bits).
    """

    FIELDS = ("total", "overflow", "underflow", "subnormal", "nonfinite")

    def __init__(self, histogram: bool = False, device: torch.device | str | None = None):
        self.want_histogram = histogram
        self.device = device
        self.reset()

    def reset(self) -> None:
        # one vector, the fields are views of it: a call adds its counts to all of them at once
        self._counts = torch.zeros(len(self.FIELDS), dtype=torch.int64, device=self.device)
        for i, name in enumerate(self.FIELDS):
            setattr(self, name, self._counts[i])
        self.histogram = torch.zeros(256, dtype=torch.int64, device=self.device) if self.want_histogram else None

    def counts(self) -> dict[str, int]:
        return {name: int(getattr(self, name)) for name in self.FIELDS}

    def rates(self) -> dict[str, float]:
        c = self.counts()
        n = max(c.pop("total"), 1)
        return {f"{name}_rate": value / n for name, value in c.items()}

    def merge_(self, other: "QuantStats") -> "QuantStats":
        for name in self.FIELDS:
            getattr(self, name).add_(getattr(other, name).to(getattr(self, name).device))
        if self.histogram is not None and other.histogram is not None:
            self.histogram.add_(other.histogram.to(self.histogram.device))
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {name: getattr(self, name).clone() for name in self.FIELDS}
        if self.histogram is not None:
            state["histogram"] = self.histogram.clone()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name in self.FIELDS:
            getattr(self, name).copy_(state[name])
        if self.histogram is not None and "histogram" in state:
            self.histogram.copy_(state["histogram"])

    def _count(self, x: torch.Tensor, result: torch.Tensor, fmt: FloatFormat, saturate: bool, scratch: torch.Tensor) -> None:
        """Update counts from the input and the final result, after everything quantize did.

        Eager, each count is one comparison written into the float scratch buffer (1.0 or 0.0
        per element), then summed: in float32, which is exact below 2^24 elements (every
        partial sum is an integer below 2^24) and several times faster on CPU than
        count_nonzero, which counts larger tensors. The counts then update all fields in one
        integer matrix-vector product. Traced by torch.compile, plain comparisons on the
        returned tensor, which the compiler fuses into the loop that writes it (counting an
        intermediate would make it recompute the rounding in a second loop). NaN compares
        unequal to everything and is never less, greater or less-or-equal, which the
        arithmetic below uses.
        """
        n = x.numel()
        if torch.compiler.is_compiling():
            return self._count_traced(x, result, fmt, saturate, n)
        exact_sum = n < _FLOAT_SUM_EXACT

        def count(op, tensor, threshold, magnitude=False):
            op(torch.abs(tensor, out=scratch) if magnitude else tensor, threshold, out=scratch)
            return scratch.sum() if exact_sum else torch.count_nonzero(scratch.view(torch.int32))

        counts = [
            count(torch.ne, x, 0.0),  # non-zero inputs, NaN included (-0.0 is zero)
            count(torch.ne, result, 0.0),  # non-zero results (NaN cancels in underflow)
            count(torch.lt, result, fmt.min_normal, magnitude=True),  # zero or subnormal results
            count(torch.gt, x, fmt.max_value, magnitude=fmt.signed),  # beyond max, inf included
            count(torch.le, x, torch.finfo(torch.float32).max, magnitude=True),  # finite inputs
        ]
        if not fmt.signed:
            counts.append(count(torch.lt, x, 0.0))  # out of an unsigned range
        counts.append(torch.ones((), dtype=counts[0].dtype, device=x.device))
        self._counts.addmv_(_count_fields(n, saturate, fmt.signed, self._counts.device),
                            torch.stack(counts).to(device=self._counts.device, dtype=torch.int64))

    def _count_traced(self, x, result, fmt, saturate, n) -> None:
        def count(op, tensor, threshold, magnitude=False):  # int32 sums: 16 lanes per vector, not 8
            return op(tensor.abs() if magnitude else tensor, threshold).sum(dtype=torch.int32)

        nonzero_in = count(torch.ne, x, 0.0)
        nonzero_out = count(torch.ne, result, 0.0)
        zero_or_subnormal = count(torch.lt, result, fmt.min_normal, magnitude=True)
        beyond_max = count(torch.gt, x, fmt.max_value, magnitude=fmt.signed)
        finite = count(torch.le, x, torch.finfo(torch.float32).max, magnitude=True)
        negatives = 0 if fmt.signed else count(torch.lt, x, 0.0)
        self.total.add_(n)
        self.underflow.add_(nonzero_in - nonzero_out - (negatives if saturate else 0))
        self.subnormal.add_(zero_or_subnormal - (n - nonzero_out))
        self.overflow.add_(beyond_max + negatives)
        self.nonfinite.add_(n - finite)


_FLOAT_SUM_EXACT = 2**24  # below this many 1.0s, a float32 sum counts exactly


@functools.lru_cache(maxsize=None)
def _count_fields(n: int, saturate: bool, signed: bool, device: torch.device) -> torch.Tensor:
    """QuantStats.FIELDS as integer combinations of one call's counts: (non-zero inputs,
    non-zero results, zero-or-subnormal results, beyond max, finite inputs[, negative
    inputs when unsigned], 1), for a tensor of n elements."""
    rows = [
        [0, 0, 0, 0, 0, n],  # total
        [0, 0, 0, 1, 0, 0],  # overflow = beyond max (+ negatives)
        [1, -1, 0, 0, 0, 0],  # underflow = non-zero in - non-zero out (- negatives, saturated: they became 0)
        [0, 1, 1, 0, 0, -n],  # subnormal = zero or subnormal - zeros out
        [0, 0, 0, 0, -1, n],  # nonfinite = n - finite
    ]
    if not signed:
        rows = [row[:5] + [negatives] + row[5:] for row, negatives in zip(rows, (0, 1, -1 if saturate else 0, 0, 0))]
    return torch.tensor(rows, dtype=torch.int64, device=device)


def quantize(
    x: torch.Tensor,
    fmt: FloatFormat | str,
    rounding: str = "nearest",
    saturate: bool = True,
    generator: torch.Generator | torch.Tensor | None = None,
    *,
    stats: QuantStats | None = None,
) -> torch.Tensor:
    """Round `x` to the nearest value of `fmt` (float32 result on x's device).

    rounding="nearest": round half to even, exact at ties; "stochastic": one of the two
    neighbours, the upper with probability (x - lower) / step, from `generator` (or the
    global RNG of x's device), or from keys of random_bits.draw_key in its place (what a
    caller compiled whole passes, see random_source). NaN stays NaN, ±0 keep their sign,
    subnormals are kept.
    """
    fmt = get_format(fmt)
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f"rounding must be 'nearest' or 'stochastic', got {rounding!r}")
    source = random_source(generator, x.device) if rounding == "stochastic" else None
    if stats is not None and stats.histogram is not None and fmt.bits > 8:
        raise ValueError(f"{fmt.name}: a code histogram needs a format of at most 8 bits")
    x = x.detach().to(torch.float32).contiguous()
    plan = _plan(fmt)
    cast = plan.cast_dtype is not None and rounding == "nearest" and not torch.compiler.is_compiling()
    if cast:
        # The cast keeps a NaN a NaN, but as -NaN: nan_to_num_ makes every NaN the +NaN that
        # the masked fill below writes, in one pass that costs a fraction of that fill.
        result = x.to(plan.cast_dtype).to(torch.float32).nan_to_num_(math.nan, math.inf, -math.inf)
        scratch = None
    elif plan.int_path:
        result, scratch = _round_bits(x, plan, rounding, source), None
    else:
        result, scratch = _round_magnitude(x, plan, rounding, source)
    if plan.fix_nan and not cast and (plan.int_path or rounding == "stochastic"):
        result.masked_fill_(torch.isnan(x), math.nan)
    if saturate or fmt.specials == "none":
        result.clamp_(-plan.max_value, plan.max_value)
    else:
        result.masked_fill_(result.abs() > plan.max_value, math.inf if fmt.has_inf else math.nan)
    if not plan.int_path or (fmt.has_inf and not saturate):
        result.copysign_(x)
    if not fmt.signed:
        result.masked_fill_(x < 0, 0.0 if saturate else math.nan)
    if stats is not None:
        stats._count(x, result, fmt, saturate, torch.empty_like(x) if scratch is None else scratch)
        if stats.histogram is not None:
            stats.histogram.add_(torch.bincount(_encode_grid_values(result, fmt).flatten().long(), minlength=256))
    return result


def _round_magnitude(x, plan, rounding, source):
    """Narrow formats: returns (|x| rounded, not yet saturated; a free scratch buffer)."""
    magnitude = torch.abs(x)
    bits = magnitude.view(torch.int32)
    if rounding == "nearest":
        c_bits = torch.empty_like(bits)
        if plan.drop == 23:
            # M = 0: the magic constant would round the one tie at the bottom (min / 2) to 0,
            # not away from zero; moving exactly those inputs up by one float32 ulp fixes it.
            torch.eq(bits, plan.c_lo - (1 << 23), out=c_bits)
            bits.add_(c_bits)
        # C = 2^(binade + 23 - M): float32's ulp at C is the format's step at |x|.
        torch.bitwise_and(bits, _EXP_MASK, out=c_bits)
        c_bits.clamp_(plan.c_lo, plan.c_hi).add_(plan.drop << 23)
        c = c_bits.view(torch.float32)
        magnitude.add_(c).sub_(c)
        return magnitude, c
    # Shift the subnormal range up by 2^emin, where float32's step is the format's subnormal
    # step, and back down after the truncation.
    offset = torch.clamp(magnitude, max=plan.min_normal)  # 2^emin where |x| < 2^emin, else 0 (NaN stays NaN)
    offset.sub_(plan.min_normal).sign_().mul_(-plan.min_normal)
    magnitude.add_(offset)
    noise = random_bits(torch.empty_like(bits), plan.drop, source)
    bits.add_(noise).bitwise_and_(~((1 << plan.drop) - 1))
    magnitude.sub_(offset)
    return magnitude, noise.view(torch.float32)


def _round_bits(x, plan, rounding, source):
    """Formats with float32's subnormals: round the signed bit pattern directly."""
    bits = x.view(torch.int32)
    if rounding == "nearest" and plan.drop == 23:  # M = 0: ties up (see module docstring)
        out = bits + (1 << 22)
    elif rounding == "nearest":
        out = torch.bitwise_right_shift(bits, plan.drop).bitwise_and_(1)
        out.add_((1 << (plan.drop - 1)) - 1).add_(bits)
    else:
        out = random_bits(torch.empty_like(bits), plan.drop, source).add_(bits)
    return out.bitwise_and_(~((1 << plan.drop) - 1)).view(torch.float32)


# --- codes -----------------------------------------------------------------------------


def _code_dtype(fmt: FloatFormat) -> torch.dtype:
    return torch.uint8 if fmt.bits <= 8 else torch.int32


def _encode_grid_values(q: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """Codes of values already on the grid (finite within ±max, or the format's specials)."""
    m_bits, e_bits = fmt.man_bits, fmt.exp_bits
    mag = q.abs()
    exponent = torch.frexp(mag)[1] - 1  # floor(log2|q|) for q > 0
    normal = mag >= fmt.min_normal
    exp_field = torch.where(normal, exponent + fmt.bias, torch.zeros_like(exponent))
    # mantissa field: |q| / step - (2^M if normal); exact because q is on the grid
    step_exp = torch.where(normal, exponent, torch.full_like(exponent, fmt.emin)) - m_bits
    man = torch.ldexp(mag.double(), -step_exp.double()).round().long() - torch.where(normal, 2**m_bits, 0)
    code = (exp_field.long() << m_bits) | man
    top = (2**e_bits - 1) << m_bits
    if fmt.has_nan:
        nan_code = top | (2**m_bits - 1) if fmt.specials == "fn" else top | (1 << (m_bits - 1))
        code = torch.where(torch.isnan(q), torch.full_like(code, nan_code), code)
    else:
        code = torch.where(torch.isnan(q), torch.zeros_like(code), code)
    if fmt.has_inf:
        code = torch.where(torch.isinf(q), torch.full_like(code, top), code)
    if fmt.signed:
        code = code | (torch.signbit(q).long() << (e_bits + m_bits))
    return code.to(_code_dtype(fmt))


def encode(x: torch.Tensor, fmt: FloatFormat | str, saturate: bool = True) -> torch.Tensor:
    """Bit patterns of x rounded to nearest-even (uint8 for formats of <= 8 bits, else int32).

    Sign is the top bit of the format's width; narrower formats use the low bits of a byte.
    NaN encodes as the format's NaN (ieee: s 11..1 10..0, fn: s 1..1) or, where the format
    has none, as a zero with the NaN's sign bit (ml_dtypes also gives a zero code there).
    """
    fmt = get_format(fmt)
    return _encode_grid_values(quantize(x, fmt, saturate=saturate), fmt)


def decode(codes: torch.Tensor, fmt: FloatFormat | str) -> torch.Tensor:
    """Float32 values of bit patterns (any integer dtype)."""
    fmt = get_format(fmt)
    c = codes.to(torch.int64)
    m_bits, e_bits = fmt.man_bits, fmt.exp_bits
    man = c & (2**m_bits - 1)
    exp_field = (c >> m_bits) & (2**e_bits - 1)
    normal = exp_field > 0
    significand = torch.where(normal, man + 2**m_bits, man).double()
    exponent = torch.where(normal, exp_field - fmt.bias, torch.full_like(exp_field, fmt.emin)) - m_bits
    value = torch.ldexp(significand, exponent.double())
    top = 2**e_bits - 1
    if fmt.specials == "ieee" and e_bits > 0:
        value = torch.where(exp_field == top, torch.where(man == 0, math.inf, math.nan), value)
    elif fmt.specials == "fn":
        value = torch.where((exp_field == top) & (man == 2**m_bits - 1), math.nan, value)
    if fmt.signed:
        value = torch.where(((c >> (e_bits + m_bits)) & 1).bool(), -value, value)
    return value.to(torch.float32)
