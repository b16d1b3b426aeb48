"""The scaling study: the sweep's runs -> per-format fits -> how the format gap changes with compute.

:func:`collect_points` reads the sweep's run directories: each holds the run's ``run.json``
(its format and compute budget C), ``config.yaml`` (its shape and steps) and ``summary.json``
(what it spent and its final held-out val loss). :func:`fit_sweep` fits per format,
:func:`fits_frame` and :func:`chinchilla_frame` are the tables, :func:`gap_verdict` the
sentences; :func:`altgrad.analysis.report.build_scaling_report` writes them with the figure
and page (:mod:`altgrad.analysis.scaling_page`) into ``results/scaling/``. The sweep itself
is planned before any job runs (:mod:`altgrad.experiment.sweep`); ``altgrad plan
--budget-usd`` reads ``fits.parquet`` back.

Conventions (the same as everywhere in altgrad):

* **N** is the NON-EMBEDDING parameter count, ``param_counts(shape)[1]`` (no token or
  position embedding; the lm_head is tied to the token embedding, so it is not in N).
* **C** is ``flops_per_token(shape) × training tokens``: ``6·N + 6·V·d`` (lm_head)
  ``+ 6·L·T·d`` (causal attention) per token, forward + backward; evaluation passes are not
  counted. It is what a run's ``summary.json`` reports as ``flops``.
* Per format: ``L(C) = k·C^a + L∞`` fitted in linear loss space to the per-budget
  compute-optimal losses; ``N*(C) = k'·C^b`` fitted to the per-budget optima of a parabola in
  ``log N`` (:func:`altgrad.scaling_laws.isoflop_optimum`); ``D*(C) = C / flops_per_token(N*)``,
  the tokens a model of size N* trains at C, with the FLOPs per token of the sweep's own
  shapes (:func:`altgrad.training.flops.flops_per_token_by_size`: exact at every trained
  shape, interpolated between them). Not ``C / 6N*``: on these small models the lm_head and
  attention are most of the FLOPs, and ``C / 6N*`` overstates D* several-fold.
* A Chinchilla table (and ``altgrad plan``'s use of a law) needs a law that can be trusted:
  an interior isoFLOP vertex at every budget (sizes that bracket the optimum) and an exponent
  b in (0, 1). Otherwise :attr:`FormatFits.law_problem` says why, and no table is printed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from altgrad.errors import AltgradError
from altgrad.experiment.pricing import eng, run_shape
from altgrad.scaling_laws import (
    DEFAULT_BUDGETS,
    Fit,
    PowerLaw,
    ScalingInputError,
    chinchilla_table,
    fit_loss_vs_compute,
    fit_optimal_size,
    isoflop_optimum,
    positive_finite,
    require_distinct,
    unphysical_reason,
)
from altgrad.training.config import RunConfig
from altgrad.training.flops import flops_per_token, param_counts, size_flops_relation

__all__ = [
    "BASELINE",
    "C_DEFINITION",
    "N_DEFINITION",
    "FormatFits",
    "chinchilla_frame",
    "collect_points",
    "fit_format",
    "fit_sweep",
    "fits_frame",
    "gap_verdict",
]

BASELINE = "bf16"
GAP_TOLERANCE = 0.01  # nats: a change of the gap smaller than this is "about constant"
N_DEFINITION = "non-embedding (no token/position embedding; the tied lm_head is not counted)"
C_DEFINITION = "flops_per_token(shape) x tokens = (6N + 6Vd lm_head + 6LTd causal attention) x D, training only"
D_DEFINITION = ("D*(C) = C / flops_per_token(shape of size N*(C)): the tokens a model of size N* trains at C "
                "(FLOPs per token of the sweep's shapes, interpolated between them)")


def _read(path: Path) -> Any:
    return json.loads(path.read_text())


def collect_points(run_dirs: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """One row per sweep run: what was planned (its shape, steps and tokens from
    ``config.yaml``, its budget from ``run.json``) and what its ``summary.json`` says
    (steps, tokens, FLOPs actually spent, status, final held-out val loss)."""
    rows, missing = [], []
    for run_dir in map(Path, run_dirs):
        try:
            labels, s = _read(run_dir / "run.json"), _read(run_dir / "summary.json")
            cfg = RunConfig.from_yaml(run_dir / "config.yaml")
        except FileNotFoundError:
            missing.append(run_dir.name)
            continue
        if labels.get("budget") is None or cfg.model.vocab_size is None:
            raise AltgradError(f"{run_dir} is not a run of the scaling sweep (its run.json has no budget)")
        m, t = cfg.model, cfg.train
        shape = run_shape(cfg, m.vocab_size)
        total, nonembed = param_counts(shape)
        tokens_per_step = t.batch_size * t.grad_accum * m.block_size
        fpt = flops_per_token(shape)
        val, best = s.get("final_val_loss"), s.get("best_val_loss")
        rows.append({
            "run_id": labels["run_id"], "format": labels["format"], "budget": float(labels["budget"]),
            "n_layer": m.n_layer, "n_embd": m.n_embd, "n_head": m.n_head, "block_size": m.block_size,
            "vocab_size": m.vocab_size, "n_params": total, "n_params_nonembed": nonembed,
            "flops_per_token": fpt, "tokens_per_step": tokens_per_step, "steps_planned": t.max_steps,
            "tokens_planned": t.max_steps * tokens_per_step, "flops_planned": fpt * t.max_steps * tokens_per_step,
            "status": s.get("status"), "steps": s.get("steps"), "tokens": s.get("tokens"), "flops": s.get("flops"),
            "val_loss": float("nan") if val is None else float(val),
            "best_val_loss": float("nan") if best is None else float(best),
            "wall_time_s": s.get("wall_time_s"),
        })
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise AltgradError(
            f"{len(missing)} sweep run(s) are not finished (no run.json, config.yaml or summary.json): "
            f"{', '.join(missing[:5])}{more}; train them first (`snakemake results/scaling/report.html` does)"
        )
    df = pd.DataFrame(rows)
    if len(df):
        df["flops_ratio"] = df["flops"] / df["budget"]
    return df


@dataclass
class FormatFits:
    """Everything fitted for one format."""

    format: str
    optima: list[dict[str, Any]]  # one per budget (see fit_format)
    loss: Fit | None = None
    loss_error: str = ""
    size: PowerLaw | None = None
    size_error: str = ""
    size_basis: str = ""
    excluded: list[str] = field(default_factory=list)  # run ids not fitted (diverged, no loss)
    # N -> training FLOPs per token of a model of that size shaped like the sweep's (D* = C / this)
    flops_at: Callable[[float], float] | None = field(default=None, repr=False, compare=False)
    law_problem: str = ""  # why N*(C) gives no Chinchilla table and no plan ("" when it does)

    def l_at(self, c: float) -> float:
        return float(self.loss.predict(c)) if self.loss is not None else float("nan")

    def d_at(self, c: float) -> float:
        """``D*(C) = C / flops_per_token(N*(C))`` (NaN without a size law)."""
        if self.size is None or self.flops_at is None:
            return float("nan")
        return float(self.size.predict_d(c, self.flops_at))


def fit_format(df, *, n_boot: int = 200, seed: int = 0, fmt: str | None = None) -> FormatFits:
    """Fit one format's sweep rows (columns ``budget``, ``n_params_nonembed``,
    ``flops_per_token``, ``val_loss``, ``status``, ``run_id``).

    Per budget: :func:`~altgrad.scaling_laws.isoflop_optimum` over the completed runs. The
    optimum used downstream (``n_used``/``l_used``) is the parabola's vertex when it is a
    minimum inside the sampled sizes; otherwise the lowest measured point, flagged
    (``source``). ``N*(C)`` is fitted on vertices only when ≥ 3 budgets have one, else on the
    flagged mix (``size_basis`` says which); ``L(C)`` on the per-budget ``l_used``. Fewer than
    3 distinct budgets in ``df`` raises :class:`~altgrad.scaling_laws.ScalingInputError`; a
    fit that cannot be made from the runs that completed keeps its error text instead.
    ``flops_at`` is the sweep's own ``N -> FLOPs per token`` (D* = C / flops_at(N*)), and
    ``law_problem`` says why the size law gives no Chinchilla table: a budget without an
    interior vertex, or an exponent outside (0, 1).
    """
    fmt = fmt or (str(df["format"].iloc[0]) if len(df) else "?")
    # a sweep planned with too few budgets is an error; runs lost to divergence are recorded below
    require_distinct(f"{fmt} budgets", positive_finite("budget", df["budget"].unique()), "compute budgets")
    ok_mask = (df["status"] == "completed") & np.isfinite(df["val_loss"].astype(float))
    ok = df[ok_mask]
    out = FormatFits(fmt, [], excluded=sorted(df.loc[~ok_mask, "run_id"]))
    for c in sorted(df["budget"].unique()):
        g = ok[ok["budget"] == c]
        o: dict[str, Any] = {"format": fmt, "budget": float(c), "n_sizes": int(g["n_params_nonembed"].nunique()),
                             "valid": False, "n_opt": math.nan, "l_opt": math.nan, "reason": "",
                             "n_best_sampled": math.nan, "l_best_sampled": math.nan,
                             "n_used": math.nan, "l_used": math.nan, "source": "none"}
        if len(g):
            best = g.loc[g["val_loss"].idxmin()]
            o.update(n_best_sampled=float(best["n_params_nonembed"]), l_best_sampled=float(best["val_loss"]))
        if o["n_sizes"] < 3:
            o["reason"] = f"{o['n_sizes']} completed size(s) at this budget; a parabola needs 3"
            if len(g):
                o.update(n_used=o["n_best_sampled"], l_used=o["l_best_sampled"], source="lowest measured")
        else:
            r = isoflop_optimum(g["n_params_nonembed"].astype(float), g["val_loss"].astype(float))
            o.update(valid=r.valid, n_opt=r.n_opt, l_opt=r.l_opt, reason=r.reason)
            if r.valid:
                o.update(n_used=r.n_opt, l_used=r.l_opt, source="parabola vertex")
            else:
                o.update(n_used=o["n_best_sampled"], l_used=o["l_best_sampled"], source="lowest measured")
        out.optima.append(o)

    usable = [o for o in out.optima if math.isfinite(o["l_used"])]
    valid = [o for o in usable if o["valid"]]
    basis = valid if len(valid) >= 3 else usable
    try:
        out.size = fit_optimal_size([o["budget"] for o in basis], [o["n_used"] for o in basis],
                                    n_boot=max(n_boot, 0), seed=seed)
        n_fallback = sum(not o["valid"] for o in basis)
        out.size_basis = (f"parabola vertices at {len(basis)} budgets" if not n_fallback else
                          f"parabola vertex at {len(basis) - n_fallback} of {len(basis)} budgets, the lowest "
                          f"measured size at {n_fallback} (no interior minimum there: sample wider sizes)")
    except ScalingInputError as e:
        out.size_error = str(e)
    try:
        out.loss = fit_loss_vs_compute([o["budget"] for o in usable], [o["l_used"] for o in usable],
                                       n_boot=max(n_boot, 0), seed=seed)
    except ScalingInputError as e:
        out.loss_error = str(e)
    shapes = df.drop_duplicates("n_params_nonembed")
    out.flops_at = size_flops_relation(shapes["n_params_nonembed"].astype(float), shapes["flops_per_token"].astype(float))
    out.law_problem = _law_problem(out)
    return out


def _law_problem(f: FormatFits) -> str:
    """Why ``f``'s N*(C) law must not be extrapolated into a Chinchilla table or used to plan."""
    if f.size is None:
        return f"no N*(C) law ({f.size_error})"
    missed = [o for o in f.optima if not o["valid"]]
    if missed:
        where = "; ".join(f"C = {eng(o['budget'])}: {o['reason']}" for o in missed)
        return (f"{len(missed)} of {len(f.optima)} budgets have no interior isoFLOP vertex ({where}), so N*(C) would "
                "rest on boundary optima, not measured ones: sample sizes that bracket the optimum at every budget")
    why = unphysical_reason(f.size)
    if why:
        return why
    return ""


def fit_sweep(points_df, *, n_boot: int = 200, seed: int = 0) -> dict[str, FormatFits]:
    """:func:`fit_format` for every format, in the order the formats first appear."""
    return {fmt: fit_format(points_df[points_df["format"] == fmt], n_boot=n_boot, seed=seed, fmt=fmt)
            for fmt in dict.fromkeys(points_df["format"])}


def _ci(d: Mapping[str, Any], key: str, i: int) -> float:
    v = d.get(key)
    return float(v[i]) if v is not None else math.nan


def fits_frame(fits: Mapping[str, FormatFits]):
    """``fits.parquet``: one row per format.

    ``loss_*``: ``L(C) = loss_k·C^loss_a + loss_l_inf`` (R² in linear space; ``_std`` and
    ``_lo``/``_hi`` = bootstrap std and 95% interval; ``loss_n_points`` points, one per budget).
    ``n_*``: ``N*(C) = n_k·C^n_b`` in non-embedding parameters (R² in log space), ``n_basis``
    says which per-budget optima it rests on; ``n_problem`` why it gives no Chinchilla table and
    ``altgrad plan`` does not use it (empty when it is usable). ``d_at_c_max``: D* at the largest
    measured budget, ``D*(C) = C / flops_per_token(N*)`` (``d_definition``; not a power law,
    since the FLOPs per token are not proportional to N). ``c_min``/``c_max``: the measured
    compute range (outside it = extrapolation). ``*_error``: why a fit is missing (empty when
    it is there).
    """
    nan = math.nan
    rows = []
    for fmt, f in fits.items():
        usable = [o for o in f.optima if math.isfinite(o["l_used"])]
        row: dict[str, Any] = {
            "format": fmt, "n_budgets": len(usable),
            "n_runs_fitted": sum(o["n_sizes"] for o in f.optima), "n_runs_excluded": len(f.excluded),
            "c_min": min((o["budget"] for o in usable), default=nan),
            "c_max": max((o["budget"] for o in usable), default=nan),
        }
        L = f.loss
        row.update({
            "loss_k": L.k if L else nan, "loss_a": L.a if L else nan, "loss_l_inf": L.l_inf if L else nan,
            "loss_r2": L.r2 if L else nan, "loss_n_points": L.n_points if L else 0, "loss_n_boot": L.n_boot if L else 0,
        })
        for p in ("k", "a", "l_inf"):
            row[f"loss_{p}_std"] = L.std.get(p, nan) if L else nan
            row[f"loss_{p}_lo"] = _ci(L.ci95, p, 0) if L else nan
            row[f"loss_{p}_hi"] = _ci(L.ci95, p, 1) if L else nan
        row["loss_error"] = f.loss_error
        S = f.size
        row.update({"n_k": S.k if S else nan, "n_b": S.b if S else nan, "n_r2": S.r2 if S else nan,
                    "n_n_points": S.n_points if S else 0, "n_n_boot": S.n_boot if S else 0})
        for p in ("k", "b"):
            row[f"n_{p}_std"] = S.std.get(p, nan) if S else nan
            row[f"n_{p}_lo"] = _ci(S.ci95, p, 0) if S else nan
            row[f"n_{p}_hi"] = _ci(S.ci95, p, 1) if S else nan
        c_max = row["c_max"]
        row.update({"n_basis": f.size_basis, "n_error": f.size_error, "n_problem": f.law_problem,
                    "d_at_c_max": f.d_at(c_max) if S and math.isfinite(c_max) else nan,
                    "n_definition": N_DEFINITION, "c_definition": C_DEFINITION, "d_definition": D_DEFINITION})
        rows.append(row)
    return pd.DataFrame(rows)


def chinchilla_frame(fits: Mapping[str, FormatFits], budgets: Sequence[float] | None = None):
    """Predicted N*, D* = C / flops_per_token(N*) and L per format at 1e15 … 1e21 FLOPs,
    ``extrapolated`` outside the measured range. A format whose law has a problem
    (:attr:`FormatFits.law_problem`) has no rows: its table would be fiction."""
    rows = []
    for fmt, f in fits.items():
        if f.size is None or f.law_problem:
            continue
        for r in chinchilla_table(f.size, budgets or DEFAULT_BUDGETS, loss_fit=f.loss, flops_per_token=f.flops_at):
            rows.append({"format": fmt, "compute": r.compute, "n_opt": r.n_opt, "d_opt": r.d_opt,
                         "tokens_per_param": r.d_opt / r.n_opt, "loss": r.loss, "extrapolated": r.extrapolated})
    cols = ["format", "compute", "n_opt", "d_opt", "tokens_per_param", "loss", "extrapolated"]
    return pd.DataFrame(rows, columns=cols)


def _nats(x: float) -> str:
    return f"{x:+.3f}"


def gap_verdict(fits: Mapping[str, FormatFits], baseline: str = BASELINE,
                extrapolate_to: Sequence[float] = (1e15, 1e18, 1e21)) -> list[str]:
    """"How the format gap changes with compute", one paragraph per format, from the fits.

    The gap is ``L_format(C) − L_bf16(C)`` in nats from the two fitted ``L(C)`` laws, at the
    smallest and largest measured budget (with the measured isoFLOP minima beside it) and at
    ``extrapolate_to``; a change of less than :data:`GAP_TOLERANCE` counts as constant.
    Extrapolated numbers carry the caveat.
    """
    if baseline not in fits:
        return [(f"{baseline} is not in scaling.formats, so there is no baseline to measure a format gap "
                 f"against; add {baseline} to scaling.formats.")]
    base = fits[baseline]
    out = []
    if base.loss is None:
        return [f"The {baseline} loss law could not be fitted ({base.loss_error}); no gaps are computed."]
    for fmt, f in fits.items():
        if fmt == baseline:
            continue
        if f.loss is None:
            out.append(f"{fmt}: no L(C) fit ({f.loss_error}); the measured isoFLOP minima are in the table below.")
            continue
        lo = max(f.loss.c_range[0], base.loss.c_range[0])
        hi = min(f.loss.c_range[1], base.loss.c_range[1])
        if lo > hi:
            out.append(f"{fmt}: its measured compute range does not overlap {baseline}'s; no gap is computed.")
            continue
        g_lo, g_hi = f.l_at(lo) - base.l_at(lo), f.l_at(hi) - base.l_at(hi)
        meas = {o["budget"]: o["l_used"] for o in f.optima}
        bmeas = {o["budget"]: o["l_used"] for o in base.optima}
        m = [(c, meas[c] - bmeas[c]) for c in sorted(meas) if c in bmeas and math.isfinite(meas[c] - bmeas[c])]
        change = abs(g_hi) - abs(g_lo)
        if change < -GAP_TOLERANCE:
            trend = f"shrinks by {abs(change):.3f} nats"
        elif change > GAP_TOLERANCE:
            trend = f"grows by {change:.3f} nats"
        else:
            trend = f"stays within {GAP_TOLERANCE:g} nats (about constant)"
        side = "above" if g_hi > 0 else "below"
        text = (f"{fmt} vs {baseline}: over the measured budgets {eng(lo)}–{eng(hi)} FLOPs the fitted gap goes from "
                f"{_nats(g_lo)} to {_nats(g_hi)} nats ({fmt} {side} {baseline} at the largest budget): it {trend}")
        if m:
            text += "; measured isoFLOP minima: " + ", ".join(f"{_nats(g)} at {eng(c)}" for c, g in m)
        text += "."
        far = [(c, f.l_at(c) - base.l_at(c)) for c in extrapolate_to if c > hi]
        if far:
            d_inf = f.loss.l_inf - base.loss.l_inf
            decades = math.log10(max(c for c, _ in far) / hi)
            fl, bl = f.loss, base.loss
            ci = ""
            if fl.ci95 and bl.ci95:
                ci = (f" (95% bootstrap intervals of L∞: {fmt} [{fl.ci95['l_inf'][0]:.3f}, {fl.ci95['l_inf'][1]:.3f}], "
                      f"{baseline} [{bl.ci95['l_inf'][0]:.3f}, {bl.ci95['l_inf'][1]:.3f}])")
            text += (" Extrapolated — up to " f"{decades:.0f} decades beyond the largest measured budget, from "
                     f"{min(fl.n_points, bl.n_points)}-point fits, so a hypothesis to test at that scale, not a "
                     "measurement: " + ", ".join(f"{_nats(g)} at {eng(c)}" for c, g in far)
                     + f"; the asymptotic gap L∞({fmt}) − L∞({baseline}) is {_nats(d_inf)}{ci}.")
            pinned = [name for name, fit, opt in ((fmt, fl, f.optima), (baseline, bl, base.optima))
                      if fit.l_inf <= 1e-9 or fit.l_inf >= min(o["l_used"] for o in opt
                                                                if math.isfinite(o["l_used"])) - 1e-9]
            if pinned:
                text += (f" L∞ of {' and '.join(pinned)} sits on its bound (0 or the lowest measured loss): the data do "
                         "not determine the asymptote, so neither do these extrapolated gaps.")
            if min(fl.n_points, bl.n_points) <= 3:
                text += (" With one point per fitted parameter the law passes through its points exactly: "
                         "R² and the bootstrap say nothing about its error; add budgets.")
        out.append(text)
    if not out:
        out.append(f"Only {baseline} is in the sweep; add formats to compare.")
    return out
