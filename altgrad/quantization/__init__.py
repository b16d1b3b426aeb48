"""The numerics core: any small float format, simulated bit-exactly in float32 (torch only)."""

from .autograd import dequantize, fake_quantize
from .equivalence import equivalence_classes, equivalent
from .formats import FORMAT_NAMES, FORMATS, FloatFormat, get_format
from .quantize import QuantStats, decode, encode, quantize
from .scaling import (
    SCALING_KINDS,
    BlockScaling,
    CurrentScaling,
    DelayedScaling,
    make_scaling,
    scaled_quantize,
)

__all__ = [
    "FORMATS",
    "FORMAT_NAMES",
    "SCALING_KINDS",
    "BlockScaling",
    "CurrentScaling",
    "DelayedScaling",
    "FloatFormat",
    "QuantStats",
    "decode",
    "dequantize",
    "encode",
    "equivalence_classes",
    "equivalent",
    "fake_quantize",
    "get_format",
    "make_scaling",
    "quantize",
    "scaled_quantize",
]
