"""Scaling: map a tensor's range onto a format's range before rounding, and back after.

quantize(x * s) / s with s chosen from the tensor's absolute maximum (amax):

* `CurrentScaling`: s from this tensor's amax (one extra reduction per call).
* `DelayedScaling`: s from a history of past amaxes (TransformerEngine's recipe); this
  call's amax is recorded after use, so a sudden outlier saturates once and is then
  absorbed. The history is state: `state_dict()` / `load_state_dict()` for checkpoints.
* `BlockScaling`: OCP MX, one power-of-two (E8M0) scale per block of 32 along the last dim.

Every finite non-zero amax gets its scale, however small: s = max / (amax * 2^margin)
(`pow2=True`: rounded down to a power of two, so scaling itself is exact), which puts amax
at the format's max (within a factor 2 with pow2). A tensor far below the format's
smallest value is exactly the one that needs a large scale. Only an amax that says
nothing about the range (0: an all-zero tensor; inf or NaN) keeps the previous scale, or
1 when there is none. Scales are clamped to [2^-126, 2^126], so they and their
reciprocals are normal float32 numbers.

`make_scaling` builds no scaler for a format with float32's exponent range (bf16, e8m0):
see its docstring.
"""

from __future__ import annotations

import math

import torch

from .formats import FloatFormat, get_format
from .quantize import QuantStats, quantize

SCALING_KINDS = ("delayed", "current", "block", "none")  # make_scaling's names
_SCALE_MIN, _SCALE_MAX = 2.0**-126, 2.0**126
_MX_EXP_MIN, _MX_EXP_MAX = -127, 127  # E8M0's exponent range
_EXPONENT_BITS = 0x7F800000  # of a float32


def _amax(x: torch.Tensor) -> torch.Tensor:
    """max |x| as a float32 scalar (NaN if x holds one)."""
    return x.detach().abs().amax().float()


def _safe_scale(amax: torch.Tensor, fmt: FloatFormat, margin: int, pow2: bool, fallback: torch.Tensor) -> torch.Tensor:
    """max / (amax * 2^margin), or `fallback` where amax is zero, inf or NaN."""
    usable = (amax > 0) & (amax < math.inf)  # isfinite(amax) & (amax > 0), in two plain comparisons
    # tensor / tensor divides correctly rounded (number / tensor multiplies by a reciprocal);
    # a tiny amax overflows the quotient to inf, which the clamp makes 2^126
    quotient = torch.full_like(amax, fmt.max_value * 2.0**-margin) / amax
    scale = torch.where(usable, quotient, fallback).clamp(_SCALE_MIN, _SCALE_MAX)
    if pow2:
        # 2^floor(log2 s): s with its mantissa bits cleared. Exact: s is a positive normal
        # float32 here (the clamp; neither side of the where is NaN), and one op where
        # ldexp(1, frexp(s).exponent - 1) took four. (float32 log2 rounds 2^k - ulp up to k.)
        scale = scale.view(torch.int32).bitwise_and(_EXPONENT_BITS).view(torch.float32)
    return scale


class CurrentScaling:
    """Per-tensor scale from the tensor's own amax."""

    def __init__(self, fmt: FloatFormat | str, margin: int = 0, pow2: bool = False):
        self.fmt, self.margin, self.pow2 = get_format(fmt), margin, pow2

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        one = torch.ones((), device=x.device)
        return _safe_scale(_amax(x), self.fmt, self.margin, self.pow2, one)

    peek = scale  # nothing to record


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
        self._recorded = False

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The scale for this call (from history), then record this call's amax. The result
        may be a tensor the scaler keeps: read it, do not write to it."""
        if self.amax_history.device != x.device:
            self.to(x.device)
        used = self.current  # never written in place: every update binds a new tensor
        if torch.compiler.is_compiling():  # traced: no branch on host state (it would recompile)
            first = self.calls == 0
        amax = _amax(x)
        # newest first: the history rolled by one with this amax at [0]
        self.amax_history = torch.cat([amax.view(1).to(self.amax_history.dtype), self.amax_history[:-1]])
        known = self.amax_history[0] if self.algo == "most_recent" else self.amax_history.amax()
        self.current = _safe_scale(known, self.fmt, self.margin, self.pow2, self.current)
        if torch.compiler.is_compiling():
            used = torch.where(first, self.current, used)
        elif not self._recorded:  # no history yet: the scale of this tensor's own amax
            used = self.current
        self.calls += 1
        self._recorded = True  # calls > 0, known on the host (peek reads it without a sync)
        return used

    def peek(self, x: torch.Tensor) -> torch.Tensor:
        """What `scale(x)` would return now, recording nothing (the state is left as it is).

        After the first call that is the current scale, whatever x is; before it, the scale of
        x's own amax. A new tensor on x's device.
        """
        current = self.current.to(x.device)
        if self._recorded:
            return current.clone()
        return _safe_scale(_amax(x), self.fmt, self.margin, self.pow2, current)

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
        self._recorded = bool(self.calls != 0)


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
        usable = (amax > 0) & (amax < math.inf)  # isfinite(amax) & (amax > 0), in two plain comparisons
        # floor(log2(amax)) from frexp, exactly (float32 log2 rounds 2^k - ulp up to k)
        exponent = torch.frexp(amax).exponent - 1 - self.elem_emax
        exponent = torch.where(usable, exponent, torch.zeros_like(exponent))
        return torch.ldexp(torch.ones_like(amax), -exponent.clamp(_MX_EXP_MIN, _MX_EXP_MAX))

    peek = scale  # nothing to record

    def expand(self, s: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Per-block multipliers from `scale` as one per element of a tensor of `shape`."""
        blocks = (*shape[:-1], -(-shape[-1] // self.block_size), self.block_size)
        return s.expand(blocks).reshape(*shape[:-1], -1)[..., : shape[-1]]


Scaling = CurrentScaling | DelayedScaling | BlockScaling


def scaled_quantize(
    x: torch.Tensor,
    fmt: FloatFormat | str,
    scaling: Scaling | None = None,
    rounding: str = "nearest",
    generator: torch.Generator | None = None,
    stats: QuantStats | None = None,
    return_scale: bool = False,
    record: bool = True,
):
    """quantize(x * s) / s with s from `scaling` (no scaling: s = 1). Float32 result, x's shape.

    With `return_scale=True` also returns s broadcast to x's shape. With `record=False` the
    scaler is only read (its `peek`): a delayed scaler's history is left as it was.
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
            s = scaling.expand(s, x.shape)
    else:
        s = scaling.scale(x) if record else scaling.peek(x)
        y = quantize(x.float() * s, fmt, rounding, generator=generator, stats=stats).div_(s)
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
    """Build a scaler by config name: delayed | current | block | none (each takes its options).

    A format with float32's exponent range (`FloatFormat.has_float32_exponents`: bf16,
    e8m0) gets no scaler, whatever the kind: amax scaling exists to move a tensor into a
    narrow format's range, and such a format's range already holds every float32 tensor
    (from 2^-126 up). A scale there could only move the grid's anchor off the powers of two
    (pow2=False), or push values off the ends of the range. So a `bf16` operand is rounded
    to bfloat16 as it is, as casting to torch.bfloat16 would.
    """
    fmt = get_format(fmt)
    if kind not in SCALING_KINDS:
        raise ValueError(f"unknown scaling {kind!r}; valid: {', '.join(SCALING_KINDS)}")
    if kind == "none" or fmt.has_float32_exponents:
        return None
    if kind == "delayed":
        return DelayedScaling(fmt, history_len=history_len, algo=algo, margin=margin, pow2=pow2, device=device)
    if kind == "current":
        return CurrentScaling(fmt, margin=margin, pow2=pow2)
    return BlockScaling(fmt, block_size=block_size)
