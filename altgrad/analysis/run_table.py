"""The run table: one row per run with its labels and the per-run evidence, and the helpers
every table of the report shares (labels, means, intervals).

:func:`run_table` turns a summary (one row per run: labels ``run_id, format, optimizer,
master_weights, seed, tag, site, lr_multiplier`` and ``status, diverged_at, final_val_loss,
wall_time_s, ...``) and the metrics (one row per run and step) into the run table, with the
columns of :data:`RUN_COLUMNS`: gap to the BF16 baseline *of the same seed*, the gap at the
first evaluation after warm-up, mean stall ratio, flips, zero-update fraction, overflow/underflow rates,
gradient cosine to the FP32 shadow, tokens/s and GPU-hours from wall time. The export
computes it once and writes it as ``summary.parquet``; the verdict, the attribution, the
figures and the page read that table. Nothing here reads files, plots or formats HTML.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from altgrad.experiment.runs import OPTIMIZER_SHORT

__all__ = [
    "ARM_KEYS",
    "Paired",
    "BASELINE_FORMAT",
    "CONFIDENCE",
    "REFERENCE_OPTIMIZER",
    "RUN_COLUMNS",
    "SITES",
    "arm_label",
    "early_eval",
    "ensure_run_table",
    "is_missing",
    "mean_ci",
    "nanmean",
    "normalize_labels",
    "optimizer_name",
    "holm",
    "paired",
    "run_table",
    "short_number",
    "warmup_steps",
]

BASELINE_FORMAT = "bf16"
REFERENCE_OPTIMIZER = "adamw"
CONFIDENCE = 0.95

_DISPLAY_NAMES = {"adamw": "AdamW", "manifold": "ManifoldAdamW", "grid": "GridOptim"}  # by short name
# An arm: everything that tells two runs of one seed apart. ``site`` is "all" for ordinary runs and
# "weight" | "activation" | "gradient" for an ablation run that quantizes only that site with the
# run's ``format`` (everything else BF16, AdamW); ``lr_multiplier`` scales the run's learning rate
# (1.0 ordinary). Tables without these columns (before the ablation and lr sweep existed) read as
# "all" and 1.0.
ARM_KEYS = ("format", "optimizer", "master_weights", "tag", "site", "lr_multiplier")
SITES = ("weight", "activation", "gradient")

# per-run diagnostics: output column -> metrics column averaged over the run's finite rows
_MEAN_OF = {
    "stall_ratio_mean": "update.stall_ratio",
    "flips_mean": "update.flips",
    "zero_update_frac_mean": "zero_update_frac",
    "grad_cos_mean": "grad_cos",
    **{f"{op}_{kind}_rate": f"quant.{op}.{kind}_rate"
       for op in ("weight", "activation", "gradient") for kind in ("overflow", "underflow")},
}
RUN_COLUMNS = {
    "status_label": "'completed' or 'diverged at step k'",
    "baseline_run_id": "the BF16 run of the same seed the gap is measured against (empty: none)",
    "gap_to_bf16": "final val loss minus the baseline's (nats; > 0 is worse than BF16)",
    "warmup_steps": "linear warm-up length read from the logged lr (steps before it first reaches its peak, + 1; "
                    "0: no warm-up or no lr logged)",
    "early_eval_step": "the first evaluation at or after the end of warm-up, and after step 0",
    "early_gap": "val-loss gap at early_eval_step (minus the baseline's val loss at the same step)",
    "stall_ratio_mean": "mean over steps of update.stall_ratio (attempted weights whose code did not change)",
    "flips_mean": "mean over steps of update.flips (weights whose grid code changed)",
    "zero_update_frac_mean": "mean over steps of zero_update_frac (weights with a gradient that did not move)",
    "grad_cos_mean": "mean cosine between the gradient and the FP32 shadow's (NaN: shadow off)",
    **{f"{op}_{kind}_rate": f"mean {op} {kind} rate (fraction of quantized elements)"
       for op in ("weight", "activation", "gradient") for kind in ("overflow", "underflow")},
    "tokens_per_s_median": "median training throughput",
    "gpu_hours": "wall time / 3600 (device-hours actually spent)",
}


def optimizer_name(short: Any) -> str:
    """Display name: adamw -> AdamW, manifold (or manifold_adamw) -> ManifoldAdamW, grid -> GridOptim."""
    s = OPTIMIZER_SHORT.get(str(short), str(short))
    return _DISPLAY_NAMES.get(s, s)


def is_missing(v: Any) -> bool:
    """None, pandas NA or NaN."""
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def arm_label(fmt: Any, optimizer: Any, master_weights: Any = "fp32", tag: Any = None, site: Any = "all",
              lr_multiplier: Any = 1.0) -> str:
    """``e5m2 / ManifoldAdamW`` (+ `` / master grid``, `` / tag``, `` / weight only`` and
    `` / lr×2`` when present)."""
    parts = [str(fmt), optimizer_name(optimizer)]
    if not is_missing(master_weights) and master_weights != "fp32":
        parts.append(f"master {master_weights}")
    if not is_missing(tag) and tag:
        parts.append(str(tag))
    if not is_missing(site) and site != "all":
        parts.append(f"{site} only")
    if not is_missing(lr_multiplier) and float(lr_multiplier) != 1.0:
        parts.append(f"lr×{float(lr_multiplier):g}")
    return " / ".join(parts)


def mean_ci(values: Iterable[float], confidence: float = CONFIDENCE) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of the finite values; a t-interval, (mean, nan, nan, 1) for one value."""
    x = np.asarray([v for v in values if not is_missing(v) and math.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(x.mean())
    if n == 1:
        return mean, math.nan, math.nan, 1
    from scipy.stats import t

    half = float(t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


@dataclass(frozen=True)
class Paired:
    """A difference paired by seed: ``a[s] - b[s]`` over the seeds both have (finite values),
    its mean and t-interval. ``excludes_zero`` is None with fewer than two pairs (no interval)."""

    mean: float
    ci_low: float
    ci_high: float
    n: int
    deltas: dict[int, float]

    @property
    def excludes_zero(self) -> bool | None:
        if self.n < 2 or not math.isfinite(self.ci_low):
            return None
        return bool(self.ci_low > 0 or self.ci_high < 0)

    @property
    def p_value(self) -> float:
        """Two-sided p of the paired t-test (mean difference 0); NaN with fewer than two pairs.
        It is below 1 − CONFIDENCE exactly when the interval excludes 0."""
        if self.n < 2:
            return math.nan
        x = np.asarray(list(self.deltas.values()), dtype=float)
        sd = float(x.std(ddof=1))
        if sd == 0.0:
            return 1.0 if self.mean == 0 else 0.0
        from scipy.stats import t

        return float(2 * t.sf(abs(self.mean) / (sd / math.sqrt(self.n)), self.n - 1))

    def ci_text(self, unit: str = "") -> str:
        """``95% CI -0.0120 to +0.0031, 3 seeds``; ``single seed — no CI``; ``no data``."""
        if self.n == 0:
            return "no data"
        if self.n == 1:
            return "single seed — no CI"
        return f"95% CI {self.ci_low:+.4f} to {self.ci_high:+.4f}{unit}, {self.n} seeds"


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (NaN stays NaN and is not counted):
    a claim whose adjusted p is below 1 − CONFIDENCE holds with that family-wise error rate."""
    known = sorted((p, i) for i, p in enumerate(p_values) if not is_missing(p) and math.isfinite(p))
    out = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(known):
        running = max(running, min(1.0, (len(known) - rank) * p))
        out[i] = running
    return out


def paired(a: Mapping[int, float], b: Mapping[int, float] | None = None) -> Paired:
    """``a - b`` paired by seed (``b`` None: ``a`` itself, already a per-seed difference)."""
    if b is None:
        deltas = {int(s): float(v) for s, v in a.items() if not is_missing(v) and math.isfinite(v)}
    else:
        deltas = {int(s): float(a[s]) - float(b[s]) for s in a if s in b
                  and not is_missing(a[s]) and not is_missing(b[s]) and math.isfinite(a[s]) and math.isfinite(b[s])}
    deltas = dict(sorted(deltas.items()))
    mean, lo, hi, n = mean_ci(deltas.values())
    return Paired(mean, lo, hi, n, deltas)


def nanmean(values: Iterable[Any]) -> float:
    """Mean of the finite values; NaN when there are none."""
    x = [float(v) for v in values if not is_missing(v) and math.isfinite(float(v))]
    return float(np.mean(x)) if x else math.nan


def short_number(v: float) -> str:
    """A diagnostic value in a sentence: ``0.25``, ``1.2e-05``, ``n/a``."""
    if is_missing(v) or not math.isfinite(v):
        return "n/a"
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.2e}"
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.0f}"


# --------------------------------------------------------------------------- per-run table


def normalize_labels(summary: pd.DataFrame) -> pd.DataFrame:
    """The label columns as every table expects them: optimizer short names, ``master_weights``
    (missing: fp32), ``tag`` (empty: None), ``site`` (missing: all), ``lr_multiplier`` (missing: 1.0)."""
    runs = summary.copy()
    for col, default in (("master_weights", "fp32"), ("tag", None), ("site", "all"), ("lr_multiplier", 1.0)):
        if col not in runs:
            runs[col] = default
    runs["master_weights"] = runs["master_weights"].fillna("fp32")
    runs["tag"] = runs["tag"].where(runs["tag"].notna() & (runs["tag"].astype(str) != ""), None)
    runs["site"] = runs["site"].where(runs["site"].notna() & (runs["site"].astype(str) != ""), "all").astype(str)
    runs["lr_multiplier"] = pd.to_numeric(runs["lr_multiplier"], errors="coerce").fillna(1.0).astype(float)
    runs["optimizer"] = runs["optimizer"].map(lambda o: OPTIMIZER_SHORT.get(o, o))
    return runs.reset_index(drop=True)


def _baseline_for(runs: pd.DataFrame, row: pd.Series) -> pd.Series | None:
    """The BF16 run of the same seed: completed, quantizing no single site, preferring AdamW,
    fp32 masters, no tag, then the row's own lr multiplier, then 1.0."""
    if is_missing(row["seed"]):
        return None
    cand = runs[(runs["format"] == BASELINE_FORMAT) & (runs["status"] == "completed") & (runs["site"] == "all")
                & (runs["seed"].astype("float") == float(row["seed"])) & runs["final_val_loss"].notna()]
    if cand.empty:
        return None
    score = ((cand["optimizer"] != REFERENCE_OPTIMIZER).astype(int) * 32 + (cand["master_weights"] != "fp32").astype(int) * 16
             + cand["tag"].notna().astype(int) * 8 + (cand["lr_multiplier"] != float(row["lr_multiplier"])).astype(int) * 2
             + (cand["lr_multiplier"] != 1.0).astype(int))
    return cand.loc[score.sort_values(kind="stable").index[0]]


def warmup_steps(lr: Iterable[float]) -> int:
    """The linear warm-up length of a run from its logged per-step learning rate (step 0 first):
    the trainer's warm-up ramps ``lr·(k+1)/W`` for k < W, so the lr first reaches its peak at step
    W − 1. 0 when the lr starts at its peak (W ≤ 1) or nothing was logged."""
    x = np.asarray([v for v in lr], dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return 0
    first_peak = int(np.argmax(x >= x.max() * (1 - 1e-6)))
    return first_peak + 1 if first_peak > 0 else 0


def early_eval(steps: Iterable[int], warmup: int) -> int | None:
    """The step at which forward precision is judged: the first evaluation at or after the end of
    warm-up and after step 0 (step 0 is the untrained model, where every run sits at ln V)."""
    later = [int(s) for s in steps if int(s) >= max(warmup, 1)]
    return min(later) if later else None


_LEGACY_COLUMNS = ("first_eval_step", "gap_first_eval")  # judged at step 0 before the warm-up rule


def run_table(summary: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """``summary`` (one row per run, its order kept) with the columns of :data:`RUN_COLUMNS`.

    The optimizer label is normalised (``manifold_adamw`` -> ``manifold``), a missing
    ``master_weights`` is ``fp32``, an empty ``tag`` is None, a missing ``site`` is ``all`` and a
    missing ``lr_multiplier`` is 1.0. Idempotent: a run table passed again is recomputed.
    """
    runs = normalize_labels(summary)
    want = ["run_id", "step", "val_loss", "lr", "tokens_per_s", *[c for c in _MEAN_OF.values()]]
    m = metrics[[c for c in want if c in metrics]]
    means = {}
    if len(m):
        numeric = m.drop(columns=["step", "val_loss", "lr"], errors="ignore").replace([np.inf, -np.inf], np.nan)
        means = numeric.groupby("run_id", sort=False).agg(
            {c: ("median" if c == "tokens_per_s" else "mean") for c in numeric.columns if c != "run_id"})
    warmup: dict[str, int] = {}
    if "lr" in m and len(m):
        for rid, g in m[["run_id", "step", "lr"]].groupby("run_id", sort=False):
            warmup[rid] = warmup_steps(g.sort_values("step")["lr"])
    val_at: dict[str, dict[int, float]] = {}
    if "val_loss" in m:
        ev = m[m["val_loss"].notna()][["run_id", "step", "val_loss"]]
        for rid, g in ev.groupby("run_id", sort=False):
            val_at[rid] = dict(zip(g["step"].astype(int), g["val_loss"].astype(float)))

    out = []
    for _, row in runs.iterrows():
        rid = row["run_id"]
        rec: dict[str, Any] = {}
        diverged = row.get("status") == "diverged"
        rec["status_label"] = (f"diverged at step {int(row['diverged_at'])}"
                               if diverged and not is_missing(row.get("diverged_at")) else
                               "diverged" if diverged else str(row.get("status")))
        base = _baseline_for(runs, row)
        rec["baseline_run_id"] = None if base is None else base["run_id"]
        final = row.get("final_val_loss")
        usable = not diverged and not is_missing(final)
        rec["gap_to_bf16"] = (float(final) - float(base["final_val_loss"])) if base is not None and usable else math.nan
        rec["warmup_steps"] = warmup.get(rid, 0)
        own = val_at.get(rid, {})
        step = early_eval(own, rec["warmup_steps"])
        rec["early_eval_step"] = step
        base_val = val_at.get(rec["baseline_run_id"], {}).get(step, math.nan) if step is not None else math.nan
        val = own.get(step, math.nan) if step is not None else math.nan
        rec["early_gap"] = val - base_val if math.isfinite(val) and math.isfinite(base_val) else math.nan
        for col, src in _MEAN_OF.items():
            rec[col] = float(means.loc[rid, src]) if src in getattr(means, "columns", ()) and rid in means.index else math.nan
        rec["tokens_per_s_median"] = (float(means.loc[rid, "tokens_per_s"])
                                      if "tokens_per_s" in getattr(means, "columns", ()) and rid in means.index else math.nan)
        wall = row.get("wall_time_s")
        rec["gpu_hours"] = float(wall) / 3600.0 if not is_missing(wall) else math.nan
        out.append(rec)
    extra = pd.DataFrame(out, index=runs.index)
    runs = runs.drop(columns=[c for c in (*extra.columns, *_LEGACY_COLUMNS) if c in runs])
    return pd.concat([runs, extra], axis=1)


def ensure_run_table(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """``runs`` when it already has every column of :data:`RUN_COLUMNS` and the labels (the
    export's ``summary.parquet``), else :func:`run_table` of it: a table exported before a column
    existed is brought up to date from the metrics instead of being read wrong."""
    if all(c in runs for c in (*RUN_COLUMNS, "site", "lr_multiplier")):
        return normalize_labels(runs)
    return run_table(runs, metrics)
