"""Precision recipes (which format each operand of a matmul uses) and per-layer rules.

:class:`PrecisionRecipe` declares its settings once, for two readers: its own checks
(``__post_init__``) and the run config (altgrad.training.config.PrecisionConfig is a
PrecisionRecipe with narrower operands and per-layer rules), whose validator reads the same
types, bounds (field metadata ``bounds``) and documentation (field metadata ``doc``).
"""

from __future__ import annotations

import fnmatch
import functools
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch

from altgrad.quantization import SCALING_KINDS, FloatFormat, get_format, make_scaling

OPERANDS = ("weight", "activation", "gradient")
ScalingKind = Literal[SCALING_KINDS]  # type: ignore[valid-type]
AmaxAlgo = Literal["max", "most_recent"]
Rounding = Literal["nearest", "stochastic"]
_OPS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
        "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def setting(default: Any, doc: str, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None) -> Any:
    """A dataclass field with its documentation and the numeric bounds validation enforces."""
    bounds = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt).items() if v is not None}
    return field(default=default, metadata={"bounds": bounds, "doc": doc})


def bound_problems(name: str, value: Any, bounds: dict[str, float]) -> list[str]:
    """``["must be >= 1, got 0"]``: what ``value`` breaks of ``bounds`` (``{"ge": 1}``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return []
    return [f"must be {_OPS[op][0]} {limit:g}, got {value!r}" for op, limit in bounds.items()
            if not _OPS[op][1](value, limit)]


@functools.cache
def _choices(cls: type) -> dict[str, tuple[Any, ...]]:
    """Field name -> the values its Literal type allows."""
    return {name: typing.get_args(tp) for name, tp in typing.get_type_hints(cls).items()
            if typing.get_origin(tp) is Literal}


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

    weight: str | FloatFormat | None = setting(None, "weight format (null: not quantized)")
    activation: str | FloatFormat | None = setting(None, "activation (input) format (null: not quantized)")
    gradient: str | FloatFormat | None = setting(None, "format of the gradient into the layer's output")
    scaling: ScalingKind = setting("delayed", "amax scaling: delayed, current, block or none")
    amax_history: int = setting(16, "delayed amax scaling: steps of amax history", ge=1)
    amax_algo: AmaxAlgo = setting("max", "delayed amax scaling: the history's max or its most recent amax")
    margin: int = setting(0, "scale headroom, in powers of two", ge=0)
    pow2_scales: bool = setting(True, "power-of-two scales (they multiply exactly in float32)")
    scale_block: int = setting(32, "elements per scale when scaling = block", ge=1)
    rounding: Rounding = setting("nearest", "rounding of weights and activations")
    grad_rounding: Rounding = setting("stochastic", "rounding of gradients (stochastic: unbiased, so tiny updates "
                                                    "survive)")

    def __post_init__(self) -> None:
        for operand in OPERANDS:
            name = getattr(self, operand)
            if name is not None:
                get_format(name)  # raises with the list of valid formats
        choices = _choices(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in OPERANDS and f.name in choices and value not in choices[f.name]:
                raise ValueError(f"{f.name} must be one of {', '.join(choices[f.name])}; got {value!r}")
            for problem in bound_problems(f.name, value, f.metadata.get("bounds", {})):
                raise ValueError(f"{f.name} {problem}")

    @classmethod
    def from_config(cls, precision: PrecisionRecipe, formats: Any = None) -> PrecisionRecipe:
        """The recipe part of a run's precision config (a subclass with per-layer rules); a
        rule's ``formats`` (anything with weight/activation/gradient) replaces the formats it
        sets (non-null)."""
        def operand_format(operand):
            override = getattr(formats, operand, None)
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
class LayerRule:
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
