"""GridOptim: SGD with momentum whose weights live on their format grid and move in whole rungs."""

from __future__ import annotations

import torch

from altgrad.quantization import FloatFormat
from altgrad.quantization.random_bits import draw_key, uniform

from . import grid_move_cpu
from .geometry import (
    GeometryOptimizer,
    checkpoint_generator,
    count_nonzero,
    first_device,
    grid_position,
    grid_value,
    index_range,
    to_grid_units,
)


class GridOptim(GeometryOptimizer):
    """Momentum SGD where a weight with ``fmt`` only ever takes grid values.

    Each step: buf <- mu * buf + g (float32), update u = lr * (buf + wd * w) in real units
    (lr is an SGD learning rate, weight decay decoupled from the momentum). For a group with
    ``fmt`` the weight's grid index i (round-to-nearest of its grid position, so a weight
    that starts off the grid, or whose scale changed, is snapped first) and the target's
    fractional position give the update in rungs, r = position((w - u) * s) - i: the number
    of grid points between the weight and its target, fractional within a binade (so r is
    u / ULP at the weight, and a move that crosses a binade counts the rungs it crosses).
    r is clipped to ±rung_clip (0 = no clip), rounded stochastically (floor(r + U), U ~
    U[0, 1): unbiased, E[k] = r) and the weight moves k grid points along the sorted grid,
    clamped at ±max, so it never becomes inf/NaN. A NaN update moves nothing (and a NaN
    gradient stays in the momentum, freezing the weight); an infinite one runs to the clip.

    A group without ``fmt`` is plain momentum SGD with decoupled decay. state["flips"] and
    state["attempted"] count, for the last step, weights whose code changed and weights with
    a non-zero update in rungs. The rounding draws come from a generator seeded by `seed`
    and saved in state_dict(), so a resumed run repeats an uninterrupted one exactly.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, rung_clip: float = 0.0,
                 weight_decay: float = 0.0, seed: int = 0, compile: bool = False):
        if min(lr, rung_clip, weight_decay) < 0 or not 0 <= momentum < 1:
            raise ValueError(f"need lr, rung_clip, weight_decay >= 0 and 0 <= momentum < 1, "
                             f"got {lr}, {rung_clip}, {weight_decay}, {momentum}")
        super().__init__(params, dict(lr=lr, momentum=momentum, rung_clip=rung_clip, weight_decay=weight_decay))
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
        lr, wd = group["lr"], group["weight_decay"]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if fmt is None:
            buf = state["momentum_buffer"].mul_(group["momentum"]).add_(p.grad)
            p.mul_(1 - lr * wd).add_(buf, alpha=-lr)
            return
        # hyperparameters as a tensor: a schedule changing lr must not recompile the kernel
        hyper = torch.tensor([lr, group["momentum"], wd, group["rung_clip"] or torch.inf], device=p.device)
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

    hyper = (lr, momentum, weight decay, rung clip or inf); `source` feeds random_bits.
    `flags`, a float32 buffer shaped like p, is needed when traced by torch.compile (see
    _count_moves). Returns (attempted, flips) as device scalars.
    """
    lr, momentum, wd, clip = hyper.unbind()
    buf.mul_(momentum).add_(grad)
    # the target in grid units: (w - lr * (buf + wd * w)) * s
    target = torch.mul(p, 1 - lr * wd).sub_(buf * lr)
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
