"""The report's numbers and verdict: pure functions on the exported tables.

Inputs are the two tables :func:`altgrad.analysis.export.export_runs` writes: ``summary``
(one row per run: labels ``run_id, format, optimizer, master_weights, seed, tag`` and
``status, diverged_at, final_val_loss, wall_time_s, ...``) and ``metrics`` (one row per run
and step). Nothing here reads files, plots or formats HTML.

* :func:`run_table` -- the summary plus per-run diagnostics (columns in :data:`RUN_COLUMNS`):
  gap to the BF16 baseline *of the same seed*, the gap at the first evaluation, mean stall
  ratio, flips, zero-update fraction, overflow/underflow rates, gradient cosine to the FP32
  shadow, tokens/s and GPU-hours from wall time.
* :func:`rank_formats` -- formats ordered by val-loss gap (mean and 95% t-interval over seeds).
* :func:`optimizer_effects` -- per format, each geometry-aware optimizer vs AdamW: paired by
  seed, Δ final val loss with a 95% t-interval and whether it excludes 0.
* :func:`attribute_failures` -- per format × optimizer, which rule of :data:`RULES` explains
  a loss gap or a divergence (rules and thresholds are data: :func:`describe_rules`).
* :func:`build_verdict` -- all of the above plus the verdict sentences, generated from them.

Everything works with one seed (no interval, said so), without a BF16 baseline (ranking by
absolute val loss, said so), with diverged runs and with no geometry-aware runs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "BASELINE_FORMAT",
    "NO_CI",
    "REFERENCE_OPTIMIZER",
    "RULES",
    "RUN_COLUMNS",
    "Clause",
    "Ranking",
    "Rule",
    "Thresholds",
    "Verdict",
    "arm_label",
    "attribute_failures",
    "build_verdict",
    "describe_rules",
    "mean_ci",
    "optimizer_effects",
    "optimizer_name",
    "rank_formats",
    "run_table",
]

BASELINE_FORMAT = "bf16"
REFERENCE_OPTIMIZER = "adamw"
CONFIDENCE = 0.95
NO_CI = "single seed — no CI"

_OPTIMIZER_ALIASES = {"manifold_adamw": "manifold"}
_OPTIMIZER_NAMES = {"adamw": "AdamW", "manifold": "ManifoldAdamW", "grid": "GridOptim"}
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
    """Display name: adamw -> AdamW, manifold -> ManifoldAdamW, grid -> GridOptim."""
    s = _OPTIMIZER_ALIASES.get(str(short), str(short))
    return _OPTIMIZER_NAMES.get(s, s)


def _is_missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def arm_label(fmt: Any, optimizer: Any, master_weights: Any = "fp32", tag: Any = None) -> str:
    """``e5m2 / ManifoldAdamW`` (+ `` / master grid`` and `` / tag`` when present)."""
    parts = [str(fmt), optimizer_name(optimizer)]
    if not _is_missing(master_weights) and master_weights != "fp32":
        parts.append(f"master {master_weights}")
    if not _is_missing(tag) and tag:
        parts.append(str(tag))
    return " / ".join(parts)


def mean_ci(values: Iterable[float], confidence: float = CONFIDENCE) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of the finite values; a t-interval, (mean, nan, nan, 1) for one value."""
    x = np.asarray([v for v in values if not _is_missing(v) and math.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(x.mean())
    if n == 1:
        return mean, math.nan, math.nan, 1
    from scipy.stats import t

    half = float(t.ppf(0.5 + confidence / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return mean, mean - half, mean + half, n


# --------------------------------------------------------------------------- per-run table


def _labels(summary: pd.DataFrame) -> pd.DataFrame:
    runs = summary.copy()
    for col in ("master_weights", "tag"):
        if col not in runs:
            runs[col] = "fp32" if col == "master_weights" else None
    runs["master_weights"] = runs["master_weights"].fillna("fp32")
    runs["tag"] = runs["tag"].where(runs["tag"].notna() & (runs["tag"].astype(str) != ""), None)
    runs["optimizer"] = runs["optimizer"].map(lambda o: _OPTIMIZER_ALIASES.get(o, o))
    return runs.reset_index(drop=True)


def _baseline_for(runs: pd.DataFrame, row: pd.Series) -> pd.Series | None:
    """The BF16 run of the same seed: completed, preferring AdamW, fp32 masters, no tag."""
    if _is_missing(row["seed"]):
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
                               if diverged and not _is_missing(row.get("diverged_at")) else
                               "diverged" if diverged else str(row.get("status")))
        base = _baseline_for(runs, row)
        rec["baseline_run_id"] = None if base is None else base["run_id"]
        final = row.get("final_val_loss")
        usable = not diverged and not _is_missing(final)
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
        rec["gpu_hours"] = float(wall) / 3600.0 if not _is_missing(wall) else math.nan
        out.append(rec)
    extra = pd.DataFrame(out, index=runs.index)
    runs = runs.drop(columns=[c for c in extra.columns if c in runs])
    return pd.concat([runs, extra], axis=1)


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
        vals = [float(v) for v in done[metric] if not _is_missing(v)]
        mean, lo, hi, n = mean_ci(vals)
        div = g[g["status"] == "diverged"]
        rows.append({
            "format": fmt, "optimizer": opt, "n_seeds": len(g), "n_completed": len(done), "n_diverged": len(div),
            "diverged": ", ".join(f"seed {s}: step {d}" for s, d in zip(div["seed"], div["diverged_at"])),
            "missing_baseline": int(done[metric].isna().sum()), "mean": mean, "ci_low": lo, "ci_high": hi, "n": n,
            "values": vals, "seeds": [int(s) for s, v in zip(done["seed"], done[metric]) if not _is_missing(v)],
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
        ref_by_seed = {int(r["seed"]): r for _, r in ref.iterrows() if not _is_missing(r["seed"])}
        for opt, geo in g[g["optimizer"] != REFERENCE_OPTIMIZER].groupby("optimizer", sort=False):
            deltas, seeds, div_geo, div_ref, pairs = [], [], [], [], []
            for _, r in geo.iterrows():
                if _is_missing(r["seed"]) or int(r["seed"]) not in ref_by_seed:
                    continue
                s, base = int(r["seed"]), ref_by_seed[int(r["seed"])]
                pairs.append((base, r))
                if r["status"] == "diverged":
                    div_geo.append(s)
                if base["status"] == "diverged":
                    div_ref.append(s)
                if r["status"] != "diverged" and base["status"] != "diverged" \
                        and not _is_missing(r["final_val_loss"]) and not _is_missing(base["final_val_loss"]):
                    deltas.append(float(r["final_val_loss"]) - float(base["final_val_loss"]))
                    seeds.append(s)
            if not pairs:
                continue
            mean, lo, hi, n = mean_ci(deltas)
            diag = {}
            for name, col in (("stall", "stall_ratio_mean"), ("flips", "flips_mean"), ("cos", "grad_cos_mean")):
                diag[f"{name}_ref"] = _nanmean(b[col] for b, _ in pairs)
                diag[f"{name}_geo"] = _nanmean(r[col] for _, r in pairs)
            rows.append({"format": fmt, "master_weights": mw, "tag": None if _is_missing(tag) else tag, "optimizer": opt,
                         "n_pairs": n, "mean": mean, "ci_low": lo, "ci_high": hi,
                         "excludes_zero": None if n < 2 else bool(lo > 0 or hi < 0),
                         "deltas": deltas, "seeds": seeds, "diverged_geo": div_geo, "diverged_ref": div_ref, **diag})
    return pd.DataFrame(rows, columns=cols)


def _nanmean(values: Iterable[Any]) -> float:
    x = [float(v) for v in values if not _is_missing(v) and math.isfinite(float(v))]
    return float(np.mean(x)) if x else math.nan


# --------------------------------------------------------------------------- failure attribution


@dataclass(frozen=True)
class Thresholds:
    """Every threshold the attribution rules and the verdict use (printed on the page)."""

    forward_rate: float = 0.01      # weight/activation overflow or underflow rate counted as high
    first_eval_gap: float = 0.02    # nats: a loss gap already present at the first evaluation
    grad_cos: float = 0.90          # mean cosine to the FP32 shadow gradient below this is low
    grad_underflow: float = 0.10    # gradient underflow rate counted as high
    stall_ratio: float = 0.80       # mean stall ratio counted as high
    zero_update: float = 0.50       # mean zero-update fraction counted as high
    loss_gap: float = 0.05          # nats: final gap to BF16 that counts as a failure symptom
    # what counts as "changed" when explaining an optimizer's effect
    stall_change: float = 0.02      # absolute change of the mean stall ratio
    flips_change: float = 0.10      # relative change of the mean flips per step
    cos_change: float = 0.01        # absolute change of the mean gradient cosine

    def items(self) -> list[tuple[str, float]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self)]


@dataclass(frozen=True)
class Clause:
    """``metric op threshold``: metric is a column of :func:`run_table` (averaged over seeds)."""

    metric: str
    op: str  # ">=" or "<"
    threshold: str  # a field of Thresholds
    text: str  # what the metric is, for the page

    def check(self, values: Mapping[str, float], th: Thresholds) -> bool | None:
        v = values.get(self.metric, math.nan)
        if _is_missing(v) or not math.isfinite(v):
            return None
        limit = getattr(th, self.threshold)
        return v >= limit if self.op == ">=" else v < limit

    def describe(self, th: Thresholds) -> str:
        return f"{self.text} {'≥' if self.op == '>=' else '<'} {getattr(th, self.threshold):g}"


@dataclass(frozen=True)
class Rule:
    """Fires when any clause of ``any_of`` holds, no clause of ``all_of`` is false (an unknown
    one -- e.g. no baseline -- is reported, not counted as false) and, if ``needs_symptom``,
    the arm diverged or its final gap is at least ``loss_gap`` (or unknown)."""

    key: str
    label: str
    any_of: tuple[Clause, ...]
    all_of: tuple[Clause, ...] = ()
    needs_symptom: bool = True

    def describe(self, th: Thresholds) -> str:
        text = " or ".join(c.describe(th) for c in self.any_of)
        if self.all_of:
            text = f"({text}) and " + " and ".join(c.describe(th) for c in self.all_of)
        if self.needs_symptom:
            text += f", with a symptom (diverged, or final gap to BF16 ≥ {th.loss_gap:g} nats)"
        return text


RULES: tuple[Rule, ...] = (
    Rule("forward", "forward precision", any_of=(
        Clause("activation_overflow_rate", ">=", "forward_rate", "activation overflow rate"),
        Clause("activation_underflow_rate", ">=", "forward_rate", "activation underflow rate"),
        Clause("weight_overflow_rate", ">=", "forward_rate", "weight overflow rate"),
        Clause("weight_underflow_rate", ">=", "forward_rate", "weight underflow rate"),
    ), all_of=(Clause("gap_first_eval", ">=", "first_eval_gap", "val-loss gap at the first eval (nats)"),),
        needs_symptom=False),
    Rule("gradient", "gradient fidelity", any_of=(
        Clause("grad_cos_mean", "<", "grad_cos", "mean gradient cosine to the FP32 shadow"),
        Clause("gradient_underflow_rate", ">=", "grad_underflow", "gradient underflow rate"),
    )),
    Rule("update", "optimizer update", any_of=(
        Clause("stall_ratio_mean", ">=", "stall_ratio", "mean stall ratio"),
        Clause("zero_update_frac_mean", ">=", "zero_update", "mean zero-update fraction"),
    )),
)


def describe_rules(th: Thresholds = Thresholds(), rules: Sequence[Rule] = RULES) -> list[dict[str, str]]:
    """The rules in the order they are tried, as printable rows (key, label, condition)."""
    rows = [{"key": r.key, "label": r.label, "condition": r.describe(th)} for r in rules]
    rows.append({"key": "stable", "label": "stable",
                 "condition": f"no rule fired and no symptom (completed, final gap to BF16 < {th.loss_gap:g} nats)"})
    rows.append({"key": "unattributed", "label": "unattributed",
                 "condition": "a symptom (divergence or a gap) but no rule fired"})
    return rows


def attribute_failures(runs: pd.DataFrame, th: Thresholds = Thresholds(),
                       rules: Sequence[Rule] = RULES) -> pd.DataFrame:
    """One row per format × optimizer (× master weights × tag) outside the BF16/AdamW
    baseline: seeds, diverged (text), the diagnostics averaged over seeds, ``cause`` (the
    first rule that fired, else ``stable``/``unattributed``), ``label``, ``fired`` (all rule
    keys that fired) and ``evidence`` (the clauses that held, with their values)."""
    metric_cols = sorted({c.metric for r in rules for c in (*r.any_of, *r.all_of)} | {"gap_to_bf16"})
    rows = []
    for (fmt, opt, mw, tag), g in runs.groupby(list(ARM_KEYS), sort=False, dropna=False):
        baseline = fmt == BASELINE_FORMAT and opt == REFERENCE_OPTIMIZER and mw == "fp32" and _is_missing(tag)
        values = {c: _nanmean(g[c]) if c in g else math.nan for c in metric_cols}
        div = g[g["status"] == "diverged"]
        diverged = ", ".join(f"seed {s}: step {d}" for s, d in zip(div["seed"], div["diverged_at"]))
        gap = values["gap_to_bf16"]
        gap_known = math.isfinite(gap)
        symptom = (not div.empty) or (gap_known and gap >= th.loss_gap)
        fired, evidence = [], []
        if not baseline:
            for rule in rules:
                hits = [c for c in rule.any_of if c.check(values, th)]
                req = [(c, c.check(values, th)) for c in rule.all_of]
                if not hits or any(ok is False for _, ok in req):
                    continue
                if rule.needs_symptom and not symptom and gap_known:
                    continue
                fired.append(rule.key)
                ev = [f"{c.text} {_fmt_num(values[c.metric])}" for c in hits + [c for c, ok in req if ok]]
                ev += [f"{c.text} not measurable (no BF16 baseline or no finite eval)" for c, ok in req if ok is None]
                if rule.needs_symptom and not gap_known and div.empty:
                    ev.append("final gap not measurable (no BF16 baseline)")
                evidence.append(f"{rule.label}: " + "; ".join(ev))
        if baseline:
            cause = "baseline"
        elif fired:
            cause = fired[0]
        elif symptom:
            cause = "unattributed"
        else:
            cause = "stable"
        labels = {r.key: r.label for r in rules} | {"baseline": "baseline (reference)", "stable": "stable",
                                                     "unattributed": "unattributed"}
        rows.append({"format": fmt, "optimizer": opt, "master_weights": mw, "tag": None if _is_missing(tag) else tag,
                     "arm": arm_label(fmt, opt, mw, tag), "n_seeds": len(g), "diverged": diverged,
                     "n_diverged": len(div), **values, "cause": cause, "label": labels[cause], "fired": fired,
                     "evidence": evidence, "symptom": symptom, "gap_known": gap_known})
    return pd.DataFrame(rows)


def _fmt_num(v: float) -> str:
    if _is_missing(v) or not math.isfinite(v):
        return "n/a"
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.2e}"
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.0f}"


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
            f"code flips per step {_fmt_num(fr)} → {_fmt_num(fg)} ({rel:+.0%})")
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


def build_verdict(summary: pd.DataFrame, metrics: pd.DataFrame, thresholds: Thresholds = Thresholds()) -> Verdict:
    """Every table of the report and the verdict sentences generated from them."""
    runs = run_table(summary, metrics)
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
        for cause, g in fails.groupby("cause", sort=False):
            arms = [a["arm"] + (f" (diverged — {a['diverged']})" if a["n_diverged"] else "") for _, a in g.iterrows()]
            parts.append(f"{g['label'].iloc[0]} — {', '.join(arms)}")
        stable = attribution[attribution["cause"] == "stable"]["arm"].tolist()
        text = "; ".join(parts) + "."
        if stable:
            text += f" Stable: {', '.join(stable)}."
        lines.append(("Where formats fail", text + " Rules and evidence in the attribution table."))
    return Verdict(runs, ranking, effects, attribution, thresholds, lines, winner, best, single)
