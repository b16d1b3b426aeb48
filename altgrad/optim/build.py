"""The optimizer a run config asks for: an A/B pair differs only in ``optimizer.name``."""

from __future__ import annotations

from typing import Mapping

import torch

from .geometry import GridProjection, keep_geometry_out_of_state, known_gain
from .grid_optim import GridOptim
from .manifold import ManifoldAdamW


def build_optimizer(model_param_groups, optimizer_cfg, train_cfg) -> torch.optim.Optimizer:
    """Build from OptimizerConfig + TrainConfig.

    `model_param_groups`: dicts with "params" and, for quantized weights, "fmt" and "scale"
    (see altgrad.optim.geometry); any other key (e.g. "weight_decay": 0.0 for biases and
    norms) overrides the defaults below for that group.

    Every arm is step-matched to its AdamW control (DESIGN.md, "A fair comparison"): every
    group of every optimizer carries train.lr (the trainer's schedule sets each group's lr to
    the scheduled value), train's betas and weight decay and eps 1e-8; groups without ``fmt``
    are stepped by torch AdamW's own ops; only gridded weights differ, each with its lr gain c
    (ManifoldAdamW / GridOptim say what it multiplies):

    name            optimizer
    adamw           torch.optim.AdamW
    manifold_adamw  ManifoldAdamW; optimizer.ulp_lr null: c calibrated per weight at its first
                    step (RMS real-unit step = AdamW's); a number: c = ulp_lr / train.lr, i.e.
                    ulp_lr ULPs per step at the schedule's peak (uncalibrated). max_stiffness,
                    min_stiffness from optimizer_cfg
    grid            GridOptim; optimizer.grid_lr null: c calibrated likewise; a number: c =
                    grid_lr / train.lr, the real-unit lr of the bias-corrected momentum at the
                    peak (uncalibrated). momentum (null: train.beta1), rung_clip from
                    optimizer_cfg, generator seeded with train.seed; train.compile fuses its
                    move (GridOptim(compile=True))

    master_weights "grid" attaches GridProjection (optimizer_cfg.grid_rounding, seeded with
    train.seed; train.compile fuses it) to adamw and manifold_adamw; GridOptim's weights are
    on the grid already. `calibration_record` reads the gains back for the run's summary.
    """
    groups = [dict(g) for g in model_param_groups]  # the caller's dicts stay as they were
    control = dict(lr=train_cfg.lr, betas=(train_cfg.beta1, train_cfg.beta2), eps=1e-8,
                   weight_decay=train_cfg.weight_decay)

    def gain(peak_lr: float | None) -> float | None:
        return None if peak_lr is None else peak_lr / train_cfg.lr

    name = optimizer_cfg.name
    if name == "adamw":
        optimizer = torch.optim.AdamW(groups, **control)
        keep_geometry_out_of_state(optimizer)
    elif name == "manifold_adamw":
        optimizer = ManifoldAdamW(groups, **control, lr_gain=gain(optimizer_cfg.ulp_lr),
                                  max_stiffness=optimizer_cfg.max_stiffness, min_stiffness=optimizer_cfg.min_stiffness)
    elif name == "grid":
        optimizer = GridOptim(groups, **control, momentum=optimizer_cfg.momentum, lr_gain=gain(optimizer_cfg.grid_lr),
                              rung_clip=optimizer_cfg.rung_clip, seed=train_cfg.seed, compile=train_cfg.compile)
    else:
        raise ValueError(f"unknown optimizer {name!r}; valid: adamw, manifold_adamw, grid")
    if optimizer_cfg.master_weights == "grid" and name != "grid":
        GridProjection.attach(optimizer, optimizer_cfg.grid_rounding, seed=train_cfg.seed, compile=train_cfg.compile)
    return optimizer


def calibration_record(optimizer: torch.optim.Optimizer, names: Mapping[torch.Tensor, str], peak_lr: float) -> dict:
    """How the gridded weights' steps were sized: {"mode": ..., "lr": {name: peak_lr * c}}.

    mode: "calibrated" (gains c measured at each weight's first step), "uncalibrated" (a
    fixed gain from optimizer.ulp_lr / grid_lr) or "none" (no gridded weight steps by a gain:
    AdamW, or no quantized weight). "lr" holds, per gridded weight whose gain is known (named
    by `names`: parameter -> name), its lr at the schedule's peak `peak_lr`: ULPs per step
    for ManifoldAdamW, the real-unit lr of the bias-corrected momentum for GridOptim.
    """
    groups = [g for g in optimizer.param_groups if g.get("fmt") is not None and "lr_gain" in g]
    if not groups:
        return {"mode": "none", "lr": {}}
    lr = {}
    for group in groups:
        for p in group["params"]:
            gain = known_gain(optimizer.state.get(p, {}), group)
            if gain is not None:
                lr[names[p]] = peak_lr * gain
    return {"mode": "calibrated" if any(g["lr_gain"] is None for g in groups) else "uncalibrated", "lr": lr}
