"""Small floating-point formats: their layout, their values, and the registry of named ones.

A format is sign (optional) + `exp_bits` exponent + `man_bits` mantissa bits. A code with
exponent field e and mantissa field m is worth

    e == 0:  m * 2^(emin - M)                (subnormal; emin = 1 - bias)
    e >= 1:  (1 + m / 2^M) * 2^(e - bias)     (normal)

and `specials` says what the top of the code space means:

    "ieee"  the all-ones exponent holds inf (m == 0) and NaN (m != 0), like E5M2;
    "fn"    finite: only the all-ones code (exponent and mantissa) is NaN, like OCP E4M3;
    "none"  every code is a finite number (no inf, no NaN), like OCP FP6/FP4.

Every value is simulated in float32, so a format must fit inside float32's range and
precision: exp_bits <= 8, man_bits <= 23, and its smallest step no finer than 2^-149.
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass, field
from typing import Callable, TypeVar

import torch

T = TypeVar("T")

SPECIALS = ("ieee", "fn", "none")


@dataclass(frozen=True)
class FloatFormat:
    """A sign/exponent/mantissa format; see the module docstring for the value rule.

    `bias` defaults to 2^(E-1) - 1 (IEEE style); for E = 0 (pure fixed point) it defaults
    to 1, which makes the step 2^-M and the range [-(1 - 2^-M), 1 - 2^-M].
    """

    exp_bits: int
    man_bits: int
    bias: int | None = None
    specials: str = "ieee"
    signed: bool = True
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.exp_bits, int) or self.exp_bits < 0:
            problems.append(f"exp_bits must be a non-negative int, got {self.exp_bits!r}")
        if not isinstance(self.man_bits, int) or self.man_bits < 0:
            problems.append(f"man_bits must be a non-negative int, got {self.man_bits!r}")
        if self.specials not in SPECIALS:
            problems.append(f"specials must be one of {SPECIALS}, got {self.specials!r}")
        if problems:
            raise ValueError("; ".join(problems))
        if self.exp_bits + self.man_bits + int(self.signed) > 16:
            raise ValueError(
                f"E{self.exp_bits}M{self.man_bits} with{'' if self.signed else 'out'} sign needs "
                f"{self.exp_bits + self.man_bits + int(self.signed)} bits; at most 16 are supported"
            )
        if self.exp_bits + self.man_bits == 0:
            raise ValueError("a format needs at least one exponent or mantissa bit")
        if self.bias is None:
            object.__setattr__(self, "bias", 2 ** (self.exp_bits - 1) - 1 if self.exp_bits else 1)
        if not self.name:
            object.__setattr__(self, "name", self._default_name())
        if self.exp_bits > 8 or self.man_bits > 23:
            raise ValueError(f"{self.name}: float32 simulation needs exp_bits <= 8 and man_bits <= 23")
        if self.max_value <= 0:
            raise ValueError(f"{self.name}: specials={self.specials!r} leaves no finite non-zero value")
        if self.emin - self.man_bits < -149 or self.max_value > torch.finfo(torch.float32).max:
            raise ValueError(f"{self.name}: range does not fit in float32 (bias {self.bias})")

    def _default_name(self) -> str:
        suffix = {"ieee": "", "fn": "fn", "none": "fn-nonan"}[self.specials]
        return f"{'' if self.signed else 'u'}e{self.exp_bits}m{self.man_bits}{suffix}_b{self.bias}"

    # --- layout -------------------------------------------------------------------------
    @property
    def bits(self) -> int:
        return self.exp_bits + self.man_bits + int(self.signed)

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal number (and the subnormals' shared exponent)."""
        return 1 - self.bias

    @property
    def _top_field(self) -> int:
        return 2**self.exp_bits - 1

    def _max_code_fields(self) -> tuple[int, int]:
        """(exponent field, mantissa field) of the largest finite magnitude."""
        top, full = self._top_field, 2**self.man_bits - 1
        if self.specials == "none" or self.exp_bits == 0:
            return top, full
        if self.specials == "ieee":
            return top - 1, full
        # "fn": only the all-ones code is NaN
        return (top, full - 1) if self.man_bits > 0 else (top - 1, 0)

    # --- derived values -----------------------------------------------------------------
    def value_of(self, exp_field: int, man_field: int) -> float:
        """The magnitude a (finite) exponent/mantissa field pair encodes."""
        if exp_field == 0:
            return math.ldexp(man_field, self.emin - self.man_bits)
        return math.ldexp(2**self.man_bits + man_field, exp_field - self.bias - self.man_bits)

    @property
    def max_value(self) -> float:
        """Largest finite value."""
        e, m = self._max_code_fields()
        if e < 0 or (e == 0 and m == 0):
            return 0.0
        return self.value_of(e, m)

    @property
    def min_normal(self) -> float:
        """2^emin. For E = 0 formats there are no normals: every non-zero value is below it."""
        return math.ldexp(1.0, self.emin)

    @property
    def min_subnormal(self) -> float:
        """Smallest positive value (equals min_normal when man_bits = 0)."""
        return math.ldexp(1.0, self.emin - self.man_bits)

    @property
    def has_float32_exponents(self) -> bool:
        """True when the normal binades are float32's, 2^-126 up to 2^127 (bf16, e8m0): the
        format holds every float32 magnitude's exponent, so amax scaling has nothing to fit."""
        return self.emin == -126 and math.frexp(self.max_value)[1] - 1 == 127

    @property
    def has_inf(self) -> bool:
        return self.specials == "ieee" and self.exp_bits > 0

    @property
    def has_nan(self) -> bool:
        return self.specials == "fn" or (self.specials == "ieee" and self.exp_bits > 0 and self.man_bits > 0)

    def grid(self) -> torch.Tensor:
        """Every distinct finite value, sorted ascending, float32 (one zero; negatives if signed)."""
        max_e, max_m = self._max_code_fields()
        mags = [
            self.value_of(e, m)
            for e in range(max_e + 1)
            for m in range(2**self.man_bits)
            if (e, m) <= (max_e, max_m)
        ]
        pos = torch.tensor(sorted(set(mags)), dtype=torch.float64)
        vals = torch.cat([-pos.flip(0)[:-1], pos]) if self.signed else pos
        return vals.to(torch.float32)

    @property
    def num_finite(self) -> int:
        """Number of distinct finite values (len(grid()); +0 and -0 count once)."""
        e, m = self._max_code_fields()
        positives = e * 2**self.man_bits + m  # codes 1 .. max code, all distinct and > 0
        return 2 * positives + 1 if self.signed else positives + 1

    def ulp(self, x: torch.Tensor | float) -> torch.Tensor:
        """Spacing of the grid at |x|: 2^(max(floor(log2|x|), emin) - M), capped at max's binade."""
        x = torch.as_tensor(x, dtype=torch.float32)
        exponent = torch.frexp(x.abs())[1] - 1  # floor(log2|x|) for x != 0
        top = max(math.frexp(self.max_value)[1] - 1, self.emin)  # E = 0: one step everywhere
        exponent = torch.where(x == 0, self.emin, exponent).clamp(self.emin, top)
        return torch.ldexp(torch.ones_like(x), exponent - self.man_bits)

    def __str__(self) -> str:
        return self.name


def per_format_constants(derive: Callable[[FloatFormat], T]) -> Callable[[FloatFormat], T]:
    """Cache `derive(fmt)` per format; under torch.compile, its result is a trace-time constant.

    Kernels look their per-format constants up on every call, so eager calls must hit a cache.
    Traced, dynamo must not look inside: once one compiled function has seen two formats it
    turns their int fields into symbols, which math.frexp and friends reject. Dynamo traces
    through an lru_cache wrapper, so the cached function is hidden behind a plain one that
    is marked constant.
    """
    cached = functools.lru_cache(maxsize=None)(derive)

    @functools.wraps(derive)
    def constants(fmt: FloatFormat) -> T:
        return cached(fmt)

    return _assume_constant_result(constants)


def _assume_constant_result(fn: Callable[..., T]) -> Callable[..., T]:
    """torch.compiler.assume_constant_result(fn), without importing the compiler at import time.

    The public call imports torch._dynamo (and sympy with it): ~0.9 s of every process that
    imports altgrad, though most never compile. All it does is set the attribute below, which
    dynamo reads when it meets the call; a test checks that the public call still marks a
    function exactly so. Once the compiler is loaded anyway, the public call is used.
    """
    if "torch._dynamo" in sys.modules:
        return torch.compiler.assume_constant_result(fn)
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn


def _registry() -> dict[str, FloatFormat | None]:
    return {
        # bfloat16 (E8M7, bias 127): the baseline. A recipe's bf16 operands are rounded to it by
        # the same simulation as every other format (no amax scaler: float32's exponent range).
        "bf16": FloatFormat(8, 7, specials="ieee", name="bf16"),
        "e5m2": FloatFormat(5, 2, specials="ieee", name="e5m2"),
        # OCP E4M3 (max 448): the all-ones code is NaN, no inf.
        "e4m3": FloatFormat(4, 3, specials="fn", name="e4m3"),
        # Not ml_dtypes' float8_e3m4 (bias 3, IEEE specials, max 15.5): bias 1 and no specials,
        # so the range is 2^-4 = 0.0625 ... 124, as the research plan decided.
        "e3m4": FloatFormat(3, 4, bias=1, specials="none", name="e3m4"),
        "e2m5": FloatFormat(2, 5, specials="none", name="e2m5"),  # bias 1: 1/32 ... 7.875
        "e1m6": FloatFormat(1, 6, specials="none", name="e1m6"),  # bias 0: uniform step 1/32, max 127/32
        "e0m7": FloatFormat(0, 7, specials="none", name="e0m7"),  # fixed point: step 1/128, max 127/128
        "e7m0": FloatFormat(7, 0, specials="none", name="e7m0"),  # zero and ±2^-62 ... 2^64
        # MX scale format: unsigned powers of two, 0xFF = NaN. Unlike OCP E8M0 (and ml_dtypes'
        # float8_e8m0fnu), code 0 here means zero, not 2^-127: one value rule for every format.
        "e8m0": FloatFormat(8, 0, specials="fn", signed=False, name="e8m0"),
    }


FORMATS: dict[str, FloatFormat] = _registry()
FORMAT_NAMES: tuple[str, ...] = tuple(FORMATS)


def get_format(name: str | FloatFormat) -> FloatFormat:
    """Registry lookup by lower-case name (a FloatFormat passes through unchanged)."""
    if isinstance(name, FloatFormat):
        return name
    try:
        return FORMATS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown format {name!r}; valid formats: {', '.join(FORMAT_NAMES)}") from None
