"""The training loop: one run = one model, one precision recipe, one optimizer, one seed.

`train(cfg, out_dir)` trains nanoGPT-style and writes, in `out_dir`:

    steps.parquet   one row per optimizer step (explicit `step`), every metric column
    summary.json    status (completed | diverged), steps, tokens, losses, FLOPs, recipe,
                    wall_time_s (the steps' time), job_wall_s (the job's processes, start
                    to summary, summed over resumes: altgrad.training.job_clock),
                    calibration (altgrad.optim.calibration_record; step 0's row has the
                    same per-layer lrs as calib.<layer>), ...
    checkpoints/    resumable state; not a declared pipeline output, so it survives a
                    failed job: model, optimizer, scalers, every RNG, the rows so far

Resume is exact: a run killed at any point and restarted from its checkpoint produces the
same rows (timing columns aside) and the same final weights as an uninterrupted run.

Staleness, one policy for `altgrad train` and the pipeline: a checkpoint is resumed only
when it was saved under the run's config, the same library code and the same corpus
(altgrad.training.provenance.run_provenance). Otherwise the whole checkpoints directory is
moved aside to ``checkpoints.stale-N`` (never deleted: it took compute to make) and the run
starts from step 0.

Before any work the trainer checks the prepared corpus against its meta.json (size and
sha256 of each token file: altgrad.training.data.verify_prepared), and for as long as it runs
it holds the run directory's lock (altgrad.training.run_lock): a second trainer on the same
directory is refused at once, naming this one's pid. With ``stop_with`` (the pipeline passes
Snakemake's pid) it saves a checkpoint and stops when that process is gone, so a train job
does not run on, orphaned, after Snakemake is killed.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from altgrad.errors import AltgradError
from altgrad.files import atomic_open, atomic_write
from altgrad.nn import (
    LayerRule,
    PrecisionRecipe,
    collect_telemetry,
    quantize_model,
    quantized_layers,
    weight_formats,
)
from altgrad.optim import (
    MantissaShift,
    UpdateDiagnostics,
    build_optimizer,
    calibration_record,
    partition_relative_clip,
)
from altgrad.training.checkpoint import CheckpointStore
from altgrad.training.config import RunConfig
from altgrad.training.data import BatchSampler, TokenBin, eval_batches, verify_prepared
from altgrad.training.flops import ModelShape, flops_per_token, param_counts
from altgrad.training.job_clock import JobClock
from altgrad.training.model import GPT
from altgrad.training.provenance import run_provenance
from altgrad.training.run_lock import ProcessWatch, RunDirLock
from altgrad.training.tracking import Tracker

TIMING_COLUMNS = ("tokens_per_s", "step_time_s")  # the only columns that differ on resume
DEAD_GRAD = 1e-8  # |g| below this counts as zero for the dead-gradient fraction


def write_parquet(rows: list[dict], path: Path) -> None:
    """Atomically, with a CRC per page: a file damaged in place is an error when read with
    ``page_checksum_verification=True`` (resume, export), not silently different numbers."""
    atomic_write(path, lambda tmp: pd.DataFrame(rows).to_parquet(tmp, index=False, write_page_checksum=True))


def write_json(obj: dict, path: Path) -> None:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, default=str)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AltgradError("train.device is cuda but no CUDA device is visible; use device: cpu or auto")
    return torch.device(name)


def to_host(rows) -> list[list[float]]:
    """Rows of device scalars as Python numbers in one host sync (a sync per scalar stalls a
    GPU's queue each time). float32 scalars arrive as .item() would give them; counts exactly."""
    rows = [torch.stack([v.double() for v in row]) for row in rows]
    return torch.stack(rows).tolist() if rows else []


def lr_at(step: int, cfg) -> float:
    """Linear warm-up, then cosine decay to min_lr at max_steps (or constant)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) * (cfg.lr - cfg.min_lr)


def _short(name: str) -> str:
    """Column-friendly parameter name; the tied token embedding is reported as lm_head,
    the role in which a collapse matters (named_parameters lists the shared weight once)."""
    short = name.removeprefix("transformer.").removesuffix(".weight")
    return "lm_head" if short == "wte" else short


def _rng_state() -> dict[str, Any]:
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[2] if random.getstate()[2] is not None else -1],
        "python_version": random.getstate()[0],
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    *internal, gauss = state["python"]
    random.setstate((state["python_version"], tuple(int(v) for v in internal), None if gauss == -1 else gauss))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Holds one run's objects; `run()` trains to the end (or to divergence)."""

    def __init__(self, cfg: RunConfig, out_dir: str | os.PathLike, run_id: str | None = None):
        self.job_clock = JobClock()  # the job's wall time (summary's job_wall_s): from the process start
        self.cfg, self.out = cfg, Path(out_dir)
        self.run_id = run_id or self.out.name
        tc = cfg.train
        self.device = pick_device(tc.device)
        # Data first: bad data is reported before any model is built. Size and sha256 of both
        # token files against meta.json, once per job.
        meta = verify_prepared(Path(cfg.data.meta).parent, {"train": cfg.data.train_bin, "val": cfg.data.val_bin})
        vocab = int(meta["vocab_size"])
        if cfg.model.vocab_size is not None and cfg.model.vocab_size < vocab:
            raise AltgradError(f"model.vocab_size {cfg.model.vocab_size} is smaller than the corpus vocabulary "
                               f"({vocab}, {cfg.data.meta}); use null to take it from the data")
        self.train_bin = TokenBin(cfg.data.train_bin, vocab, cfg.model.block_size)
        self.val_bin = TokenBin(cfg.data.val_bin, vocab, cfg.model.block_size)
        self.sampler = BatchSampler(self.train_bin, tc.batch_size, cfg.model.block_size, seed=tc.data_seed, device=self.device)
        self.meta = meta
        self.provenance = run_provenance(cfg.config_hash(), meta)  # what a resumable state must match

        torch.manual_seed(tc.seed)
        gpt_cfg = cfg.model.gpt_config(int(meta["vocab_size"]))
        self.model = GPT(gpt_cfg).to(self.device)
        self.shadow = GPT(gpt_cfg).to(self.device) if tc.shadow_interval else None
        recipe = PrecisionRecipe.from_config(cfg.precision)
        rules = [LayerRule(r.pattern, None if r.recipe is None else PrecisionRecipe.from_config(cfg.precision, r.recipe))
                 for r in cfg.precision.rules]
        self.quant_report = quantize_model(self.model, recipe=recipe, rules=rules,
                                           skip_lm_head=cfg.precision.skip_lm_head, seed=tc.seed)
        geometry = weight_formats(self.model)  # quantized weights: param -> (format, scale_fn)
        self.optimizer = build_optimizer(self._param_groups(geometry), cfg.optimizer, tc)
        self.param_names = {p: _short(n) for n, p in self.model.named_parameters()}
        # every weight matrix but the position embedding; unquantized ones have no grid (fmt None)
        self.matrices = {_short(n): p for n, p in self.model.named_parameters() if p.ndim == 2 and "wpe" not in n}
        self.diagnostics = UpdateDiagnostics({n: (p, *geometry.get(p, (None, None))) for n, p in self.matrices.items()},
                                             seed=tc.seed)
        self.dead_steps = {n: torch.zeros_like(p, dtype=torch.int32) for n, p in self.matrices.items()}
        self.layers = {_short(n): layer for n, layer in quantized_layers(self.model).items()}
        oc = cfg.optimizer
        self.mantissa_shift = MantissaShift(
            {n: layer.weight_format for n, layer in self.layers.items() if layer.weight_format is not None},
            threshold=oc.mantissa_shift_threshold, patience=oc.mantissa_shift_patience, scaling=cfg.precision.scaling,
        ) if oc.mantissa_shift else None
        # bf16 autocast where the config asks for it, on any device (torch runs it on CPU too, so
        # a GPU config shrunk to CPU runs the same code); the FP32 shadow never runs under it
        self.autocast = tc.autocast
        self.logits_dtype: str | None = None  # what the training forward computed its logits in
        self.forward = torch.compile(self.model) if tc.compile else self.model

        shape = ModelShape.from_config(gpt_cfg)
        self.flops_per_token = flops_per_token(shape)
        self.params_total, self.params_non_embedding = param_counts(shape)
        self.tokens_per_step = tc.batch_size * tc.grad_accum * cfg.model.block_size

        self.store = CheckpointStore(self.out / "checkpoints", keep=tc.keep_checkpoints)
        self.rows: list[dict] = []
        self.events: list[dict] = []
        self.step = 0
        self.best_val = math.inf
        self.best_train = math.inf
        self.nan_streak = 0
        self.nan_checkpointed = False
        self.rising = 0
        self.last_alert: dict[str, int] = {}
        self.elapsed = 0.0
        self.status, self.diverged_at = "running", None
        self.tracker_id = None

    def _param_groups(self, geometry: dict) -> list[dict]:
        """One group per quantized weight (it carries its grid), then the other matrices
        (decayed) and the vectors (norms, biases: not decayed), as nanoGPT does."""
        groups = [{"params": [p], "fmt": fmt, "scale": scale} for p, (fmt, scale) in geometry.items()]
        rest = [p for p in self.model.parameters() if p not in geometry]
        groups.append({"params": [p for p in rest if p.ndim >= 2]})
        groups.append({"params": [p for p in rest if p.ndim < 2], "weight_decay": 0.0})
        return [g for g in groups if g["params"]]

    # --- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": _rng_state(),
            "dead_steps": self.dead_steps,
            "mantissa_shift": self.mantissa_shift.state_dict() if self.mantissa_shift else {},
            "trainer": {
                "best_val": self.best_val, "best_train": self.best_train, "nan_streak": self.nan_streak,
                "nan_checkpointed": self.nan_checkpointed, "rising": self.rising, "last_alert": self.last_alert,
                "elapsed": self.elapsed, "job_wall_s": self.job_clock.total(),
                "events": [json.dumps(e) for e in self.events],
                "tracker_id": self.tracker_id or "",
                "provenance": self.provenance,
                "status": self.status, "diverged_at": -1 if self.diverged_at is None else self.diverged_at,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        t = state["trainer"]
        self.step = int(state["step"])
        if self.mantissa_shift is not None:  # shifted layers first: their quantizer state must fit
            self.mantissa_shift.load_state_dict(state["mantissa_shift"])
            for name, fmt in self.mantissa_shift.formats.items():
                self._set_weight_format(name, fmt)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        _set_rng_state(state["rng"])
        self.dead_steps = {n: v.to(self.device) for n, v in state["dead_steps"].items()}
        self.best_val, self.best_train = t["best_val"], t["best_train"]
        self.nan_streak, self.nan_checkpointed, self.rising = t["nan_streak"], t["nan_checkpointed"], t["rising"]
        self.last_alert, self.elapsed = dict(t["last_alert"]), t["elapsed"]
        self.job_clock.before = float(t.get("job_wall_s", t["elapsed"]))  # older checkpoints: the steps only
        self.events = [json.loads(e) for e in t["events"]]
        self.tracker_id = t["tracker_id"] or None
        # a diverged run's last checkpoint resumes as diverged (older checkpoints have no status)
        self.status = t.get("status", "running")
        self.diverged_at = None if t.get("diverged_at", -1) == -1 else int(t["diverged_at"])

    def checkpoint(self, best: bool = False) -> None:
        # rows first: the rows file may run ahead of the newest readable checkpoint, never behind
        self.store.directory.mkdir(parents=True, exist_ok=True)
        write_parquet(self.rows, self.out / "checkpoints" / "steps.partial.parquet")
        self.store.save(self.state_dict(), self.step, best=best)

    def resume(self) -> bool:
        """Load the newest checkpoint if it belongs to this run; move a stale one aside."""
        # onto the CPU: RNG states (torch, numpy, the sampler's and GridOptim's generators) must be
        # CPU byte tensors on any device; model and optimizer state follow their parameters on load
        state = self.store.load_latest("cpu")
        if state is None:
            return False
        saved = state["trainer"].get("provenance", {})
        changed = [what for what, now in self.provenance.items() if saved.get(what) != now]
        if changed:
            stale = self._move_aside()
            warnings.warn(f"{self.store.directory} was saved under another {' and '.join(changed)} "
                          f"({', '.join(f'{k} {saved.get(k)} -> {self.provenance[k]}' for k in changed)}); "
                          f"moved to {stale} and starting from step 0")
            return False
        self.load_state_dict(state)
        partial = self.out / "checkpoints" / "steps.partial.parquet"
        start_over = (f"to start the run over, move its checkpoints aside (`mv {self.store.directory} "
                      f"{self.store.directory}.broken`) and rerun")
        try:
            rows = pd.read_parquet(partial, page_checksum_verification=True).to_dict("records") if partial.exists() else []
        except Exception as error:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            raise AltgradError(
                f"run {self.run_id}: {partial} is unreadable ({type(error).__name__}: {' '.join(str(error).split())}), "
                f"so its checkpoint at step {self.step} cannot be resumed with the rows before it; {start_over}"
            ) from None
        self.rows = [r for r in rows if "step" in r and r["step"] < self.step]
        if len(self.rows) != self.step:
            raise AltgradError(f"run {self.run_id}: {partial} holds {len(self.rows)} rows for its checkpoint at "
                               f"step {self.step}; {start_over}")
        return True

    def _move_aside(self) -> Path:
        """Rename the checkpoints directory to the first free ``checkpoints.stale-N``."""
        n = 1
        while (stale := self.store.directory.with_name(f"checkpoints.stale-{n}")).exists():
            n += 1
        os.replace(self.store.directory, stale)
        return stale

    # --- one step -------------------------------------------------------------------------
    def _micro_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [self.sampler.next_batch() for _ in range(self.cfg.train.grad_accum)]

    def _loss_and_grads(self, model, batches, autocast: bool) -> float:
        model.zero_grad(set_to_none=True)
        total = 0.0
        for x, y in batches:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
                logits, loss = model(x, y)
            (loss / len(batches)).backward()
            total += loss.item() / len(batches)
        if model is not self.shadow:
            self.logits_dtype = str(logits.dtype).removeprefix("torch.")
        return total

    def _grad_stats(self, row: dict) -> None:
        """Per-layer gradient L2 / L-inf / SNR / dead fraction (zero for N steps in a row)."""
        layers = {}
        for name, p in self.matrices.items():
            g = p.grad
            if g is None:
                continue
            g = g.float()
            zero = g.abs() < DEAD_GRAD
            self.dead_steps[name] = torch.where(zero, self.dead_steps[name] + 1, torch.zeros_like(self.dead_steps[name]))
            dead = (self.dead_steps[name] >= self.cfg.train.dead_grad_steps).sum()
            layers[name] = [dead, g.std(), g.norm(), g.abs().max(), g.mean()]
        n_dead, n_all = 0, 0
        for name, (dead, std, l2, linf, mean) in zip(layers, to_host(layers.values())):
            numel = self.matrices[name].numel()
            row[f"grad.{name}.l2"], row[f"grad.{name}.linf"] = l2, linf
            row[f"grad.{name}.snr"] = abs(mean) / std if std > 0 else 0.0
            row[f"grad.{name}.dead_frac"] = dead / numel
            n_dead, n_all = n_dead + dead, n_all + numel
        row["grad.dead_frac"] = n_dead / max(n_all, 1)

    def _shadow_cosine(self, batches, row: dict) -> None:
        """Cosine between the quantized model's gradients and an FP32 shadow's, same batch."""
        shadow_params = dict(self.shadow.named_parameters())
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                shadow_params[name].copy_(p)
        self._loss_and_grads(self.shadow, batches, autocast=False)  # the reference is float32, always
        layers = {}
        for name, p in self.model.named_parameters():
            gq, gs = p.grad, shadow_params[name].grad
            if gq is None or gs is None or p.ndim != 2 or "wpe" in name:
                continue
            gq, gs = gq.float().flatten(), gs.float().flatten()
            layers[_short(name)] = [gq @ gs, gq @ gq, gs @ gs]
        dot = nq = ns = 0.0
        for name, (d, a, b) in zip(layers, to_host(layers.values())):
            row[f"cos.{name}"] = d / math.sqrt(a * b) if a > 0 and b > 0 else float("nan")
            dot, nq, ns = dot + d, nq + a, ns + b
        row["grad_cos"] = dot / math.sqrt(nq * ns) if nq > 0 and ns > 0 else float("nan")

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean val loss over fixed windows. In eval mode quantized layers record nothing (no
        scaler history, telemetry or rounding draws), so evaluating never changes training."""
        self.model.eval()
        losses = []
        for x, y in eval_batches(self.val_bin, self.cfg.train.batch_size, self.cfg.model.block_size,
                                 max_batches=self.cfg.train.eval_batches, device=self.device):
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
                losses.append(self.model(x, y)[1].item())
        self.model.train()
        return float(np.mean(losses))

    def _event(self, kind: str, message: str, tracker: Tracker, alert: bool = False) -> None:
        cooldown = self.cfg.tracking.alert_cooldown
        if alert and self.step - self.last_alert.get(kind, -10**9) < cooldown:
            return
        self.last_alert[kind] = self.step
        self.events.append({"step": self.step, "kind": kind, "message": message})
        warnings.warn(f"[{self.run_id} step {self.step}] {kind}: {message}")
        if alert:
            tracker.alert(kind, message)

    def train_step(self, tracker: Tracker) -> dict:
        tc = self.cfg.train
        started = time.perf_counter()
        lr = lr_at(self.step, tc)
        for group in self.optimizer.param_groups:  # every group of every arm: the AdamW control's lr
            group["lr"] = lr
        batches = self._micro_batches()
        loss = self._loss_and_grads(self.forward, batches, autocast=self.autocast)
        row: dict[str, Any] = {"step": self.step, "tokens": (self.step + 1) * self.tokens_per_step, "lr": lr, "loss": loss}
        finite = [torch.isfinite(p.grad).all() for p in self.model.parameters() if p.grad is not None]
        grads_finite = bool(torch.stack(finite).all()) if finite else True  # one host sync
        row["nan_source"] = "" if math.isfinite(loss) and grads_finite else ("loss" if not math.isfinite(loss) else "gradients")
        row.update(collect_telemetry(self.model, reset=True))
        if row["nan_source"]:
            self.nan_streak += 1
            self.optimizer.zero_grad(set_to_none=True)  # skip the update: weights stay finite
            row["grad_norm"] = float("nan")
        else:
            self.nan_streak = 0
            self._grad_stats(row)
            if self.shadow is not None and self.step % tc.shadow_interval == 0:
                self._shadow_cosine(batches, row)
            if self.cfg.optimizer.partition_clip:
                partition_relative_clip(self.optimizer.param_groups, self.cfg.optimizer.partition_clip_threshold)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip if tc.grad_clip > 0 else math.inf)
            row["grad_norm"] = norm.item()
            before = {n: p.detach().clone() for n, p in self.matrices.items()}
            self.diagnostics.before_step()
            self.optimizer.step()
            row.update(self.diagnostics.after_step())
            if self.step == 0:  # the gains the first step calibrated: ULPs (or grid lr) per step at peak lr
                row.update({f"calib.{name}": value for name, value in self._calibration()["lr"].items()})
            self._zero_update(before, row)
            if self.mantissa_shift is not None:
                for event in self.mantissa_shift.observe(self.step, row):
                    self._set_weight_format(event["layer"], self.mantissa_shift.formats[event["layer"]])
                    self._event("mantissa_shift", f"{event['layer']}: {event['from']} -> {event['to']} "
                                f"({event['reason']})", tracker)
            if tc.rank_interval and self.step % tc.rank_interval == 0:
                ranks, rank_warnings = self.diagnostics.rank_stats()
                for warning in rank_warnings:
                    self._event("rank_collapse", warning, tracker, alert=True)
                row.update(ranks)
        elapsed = time.perf_counter() - started
        row["step_time_s"] = elapsed
        row["tokens_per_s"] = self.tokens_per_step / elapsed
        self.elapsed += elapsed
        return row

    def _set_weight_format(self, name: str, fmt) -> None:
        """Move one layer's weight to `fmt` everywhere its grid is known."""
        layer = self.layers[name]
        if layer.weight_format == fmt:
            return
        layer.set_weight_format(fmt)
        for group in self.optimizer.param_groups:
            if group["params"][0] is layer.weight and group.get("fmt") is not None:
                group["fmt"] = fmt
        p, _, scale = self.diagnostics.geometry[name]
        self.diagnostics.geometry[name] = (p, fmt, scale)

    def _calibration(self) -> dict:
        return calibration_record(self.optimizer, self.param_names, self.cfg.train.lr)

    def _zero_update(self, before: dict, row: dict) -> None:
        """Fraction of weights with a non-zero gradient that did not change (bit-stall)."""
        layers = {}
        for name, p in self.matrices.items():
            if p.grad is None:
                continue
            wanted = p.grad.abs() >= DEAD_GRAD
            layers[name] = [((p.detach() == before[name]) & wanted).sum(), wanted.sum()]
        stuck_all = moved_all = 0
        for name, (stuck, attempted) in zip(layers, to_host(layers.values())):
            row[f"zero_update.{name}"] = stuck / attempted if attempted else 0.0
            stuck_all, moved_all = stuck_all + stuck, moved_all + attempted
        row["zero_update_frac"] = stuck_all / moved_all if moved_all else 0.0

    def _watch(self, row: dict, tracker: Tracker) -> bool:
        """Events and alerts for this row; True when it calls for an anomaly checkpoint."""
        tc, tr = self.cfg.train, self.cfg.tracking
        anomaly = bool(row["nan_source"]) and not self.nan_checkpointed
        if anomaly:
            self.nan_checkpointed = True
            self._event("nan", f"non-finite {row['nan_source']}; checkpoint kept for inspection", tracker, alert=True)
        if math.isfinite(row["loss"]):
            if row["loss"] > tc.divergence_factor * self.best_train and tc.divergence_patience:
                self.rising += 1
                if self.rising == tc.divergence_patience:
                    self._event("divergence", f"loss above {tc.divergence_factor}x its best for {self.rising} steps", tracker)
            else:
                self.rising = 0
            self.best_train = min(self.best_train, row["loss"])
        stall = row.get("update.stall_ratio", float("nan"))
        if stall > tr.alert_stall:
            self._event("bit_stall", f"stall ratio {stall:.2f} > {tr.alert_stall}", tracker, alert=True)
        overflow = max((v for k, v in row.items() if k.startswith("quant.") and k.endswith("overflow_rate")), default=0.0)
        if overflow > tr.alert_overflow:
            self._event("overflow", f"overflow rate {overflow:.3f} > {tr.alert_overflow}", tracker, alert=True)
        return anomaly

    # --- the run --------------------------------------------------------------------------
    def run(self, progress: bool = True, stop_with: int | None = None) -> dict:
        """Train to the end (or to divergence) holding the run directory's lock; returns the
        summary. ``stop_with``: a pid; when that process is gone, checkpoint and raise."""
        with RunDirLock(self.out):
            return self._run(progress, None if stop_with is None else ProcessWatch(stop_with))

    def _run(self, progress: bool, watch: ProcessWatch | None) -> dict:
        from tqdm import tqdm

        tc = self.cfg.train
        self.out.mkdir(parents=True, exist_ok=True)
        resumed = self.resume()
        tracker = Tracker(self.cfg.tracking.wandb_mode, self.cfg.tracking.project,
                          self.cfg.tracking.run_name or self.run_id, self.out, self.cfg.to_dict(), self.tracker_id)
        self.tracker_id = tracker.run_id
        bar = tqdm(total=tc.max_steps, initial=self.step, desc=self.run_id, disable=not progress, dynamic_ncols=True)
        if resumed:
            bar.write(f"{self.run_id}: resumed at step {self.step}")
        while self.step < tc.max_steps and self.status == "running":
            if watch is not None and not watch.alive():
                self.checkpoint()
                bar.close()
                raise AltgradError(
                    f"run {self.run_id}: stopped at step {self.step}, checkpoint saved: the process that started "
                    f"it ({watch.describe()}) is gone; rerun to resume"
                )
            row = self.train_step(tracker)
            last = self.step == tc.max_steps - 1
            if self.step % tc.eval_interval == 0 or last:
                row["val_loss"] = self.evaluate()
                row["val_ppl"] = math.exp(min(row["val_loss"], 50))
            anomaly = self._watch(row, tracker)
            self.rows.append(row)
            tracker.log(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", tok_s=f"{row['tokens_per_s']:.0f}")
            bar.update()
            self.step += 1
            if self.nan_streak >= tc.nan_patience:
                self.status, self.diverged_at = "diverged", self.step - 1
                self._event("diverged", f"{self.nan_streak} non-finite steps in a row", tracker, alert=True)
                break
            improved = "val_loss" in row and row["val_loss"] < self.best_val
            if improved:
                self.best_val = row["val_loss"]
            if anomaly or improved or self.step % tc.checkpoint_interval == 0:
                self.checkpoint(best=improved)
        bar.close()
        if self.status == "running":
            self.status = "completed"
        self.checkpoint()
        summary = self.summary()
        write_parquet(self.rows, self.out / "steps.parquet")
        write_json(summary, self.out / "summary.json")
        tracker.finish()
        return summary

    def summary(self) -> dict:
        vals = [r["val_loss"] for r in self.rows if not pd.isna(r.get("val_loss", float("nan")))]
        tokens = self.step * self.tokens_per_step
        return {
            "run_id": self.run_id,
            "status": self.status,
            "diverged_at": self.diverged_at,
            "steps": self.step,
            "tokens": tokens,
            "wall_time_s": self.elapsed,
            "job_wall_s": self.job_clock.total(),
            "final_val_loss": vals[-1] if vals else None,
            "best_val_loss": min(vals) if vals else None,
            "final_val_ppl": math.exp(min(vals[-1], 50)) if vals else None,
            "flops": self.flops_per_token * tokens,
            "params_total": self.params_total,
            "params_non_embedding": self.params_non_embedding,
            "precision": self.cfg.to_dict()["precision"],
            "optimizer": self.cfg.to_dict()["optimizer"],
            "calibration": self._calibration(),
            "seed": self.cfg.train.seed,
            "device": str(self.device),
            "logits_dtype": self.logits_dtype,  # bfloat16 when autocast ran (None: no step in this job)
            "config_hash": self.cfg.config_hash(),
            "quantization": str(self.quant_report),
            "events": self.events,
            "corpus": {k: self.meta.get(k) for k in ("source", "vocab_size", "tokens", "documents") if k in self.meta},
        }


def train(cfg: RunConfig, out_dir: str | os.PathLike, run_id: str | None = None, progress: bool = True,
          stop_with: int | None = None) -> dict:
    """Train one run (resuming from `out_dir/checkpoints` if present); returns its summary.
    ``stop_with``: stop (after a checkpoint) when the process with this pid is gone."""
    return Trainer(cfg, out_dir, run_id).run(progress=progress, stop_with=stop_with)
