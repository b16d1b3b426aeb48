"""The scaling study: the sweep planned from config, fits per format, the verdict, budget
plans from fitted laws, and a tiny real isoFLOP sweep through Snakemake on CPU."""

from __future__ import annotations

import copy
import io
import json
import math
import os
import re
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from tiny_workflow import executed_jobs, load, make_workflow, snakemake, tiny_experiment

from altgrad import cli
from altgrad.analysis.scaling_page import render_section
from altgrad.analysis.scaling_study import chinchilla_frame, fit_format, fit_sweep, fits_frame, gap_verdict
from altgrad.experiment.config import ExperimentError
from altgrad.experiment.planning import plan_budget
from altgrad.experiment.pricing import budget_totals, plan_job
from altgrad.experiment.sweep import budget_tag
from altgrad.scaling_laws import ScalingInputError
from altgrad.training.flops import ModelShape, flops_per_token

VOCAB = 5376  # >= the compacted eurlex-sample vocabulary (5354), a multiple of 64
TINY_SHAPES = [{"n_layer": 1, "n_embd": 8, "n_head": 1}, {"n_layer": 1, "n_embd": 16, "n_head": 1},
               {"n_layer": 1, "n_embd": 32, "n_head": 1}]
TINY_BUDGETS = [2.5e10, 5.0e10, 1.0e11]
FITS_COLUMNS = {
    "format", "n_budgets", "c_min", "c_max",
    "loss_k", "loss_a", "loss_l_inf", "loss_r2", "loss_n_points", "loss_n_boot",
    "loss_k_lo", "loss_k_hi", "loss_a_lo", "loss_a_hi", "loss_l_inf_lo", "loss_l_inf_hi",
    "loss_k_std", "loss_a_std", "loss_l_inf_std", "loss_error",
    "n_k", "n_b", "n_r2", "n_k_lo", "n_k_hi", "n_b_lo", "n_b_hi", "n_basis", "n_error", "n_problem",
    "d_at_c_max", "n_definition", "c_definition", "d_definition",
}


def tiny_config(**scaling) -> dict:
    """A one-run matrix (bf16) plus the tiny sweep: 3 budgets x 3 shapes x 2 formats."""
    cfg = tiny_experiment(**{"grid.formats": ["bf16"], "run.train.shadow_interval": 3})
    cfg["scaling"] = {
        "formats": ["bf16", "e4m3"], "budgets": list(TINY_BUDGETS), "sizes": copy.deepcopy(TINY_SHAPES),
        "vocab_size": VOCAB, "batch_size": 8,
        "train": {"eval_batches": 4, "checkpoint_interval": 100000, "lr": 1.0e-2, "min_lr": 1.0e-3},
        "n_boot": 50,
    }
    cfg["scaling"].update(scaling)
    return cfg


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(list(argv))
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------ the sweep from config


def test_sweep_runs_train_exactly_their_planned_tokens():
    exp = load(tiny_config())
    assert list(exp.runs) == ["bf16-adamw-s0"]  # the sweep is not part of the matrix (export, report)
    assert len(exp.sweep_runs) == 18 and len(exp.sweep_points) == 18
    assert set(exp.train_runs) == set(exp.runs) | set(exp.sweep_runs)
    tps = 8 * 32
    for p in exp.sweep_points:
        run = exp.sweep_runs[p.run_id]
        shape = ModelShape(1, 1, p.plan.shape.n_embd, 32, VOCAB)
        assert p.run_id == f"scale-{p.format}-c{budget_tag(p.plan.budget)}-d{shape.n_embd}"
        steps = round(p.plan.budget / (flops_per_token(shape) * tps))
        t, m = run.config.train, run.config.model
        assert t.max_steps == p.plan.steps == steps and t.batch_size == 8 and t.grad_accum == 1
        assert (m.n_layer, m.n_embd, m.n_head, m.block_size, m.vocab_size) == (1, shape.n_embd, 1, 32, VOCAB)
        # the planned D, and C spent to within half an optimizer step
        assert p.plan.tokens == steps * tps
        assert abs(p.plan.flops - p.plan.budget) <= 0.5 * flops_per_token(shape) * tps
        assert t.eval_interval == steps and t.shadow_interval == 0 and t.rank_interval == 0  # FLOPs on training only
        assert t.lr == 1e-2 and t.eval_batches == 4 and t.warmup_steps == round(0.1 * steps)
        assert run.config.precision.weight == p.format and run.origin == "scaling"
        assert run.labels()["tag"] == p.run_id.removeprefix(f"scale-{p.format}-")
    assert budget_tag(1e13) == "1e13" and budget_tag(2.5e13) == "2.5e13" and budget_tag(9.9999e12) == "1e13"
    # priced by the pipeline's computation, listed apart, and summed with the matrix
    report = exp.budget_report()
    assert "scaling sweep (target results/scaling/report.html" in report and "TOTAL (18 jobs)" in report
    assert "matrix + scaling sweep:" in report
    assert exp.resources("scale-e4m3-c1e11-d32")["gpu"] == 0


def test_family_sizes_are_hardware_friendly_and_centred_on_chinchilla():
    """Centred on the member whose run trains closest to 20 tokens per parameter at C, counted
    with the real FLOPs per token (the old centre sqrt(C/120) assumed 6N and sat 2-4x too large)."""
    cfg = tiny_config(sizes=3, aspect=64, budgets=[1e13, 1e14, 1e15], batch_size=8)
    exp = load(cfg)
    by_budget: dict[float, list] = {}
    for p in exp.sweep_points:
        if p.format == "bf16":
            by_budget.setdefault(p.plan.budget, []).append(p.plan)
    for c, plans in by_budget.items():
        assert len(plans) == 3
        assert all(p.shape.n_embd % 64 == 0 and p.shape.head_dim == 64 and p.shape.n_embd == 64 * p.shape.n_layer
                   for p in plans)
        # every family member the budget can train, its tokens counted by hand: the window is centred on
        # the one nearest 20 tokens per parameter
        ratio = {}
        for layers in range(1, 40):
            d = 64 * layers
            n = layers * (12 * d * d + 2 * d) + d
            steps = round(c / ((6 * n + 6 * VOCAB * d + 6 * layers * 32 * d) * 8 * 32))
            if steps >= 10 and steps * 8 * 32 >= n / 10:
                ratio[layers] = steps * 8 * 32 / n
        best = min(ratio, key=lambda layers: abs(math.log(ratio[layers] / 20)))
        layers = sorted(p.shape.n_layer for p in plans)
        assert best in layers and (layers[1] == best or best in (min(ratio), max(ratio)))
    assert {p.run_id.rsplit("-", 1)[1] for p in exp.sweep_points} >= {"d64", "d128"}


def test_a_window_of_listed_sizes_follows_a_given_law():
    widths = [8, 16, 24, 32, 48, 64, 96]
    sizes = [{"n_layer": 1, "n_embd": w, "n_head": 1} for w in widths]
    n_of = {w: 12 * w * w + 3 * w for w in widths}  # 1 layer, no biases: 12d² + 2 LayerNorms + ln_f
    k, b = 1.9e-5, 0.79  # N* ≈ 3.1k (width 16) at 2.5e10 ... 28k (width 48) at 4e11
    exp = load(tiny_config(sizes=sizes, window=3, centre={"k": k, "b": b}, budgets=[2.5e10, 1e11, 4e11]))
    for c in (2.5e10, 1e11, 4e11):
        chosen = sorted(p.plan.shape.n_embd for p in exp.sweep_points if p.format == "bf16" and p.plan.budget == c)
        i = widths.index(chosen[0])
        assert chosen == widths[i:i + 3]  # consecutive
        nearest = min(widths, key=lambda w: abs(math.log(n_of[w] / (k * c**b))))
        assert chosen[1] == nearest or nearest in (widths[0], widths[-1])
    assert len({p.plan.shape.n_embd for p in exp.sweep_points}) > 3  # the window moves with C
    with pytest.raises(ExperimentError, match="scaling.window: 9 is more than the 7 shapes"):
        load(tiny_config(sizes=sizes, window=9))
    with pytest.raises(ExperimentError, match="scaling.centre"):
        load(tiny_config(sizes=sizes, window=3, centre={"k": 1.0, "b": 1.5}))


def test_too_few_budgets_is_the_fitters_error_before_any_work():
    with pytest.raises(ExperimentError, match=r"scaling.budgets: need at least 3 distinct compute budgets"):
        load(tiny_config(budgets=[1e10, 2e10, 2e10]))
    with pytest.raises(ScalingInputError, match="need at least 3 distinct compute budgets"):
        fit_format(_synthetic_sweep([1e12, 2e12])[lambda d: d.format == "bf16"])
    code, _, err = run_cli("plan", "--config", _write(tiny_config(budgets=[1e10, 2e10])))
    assert code == 2 and "need at least 3 distinct compute budgets to fit, got 2" in err


def test_sweep_config_problems_are_reported_with_the_fix():
    cfg = tiny_config(vocab_size=None, sizes=[*TINY_SHAPES[:2], {"n_layer": 6, "n_embd": 512}])
    with pytest.raises(ExperimentError) as e:
        load(cfg)
    assert "scaling.vocab_size: required with corpus.compact_vocab" in str(e.value)
    with pytest.raises(ExperimentError) as e:
        load(tiny_config(sizes=[*TINY_SHAPES[:2], {"n_layer": 6, "n_embd": 512}]))
    assert "too small for n_layer=6 n_embd=512" in str(e.value) and "N/10" in str(e.value)
    with pytest.raises(ExperimentError, match="need at least 3 distinct model sizes"):
        load(tiny_config(sizes=[TINY_SHAPES[0], TINY_SHAPES[1], dict(TINY_SHAPES[1])]))
    with pytest.raises(ExperimentError, match=r"scaling.formats\[1\]: unknown format 'e4m4'"):
        load(tiny_config(formats=["bf16", "e4m4"]))
    with pytest.raises(ExperimentError, match="can train only"):
        load(tiny_config(sizes=3, budgets=[1e9, 2e9, 4e9]))


# ------------------------------------------------------------------------------ fits and verdict


# FLOPs per token of the synthetic sweep's models: 6N plus an lm_head-and-attention overhead
# that grows as N^(1/3) (a fixed width/depth family with the vocabulary's term dominating),
# written out here so that D* can be checked against it rather than against the library.
OVERHEAD = 2.0e5


def _fpt(n):
    return 6.0 * n + OVERHEAD * np.cbrt(n)


def _synthetic_sweep(budgets, formats=("bf16", "e4m3"), noise=0.0, seed=0, n_star=lambda c: 0.1 * c**0.5
                     ) -> pd.DataFrame:
    """Losses from a Chinchilla-style law L = E + A/N^0.34 + B/D^0.28 with D = C/(6N), the isoFLOP
    optimum of budget C near ``n_star(C)`` (sizes 1/4x … 4x around it); e4m3 pays a penalty that
    shrinks with compute (+0.4·(1e12/C)^0.3)."""
    rng = np.random.default_rng(seed)
    rows = []
    for fmt in formats:
        for c in budgets:
            for f in (0.25, 0.5, 1.0, 2.0, 4.0):
                n = n_star(c) * f
                n0 = 0.1 * c**0.5
                loss = 1.7 + 400 / (n * n0 / n_star(c))**0.34 + 410 / (c / (6 * n * n0 / n_star(c))) ** 0.28
                loss += rng.normal(0, noise)
                if fmt != "bf16":
                    loss += 0.4 * (1e12 / c) ** 0.3
                rows.append({"run_id": f"{fmt}-{c:g}-{f}", "format": fmt, "budget": c, "n_params_nonembed": n,
                             "flops_per_token": _fpt(n), "val_loss": loss, "status": "completed"})
    return pd.DataFrame(rows)


def test_fits_per_format_find_vertices_and_the_gap_trend():
    df = _synthetic_sweep([1e12, 1e13, 1e14, 1e15])
    df.loc[0, "status"] = "diverged"  # a diverged run is reported, not fitted
    fits = fit_sweep(df, n_boot=50)
    assert list(fits) == ["bf16", "e4m3"] and fits["bf16"].excluded == [df.loc[0, "run_id"]]
    for f in fits.values():
        assert all(o["valid"] and o["source"] == "parabola vertex" for o in f.optima)
        assert f.size.b == pytest.approx(0.5, abs=0.1) and f.size.r2 > 0.95
        assert f.loss.a < 0 and f.loss.r2 > 0.99 and f.size_basis == "parabola vertices at 4 budgets"
    table = fits_frame(fits)
    assert FITS_COLUMNS <= set(table.columns) and list(table.format) == ["bf16", "e4m3"]
    row = table.iloc[0]
    assert row.loss_n_points == 4 and row.loss_n_boot > 0 and row.loss_l_inf_lo <= row.loss_l_inf_hi
    chin = chinchilla_frame(fits)
    assert len(chin) == 14 and set(chin.compute) == {10.0**e for e in range(15, 22)}
    assert list(chin.extrapolated[chin.format == "bf16"]) == [False] + [True] * 6  # measured 1e12..1e15
    # D* = C / FLOPs per token of a model of size N*, as the sweep's runs counted them: not C / 6N*
    np.testing.assert_allclose(chin.d_opt, chin.compute / _fpt(chin.n_opt), rtol=1e-9)
    c_over_6n = chin.compute / (6 * chin.n_opt)
    assert (chin.d_opt < c_over_6n).all() and chin.d_opt.iloc[0] < 0.5 * c_over_6n.iloc[0]  # 2.4x at 1e15
    assert row.d_at_c_max == pytest.approx(1e15 / _fpt(fits["bf16"].size.predict_n(1e15)), rel=1e-9)
    assert all(f.law_problem == "" for f in fits.values()) and (table.n_problem == "").all()
    (text,) = gap_verdict(fits)
    assert text.startswith("e4m3 vs bf16:") and "it shrinks by" in text and "Extrapolated" in text
    assert "hypothesis" in text
    assert "bf16 is not in scaling.formats" in gap_verdict({"e4m3": fits["e4m3"]})[0]


def test_a_curve_without_interior_minimum_is_flagged_not_hidden():
    df = _synthetic_sweep([1e12, 1e13, 1e14])
    # keep only the three smallest sizes at 1e13: the minimum lies beyond the sampled range
    drop = df[(df.budget == 1e13) & (df.n_params_nonembed > 0.1 * 1e13**0.5 * 1.1)].index
    f = fit_format(df.drop(drop)[lambda d: d.format == "bf16"], n_boot=20)
    mid = next(o for o in f.optima if o["budget"] == 1e13)
    assert not mid["valid"] and mid["source"] == "lowest measured" and mid["reason"]
    assert "the lowest measured size at 1" in f.size_basis and f.size is not None
    # ... and a law resting on it gives no Chinchilla table, and the page says why
    assert f.law_problem.startswith("1 of 3 budgets have no interior isoFLOP vertex (C = 10.0e12: parabola vertex")
    assert "rest on boundary optima" in f.law_problem
    fits = {"bf16": f}
    assert chinchilla_frame(fits).empty
    assert fits_frame(fits).n_problem.iloc[0] == f.law_problem
    page = render_section(df.iloc[:0], fits, chinchilla_frame(fits), None)  # no run table: synthetic rows
    assert "No Chinchilla table for bf16: 1 of 3 budgets have no interior isoFLOP vertex" in page


def test_a_law_whose_optimum_shrinks_with_compute_prints_no_table():
    """Every curve has an interior vertex, but N* falls as C grows (b ≈ -0.27; the old default
    sweep reported -0.22): the fit is kept and shown, the Chinchilla table is refused with the reason."""
    df = _synthetic_sweep([1e12, 4e12, 1.6e13, 6.4e13, 2.56e14], n_star=lambda c: 1e5 * (c / 1e12) ** -0.22)
    fits = fit_sweep(df, n_boot=20)
    for f in fits.values():
        assert all(o["valid"] for o in f.optima)
        assert -0.3 < f.size.b < -0.2
        assert "outside (0, 1): N* falls as compute grows" in f.law_problem
    assert chinchilla_frame(fits).empty
    page = render_section(df.iloc[:0], fits, chinchilla_frame(fits), None)  # no run table: synthetic rows
    assert page.count("No Chinchilla table for") == 2 and "N* falls as compute grows" in page
    assert "predicted L" not in page  # no table head either


# ------------------------------------------------------------------------------ altgrad plan


def _write(cfg: dict, path: Path | None = None) -> str:
    import tempfile

    path = path or Path(tempfile.mkdtemp()) / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_plan_uses_the_fitted_law_when_fits_exist_and_chinchilla_otherwise(tmp_path):
    cfg = tiny_config()
    cfg["grid"]["formats"] = ["bf16", "e4m3", "e5m2"]
    cfg["run"]["model"].update(n_embd=384, n_head=6, n_layer=6, block_size=256)
    cfg_path = _write(cfg, tmp_path / "cfg.yaml")
    fits_path = tmp_path / "fits.parquet"
    args = ["plan", "--config", cfg_path, "--budget-usd", "20", "--device", "h100", "--fits", str(fits_path)]

    code, out, _ = run_cli(*args)  # no fits yet
    assert code == 0, out
    assert f"laws: {fits_path} not found: Chinchilla" in out and "law used: Chinchilla" in out
    assert "fitted N" not in out and "split over 3 run(s)" in out

    fits = fit_sweep(_synthetic_sweep([1e16, 1e17, 1e18, 1e19]), n_boot=20)
    fits_frame(fits).to_parquet(fits_path)
    code, out, _ = run_cli(*args)
    assert code == 0, out
    assert f"laws: {fits_path} found" in out
    k, b = fits["bf16"].size.k, fits["bf16"].size.b
    assert f"law used: fitted N*(C) = {k:.4g}·C^{b:.4f} from {fits_path} (bf16;" in out
    assert "parabola vertices at 4 budgets" in out
    assert "e5m2 (1 run(s)" in out and f"{fits_path} has no row for e5m2" in out  # no law: Chinchilla, said so
    assert "budget 20.00 USD, left" in out

    # the plan is the budget module's computation, and its jobs are priced like the pipeline's
    exp = load(cfg)
    plan = plan_budget(exp.runs.values(), exp.budget, 20, meta=exp.meta, device="h100", fits_path=fits_path)
    assert {f.format for f in plan.formats} == {"bf16", "e4m3", "e5m2"} and not plan.refused
    assert budget_totals(plan.jobs).usd <= 20.0 + 1e-9
    for f in plan.formats:
        p = f.plan
        assert p.shape.n_embd % 64 == 0 and p.shape.head_dim == 64 and p.shape.block_size == 256
        assert p.tokens == p.steps * 4 * 256 and p.tokens >= p.n_params_nonembed / 10
        job = next(j for j in plan.jobs if j.name in f.run_ids)
        ref = plan_job("x", p.shape, p.tokens, "h100", 0.3, 2.69,
                       flops_fn=lambda s, k=f.eval_shadow_factor: k * flops_per_token(s))
        # the planned run's FLOPs, priced as the budget table prices it: never as native BF16
        assert job.flops == pytest.approx(ref.flops, rel=2e-3) and job.basis == "assumed"
        assert job.overhead > 1 and job.usd > ref.usd
        # the format's runs stay within its share of the budget (split evenly over the runs)
        assert sum(j.usd for j in plan.jobs if j.name in f.run_ids) <= 20.0 * len(f.run_ids) / 3 + 1e-9
    bf16 = next(f for f in plan.formats if f.format == "bf16").plan
    assert bf16.n_target == pytest.approx(fits["bf16"].size.predict_n(bf16.flops_per_run))

    # a law whose N* does not grow with compute is not used (Chinchilla, with the reason)
    table = fits_frame(fits)
    table.loc[table.format == "e4m3", "n_b"] = -0.2
    table.loc[table.format == "bf16", "n_k"] *= 10  # bf16's law now asks for a larger model than Chinchilla
    table.to_parquet(fits_path)
    code, out, _ = run_cli(*args)
    assert code == 0 and "is not used: the exponent of N*(C) =" in out and "C^-0.200 is outside (0, 1)" in out
    assert "note: the formats get different plans" in out
    fits_frame(fits).to_parquet(fits_path)

    # --formats narrows the split; an infeasible budget is refused with the reason
    code, out, _ = run_cli(*args, "--formats", "e4m3")
    assert code == 0 and "split over 1 run(s)" in out and "bf16" not in out.split("budget table")[1]
    code, _, err = run_cli(*args, "--formats", "e2m5")
    assert code == 2 and "not in the configured matrix" in err
    code, out, err = run_cli(*args[:-2], "--budget-usd", "0.0000001")
    assert code == 2 and "REFUSED" in out and "too little for even the smallest shape" in out
    assert "infeasible plan for bf16, e4m3, e5m2" in err and "the least budget that works for every format is $" in err
    code, _, err = run_cli("plan", "--config", cfg_path, "--budget-usd", "20")  # the config's cpu costs $0/h
    assert code == 2 and "--price" in err


def test_plan_refuses_a_budget_its_law_cannot_reach_and_names_the_least_that_works(tmp_path):
    """`altgrad plan --budget-usd 0.0001 --device h100` used to print a 1-layer plan 27x below its
    own law's D* (then C / 6N*). Now a plan must be within 2x of the law's N* and D*. (The tiny
    matrix has one run, so $0.00001 buys it what $0.0001 buys each of the default's runs.)"""
    cfg = tiny_config()
    cfg_path = _write(cfg, tmp_path / "cfg.yaml")
    args = ["plan", "--config", cfg_path, "--device", "h100", "--fits", str(tmp_path / "no-fits.parquet")]
    code, out, err = run_cli(*args, "--budget-usd", "0.00001")
    assert code == 2 and "REFUSED: budget $0.000010" in out and "has no plan within 2x of the law's N* and D*" in out
    assert "is below the smallest shape" in out and "infeasible plan for bf16" in err
    least = re.search(r"the least budget that works is \$([0-9.]+) for these 1 run\(s\)", out).group(1)
    code, out, _ = run_cli(*args, "--budget-usd", least)
    assert code == 0 and "REFUSED" not in out, out
    exp = load(cfg)
    for usd, ok in ((float(least), True), (0.9 * float(least), False)):
        plan = plan_budget(exp.runs.values(), exp.budget, usd, device="h100", fits_path=tmp_path / "no-fits.parquet")
        assert bool(plan.refused) is not ok
    for f in plan_budget(exp.runs.values(), exp.budget, float(least), device="h100",
                         fits_path=tmp_path / "no-fits.parquet").formats:
        p = f.plan
        # the law: Chinchilla's 20 tokens per parameter; the plan within 2x of its N* and D*
        assert p.d_target == pytest.approx(20 * p.n_target, rel=1e-9)
        assert 0.5 <= p.n_params_nonembed / p.n_target <= 2 and 0.5 <= p.tokens / p.d_target <= 2
        # its tokens: C over the FLOPs per token of its shape, counted by hand (GPT-2 vocabulary, context 32)
        L, d = p.shape.n_layer, p.shape.n_embd
        n = L * (12 * d * d + 2 * d) + d
        fpt = f.eval_shadow_factor * (6 * n + 6 * 50257 * d + 6 * L * 32 * d)
        assert n == p.n_params_nonembed and p.tokens <= p.flops_per_run / fpt < p.tokens + 4 * 32


# ------------------------------------------------------------------------------ the real sweep


@pytest.mark.slow
def test_too_few_budgets_stops_snakemake_before_any_job(tmp_path):
    wf = make_workflow(tmp_path, tiny_config(budgets=[1e10, 1e11]))
    proc = snakemake(wf, "-n", "results/scaling/report.html", check=False)
    assert proc.returncode != 0 and "no job started" in proc.stdout
    assert "scaling.budgets: need at least 3 distinct compute budgets to fit, got 2" in proc.stdout
    assert not (wf / "results").exists() and not (wf / "data").exists()


@pytest.mark.slow
def test_tiny_real_sweep_through_snakemake(tmp_path):
    wf = make_workflow(tmp_path, tiny_config())
    # the default target does not train the sweep
    dry = snakemake(wf, "-n")
    assert executed_jobs(dry.stdout) == {"prepare": 1, "train": 1, "export": 1, "report": 1, "all": 1}
    assert "scaling sweep (target results/scaling/report.html" in dry.stdout  # but prices it
    dry = snakemake(wf, "-n", "results/scaling/report.html")
    assert executed_jobs(dry.stdout) == {"prepare": 1, "train": 18, "scaling_report": 1}

    started = time.perf_counter()
    snakemake(wf, "--cores", "2", "results/scaling/report.html", timeout=900)
    elapsed = time.perf_counter() - started
    print(f"\ntiny sweep (18 runs + prepare + fits) through snakemake --cores 2: {elapsed:.0f} s")

    exp = load(tiny_config())
    out = wf / "results" / "scaling"
    points = pd.read_parquet(out / "points.parquet")
    assert sorted(points.run_id) == sorted(exp.sweep_runs)  # every point, nothing else
    assert (points.status == "completed").all() and np.isfinite(points.val_loss).all()
    # each run trained exactly its planned steps and tokens, and spent C to within half a step
    assert (points.steps == points.steps_planned).all() and (points.tokens == points.tokens_planned).all()
    assert np.allclose(points.flops, points.flops_per_token * points.tokens)
    half_step = 0.5 * points.flops_per_token * points.tokens_per_step
    assert ((points.flops - points.budget).abs() <= half_step).all()
    for p in exp.sweep_points:
        summary = json.loads((wf / "results/runs" / p.run_id / "summary.json").read_text())
        assert summary["steps"] == p.plan.steps and summary["flops"] == pytest.approx(p.plan.flops)
        assert summary["params_non_embedding"] == p.plan.n_params_nonembed
        assert json.loads((wf / "results/runs" / p.run_id / "run.json").read_text())["origin"] == "scaling"

    fits = pd.read_parquet(out / "fits.parquet")
    assert FITS_COLUMNS <= set(fits.columns) and list(fits.format) == ["bf16", "e4m3"]
    assert (fits.n_budgets == 3).all() and (fits.c_min == 2.5e10).all() and (fits.c_max == 1e11).all()
    optima = pd.read_parquet(out / "optima.parquet")
    assert len(optima) == 6 and set(optima.source) <= {"parabola vertex", "lowest measured"}
    chin = pd.read_parquet(out / "chinchilla.parquet")
    assert chin.extrapolated.all() and set(chin.compute) <= {10.0**e for e in range(15, 22)}
    assert (out / "isoflop.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "section.html").read_text().startswith('<section id="scaling">')
    page = (out / "report.html").read_text()
    assert "How the format gap changes with compute" in page and "data:image/png;base64," in page
    assert "bf16" in page and "e4m3" in page and "e4m3 vs bf16" in page
    assert all(rid in page for rid in exp.sweep_runs)

    assert "Nothing to be done" in snakemake(wf, "-n", "results/scaling/report.html").stdout

    # a Chinchilla table exactly for the formats whose law rests on interior vertices with b in (0, 1),
    # and the page says why for the others
    usable = set(fits.format[fits.n_problem == ""])
    assert set(chin.format) == usable
    for r in fits[fits.n_problem != ""].itertuples():
        assert f"No Chinchilla table for {r.format}: " in page

    # altgrad plan in this tree uses the fitted law where the study trusts it, and says why not elsewhere
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "altgrad.cli", "plan", "--budget-usd", "20", "--device", "h100"],
                          cwd=wf, env=env, capture_output=True, text=True, check=False)
    assert "laws: results/scaling/fits.parquet found" in proc.stdout
    if "bf16" in usable:
        assert "fitted N*(C) = " in proc.stdout and "(bf16; measured 25.0e9–100e9 FLOPs" in proc.stdout
    else:
        assert "its fitted N*(C) is not used: " in proc.stdout
