"""Failure attribution: why a format falls behind the BF16 baseline, or diverges.

Two ways, the first preferred:

* **By intervention** (:func:`decompose_sites`): where ablation runs exist (``site`` = weight,
  activation or gradient: only that site quantized with the format, everything else BF16,
  AdamW), each format's gap to BF16 is split by site, every part paired by seed with a 95%
  t-interval; ``interaction`` = full gap − sum of the site gaps. The cause is the site whose gap
  interval excludes 0 and is the largest part of the full gap (:func:`attribute_sites`). This
  measures the AdamW arm of the format; other arms of it fall back to the rules.
* **Heuristic** (:func:`attribute_failures` without an ablation): per format × optimizer (×
  master weights × tag), the run table's diagnostics averaged over seeds are checked against
  :data:`RULES` in order (forward precision, gradient fidelity, optimizer update); the first
  that fires is the cause, labelled "heuristic". Rules and thresholds are data
  (:class:`AttributionRule`, :class:`Thresholds`), printed on the page by :func:`describe_rules`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import pandas as pd

from altgrad.analysis.run_table import (
    ARM_KEYS,
    BASELINE_FORMAT,
    REFERENCE_OPTIMIZER,
    SITES,
    arm_label,
    is_missing,
    nanmean,
    paired,
    short_number,
)

__all__ = ["EARLY_GAP_RULE", "RULES", "AttributionRule", "Clause", "Thresholds", "attribute_failures",
           "attribute_sites", "decompose_sites", "describe_rules", "grid_stored"]

EARLY_GAP_RULE = ("the val-loss gap to BF16 is read at the first evaluation at or after the end of the "
                  "learning-rate warm-up (read from the logged lr: train.warmup_steps) and after step 0, "
                  "where every run still sits at ln V; the gap at step 0 says nothing about precision. "
                  "An arm of another optimizer is judged by its format's AdamW arm's early gap: the forward "
                  "pass is the format's, while an optimizer's own early gap is its speed (ManifoldAdamW's "
                  "calibrated steps start slower and end lower). Like the other rules it needs a symptom: "
                  "a format that ends level with BF16 did not fail")


@dataclass(frozen=True)
class Thresholds:
    """Every threshold the attribution rules and the verdict use (printed on the page)."""

    forward_rate: float = 0.01      # weight/activation overflow or underflow rate counted as high
    early_gap: float = 0.02         # nats: a loss gap already present at the first evaluation after warm-up
    grad_cos: float = 0.90          # mean cosine to the FP32 shadow gradient below this is low
    grad_underflow: float = 0.10    # gradient underflow rate counted as high
    stall_ratio: float = 0.80       # mean stall ratio counted as high (grid-stored weights)
    zero_update: float = 0.50       # mean zero-update fraction counted as high (FP32 master weights)
    loss_gap: float = 0.05          # nats: final gap to BF16 that counts as a failure symptom
    # what counts as "changed" when explaining an optimizer's effect
    stall_change: float = 0.02      # absolute change of the mean stall ratio
    flips_change: float = 0.10      # relative change of the mean flips per step
    cos_change: float = 0.01        # absolute change of the mean gradient cosine

    def items(self) -> list[tuple[str, float]]:
        return [(f.name, getattr(self, f.name)) for f in fields(self)]


def grid_stored(optimizer: str, master_weights: str) -> bool:
    """Weights stored on the format's grid (no higher-precision master copy): a sub-ULP update is
    lost there, so the stall ratio measures lost updates; with FP32 masters it accumulates."""
    return master_weights == "grid" or optimizer == "grid"


_STORAGE_TEXT = {"fp32": "FP32 master weights", "grid": "grid-stored weights (master_weights grid or GridOptim)"}


@dataclass(frozen=True)
class Clause:
    """``metric op threshold``: metric is a column of :func:`run_table` (averaged over seeds).
    ``storage`` ("fp32" or "grid"): the clause applies only to arms whose weights are stored that
    way (:func:`grid_stored`); None: every arm."""

    metric: str
    op: str  # ">=" or "<"
    threshold: str  # a field of Thresholds
    text: str  # what the metric is, for the page
    storage: str | None = None

    def applies(self, optimizer: str, master_weights: str) -> bool:
        if self.storage is None:
            return True
        return (self.storage == "grid") == grid_stored(optimizer, master_weights)

    def check(self, values: Mapping[str, float], th: Thresholds) -> bool | None:
        v = values.get(self.metric, math.nan)
        if is_missing(v) or not math.isfinite(v):
            return None
        limit = getattr(th, self.threshold)
        return v >= limit if self.op == ">=" else v < limit

    def describe(self, th: Thresholds) -> str:
        text = f"{self.text} {'≥' if self.op == '>=' else '<'} {getattr(th, self.threshold):g}"
        return text + (f" (for {_STORAGE_TEXT[self.storage]})" if self.storage else "")


@dataclass(frozen=True)
class AttributionRule:
    """Fires when any applicable clause of ``any_of`` holds, no clause of ``all_of`` is false (an
    unknown one -- e.g. no baseline -- is reported, not counted as false) and, if
    ``needs_symptom``, the arm diverged or its final gap is at least ``loss_gap`` (or unknown)."""

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


RULES: tuple[AttributionRule, ...] = (
    AttributionRule("forward", "forward precision", any_of=(
        Clause("activation_overflow_rate", ">=", "forward_rate", "activation overflow rate"),
        Clause("activation_underflow_rate", ">=", "forward_rate", "activation underflow rate"),
        Clause("weight_overflow_rate", ">=", "forward_rate", "weight overflow rate"),
        Clause("weight_underflow_rate", ">=", "forward_rate", "weight underflow rate"),
    ), all_of=(Clause("early_gap", ">=", "early_gap", "val-loss gap at the first eval after warm-up (nats)"),)),
    AttributionRule("gradient", "gradient fidelity", any_of=(
        Clause("grad_cos_mean", "<", "grad_cos", "mean gradient cosine to the FP32 shadow"),
        Clause("gradient_underflow_rate", ">=", "grad_underflow", "gradient underflow rate"),
    )),
    AttributionRule("update", "optimizer update", any_of=(
        Clause("zero_update_frac_mean", ">=", "zero_update", "mean zero-update fraction", storage="fp32"),
        Clause("stall_ratio_mean", ">=", "stall_ratio", "mean stall ratio", storage="grid"),
    )),
)

SITE_LABELS = {"weight": "weight quantization", "activation": "activation quantization",
               "gradient": "gradient quantization", "interaction": "interaction of the sites",
               "none": "no gap to BF16 established", "better": "better than BF16 (nothing to attribute)",
               "open": "not established"}


def describe_rules(th: Thresholds = Thresholds(), rules: Sequence[AttributionRule] = RULES) -> list[dict[str, str]]:
    """The rules in the order they are tried, as printable rows (key, label, condition)."""
    rows = [{"key": r.key, "label": r.label, "condition": r.describe(th)} for r in rules]
    rows.append({"key": "stable", "label": "stable",
                 "condition": f"no rule fired and no symptom (completed, final gap to BF16 < {th.loss_gap:g} nats)"})
    rows.append({"key": "unattributed", "label": "unattributed",
                 "condition": "a symptom (divergence or a gap) but no rule fired"})
    return rows


# --------------------------------------------------------------------------- by intervention

_PARTS = ("full", *SITES, "sum", "interaction")


def _by_seed(runs: pd.DataFrame) -> tuple[dict[int, float], list[str]]:
    """Final val loss per seed of completed runs (one run per seed: the first), and the diverged
    runs as ``seed s: step k``."""
    vals: dict[int, float] = {}
    div: list[str] = []
    for _, r in runs.iterrows():
        if is_missing(r["seed"]):
            continue
        s = int(r["seed"])
        if r["status"] == "diverged":
            div.append(f"seed {s}: step {'?' if is_missing(r.get('diverged_at')) else int(r['diverged_at'])}")
        elif not is_missing(r["final_val_loss"]) and s not in vals:
            vals[s] = float(r["final_val_loss"])
    return vals, div


def _plain(runs: pd.DataFrame, fmt: str, optimizer: str = REFERENCE_OPTIMIZER) -> pd.DataFrame:
    return runs[(runs["format"] == fmt) & (runs["optimizer"] == optimizer) & (runs["master_weights"] == "fp32")
                & runs["tag"].isna()]


def decompose_sites(runs: pd.DataFrame) -> pd.DataFrame:
    """Each ablated format's gap to BF16 split by site, paired by seed (the run table's runs).

    For a format F with ablation runs (``site`` in weight/activation/gradient, AdamW), at the
    ablation runs' lr multiplier: ``full`` = F (every site) − BF16, ``weight`` = F weight-only −
    BF16, ..., ``sum`` = the sum of the site gaps of each seed (over the sites that ran),
    ``interaction`` = full − sum, all AdamW, same seed. One row per format × part: ``mean, ci_low,
    ci_high, n, excludes_zero, deltas`` ({seed: gap}), ``share`` (mean / full mean; NaN unless the full
    gap's interval excludes 0 upward: a share of no established gap means nothing), ``n_diverged``,
    ``diverged`` (``seed s: step k``), ``sites`` (the sites that ran), ``lr_multiplier``, ``note``.
    """
    cols = ["format", "part", "mean", "ci_low", "ci_high", "n", "excludes_zero", "deltas", "share", "n_diverged",
            "diverged", "sites", "lr_multiplier", "note"]
    abl = runs[runs["site"].isin(SITES) & (runs["optimizer"] == REFERENCE_OPTIMIZER)]
    rows = []
    for fmt, g in abl.groupby("format", sort=False):
        mult = float(g["lr_multiplier"].mode().iloc[0])
        g = g[g["lr_multiplier"] == mult]
        note = ""
        main = runs[runs["site"] == "all"]
        full_runs = _plain(main, fmt)
        base_runs = _plain(main, BASELINE_FORMAT)
        if (full_runs["lr_multiplier"] == mult).any():
            full_runs = full_runs[full_runs["lr_multiplier"] == mult]
        elif len(full_runs):
            note += f"no {fmt} AdamW run at lr×{mult:g}: the full gap uses lr×{full_runs['lr_multiplier'].iloc[0]:g}. "
            full_runs = full_runs[full_runs["lr_multiplier"] == full_runs["lr_multiplier"].iloc[0]]
        if (base_runs["lr_multiplier"] == mult).any():
            base_runs = base_runs[base_runs["lr_multiplier"] == mult]
        elif len(base_runs):
            note += f"no BF16 AdamW run at lr×{mult:g}: the baseline uses lr×{base_runs['lr_multiplier'].iloc[0]:g}. "
            base_runs = base_runs[base_runs["lr_multiplier"] == base_runs["lr_multiplier"].iloc[0]]
        base, _ = _by_seed(base_runs)
        sites = [s for s in SITES if (g["site"] == s).any()]
        gaps: dict[str, dict[int, float]] = {}
        divs: dict[str, list[str]] = {}
        full, divs["full"] = _by_seed(full_runs)
        gaps["full"] = paired(full, base).deltas
        for site in sites:
            vals, divs[site] = _by_seed(g[g["site"] == site])
            gaps[site] = paired(vals, base).deltas
        common = set.intersection(*(set(gaps[s]) for s in sites)) if sites else set()
        gaps["sum"] = {s: sum(gaps[site][s] for site in sites) for s in sorted(common)}
        divs["sum"] = []
        gaps["interaction"] = paired(gaps["full"], gaps["sum"]).deltas
        divs["interaction"] = []
        if not base:
            note += "no completed BF16 AdamW run: no gap can be measured. "
        full_p = paired(gaps["full"])
        gap_established = bool(full_p.excludes_zero and full_p.mean > 0)
        for part in ("full", *sites, "sum", "interaction"):
            p = paired(gaps[part])
            share = p.mean / full_p.mean if gap_established and math.isfinite(p.mean) else math.nan
            rows.append({"format": fmt, "part": part, "mean": p.mean, "ci_low": p.ci_low, "ci_high": p.ci_high,
                         "n": p.n, "excludes_zero": p.excludes_zero, "deltas": p.deltas, "share": share,
                         "n_diverged": len(divs[part]), "diverged": ", ".join(divs[part]), "sites": sites,
                         "lr_multiplier": mult, "note": note.strip()})
    return pd.DataFrame(rows, columns=cols)


def _gap_text(r: Mapping) -> str:
    if r["n"] == 0:
        return "no completed pair"
    s = f"{r['mean']:+.4f}"
    if r["n"] >= 2:
        s += f" [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]"
    return s


def attribute_sites(decomposition: pd.DataFrame) -> pd.DataFrame:
    """Per ablated format, the cause read from its decomposition: ``format, cause`` (a site,
    ``interaction``, ``none``, ``better`` or ``open``), ``label``, ``sites`` (every site whose gap interval
    excludes 0 upward, largest first), ``text`` (the sentence, with the numbers).

    * the full run diverged: the sites whose run also diverged (with their steps); none: the
      interaction (no site diverges alone);
    * fewer than two seeds: ``open`` -- the point estimates are shown, no site is established;
    * the full gap's interval includes 0: ``none``; lies below 0: ``better`` (than BF16);
    * else the site with the largest gap among those whose interval excludes 0 upward (its share
      of the full gap is printed); none such: ``interaction`` when full − sum excludes 0 upward,
      else ``open``.
    """
    rows = []
    for fmt, d in decomposition.groupby("format", sort=False):
        parts = {r["part"]: r for _, r in d.iterrows()}
        full = parts["full"]
        sites = list(full["sites"])
        listing = "; ".join(f"{p}-only {_gap_text(parts[p])}" + (f" (diverged — {parts[p]['diverged']})"
                                                                 if parts[p]["n_diverged"] else "") for p in sites)
        found: list[str] = []
        if full["n_diverged"]:
            found = [p for p in sites if parts[p]["n_diverged"]]
            cause = found[0] if found else "interaction"
            text = (f"{fmt} diverged ({full['diverged']}); "
                    + (f"quantizing only the {' and only the '.join(found)} also diverged — "
                       + ", ".join(f"{p}: {parts[p]['diverged']}" for p in found)
                       if found else "no single site diverges alone, so the sites interact")
                    + f". Site gaps: {listing}.")
        elif full["n"] < 2:
            cause = "open"
            text = (f"{fmt}: gap {_gap_text(full)} on {int(full['n'])} seed(s) — no CI, so no site is established. "
                    f"Point estimates: {listing}; interaction {_gap_text(parts['interaction'])}.")
        elif not (full["excludes_zero"] and full["mean"] > 0):
            cause = "better" if full["excludes_zero"] else "none"
            text = (f"{fmt}: " + ("better than BF16" if full["excludes_zero"] else "no gap to BF16 established")
                    + f" (full gap {_gap_text(full)}), so there is no failure to attribute. Site gaps: {listing}.")
        else:
            found = sorted((p for p in sites if parts[p]["excludes_zero"] and parts[p]["mean"] > 0),
                           key=lambda p: -parts[p]["mean"])
            inter = parts["interaction"]
            if found:
                cause = found[0]
                text = (f"{fmt}: full gap {_gap_text(full)}; "
                        + "; ".join(f"{p}-only {_gap_text(parts[p])} = {parts[p]['share']:.0%} of it" for p in found)
                        + f" (interval excludes 0). Sum of the sites {_gap_text(parts['sum'])}, interaction "
                          f"{_gap_text(inter)}.")
            elif inter["excludes_zero"] and inter["mean"] > 0:
                cause = "interaction"
                text = (f"{fmt}: full gap {_gap_text(full)} but no site alone excludes 0 ({listing}); the "
                        f"interaction {_gap_text(inter)} does: the sites hurt together, not apart.")
            else:
                cause = "open"
                text = (f"{fmt}: full gap {_gap_text(full)}, but neither a site ({listing}) nor the interaction "
                        f"({_gap_text(inter)}) excludes 0 at {int(full['n'])} seeds.")
        if full["note"]:
            text += " " + full["note"]
        rows.append({"format": fmt, "cause": cause, "label": SITE_LABELS[cause], "sites": found, "text": text})
    return pd.DataFrame(rows, columns=["format", "cause", "label", "sites", "text"])


# --------------------------------------------------------------------------- per arm


def attribute_failures(runs: pd.DataFrame, th: Thresholds = Thresholds(),
                       rules: Sequence[AttributionRule] = RULES, sites: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per arm (format × optimizer × master weights × tag × site × lr multiplier) of
    ``runs`` outside the BF16/AdamW baseline: seeds, diverged (text), the diagnostics averaged
    over seeds, ``early_eval_steps`` (where the early gap was read), ``method`` (``intervention``: the format's AdamW arm when ``sites``
    (:func:`attribute_sites`) has the format; else ``heuristic``), ``cause`` (the site cause, or
    the first rule that fired, else ``stable``/``unattributed``), ``label`` (heuristic ones say
    so), ``fired`` (all rule keys that fired) and ``evidence``."""
    metric_cols = sorted({c.metric for r in rules for c in (*r.any_of, *r.all_of)} | {"gap_to_bf16"})
    by_site = {} if sites is None else {r["format"]: r for _, r in sites.iterrows()}
    rule_labels = {r.key: r.label for r in rules} | {"stable": "stable", "unattributed": "unattributed"}
    arms = runs.groupby(list(ARM_KEYS), sort=False, dropna=False)
    # the early gap of each arm's AdamW counterpart (same format, storage, tag, site, multiplier)
    def key(fmt, mw, tag, site, mult):  # a missing tag is NaN, and NaN never equals itself as a key
        return fmt, mw, None if is_missing(tag) else tag, site, mult

    adamw_early = {key(fmt, mw, tag, site, mult): nanmean(g["early_gap"]) if "early_gap" in g else math.nan
                   for (fmt, opt, mw, tag, site, mult), g in arms if opt == REFERENCE_OPTIMIZER}
    rows = []
    for (fmt, opt, mw, tag, site, mult), g in arms:
        plain = opt == REFERENCE_OPTIMIZER and mw == "fp32" and is_missing(tag) and site == "all"
        baseline = fmt == BASELINE_FORMAT and plain
        values = {c: nanmean(g[c]) if c in g else math.nan for c in metric_cols}
        if "early_gap" in values and opt != REFERENCE_OPTIMIZER:
            values["early_gap"] = adamw_early.get(key(fmt, mw, tag, site, mult), math.nan)
        div = g[g["status"] == "diverged"]
        diverged = ", ".join(f"seed {s}: step {'?' if is_missing(d) else int(d)}"
                             for s, d in zip(div["seed"], div["diverged_at"]))
        gap = values["gap_to_bf16"]
        gap_known = math.isfinite(gap)
        symptom = (not div.empty) or (gap_known and gap >= th.loss_gap)
        fired, evidence = [], []
        if fmt != BASELINE_FORMAT:
            for rule in rules:
                any_of = [c for c in rule.any_of if c.applies(opt, mw)]
                hits = [c for c in any_of if c.check(values, th)]
                req = [(c, c.check(values, th)) for c in rule.all_of if c.applies(opt, mw)]
                if not hits or any(ok is False for _, ok in req):
                    continue
                if rule.needs_symptom and not symptom and gap_known:
                    continue
                fired.append(rule.key)
                ev = [f"{c.text} {short_number(values[c.metric])}" for c in hits + [c for c, ok in req if ok]]
                ev += [f"{c.text} not measurable (no BF16 baseline or no eval after warm-up)" for c, ok in req if ok is None]
                if rule.needs_symptom and not gap_known and div.empty:
                    ev.append("final gap not measurable (no BF16 baseline)")
                evidence.append(f"{rule.label}: " + "; ".join(ev))
        method = "heuristic"
        if baseline:
            cause, label, method = "baseline", "baseline (reference)", "reference"
        elif fmt == BASELINE_FORMAT:  # no grid: the control format, whatever the optimizer
            cause, label, method = "baseline", "baseline format (control: no grid)", "reference"
        elif plain and fmt in by_site:
            s = by_site[fmt]
            cause, label, method = s["cause"], f"{s['label']} (by ablation)", "intervention"
            evidence = [f"ablation: {s['text']}"] + [f"heuristic rules also: {e}" for e in evidence]
        else:
            cause = fired[0] if fired else "unattributed" if symptom else "stable"
            label = f"{rule_labels[cause]} (heuristic)"
        rows.append({"format": fmt, "optimizer": opt, "master_weights": mw, "tag": None if is_missing(tag) else tag,
                     "site": site, "lr_multiplier": mult, "arm": arm_label(fmt, opt, mw, tag, site, mult),
                     "n_seeds": len(g), "diverged": diverged, "n_diverged": len(div), **values,
                     "early_eval_steps": sorted({int(x) for x in g["early_eval_step"].dropna()})
                     if "early_eval_step" in g else [], "method": method,
                     "cause": cause, "label": label, "fired": fired, "evidence": evidence, "symptom": symptom,
                     "gap_known": gap_known})
    return pd.DataFrame(rows)
