"""QuantizedLinear: a linear layer whose matmuls see weights, activations and gradients
on simulated low-precision grids.

Forward:  y = q_a(x) @ q_w(W)^T + b
Backward: with g = q_g(dL/dy),  dL/dx = g @ q_w(W),  dL/dW = g^T @ q_a(x),  dL/db = sum(g)

Each q is `scaled_quantize` with the operand's own format, scaler and telemetry. The
quantizers are straight-through: the gradients use the quantized operands but do not
differentiate the rounding. The bias stays in high precision (as in FP8 training recipes).
Quantization always runs in float32; the matmuls run in the autocast dtype when autocast
is on, else in the input's dtype.

In eval mode (`module.eval()`) a forward pass uses the scales training would use next but
records nothing: delayed-scaling history, telemetry and the rounding generator are left
as they were, so evaluating never changes the course of a training run.
"""

from __future__ import annotations

import copy
import hashlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from altgrad.quantization import (
    BlockScaling,
    DelayedScaling,
    FloatFormat,
    QuantStats,
    scaled_quantize,
)

from .recipe import PrecisionRecipe


def _layer_seed(name: str, seed: int) -> int:
    """A stable 64-bit seed per layer (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little")


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


class _OperandQuantizer:
    """One operand's format, scaler, rounding and telemetry."""

    def __init__(self, fmt: FloatFormat, scaling, rounding: str, device: torch.device):
        self.fmt, self.scaling, self.rounding = fmt, scaling, rounding
        self.stats = QuantStats(device=device)

    def __call__(self, x: torch.Tensor, generator: torch.Generator, record: bool) -> torch.Tensor:
        if record:
            return scaled_quantize(x, self.fmt, self.scaling, self.rounding, generator, self.stats)
        return scaled_quantize(x, self.fmt, self.scaling, self.rounding, generator, record=False)

    def to(self, device: torch.device) -> None:
        if isinstance(self.scaling, DelayedScaling):
            self.scaling.to(device)
        stats = QuantStats(device=device)
        stats.load_state_dict(self.stats.state_dict())
        self.stats = stats

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        state = {"stats": self.stats.state_dict()}
        if isinstance(self.scaling, DelayedScaling):
            state["scaling"] = self.scaling.state_dict()
        return state

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        self.stats.load_state_dict(state["stats"])
        if isinstance(self.scaling, DelayedScaling):
            self.scaling.load_state_dict(state["scaling"])


class _QuantizedLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, layer):
        dtype = _compute_dtype(x)
        record = layer.training
        # Not recording: draw from a throwaway copy, so the layer's stream does not advance.
        ctx.generator = layer.generator if record else copy.deepcopy(layer.generator)
        xq = layer._quantize("activation", x, ctx.generator, record).to(dtype)
        wq = layer._quantize("weight", weight, ctx.generator, record).to(dtype)
        ctx.save_for_backward(xq, wq)
        ctx.layer, ctx.record = layer, record
        ctx.x_dtype, ctx.weight_dtype = x.dtype, weight.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return F.linear(xq, wq, None if bias is None else bias.to(dtype))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        xq, wq = ctx.saved_tensors
        g = ctx.layer._quantize("gradient", grad_out, ctx.generator, ctx.record).to(xq.dtype)
        g2d = g.reshape(-1, g.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ wq).to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            grad_w = (g2d.t() @ xq.reshape(-1, xq.shape[-1])).to(ctx.weight_dtype)
        if ctx.needs_input_grad[2]:
            grad_b = g2d.sum(0).to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b, None


class QuantizedLinear(nn.Module):
    """A drop-in nn.Linear that quantizes its operands per a `PrecisionRecipe`.

    It holds the *same* weight and bias Parameter objects as the layer it was built from,
    so optimizers, weight tying and state_dict keys are unchanged. Its scalers, telemetry
    and rounding generator are saved as the module's extra state (tensors only, loadable
    with `torch.load(weights_only=True)`), so a checkpoint resumes exactly.

    `layer_name` and `seed` seed the stochastic-rounding generator: a layer gets the same
    random stream in every run with the same name and seed.
    """

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None, recipe: PrecisionRecipe,
                 layer_name: str = "", seed: int = 0):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.weight = weight
        self.register_parameter("bias", bias)
        self.recipe, self.layer_name = recipe, layer_name
        self.seed = _layer_seed(layer_name, seed)
        device = weight.device
        self.quantizers = {
            op: _OperandQuantizer(fmt, recipe.make_scaler(fmt, device), recipe.rounding_for(op), device)
            for op, fmt in recipe.formats.items()
            if fmt is not None
        }
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(self.seed)

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe: PrecisionRecipe, layer_name: str = "",
                    seed: int = 0) -> QuantizedLinear:
        return cls(linear.weight, linear.bias, recipe, layer_name, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.quantizers:
            return F.linear(x, self.weight, self.bias)
        return _QuantizedLinearFunction.apply(x, self.weight, self.bias, self)

    def _quantize(self, operand: str, x: torch.Tensor, generator: torch.Generator, record: bool) -> torch.Tensor:
        quantizer = self.quantizers.get(operand)
        return x if quantizer is None else quantizer(x, generator, record)

    def set_weight_format(self, fmt: FloatFormat) -> None:
        """Move the weight to another format (the emergency mantissa shift), fresh scaler."""
        if "weight" not in self.quantizers:
            raise ValueError(f"{self.layer_name or 'this layer'}: the weight is not quantized")
        device = self.weight.device
        self.quantizers["weight"] = _OperandQuantizer(fmt, self.recipe.make_scaler(fmt, device),
                                                      self.recipe.rounding_for("weight"), device)

    # --- geometry for the optimizers ----------------------------------------------------

    @property
    def weight_format(self) -> FloatFormat | None:
        """The weight's format, or None when the weight is not quantized."""
        quantizer = self.quantizers.get("weight")
        return None if quantizer is None else quantizer.fmt

    def weight_scale(self) -> torch.Tensor:
        """The multiplier the next forward will use for the weight: grid value = weight * scale.

        A scalar tensor for per-tensor scaling; for block scaling one value per element
        (weight's shape). Current and block scales depend on the weight itself, so they
        are computed from the weight as it is now. Reads state without changing it.
        """
        quantizer = self.quantizers.get("weight")
        if quantizer is None:
            raise ValueError(f"{self.layer_name or 'this layer'}: the weight is not quantized")
        weight = self.weight.detach()
        if quantizer.scaling is None:
            return torch.ones((), device=weight.device)
        if isinstance(quantizer.scaling, BlockScaling):
            return quantizer.scaling.expand(quantizer.scaling.scale(weight), weight.shape)
        return quantizer.scaling.peek(weight)

    # --- telemetry ------------------------------------------------------------------------

    def telemetry(self) -> dict[str, float]:
        """{"weight.overflow_rate": ..., "gradient.underflow_rate": ...} since the last reset.

        One entry per quantized operand and QuantStats rate (overflow, underflow,
        subnormal, nonfinite); reading syncs with the device.
        """
        return {f"{op}.{metric}": value for op, q in self.quantizers.items() for metric, value in q.stats.rates().items()}

    def reset_telemetry(self) -> None:
        for quantizer in self.quantizers.values():
            quantizer.stats.reset()

    # --- state --------------------------------------------------------------------------

    def get_extra_state(self) -> dict:
        return {"generator": self.generator.get_state(), **{op: q.state_dict() for op, q in self.quantizers.items()}}

    def set_extra_state(self, state: dict) -> None:
        saved = sorted(set(state) - {"generator"})
        if saved != sorted(self.quantizers):
            raise ValueError(
                f"{self.layer_name or 'QuantizedLinear'}: the checkpoint quantizes {saved or 'nothing'}, "
                f"this layer quantizes {sorted(self.quantizers) or 'nothing'} (the precision recipe changed)"
            )
        for op, quantizer in self.quantizers.items():
            quantizer.load_state_dict(state[op])
        try:
            self.generator.set_state(state["generator"].cpu())
        except RuntimeError as error:
            raise ValueError(
                f"{self.layer_name or 'QuantizedLinear'}: the checkpoint's rounding generator state does not fit "
                f"a {self.generator.device.type} generator (saved on another device type?): {error}"
            ) from None

    def _apply(self, fn, recurse=True):
        """Moves follow the weight: scalers and telemetry go to its device."""
        super()._apply(fn, recurse)
        device = self.weight.device
        for quantizer in self.quantizers.values():
            quantizer.to(device)
        if self.generator.device.type != device.type:
            # Generator states are device-specific: a moved layer restarts its stream.
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(self.seed)
        return self

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {self.recipe}")
