"""The run table: one row per run with its labels and the per-run evidence, and the helpers
every table of the report shares (labels, means, intervals).

:func:`run_table` turns a summary (one row per run: labels ``run_id, format, optimizer,
master_weights, seed, tag`` and ``status, diverged_at, final_val_loss, wall_time_s, ...``) and
the metrics (one row per run and step) into the run table, with the columns of
:data:`RUN_COLUMNS`: gap to the BF16 baseline *of the same seed*, the gap at the first
evaluation, mean stall ratio, flips, zero-update fraction, overflow/underflow rates,
gradient cosine to the FP32 shadow, tokens/s and GPU-hours from wall time. The export
computes it once and writes it as ``summary.parquet``; the verdict, the attribution, the
figures and the page read that table. Nothing here reads files, plots or formats HTML.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from altgrad.experiment.runs import OPTIMIZER_SHORT

__all__ = [
    "ARM_KEYS",
    "BASELINE_FORMAT",
    "CONFIDENCE",
    "REFERENCE_OPTIMIZER",
    "RUN_COLUMNS",
    "arm_label",
    "is_missing",
    "mean_ci",
    "nanmean",
    "optimizer_name",
    "run_table",
    "short_number",
]

BASELINE_FORMAT = "bf16"
REFERENCE_OPTIMIZER = "adamw"
CONFIDENCE = 0.95

_DISPLAY_NAMES = {"adamw": "AdamW", "manifold": "ManifoldAdamW", "grid": "GridOptim"}  # by short name
ARM_KEYS = ("format", "optimizer", "master_weights", "tag")

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
    "first_eval_step": "step of the run's first evaluation",
    "gap_first_eval": "val-loss gap at the first evaluation (same step of the baseline)",
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


def arm_label(fmt: Any, optimizer: Any, master_weights: Any = "fp32", tag: Any = None) -> str:
    """``e5m2 / ManifoldAdamW`` (+ `` / master grid`` and `` / tag`` when present)."""
    parts = [str(fmt), optimizer_name(optimizer)]
    if not is_missing(master_weights) and master_weights != "fp32":
        parts.append(f"master {master_weights}")
    if not is_missing(tag) and tag:
        parts.append(str(tag))
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


def _labels(summary: pd.DataFrame) -> pd.DataFrame:
    runs = summary.copy()
    for col in ("master_weights", "tag"):
        if col not in runs:
            runs[col] = "fp32" if col == "master_weights" else None
    runs["master_weights"] = runs["master_weights"].fillna("fp32")
    runs["tag"] = runs["tag"].where(runs["tag"].notna() & (runs["tag"].astype(str) != ""), None)
    runs["optimizer"] = runs["optimizer"].map(lambda o: OPTIMIZER_SHORT.get(o, o))
    return runs.reset_index(drop=True)


def _baseline_for(runs: pd.DataFrame, row: pd.Series) -> pd.Series | None:
    """The BF16 run of the same seed: completed, preferring AdamW, fp32 masters, no tag."""
    if is_missing(row["seed"]):
        return None
    cand = runs[(runs["format"] == BASELINE_FORMAT) & (runs["status"] == "completed")
                & (runs["seed"].astype("float") == float(row["seed"])) & runs["final_val_loss"].notna()]
    if cand.empty:
        return None
    score = ((cand["optimizer"] != REFERENCE_OPTIMIZER).astype(int) * 4 + (cand["master_weights"] != "fp32").astype(int) * 2
             + cand["tag"].notna().astype(int))
    return cand.loc[score.sort_values(kind="stable").index[0]]


def run_table(summary: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """``summary`` (one row per run, its order kept) with the columns of :data:`RUN_COLUMNS`.

    The optimizer label is normalised (``manifold_adamw`` -> ``manifold``), a missing
    ``master_weights`` is ``fp32`` and an empty ``tag`` is None.
    """
    runs = _labels(summary)
    want = ["run_id", "step", "val_loss", "tokens_per_s", *[c for c in _MEAN_OF.values()]]
    m = metrics[[c for c in want if c in metrics]]
    means = {}
    if len(m):
        numeric = m.drop(columns=["step", "val_loss"], errors="ignore").replace([np.inf, -np.inf], np.nan)
        means = numeric.groupby("run_id", sort=False).agg(
            {c: ("median" if c == "tokens_per_s" else "mean") for c in numeric.columns if c != "run_id"})
    first_eval: dict[str, tuple[int, float]] = {}
    val_at: dict[str, dict[int, float]] = {}
    if "val_loss" in m:
        ev = m[m["val_loss"].notna()][["run_id", "step", "val_loss"]]
        for rid, g in ev.groupby("run_id", sort=False):
            val_at[rid] = dict(zip(g["step"].astype(int), g["val_loss"].astype(float)))
            first_eval[rid] = (int(g["step"].iloc[0]), float(g["val_loss"].iloc[0]))

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
        step, first = first_eval.get(rid, (None, math.nan))
        rec["first_eval_step"] = step
        base_first = val_at.get(rec["baseline_run_id"], {}).get(step, math.nan) if step is not None else math.nan
        rec["gap_first_eval"] = first - base_first if math.isfinite(first) and math.isfinite(base_first) else math.nan
        for col, src in _MEAN_OF.items():
            rec[col] = float(means.loc[rid, src]) if src in getattr(means, "columns", ()) and rid in means.index else math.nan
        rec["tokens_per_s_median"] = (float(means.loc[rid, "tokens_per_s"])
                                      if "tokens_per_s" in getattr(means, "columns", ()) and rid in means.index else math.nan)
        wall = row.get("wall_time_s")
        rec["gpu_hours"] = float(wall) / 3600.0 if not is_missing(wall) else math.nan
        out.append(rec)
    extra = pd.DataFrame(out, index=runs.index)
    runs = runs.drop(columns=[c for c in extra.columns if c in runs])
    return pd.concat([runs, extra], axis=1)
