"""Formats that quantize identically: one format under two names.

Under amax scaling a format is used as q(x) = quantize(x * s) / s, and every scale is the
format's max over a function of the data: s = max / (amax * 2^margin) (current, delayed),
the same rounded down to a power of two (pow2), or MX's 2^(emax - floor(log2 block amax))
with emax the exponent of max. Take formats A and B whose finite grids differ by one
factor c: grid(B) = c * grid(A). c is a power of two 2^k (each grid's smallest positive
value is one). Then max_B = 2^k max_A, so s_B = 2^k s_A exactly for every kind of scale
and every amax, and x * s_B = 2^k (x * s_A) exactly. Rounding commutes with 2^k: the value
of grid(B) nearest 2^k y is 2^k times the value of grid(A) nearest y, and a tie goes the
same way in both, to the even code (code i is the i-th magnitude of the grid, so equal
grids mean equal codes), or away from zero in both when neither has mantissa bits. Hence
quantize_B(x s_B) / s_B = 2^k quantize_A(x s_A) / (2^k s_A): the same float32 number,
bit for bit. The bias only places the grid, and amax scaling re-places it, so:

under "delayed", "current" or "block", A and B quantize identically iff
  * their finite grids are equal up to one power-of-two factor,
  * they have the same signedness (an unsigned format clamps negatives to zero),
  * the same specials (has_inf, has_nan: what saturate=False, encode and decode make of
    overflow, inf and NaN), and the same tie rule (both or neither without mantissa bits);
under "none" (s = 1 for both) the grids must be identical, the rest as above.

E1M6 (bias 0, step 1/32) and E0M7 (bias 1, step 1/128) are such a pair: e1m6 = 4 x e0m7.
A format with float32's exponent range (bf16, e8m0) gets no scaler under any kind
(make_scaling), so it compares as under "none".

Where the identity stops holding, rare by construction:
  * scale clamping: scales are clamped to [2^-126, 2^126] (MX exponents to [-127, 127]);
    when one format's scale is clamped and the other's is not, s_B != 2^k s_A;
  * the fallback scale 1: an amax of 0, inf or NaN before any usable one (a non-finite MX
    block) scales both formats by 1, which does not align their grids;
  * stochastic rounding picks the same two neighbours with the same probabilities, but
    consumes 23 - M random bits per value, so formats with different M are equal in
    distribution, not draw for draw (e1m6 and e0m7 are).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

from .formats import FloatFormat, get_format
from .scaling import SCALING_KINDS


@functools.cache
def _signature(fmt: FloatFormat, scaled: bool) -> tuple:
    """What quantization under the rule above sees of fmt: equal signatures, equal results."""
    magnitudes = fmt.grid().double()
    magnitudes = magnitudes[magnitudes >= 0]
    if scaled:  # divide out the grid's placement: its max's binade becomes [1, 2)
        magnitudes = magnitudes * 2.0 ** (1 - math.frexp(fmt.max_value)[1])
    return fmt.signed, fmt.has_inf, fmt.has_nan, fmt.man_bits == 0, tuple(magnitudes.tolist())


def _key(fmt: FloatFormat | str, scaling: str) -> tuple:
    if scaling not in SCALING_KINDS:
        raise ValueError(f"unknown scaling {scaling!r}; valid: {', '.join(SCALING_KINDS)}")
    fmt = get_format(fmt)
    return _signature(fmt, scaling != "none" and not fmt.has_float32_exponents)


def equivalent(a: FloatFormat | str, b: FloatFormat | str, scaling: str) -> bool:
    """True when `a` and `b` quantize every tensor identically under `scaling` (a
    make_scaling kind: delayed, current, block, none), by the rule in the module docstring."""
    return _key(a, scaling) == _key(b, scaling)


def equivalence_classes(formats: Iterable[FloatFormat | str], scaling: str) -> list[tuple[str, ...]]:
    """`formats` (registry names or FloatFormats) grouped into classes of equivalent ones, as
    names: classes in order of their first member, members in the given order; a format
    equivalent to no other is a class of one."""
    classes: dict[tuple, list[str]] = {}
    for fmt in formats:
        classes.setdefault(_key(fmt, scaling), []).append(get_format(fmt).name)
    return [tuple(members) for members in classes.values()]
