"""Geometry-aware updates measured in ULPs of each weight's format grid.

Why the stiffness multiplies Adam's *direction* and not the gradient: Adam normalises each
coordinate by its own gradient RMS, so a per-coordinate factor S on the gradient enters m
and sqrt(v) alike and cancels (up to eps, and exactly while S is constant); tests/
test_optim.py shows it. The gradient-side variant only means something without that
normalisation, hence `ManifoldSGD`.
"""

from __future__ import annotations

import torch

from .geometry import GeometryOptimizer, grid_position, stiffness, to_grid_units


class ManifoldAdamW(GeometryOptimizer):
    """AdamW whose step is a number of ULPs: w <- w - lr * S(w) * (m_hat / (sqrt(v_hat) + eps) + wd * w).

    S(w) is `stiffness`: the grid spacing of the group's ``fmt`` at w's current position, in
    real units (multiplier from the group's ``scale`` callable), capped by `max_stiffness`
    (real units; 0 = no cap). So for a group with ``fmt`` the lr is in ULPs: lr = 1 moves a
    weight with a steady gradient about one grid point per step. Equivalently it is AdamW
    with the per-coordinate learning rate lr * S(w), decoupled weight decay included (the
    decay step is lr * S * wd * w). On a one-binade format (E0M7) S is the constant
    2^-7 / scale: AdamW with lr * 2^-7 / scale.

    A group without ``fmt`` is exactly torch.optim.AdamW (same ops, bit for bit) and its lr
    is an ordinary learning rate in real units. The two kinds of lr never mix: each group
    has its own, and a schedule must scale every group's lr by the same factor
    (build_optimizer gives fmt groups the ULP lr and stores each group's "lr_scale").

    `track_position=True` keeps state["position"]: each weight's latent grid position
    (fractional code index, `grid_position`) after every step.
    """

    def __init__(
        self,
        params,
        lr: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        max_stiffness: float = 0.0,
        track_position: bool = False,
    ):
        if min(lr, eps, weight_decay, max_stiffness) < 0:
            raise ValueError(f"lr, eps, weight_decay, max_stiffness must be >= 0, "
                             f"got {lr}, {eps}, {weight_decay}, {max_stiffness}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      max_stiffness=max_stiffness, track_position=track_position))

    def _update(self, p, state, group, fmt, scale):
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        exp_avg, exp_avg_sq, grad = state["exp_avg"], state["exp_avg_sq"], p.grad
        bias_correction1 = 1 - beta1 ** state["step"]
        bias_correction2_sqrt = (1 - beta2 ** state["step"]) ** 0.5
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        if fmt is None:  # torch's AdamW op for op (it decays before the moments; they do not read w)
            if wd != 0:
                p.mul_(1 - lr * wd)
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
            p.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
            return
        ulp = stiffness(p, fmt, scale, group["max_stiffness"])  # at w before this step
        if wd != 0:
            p.addcmul_(p, ulp, value=-lr * wd)
        # m_hat / (sqrt(v_hat) + eps) = (sqrt(bc2) / bc1) * m / (sqrt(v) + eps * sqrt(bc2)): two passes fewer
        denom = exp_avg_sq.sqrt().add_(eps * bias_correction2_sqrt)
        p.addcdiv_(ulp.mul_(exp_avg), denom, value=-lr * bias_correction2_sqrt / bias_correction1)
        if group["track_position"]:
            state["position"] = grid_position(to_grid_units(p, scale), fmt)


class ManifoldSGD(GeometryOptimizer):
    """SGD with momentum on the ULP-scaled gradient: buf <- mu * buf + S(w) * g, w <- w - lr * buf.

    The gradient-side variant, which Adam's normalisation would cancel. With a steady
    gradient g a weight moves lr * |g| / (1 - mu) ULPs per step, so lr is in ULPs per unit
    gradient. Decoupled weight decay is measured in ULPs too: w <- w - lr * S * wd * w.
    A group without ``fmt`` is plain SGD with momentum (S = 1) and decoupled decay.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, max_stiffness: float = 0.0):
        if min(lr, weight_decay, max_stiffness) < 0 or not 0 <= momentum < 1:
            raise ValueError(f"need lr, weight_decay, max_stiffness >= 0 and 0 <= momentum < 1, "
                             f"got {lr}, {weight_decay}, {max_stiffness}, {momentum}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, max_stiffness=max_stiffness))

    def _update(self, p, state, group, fmt, scale):
        lr, wd = group["lr"], group["weight_decay"]
        if not state:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        buf = state["momentum_buffer"].mul_(group["momentum"])
        if fmt is None:
            buf.add_(p.grad)
            p.mul_(1 - lr * wd)
        else:
            ulp = stiffness(p, fmt, scale, group["max_stiffness"])
            buf.addcmul_(ulp, p.grad)
            p.addcmul_(p, ulp, value=-lr * wd)
        p.add_(buf, alpha=-lr)
