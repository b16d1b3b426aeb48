"""The numerics core: any small float format, simulated bit-exactly in float32 (torch only)."""

from .autograd import dequantize, fake_quantize
from .formats import FORMAT_NAMES, FORMATS, FloatFormat, get_format, is_passthrough
from .quantize import QuantStats, decode, encode, quantize
from .scaling import (
    BlockScaling,
    CurrentScaling,
    DelayedScaling,
    make_scaling,
    scaled_quantize,
)

__all__ = [
    "FORMAT_NAMES",
    "FORMATS",
    "BlockScaling",
    "CurrentScaling",
    "DelayedScaling",
    "FloatFormat",
    "QuantStats",
    "decode",
    "dequantize",
    "encode",
    "fake_quantize",
    "get_format",
    "is_passthrough",
    "make_scaling",
    "quantize",
    "scaled_quantize",
]
