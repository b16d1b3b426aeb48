"""``altgrad calibrate``: time each kind of job of an experiment on this machine.

:func:`calibrate` builds, in one process, the real :class:`~altgrad.training.trainer.Trainer`
of one run of each kind (:func:`altgrad.experiment.calibration.kind_key`) on the prepared
corpus, takes a few warm-up steps and then times ``steps`` training steps, two steps with the
FP32 shadow pass and one with the rank probe (each minus a plain step), one evaluation (per
batch) and one checkpoint. It also times one short real ``altgrad train`` process of the
cheapest kind and subtracts what its steps cost by the same timings: the rest is the fixed cost
every job pays (interpreter, imports, data check, model build, the first steps' warm-up, final
writes). It writes the calibration file that :mod:`altgrad.experiment.calibration` reads and
the budget table prices from. torch is imported in the functions: the CLI's other commands do
not pay for it.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from altgrad.errors import AltgradError
from altgrad.experiment.calibration import CALIBRATION_FILE, CALIBRATION_VERSION, KindTiming, kind_runs, kind_spec

if TYPE_CHECKING:
    from altgrad.experiment.matrix import Experiment
    from altgrad.experiment.runs import Run

__all__ = ["calibrate", "default_time_budget", "device_key"]


def device_key(device_type: str) -> tuple[str, str]:
    """(the budget.device this machine is, its hardware name) for a trainer on ``device_type``."""
    import platform

    import torch

    if device_type == "cuda":
        name = torch.cuda.get_device_name(0)
        low = name.lower()
        for key in ("h100", "a100"):
            if key in low:
                return key, name
        return "-".join(low.split()), name
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return "cpu", name


class _Clock:
    def __init__(self, cuda: bool):
        import torch

        self.sync = torch.cuda.synchronize if cuda else (lambda: None)

    def __call__(self) -> float:
        self.sync()
        return time.perf_counter()


# The calibration trainer's shadow and rank intervals: two primes far beyond any step it takes,
# so a plain step never runs either and the step set to one of them runs exactly that pass.
_SHADOW_AT, _RANK_AT = 1_000_003, 1_000_033


_EVAL_BATCHES = 4  # at most this many eval batches are timed (a batch costs the same at any index)


MIN_STEPS = 5  # timed steps per kind, however tight the time budget


def _measure_kind(run: Run, root: Path, steps: int, warmup: int, threads: int,
                  checkpoint_s: float | None, allowance: float) -> dict[str, Any]:
    """Time one kind on its first run's real trainer: ``steps`` steps, or fewer (at least
    :data:`MIN_STEPS`) once they have taken ``allowance`` seconds. ``checkpoint_s``: already
    measured for a kind with the same state (model and optimizer), else None (measured here)."""
    import torch

    from altgrad.training.data import eval_batches
    from altgrad.training.tracking import Tracker
    from altgrad.training.trainer import Trainer

    t = run.config.train
    cfg = run.config.with_overrides({"train.shadow_interval": _SHADOW_AT, "train.rank_interval": _RANK_AT,
                                     "train.eval_batches": min(t.eval_batches, _EVAL_BATCHES),
                                     "tracking.wandb_mode": "disabled"})
    torch.set_num_threads(threads)
    began = time.perf_counter()
    trainer = Trainer(cfg, root / run.run_id, run_id=run.run_id)
    clock = _Clock(trainer.device.type == "cuda")
    build_s = clock() - began
    tracker = Tracker("disabled", "", "", root, {}, None)

    def step_at(s: int) -> float:
        trainer.step = s
        start = clock()
        trainer.train_step(tracker)
        return clock() - start

    for s in range(warmup):  # step 0 calibrates the geometry-aware optimizers, as in a run
        step_at(s)
    times: list[float] = []
    began = time.perf_counter()  # the allowance is for the timed steps (the first build also imports)
    while len(times) < steps and (len(times) < MIN_STEPS or time.perf_counter() - began < allowance):
        times.append(step_at(warmup + len(times)))
    step_s = statistics.mean(times)  # the mean: what a run's steps sum to, interruptions included
    shadow = step_at(_SHADOW_AT) - step_s
    rank = step_at(_RANK_AT) - step_s
    start = clock()
    trainer.evaluate()
    eval_s = clock() - start
    n_eval = sum(1 for _ in eval_batches(trainer.val_bin, t.batch_size, run.config.model.block_size,
                                         max_batches=cfg.train.eval_batches))
    eval_batch_s = eval_s / max(n_eval, 1)
    if checkpoint_s is None:
        start = clock()
        trainer.checkpoint()
        checkpoint_s = clock() - start
    device = trainer.device.type
    return {"step_s": step_s, "tokens_per_s": t.batch_size * t.grad_accum * run.config.model.block_size / step_s,
            "shadow_s": max(shadow, 0.0),
            "rank_s": max(rank, 0.0), "eval_batch_s": eval_batch_s, "checkpoint_s": checkpoint_s,
            "steps_timed": len(times), "step_s_min": min(times), "step_s_max": max(times), "build_s": build_s,
            "device_type": device}


def _measure_startup(run: Run, timing: KindTiming, root: Path, steps: int, threads: int) -> dict[str, Any]:
    """Wall time of a real ``altgrad train`` process of ``run`` cut to ``steps`` steps, and what of
    it the kind's timings do not explain: the per-job fixed cost."""
    import os
    import subprocess
    import sys

    cfg = run.config.with_overrides({"train.max_steps": steps, "train.warmup_steps": 0})
    lines = [f"{k}: {json.dumps(v, sort_keys=True)}" for k, v in cfg.to_dict().items()]
    out = root / "startup"
    script = Path(sys.executable).parent / "altgrad"  # what the train rule runs (its PATH puts it first)
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "altgrad.cli"]
    cmd = [*cli, "train", "--config-lines", *lines, "--out", str(out), "--run-id", run.run_id,
           "--threads", str(threads), "--quiet"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ),
                          check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = " ".join(proc.stdout.strip().splitlines()[-1:]) if proc.stdout.strip() else ""
        raise AltgradError(f"calibrate: the start-up probe `altgrad train` of {run.run_id} failed "
                           f"(exit {proc.returncode}): {tail}")
    explained = timing.job_seconds(cfg.train, 0.0)
    return {"run": run.run_id, "steps": steps, "wall_s": wall, "explained_s": explained,
            "startup_s": max(wall - explained, 0.0)}


def default_time_budget(runs: Iterable[Run]) -> float:
    """Seconds ``altgrad calibrate`` aims to take: 30 on a CPU, 120 when a run uses a GPU."""
    return 120.0 if any(r.config.train.device != "cpu" for r in runs) else 30.0


def calibrate(exp: Experiment, out: str | Path = CALIBRATION_FILE, *, steps: int = 20, warmup: int = 3,
              startup_steps: int = 5, include_sweep: bool = False, time_budget: float | None = None,
              config_files: Sequence[str] = (), log: Any = None) -> dict[str, Any]:
    """Time every kind of job of ``exp`` (its matrix; with ``include_sweep`` the scaling sweep's
    runs too) on this machine and write the calibration file ``out`` (atomically). Needs the
    prepared corpus. Returns what it wrote.

    ``time_budget`` (seconds; None: :func:`default_time_budget`, 0: no limit): each kind times
    ``steps`` steps, or fewer (at least :data:`MIN_STEPS`) when its share of what is left of the
    budget (less a quarter kept for the start-up probe and the imports) is spent."""
    import warnings
    import datetime
    import shutil

    import torch

    from altgrad.experiment.matrix import CUDA_THREADS
    from altgrad.files import atomic_open
    from altgrad.training.allocator import keep_freed_memory
    from altgrad.training.data import load_meta
    from altgrad.training.provenance import library_hash

    started = time.perf_counter()
    if steps < 1 or warmup < 1 or startup_steps < 1:
        raise AltgradError("calibrate: --steps, --warmup and --startup-steps must be >= 1")
    meta = load_meta(exp.corpus_dir)  # a missing or damaged corpus: its error, with the fix
    vocab = int(meta["vocab_size"])
    runs = exp.train_runs if include_sweep else exp.runs
    kinds = kind_runs(runs.values(), vocab)
    budget = default_time_budget(runs.values()) if time_budget is None else float(time_budget)
    keep_freed_memory()  # as `altgrad train` does before building a model
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    root = out.parent / f".{out.name}.tmp"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    try:
        measured: dict[str, dict[str, Any]] = {}
        checkpoints: dict[str, float] = {}  # a checkpoint's cost is its state's: per model x optimizer
        other: list[float] = []  # each kind's seconds besides its timed steps (build, warm-up, passes)
        for i, (key, members) in enumerate(kinds.items()):
            run = members[0]
            threads = CUDA_THREADS if run.config.train.device == "cuda" else 1  # as the train rule gives a job
            spec = kind_spec(run.config, vocab)
            state = json.dumps([spec["model"], spec["optimizer"], spec["train"]["device"]], sort_keys=True)
            # this kind's share of what is left, less what a kind has cost besides its timed steps
            left = budget * 3 / 4 - (time.perf_counter() - started)
            besides = statistics.median(other[1:]) if len(other) > 1 else 0.0  # the first kind also imported
            allowance = left / (len(kinds) - i) - besides if budget > 0 else math.inf
            kind_started = time.perf_counter()
            with warnings.catch_warnings():  # a tiny model's rank or stall alerts say nothing here
                warnings.simplefilter("ignore")
                m = _measure_kind(run, root, steps, warmup, threads, checkpoints.get(state), allowance)
            other.append(time.perf_counter() - kind_started - m["step_s"] * m["steps_timed"])
            checkpoints.setdefault(state, m["checkpoint_s"])
            p, o = run.config.precision, run.config.optimizer
            m.update(threads=threads, runs=[r.run_id for r in members],
                     recipe={"weight": p.weight, "activation": p.activation, "gradient": p.gradient,
                             "scaling": p.scaling, "optimizer": o.name, "master_weights": o.master_weights})
            measured[key] = m
            if log:
                log(f"[{i + 1}/{len(kinds)}] {key}: {1e3 * m['step_s']:.1f} ms/step over {m['steps_timed']} steps, "
                    f"{m['tokens_per_s']:.0f} tokens/s ({len(members)} runs)")
        cheapest = min(measured, key=lambda k: measured[k]["step_s"])
        timings = {k: KindTiming(kind=k, **{n: m[n] for n in ("step_s", "shadow_s", "rank_s", "eval_batch_s",
                                                               "checkpoint_s", "tokens_per_s", "steps_timed")})
                   for k, m in measured.items()}
        run = kinds[cheapest][0]
        startup = _measure_startup(run, timings[cheapest], root, startup_steps, measured[cheapest]["threads"])
        if log:
            log(f"start-up: a {startup_steps}-step `altgrad train` of {run.run_id} took {startup['wall_s']:.2f} s, "
                f"its steps {startup['explained_s']:.2f} s: {startup['startup_s']:.2f} s per job")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    device_type = next(iter(measured.values()))["device_type"]
    device, hardware = device_key(device_type)
    result = {
        "version": CALIBRATION_VERSION,
        "device": device,
        "hardware": hardware,
        "torch": torch.__version__,
        "threads": max(m["threads"] for m in measured.values()),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "library": library_hash(),
        "config": list(config_files),
        "time_budget_s": budget,
        "startup_s": startup["startup_s"],
        "startup": startup,
        "kinds": {k: {n: v for n, v in m.items() if n != "device_type"} for k, m in measured.items()},
    }
    result["wall_s"] = time.perf_counter() - started
    with atomic_open(out, "w") as f:
        f.write(json.dumps(result, indent=1, sort_keys=False) + "\n")
    return result
