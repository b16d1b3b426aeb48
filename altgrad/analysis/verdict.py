"""The report's numbers and verdict: pure functions on the exported tables.

Over 600 lines because the verdict's parts (lr choice, ranking, effects, null control,
headlines) read one another's tables and are checked together by tests/test_verdict.py.

Everything here reads the run table (:func:`altgrad.analysis.run_table.run_table`, which the
export computes once and writes as ``summary.parquet``). Nothing here reads files, plots or
formats HTML. Every Δ is a difference paired by seed with a 95% t-interval
(:func:`altgrad.analysis.run_table.paired`).

* :func:`select_lr` -- with several ``lr_multiplier`` values, each arm at its best multiplier
  (lowest final val loss on seed 0, or the lowest seed), and whether the other seeds agree.
* :func:`rank_formats` -- formats ordered by their gap to the same seed's BF16 run.
* :func:`optimizer_effects` -- per quantized format (the BF16 baseline is the control, not a
  contestant), each geometry-aware optimizer vs AdamW: Δ final val loss paired by seed.
* the null control: E0M7's uniform grid, where a step-matched ManifoldAdamW *is* AdamW; its Δ
  must include 0, else no other effect is trustworthy (:func:`null_control`).
* failure attribution (:mod:`altgrad.analysis.attribution`): by ablation where it ran, else by
  the diagnostic rules ("heuristic").
* :func:`build_verdict` -- all of the above plus the verdict sentences, generated from them.

Headlines ("X ranks first", "X benefits most") are printed only when the paired difference to
the runner-up excludes 0; otherwise the leaders are "not distinguishable" at that many seeds.
With one seed there is no interval and no headline, only point estimates, said so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from altgrad.analysis.attribution import Thresholds, attribute_failures, attribute_sites, decompose_sites
from altgrad.analysis.run_table import (
    BASELINE_FORMAT,
    CONFIDENCE,
    REFERENCE_OPTIMIZER,
    Paired,
    arm_label,
    holm,
    is_missing,
    nanmean,
    normalize_labels,
    optimizer_name,
    paired,
    short_number,
)

__all__ = ["NO_CI", "NULL_FORMAT", "NULL_OPTIMIZER", "Ranking", "Verdict", "build_verdict", "null_control",
           "optimizer_effects", "rank_formats", "select_lr"]

NO_CI = "single seed — no CI"
NULL_FORMAT = "e0m7"  # a uniform grid: ULP-scaled steps are AdamW's steps times a constant
NULL_OPTIMIZER = "manifold"
GROUP = ("format", "optimizer", "master_weights", "tag")  # an arm up to its lr multiplier


def _key(row: Mapping[str, Any]) -> tuple:
    return tuple(None if is_missing(row[k]) else row[k] for k in GROUP)


def _arm_name(row: Mapping[str, Any]) -> str:
    return arm_label(row["format"], row["optimizer"], row["master_weights"], row["tag"],
                     lr_multiplier=row.get("lr_multiplier", 1.0))


def _final_by_seed(g: pd.DataFrame) -> dict[int, float]:
    """Final val loss per seed; a diverged run counts +inf (worse than any finite loss)."""
    out = {}
    for _, r in g.iterrows():
        if is_missing(r["seed"]):
            continue
        if r["status"] == "diverged":
            out[int(r["seed"])] = math.inf
        elif not is_missing(r["final_val_loss"]):
            out[int(r["seed"])] = float(r["final_val_loss"])
    return out


# --------------------------------------------------------------------------- lr multipliers


def _best_multiplier(loss: Mapping[float, Mapping[int, float]], seed: int) -> float | None:
    """The multiplier with the lowest final val loss on ``seed`` (ties: nearer 1); None when
    fewer than two multipliers ran on that seed."""
    have = [m for m in loss if seed in loss[m]]
    if len(have) < 2:
        return None
    return min(have, key=lambda m: (loss[m][seed], abs(math.log(m)) if m > 0 else math.inf))


def select_lr(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the ordinary runs (site "all") of each arm at its chosen lr multiplier, the choice table).

    The choice: the multiplier with the lowest final val loss on the arm's selection seed (seed
    0, else its lowest seed; a diverged run counts +inf; ties go to the multiplier nearer 1),
    confirmed on the other seeds: ``holds`` is True when every other seed with two or more
    multipliers has the same best, False when one does not, None when no other seed can tell.
    Choice table columns: format, optimizer, master_weights, tag, arm, multipliers, chosen,
    selection_seed, loss ({multiplier: {seed: final val loss}}), best_by_seed, holds, note.
    The selection seed stays in the comparisons (every arm had the same chance to tune).
    """
    main = runs[runs["site"] == "all"]
    rows, keep = [], []
    for key, g in main.groupby(list(GROUP), sort=False, dropna=False):
        mults = sorted({float(m) for m in g["lr_multiplier"]})
        loss = {m: _final_by_seed(g[g["lr_multiplier"] == m]) for m in mults}
        seeds = sorted({s for v in loss.values() for s in v})
        sel = 0 if 0 in seeds else (seeds[0] if seeds else None)

        note = ""
        chosen = mults[0] if len(mults) == 1 else (_best_multiplier(loss, sel) if sel is not None else None)
        if chosen is None:
            chosen = 1.0 if 1.0 in mults else mults[0]
            note = "no seed ran every multiplier: the multiplier nearest 1 is used"
        elif len(mults) > 1 and all(math.isinf(loss[m].get(sel, math.inf)) for m in mults):
            note = f"every multiplier diverged on seed {sel}"
        by_seed = {s: _best_multiplier(loss, s) for s in seeds} if len(mults) > 1 else {}
        others = {s: b for s, b in by_seed.items() if s != sel and b is not None}
        holds = None if len(mults) == 1 or not others else bool(all(b == chosen for b in others.values()))
        fmt, opt, mw, tag = key
        rows.append({"format": fmt, "optimizer": opt, "master_weights": mw, "tag": None if is_missing(tag) else tag,
                     "arm": arm_label(fmt, opt, mw, tag), "multipliers": mults, "chosen": float(chosen),
                     "selection_seed": sel, "loss": loss, "best_by_seed": by_seed, "holds": holds, "note": note})
        keep.append(g[g["lr_multiplier"] == chosen])
    table = pd.DataFrame(rows, columns=["format", "optimizer", "master_weights", "tag", "arm", "multipliers", "chosen",
                                        "selection_seed", "loss", "best_by_seed", "holds", "note"])
    selected = pd.concat(keep) if keep else main.iloc[:0]
    return selected.loc[[i for i in main.index if i in selected.index]], table


def _baseline_arm(selected: pd.DataFrame) -> pd.DataFrame:
    """The selected BF16 runs the gaps are measured against: AdamW, fp32 masters, no tag when there."""
    base = selected[selected["format"] == BASELINE_FORMAT]
    if base.empty:
        return base
    score = ((base["optimizer"] != REFERENCE_OPTIMIZER).astype(int) * 4 + (base["master_weights"] != "fp32").astype(int) * 2
             + base["tag"].notna().astype(int))
    best = base.loc[score.sort_values(kind="stable").index[0]]
    return base[[_key(r) == _key(best) for _, r in base.iterrows()]]


def _regap(selected: pd.DataFrame) -> pd.DataFrame:
    """``gap_to_bf16`` of every selected run against the selected BF16 run of its seed (the run
    table's gap may use another multiplier's baseline)."""
    base = {s: v for s, v in _final_by_seed(_baseline_arm(selected)).items() if math.isfinite(v)}
    if not base:
        return selected
    out = selected.copy()
    gap = []
    for _, r in out.iterrows():
        ok = r["status"] != "diverged" and not is_missing(r["final_val_loss"]) and not is_missing(r["seed"]) \
            and int(r["seed"]) in base
        gap.append(float(r["final_val_loss"]) - base[int(r["seed"])] if ok else math.nan)
    out["gap_to_bf16"] = gap
    return out


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
    quant = runs[(runs["format"] != BASELINE_FORMAT) & (runs["site"] == "all")]
    if quant.empty:
        return quant, REFERENCE_OPTIMIZER
    opt = REFERENCE_OPTIMIZER if (quant["optimizer"] == REFERENCE_OPTIMIZER).any() else quant["optimizer"].mode().iloc[0]
    sel = quant[quant["optimizer"] == opt]
    plain = sel[(sel["master_weights"] == "fp32") & sel["tag"].isna()]
    return (plain if not plain.empty else sel), opt


def rank_formats(runs: pd.DataFrame) -> Ranking:
    """Rank the quantized formats by gap to BF16 under the reference optimizer (``runs``: one
    multiplier per arm, e.g. :func:`select_lr`'s selection).

    One row per format: ``n_seeds, n_completed, n_diverged, diverged (text), mean, ci_low,
    ci_high, n, p`` (the paired t-test's), ``p_holm`` (Holm-adjusted over the formats: the gap's
    family), ``values`` (per-seed values of the metric, completed runs), ``seeds``,
    ``diverged_seeds``, ``lr_multiplier`` and ``rank`` (1 = best). Formats with a diverged seed
    rank after those without (more diverged seeds ranks lower), then by mean.
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
        ok = [(int(s), float(v)) for s, v in zip(done["seed"], done[metric]) if not is_missing(v) and not is_missing(s)]
        p = paired(dict(ok))
        mean, lo, hi, n = p.mean, p.ci_low, p.ci_high, p.n
        div = g[g["status"] == "diverged"]
        rows.append({
            "format": fmt, "optimizer": opt, "n_seeds": len(g), "n_completed": len(done), "n_diverged": len(div),
            "diverged": ", ".join(f"seed {s}: step {'?' if is_missing(d) else int(d)}"
                                  for s, d in zip(div["seed"], div["diverged_at"])),
            "missing_baseline": int(done[metric].isna().sum()), "mean": mean, "ci_low": lo, "ci_high": hi, "n": n,
            "p": p.p_value,
            "values": [v for _, v in ok], "seeds": [s for s, _ in ok],
            "diverged_seeds": [int(s) for s in div["seed"] if not is_missing(s)],
            "lr_multiplier": float(g["lr_multiplier"].iloc[0]),
        })
    table = pd.DataFrame(rows, columns=["format", "optimizer", "n_seeds", "n_completed", "n_diverged", "diverged",
                                        "missing_baseline", "mean", "ci_low", "ci_high", "n", "p", "values", "seeds",
                                        "diverged_seeds", "lr_multiplier"])
    table["p_holm"] = holm(list(table["p"])) if metric == "gap_to_bf16" else math.nan
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
    """Each geometry-aware optimizer vs AdamW within a quantized format (same master weights and
    tag; ``runs``: one multiplier per arm), paired by seed: Δ = final val loss (geometry-aware)
    − final val loss (AdamW); < 0 helps. The BF16 baseline is left out: it has no grid, so there
    is no effect to measure (its ManifoldAdamW is AdamW).

    Columns: format, master_weights, tag, optimizer, lr_ref, lr_geo, n_pairs (both completed),
    mean, ci_low, ci_high, excludes_zero (None with one pair), p (the paired t-test's), p_holm
    (Holm-adjusted over every row: the family of effects the verdict makes claims from) and
    established (p_holm < 1 − CONFIDENCE), deltas ({seed: Δ}), seeds,
    diverged_geo / diverged_ref (seeds whose run diverged on that side), calibration (of the
    geometry-aware runs), and the diagnostics of both sides over the paired seeds:
    stall_ref/stall_geo, flips_ref/flips_geo, cos_ref/cos_geo.
    """
    cols = ["format", "master_weights", "tag", "optimizer", "lr_ref", "lr_geo", "n_pairs", "mean", "ci_low", "ci_high",
            "excludes_zero", "p", "deltas", "seeds", "diverged_geo", "diverged_ref", "calibration", "stall_ref",
            "stall_geo", "flips_ref", "flips_geo", "cos_ref", "cos_geo"]
    rows = []
    quant = runs[(runs["format"] != BASELINE_FORMAT) & (runs["site"] == "all")]
    for (fmt, mw, tag), g in quant.groupby(["format", "master_weights", "tag"], sort=False, dropna=False):
        ref = g[g["optimizer"] == REFERENCE_OPTIMIZER]
        if ref.empty:
            continue
        ref_by_seed = {int(r["seed"]): r for _, r in ref.iterrows() if not is_missing(r["seed"])}
        for opt, geo in g[g["optimizer"] != REFERENCE_OPTIMIZER].groupby("optimizer", sort=False):
            pairs = [(ref_by_seed[int(r["seed"])], r) for _, r in geo.iterrows()
                     if not is_missing(r["seed"]) and int(r["seed"]) in ref_by_seed]
            if not pairs:
                continue
            done = {int(r["seed"]): (b, r) for b, r in pairs if r["status"] != "diverged" and b["status"] != "diverged"
                    and not is_missing(r["final_val_loss"]) and not is_missing(b["final_val_loss"])}
            p = paired({s: float(r["final_val_loss"]) for s, (_, r) in done.items()},
                       {s: float(b["final_val_loss"]) for s, (b, _) in done.items()})
            diag = {}
            for name, col in (("stall", "stall_ratio_mean"), ("flips", "flips_mean"), ("cos", "grad_cos_mean")):
                diag[f"{name}_ref"] = nanmean(b[col] for b, _ in pairs)
                diag[f"{name}_geo"] = nanmean(r[col] for _, r in pairs)
            cal = geo["calibration"].dropna().unique() if "calibration" in geo else []
            rows.append({"format": fmt, "master_weights": mw, "tag": None if is_missing(tag) else tag, "optimizer": opt,
                         "lr_ref": float(ref["lr_multiplier"].iloc[0]), "lr_geo": float(geo["lr_multiplier"].iloc[0]),
                         "n_pairs": p.n, "mean": p.mean, "ci_low": p.ci_low, "ci_high": p.ci_high,
                         "excludes_zero": p.excludes_zero, "p": p.p_value, "deltas": p.deltas, "seeds": list(p.deltas),
                         "diverged_geo": [int(r["seed"]) for _, r in pairs if r["status"] == "diverged"],
                         "diverged_ref": [int(b["seed"]) for b, _ in pairs if b["status"] == "diverged"],
                         "calibration": ", ".join(map(str, cal)) or None, **diag})
    effects = pd.DataFrame(rows, columns=cols)
    effects["p_holm"] = holm(list(effects["p"]))
    effects["established"] = effects["p_holm"] < 1 - CONFIDENCE
    return effects


def _effect_name(r: Mapping[str, Any]) -> str:
    name = arm_label(r["format"], r["optimizer"], r["master_weights"], r["tag"])
    if r["lr_ref"] != 1.0 or r["lr_geo"] != 1.0:
        name += f" (lr×{r['lr_geo']:g} vs AdamW lr×{r['lr_ref']:g})"
    return name


def null_control(effects: pd.DataFrame) -> dict[str, Any] | None:
    """The E0M7 ManifoldAdamW vs AdamW row (fp32 masters, no tag) with ``flagged``: True when its
    interval excludes 0 (matched arms disagree where geometry can change nothing), False when it
    includes 0, None with one seed (no check possible); None when that pair did not run."""
    e = effects[(effects["format"] == NULL_FORMAT) & (effects["optimizer"] == NULL_OPTIMIZER)
                & (effects["master_weights"] == "fp32") & effects["tag"].isna()]
    if e.empty:
        return None
    r = e.iloc[0].to_dict()
    r["flagged"] = r["excludes_zero"]
    return r


# --------------------------------------------------------------------------- verdict


@dataclass
class Verdict:
    """The verdict: ``lines`` are (heading, sentence) pairs generated from the tables; the
    headings in ``flags`` are warnings the page shows as such.

    ``runs`` every run (the run table); ``selected`` the ordinary runs at each arm's chosen lr
    multiplier, which every comparison uses; ``lr`` the choice table (:func:`select_lr`);
    ``decomposition`` / ``site_causes`` the ablation (:mod:`altgrad.analysis.attribution`);
    ``winner`` the format named as ranking first (None unless separated from the runner-up);
    ``benefits_most`` per geometry-aware optimizer, the format named (None unless separated)."""

    runs: pd.DataFrame
    selected: pd.DataFrame
    ranking: Ranking
    effects: pd.DataFrame
    attribution: pd.DataFrame
    decomposition: pd.DataFrame
    site_causes: pd.DataFrame
    lr: pd.DataFrame
    null: dict[str, Any] | None
    thresholds: Thresholds
    lines: list[tuple[str, str]]
    flags: set[str]
    winner: str | None
    benefits_most: dict[str, str | None]
    single_seed: bool


def _ci_text(lo: float, hi: float, n: int, unit: str = "") -> str:
    if n < 2 or not math.isfinite(lo):
        return f"{NO_CI}" if n == 1 else "no data"
    return f"95% CI {lo:+.4f} to {hi:+.4f}{unit}, {n} seeds"


def _versus(a: Mapping[int, float], b: Mapping[int, float], a_div: list[int], b_div: list[int]) -> tuple[Paired, bool | None, str]:
    """Leader ``a`` vs runner-up ``b`` (per-seed values, lower is better; diverged seeds apart):
    (paired a − b, separated, text). Separated: the interval excludes 0 downward, or ``b``
    diverged in every seed (≥ 2) where ``a`` completed. None: fewer than two common seeds."""
    p = paired(a, b)
    only_b_div = [s for s in b_div if s in a and s not in a_div]
    if len(only_b_div) >= 2 and all(s in b_div for s in a):
        return p, True, (f"the runner-up diverged in every seed where the leader completed "
                         f"(seeds {', '.join(map(str, only_b_div))})")
    if p.n < 2:
        return p, None, (f"difference {p.mean:+.4f} on one seed — no CI" if p.n == 1 else "no common seed")
    sep = bool(p.ci_high < 0)
    return p, sep, f"paired difference {p.mean:+.4f} nats ({p.ci_text()})"


def _ranking_line(rk: Ranking) -> tuple[tuple[str, str] | None, str | None]:
    t = rk.table
    if t.empty:
        return None, None
    what = "gap to BF16" if rk.metric == "gap_to_bf16" else "final val loss"
    opt = optimizer_name(rk.optimizer)
    top = t.iloc[0]
    if top["n"] == 0:
        if (t["n_diverged"] == t["n_seeds"]).all():
            text = f"none: every {opt} run of every quantized format diverged."
        else:
            text = f"none can be named: no quantized format has a completed run with a measurable {what}."
        return ("Which format wins", text), None
    points = "; ".join((f"{r['format']} {r['mean']:+.4f}" if r["n"] else f"{r['format']} no completed seed")
                       + (f" (diverged: {r['diverged']})" if r["n_diverged"] else "")
                       for _, r in t.iterrows() if r["n"] or r["n_diverged"])
    if len(t) == 1:
        return ("Which format wins", f"{top['format']} is the only quantized format: with {opt} its {what} is "
                f"{top['mean']:+.4f} nats ({_ci_text(top['ci_low'], top['ci_high'], int(top['n']))})."), None
    if top["n"] < 2:
        return ("Which format wins", f"no format is named ({NO_CI}). Point estimates of the {what} "
                f"with {opt} (nats, best first): {points}."), None
    second = t.iloc[1]
    a = dict(zip(top["seeds"], top["values"]))
    b = dict(zip(second["seeds"], second["values"]))
    p, sep, vs = _versus(a, b, top["diverged_seeds"], second["diverged_seeds"])
    own = f"{top['mean']:+.4f} nats ({_ci_text(top['ci_low'], top['ci_high'], int(top['n']))})"
    if sep:
        text = (f"{top['format']} ranks first: with {opt} its {what} is {own}; against the runner-up "
                f"{second['format']} (same seeds) the {vs}, which excludes 0.")
        winner = str(top["format"])
    else:
        n = max(int(top["n"]), p.n)
        text = (f"the leaders {top['format']} and {second['format']} are not distinguishable at {n} seeds: "
                f"{top['format']} − {second['format']} {vs}" + (", which includes 0" if sep is False else "")
                + f". Point estimates of the {what} with {opt} (nats, best first): {points}.")
        winner = None
    if sep and len(t) > 2:
        text += f" All point estimates: {points}."
    if rk.metric == "gap_to_bf16":
        known = t[t["n"] >= 2]
        held = known["p_holm"] < 1 - CONFIDENCE
        below = [f"{r['format']} {r['mean']:+.4f}" for (_, r), h in zip(known.iterrows(), held) if h and r["mean"] < 0]
        above = [f"{r['format']} {r['mean']:+.4f}" for (_, r), h in zip(known.iterrows(), held) if h and r["mean"] > 0]
        alone = [f"{r['format']} {r['mean']:+.4f} (p {r['p']:.3f}, Holm {r['p_holm']:.2f})"
                 for (_, r), h in zip(known.iterrows(), held) if not h and (r["ci_high"] < 0 or r["ci_low"] > 0)]
        family = f"Holm's correction over the {len(known)} formats"
        if below or above:
            text += (f" Gap to BF16 established (its own CI excludes 0, and {family} keeps it): "
                     + "; ".join(([f"better than BF16: {', '.join(below)}"] if below else [])
                                 + ([f"worse than BF16: {', '.join(above)}"] if above else [])) + ".")
        else:
            text += f" No format's gap to BF16 is established after {family}."
        if alone:
            text += f" Its own CI excludes 0, but not after {family}: {', '.join(alone)}."
    return ("Which format wins", text), winner


def _effect_item(r: Mapping[str, Any]) -> str:
    """``e7m0 / ManifoldAdamW -0.0201 [-0.05, +0.01]`` (+ divergences)."""
    name = _effect_name(r)
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
    s = ("Δ final val loss vs AdamW, same quantized format and seed (< 0 helps; BF16 is the control and is left out"
         + ("; 95% CI in brackets" if any_ci else "") + "): "
         + "; ".join(_effect_item(r) for _, r in order.iterrows()) + ".")
    helps = [_effect_name(r) for _, r in measured.iterrows() if r["established"] and r["mean"] < 0]
    hurts = [_effect_name(r) for _, r in measured.iterrows() if r["established"] and r["mean"] > 0]
    alone = [f"{_effect_name(r)} (p {r['p']:.3f}, Holm {r['p_holm']:.2f})" for _, r in measured.iterrows()
             if r["excludes_zero"] and not r["established"]]
    family = f"Holm's correction over the {int(measured['p'].notna().sum())} comparisons"
    single = [r for _, r in measured.iterrows() if r["n_pairs"] == 1]
    if any_ci:
        s += (f" A real gain (CI excludes 0, and {family} keeps it) for: {', '.join(helps)}." if helps else
              f" No gain is established: no negative Δ excludes 0 after {family}.")
        if hurts:
            s += f" A real loss (CI excludes 0, and {family} keeps it) for: {', '.join(hurts)}."
        if alone:
            s += f" The CI excludes 0 alone, but not after {family}: {', '.join(alone)}."
    if single:
        s += (" Every comparison rests on one seed — no CI, so none is established." if len(single) == len(measured)
              else f" {len(single)} comparison(s) rest on one seed — no CI.")
    return s


def _benefit_line(effects: pd.DataFrame, opt: str, th: Thresholds, null_flagged: bool) -> tuple[str, str | None]:
    """Which format gains most from ``opt``: (sentence, the format named or None)."""
    cand = effects[(effects["optimizer"] == opt) & (effects["n_pairs"] > 0)]
    cand = cand.assign(_k=cand["mean"]).sort_values("_k", kind="stable")
    name = optimizer_name(opt)
    points = "; ".join(f"{_effect_name(r)} {r['mean']:+.4f}" for _, r in cand.iterrows())
    top = cand.iloc[0]
    diag = " Diagnostics of the leader — " + _why(top, th)
    caveat = " (The E0M7 calibration check failed: read this with that in mind.)" if null_flagged else ""
    if int(top["n_pairs"]) < 2:
        return (f"no format is named ({NO_CI}). Point estimates of Δ vs AdamW (best first): "
                f"{points}." + diag + caveat), None
    own = f"Δ {top['mean']:+.4f} nats (95% CI {top['ci_low']:+.4f} to {top['ci_high']:+.4f}, {int(top['n_pairs'])} seeds)"
    if not (top["established"] and top["mean"] < 0):
        why = ("has a CI that includes 0 or lies above it" if not (top["excludes_zero"] and top["mean"] < 0) else
               f"excludes 0 alone (p {top['p']:.3f}) but not after Holm's correction over the effects (p {top['p_holm']:.2f})")
        return (f"no format's gain from {name} is established: the best point estimate, {_effect_name(top)} {own}, "
                f"{why}. All (best first): {points}." + diag + caveat), None
    if len(cand) == 1:
        return (f"{top['format']} gains from {name}: {own}, excluding 0; it is the only quantized format measured, "
                f"so \"most\" is not a comparison." + diag + caveat), None
    second = cand.iloc[1]
    p, sep, vs = _versus(top["deltas"], second["deltas"], [], [])
    if sep:
        return (f"{top['format']} benefits most from {name}: {own}; against the runner-up {second['format']} "
                f"(Δ {second['mean']:+.4f}, same seeds) the {vs}, which excludes 0." + diag + caveat), str(top["format"])
    n = max(int(top["n_pairs"]), p.n)
    return (f"{top['format']} gains from {name} ({own}), but it and the runner-up {second['format']} are not "
            f"distinguishable at {n} seeds: Δ{top['format']} − Δ{second['format']} {vs}"
            + (", which includes 0" if sep is False else "") + f". Point estimates (best first): {points}."
            + diag + caveat), None


def _null_line(null: dict[str, Any] | None) -> str:
    if null is None:
        return (f"not measured: no {NULL_FORMAT} pair of AdamW and {optimizer_name(NULL_OPTIMIZER)} ran, so whether "
                "the arms are matched is unchecked.")
    what = (f"{NULL_FORMAT}'s grid is uniform, so a step-matched {optimizer_name(NULL_OPTIMIZER)} takes AdamW's "
            f"steps there and can change nothing: its Δ must include 0")
    cal = null.get("calibration")
    uncal = f" (this arm's steps are {cal}: the arms also differ in step size)" if cal and cal != "calibrated" else ""
    if null["n_pairs"] == 0:
        return f"{what}. No completed pair{uncal}: the check cannot be made."
    if null["n_pairs"] < 2:
        return f"{what}. Δ {null['mean']:+.4f} nats on one seed — no CI, so the check cannot be made{uncal}."
    ci = f"Δ {null['mean']:+.4f} nats (95% CI {null['ci_low']:+.4f} to {null['ci_high']:+.4f}, {int(null['n_pairs'])} seeds)"
    if null["flagged"]:
        return (f"FAILED. {what}, but {ci} excludes 0{uncal}. The arms are not matched (step size, calibration or a "
                "bug), so no other optimizer effect on this page is trustworthy either.")
    reach = max(abs(null["ci_low"]), abs(null["ci_high"]))
    return (f"passed. {what}; {ci} includes 0{uncal}. At this spread the check only rules out a mismatch larger "
            f"than {reach:.4f} nats.")


def _lr_line(lr: pd.DataFrame) -> str | None:
    multi = lr[lr["multipliers"].map(len) > 1]
    if multi.empty:
        return None
    mults = sorted({m for ms in multi["multipliers"] for m in ms})
    parts, broken = [], []
    for _, r in multi.iterrows():
        others = {s: b for s, b in r["best_by_seed"].items() if s != r["selection_seed"] and b is not None}
        if r["holds"] is None:
            conf = "no other seed to confirm it"
        elif r["holds"]:
            conf = f"holds on seed{'s' if len(others) > 1 else ''} {', '.join(map(str, others))}"
        else:
            disagree = [f"seed {s} prefers ×{b:g}" for s, b in others.items() if b != r["chosen"]]
            conf = "does not hold: " + ", ".join(disagree)
            broken.append(r["arm"])
        parts.append(f"{r['arm']} ×{r['chosen']:g} ({conf}{'; ' + r['note'] if r['note'] else ''})")
    sel = sorted({int(s) for s in multi["selection_seed"].dropna()})
    text = (f"every arm ran lr multipliers {', '.join(f'×{m:g}' for m in mults)}; each is compared at the multiplier "
            f"with the lowest final val loss on seed {', '.join(map(str, sel))} (the selection seed stays in the "
            f"comparisons), then checked on the other seeds. Chosen: " + "; ".join(parts) + ".")
    if broken:
        text += (f" For {', '.join(broken)} the best multiplier depends on the seed, so an effect there may be "
                 "tuning as much as geometry: see the loss-vs-multiplier figure.")
    return text


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


def _fails_line(attribution: pd.DataFrame) -> str:
    if attribution.empty or (attribution["cause"] == "baseline").all():
        return "no quantized runs: nothing to attribute."
    parts = []
    by_abl = attribution[attribution["method"] == "intervention"]
    for _, a in by_abl.iterrows():
        parts.append(f"by ablation, {a['arm']}: {a['label'].replace(' (by ablation)', '')}"
                     + (f" (diverged — {a['diverged']})" if a["n_diverged"] else ""))
    heur = attribution[(attribution["method"] == "heuristic") & ~attribution["cause"].isin(["stable"])]
    for _cause, g in heur.groupby("cause", sort=False):
        arms = [a["arm"] + (f" (diverged — {a['diverged']})" if a["n_diverged"] else "") for _, a in g.iterrows()]
        parts.append(f"{g['label'].iloc[0]} — {', '.join(arms)}")
    stable = attribution[attribution["cause"] == "stable"]["arm"].tolist()
    if not parts:
        text = "no arm shows a symptom: every quantized arm is stable by the (heuristic) rules below."
    else:
        text = "; ".join(parts) + "."
        if stable:
            text += f" Stable (heuristic): {', '.join(stable)}."
    if by_abl.empty:
        text += " No ablation ran, so every attribution is heuristic (diagnostic rules, not an intervention)."
    return text + " Decomposition, rules and evidence below."


def build_verdict(runs: pd.DataFrame, thresholds: Thresholds = Thresholds()) -> Verdict:
    """Every table of the report and the verdict sentences generated from them; ``runs`` is
    the run table (altgrad.analysis.run_table, what the export wrote as ``summary.parquet``)."""
    runs = normalize_labels(runs)
    selected, lr = select_lr(runs)
    selected = _regap(selected)
    ranking = rank_formats(selected)
    effects = optimizer_effects(selected)
    decomposition = decompose_sites(runs)
    site_causes = attribute_sites(decomposition)
    attribution = attribute_failures(selected, thresholds, sites=site_causes)
    null = null_control(effects)
    seeds = runs.groupby(["format", "optimizer", "master_weights", "tag", "site", "lr_multiplier"],
                         dropna=False)["seed"].nunique()
    single = bool(len(seeds) and seeds.max() <= 1)
    lines: list[tuple[str, str]] = []
    flags: set[str] = set()

    n_div = int((runs["status"] == "diverged").sum())
    n_seeds = runs["seed"].nunique()
    n_abl = int((runs["site"] != "all").sum())
    extra = ""
    if n_abl:
        fmts = ", ".join(dict.fromkeys(runs.loc[runs["site"] != "all", "format"]))
        extra += f" {_n(n_abl, 'ablation run')} (one site quantized) for {fmts}."
    if (lr["multipliers"].map(len) > 1).any():
        extra += f" {_n(len(runs[runs['site'] == 'all']) - len(selected), 'run')} at other lr multipliers than the chosen ones."
    lines.append(("Evidence", f"{_n(len(runs), 'run')}, {_n(runs['format'].nunique(), 'format')}, "
                              f"{_n(runs['optimizer'].nunique(), 'optimizer')}, {_n(n_seeds, 'seed')}; "
                              f"{n_div} diverged." + extra
                 + (" Every comparison rests on a single seed — no CI is given anywhere and no format is named."
                    if single else " Every Δ is paired by seed, with a 95% t-interval.")))
    rl, winner = _ranking_line(ranking)
    lines.append(rl if rl is not None else ("Which format wins", "no quantized runs: nothing to rank."))
    for note in ranking.notes:
        lines.append(("Caveat", note + "."))
    lr_text = _lr_line(lr)
    if lr_text:
        lines.append(("Learning rate", lr_text))

    lines.append(("Calibration check", _null_line(null)))
    null_flagged = bool(null and null["flagged"])
    if null_flagged:
        flags.add("Calibration check")

    benefits: dict[str, str | None] = {}
    if effects.empty:
        lines.append(("Geometry-aware updates", "no A/B runs: no quantized format has both AdamW and a geometry-aware "
                                                "optimizer for the same seed, so their effect is not measured."))
    else:
        lines.append(("Geometry-aware updates", _effects_line(effects)))
        for opt in dict.fromkeys(effects.loc[effects["n_pairs"] > 0, "optimizer"]):
            text, named = _benefit_line(effects, opt, thresholds, null_flagged)
            benefits[opt] = named
            lines.append((f"Who benefits most from {optimizer_name(opt)}", text))
    lines.append(("Where formats fail", _fails_line(attribution)))
    return Verdict(runs, selected, ranking, effects, attribution, decomposition, site_causes, lr, null, thresholds,
                   lines, flags, winner, benefits, single)
