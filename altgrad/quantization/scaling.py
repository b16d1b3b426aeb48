"""Scaling: map a tensor's range onto a format's range before rounding, and back after.

quantize(x * s) / s with s chosen from the tensor's absolute maximum (amax):

* `CurrentScaling`: s from this tensor's amax (one extra reduction per call).
* `DelayedScaling`: s from a history of past amaxes (TransformerEngine's recipe); this
  call's amax is recorded after use, so a sudden outlier saturates once and is then
  absorbed. The history is state: `state_dict()` / `load_state_dict()` for checkpoints.
* `BlockScaling`: OCP MX, one power-of-two (E8M0) scale per block of 32 along the last dim.

Every scale is safe by construction: an all-zero tensor, an inf/NaN amax, or an amax
below the format's smallest value never yields a zero, inf or NaN scale (the previous
scale is kept, or 1 when there is none), and scales are clamped to [2^-126, 2^126].
`pow2=True` rounds scales down to a power of two so scaling itself is exact.
"""

from __future__ import annotations

import math

import torch

from .formats import FloatFormat, get_format
from .quantize import QuantStats, quantize

_SCALE_MIN, _SCALE_MAX = 2.0**-126, 2.0**126
_MX_EXP_MIN, _MX_EXP_MAX = -127, 127  # E8M0's exponent range


def _safe_scale(amax: torch.Tensor, fmt: FloatFormat, margin: int, pow2: bool, fallback: torch.Tensor) -> torch.Tensor:
    """max / (amax * 2^margin), or `fallback` where amax is zero, tiny, inf or NaN."""
    usable = torch.isfinite(amax) & (amax >= fmt.min_subnormal)
    scale = fmt.max_value / (amax.clamp(min=fmt.min_subnormal) * 2.0**margin)
    if pow2:
        scale = torch.exp2(torch.floor(torch.log2(scale)))
    return torch.where(usable, scale, fallback).clamp(_SCALE_MIN, _SCALE_MAX)


class CurrentScaling:
    """Per-tensor scale from the tensor's own amax."""

    def __init__(self, fmt: FloatFormat | str, margin: int = 0, pow2: bool = False):
        self.fmt, self.margin, self.pow2 = get_format(fmt), margin, pow2

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        one = torch.ones((), device=x.device)
        return _safe_scale(x.detach().abs().amax().float(), self.fmt, self.margin, self.pow2, one)


class DelayedScaling:
    """Per-tensor scale from the amax history of previous calls ("max" or "most_recent")."""

    def __init__(
        self,
        fmt: FloatFormat | str,
        history_len: int = 16,
        algo: str = "max",
        margin: int = 0,
        pow2: bool = False,
        device: torch.device | str | None = None,
    ):
        if algo not in ("max", "most_recent"):
            raise ValueError(f"amax algo must be 'max' or 'most_recent', got {algo!r}")
        if history_len < 1:
            raise ValueError(f"history_len must be >= 1, got {history_len}")
        self.fmt, self.algo, self.margin, self.pow2 = get_format(fmt), algo, margin, pow2
        self.amax_history = torch.zeros(history_len, device=device)
        self.current = torch.ones((), device=device)  # scale used for the next call
        self.calls = torch.zeros((), dtype=torch.int64, device=device)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The scale for this call (from history), then record this call's amax."""
        if self.amax_history.device != x.device:
            self.to(x.device)
        used = self.current.clone()
        first = self.calls == 0  # no history yet: fall back to the current tensor's amax
        amax = x.detach().abs().amax().float()
        self.amax_history = torch.roll(self.amax_history, 1)
        self.amax_history[0] = amax
        self.calls += 1
        known = self.amax_history[0] if self.algo == "most_recent" else self.amax_history.amax()
        self.current = _safe_scale(known, self.fmt, self.margin, self.pow2, self.current)
        return torch.where(first, self.current, used)

    def to(self, device) -> "DelayedScaling":
        self.amax_history, self.current, self.calls = (t.to(device) for t in (self.amax_history, self.current, self.calls))
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"amax_history": self.amax_history.clone(), "current": self.current.clone(), "calls": self.calls.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state["amax_history"].shape != self.amax_history.shape:
            raise ValueError(
                f"amax history length {state['amax_history'].shape[0]} in the checkpoint, "
                f"{self.amax_history.shape[0]} configured"
            )
        device = self.amax_history.device
        self.amax_history, self.current, self.calls = (state[k].to(device).clone() for k in ("amax_history", "current", "calls"))


class BlockScaling:
    """OCP MX block scaling: blocks of `block_size` along the last dim, E8M0 scales.

    Each block's shared exponent is floor(log2(block amax)) - floor(log2(element max)),
    clamped to E8M0's range; all-zero or non-finite blocks get exponent 0. A last dim that
    is not a multiple of the block size is zero-padded for the amax and cropped after.
    """

    def __init__(self, fmt: FloatFormat | str, block_size: int = 32):
        self.fmt, self.block_size = get_format(fmt), block_size
        self.elem_emax = math.frexp(self.fmt.max_value)[1] - 1

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        pad = (-x.shape[-1]) % self.block_size
        if pad:
            x = torch.nn.functional.pad(x, (0, pad))
        return x.reshape(*x.shape[:-1], -1, self.block_size)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Per-block multipliers 2^-X, shape (..., n_blocks, 1)."""
        amax = self._blocks(x.detach().float()).abs().amax(dim=-1, keepdim=True)
        usable = torch.isfinite(amax) & (amax > 0)
        exponent = torch.floor(torch.log2(torch.where(usable, amax, torch.ones_like(amax)))) - self.elem_emax
        exponent = torch.where(usable, exponent, torch.zeros_like(exponent))
        return torch.exp2(-exponent.clamp(_MX_EXP_MIN, _MX_EXP_MAX))


Scaling = CurrentScaling | DelayedScaling | BlockScaling


def scaled_quantize(
    x: torch.Tensor,
    fmt: FloatFormat | str,
    scaling: Scaling | None = None,
    rounding: str = "nearest",
    generator: torch.Generator | None = None,
    stats: QuantStats | None = None,
    return_scale: bool = False,
):
    """quantize(x * s) / s with s from `scaling` (no scaling: s = 1). Float32 result, x's shape.

    With `return_scale=True` also returns s broadcast to x's shape.
    """
    fmt = get_format(fmt)
    if scaling is None:
        s = torch.ones((), device=x.device)
        y = quantize(x, fmt, rounding, generator=generator, stats=stats)
    elif isinstance(scaling, BlockScaling):
        n = x.shape[-1]
        blocks = scaling._blocks(x.float())
        s = scaling.scale(x)
        y = quantize(blocks * s, fmt, rounding, generator=generator, stats=stats) / s
        y = y.reshape(*x.shape[:-1], -1)[..., :n]
        if return_scale:
            s = s.expand_as(blocks).reshape(*x.shape[:-1], -1)[..., :n]
    else:
        s = scaling.scale(x)
        y = quantize(x.float() * s, fmt, rounding, generator=generator, stats=stats) / s
    return (y, s.expand_as(y)) if return_scale else y


def make_scaling(
    kind: str,
    fmt: FloatFormat | str,
    *,
    history_len: int = 16,
    algo: str = "max",
    margin: int = 0,
    pow2: bool = False,
    block_size: int = 32,
    device: torch.device | str | None = None,
) -> Scaling | None:
    """Build a scaler by config name: delayed | current | block | none (each takes its options)."""
    if kind == "none":
        return None
    if kind == "delayed":
        return DelayedScaling(fmt, history_len=history_len, algo=algo, margin=margin, pow2=pow2, device=device)
    if kind == "current":
        return CurrentScaling(fmt, margin=margin, pow2=pow2)
    if kind == "block":
        return BlockScaling(fmt, block_size=block_size)
    raise ValueError(f"unknown scaling {kind!r}; valid: delayed, current, block, none")
