"""The pages: `results/report.html`, which answers the question, and the scaling study's.

`build_report` reads the exported tables (the summary already holds the per-run evidence:
:func:`altgrad.analysis.run_table.run_table`, computed once by the export), the verdict, failure
attribution and figures (altgrad.analysis.verdict / plots), and renders the page
(altgrad.analysis.html) with what the tables cannot tell: the corpus (its ``meta.json``),
each run's resolved config (its ``config.yaml``) and the budget planned for it, priced from
that config exactly as the pipeline's budget table prices it (altgrad.experiment.pricing; from
the calibration file, results/calibration.json, when it exists and was measured on the budget's
device), against what was spent. The figures are also written as PNGs for Snakemake's own report.

`build_scaling_report` does the same for the scaling study (``results/scaling/``): the sweep's
runs -> per-format fits (altgrad.analysis.scaling_study) -> tables, figure and page
(altgrad.analysis.scaling_page).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from altgrad.analysis.html import ReportContext, render_report
from altgrad.analysis.plots import make_figures, write_figures
from altgrad.analysis.run_table import ensure_run_table
from altgrad.analysis.scaling_page import render_page, render_section, scaling_figure
from altgrad.analysis.scaling_study import chinchilla_frame, collect_points, fit_sweep, fits_frame
from altgrad.analysis.verdict import build_verdict
from altgrad.errors import AltgradError
from altgrad.experiment.calibration import CALIBRATION_FILE, read_calibration
from altgrad.experiment.pricing import get_device, price_run
from altgrad.files import atomic_open, atomic_write
from altgrad.training.config import RunConfig
from altgrad.training.tokenizer import GPT2_VOCAB_SIZE

__all__ = ["build_report", "build_scaling_report"]


def build_report(
    summary_path: str | os.PathLike,
    metrics_path: str | os.PathLike,
    out_html: str | os.PathLike,
    *,
    run_configs: Sequence[str | os.PathLike] = (),
    corpus_meta: str | os.PathLike | None = None,
    device: str = "h100",
    mfu: float = 0.3,
    price: float | None = None,
    peak_flops: float | None = None,
    budget_usd: float | None = None,
    command: str | None = None,
    figures_dir: str | os.PathLike | None = None,
    calibration: str | os.PathLike | None = CALIBRATION_FILE,
) -> Path:
    """Write ``out_html`` (atomically) from the exported summary and metrics tables.

    ``run_configs``: the runs' ``config.yaml`` files (``<run dir named by its id>/config.yaml``),
    shown on the page and priced on ``device`` at ``mfu`` and ``price`` per hour (null: the
    device's), with the vocabulary of ``corpus_meta`` where a config leaves it null;
    ``budget_usd`` is the cap shown beside them. ``calibration``: a calibration file
    (``altgrad calibrate``; default the pipeline's, relative to the working directory as for
    ``altgrad plan``): when it exists and was measured on ``device``, the runs of the kinds it
    timed are priced from it (basis measured), as the budget table does; None: assumed only.
    ``command`` is shown in the footer; figures also go to ``figures_dir`` as PNGs when given.
    """
    for path in (summary_path, metrics_path):
        if not Path(path).exists():
            raise AltgradError(f"{path} not found: run `altgrad export` (the pipeline's export rule) first")
    runs, metrics = pd.read_parquet(summary_path), pd.read_parquet(metrics_path)
    meta = json.loads(Path(corpus_meta).read_text()) if corpus_meta is not None else None
    vocab = int(meta["vocab_size"]) if meta else GPT2_VOCAB_SIZE
    dev = get_device(device, peak_flops=peak_flops)
    calib = read_calibration(calibration)
    calib = calib if calib is not None and calib.device == dev.name else None  # another device's: not this plan's
    configs = {Path(p).parent.name: RunConfig.from_yaml(p) for p in run_configs}
    planned = [price_run(rid, cfg, data_vocab_size=vocab, device=dev, mfu=mfu, price=price, calibration=calib)
               for rid, cfg in configs.items()]
    models = [cfg.to_dict()["model"] for cfg in configs.values()]
    context = ReportContext.collect(
        root=Path.cwd(), command=command, corpus=meta, planned=planned, budget_usd=budget_usd,
        model=models[0] if models and all(m == models[0] for m in models) else None,  # one shared shape, if any
        run_configs={rid: Path(p).read_text() for rid, p in zip(configs, run_configs)},
    )
    runs = ensure_run_table(runs, metrics)  # a summary exported before a column existed: recomputed
    verdict = build_verdict(runs, context.thresholds)
    figures = make_figures(runs, metrics, verdict=verdict)
    if figures_dir is not None:
        write_figures(figures, figures_dir)
    page = render_report(runs, metrics, context, figures=figures, verdict=verdict)
    with atomic_open(out_html, "wb") as f:
        f.write(page.encode("utf-8"))
    return Path(out_html)


def build_scaling_report(
    run_dirs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike = "results/scaling",
    *,
    n_boot: int,
    seed: int,
    command: str | None = None,
) -> dict[str, Path]:
    """Collect the sweep's runs, fit per format (``n_boot`` bootstrap resamples, ``seed``),
    and write ``points.parquet``, ``optima.parquet``, ``fits.parquet``, ``chinchilla.parquet``,
    ``isoflop.png``, ``section.html`` and ``report.html`` into ``out_dir`` (each atomically).
    Returns the paths."""
    if not run_dirs:
        raise AltgradError("no sweep runs given: the config's `scaling` block (formats, budgets, sizes) plans them")
    points = collect_points(run_dirs)
    fits = fit_sweep(points, n_boot=n_boot, seed=seed)
    chin = chinchilla_frame(fits)
    png = scaling_figure(points, fits)
    out = Path(out_dir)
    paths = {name: out / f"{name}.parquet" for name in ("points", "optima", "fits", "chinchilla")}
    tables = {"points": points, "optima": pd.DataFrame([o for f in fits.values() for o in f.optima]),
              "fits": fits_frame(fits), "chinchilla": chin}
    for name, df in tables.items():
        atomic_write(paths[name], lambda tmp, df=df: df.to_parquet(tmp, index=False))
    paths["figure"] = out / "isoflop.png"
    with atomic_open(paths["figure"], "wb") as f:
        f.write(png)
    paths["section"] = out / "section.html"  # the same content as a fragment another page can embed
    with atomic_open(paths["section"], "wb") as f:
        f.write(render_section(points, fits, chin, png).encode("utf-8"))
    paths["html"] = out / "report.html"
    with atomic_open(paths["html"], "wb") as f:
        f.write(render_page(points, fits, chin, png, command).encode("utf-8"))
    return paths
