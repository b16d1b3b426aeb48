"""A run of an experiment: its id, its labels and its validated RunConfig.

Run id: ``{format}[-{site}only]-{optimizer}[-{master_weights}]-s{seed}[-{tag}][-lr{m}x]`` with the
optimizer's short name (:data:`OPTIMIZER_SHORT`); master weights appear only when not ``fp32``,
the site only for an ablation run (one site quantized with the format, the others the
baseline's: ``e4m3-weightonly-adamw-s0``), the learning-rate multiplier only when not 1
(``e4m3-manifold-s0-lr0.5x``). Seed ``s`` sets ``train.seed = s`` and
``train.data_seed = SEED_DATA_OFFSET + s``, so every run of one seed shares its initial weights
and batch order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from altgrad.training.config import RunConfig

__all__ = ["ALL_SITES", "MASTER_WEIGHTS", "OPTIMIZER_NAMES", "OPTIMIZER_SHORT", "SEED_DATA_OFFSET", "SITES", "Run",
           "lr_tag", "run_id"]

# The one optimizer-name mapping: RunConfig name -> short name (run ids, labels, tables).
OPTIMIZER_SHORT = {"adamw": "adamw", "manifold_adamw": "manifold", "grid": "grid"}
# An experiment config may name an optimizer either way.
OPTIMIZER_NAMES = {**{short: name for name, short in OPTIMIZER_SHORT.items()}, **{n: n for n in OPTIMIZER_SHORT}}
MASTER_WEIGHTS = ("fp32", "grid")
SEED_DATA_OFFSET = 1000  # train.data_seed = SEED_DATA_OFFSET + seed
SITES = ("weight", "activation", "gradient")  # the operands a precision recipe quantizes
ALL_SITES = "all"  # the site label of every run that is not an ablation run


@dataclass(frozen=True)
class Run:
    """One training job of an experiment."""

    run_id: str
    format: str  # registry format or recipe name
    optimizer: str  # RunConfig name: adamw | manifold_adamw | grid
    master_weights: str
    seed: int
    origin: str  # "grid", "ab", "extra_runs[i]" or "scaling"
    config: RunConfig
    tag: str | None = None
    budget: float | None = None  # a sweep run's compute budget C (training FLOPs)
    site: str = ALL_SITES  # an ablation run: the one site (SITES) quantized with `format`
    lr_multiplier: float = 1.0  # train.lr (and min_lr, ulp_lr, grid_lr) = this x the base run's

    @property
    def optimizer_short(self) -> str:
        return OPTIMIZER_SHORT[self.optimizer]

    def labels(self) -> dict[str, Any]:
        """What identifies the run in tables: written next to its results as run.json
        (a sweep run's labels also carry its budget, which the scaling study fits against).

        ``format`` is the format's name for an ablation run too; ``site`` says which operand
        it quantized (``"all"``: every run that is not an ablation run) and ``weight``,
        ``activation``, ``gradient`` what each operand was. ``lr_multiplier`` is 1.0 unless
        the config's ``lr_multipliers`` made the run."""
        p = self.config.precision
        labels = {
            "run_id": self.run_id,
            "format": self.format,
            "optimizer": self.optimizer_short,
            "master_weights": self.master_weights,
            "seed": self.seed,
            "tag": self.tag,
            "origin": self.origin,
            "site": self.site,
            "lr_multiplier": float(self.lr_multiplier),
            "weight": p.weight,
            "activation": p.activation,
            "gradient": p.gradient,
        }
        return labels if self.budget is None else {**labels, "budget": self.budget}

    def config_json(self) -> str:
        """The full resolved RunConfig as canonical JSON (valid YAML for ``altgrad train``)."""
        return json.dumps(self.config.to_dict(), sort_keys=True, separators=(",", ":"))

    def config_lines(self) -> dict[str, str]:
        """The resolved RunConfig as one YAML line per section (``train: {"lr": ...}``).

        Joined with newlines they are the run's config file; as separate Snakemake params
        a change shows up in `snakemake -n` as the one section that changed.
        """
        return {k: f"{k}: {json.dumps(v, sort_keys=True, separators=(',', ':'))}"
                for k, v in self.config.to_dict().items()}

    def tokens(self) -> int:
        t = self.config.train
        return t.max_steps * t.batch_size * t.grad_accum * self.config.model.block_size


def run_id(fmt: str, optimizer: str, master_weights: str, seed: int, tag: str | None = None, *,
           site: str = ALL_SITES, lr_multiplier: float = 1.0) -> str:
    """``e5m2-manifold-s0``; ``e5m2-adamw-grid-s1``; ``bf16-adamw-s0-lr3e4`` (tag);
    ``e4m3-weightonly-adamw-s0`` (ablation site); ``e4m3-manifold-s0-lr0.5x`` (lr multiplier)."""
    parts = [fmt]
    if site != ALL_SITES:
        parts.append(f"{site}only")
    parts.append(OPTIMIZER_SHORT.get(optimizer, optimizer))
    if master_weights != "fp32":
        parts.append(master_weights)
    parts.append(f"s{seed}")
    if tag:
        parts.append(tag)
    if float(lr_multiplier) != 1.0:
        parts.append(lr_tag(lr_multiplier))
    return "-".join(parts)


def lr_tag(multiplier: float) -> str:
    """The run-id part of a learning-rate multiplier: ``lr0.5x``, ``lr2x``, ``lr0.25x``."""
    return f"lr{float(multiplier):g}x"
