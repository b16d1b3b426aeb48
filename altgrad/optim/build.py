"""The optimizer a run config asks for: an A/B pair differs only in ``optimizer.name``."""

from __future__ import annotations

import torch

from .geometry import GridProjection, keep_geometry_out_of_state
from .grid_optim import GridOptim
from .manifold import ManifoldAdamW


def build_optimizer(model_param_groups, optimizer_cfg, train_cfg) -> torch.optim.Optimizer:
    """Build from OptimizerConfig + TrainConfig.

    `model_param_groups`: dicts with "params" and, for quantized weights, "fmt" and "scale"
    (see altgrad.optim.geometry); any other key (e.g. "weight_decay": 0.0 for biases and
    norms) overrides the defaults below for that group.

    name            optimizer (lr, betas, weight decay from train_cfg; eps 1e-8)
    adamw           torch.optim.AdamW
    manifold_adamw  ManifoldAdamW: groups with fmt get the ULP lr, the others train.lr
    grid            GridOptim, every group at optimizer.grid_lr (an SGD lr; train.lr is an
                    AdamW lr), momentum/rung_clip from optimizer_cfg,
                    generator seeded with train.seed; train.compile fuses its move
                    (GridOptim(compile=True))

    Every group gets "lr_scale" (its lr / train.lr; 1 unless the group's lr is in ULPs), so a
    schedule keeps each kind of lr in its units with group["lr"] = lr_t * group["lr_scale"].

    master_weights "grid" attaches GridProjection (optimizer_cfg.grid_rounding, seeded with
    train.seed; train.compile fuses it) to adamw and manifold_adamw; GridOptim's weights are
    on the grid already.
    """
    groups = [dict(g) for g in model_param_groups]  # the caller's dicts stay as they were
    betas = (train_cfg.beta1, train_cfg.beta2)
    name = optimizer_cfg.name
    if name == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=train_cfg.lr, betas=betas, weight_decay=train_cfg.weight_decay)
        keep_geometry_out_of_state(optimizer)
    elif name == "manifold_adamw":
        for g in groups:
            if g.get("fmt") is not None:
                g.setdefault("lr", optimizer_cfg.ulp_lr)
        optimizer = ManifoldAdamW(groups, lr=train_cfg.lr, betas=betas, weight_decay=train_cfg.weight_decay,
                                  max_stiffness=optimizer_cfg.max_stiffness)
    elif name == "grid":
        # every group is momentum SGD at grid_lr; gridded weights move in whole rungs
        optimizer = GridOptim(groups, lr=optimizer_cfg.grid_lr, momentum=optimizer_cfg.momentum,
                              rung_clip=optimizer_cfg.rung_clip, weight_decay=train_cfg.weight_decay,
                              seed=train_cfg.seed, compile=train_cfg.compile)
    else:
        raise ValueError(f"unknown optimizer {name!r}; valid: adamw, manifold_adamw, grid")
    for g in optimizer.param_groups:
        g.setdefault("lr_scale", g["lr"] / train_cfg.lr)
    if optimizer_cfg.master_weights == "grid" and name != "grid":
        GridProjection.attach(optimizer, optimizer_cfg.grid_rounding, seed=train_cfg.seed, compile=train_cfg.compile)
    return optimizer
