"""Model surgery: swap nn.Linear layers for QuantizedLinear by name, and read them back."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn

from altgrad.quantization import FloatFormat, QuantStats

from .linear import QuantizedLinear
from .recipe import LayerRule, PrecisionRecipe

_COUNTS = tuple(f for f in QuantStats.FIELDS if f != "total")


@dataclass(frozen=True)
class LayerPrecision:
    """What `quantize_model` decided for one linear layer, and why."""

    name: str
    recipe: PrecisionRecipe | None  # None: kept in high precision
    reason: str  # "default recipe", "rule '<pattern>'", "lm_head skipped", "identity recipe", ...

    @property
    def quantized(self) -> bool:
        return self.recipe is not None


@dataclass(frozen=True)
class QuantizationReport:
    """Every linear layer of the model, in module order, with its precision."""

    layers: tuple[LayerPrecision, ...]

    @property
    def quantized(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.quantized]

    @property
    def high_precision(self) -> list[str]:
        return [layer.name for layer in self.layers if not layer.quantized]

    def __getitem__(self, name: str) -> LayerPrecision:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def __str__(self) -> str:
        width = max((len(layer.name) for layer in self.layers), default=0)
        lines = [f"quantized {len(self.quantized)} of {len(self.layers)} linear layers"]
        for layer in self.layers:
            what = str(layer.recipe) if layer.quantized else "high precision"
            lines.append(f"  {layer.name:<{width}}  {what}  ({layer.reason})")
        return "\n".join(lines)


def _is_lm_head(name: str) -> bool:
    return name.rpartition(".")[2] == "lm_head"


def _decide(name, recipe, rules, skip_lm_head, won) -> LayerPrecision:
    """First matching rule, else the default recipe; records which rule won in `won`."""
    if skip_lm_head and _is_lm_head(name):
        return LayerPrecision(name, None, "lm_head skipped (skip_lm_head=True)")
    chosen, reason = recipe, "default recipe"
    for i, rule in enumerate(rules):
        if rule.matches(name):
            won.add(i)
            chosen, reason = rule.recipe, f"rule {rule.pattern!r}"
            break
    if chosen is None:
        return LayerPrecision(name, None, reason if reason != "default recipe" else "no recipe")
    if chosen.is_identity:
        return LayerPrecision(name, None, f"identity recipe, {reason}")
    return LayerPrecision(name, chosen, reason)


def quantize_model(
    model: nn.Module,
    recipe: PrecisionRecipe | None = None,
    rules: Iterable[LayerRule] = (),
    skip_lm_head: bool = True,
    seed: int = 0,
) -> QuantizationReport:
    """Replace the model's nn.Linear layers by QuantizedLinear, in place.

    Each linear layer, by qualified module name: a module named `lm_head` (tied to the
    token embedding in the GPT) stays as it is when `skip_lm_head`; otherwise the rules
    are tried in order and the first whose pattern matches decides (see `LayerRule`
    for the glob syntax; recipe None = high precision); with no match, `recipe` applies
    (None = high precision). Layers whose recipe quantizes nothing (every operand None) are
    left untouched; an all-bf16 recipe is the baseline and does quantize, to bfloat16. A
    rule that never applies triggers a warning.
    `seed` enters every layer's stochastic-rounding seed (with the layer's name).
    """
    rules = tuple(rules)
    already = [name for name, m in model.named_modules() if isinstance(m, QuantizedLinear)]
    if already:
        raise ValueError(f"the model is already quantized (e.g. {already[0]!r})")
    # Collect first, replace after: the module tree must not change while it is walked.
    # A module reachable under several names is listed under each.
    linears = [(name, m) for name, m in model.named_modules(remove_duplicate=False) if isinstance(m, nn.Linear)]
    won: set[int] = set()
    plans = [_decide(name, recipe, rules, skip_lm_head, won) for name, _ in linears]
    _warn_unused_rules(rules, won, [name for name, _ in linears], skip_lm_head)

    replacements: dict[int, tuple[LayerPrecision, QuantizedLinear | None]] = {}
    for (name, linear), plan in zip(linears, plans):
        first = replacements.get(id(linear))
        if first is None:
            new = QuantizedLinear.from_linear(linear, plan.recipe, name, seed) if plan.quantized else None
            replacements[id(linear)] = (plan, new)
            first = replacements[id(linear)]
        elif first[0].recipe != plan.recipe:
            raise ValueError(f"one nn.Linear is both {first[0].name!r} and {name!r}, with different precisions")
        if first[1] is None:
            continue
        if not name:
            raise ValueError("the model itself is an nn.Linear; use QuantizedLinear.from_linear")
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, first[1])
    return QuantizationReport(tuple(plans))


def _warn_unused_rules(rules, won, names, skip_lm_head) -> None:
    for i, rule in enumerate(rules):
        if i in won:
            continue
        matched = [n for n in names if rule.matches(n)]
        if not matched:
            warnings.warn(f"precision rule {rule.pattern!r} matches no linear layer", stacklevel=3)
        elif skip_lm_head and all(_is_lm_head(n) for n in matched):
            warnings.warn(f"precision rule {rule.pattern!r} matches only lm_head, which skip_lm_head=True "
                          "keeps in high precision", stacklevel=3)
        else:
            warnings.warn(f"precision rule {rule.pattern!r} never applies: earlier rules take every layer "
                          "it matches", stacklevel=3)


def quantized_layers(model: nn.Module) -> dict[str, QuantizedLinear]:
    """Qualified name -> QuantizedLinear, in module order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def _rates(counts: dict[str, int]) -> dict[str, float]:
    total = max(counts["total"], 1)
    return {f"{field}_rate": counts[field] / total for field in _COUNTS}


def collect_telemetry(model: nn.Module, reset: bool = True) -> dict[str, float]:
    """Quantization telemetry of every QuantizedLinear since the last reset, as flat metrics.

    Per layer: `layer.{name}.{operand}.{metric}`; over all layers: `quant.{operand}.{metric}`
    (operand: weight | activation | gradient; metric: overflow_rate | underflow_rate |
    subnormal_rate | nonfinite_rate). Totals are summed counts over summed element counts,
    so a large layer weighs more than a small one. One device sync for the whole model.
    """
    entries = [(name, op, q.stats) for name, layer in quantized_layers(model).items()
               for op, q in layer.quantizers.items()]
    if not entries:
        return {}
    device = entries[0][2].total.device
    table = torch.stack([torch.stack([getattr(stats, f).to(device) for f in QuantStats.FIELDS])
                         for _, _, stats in entries]).tolist()
    metrics: dict[str, float] = {}
    totals: dict[str, dict[str, int]] = {}
    for (name, op, _), row in zip(entries, table):
        counts = dict(zip(QuantStats.FIELDS, row))
        metrics.update({f"layer.{name}.{op}.{m}": v for m, v in _rates(counts).items()})
        summed = totals.setdefault(op, dict.fromkeys(QuantStats.FIELDS, 0))
        for field, value in counts.items():
            summed[field] += value
    for op, counts in totals.items():
        metrics.update({f"quant.{op}.{m}": v for m, v in _rates(counts).items()})
    if reset:
        for _, _, stats in entries:
            stats.reset()
    return metrics


def weight_formats(model: nn.Module) -> dict[nn.Parameter, tuple[FloatFormat, Callable[[], torch.Tensor]]]:
    """Quantized weight Parameter -> (its format, a zero-arg function giving its current scale).

    The scale follows QuantizedLinear.weight_scale: grid value = weight * scale.
    """
    geometry: dict[nn.Parameter, tuple[FloatFormat, Callable[[], torch.Tensor]]] = {}
    owner: dict[nn.Parameter, str] = {}
    for name, layer in quantized_layers(model).items():
        if layer.weight_format is None:
            continue
        if layer.weight in geometry:
            raise ValueError(f"layers {owner[layer.weight]!r} and {name!r} quantize the same weight; "
                             "a Parameter can have only one grid")
        geometry[layer.weight] = (layer.weight_format, layer.weight_scale)
        owner[layer.weight] = name
    return geometry
