"""The report (minimal for now): one self-contained HTML page from the exported tables.

``build_report(results_dir, out_html, config)`` reads ``results_dir/summary.parquet`` and
renders a table of runs (in the experiment's order) and the experiment's budget
table (the same :mod:`altgrad.analysis.budget` computation the pipeline prints).
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from altgrad.errors import AltgradError
from altgrad.files import atomic_open

__all__ = ["build_report"]

_COLUMNS = [
    ("run_id", "run"), ("format", "format"), ("optimizer", "optimizer"), ("master_weights", "master"),
    ("seed", "seed"), ("status", "status"), ("diverged_at", "diverged at"), ("steps", "steps"),
    ("final_loss", "final train loss"), ("final_val_loss", "final val loss"), ("best_val_loss", "best val loss"),
    ("wall_time_s", "wall s"),
]

_TEXT = ("run_id", "format", "optimizer", "master_weights", "status")  # left-aligned columns

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: right; }
th { background: #f4f4f4; }
td.text, th.text { text-align: left; }
tr.diverged td { background: #fde8e8; }
pre { background: #f8f8f8; padding: 0.8rem; overflow-x: auto; font-size: 0.8rem; }
"""


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1000 else f"{value:.0f}"
    return html.escape(str(value))


def _runs_table(summary: pd.DataFrame) -> str:
    cols = [(k, title) for k, title in _COLUMNS if k in summary]
    head = "".join(
        f'<th class="text">{html.escape(t)}</th>' if k in _TEXT else f"<th>{html.escape(t)}</th>" for k, t in cols
    )
    body = []
    for _, row in summary.iterrows():  # the experiment's order (grid, ab, extra runs)
        cls = ' class="diverged"' if row.get("status") == "diverged" else ""
        cells = "".join(
            f'<td class="text">{_cell(row[k])}</td>' if k in _TEXT else f"<td>{_cell(row[k])}</td>" for k, _ in cols
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _budget_text(config: Mapping[str, Any] | None, results_dir: Path) -> str:
    if not config:
        return "(no experiment config given)"
    from altgrad.analysis.matrix import load_experiment

    try:
        exp = load_experiment(config, data_root=results_dir.parent / "data")
    except AltgradError as e:
        return f"(budget not available: {e})"
    return exp.budget_report()


def build_report(results_dir: str | os.PathLike, out_html: str | os.PathLike,
                 config: Mapping[str, Any] | None = None) -> Path:
    """Write ``out_html`` (atomically) from ``results_dir/summary.parquet``; ``config`` is the
    experiment config, used for the budget table. Returns the output path."""
    results_dir = Path(results_dir)
    path = results_dir / "summary.parquet"
    if not path.exists():
        raise AltgradError(f"{path} not found: run `altgrad export` (the pipeline's export rule) first")
    summary = pd.read_parquet(path)
    n, n_div = len(summary), int((summary.get("status") == "diverged").sum()) if "status" in summary else 0
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>altgrad report</title><style>{_CSS}</style></head>
<body>
<h1>altgrad report</h1>
<p>Which 8-bit floating-point format gains most from geometry-aware (ULP-scaled) weight updates?
{n} runs, {n_div} diverged (a diverged run is a result: its row shows where it stopped).</p>
<h2>Runs</h2>
{_runs_table(summary)}
<h2>Budget</h2>
<pre>{html.escape(_budget_text(config, results_dir))}</pre>
</body></html>
"""
    with atomic_open(out_html, "wb") as f:
        f.write(page.encode("utf-8"))
    return Path(out_html)
