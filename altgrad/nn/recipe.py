"""Precision recipes (which format each operand of a matmul uses) and per-layer rules."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, fields

import torch

from altgrad.quantization import SCALING_KINDS, FloatFormat, get_format, make_scaling

OPERANDS = ("weight", "activation", "gradient")
ROUNDINGS = ("nearest", "stochastic")


@dataclass(frozen=True)
class PrecisionRecipe:
    """How one linear layer is quantized.

    `weight`, `activation` and `gradient` name each operand's format, or None (the default):
    leave that operand alone, in the dtype it comes in. A hybrid recipe (E4M3 forward, E5M2
    backward) is just different names. "bf16" is a format like the others: the all-bf16
    recipe is the baseline, its operands rounded to bfloat16 by the same simulation on
    every device (with no amax scaler: bf16 has float32's exponent range, see
    altgrad.quantization.make_scaling). `gradient` is the gradient flowing into the
    layer's output (grad_out); the weight and input gradients are computed from it. The
    scaling fields configure one scaler per operand; `rounding` applies to weights and
    activations, `grad_rounding` to gradients (stochastic by default, so updates far below
    one grid step still survive in expectation).
    """

    weight: str | FloatFormat | None = None
    activation: str | FloatFormat | None = None
    gradient: str | FloatFormat | None = None
    scaling: str = "delayed"
    amax_history: int = 16
    amax_algo: str = "max"
    margin: int = 0
    pow2_scales: bool = True
    rounding: str = "nearest"
    grad_rounding: str = "stochastic"
    scale_block: int = 32

    def __post_init__(self) -> None:
        for operand in OPERANDS:
            name = getattr(self, operand)
            if name is not None:
                get_format(name)  # raises with the list of valid formats
        for field_name, value, valid in (
            ("scaling", self.scaling, SCALING_KINDS),
            ("amax_algo", self.amax_algo, ("max", "most_recent")),
            ("rounding", self.rounding, ROUNDINGS),
            ("grad_rounding", self.grad_rounding, ROUNDINGS),
        ):
            if value not in valid:
                raise ValueError(f"{field_name} must be one of {', '.join(valid)}; got {value!r}")
        for field_name, low in (("amax_history", 1), ("margin", 0), ("scale_block", 1)):
            if getattr(self, field_name) < low:
                raise ValueError(f"{field_name} must be >= {low}; got {getattr(self, field_name)}")

    @classmethod
    def from_config(cls, precision, recipe_override=None) -> PrecisionRecipe:
        """From a `PrecisionConfig`; a rule's `Recipe` replaces the formats it sets (non-null).

        Duck-typed on the field names so that altgrad.nn does not import altgrad.training.
        """
        def operand_format(operand):
            override = getattr(recipe_override, operand, None)
            return getattr(precision, operand) if override is None else override

        shared = {f.name: getattr(precision, f.name) for f in fields(cls) if f.name not in OPERANDS}
        return cls(**{op: operand_format(op) for op in OPERANDS}, **shared)

    @property
    def formats(self) -> dict[str, FloatFormat | None]:
        """Operand -> FloatFormat, or None where the operand is left alone."""
        return {op: None if getattr(self, op) is None else get_format(getattr(self, op)) for op in OPERANDS}

    @property
    def is_identity(self) -> bool:
        """True when no operand is quantized: a layer with this recipe is an nn.Linear."""
        return all(fmt is None for fmt in self.formats.values())

    def rounding_for(self, operand: str) -> str:
        return self.grad_rounding if operand == "gradient" else self.rounding

    def make_scaler(self, fmt: FloatFormat, device: torch.device | None = None):
        """A fresh scaler for one operand (None when scaling is "none" or fmt has float32's exponents)."""
        return make_scaling(self.scaling, fmt, history_len=self.amax_history, algo=self.amax_algo, margin=self.margin,
                            pow2=self.pow2_scales, block_size=self.scale_block, device=device)

    def __str__(self) -> str:
        formats = " ".join(f"{op}={fmt.name if fmt else 'unquantized'}" for op, fmt in self.formats.items())
        return f"{formats} scaling={self.scaling}"


@dataclass(frozen=True)
class PrecisionRule:
    """Linear layers whose qualified module name matches `pattern` get `recipe`.

    `recipe=None` keeps the matching layers in high precision. `pattern` is an fnmatch
    glob (case-sensitive) that must match the whole name, e.g.
    "transformer.h.0.attn.c_attn". `*` matches any run of characters, dots included, so
    "*.mlp.*" is every MLP linear of every block and "transformer.h.0.*" every linear of
    block 0; `?` matches one character and `[01]` one of a set. In `quantize_model` the
    rules are tried in order and the first match wins.
    """

    pattern: str
    recipe: PrecisionRecipe | None

    def matches(self, name: str) -> bool:
        return fnmatch.fnmatchcase(name, self.pattern)
