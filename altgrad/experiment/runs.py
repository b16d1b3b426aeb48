"""A run of an experiment: its id, its labels and its validated RunConfig.

Run id: ``{format}-{optimizer}[-{master_weights}]-s{seed}[-{tag}]`` with the optimizer's short
name (:data:`OPTIMIZER_SHORT`); master weights appear only when not ``fp32``. Seed ``s`` sets
``train.seed = s`` and ``train.data_seed = SEED_DATA_OFFSET + s``, so every run of one seed
shares its initial weights and batch order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from altgrad.training.config import RunConfig

__all__ = ["MASTER_WEIGHTS", "OPTIMIZER_NAMES", "OPTIMIZER_SHORT", "SEED_DATA_OFFSET", "Run", "run_id"]

# The one optimizer-name mapping: RunConfig name -> short name (run ids, labels, tables).
OPTIMIZER_SHORT = {"adamw": "adamw", "manifold_adamw": "manifold", "grid": "grid"}
# An experiment config may name an optimizer either way.
OPTIMIZER_NAMES = {**{short: name for name, short in OPTIMIZER_SHORT.items()}, **{n: n for n in OPTIMIZER_SHORT}}
MASTER_WEIGHTS = ("fp32", "grid")
SEED_DATA_OFFSET = 1000  # train.data_seed = SEED_DATA_OFFSET + seed


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

    @property
    def optimizer_short(self) -> str:
        return OPTIMIZER_SHORT[self.optimizer]

    def labels(self) -> dict[str, Any]:
        """What identifies the run in tables: written next to its results as run.json
        (a sweep run's labels also carry its budget, which the scaling study fits against)."""
        p = self.config.precision
        labels = {
            "run_id": self.run_id,
            "format": self.format,
            "optimizer": self.optimizer_short,
            "master_weights": self.master_weights,
            "seed": self.seed,
            "tag": self.tag,
            "origin": self.origin,
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


def run_id(fmt: str, optimizer: str, master_weights: str, seed: int, tag: str | None = None) -> str:
    """``e5m2-manifold-s0``; ``e5m2-adamw-grid-s1``; ``bf16-adamw-s0-lr3e4`` (tag)."""
    parts = [fmt, OPTIMIZER_SHORT.get(optimizer, optimizer)]
    if master_weights != "fp32":
        parts.append(master_weights)
    parts.append(f"s{seed}")
    if tag:
        parts.append(tag)
    return "-".join(parts)
