"""Emergency measures, both off by default: range-relative gradient clipping and mantissa shift."""

from __future__ import annotations

import dataclasses
import math

import torch

from altgrad.quantization import FORMATS, FloatFormat, equivalent

from .geometry import group_scale


@torch.no_grad()
def partition_relative_clip(param_groups, threshold: float = 1.0) -> torch.Tensor:
    """Clip each gridded tensor's gradient relative to its format's range in real units.

    Rule: for every parameter in a group with ``fmt`` (a partition: one tensor, one format,
    one scale), rescale its gradient so that RMS(g) <= threshold * max_value / scale, the
    largest weight magnitude the grid holds at the current scale (with amax scaling that
    is the weight's own amax). Direction is kept, and a tensor under the limit is
    untouched; groups without fmt are left to the global norm clip. Call it after backward,
    before the global clip. Returns the number of tensors clipped (a tensor: no host sync).
    """
    clipped = []
    for group in param_groups:
        fmt = group.get("fmt")
        if fmt is None:
            continue
        scale = group_scale(group)
        top = fmt.max_value if scale is None else fmt.max_value / scale  # the grid's top, real units
        for p in group["params"]:
            if p.grad is None:
                continue
            limit = threshold * math.sqrt(p.grad.numel()) * top
            factor = torch.clamp(limit / (torch.linalg.vector_norm(p.grad) + 1e-30), max=1.0)
            p.grad.mul_(factor)
            clipped.append(factor < 1)
    return torch.stack(clipped).sum() if clipped else torch.zeros((), dtype=torch.int64)


# e5m2 -> e4m3 -> e3m4 -> e2m5 -> e1m6 -> e0m7: one exponent bit traded for a mantissa bit,
# each step the registry's own definition of the format (bias and specials as researched).
MANTISSA_LADDER = ("e5m2", "e4m3", "e3m4", "e2m5", "e1m6", "e0m7")


def _next_rung(fmt: FloatFormat) -> FloatFormat | None:
    """The next format up the ladder; off the ladder FloatFormat(E-1, M+1) with fmt's
    specials and sign and the default bias; None when there is no exponent bit left."""
    if fmt.name in MANTISSA_LADDER and FORMATS[fmt.name] == fmt:
        i = MANTISSA_LADDER.index(fmt.name)
        return FORMATS[MANTISSA_LADDER[i + 1]] if i + 1 < len(MANTISSA_LADDER) else None
    if fmt.exp_bits == 0:
        return None
    try:
        return FloatFormat(fmt.exp_bits - 1, fmt.man_bits + 1, specials=fmt.specials, signed=fmt.signed)
    except ValueError:  # e.g. "ieee" with one exponent bit leaves no finite value
        return None


def one_more_mantissa_bit(fmt: FloatFormat, scaling: str = "delayed") -> FloatFormat | None:
    """The first format up the ladder that quantizes differently from `fmt` under `scaling`
    (the amax scaling kind): a shift to an equivalent format (e1m6 -> e0m7 under amax
    scaling: the same grid times 4) would change nothing. None at the top, and for formats
    wider than 8 bits (the bf16 baseline is not a subject of emergency measures)."""
    if fmt.bits > 8:
        return None
    successor = _next_rung(fmt)
    while successor is not None and equivalent(fmt, successor, scaling):
        successor = _next_rung(successor)
    return successor


class MantissaShift:
    """Moves a layer to the format with one more mantissa bit after `patience` bad observations in a row.

    Bad = a non-finite gradient, or a stall ratio >= `threshold` (1.0: every attempted
    update lost). It reads the UpdateDiagnostics metrics (update.{name}.grad_nonfinite,
    update.{name}.stall_ratio); patience counts consecutive `observe` calls. The policy
    only decides and remembers: each returned event (a JSON-ready dict: step, layer,
    reason, from, to) must be applied by the caller with the new format
    `policy.formats[layer]` to the layer, the optimizer group's "fmt" and the diagnostics'
    geometry. state_dict() keeps the counters and current formats as plain values.
    """

    def __init__(self, formats: dict[str, FloatFormat], threshold: float = 1.0, patience: int = 10,
                 scaling: str = "delayed"):
        if threshold <= 0 or patience < 1:
            raise ValueError(f"need threshold > 0 and patience >= 1, got {threshold}, {patience}")
        self.formats, self.threshold, self.patience, self.scaling = dict(formats), threshold, patience, scaling
        self.bad_streak = dict.fromkeys(self.formats, 0)

    def observe(self, step: int, metrics: dict[str, float]) -> list[dict]:
        events = []
        for name, fmt in self.formats.items():
            nonfinite = metrics.get(f"update.{name}.grad_nonfinite", 0.0) > 0
            stalled = metrics.get(f"update.{name}.stall_ratio", math.nan) >= self.threshold
            self.bad_streak[name] = self.bad_streak[name] + 1 if nonfinite or stalled else 0
            if self.bad_streak[name] < self.patience or (successor := one_more_mantissa_bit(fmt, self.scaling)) is None:
                continue
            events.append({"step": step, "layer": name, "reason": "nonfinite" if nonfinite else "stall",
                           "from": fmt.name, "to": successor.name})
            self.formats[name], self.bad_streak[name] = successor, 0
        return events

    def state_dict(self) -> dict:
        formats = {name: dataclasses.asdict(fmt) for name, fmt in self.formats.items()}
        return {"formats": formats, "bad_streak": dict(self.bad_streak)}

    def load_state_dict(self, state: dict) -> None:
        self.formats = {name: FloatFormat(**fields) for name, fields in state["formats"].items()}
        self.bad_streak = dict(state["bad_streak"])
