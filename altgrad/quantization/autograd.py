"""Differentiable quantization: straight-through estimators and a scale-aware dequantize."""

from __future__ import annotations

import torch

from .formats import FloatFormat, get_format
from .quantize import QuantStats
from .scaling import Scaling, scaled_quantize


class _FakeQuantize(torch.autograd.Function):
    """y = dequantize(quantize(x * s)) with a straight-through gradient.

    dx = dy (the scale cancels between quantize and dequantize). With `clip=True` the
    gradient is zeroed where x * s fell outside ±max: those inputs were saturated, so
    moving them does not move the output.
    """

    @staticmethod
    def forward(ctx, x, fmt, scaling, rounding, generator, stats, clip):
        y, s = scaled_quantize(x, fmt, scaling, rounding, generator, stats, return_scale=True)
        ctx.clip = clip
        if clip:
            ctx.save_for_backward((x.detach().float() * s).abs() > fmt.max_value)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        if ctx.clip:
            (saturated,) = ctx.saved_tensors
            dy = dy.masked_fill(saturated, 0.0)
        return dy, None, None, None, None, None, None


def fake_quantize(
    x: torch.Tensor,
    fmt: FloatFormat | str,
    scaling: Scaling | None = None,
    rounding: str = "nearest",
    generator: torch.Generator | None = None,
    stats: QuantStats | None = None,
    clip: bool = False,
) -> torch.Tensor:
    """Quantize-dequantize with a straight-through gradient (clipped at saturation if asked)."""
    return _FakeQuantize.apply(x, get_format(fmt), scaling, rounding, generator, stats, clip)


class _Dequantize(torch.autograd.Function):
    """x = q / scale; the gradient w.r.t. q is dy / scale (the scale itself is not learned)."""

    @staticmethod
    def forward(ctx, q, scale):
        ctx.save_for_backward(scale)
        return q / scale

    @staticmethod
    def backward(ctx, dy):
        (scale,) = ctx.saved_tensors
        return dy / scale, None


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Values from scaled codes' values: q / scale, differentiable in q."""
    return _Dequantize.apply(q, torch.as_tensor(scale, dtype=q.dtype, device=q.device))
