"""The calibration file: the kinds of job it times, reading it, a job's seconds from it.

A *kind* of job is everything that sets what one step costs: the precision recipe (formats
per site, amax scaling, block, rounding, per-layer rules), the optimizer and its master
weights (and the options that add work per step), the model's shape, batch_size,
grad_accum, block_size, device, autocast and compile. Not the seed, the learning rate or an
lr multiplier: runs that differ only in those are one kind (:func:`kind_key`).

``altgrad calibrate`` (:func:`altgrad.experiment.calibrate.calibrate`) times one run of each
kind on this machine, and the fixed cost every job pays (``startup_s``), and writes
:data:`CALIBRATION_FILE`; :func:`run_events` counts how often a run pays each per-event cost
(evaluation, shadow pass, rank probe, checkpoint), for this measured basis and the pricing
module's assumed one alike. The file::

    {"version": 1, "device": "cpu" | "h100" | "a100" | <other GPU's name>, "hardware": ...,
     "torch": ..., "threads": 1, "date": "2026-11-30T08:41:07Z", "library": <code hash>,
     "config": [...], "wall_s": 27.4, "startup_s": 3.2,
     "startup": {"run": ..., "steps": ..., "wall_s": ...},
     "kinds": {<kind key>: {"step_s", "tokens_per_s", "shadow_s", "rank_s", "eval_batch_s",
                            "checkpoint_s", "steps_timed", "runs": [run ids], "recipe": {...}}}}

The pipeline (workflow/rules/common.smk) and ``altgrad plan`` read that file at every
invocation when it exists (:func:`load_calibration`), and price a run from it when its
``device`` is the config's ``budget.device`` and the run's kind is in it
(:func:`altgrad.experiment.pricing.price_run`: basis "measured"); every other run is priced
on the assumed basis. A damaged file is an error naming the file and the command that
re-creates it.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from altgrad.errors import AltgradError

if TYPE_CHECKING:
    from altgrad.experiment.runs import Run
    from altgrad.training.config import RunConfig, TrainConfig

__all__ = ["CALIBRATION_FILE", "CALIBRATION_VERSION", "Calibration", "KindTiming", "RunEvents", "kind_key",
           "kind_runs", "load_calibration", "read_calibration", "run_events"]

CALIBRATION_FILE = "results/calibration.json"  # relative to the workflow directory
CALIBRATION_VERSION = 1
RECREATE = f"re-create it with `snakemake --cores 1 --forcerun calibrate {CALIBRATION_FILE}` (or delete it to price " \
           "on the assumed basis)"

# the train options that set a step's cost (the others are counted per event: run_events)
_TRAIN_KEYS = ("batch_size", "grad_accum", "device", "autocast", "compile")
# optimizer options that only scale the step (learning rates): not part of a kind
_OPTIMIZER_LR_KEYS = ("ulp_lr", "grid_lr")


def kind_spec(config: RunConfig, data_vocab_size: int) -> dict[str, Any]:
    """What sets the cost of one step of ``config``'s run (see the module docstring)."""
    d = config.to_dict()
    model = dict(d["model"])
    model["vocab_size"] = model.get("vocab_size") or int(data_vocab_size)
    return {
        "model": model,
        "train": {k: d["train"][k] for k in _TRAIN_KEYS},
        "precision": d["precision"],
        "optimizer": {k: v for k, v in d["optimizer"].items() if k not in _OPTIMIZER_LR_KEYS},
    }


def kind_key(config: RunConfig, data_vocab_size: int) -> str:
    """A readable key of the run's kind: ``{w}.{a}.{g}-{optimizer}-{L}x{d}-T{block}-b{batch}x{accum}-{device}``
    and a hash of everything else that sets the step's cost."""
    spec = kind_spec(config, data_vocab_size)
    m, t, p, o = spec["model"], spec["train"], spec["precision"], spec["optimizer"]
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:8]
    mw = "" if o["master_weights"] == "fp32" else f"-{o['master_weights']}"
    return (f"{p['weight']}.{p['activation']}.{p['gradient']}-{o['name']}{mw}-{m['n_layer']}x{m['n_embd']}"
            f"-T{m['block_size']}-b{t['batch_size']}x{t['grad_accum']}-{t['device']}-{digest}")


def kind_runs(runs: Iterable[Run], data_vocab_size: int) -> dict[str, list[Run]]:
    """Runs grouped by kind, in config order."""
    out: dict[str, list[Run]] = {}
    for run in runs:
        out.setdefault(kind_key(run.config, data_vocab_size), []).append(run)
    return out


# --------------------------------------------------------------------------------------
# The calibration file
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KindTiming:
    """Measured costs of one kind of job (seconds)."""

    kind: str
    step_s: float  # one training step (all micro-batches, the optimizer, the per-step diagnostics)
    shadow_s: float  # the FP32 shadow pass, on top of its step
    rank_s: float  # the rank probe, on top of its step
    eval_batch_s: float  # one evaluation batch
    checkpoint_s: float  # one checkpoint write
    tokens_per_s: float
    steps_timed: int
    runs: tuple[str, ...] = ()
    recipe: Mapping[str, Any] = field(default_factory=dict)  # weight, activation, gradient, optimizer

    def job_seconds(self, train: TrainConfig, startup_s: float) -> float:
        """Estimated wall seconds of a whole job of this kind with ``train``'s schedule."""
        ev = run_events(train)
        return (startup_s + ev.steps * self.step_s + ev.shadows * self.shadow_s + ev.ranks * self.rank_s
                + ev.eval_batches * self.eval_batch_s + ev.checkpoints * self.checkpoint_s)


@dataclass(frozen=True)
class Calibration:
    """A calibration file as read (:func:`load_calibration`)."""

    path: str
    device: str  # the budget.device it prices: cpu, h100, a100 (another GPU: its name)
    hardware: str
    torch: str
    threads: int
    date: str
    startup_s: float
    kinds: Mapping[str, KindTiming]
    library: str = ""
    wall_s: float = math.nan

    def timing(self, config: RunConfig, data_vocab_size: int) -> KindTiming | None:
        """The measured timing of ``config``'s kind, or None when it was not calibrated."""
        return self.kinds.get(kind_key(config, data_vocab_size))

    def describe(self) -> str:
        return f"{self.path} (measured {self.date} on {self.hardware}, torch {self.torch}, {self.threads} threads)"

    def overhead(self, config: RunConfig) -> float:
        """Step time of the kind with ``config``'s formats per site and optimizer over the
        bf16/bf16/bf16 AdamW kind's (the reference ratios of the assumed CPU basis)."""
        p = config.precision
        want = {"weight": p.weight, "activation": p.activation, "gradient": p.gradient,
                "optimizer": config.optimizer.name}

        def matches(k: KindTiming, **keys: Any) -> bool:
            return all(k.recipe.get(name) == value for name, value in keys.items())

        base = [k.step_s for k in self.kinds.values()
                if matches(k, weight="bf16", activation="bf16", gradient="bf16", optimizer="adamw")]
        if not base:
            raise AltgradError(f"{self.path}: has no bf16 AdamW kind to take overhead ratios against; {RECREATE}")
        same = [k.step_s for k in self.kinds.values() if matches(k, **want)]
        if not same:  # a recipe it has not measured: the dearest of its optimizer (or of all)
            same = [k.step_s for k in self.kinds.values() if matches(k, optimizer=want["optimizer"])] or \
                [k.step_s for k in self.kinds.values()]
            return max(max(same) / min(base), 1.0)
        return max(statistics.mean(same) / min(base), 1.0)


def _number(d: Mapping[str, Any], key: str, where: str) -> float:
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}{key} is {value!r}, not a number >= 0")
    return float(value)


def load_calibration(path: str | Path) -> Calibration:
    """Read a calibration file; a damaged one is an :class:`AltgradError` naming the file, what
    is wrong and how to re-create it."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        if d.get("version") != CALIBRATION_VERSION:
            raise ValueError(f"version {d.get('version')!r}, this altgrad reads version {CALIBRATION_VERSION}")
        for key in ("device", "hardware", "torch", "date"):
            if not isinstance(d.get(key), str):
                raise ValueError(f"{key} is {d.get(key)!r}, not a string")
        if not isinstance(d.get("kinds"), dict):
            raise ValueError("kinds is not a mapping")
        kinds = {}
        for key, k in d["kinds"].items():
            if not isinstance(k, dict):
                raise ValueError(f"kinds.{key} is not a mapping")
            where = f"kinds.{key}."
            nums = {name: _number(k, name, where) for name in
                    ("step_s", "shadow_s", "rank_s", "eval_batch_s", "checkpoint_s", "tokens_per_s")}
            if nums["step_s"] <= 0:
                raise ValueError(f"{where}step_s is {k['step_s']!r}, not > 0")
            kinds[key] = KindTiming(kind=key, steps_timed=int(k.get("steps_timed", 0)),
                                    runs=tuple(map(str, k.get("runs", ()))), recipe=dict(k.get("recipe", {})), **nums)
        return Calibration(path=str(path), device=d["device"], hardware=d["hardware"], torch=d["torch"],
                           threads=int(d.get("threads", 0)), date=d["date"], startup_s=_number(d, "startup_s", ""),
                           kinds=kinds, library=str(d.get("library", "")), wall_s=float(d.get("wall_s", math.nan)))
    except OSError as e:
        raise AltgradError(f"calibration file {path} is unreadable ({e.strerror or e}); {RECREATE}") from None
    except (ValueError, TypeError, AttributeError) as e:
        raise AltgradError(f"calibration file {path} is corrupt ({' '.join(str(e).split())}); {RECREATE}") from None


def read_calibration(path: str | Path | None) -> Calibration | None:
    """The calibration file at ``path`` if there is one (None: no path given, or not made yet);
    a damaged file is :func:`load_calibration`'s error."""
    return load_calibration(path) if path is not None and Path(path).exists() else None


@dataclass(frozen=True)
class RunEvents:
    """How often a run of ``steps`` steps pays each per-event cost, counted as the trainer
    (altgrad.training.trainer) schedules them: an evaluation at every step divisible by
    ``eval_interval`` and at the last, of ``eval_batches`` batches each; the FP32 shadow pass at
    every step divisible by ``shadow_interval``; the rank probe at every step divisible by
    ``rank_interval``; a checkpoint after every ``checkpoint_interval`` steps and after every
    evaluation that improves the best val loss (counted as if each did: an upper bound), and
    the final one."""

    steps: int
    evals: int
    eval_batches: int  # over the whole run
    shadows: int
    ranks: int
    checkpoints: int


def run_events(train: TrainConfig, steps: int | None = None) -> RunEvents:
    """The trainer's schedule of evaluations, shadow passes, rank probes and checkpoints."""
    steps = train.max_steps if steps is None else max(int(steps), 1)
    evals = set(range(0, steps, train.eval_interval)) | {steps - 1}
    periodic = {s for s in range(train.checkpoint_interval - 1, steps, train.checkpoint_interval)}
    return RunEvents(
        steps=steps,
        evals=len(evals),
        eval_batches=len(evals) * train.eval_batches,
        shadows=len(range(0, steps, train.shadow_interval)) if train.shadow_interval else 0,
        ranks=len(range(0, steps, train.rank_interval)) if train.rank_interval else 0,
        checkpoints=len(periodic | evals) + 1,
    )
