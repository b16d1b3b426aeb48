"""GridOptim: weights that live on their format grid and move in whole rungs, AdamW elsewhere."""

from __future__ import annotations

import torch

from altgrad.quantization import FloatFormat
from altgrad.quantization.random_bits import draw_key, uniform

from . import grid_move_cpu
from .geometry import (
    GeometryOptimizer,
    adamw_update,
    calibrate_gain,
    checkpoint_generator,
    count_nonzero,
    decay_factor,
    first_device,
    grid_position,
    grid_value,
    index_range,
    known_gain,
    to_grid_units,
)


class GridOptim(GeometryOptimizer):
    """Momentum SGD where a weight with ``fmt`` only ever takes grid values; AdamW elsewhere.

    Each step of a gridded weight: m_hat, the bias-corrected EMA of its gradients (Adam's
    first moment, rate `momentum`, default betas[0]), gives the target w (1 - lr * wd) -
    lr * c * m_hat in real units (weight decay decoupled, real-unit, AdamW's own). The
    weight's grid index i (round-to-nearest of its grid position, so a weight that starts off
    the grid, or whose scale changed, is snapped first) and the target's fractional position
    give the update in rungs, r = position(target * s) - i: the number of grid points between
    the weight and its target, fractional within a binade (so r is the move / ULP at the
    weight, and a move that crosses a binade counts the rungs it crosses). r is clipped to
    ±rung_clip (0 = no clip), rounded stochastically (floor(r + U), U ~ U[0, 1): unbiased,
    E[k] = r) and the weight moves k grid points along the sorted grid, clamped at ±max, so it
    never becomes inf/NaN. A NaN update moves nothing (and a NaN gradient stays in the
    momentum, freezing the weight); an infinite one runs to the clip.

    c is the weight's `lr_gain`, so every group's lr is the AdamW control's real-unit lr:
    lr_gain=None (the fair comparison) calibrates c at the weight's first step to
    RMS(u_0) / RMS(g_0), u_0 = g_0 / (|g_0| + eps) being AdamW's first step: the RMS intended
    move (rungs x ULP, before the rounding) equals AdamW's RMS step at step 0; m_hat being an
    EMA, the move does not grow 1 / (1 - mu) after step 0 as with a plain momentum sum (whose
    step-0 match would not hold later). c lives in optimizer state (exact resume); lr * c is the
    weight's real-unit lr at a schedule's peak lr. A number fixes c for every weight
    (uncalibrated).

    A group without ``fmt`` is exactly torch.optim.AdamW (`adamw_update`, the same function
    as ManifoldAdamW's). state["flips"] and state["attempted"] count, for the last step,
    weights whose code changed and weights with a non-zero update in rungs. The rounding
    draws come from a generator seeded by `seed` and saved in state_dict(), so a resumed run
    repeats an uninterrupted one exactly.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, momentum: float | None = None, lr_gain: float | None = None,
                 rung_clip: float = 0.0, seed: int = 0, compile: bool = False):
        if min(lr, eps, rung_clip, weight_decay, 0.0 if lr_gain is None else lr_gain) < 0:
            raise ValueError(f"lr, eps, rung_clip, weight_decay, lr_gain must be >= 0, "
                             f"got {lr}, {eps}, {rung_clip}, {weight_decay}, {lr_gain}")
        if not all(0.0 <= b < 1.0 for b in (*betas, 0.0 if momentum is None else momentum)):
            raise ValueError(f"betas and momentum must be in [0, 1), got {betas}, {momentum}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      lr_gain=lr_gain, rung_clip=rung_clip))
        self.generator = torch.Generator(first_device(self.param_groups)).manual_seed(seed)
        checkpoint_generator(self, "grid_optim_rng", self.generator)
        # compile=True: the move is one fused kernel per parameter, fed keys drawn from the
        # generator (random_bits.py; eager draws differ): on CPU grid_move.c (grid_move_cpu.py
        # says why), elsewhere torch.compile with shapes dynamic.
        self.compile = compile
        if compile and first_device(self.param_groups).type == "cpu":
            grid_move_cpu.library()  # built (or found) now: a missing compiler fails before training
        self._move = torch.compile(move_on_grid, dynamic=True) if compile else move_on_grid
        self._flags = torch.empty(0)  # compiled moves' per-weight flags, shared by all weights

    def _update(self, p, state, group, fmt, scale):
        if fmt is None:
            adamw_update(p, state, group)
            return
        if "step" not in state:
            state["step"] = 0
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        gain = known_gain(state, group)
        if gain is None:  # AdamW's first step: m_hat = g, sqrt(v_hat) = |g|
            gain = calibrate_gain(state, p.grad, p.grad / (p.grad.abs() + group["eps"]))
        momentum = group["betas"][0] if group["momentum"] is None else group["momentum"]
        # the move reads buf = sum_i mu^(t-i) g_i: times (1 - mu) / (1 - mu^t) it is m_hat
        lr = group["lr"] * gain * (1 - momentum) / (1 - momentum ** state["step"])
        # hyperparameters as a tensor: a schedule changing lr must not recompile the kernel
        hyper = torch.tensor([lr, momentum, decay_factor(group), group["rung_clip"] or torch.inf], device=p.device)
        source, flags = self.generator, None
        if self.compile:
            source = draw_key(self.generator, p.device)
            if grid_move_cpu.fits(p, state["momentum_buffer"], p.grad, scale):
                state["attempted"], state["flips"] = grid_move_cpu.move_on_grid_cpu(
                    p, state["momentum_buffer"], p.grad, scale, hyper, source, fmt)
                return
            if self._flags.numel() < p.numel() or self._flags.device != p.device:
                self._flags = torch.empty(p.numel(), device=p.device)
            flags = self._flags[: p.numel()].view(p.shape)
        state["attempted"], state["flips"] = self._move(p, state["momentum_buffer"], p.grad, scale, hyper, source,
                                                        fmt, flags)


def move_on_grid(p: torch.Tensor, buf: torch.Tensor, grad: torch.Tensor, scale: torch.Tensor | None,
                 hyper: torch.Tensor, source, fmt: FloatFormat,
                 flags: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """GridOptim's step for one gridded weight, in place on p and buf (see GridOptim).

    hyper = (lr, momentum, decay factor, rung clip or inf): buf <- momentum * buf + grad, and
    the target is w * decay - lr * buf. `source` feeds random_bits. `flags`, a float32 buffer
    shaped like p, is needed when traced by torch.compile (see _count_moves). Returns
    (attempted, flips) as device scalars.
    """
    lr, momentum, decay, clip = hyper.unbind()
    buf.mul_(momentum).add_(grad)
    # the target in grid units: (w * decay - lr * buf) * s
    target = torch.mul(p, decay).sub_(buf * lr)
    if scale is not None:
        target.mul_(scale)
    here = grid_position(to_grid_units(p, scale), fmt).round_()
    rungs = grid_position(target, fmt).sub_(here).nan_to_num_(nan=0.0).clamp_(-clip, clip)
    new = torch.add(rungs, uniform(rungs, source)).floor_().add_(here).clamp_(*index_range(fmt))
    value = grid_value(new, fmt)
    attempted, flips = _count_moves(rungs, here, new, flags)
    p.copy_(value if scale is None else value.div_(scale))
    return attempted, flips


def _count_moves(rungs: torch.Tensor, here: torch.Tensor, new: torch.Tensor,
                 flags: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights with a non-zero update in rungs, weights whose index changed); may modify `here`."""
    if torch.compiler.is_compiling():
        # The compiler fuses a reduction into the loop that computes the move only if it reads
        # a tensor that loop stores; a reduction over intermediates recomputes the whole move in
        # a second loop (+40% of the step). So the move stores 1 (attempted) + 2 (flipped) per
        # weight in `flags`, and the counts are read from there.
        flags.copy_((rungs != 0).to(torch.float32) + (new != here).to(torch.float32) * 2)
        codes = flags.to(torch.int32)
        return (codes & 1).sum(), (codes >> 1).sum()
    return count_nonzero(rungs.abs()), count_nonzero(here.sub_(new).abs_())  # abs: -0 - +0 is -0
