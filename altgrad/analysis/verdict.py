"""The report's numbers and verdict: pure functions on the exported tables.

Everything here reads the run table (:func:`altgrad.analysis.run_table.run_table`, which the
export computes once and writes as ``summary.parquet``). Nothing here reads files, plots or
formats HTML.

* :func:`rank_formats` -- formats ordered by val-loss gap (mean and 95% t-interval over seeds).
* :func:`optimizer_effects` -- per format, each geometry-aware optimizer vs AdamW: paired by
  seed, Δ final val loss with a 95% t-interval and whether it excludes 0.
* failure attribution (:mod:`altgrad.analysis.attribution`): per format × optimizer, which
  rule explains a loss gap or a divergence.
* :func:`build_verdict` -- all of the above plus the verdict sentences, generated from them.

Everything works with one seed (no interval, said so), without a BF16 baseline (ranking by
absolute val loss, said so), with diverged runs and with no geometry-aware runs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from altgrad.analysis.attribution import Thresholds, attribute_failures
from altgrad.analysis.run_table import (
    ARM_KEYS,
    BASELINE_FORMAT,
    REFERENCE_OPTIMIZER,
    arm_label,
    is_missing,
    mean_ci,
    nanmean,
    optimizer_name,
    short_number,
)

__all__ = ["NO_CI", "Ranking", "Verdict", "build_verdict", "optimizer_effects", "rank_formats"]

NO_CI = "single seed — no CI"


# --------------------------------------------------------------------------- ranking


@dataclass
class Ranking:
    """Formats ordered best first. ``metric`` is ``gap_to_bf16`` or, without any baseline,
    ``final_val_loss``; ``optimizer`` the runs ranked (the reference optimizer when present)."""

    table: pd.DataFrame
    metric: str
    optimizer: str
    notes: list[str] = field(default_factory=list)


def _reference_runs(runs: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    quant = runs[runs["format"] != BASELINE_FORMAT]
    if quant.empty:
        return quant, REFERENCE_OPTIMIZER
    opt = REFERENCE_OPTIMIZER if (quant["optimizer"] == REFERENCE_OPTIMIZER).any() else quant["optimizer"].mode().iloc[0]
    sel = quant[quant["optimizer"] == opt]
    plain = sel[(sel["master_weights"] == "fp32") & sel["tag"].isna()]
    return (plain if not plain.empty else sel), opt


def rank_formats(runs: pd.DataFrame) -> Ranking:
    """Rank the quantized formats by gap to BF16 under the reference optimizer.

    One row per format: ``n_seeds, n_completed, n_diverged, diverged (text), mean, ci_low,
    ci_high, values`` (per-seed values of the metric) and ``rank`` (1 = best). Formats with a
    diverged seed rank after those without (more diverged seeds ranks lower), then by mean.
    """
    sel, opt = _reference_runs(runs)
    has_gap = sel["gap_to_bf16"].notna().any() if len(sel) else False
    metric = "gap_to_bf16" if has_gap else "final_val_loss"
    notes = []
    if len(sel) and not has_gap:
        notes.append("no BF16 baseline run completed for any seed: formats are ranked by absolute final val loss")
    rows = []
    for fmt, g in sel.groupby("format", sort=False):
        done = g[g["status"] != "diverged"]
        vals = [float(v) for v in done[metric] if not is_missing(v)]
        mean, lo, hi, n = mean_ci(vals)
        div = g[g["status"] == "diverged"]
        rows.append({
            "format": fmt, "optimizer": opt, "n_seeds": len(g), "n_completed": len(done), "n_diverged": len(div),
            "diverged": ", ".join(f"seed {s}: step {d}" for s, d in zip(div["seed"], div["diverged_at"])),
            "missing_baseline": int(done[metric].isna().sum()), "mean": mean, "ci_low": lo, "ci_high": hi, "n": n,
            "values": vals, "seeds": [int(s) for s, v in zip(done["seed"], done[metric]) if not is_missing(v)],
        })
    table = pd.DataFrame(rows, columns=["format", "optimizer", "n_seeds", "n_completed", "n_diverged", "diverged",
                                        "missing_baseline", "mean", "ci_low", "ci_high", "n", "values", "seeds"])
    if len(table):
        key = pd.DataFrame({"div": table["n_diverged"] / table["n_seeds"], "nan": table["mean"].isna(),
                            "mean": table["mean"].fillna(np.inf)})
        table = table.loc[key.sort_values(["div", "nan", "mean"], kind="stable").index].reset_index(drop=True)
        table["rank"] = np.arange(1, len(table) + 1)
    missing = int(table["missing_baseline"].sum()) if len(table) else 0
    if has_gap and missing:
        notes.append(f"{missing} completed run(s) have no completed BF16 run of their seed and are left out of the gap")
    return Ranking(table, metric, opt, notes)


# --------------------------------------------------------------------------- A/B effects


def optimizer_effects(runs: pd.DataFrame) -> pd.DataFrame:
    """Each geometry-aware optimizer vs AdamW within a format (same master weights and tag),
    paired by seed: Δ = final val loss (geometry-aware) − final val loss (AdamW); < 0 helps.

    Columns: format, master_weights, tag, optimizer, n_pairs (both completed), mean, ci_low,
    ci_high, excludes_zero (None with one pair), deltas, seeds, diverged_geo / diverged_ref
    (seeds whose run diverged on that side), and the diagnostics of both sides over the
    paired seeds: stall_ref/stall_geo, flips_ref/flips_geo, cos_ref/cos_geo.
    """
    cols = ["format", "master_weights", "tag", "optimizer", "n_pairs", "mean", "ci_low", "ci_high", "excludes_zero",
            "deltas", "seeds", "diverged_geo", "diverged_ref", "stall_ref", "stall_geo", "flips_ref", "flips_geo",
            "cos_ref", "cos_geo"]
    rows = []
    key = ["format", "master_weights", "tag"]
    for (fmt, mw, tag), g in runs.groupby(key, sort=False, dropna=False):
        ref = g[g["optimizer"] == REFERENCE_OPTIMIZER]
        if ref.empty:
            continue
        ref_by_seed = {int(r["seed"]): r for _, r in ref.iterrows() if not is_missing(r["seed"])}
        for opt, geo in g[g["optimizer"] != REFERENCE_OPTIMIZER].groupby("optimizer", sort=False):
            deltas, seeds, div_geo, div_ref, pairs = [], [], [], [], []
            for _, r in geo.iterrows():
                if is_missing(r["seed"]) or int(r["seed"]) not in ref_by_seed:
                    continue
                s, base = int(r["seed"]), ref_by_seed[int(r["seed"])]
                pairs.append((base, r))
                if r["status"] == "diverged":
                    div_geo.append(s)
                if base["status"] == "diverged":
                    div_ref.append(s)
                if r["status"] != "diverged" and base["status"] != "diverged" \
                        and not is_missing(r["final_val_loss"]) and not is_missing(base["final_val_loss"]):
                    deltas.append(float(r["final_val_loss"]) - float(base["final_val_loss"]))
                    seeds.append(s)
            if not pairs:
                continue
            mean, lo, hi, n = mean_ci(deltas)
            diag = {}
            for name, col in (("stall", "stall_ratio_mean"), ("flips", "flips_mean"), ("cos", "grad_cos_mean")):
                diag[f"{name}_ref"] = nanmean(b[col] for b, _ in pairs)
                diag[f"{name}_geo"] = nanmean(r[col] for _, r in pairs)
            rows.append({"format": fmt, "master_weights": mw, "tag": None if is_missing(tag) else tag, "optimizer": opt,
                         "n_pairs": n, "mean": mean, "ci_low": lo, "ci_high": hi,
                         "excludes_zero": None if n < 2 else bool(lo > 0 or hi < 0),
                         "deltas": deltas, "seeds": seeds, "diverged_geo": div_geo, "diverged_ref": div_ref, **diag})
    return pd.DataFrame(rows, columns=cols)


# --------------------------------------------------------------------------- verdict


@dataclass
class Verdict:
    """The verdict: ``lines`` are (heading, sentence) pairs generated from the tables."""

    runs: pd.DataFrame
    ranking: Ranking
    effects: pd.DataFrame
    attribution: pd.DataFrame
    thresholds: Thresholds
    lines: list[tuple[str, str]]
    winner: str | None
    best_effect: dict[str, Any] | None
    single_seed: bool


def _ci_text(lo: float, hi: float, n: int, unit: str = "") -> str:
    if n < 2 or not math.isfinite(lo):
        return f"{NO_CI}" if n == 1 else "no data"
    return f"95% CI {lo:+.4f} to {hi:+.4f}{unit}, {n} seeds"


def _ranking_line(rk: Ranking) -> tuple[str, str] | None:
    t = rk.table
    if t.empty:
        return None
    what = "gap to BF16" if rk.metric == "gap_to_bf16" else "final val loss"
    top = t.iloc[0]
    if top["n"] == 0:
        if (t["n_diverged"] == t["n_seeds"]).all():
            text = f"none: every {optimizer_name(rk.optimizer)} run of every quantized format diverged."
        else:
            text = f"none can be named: no quantized format has a completed run with a measurable {what}."
        return ("Which format wins", text)
    head = ""
    tail = ""
    if len(t) > 1:
        second = t.iloc[1]
        common = [s for s in top["seeds"] if s in second["seeds"]]
        if second["n"] and common:
            a = dict(zip(top["seeds"], top["values"]))
            b = dict(zip(second["seeds"], second["values"]))
            d_mean, d_lo, d_hi, n = mean_ci([a[s] - b[s] for s in common])
            if n >= 2:
                separated = d_hi < 0
                tail = (f" Against the runner-up {second['format']} (paired by seed) the difference is "
                        f"{d_mean:+.4f} nats (95% CI {d_lo:+.4f} to {d_hi:+.4f}): "
                        + ("separated at 95%." if separated else "not separated at 95%, so the order of the two is open."))
            else:
                separated = False
                tail = (f" The runner-up {second['format']} is {abs(d_mean):.4f} nats behind on a single seed — "
                        "no CI, so the order is one observation.")
        else:
            separated = bool(second["n_diverged"]) or not second["n"]
            if second["n_diverged"]:
                tail = f" The runner-up {second['format']} diverged in {int(second['n_diverged'])} seed(s)."
        verb = "wins" if separated else "ranks first"
    else:
        verb = "is the only quantized format"
    head = (f"{top['format']} {verb}: with {optimizer_name(rk.optimizer)} its {what} is {top['mean']:+.4f} nats "
            f"({_ci_text(top['ci_low'], top['ci_high'], int(top['n']))}).") + tail
    last = t.iloc[-1]
    if len(t) > 2 and last["n"]:
        head += f" Last: {last['format']} ({last['mean']:+.4f})."
    return ("Which format wins", head)


def _effect_item(r: Mapping[str, Any]) -> str:
    """``e7m0 / ManifoldAdamW -0.0201 [-0.05, +0.01]`` (+ divergences)."""
    name = arm_label(r["format"], r["optimizer"], r["master_weights"], r["tag"])
    if r["n_pairs"] == 0:
        s = f"{name} no completed pair"
    else:
        s = f"{name} {r['mean']:+.4f}"
        if r["n_pairs"] >= 2:
            s += f" [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]"
    div = []
    if r["diverged_geo"]:
        div.append(f"{optimizer_name(r['optimizer'])} diverged in seed {', '.join(map(str, r['diverged_geo']))}")
    if r["diverged_ref"]:
        div.append(f"AdamW diverged in seed {', '.join(map(str, r['diverged_ref']))}")
    return s + (f" ({'; '.join(div)})" if div else "")


def _effects_line(effects: pd.DataFrame) -> str:
    measured = effects[effects["n_pairs"] > 0]
    any_ci = bool((measured["n_pairs"] >= 2).any())
    order = effects.assign(_k=effects["mean"].fillna(np.inf)).sort_values("_k", kind="stable")
    s = ("Δ final val loss vs AdamW, same format and seed (< 0 helps"
         + ("; 95% CI in brackets" if any_ci else "") + "): "
         + "; ".join(_effect_item(r) for _, r in order.iterrows()) + ".")
    helps = [arm_label(r["format"], r["optimizer"], r["master_weights"], r["tag"])
             for _, r in measured.iterrows() if r["n_pairs"] >= 2 and r["excludes_zero"] and r["mean"] < 0]
    hurts = [arm_label(r["format"], r["optimizer"], r["master_weights"], r["tag"])
             for _, r in measured.iterrows() if r["n_pairs"] >= 2 and r["excludes_zero"] and r["mean"] > 0]
    single = [r for _, r in measured.iterrows() if r["n_pairs"] == 1]
    if any_ci:
        s += (f" The CI excludes 0 — a real gain — for: {', '.join(helps)}." if helps else
              " No gain is established: no CI of a negative Δ excludes 0.")
        if hurts:
            s += f" A real loss (CI excludes 0) for: {', '.join(hurts)}."
    if single:
        s += (" Every comparison rests on one seed — no CI, so none is established." if len(single) == len(measured)
              else f" {len(single)} comparison(s) rest on one seed — no CI.")
    return s


def _why(r: Mapping[str, Any], th: Thresholds) -> str:
    """Which update diagnostics changed between AdamW and the geometry-aware optimizer."""
    changed, same = [], []
    sr, sg = r["stall_ref"], r["stall_geo"]
    if math.isfinite(sr) and math.isfinite(sg):
        text = f"stall ratio {sr:.3f} → {sg:.3f}"
        (changed if abs(sg - sr) >= th.stall_change else same).append(
            text + (" (fewer stalled updates)" if sg <= sr - th.stall_change else
                    " (more updates stalled)" if sg >= sr + th.stall_change else ""))
    fr, fg = r["flips_ref"], r["flips_geo"]
    if math.isfinite(fr) and math.isfinite(fg) and fr > 0:
        rel = fg / fr - 1
        (changed if abs(rel) >= th.flips_change else same).append(
            f"code flips per step {short_number(fr)} → {short_number(fg)} ({rel:+.0%})")
    cr, cg = r["cos_ref"], r["cos_geo"]
    if math.isfinite(cr) and math.isfinite(cg):
        (changed if abs(cg - cr) >= th.cos_change else same).append(f"gradient cosine to FP32 {cr:.3f} → {cg:.3f}")
    if not changed and not same:
        return "no update diagnostics were recorded for this pair, so the cause cannot be read from the metrics."
    s = ""
    if changed:
        s += "what changed: " + "; ".join(changed) + "."
    else:
        s += ("none of the update diagnostics moved beyond the tolerances (stall ±"
              f"{th.stall_change:g}, flips ±{th.flips_change:.0%}, cosine ±{th.cos_change:g}), so the metrics do not explain it.")
    if same:
        s += " Unchanged within tolerance: " + "; ".join(same) + "."
    return s


def _n(k: int, word: str) -> str:
    return f"{k} {word}" + ("" if k == 1 else "s")


def build_verdict(runs: pd.DataFrame, thresholds: Thresholds = Thresholds()) -> Verdict:
    """Every table of the report and the verdict sentences generated from them; ``runs`` is
    the run table (altgrad.analysis.run_table, what the export wrote as ``summary.parquet``)."""
    ranking = rank_formats(runs)
    effects = optimizer_effects(runs)
    attribution = attribute_failures(runs, thresholds)
    seeds = runs.groupby(list(ARM_KEYS), dropna=False)["seed"].nunique()
    single = bool(len(seeds) and seeds.max() <= 1)
    lines: list[tuple[str, str]] = []

    n_div = int((runs["status"] == "diverged").sum())
    n_seeds = runs["seed"].nunique()
    lines.append(("Evidence", f"{_n(len(runs), 'run')}, {_n(runs['format'].nunique(), 'format')}, "
                              f"{_n(runs['optimizer'].nunique(), 'optimizer')}, {_n(n_seeds, 'seed')}; "
                              f"{n_div} diverged."
                 + (" Every comparison rests on a single seed — no CI is given anywhere." if single else "")))
    rl = _ranking_line(ranking)
    winner = None
    if rl is None:
        lines.append(("Which format wins", "no quantized runs: nothing to rank."))
    else:
        lines.append(rl)
        top = ranking.table.iloc[0]
        winner = None if top["n"] == 0 else str(top["format"])
    for note in ranking.notes:
        lines.append(("Caveat", note + "."))

    best = None
    if effects.empty:
        text = ("no A/B runs: no format has both AdamW and a geometry-aware optimizer for the same seed, so their "
                "effect is not measured.")
        lines.append(("Geometry-aware updates", text))
    else:
        lines.append(("Geometry-aware updates", _effects_line(effects)))
        measured = effects[effects["n_pairs"] > 0]
        if not measured.empty:
            r = measured.loc[measured["mean"].idxmin()]
            best = r.to_dict()
            name = arm_label(r["format"], r["optimizer"], r["master_weights"], r["tag"])
            if int(r["n_pairs"]) < 2:
                sure = NO_CI
            else:
                sure = (f"95% CI {r['ci_low']:+.4f} to {r['ci_high']:+.4f}, "
                        + ("excludes 0" if bool(r["excludes_zero"]) else "includes 0: not established"))
            if r["mean"] < 0:
                head = f"{r['format']} benefits most: {name} Δ {r['mean']:+.4f} nats ({sure}). Why — "
            else:
                head = (f"no format benefits: the least harm is {name} (Δ {r['mean']:+.4f}, {sure}). "
                        "Diagnostics — ")
            lines.append(("Who benefits most", head + _why(r, thresholds)))
    fails = attribution[~attribution["cause"].isin(["stable", "baseline"])]
    if (attribution["cause"] == "baseline").all():
        lines.append(("Where formats fail", "no quantized runs: nothing to attribute."))
    elif fails.empty:
        lines.append(("Where formats fail", "no arm shows a symptom: every quantized arm is stable by the rules below."))
    else:
        parts = []
        for _cause, g in fails.groupby("cause", sort=False):
            arms = [a["arm"] + (f" (diverged — {a['diverged']})" if a["n_diverged"] else "") for _, a in g.iterrows()]
            parts.append(f"{g['label'].iloc[0]} — {', '.join(arms)}")
        stable = attribution[attribution["cause"] == "stable"]["arm"].tolist()
        text = "; ".join(parts) + "."
        if stable:
            text += f" Stable: {', '.join(stable)}."
        lines.append(("Where formats fail", text + " Rules and evidence in the attribution table."))
    return Verdict(runs, ranking, effects, attribution, thresholds, lines, winner, best, single)
