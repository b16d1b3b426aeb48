"""Geometry-aware updates measured in ULPs of each weight's format grid.

Why the stiffness multiplies Adam's *direction* and not the gradient: Adam normalises each
coordinate by its own gradient RMS, so a per-coordinate factor S on the gradient enters m
and sqrt(v) alike and cancels (up to eps, and exactly while S is constant); tests/
test_optim.py shows it. The gradient-side variant only means something without that
normalisation, hence `ManifoldSGD`.
"""

from __future__ import annotations

import torch

from .geometry import (
    GeometryOptimizer,
    adam_moments,
    adamw_update,
    calibrate_gain,
    matched_gain,
    decay_factor,
    grid_position,
    root_mean_square,
    stiffness,
    to_grid_units,
)

# The floor of ULP-scaled steps, as a fraction of the weight's RMS grid spacing at its first step.
# Near zero the ULP shrinks toward the subnormal step, so a ULP-scaled step dwindles with |w|.
# Measured (tests/test_matched_arms.py keeps it honest): calibrated ManifoldAdamW (RMS step
# matched to AdamW's at every step), lr 3e-3, N(0, 0.02) weights (4096, amax scale), fp32
# master weights; steps for the weight at 0.02 to cross zero under a steady gradient (AdamW:
# 7), and the share of weights floored at step 0:
#
#     min_stiffness        0     0.01   0.03   0.05   0.1    0.2    0.3
#     e5m2               205       50     39     33    27     21     17
#     e4m3                87       50     39     33    27     21     17
#     e3m4                31       31     31     31    27     21     17
#     e7m0           never (>400)  55     42     36    28     21     18
#     weights floored     0     1.2%   2.1%   4.4%  8.5%    16%    31%   (e3m4: 0 below 0.1)
#
# (e3m4's subnormal step is already coarse.) Of these, 0.1 is the largest floor that leaves
# over 90% of an N(0, sigma) layer on its grid's own spacing, and with it every format
# crosses within 4x AdamW's steps (without it up to 29x, and E7M0, whose step toward zero
# halves with w, never crosses). The floored step is at least ~0.1 of AdamW's. One-binade
# E0M7 is untouched by any floor below 1 (its S is constant, equal to its RMS).
DEFAULT_MIN_STIFFNESS = 0.1


def floored_stiffness(p: torch.Tensor, state: dict, group: dict, fmt, scale, update: torch.Tensor) -> torch.Tensor:
    """`stiffness` on the side of the step -update, capped at group["max_stiffness"] and floored
    at group["min_stiffness"] times the weight's RMS grid spacing at its first step
    (state["stiffness_floor"], in grid units: it moves with the grid as S does)."""
    if "stiffness_floor" not in state:
        fraction, floor = group["min_stiffness"], 0.0
        if fraction > 0:
            floor = fraction * root_mean_square(stiffness(to_grid_units(p, scale), fmt, update=update)).item()
        state["stiffness_floor"] = floor
    return stiffness(p, fmt, scale, group["max_stiffness"], update, state["stiffness_floor"])


class ManifoldAdamW(GeometryOptimizer):
    """AdamW whose step on a gridded weight is a number of ULPs: w <- w (1 - lr * wd) - lr * c * S(w) * u.

    u = m_hat / (sqrt(v_hat) + eps) is AdamW's direction and S(w) the `stiffness`: the grid
    spacing of the group's ``fmt`` at w (real units; multiplier from the group's ``scale``
    callable) on the side u moves it, capped at `max_stiffness` (real units; 0 = no cap) and
    floored at `min_stiffness` times the weight's RMS grid spacing at its first step (see
    DEFAULT_MIN_STIFFNESS for the measurement behind the default; 0 = no floor). So lr * c is
    in ULPs: lr * c = 1 moves a weight with a steady gradient one grid point per step, onto
    its neighbour either way. Weight decay is decoupled and in real units, AdamW's own.

    c is the weight's `lr_gain`, so every group's lr is the AdamW control's real-unit lr.
    lr_gain=None (the fair comparison) calibrates c at every step so that RMS(c * S * u) =
    RMS(u): each layer's RMS real-unit step equals AdamW's, at step 0 and after, and only how
    the step is spread over the weights differs. Calibrating once would not do: S follows
    the amax scale (on E0M7 and in the subnormal range S = step / scale), so as a layer's
    amax drifts its steps would drift away from AdamW's by powers of two, an lr change in
    disguise. Step 0's c is kept in optimizer state for the run's record (its ULPs per step
    at the schedule's peak lr are lr * c). A number fixes c for every weight (uncalibrated:
    lr = 1, lr_gain = 1 is one ULP per step). On a one-binade format (E0M7) S is constant
    across the layer, so calibrated ManifoldAdamW is AdamW at every step (the null control).

    A group without ``fmt`` is exactly torch.optim.AdamW (same ops, bit for bit).
    `track_position=True` keeps state["position"]: each weight's latent grid position
    (fractional code index, `grid_position`) after every step.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        lr_gain: float | None = None,
        max_stiffness: float = 0.0,
        min_stiffness: float = DEFAULT_MIN_STIFFNESS,
        track_position: bool = False,
    ):
        if min(lr, eps, weight_decay, max_stiffness, min_stiffness, 0.0 if lr_gain is None else lr_gain) < 0:
            raise ValueError(f"lr, eps, weight_decay, lr_gain, max_stiffness, min_stiffness must be >= 0, "
                             f"got {lr}, {eps}, {weight_decay}, {lr_gain}, {max_stiffness}, {min_stiffness}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, lr_gain=lr_gain,
                                      max_stiffness=max_stiffness, min_stiffness=min_stiffness,
                                      track_position=track_position))

    def _update(self, p, state, group, fmt, scale):
        if fmt is None:
            adamw_update(p, state, group)
            return
        exp_avg, exp_avg_sq, bias_correction1, bias_correction2_sqrt = adam_moments(p, state, group["betas"])
        ulp = floored_stiffness(p, state, group, fmt, scale, exp_avg)  # at w before this step; u has m's sign
        # m_hat / (sqrt(v_hat) + eps) = (sqrt(bc2) / bc1) * m / (sqrt(v) + eps * sqrt(bc2)): two passes fewer
        denom = exp_avg_sq.sqrt().add_(group["eps"] * bias_correction2_sqrt)
        gain = group["lr_gain"]
        if gain is None:  # calibrated at every step; u's factor sqrt(bc2) / bc1 cancels in the ratio of RMSs
            direction = exp_avg / denom
            if "lr_gain" not in state:
                calibrate_gain(state, ulp * direction, direction)  # step 0's gain, for the run's record
            ulp.mul_(matched_gain(ulp * direction, direction))
            gain = 1.0
        if group["weight_decay"] != 0:
            p.mul_(decay_factor(group))
        p.addcdiv_(ulp.mul_(exp_avg), denom, value=-group["lr"] * gain * bias_correction2_sqrt / bias_correction1)
        if group["track_position"]:
            state["position"] = grid_position(to_grid_units(p, scale), fmt)


class ManifoldSGD(GeometryOptimizer):
    """SGD with momentum on the ULP-scaled gradient: buf <- mu * buf + S(w) * g, w <- w - lr * buf.

    The gradient-side variant, which Adam's normalisation would cancel. S is `stiffness` on the
    side -g moves w (floored and capped as in ManifoldAdamW), so with momentum 0, lr = 1 and
    |g| = 1 a weight lands on its grid neighbour. With a steady gradient g a weight moves
    lr * |g| / (1 - mu) ULPs per step, so lr is in ULPs per unit gradient. Decoupled weight
    decay is measured in ULPs too, toward zero: w <- w - lr * S * wd * w. A group without
    ``fmt`` is plain SGD with momentum (S = 1) and decoupled decay.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, max_stiffness: float = 0.0,
                 min_stiffness: float = DEFAULT_MIN_STIFFNESS):
        if min(lr, weight_decay, max_stiffness, min_stiffness) < 0 or not 0 <= momentum < 1:
            raise ValueError(f"need lr, weight_decay, max_stiffness, min_stiffness >= 0 and 0 <= momentum < 1, "
                             f"got {lr}, {weight_decay}, {max_stiffness}, {min_stiffness}, {momentum}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, max_stiffness=max_stiffness,
                                      min_stiffness=min_stiffness))

    def _update(self, p, state, group, fmt, scale):
        lr, wd = group["lr"], group["weight_decay"]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        buf = state["momentum_buffer"].mul_(group["momentum"])
        if fmt is None:
            buf.add_(p.grad)
            p.mul_(1 - lr * wd)
        else:
            buf.addcmul_(floored_stiffness(p, state, group, fmt, scale, p.grad), p.grad)
            if wd != 0:  # the decay goes toward zero: S below |w|
                p.addcmul_(p, floored_stiffness(p, state, group, fmt, scale, p), value=-lr * wd)
        p.add_(buf, alpha=-lr)
