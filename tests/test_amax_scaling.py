"""Amax scaling leaves no more underflow than each format's own dynamic range implies.

The bound. A scaler maps amax onto the format's max: exactly (s = max / amax) or within a
factor 2 (pow2: s = 2^floor(log2(max / amax)) > max / (2 amax)). So an input with

    |x| >= 2 * min_subnormal * amax / max_value

lands at |x * s| >= min_subnormal (up to float32's rounding of s, far below the factor 2
to spare), and no rounding takes a value at or above the smallest step to zero: round to
nearest keeps everything above min_subnormal / 2, stochastic rounding's lower neighbour is
at least min_subnormal. MX block scaling maps each block's amax into the element format's
top binade, s = 2^(emax - floor(log2 block amax)) >= 2^emax / amax, so there the threshold
is min_subnormal * block amax / 2^emax, per block. Hence the inputs that become zero are
among the non-zero inputs below the threshold (computed from the tensor itself), and the
underflow rate the telemetry reports is at most their fraction. An unscaled operand (a
format with float32's exponent range in a recipe gets no scaler) has the plain bound
|x| >= min_subnormal.
"""

import math

import pytest
import torch
import torch.nn as nn

from altgrad.nn import PrecisionRecipe, QuantizedLinear
from altgrad.quantization import (
    FORMAT_NAMES,
    BlockScaling,
    CurrentScaling,
    DelayedScaling,
    QuantStats,
    get_format,
    scaled_quantize,
)

STDS = (1e-7, 1e-5, 1e-3, 1e-1, 1.0, 1e3)
BLOCK = 32


def gaussian(shape, std, fmt, seed=0):
    """Gaussian values of the given std; |x| for an unsigned format (e8m0)."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * std
    return x if fmt.signed else x.abs()


def threshold(x, fmt, scaling):
    """Per element of x (float64): the magnitude from which the scaling guarantees a non-zero result."""
    magnitude = x.detach().double().abs()
    if scaling is None:
        return torch.full_like(magnitude, fmt.min_subnormal)
    if isinstance(scaling, BlockScaling):
        n = x.shape[-1]
        padded = nn.functional.pad(magnitude, (0, -n % BLOCK))
        amax = padded.reshape(*x.shape[:-1], -1, BLOCK).amax(-1, keepdim=True)
        emax = math.frexp(fmt.max_value)[1] - 1
        per_block = (fmt.min_subnormal * amax * 2.0**-emax).expand(*x.shape[:-1], -1, BLOCK)
        return per_block.reshape(*x.shape[:-1], -1)[..., :n]
    return (2 * fmt.min_subnormal * magnitude.amax() / fmt.max_value).expand_as(magnitude)


def below_threshold(x, fmt, scaling):
    """Non-zero inputs that the bound allows to become zero."""
    return (x != 0) & (x.detach().double().abs() < threshold(x, fmt, scaling))


def assert_underflow_within_bound(x, y, stats, fmt, scaling):
    allowed = below_threshold(x, fmt, scaling)
    underflowed = (x != 0) & (y == 0) & ((x > 0) | fmt.signed)  # unsigned: a negative input is overflow
    assert not (underflowed & ~allowed).any(), (x[underflowed & ~allowed][:5], float(threshold(x, fmt, scaling).max()))
    assert stats.counts()["underflow"] == int(underflowed.sum())
    assert stats.rates()["underflow_rate"] <= allowed.double().mean().item()


SCALERS = {
    "current": lambda fmt: CurrentScaling(fmt),
    "current-pow2": lambda fmt: CurrentScaling(fmt, pow2=True),
    "delayed": lambda fmt: DelayedScaling(fmt),
    "delayed-pow2": lambda fmt: DelayedScaling(fmt, pow2=True),
    "block": lambda fmt: BlockScaling(fmt, block_size=BLOCK),
}


@pytest.mark.parametrize("kind", SCALERS)
@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_scaled_quantize_underflows_no_more_than_the_format_range_implies(name, kind):
    fmt = get_format(name)
    for rounding in ("nearest", "stochastic"):
        for std in STDS:
            x = gaussian((64, 256), std, fmt)
            scaling = SCALERS[kind](fmt)
            # delayed: the first call scales by this tensor's amax, the second by the history's (the same)
            for _ in range(2 if kind.startswith("delayed") else 1):
                stats = QuantStats()
                y = scaled_quantize(x, fmt, scaling, rounding, generator=torch.Generator().manual_seed(1), stats=stats)
                assert_underflow_within_bound(x, y, stats, fmt, scaling)


@pytest.mark.parametrize("scaling", ["delayed", "current", "block"])
@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_quantized_linear_operands_underflow_no_more_than_the_format_range_implies(name, scaling):
    # weights and inputs of std 1e-7, an upstream gradient of std 1e-12: telemetry must respect the bound
    fmt = get_format(name)
    recipe = PrecisionRecipe(weight=name, activation=name, gradient=name, scaling=scaling, scale_block=BLOCK)
    linear = nn.Linear(64, 48)
    with torch.no_grad():
        linear.weight.copy_(gaussian((48, 64), 1e-7, fmt, seed=1))
    layer = QuantizedLinear.from_linear(linear, recipe)
    x = gaussian((8, 64), 1e-7, fmt, seed=2)
    grad_out = gaussian((8, 48), 1e-12, fmt, seed=3)
    layer(x).backward(grad_out)
    telemetry = layer.telemetry()
    for operand, tensor in (("weight", linear.weight), ("activation", x), ("gradient", grad_out)):
        allowed = below_threshold(tensor, fmt, layer.quantizers[operand].scaling).double().mean().item()
        assert telemetry[f"{operand}.underflow_rate"] <= allowed, (operand, telemetry[f"{operand}.underflow_rate"], allowed)
