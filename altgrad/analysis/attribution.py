"""Failure attribution: which rule explains an arm's loss gap or divergence.

Per format × optimizer (× master weights × tag), the run table's diagnostics averaged over
seeds are checked against :data:`RULES` in order (forward precision, gradient fidelity,
optimizer update); the first that fires is the cause. Rules and thresholds are data
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
    arm_label,
    is_missing,
    nanmean,
    short_number,
)

__all__ = ["RULES", "AttributionRule", "Clause", "Thresholds", "attribute_failures", "describe_rules"]

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
        if is_missing(v) or not math.isfinite(v):
            return None
        limit = getattr(th, self.threshold)
        return v >= limit if self.op == ">=" else v < limit

    def describe(self, th: Thresholds) -> str:
        return f"{self.text} {'≥' if self.op == '>=' else '<'} {getattr(th, self.threshold):g}"


@dataclass(frozen=True)
class AttributionRule:
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


RULES: tuple[AttributionRule, ...] = (
    AttributionRule("forward", "forward precision", any_of=(
        Clause("activation_overflow_rate", ">=", "forward_rate", "activation overflow rate"),
        Clause("activation_underflow_rate", ">=", "forward_rate", "activation underflow rate"),
        Clause("weight_overflow_rate", ">=", "forward_rate", "weight overflow rate"),
        Clause("weight_underflow_rate", ">=", "forward_rate", "weight underflow rate"),
    ), all_of=(Clause("gap_first_eval", ">=", "first_eval_gap", "val-loss gap at the first eval (nats)"),),
        needs_symptom=False),
    AttributionRule("gradient", "gradient fidelity", any_of=(
        Clause("grad_cos_mean", "<", "grad_cos", "mean gradient cosine to the FP32 shadow"),
        Clause("gradient_underflow_rate", ">=", "grad_underflow", "gradient underflow rate"),
    )),
    AttributionRule("update", "optimizer update", any_of=(
        Clause("stall_ratio_mean", ">=", "stall_ratio", "mean stall ratio"),
        Clause("zero_update_frac_mean", ">=", "zero_update", "mean zero-update fraction"),
    )),
)


def describe_rules(th: Thresholds = Thresholds(), rules: Sequence[AttributionRule] = RULES) -> list[dict[str, str]]:
    """The rules in the order they are tried, as printable rows (key, label, condition)."""
    rows = [{"key": r.key, "label": r.label, "condition": r.describe(th)} for r in rules]
    rows.append({"key": "stable", "label": "stable",
                 "condition": f"no rule fired and no symptom (completed, final gap to BF16 < {th.loss_gap:g} nats)"})
    rows.append({"key": "unattributed", "label": "unattributed",
                 "condition": "a symptom (divergence or a gap) but no rule fired"})
    return rows


def attribute_failures(runs: pd.DataFrame, th: Thresholds = Thresholds(),
                       rules: Sequence[AttributionRule] = RULES) -> pd.DataFrame:
    """One row per format × optimizer (× master weights × tag) outside the BF16/AdamW
    baseline: seeds, diverged (text), the diagnostics averaged over seeds, ``cause`` (the
    first rule that fired, else ``stable``/``unattributed``), ``label``, ``fired`` (all rule
    keys that fired) and ``evidence`` (the clauses that held, with their values)."""
    metric_cols = sorted({c.metric for r in rules for c in (*r.any_of, *r.all_of)} | {"gap_to_bf16"})
    rows = []
    for (fmt, opt, mw, tag), g in runs.groupby(list(ARM_KEYS), sort=False, dropna=False):
        baseline = fmt == BASELINE_FORMAT and opt == REFERENCE_OPTIMIZER and mw == "fp32" and is_missing(tag)
        values = {c: nanmean(g[c]) if c in g else math.nan for c in metric_cols}
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
                ev = [f"{c.text} {short_number(values[c.metric])}" for c in hits + [c for c, ok in req if ok]]
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
        rows.append({"format": fmt, "optimizer": opt, "master_weights": mw, "tag": None if is_missing(tag) else tag,
                     "arm": arm_label(fmt, opt, mw, tag), "n_seeds": len(g), "diverged": diverged,
                     "n_diverged": len(div), **values, "cause": cause, "label": labels[cause], "fired": fired,
                     "evidence": evidence, "symptom": symptom, "gap_known": gap_known})
    return pd.DataFrame(rows)
