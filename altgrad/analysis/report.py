"""The report: `results/report.html`, one self-contained page that answers the question.

`build_report` reads the exported tables, computes the verdict, failure attribution and
figures (altgrad.analysis.verdict / plots), and renders the page (altgrad.analysis.html)
with the experiment's context: corpus, model, the budget planned (the same
altgrad.analysis.budget computation the pipeline prints) against what was spent, and
what reproduces it. The figures are also written as PNGs for Snakemake's own report.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from altgrad.analysis.html import ReportContext, render_report
from altgrad.analysis.plots import make_figures, write_figures
from altgrad.analysis.verdict import run_table
from altgrad.errors import AltgradError
from altgrad.files import atomic_open

__all__ = ["build_report"]


def _experiment_context(config: Mapping[str, Any] | None, data_root: Path) -> dict[str, Any]:
    if not config:
        return {}
    from altgrad.analysis.matrix import load_experiment

    exp = load_experiment(config, data_root=data_root)
    return {
        "config": exp.raw,
        "config_hash": hashlib.sha256(json.dumps(exp.raw, sort_keys=True).encode()).hexdigest()[:12],
        "corpus": exp.meta or exp.corpus,
        "model": exp.raw["run"].get("model"),
        "planned": exp.jobs(exp.meta),
        "budget_usd": exp.budget.get("usd"),
    }


def build_report(results_dir: str | os.PathLike, out_html: str | os.PathLike,
                 config: Mapping[str, Any] | None = None, command: str | None = None,
                 figures_dir: str | os.PathLike | None = None) -> Path:
    """Write `out_html` (atomically) from `results_dir/{summary,metrics}.parquet`.

    `config` is the experiment config (for setup and budget), `command` the command line
    shown in the footer; figures also go to `figures_dir` as PNGs when given.
    """
    results_dir = Path(results_dir)
    tables = {name: results_dir / f"{name}.parquet" for name in ("summary", "metrics")}
    for path in tables.values():
        if not path.exists():
            raise AltgradError(f"{path} not found: run `altgrad export` (the pipeline's export rule) first")
    summary, metrics = (pd.read_parquet(path) for path in tables.values())
    context = ReportContext.collect(root=Path.cwd(), command=command,
                                   **_experiment_context(config, results_dir.parent / "data"))
    figures = make_figures(run_table(summary, metrics), metrics)
    if figures_dir is not None:
        write_figures(figures, figures_dir)
    page = render_report(summary, metrics, context, figures=figures)
    with atomic_open(out_html, "wb") as f:
        f.write(page.encode("utf-8"))
    return Path(out_html)
