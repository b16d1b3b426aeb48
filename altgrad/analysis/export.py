"""Collect run directories into two tables (what the pipeline's ``export`` rule writes).

* ``metrics.parquet`` -- every row of every run's ``steps.parquet``, with the run's labels
  (``run_id``, ``format``, ``optimizer``, ``master_weights``, ``seed``, ...) in front.
  Runs may have different metric columns (an unquantized run has no quantization telemetry); the
  union is kept and missing values are null.
* ``summary.parquet`` (+ ``summary.csv``) -- one row per run: the labels, the scalar fields
  of ``summary.json`` (status, diverged_at, steps, tokens, losses, FLOPs, the steps' time
  ``wall_time_s`` and the job's ``job_wall_s``, null for a run written before it existed, ...), the amax
  scaling kind, how the gridded weights' steps were sized (``calibration``: calibrated,
  uncalibrated or none; ``calibrated_lr``: per layer, JSON), the number of events, and the
  last training loss.

A run directory holds ``steps.parquet``, ``summary.json`` and, when the pipeline made it,
``run.json`` (the labels). Every file is written atomically (temp file, then rename).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from altgrad.analysis.run_table import run_table
from altgrad.errors import AltgradError
from altgrad.files import atomic_write

__all__ = ["LABEL_COLUMNS", "export_runs", "read_run"]

LABEL_COLUMNS = ("run_id", "format", "optimizer", "master_weights", "seed", "tag", "origin", "site",
                 "lr_multiplier", "weight", "activation", "gradient", "config_hash")
_SUMMARY_SCALARS = ("status", "diverged_at", "steps", "tokens", "wall_time_s", "job_wall_s", "final_val_loss",
                    "best_val_loss", "final_val_ppl", "flops", "params_total", "params_non_embedding", "device")


def read_run(run_dir: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any], pd.DataFrame]:
    """(labels, summary, steps) of one run directory."""
    d = Path(run_dir)
    try:
        summary = json.loads((d / "summary.json").read_text())
        steps = pd.read_parquet(d / "steps.parquet")
    except FileNotFoundError as e:
        raise AltgradError(f"{d} is not a finished run: {Path(e.filename).name} is missing") from None
    labels_path = d / "run.json"
    if labels_path.exists():
        labels = json.loads(labels_path.read_text())
    else:  # a run made without the pipeline: what summary.json says
        p = summary.get("precision", {})
        labels = {
            "run_id": summary.get("run_id", d.name),
            "optimizer": summary.get("optimizer", {}).get("name"),
            "master_weights": summary.get("optimizer", {}).get("master_weights"),
            "seed": summary.get("seed"),
            "weight": p.get("weight"), "activation": p.get("activation"), "gradient": p.get("gradient"),
            "config_hash": summary.get("config_hash"),
        }
        same = labels["weight"] == labels["activation"] == labels["gradient"]
        mixed = f"w:{labels['weight']}/a:{labels['activation']}/g:{labels['gradient']}"
        labels["format"] = labels["weight"] if same else mixed
    labels.setdefault("config_hash", summary.get("config_hash"))
    labels = {k: labels.get(k) for k in LABEL_COLUMNS}
    return labels, summary, steps


def export_runs(
    run_dirs: Sequence[str | os.PathLike],
    metrics_path: str | os.PathLike,
    summary_path: str | os.PathLike,
    csv_path: str | os.PathLike | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write the metrics and summary tables for ``run_dirs``; returns (metrics, summary)."""
    if not run_dirs:
        raise AltgradError("export: no run directories given")
    frames, rows = [], []
    for run_dir in run_dirs:
        labels, summary, steps = read_run(run_dir)
        front = pd.DataFrame({k: [v] * len(steps) for k, v in labels.items()}, index=steps.index)
        frames.append(pd.concat([front, steps], axis=1))
        row = dict(labels)
        row.update({k: summary.get(k) for k in _SUMMARY_SCALARS})
        row["scaling"] = summary.get("precision", {}).get("scaling")
        calibration = summary.get("calibration", {})
        row["calibration"] = calibration.get("mode")
        row["calibrated_lr"] = json.dumps(calibration.get("lr", {}), sort_keys=True) if calibration else None
        row["n_events"] = len(summary.get("events", []))
        row["final_loss"] = float(steps["loss"].iloc[-1]) if "loss" in steps and len(steps) else None
        rows.append(row)
    metrics = pd.concat(frames, ignore_index=True, sort=False)
    table = pd.DataFrame(rows)
    for col in ("seed", "steps", "tokens", "params_total", "params_non_embedding", "diverged_at", "n_events"):
        table[col] = table[col].astype("Int64")
    table["job_wall_s"] = table["job_wall_s"].astype("float64")  # a number even when no run has it
    # the per-run evidence: gap to the same seed's BF16 run, stall, rates, cosine, GPU-hours
    table = run_table(table, metrics)
    atomic_write(metrics_path, lambda tmp: metrics.to_parquet(tmp, index=False))
    atomic_write(summary_path, lambda tmp: table.to_parquet(tmp, index=False))
    if csv_path is not None:
        atomic_write(csv_path, lambda tmp: table.to_csv(tmp, index=False))
    return metrics, table
