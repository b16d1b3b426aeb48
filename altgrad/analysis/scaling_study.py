"""The scaling study: an isoFLOP sweep per format, the fitted laws, and budget plans from them.

Three parts, each used by one caller:

1. **Planning the sweep** (:func:`plan_sweep`, called by :mod:`altgrad.analysis.matrix` when
   the config is parsed, so a bad sweep fails before any job starts). The config's
   ``scaling`` block gives formats, compute budgets C and model sizes; every (format, C,
   shape) is one normal run of the pipeline's ``train`` rule, id
   ``scale-{format}-c{C}-d{width}`` (e.g. ``scale-e4m3-c1e13-d128``), trained for
   ``steps = round(C / (flops_per_token(shape) · tokens_per_step))`` optimizer steps, i.e.
   on its planned ``D = C / flops_per_token(shape)`` tokens up to half a step (the cosine
   schedule ends at that step; there are no epochs).
2. **The study** (:func:`build_scaling_report`, ``altgrad scaling``, the ``scaling_report``
   rule): read every sweep run's ``summary.json``, fit per format, write
   ``results/scaling/{points,optima,fits,chinchilla}.parquet``, ``isoflop.png``,
   ``report.html`` (verdict "how the format gap changes with compute", figure, tables) and
   ``section.html`` (the same as a fragment for the main report to embed).
3. **Budget plans** (:func:`plan_budget`, ``altgrad plan --budget-usd``): split a dollar
   budget over the configured matrix and size each run with the format's fitted
   ``N*(C)`` from ``fits.parquet`` when there is one, else Chinchilla; every job is priced by
   :func:`altgrad.analysis.budget.plan_job`, the computation behind the pipeline's budget table.

Conventions (the same as everywhere in altgrad):

* **N** is the NON-EMBEDDING parameter count, ``budget.param_counts(shape)[1]`` (no token or
  position embedding; the lm_head is tied to the token embedding, so it is not in N).
* **C** is ``budget.flops_per_token(shape) × training tokens``: ``6·N + 6·V·d`` (lm_head)
  ``+ 6·L·T·d`` (causal attention) per token, forward + backward; evaluation passes are not
  counted. It is what a run's ``summary.json`` reports as ``flops``.
* Per format: ``L(C) = k·C^a + L∞`` fitted in linear loss space to the per-budget
  compute-optimal losses; ``N*(C) = k'·C^b`` fitted to the per-budget optima of a parabola in
  ``log N`` (:func:`altgrad.analysis.scaling.isoflop_optimum`); ``D*(C) = C / (6·N*)``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from altgrad.analysis.budget import (
    DEFAULT_MFU,
    ComputePlan,
    InfeasiblePlan,
    JobCost,
    ModelShape,
    budget_table,
    eng,
    flops_per_token,
    get_device,
    param_counts,
    plan_compute_optimal,
    plan_job,
    shape_family,
)
from altgrad.errors import AltgradError

__all__ = [
    "BASELINE",
    "RUN_PREFIX",
    "SWEEP_DEFAULTS",
    "BudgetPlan",
    "FormatFits",
    "ScalingPoint",
    "SweepShape",
    "budget_tag",
    "build_scaling_report",
    "collect_points",
    "fit_format",
    "fit_sweep",
    "fits_frame",
    "gap_verdict",
    "load_fitted_laws",
    "plan_budget",
    "plan_sweep",
]

RUN_PREFIX = "scale"
BASELINE = "bf16"
# Defaults of the `scaling` config block (the schema documents each key).
SWEEP_DEFAULTS: dict[str, Any] = {
    "sizes": 3,
    "aspect": 64,
    "head_dim": 64,
    "vocab_size": None,
    "block_size": None,
    "batch_size": None,
    "seed": 0,
    "optimizer": "adamw",
    "warmup_fraction": 0.1,
    "min_steps": 10,
    "train": {},
    "n_boot": 200,
}
# Sweep runs spend their FLOPs on training only: no FP32 shadow model, no rank probes
# (a config can still turn them on under scaling.train).
SWEEP_TRAIN_DEFAULTS = {"shadow_interval": 0, "rank_interval": 0}
CHINCHILLA_TOKENS_PER_PARAM = 20.0
GAP_TOLERANCE = 0.01  # nats: a change of the gap smaller than this is "about constant"
N_DEFINITION = "non-embedding (no token/position embedding; the tied lm_head is not counted)"
C_DEFINITION = "flops_per_token(shape) x tokens = (6N + 6Vd lm_head + 6LTd causal attention) x D, training only"


# ======================================================================================
# 1. Planning the sweep
# ======================================================================================


def budget_tag(c: float) -> str:
    """``1e13`` -> ``"1e13"``, ``2.5e13`` -> ``"2.5e13"``: the C part of a run id."""
    c = float(c)
    exp = math.floor(math.log10(c))
    mant = f"{c / 10.0**exp:.3g}"
    if mant == "10":
        exp, mant = exp + 1, "1"
    return f"{mant}e{exp}"


@dataclass(frozen=True)
class SweepShape:
    """One (budget, model shape) of the sweep; every format trains it."""

    budget: float
    shape: ModelShape
    steps: int
    tokens_per_step: int
    size_tag: str  # d128 (or l2d128 when a width has more than one depth in the sweep)

    @property
    def tokens(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def flops_per_token(self) -> float:
        return flops_per_token(self.shape)

    @property
    def flops(self) -> float:
        """The FLOPs the run will spend: C up to half an optimizer step of rounding."""
        return self.flops_per_token * self.tokens

    @property
    def n_params_nonembed(self) -> int:
        return param_counts(self.shape)[1]


@dataclass(frozen=True)
class ScalingPoint:
    """One run of the sweep: a format at one :class:`SweepShape`."""

    run_id: str
    format: str
    sweep: SweepShape

    def row(self) -> dict[str, Any]:
        s, sh = self.sweep, self.sweep.shape
        total, nonembed = param_counts(sh)
        return {
            "run_id": self.run_id, "format": self.format, "budget": s.budget,
            "n_layer": sh.n_layer, "n_embd": sh.n_embd, "n_head": sh.n_head, "block_size": sh.block_size,
            "vocab_size": sh.vocab_size, "n_params": total, "n_params_nonembed": nonembed,
            "flops_per_token": s.flops_per_token, "tokens_per_step": s.tokens_per_step,
            "steps_planned": s.steps, "tokens_planned": s.tokens, "flops_planned": s.flops,
        }


def point_run_id(fmt: str, budget: float, size_tag: str) -> str:
    return f"{RUN_PREFIX}-{fmt}-c{budget_tag(budget)}-{size_tag}"


def _feasibility(shape: ModelShape, budget: float, tokens_per_step: int, min_steps: int) -> tuple[int, str]:
    """(steps, "" or why the point cannot be trained usefully)."""
    fpt = flops_per_token(shape)
    steps = round(budget / (fpt * tokens_per_step))
    n = param_counts(shape)[1]
    tokens = steps * tokens_per_step
    why = []
    if steps < min_steps:
        why.append(f"{steps} steps < scaling.min_steps {min_steps}")
    if tokens < n / 10:
        why.append(f"{tokens:,} tokens < N/10 = {n // 10:,}")
    return steps, " and ".join(why)


def _describe(shape: ModelShape) -> str:
    return f"n_layer={shape.n_layer} n_embd={shape.n_embd} n_head={shape.n_head} (N={param_counts(shape)[1]:,})"


def plan_sweep(
    sc: Mapping[str, Any], *, block_size: int, vocab_size: int, tokens_per_step: int, bias: bool = False
) -> tuple[list[SweepShape], list[str]]:
    """The (budget, shape, steps) grid of a ``scaling`` block, and every problem with it.

    ``sc``: the block with :data:`SWEEP_DEFAULTS` filled in. ``sizes`` is either

    * an integer k (≥ 3): for each budget, k consecutive members of
      :func:`altgrad.analysis.budget.shape_family` (width = ``aspect``·depth rounded to a
      multiple of 64, head dim ``head_dim``: tensor-core friendly) centred on the Chinchilla
      size ``N = sqrt(C / 120)``, among the members the budget can train (≥ ``min_steps``
      steps and ≥ N/10 tokens); or
    * an explicit list of shapes ``{n_layer, n_embd, n_head}`` (``n_head`` default
      ``max(1, n_embd // head_dim)``) used at every budget. Any width is allowed — the tiny CPU
      test uses width 32 — but for GPU runs keep widths and head dims multiples of 64.

    Fewer than 3 distinct budgets, or fewer than 3 distinct sizes per budget, is the scaling
    fitter's own error (:class:`altgrad.analysis.scaling.ScalingInputError` text).
    """
    from altgrad.analysis.scaling import (
        ScalingInputError,
        _need_distinct,
        _positive_finite,
    )

    problems: list[str] = []
    try:
        budgets_arr = _positive_finite("scaling.budgets", list(sc["budgets"]))
        _need_distinct("scaling.budgets", budgets_arr, "compute budgets")
    except ScalingInputError as e:
        return [], [f"scaling.budgets: {e}"]
    budgets = [float(c) for c in budgets_arr]
    tags: dict[str, float] = {}
    for c in budgets:
        t = budget_tag(c)
        if t in tags:
            problems.append(f"scaling.budgets: {tags[t]:g} and {c:g} both give the run-id part c{t}; "
                            "use budgets that differ in the first 3 significant digits")
        tags[t] = c
    min_steps = int(sc["min_steps"])
    head_dim = int(sc["head_dim"])
    fam = {"block_size": block_size, "vocab_size": vocab_size, "aspect": int(sc["aspect"]), "head_dim": head_dim,
           "bias": bias}

    per_budget: list[tuple[float, list[tuple[ModelShape, int]]]] = []
    sizes = sc["sizes"]
    if isinstance(sizes, int) and not isinstance(sizes, bool):
        try:
            shape_family(1, **fam)
        except AltgradError as e:
            return [], [f"scaling.head_dim: {e}"]
        for c in budgets:
            feasible = []
            for n in range(1, 129):
                s = shape_family(n, **fam)
                steps, why = _feasibility(s, c, tokens_per_step, min_steps)
                if why:  # larger members have more FLOPs per token and a larger N/10: only worse
                    break
                feasible.append((s, steps))
            if len(feasible) < sizes:
                problems.append(
                    f"scaling.budgets: C={c:g} can train only {len(feasible)} shape(s) of the family "
                    f"(aspect {fam['aspect']}, head dim {head_dim}; each needs >= {min_steps} steps of "
                    f"{tokens_per_step} tokens and >= N/10 tokens), scaling.sizes asks for {sizes}; "
                    "raise the budget, lower scaling.aspect, or give scaling.sizes as a list of shapes"
                )
                continue
            target = math.sqrt(c / (6.0 * CHINCHILLA_TOKENS_PER_PARAM))
            errs = [abs(math.log(param_counts(s)[1] / target)) for s, _ in feasible]
            centre = errs.index(min(errs))
            start = min(max(centre - (sizes - 1) // 2, 0), len(feasible) - sizes)
            per_budget.append((c, feasible[start:start + sizes]))
    else:
        shapes: list[ModelShape] = []
        for i, spec in enumerate(sizes):
            try:
                n_embd = int(spec["n_embd"])
                n_head = int(spec.get("n_head") or max(1, n_embd // head_dim))
                shapes.append(ModelShape(n_layer=int(spec["n_layer"]), n_head=n_head, n_embd=n_embd,
                                         block_size=block_size, vocab_size=vocab_size, bias=bias))
            except (AltgradError, KeyError, TypeError, ValueError) as e:
                problems.append(f"scaling.sizes[{i}]: {e}")
        if problems:
            return [], problems
        try:
            _need_distinct("scaling.sizes N", _positive_finite("N", [param_counts(s)[1] for s in shapes]),
                           "model sizes on the isoFLOP curve")
        except ScalingInputError as e:
            return [], [f"scaling.sizes: {e}"]
        for c in budgets:
            chosen = []
            for s in shapes:
                steps, why = _feasibility(s, c, tokens_per_step, min_steps)
                if why:
                    problems.append(
                        f"scaling: C={c:g} is too small for {_describe(s)}: {why} at "
                        f"{eng(flops_per_token(s))} FLOPs/token and {tokens_per_step} tokens/step; "
                        "raise the budget or drop the shape"
                    )
                chosen.append((s, steps))
            per_budget.append((c, chosen))
    if problems:
        return [], problems

    # size tags: the width alone when it names one shape across the sweep
    keys = {(s.n_layer, s.n_embd, s.n_head) for _, chosen in per_budget for s, _ in chosen}
    widths_unique = len({w for _, w, _ in keys}) == len(keys)
    depth_width_unique = len({(layer, w) for layer, w, _ in keys}) == len(keys)

    def tag(s: ModelShape) -> str:
        if widths_unique:
            return f"d{s.n_embd}"
        return f"l{s.n_layer}d{s.n_embd}" + ("" if depth_width_unique else f"h{s.n_head}")

    out = [SweepShape(c, s, steps, tokens_per_step, tag(s)) for c, chosen in per_budget for s, steps in chosen]
    return out, problems


def sweep_train_overrides(sc: Mapping[str, Any], point: SweepShape, batch_size: int) -> dict[str, Any]:
    """The ``train`` section of a sweep run on top of the base run: the planned steps, the
    batch, the seed, warm-up as a fraction of the steps, evaluation at the start and the end
    (the score is the final held-out loss), then ``scaling.train`` as given."""
    seed = int(sc["seed"])
    t: dict[str, Any] = {
        **SWEEP_TRAIN_DEFAULTS,
        "max_steps": point.steps,
        "batch_size": batch_size,
        "seed": seed,
        "data_seed": 1000 + seed,
        "warmup_steps": round(float(sc["warmup_fraction"]) * point.steps),
        "eval_interval": point.steps,
    }
    t.update({k: v for k, v in (sc.get("train") or {}).items() if k not in ("max_steps",)})
    return t


# ======================================================================================
# 2. The study: collect, fit, verdict, outputs
# ======================================================================================


def collect_points(points: Sequence[ScalingPoint], runs_root: str | os.PathLike = "results/runs"):
    """One row per sweep run: the planned point and what its ``summary.json`` says
    (steps, tokens, FLOPs actually spent, status, final held-out val loss)."""
    import pandas as pd

    rows, missing = [], []
    for p in points:
        path = Path(runs_root) / p.run_id / "summary.json"
        try:
            s = json.loads(path.read_text())
        except FileNotFoundError:
            missing.append(p.run_id)
            continue
        row = p.row()
        val = s.get("final_val_loss")
        row.update({
            "status": s.get("status"), "steps": s.get("steps"), "tokens": s.get("tokens"), "flops": s.get("flops"),
            "val_loss": float("nan") if val is None else float(val),
            "best_val_loss": float("nan") if s.get("best_val_loss") is None else float(s["best_val_loss"]),
            "wall_time_s": s.get("wall_time_s"),
        })
        rows.append(row)
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise AltgradError(
            f"{len(missing)} sweep run(s) have no summary.json under {runs_root}: {', '.join(missing[:5])}{more}; "
            "train them first (`snakemake results/scaling/report.html` does)"
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
    loss: Any = None  # scaling.Fit
    loss_error: str = ""
    size: Any = None  # scaling.PowerLaw
    size_error: str = ""
    size_basis: str = ""
    excluded: list[str] = field(default_factory=list)  # run ids not fitted (diverged, no loss)

    def l_at(self, c: float) -> float:
        return float(self.loss.predict(c)) if self.loss is not None else float("nan")


def fit_format(df, *, n_boot: int = 200, seed: int = 0, fmt: str | None = None) -> FormatFits:
    """Fit one format's sweep rows (columns ``budget``, ``n_params_nonembed``, ``val_loss``,
    ``status``, ``run_id``).

    Per budget: :func:`~altgrad.analysis.scaling.isoflop_optimum` over the completed runs. The
    optimum used downstream (``n_used``/``l_used``) is the parabola's vertex when it is a
    minimum inside the sampled sizes; otherwise the lowest measured point, flagged
    (``source``). ``N*(C)`` is fitted on vertices only when ≥ 3 budgets have one, else on the
    flagged mix (``size_basis`` says which); ``L(C)`` on the per-budget ``l_used``. Fewer than
    3 distinct budgets in ``df`` raises :class:`~altgrad.analysis.scaling.ScalingInputError`; a
    fit that cannot be made from the runs that completed keeps its error text instead.
    """
    import numpy as np

    from altgrad.analysis.scaling import (
        ScalingInputError,
        _need_distinct,
        _positive_finite,
        fit_loss_vs_compute,
        fit_optimal_size,
        isoflop_optimum,
    )

    fmt = fmt or (str(df["format"].iloc[0]) if len(df) else "?")
    # a sweep planned with too few budgets is an error; runs lost to divergence are recorded below
    _need_distinct(f"{fmt} budgets", _positive_finite("budget", df["budget"].unique()), "compute budgets")
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
    return out


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
    says which per-budget optima it rests on. ``d_k``, ``d_b``: ``D*(C) = d_k·C^d_b =
    C / (6·N*)``. ``c_min``/``c_max``: the measured compute range (outside it = extrapolation).
    ``*_error``: why a fit is missing (empty when it is there).
    """
    import pandas as pd

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
        row.update({"n_basis": f.size_basis, "n_error": f.size_error,
                    "d_k": 1.0 / (6.0 * S.k) if S else nan, "d_b": 1.0 - S.b if S else nan,
                    "n_definition": N_DEFINITION, "c_definition": C_DEFINITION})
        rows.append(row)
    return pd.DataFrame(rows)


def chinchilla_frame(fits: Mapping[str, FormatFits], budgets: Sequence[float] | None = None):
    """Predicted N*, D* and L per format at 1e15 … 1e21 FLOPs, ``extrapolated`` outside the
    measured range."""
    import pandas as pd

    from altgrad.analysis.scaling import DEFAULT_BUDGETS, chinchilla_table

    rows = []
    for fmt, f in fits.items():
        if f.size is None:
            continue
        for r in chinchilla_table(f.size, budgets or DEFAULT_BUDGETS, loss_fit=f.loss):
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


# ------------------------------------------------------------------------------ figure


_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
_BASELINE_COLOR = "#7f7f7f"
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")


def _format_colors(formats: Sequence[str]) -> dict[str, str]:
    colors, i = {}, 0
    for f in formats:
        if f == BASELINE:
            colors[f] = _BASELINE_COLOR
        else:
            colors[f] = _COLORS[i % len(_COLORS)]
            i += 1
    return colors



def _plot_law(ax, c_range, predict, color) -> None:
    """A fitted law over its measured compute range (solid) and 30x beyond it (dotted: extrapolation)."""
    import numpy as np

    lo, hi = c_range
    xs = np.geomspace(lo, hi, 50)
    ax.plot(xs, predict(xs), color=color, lw=1.8)
    xe = np.geomspace(hi, hi * 30, 30)
    ax.plot(xe, predict(xe), color=color, lw=1.2, ls=":")


def scaling_figure(points_df, fits: Mapping[str, FormatFits]) -> bytes:
    """One figure, three panels, every format: (a) the isoFLOP curves (held-out loss vs N,
    one marker per budget, the fitted parabola dashed, its vertex a star), (b) the
    compute-optimal loss with the fitted ``L(C)`` (dotted beyond the measured range),
    (c) ``N*(C)`` with its power law and the Chinchilla 20-tokens-per-parameter line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.lines import Line2D

    formats = list(fits)
    colors = _format_colors(formats)
    budgets = sorted(points_df["budget"].unique())
    markers = {c: _MARKERS[i % len(_MARKERS)] for i, c in enumerate(budgets)}
    fig, (ax_a, ax_b, ax_c) = plt.subplots(1, 3, figsize=(16, 4.8))
    ok = points_df[(points_df["status"] == "completed") & np.isfinite(points_df["val_loss"].astype(float))]
    for fmt in formats:
        col = colors[fmt]
        for c in budgets:
            g = ok[(ok["format"] == fmt) & (ok["budget"] == c)].sort_values("n_params_nonembed")
            if not len(g):
                continue
            n, y = g["n_params_nonembed"].to_numpy(float), g["val_loss"].to_numpy(float)
            ax_a.plot(n, y, marker=markers[c], color=col, ls="none", ms=6, alpha=0.9)
            if np.unique(n).size >= 3:  # the parabola isoflop_optimum fits, for the eye
                u = np.log10(n)
                coef = np.polyfit(u - u.mean(), y, 2)
                uu = np.linspace(u.min(), u.max(), 60)
                ax_a.plot(10**uu, np.polyval(coef, uu - u.mean()), color=col, ls="--", lw=1, alpha=0.8)
        opt = [o for o in fits[fmt].optima if math.isfinite(o["l_used"])]
        for o in opt:
            if o["valid"]:
                ax_a.plot(o["n_opt"], o["l_opt"], marker="*", color=col, ms=13, mec="black", mew=0.6)
        # (b) loss frontier
        cs = np.array([o["budget"] for o in opt])
        if len(cs):
            face = [col if o["valid"] else "white" for o in opt]
            ax_b.scatter(cs, [o["l_used"] for o in opt], c=face, edgecolors=col, s=45, zorder=3)
            ax_c.scatter(cs, [o["n_used"] for o in opt], c=face, edgecolors=col, s=45, zorder=3)
        f = fits[fmt]
        if f.loss is not None:
            _plot_law(ax_b, f.loss.c_range, f.loss.predict, col)
        if f.size is not None:
            _plot_law(ax_c, f.size.c_range, f.size.predict_n, col)
    if budgets:
        xs = np.geomspace(min(budgets), max(budgets) * 30, 50)
        ax_c.plot(xs, np.sqrt(xs / (6 * CHINCHILLA_TOKENS_PER_PARAM)), color="black", lw=1, ls="--", alpha=0.5)
    ax_a.set(xscale="log", xlabel="N (non-embedding parameters)", ylabel="final held-out val loss (nats)",
             title="(a) isoFLOP curves")
    ax_b.set(xscale="log", xlabel="C (training FLOPs)", ylabel="compute-optimal val loss (nats)",
             title="(b) L(C) = k·C^a + L∞")
    ax_c.set(xscale="log", yscale="log", xlabel="C (training FLOPs)", ylabel="N* (non-embedding)",
             title="(c) N*(C) = k'·C^b")
    fmt_handles = [Line2D([], [], color=colors[f], lw=2, label=f) for f in formats]
    bud_handles = [Line2D([], [], color="black", marker=markers[c], ls="none", label=f"C = {eng(c)}") for c in budgets]
    ax_a.legend(handles=fmt_handles + bud_handles, fontsize=8, loc="best")
    extra = [Line2D([], [], color="black", lw=1.8, label="fit (measured range)"),
             Line2D([], [], color="black", lw=1.2, ls=":", label="extrapolated"),
             Line2D([], [], color="black", marker="o", ls="none", mfc="white", label="lowest measured (no vertex)")]
    ax_b.legend(handles=fmt_handles + extra, fontsize=8, loc="best")
    ax_c.legend(handles=fmt_handles + [Line2D([], [], color="black", ls="--", alpha=0.5,
                                              label="Chinchilla D = 20 N")], fontsize=8, loc="best")
    for ax in (ax_a, ax_b, ax_c):
        ax.grid(True, which="both", alpha=0.25)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


# ------------------------------------------------------------------------------ page


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:right}th{background:#f4f4f4}
td.l,th.l{text-align:left}tr.x td{color:#888;font-style:italic}
.verdict p{background:#f7f9fc;border-left:4px solid #1f77b4;padding:.5em .8em}
code{background:#f3f3f3;padding:0 .2em}img{max-width:100%}.note{color:#555;font-size:.9em}
"""


def _num(x: Any, spec: str = ".4g") -> str:
    if x is None:
        return "–"
    try:
        xf = float(x)
    except (TypeError, ValueError):
        return html.escape(str(x))
    return "–" if math.isnan(xf) else format(xf, spec)


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1, classes: Sequence[str] = ()) -> str:
    th = "".join(f'<th class="l">{h}</th>' if i < left else f"<th>{h}</th>" for i, h in enumerate(head))
    body = []
    for j, r in enumerate(rows):
        cls = f' class="{classes[j]}"' if j < len(classes) and classes[j] else ""
        tds = "".join(f'<td class="l">{c}</td>' if i < left else f"<td>{c}</td>" for i, c in enumerate(r))
        body.append(f"<tr{cls}>{tds}</tr>")
    return f"<table><tr>{th}</tr>{''.join(body)}</table>"


def render_section(points_df, fits: Mapping[str, FormatFits], chinchilla_df, png: bytes | None) -> str:
    """The study as an HTML fragment (``<section id="scaling">``): verdict, figure, fits,
    Chinchilla table, per-budget optima, every run. Embeddable in another page."""
    esc = html.escape
    parts = ['<section id="scaling">', "<h2>How the format gap changes with compute</h2>", '<div class="verdict">']
    parts += [f"<p>{esc(p)}</p>" for p in gap_verdict(fits)]
    parts.append("</div>")
    if png:
        parts.append('<img alt="isoFLOP curves and fitted frontiers per format" '
                     f'src="data:image/png;base64,{base64.b64encode(png).decode()}">')
        parts.append('<p class="note">(a) final held-out loss of every run against N at each budget; dashed: the '
                     "parabola in log N whose vertex (star) is that budget's optimum. (b), (c): the per-budget optima "
                     "(hollow: no interior vertex, the lowest measured point) and the fitted laws, dotted beyond the "
                     "measured compute.</p>")

    parts.append("<h2>Fitted laws per format</h2>")
    rows = []
    for fmt, f in fits.items():
        L, S = f.loss, f.size

        def ci(fit: Any, p: str, spec: str = ".3g") -> str:
            if fit is None or not fit.ci95:
                return ""
            lo, hi = fit.ci95[p]
            return f" [{_num(lo, spec)}, {_num(hi, spec)}]"

        rows.append([
            esc(fmt),
            (_num(L.k, ".3g") + ci(L, "k")) if L else esc(f.loss_error or "–"),
            (_num(L.a, ".3f") + ci(L, "a", ".3f")) if L else "",
            (_num(L.l_inf, ".3f") + ci(L, "l_inf", ".3f")) if L else "",
            _num(L.r2, ".3f") if L else "", str(L.n_points) if L else "",
            (_num(S.k, ".3g") + ci(S, "k")) if S else esc(f.size_error or "–"),
            (_num(S.b, ".3f") + ci(S, "b", ".3f")) if S else "",
            _num(S.r2, ".3f") if S else "", _num(1 - S.b, ".3f") if S else "", esc(f.size_basis),
        ])
    parts.append(_table(["format", "L(C): k", "a", "L∞", "R²", "points", "N*(C): k'", "b", "R² (log)",
                         "D* exponent 1−b", "N* rests on"], rows, left=1))
    parts.append('<p class="note">Brackets: 95% bootstrap intervals (points resampled with replacement). '
                 f"N = {esc(N_DEFINITION)}; C = {esc(C_DEFINITION)}; D*(C) = C / (6·N*(C)). L(C) is fitted by "
                 "nonlinear least squares in linear loss space to the per-budget optimal losses.</p>")

    parts.append("<h2>Chinchilla table: predicted compute-optimal N* and D*</h2>")
    if len(chinchilla_df):
        cls = ["x" if e else "" for e in chinchilla_df["extrapolated"]]
        rows = [[esc(r.format), f"{r.compute:.0e}", _num(r.n_opt, ".3g"), _num(r.d_opt, ".3g"),
                 _num(r.tokens_per_param, ".1f"),
                 _num(r.loss, ".3f"), "extrapolated" if r.extrapolated else "measured range"]
                for r in chinchilla_df.itertuples()]
        parts.append(_table(["format", "C (FLOPs)", "N*", "D*", "D*/N*", "predicted L", ""], rows, left=1, classes=cls))
        parts.append('<p class="note">Grey italic rows lie outside the measured compute range: extrapolations of the '
                     "fitted laws, not measurements.</p>")
    else:
        parts.append("<p>No format has an N*(C) law (see the errors above).</p>")

    parts.append("<h2>IsoFLOP optima per budget</h2>")
    rows = []
    for fmt, f in fits.items():
        for o in f.optima:
            rows.append([esc(fmt), eng(o["budget"]), str(o["n_sizes"]), esc(o["source"]),
                         _num(o["n_used"], ".3g"), _num(o["l_used"], ".4f"),
                         esc(o["reason"])])
    parts.append(_table(["format", "C", "sizes", "optimum from", "N*", "L*", "why not a vertex"], rows, left=1))

    parts.append("<h2>Every run of the sweep</h2>")
    rows, cls = [], []
    for r in points_df.itertuples():
        rows.append([esc(r.run_id), esc(r.format), eng(r.budget), f"{r.n_layer}×{r.n_embd}/{r.n_head}",
                     f"{r.n_params_nonembed:,}", f"{r.steps_planned:,}", _num(r.steps, ",.0f"), f"{r.tokens_planned:,}",
                     _num(r.flops, ".4g"), _num(r.flops_ratio, ".3f"), esc(str(r.status)),
                     _num(r.val_loss, ".4f")])
        cls.append("" if r.status == "completed" else "x")
    parts.append(_table(["run", "format", "C", "layers×width/heads", "N", "steps planned", "steps", "D",
                         "FLOPs spent", "spent/C", "status", "val loss"], rows, left=2, classes=cls))
    parts.append("</section>")
    return "\n".join(parts)


def render_page(points_df, fits: Mapping[str, FormatFits], chinchilla_df, png: bytes | None,
                command: str | None = None) -> str:
    formats = ", ".join(fits)
    budgets = ", ".join(eng(c) for c in sorted(points_df["budget"].unique()))
    foot = f"<p class=\"note\">Made by <code>{html.escape(command)}</code>.</p>" if command else ""
    return (
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>altgrad scaling study</title>"
        f"<style>{_CSS}</style></head><body><h1>altgrad scaling study</h1>"
        f"<p>isoFLOP sweep: formats {html.escape(formats)}; budgets {budgets} FLOPs; {len(points_df)} runs, each "
        "trained on exactly its planned tokens D = C / flops_per_token(shape) and scored on its final held-out "
        f"validation loss.</p>{render_section(points_df, fits, chinchilla_df, png)}{foot}</body></html>"
    )


def build_scaling_report(
    config: Mapping[str, Any],
    out_dir: str | os.PathLike = "results/scaling",
    runs_root: str | os.PathLike = "results/runs",
    *,
    data_root: str | os.PathLike = "data",
    command: str | None = None,
    n_boot: int | None = None,
) -> dict[str, Path]:
    """Collect the sweep of ``config`` (an experiment config with a ``scaling`` block), fit,
    and write ``points.parquet``, ``optima.parquet``, ``fits.parquet``, ``chinchilla.parquet``,
    ``isoflop.png`` and ``report.html`` into ``out_dir`` (each atomically). Returns the paths."""
    import pandas as pd

    from altgrad.analysis.matrix import load_experiment
    from altgrad.files import atomic_open, atomic_write

    exp = load_experiment(config, data_root=data_root)
    if not exp.scaling_points:
        raise AltgradError("the config has no `scaling` block (formats, budgets, sizes): nothing to study")
    sc = exp.raw["scaling"]
    points = collect_points(exp.scaling_points, runs_root)
    fits = fit_sweep(points, n_boot=int(sc["n_boot"] if n_boot is None else n_boot), seed=int(sc["seed"]))
    table = fits_frame(fits)
    optima = pd.DataFrame([o for f in fits.values() for o in f.optima])
    chin = chinchilla_frame(fits)
    png = scaling_figure(points, fits)
    out = Path(out_dir)
    paths = {name: out / f"{name}.parquet" for name in ("points", "optima", "fits", "chinchilla")}
    for name, df in (("points", points), ("optima", optima), ("fits", table), ("chinchilla", chin)):
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


def load_fitted_laws(path: str | os.PathLike) -> dict[str, tuple[Any, str]]:
    """``fits.parquet`` -> format -> (``scaling.PowerLaw`` for N*(C) or None, note).

    The note says where the law came from (measured range, basis) or why there is none.
    """
    import pandas as pd

    from altgrad.analysis.scaling import PowerLaw

    df = pd.read_parquet(path)
    out: dict[str, tuple[Any, str]] = {}
    for r in df.itertuples():
        if math.isfinite(r.n_k) and math.isfinite(r.n_b) and r.n_k > 0:
            law = PowerLaw(k=float(r.n_k), b=float(r.n_b), r2=float(r.n_r2), n_points=int(r.n_n_points),
                           c_range=(float(r.c_min), float(r.c_max)))
            note = f"measured {eng(r.c_min)}–{eng(r.c_max)} FLOPs; N* from {r.n_basis}"
            out[str(r.format)] = (law, note)
        else:
            out[str(r.format)] = (None, str(r.n_error) or "no N*(C) law")
    return out


# ======================================================================================
# 3. Budget plans: `altgrad plan --budget-usd`
# ======================================================================================


@dataclass
class FormatPlan:
    format: str
    run_ids: list[str]
    source: str  # "fitted N*(C) from …" or "Chinchilla …"
    plan: ComputePlan | None
    refused: str = ""  # InfeasiblePlan message
    pass_factor: float = 1.0


@dataclass
class BudgetPlan:
    """A dollar budget split evenly over the matrix's runs, sized per format."""

    budget_usd: float
    device: str
    price_usd: float
    mfu: float
    n_runs: int
    fits_path: str
    fits_found: bool
    formats: list[FormatPlan]
    jobs: list[JobCost]
    attention: str

    @property
    def refused(self) -> list[FormatPlan]:
        return [f for f in self.formats if f.refused]

    def describe(self) -> str:
        c = next((f.plan.flops_per_run for f in self.formats if f.plan), None)
        lines = [
            f"altgrad plan: ${self.budget_usd:.2f} on {self.device} at ${self.price_usd:.2f}/h, MFU {self.mfu:g}, "
            f"split over {self.n_runs} run(s)" + (f": {eng(c)} FLOPs per run" if c else ""),
            f"laws: {self.fits_path} " + ("found: each format's fitted N*(C) where it has one, else Chinchilla"
                                          if self.fits_found else "not found: Chinchilla (D = 20 N, C = 6ND) for every format"),
            (f"FLOPs/token: 6·N + 6·V·d (lm_head) + {self.attention} attention, times the run's eval/shadow "
             "passes; N = non-embedding parameters; shapes: width a multiple of 64, head dim 64, width/depth 64"),
        ]
        groups: dict[tuple, list[FormatPlan]] = {}  # formats with the same law and plan print once
        for f in self.formats:
            key = (f.source, f.refused,
                   None if f.plan is None else (f.plan.shape, f.plan.steps), round(f.pass_factor, 9))
            groups.setdefault(key, []).append(f)
        for group in groups.values():
            f = group[0]
            ids = [r for g in group for r in g.run_ids]
            lines.append("")
            lines.append(f"== {', '.join(g.format for g in group)} ({len(ids)} run(s): {', '.join(ids[:4])}"
                         f"{' ...' if len(ids) > 4 else ''})")
            lines.append(f"law used: {f.source}")
            if f.refused:
                lines.append(f"REFUSED: {f.refused}")
                continue
            assert f.plan is not None
            body = f.plan.describe().splitlines()[1:]  # the header line is the plan's budget, printed above
            lines += [ln for ln in body if not ln.startswith("cost per run")]
            lines.append(f"cost per run: {f.plan.gpu_hours_per_run:.2f} GPU-h, ${f.plan.usd_per_run:.2f} "
                         f"(x{len(ids)} = ${f.plan.usd_per_run * len(ids):.2f})")
            if f.pass_factor != 1.0:
                lines.append(f"eval/shadow passes: x{f.pass_factor:.3f} FLOPs per training token")
        shapes = {(f.plan.shape, f.plan.steps) for f in self.formats if f.plan is not None}
        if len(shapes) > 1:
            lines += ["", ("note: the formats get different plans. The matrix compares formats at one shared "
                           "run.model (same shape, seed and data order), so use one plan for run.model (e.g. "
                           "bf16's), or these per-format plans for a compute-optimal comparison.")]
        if self.jobs:
            lines += ["", "budget table (the pipeline's computation: altgrad.analysis.budget.plan_job):",
                      budget_table(self.jobs, budget_usd=self.budget_usd)]
        return "\n".join(lines)


def _pass_factor_at(cfg: Any, steps: int) -> float:
    """The pipeline's eval/shadow FLOPs factor of a run config trained for ``steps`` steps."""
    from altgrad.analysis.matrix import _pass_factor

    t = cfg.train
    steps = max(int(steps), 1)
    return _pass_factor(replace(cfg, train=replace(t, max_steps=steps, warmup_steps=min(t.warmup_steps, steps))))


def plan_budget(
    exp: Any,
    budget_usd: float,
    *,
    device: str | None = None,
    price: float | None = None,
    mfu: float | None = None,
    formats: Sequence[str] | None = None,
    fits_path: str | os.PathLike = "results/scaling/fits.parquet",
    block_size: int | None = None,
    batch_size: int | None = None,
    vocab_size: int | None = None,
    attention: str = "causal",
) -> BudgetPlan:
    """Compute-optimal size and tokens for every run of the configured matrix (``exp``: an
    :class:`altgrad.analysis.matrix.Experiment`) under ``budget_usd``.

    The budget is split evenly over the matrix's runs (of ``formats`` if given). For each format, :func:`altgrad.analysis.budget.plan_compute_optimal`
    sizes the run with that format's fitted ``N*(C)`` from ``fits_path`` when the file exists
    and has a law for it whose exponent lies in (0, 1) (N* and D* both grow with C), else
    Chinchilla; the printed source says which and why. Context length, batch and vocabulary are the runs'
    (overridable). FLOPs per token include the run's evaluation and FP32-shadow passes (the
    factor the pipeline's budget table applies), so the jobs, priced by
    :func:`~altgrad.analysis.budget.plan_job` exactly as the pipeline prices them, stay within
    the budget. Infeasible formats are kept with the planner's reason (``refused``).
    """
    from altgrad.training.tokenizer import GPT2_VOCAB_SIZE

    budget_usd = float(budget_usd)
    if not (math.isfinite(budget_usd) and budget_usd > 0):
        raise InfeasiblePlan(f"--budget-usd must be a positive number, got {budget_usd}")
    b = exp.budget
    dev_name = device or b["device"]
    peak = b.get("peak_flops") if device is None else None
    dev = get_device(dev_name, peak_flops=peak,
                     price_usd=price if price is not None else (b["price_usd_per_hour"] if device is None else None))
    mfu = float(mfu if mfu is not None else b.get("mfu", DEFAULT_MFU))
    if dev.price_usd <= 0:
        raise InfeasiblePlan(f"device {dev.name} is priced at 0 USD/h, so dollars buy unbounded compute; "
                             "give --price (e.g. --device h100 --price 2.69)")
    by_format: dict[str, list[Any]] = {}
    for run in exp.runs.values():
        by_format.setdefault(run.format, []).append(run)
    if formats:
        unknown = [f for f in formats if f not in by_format]
        if unknown:
            raise AltgradError(f"--formats {', '.join(unknown)}: not in the configured matrix (its formats: "
                               f"{', '.join(by_format)})")
        by_format = {f: by_format[f] for f in formats}
    n = sum(len(v) for v in by_format.values())
    fits_path = str(fits_path)
    found = Path(fits_path).exists()
    laws = load_fitted_laws(fits_path) if found else {}
    meta_vocab = int(exp.meta["vocab_size"]) if exp.meta and "vocab_size" in exp.meta else None

    plans, jobs = [], []
    for fmt, runs in by_format.items():
        cfg = runs[0].config
        law, note = laws.get(fmt, (None, "" if not found else f"{fits_path} has no row for {fmt}"))
        if law is not None and not 0.0 < law.b < 1.0:
            note = (f"its fitted N*(C) = {law.k:.4g}·C^{law.b:.4f} in {fits_path} is not used: the exponent must "
                    "lie in (0, 1) so that N* and D* both grow with compute (sample wider sizes and budgets)")
            law = None
        if law is not None:
            source = f"fitted N*(C) = {law.k:.4g}·C^{law.b:.4f} from {fits_path} ({fmt}; {note})"
        else:
            source = "Chinchilla: N* = sqrt(C / 120) (D = 20·N, C = 6·N·D)" + (f"; {note}" if note else "")
        block = int(block_size or cfg.model.block_size)
        batch = int(batch_size or cfg.train.batch_size * cfg.train.grad_accum)
        vocab = int(vocab_size or cfg.model.vocab_size or meta_vocab or GPT2_VOCAB_SIZE)
        factor, plan, refused = 1.0, None, ""
        for _ in range(6):  # the eval/shadow factor depends on the planned steps; it settles in a step or two
            try:
                plan = plan_compute_optimal(
                    budget_usd, device=dev, mfu=mfu, n_runs=n, fit=law, batch_size=batch, block_size=block,
                    vocab_size=vocab, flops_fn=lambda s, f=factor: f * flops_per_token(s, attention=attention),
                )
            except InfeasiblePlan as e:
                plan, refused = None, str(e)
                break
            new = _pass_factor_at(cfg, plan.steps)
            if abs(new - factor) <= 1e-6 * factor:
                break
            factor = new
        if plan is not None:
            factor = _pass_factor_at(cfg, plan.steps)  # what the pipeline's table will charge for these steps
        plans.append(FormatPlan(fmt, [r.run_id for r in runs], source, plan, refused, factor))
        if plan is not None:
            for r in runs:
                jobs.append(plan_job(r.run_id, plan.shape, plan.tokens, device=dev, mfu=mfu,
                                     flops_fn=lambda s, f=factor: f * flops_per_token(s, attention=attention)))
    return BudgetPlan(budget_usd=float(budget_usd), device=dev.name, price_usd=dev.price_usd, mfu=mfu, n_runs=n,
                      fits_path=fits_path, fits_found=found, formats=plans, jobs=jobs, attention=attention)
