"""Quantized layers and model surgery: the numerics of altgrad.quantization as nn.Modules.

    recipe = PrecisionRecipe(weight="e4m3", activation="e4m3", gradient="e5m2")
    report = quantize_model(model, recipe, rules=[LayerRule("*.mlp.c_proj", None)])
    print(report)
    geometry = weight_formats(model)        # Parameter -> (FloatFormat, scale_fn)
    metrics = collect_telemetry(model)      # {"quant.gradient.overflow_rate": ..., ...}
"""

from .linear import QuantizedLinear
from .recipe import OPERANDS, LayerRule, PrecisionRecipe
from .surgery import (
    LayerPrecision,
    QuantizationReport,
    collect_telemetry,
    quantize_model,
    quantized_layers,
    weight_formats,
)

__all__ = [
    "OPERANDS",
    "LayerPrecision",
    "LayerRule",
    "PrecisionRecipe",
    "QuantizationReport",
    "QuantizedLinear",
    "collect_telemetry",
    "quantize_model",
    "quantized_layers",
    "weight_formats",
]
