"""The report page: one self-contained HTML file (images inlined as base64, no JS, no network).

Over 600 lines because it is one page: each section is its own function, and splitting them
across files would split the table, number and escaping helpers every section shares.

    from altgrad.analysis.html import ReportContext, render_report
    ctx = ReportContext.collect(command="snakemake --cores 1 results/report.html", planned=exp.jobs(),
                                budget_usd=exp.budget["usd"], corpus=exp.meta, ...)
    page = render_report(summary_df, metrics_df, ctx)     # str; the caller writes it atomically

``summary_df``/``metrics_df`` are the tables of :func:`altgrad.analysis.export.export_runs`
(the summary already holds :func:`altgrad.analysis.run_table.run_table`'s columns).
Page order: verdict (with the ranking, A/B and lr-multiplier tables; a failed E0M7 calibration
check shown as a warning), failure attribution (the ablation's split of each gap by site, then the
heuristic rules and thresholds printed), figures, per-run table, setup, budget planned vs spent,
reproducibility footer.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import os
import platform
import statistics
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from altgrad.analysis.attribution import EARLY_GAP_RULE, Thresholds, describe_rules
from altgrad.analysis.run_table import arm_label, ensure_run_table, optimizer_name, paired
from altgrad.analysis.verdict import NO_CI, NULL_FORMAT, Verdict, build_verdict
from altgrad.quantization import FORMAT_NAMES, equivalence_classes

__all__ = ["ReportContext", "esc", "fmt_num", "img", "page", "render_report", "table"]


@dataclass
class ReportContext:
    """What the tables cannot tell the page; every field is optional (the page says "not given").

    command      the exact command that produced the page (reproducibility footer)
    run_configs  run id -> its resolved config file's text (footer)
    commit       the source commit (setup table and footer)
    versions     package -> version (footer; :meth:`collect` fills altgrad/torch/snakemake/...)
    hardware     e.g. "2× CPU (x86_64), no GPU" (setup table; :meth:`collect` fills it)
    corpus       corpus facts: name/source, tokens or train_tokens/val_tokens, documents, vocab_size
    model        model facts: n_layer, n_head, n_embd, block_size, vocab_size (params come from the runs)
    planned      the budget plan: JobCost objects (altgrad.experiment.pricing) or mappings with
                 name, seconds (the job's estimated wall time), basis (measured: from a calibration;
                 assumed: from FLOPs at an assumed MFU), usd, flops, and optionally device, price_usd;
                 a plan without seconds is gpu_hours × 3600, basis assumed
    budget_usd   the budget cap, if any
    thresholds   attribution thresholds (:class:`altgrad.analysis.attribution.Thresholds`)
    title        page title
    generated    a timestamp text (:meth:`collect` fills it; None keeps the page byte-stable)
    """

    command: str | None = None
    run_configs: Mapping[str, str] = field(default_factory=dict)
    commit: str | None = None
    versions: Mapping[str, str] = field(default_factory=dict)
    hardware: str | None = None
    corpus: Mapping[str, Any] | None = None
    model: Mapping[str, Any] | None = None
    planned: Sequence[Any] = ()
    budget_usd: float | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    title: str = "altgrad report"
    generated: str | None = None

    @classmethod
    def coerce(cls, context: ReportContext | Mapping[str, Any] | None) -> ReportContext:
        if context is None:
            return cls()
        if isinstance(context, cls):
            return context
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(context) - known
        if unknown:
            raise TypeError(f"unknown report context keys: {sorted(unknown)} (known: {sorted(known)})")
        return cls(**dict(context))

    @classmethod
    def collect(cls, root: str | os.PathLike | None = None, **fields_: Any) -> ReportContext:
        """A context with versions, hardware, git commit (of ``root``) and a timestamp filled in;
        ``fields_`` (any field) override."""
        base = {"versions": package_versions(), "hardware": hardware_description(), "commit": git_commit(root),
                "generated": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
        base.update({k: v for k, v in fields_.items() if v is not None})
        return cls(**base)


def package_versions(names: Sequence[str] = ("altgrad", "torch", "snakemake", "pandas", "matplotlib", "numpy")) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = version(n)
        except PackageNotFoundError:
            out[n] = "not installed"
    return out


def hardware_description() -> str:
    """``2× CPU (x86_64), no GPU`` or ``... , GPU: NVIDIA H100 80GB HBM3``."""
    text = f"{os.cpu_count()}× CPU ({platform.processor() or platform.machine()})"
    try:
        import torch

        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
            if torch.cuda.is_available() else []
    except (ImportError, RuntimeError):  # no torch, or a broken CUDA setup
        gpus = []
    return text + (", GPU: " + ", ".join(gpus) if gpus else ", no GPU")


def git_commit(root: str | os.PathLike | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root or Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root or Path(__file__).parent,
                               capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip()[:12] + (" (uncommitted changes)" if dirty.stdout.strip() else "")


# --------------------------------------------------------------------------- formatting

_CSS = """
:root { --ink:#1d232a; --muted:#5b6570; --line:#dde2e7; --soft:#f5f7f9; --bad:#fbe9e9; --badink:#a61b1b; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--ink); margin: 0; }
main { max-width: 1500px; margin: 0 auto; padding: 1.5rem 2rem 3rem; }
h1 { font-size: 1.6rem; margin: 0 0 .2rem; }
h2 { font-size: 1.2rem; margin: 2.2rem 0 .6rem; padding-bottom: .25rem; border-bottom: 2px solid var(--line); }
h3 { font-size: 1rem; margin: 1.4rem 0 .4rem; }
.sub { color: var(--muted); margin: 0 0 1rem; }
.verdict { background: #eef5fb; border: 1px solid #c9dcec; border-left: 6px solid #1f77b4; border-radius: 6px;
           padding: .8rem 1.2rem; }
.verdict p { margin: .45rem 0; }
.verdict b { color: #114a75; }
table { border-collapse: collapse; font-size: .82rem; margin: .4rem 0 .8rem; }
th, td { border-bottom: 1px solid var(--line); padding: .28rem .5rem; text-align: right; vertical-align: top; }
th { background: var(--soft); font-weight: 600; vertical-align: bottom; }
td { white-space: nowrap; }
td.t { white-space: normal; }
span.arm { white-space: nowrap; }
span.id { white-space: nowrap; font-family: ui-monospace, monospace; font-size: .78rem; }
table.kv th { text-align: left; background: none; vertical-align: top; white-space: nowrap; }
td.t, th.t { text-align: left; }
tr.diverged td { background: var(--bad); }
tr.muted td { color: var(--muted); font-style: italic; }
td.status-diverged { color: var(--badink); font-weight: 600; white-space: nowrap; }
.scroll { overflow-x: auto; }
figure { margin: 1.2rem 0 1.8rem; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; display: block; }
figcaption { color: var(--muted); font-size: .85rem; margin-top: .35rem; max-width: 1100px; }
.missing { color: var(--muted); font-style: italic; }
.yes { color: #1c7c2c; font-weight: 600; } .no { color: var(--muted); }
pre { background: var(--soft); border: 1px solid var(--line); padding: .7rem; overflow-x: auto; font-size: .78rem;
      white-space: pre-wrap; word-break: break-word; }
td.evidence { color: var(--muted); font-size: .78rem; border-top: none; padding-top: 0; }
table.attr tr:has(+ tr td.evidence) td { border-bottom: none; }
footer { margin-top: 2.5rem; color: var(--muted); font-size: .85rem; }
.cause-stable { color: #1c7c2c; } .cause-baseline { color: var(--muted); }
.cause-forward, .cause-gradient, .cause-update, .cause-unattributed, .cause-weight, .cause-activation,
.cause-interaction { color: var(--badink); font-weight: 600; }
.cause-none, .cause-better { color: #1c7c2c; } .cause-open { color: var(--muted); font-style: italic; }
.verdict p.flag { background: var(--bad); border: 2px solid var(--badink); border-radius: 4px; padding: .4rem .6rem;
                  color: var(--badink); }
.verdict p.flag b { color: var(--badink); }
tr.flagged td { background: var(--bad); color: var(--badink); font-weight: 600; }
span.note { color: var(--muted); font-size: .75rem; }
"""


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))


def fmt_num(v: Any, kind: str = "g") -> str:
    """The pages' number formats: loss (4 decimals), gap (signed), rate, int, sci, hours, ppl,
    g (3 significant digits), or any format spec (``".3f"``); missing or NaN is ``–``."""
    if _missing(v):
        return "–"
    if isinstance(v, str):
        return v
    v = float(v)
    if not math.isfinite(v):
        return str(v)
    if kind == "loss":
        return f"{v:.4f}"
    if kind == "gap":
        return f"{v:+.4f}"
    if kind == "rate":
        return "0" if v == 0 else f"{v:.2e}" if v < 1e-3 else f"{v:.3f}"
    if kind == "int":
        return f"{v:,.0f}"
    if kind == "sci":
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"
    if kind == "hours":
        return "0" if v == 0 else f"{v:.2e}" if v < 0.01 else f"{v:.3f}" if v < 10 else f"{v:.1f}"
    if kind == "ppl":
        return f"{v:,.1f}" if v < 1e5 else f"{v:.2e}"
    if kind == "g":
        return f"{v:.3g}"
    return format(v, kind)


def esc(x: Any) -> str:
    """``x`` as HTML text."""
    return html.escape(str(x))


def table(head: Sequence[tuple[str, bool]], rows: Sequence[Sequence[str]], row_classes: Sequence[str] | None = None,
          cell_classes: Sequence[Sequence[str]] | None = None, table_id: str = "") -> str:
    """head: (title, is_text: left-aligned, may wrap); rows: already-escaped cell HTML;
    row_classes: e.g. ``diverged`` or ``muted`` (grey italic: not a measurement)."""
    th = "".join(f'<th class="t">{esc(t)}</th>' if text else f"<th>{esc(t)}</th>" for t, text in head)
    body = []
    for i, row in enumerate(rows):
        rc = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        tds = []
        for j, cell in enumerate(row):
            classes = ["t"] if head[j][1] else []
            if cell_classes and cell_classes[i][j]:
                classes.append(cell_classes[i][j])
            c = f' class="{" ".join(classes)}"' if classes else ""
            tds.append(f"<td{c}>{cell}</td>")
        body.append(f"<tr{rc}>{''.join(tds)}</tr>")
    tid = f' id="{table_id}"' if table_id else ""
    return (f'<div class="scroll"><table{tid}><thead><tr>{th}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>")


def img(png: bytes, alt: str) -> str:
    """A PNG inlined as base64: the page stays one self-contained file."""
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def page(title: str, body: str) -> str:
    """A whole page: ``body`` (HTML) under ``title``, with the pages' one stylesheet."""
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body><main>{body}</main></body></html>\n")


# --------------------------------------------------------------------------- sections


def _ci_cell(lo: Any, hi: Any, n: int) -> str:
    return (f"{fmt_num(lo, 'gap')} to {fmt_num(hi, 'gap')}" if n >= 2 else NO_CI if n == 1 else "–")


def _yes_no(x: Any) -> str:
    return ("–" if x is None or _missing(x) else '<span class="yes">yes</span>' if x else '<span class="no">no</span>')


def _p_cell(p: float, p_holm: float) -> str:
    """The paired t-test's p and, in brackets, its Holm-adjusted p over the table's family."""
    if _missing(p) or not math.isfinite(p):
        return "–"
    return f"{p:.3f} ({p_holm:.2f})" if not _missing(p_holm) and math.isfinite(p_holm) else f"{p:.3f}"


def _verdict_section(v: Verdict) -> str:
    paras = "".join(f'<p class="flag"><b>⚠ {esc(h)}.</b> {esc(t)}</p>' if h in v.flags else
                    f"<p><b>{esc(h)}.</b> {esc(t)}</p>" for h, t in v.lines)
    out = [f'<h2 id="verdict">Verdict</h2><div class="verdict">{paras}</div>']
    rk = v.ranking
    multi = bool((v.lr["multipliers"].map(len) > 1).any()) if len(v.lr) else False
    if not rk.table.empty:
        what = "gap to BF16 (nats)" if rk.metric == "gap_to_bf16" else "final val loss (nats; no BF16 baseline)"
        rows = []
        t = rk.table
        for i, r in t.iterrows():
            nxt = "–"
            if i + 1 < len(t) and r["n"] and t.iloc[i + 1]["n"]:
                p = paired(dict(zip(r["seeds"], r["values"])), dict(zip(t.iloc[i + 1]["seeds"], t.iloc[i + 1]["values"])))
                nxt = (f"{p.mean:+.4f}" + (f" [{p.ci_low:+.4f}, {p.ci_high:+.4f}]" if p.n >= 2 else " (1 seed)")
                       if p.n else "–")
            rows.append([str(int(r["rank"])), esc(r["format"]), esc(optimizer_name(r["optimizer"])),
                         fmt_num(r["mean"], "gap" if rk.metric == "gap_to_bf16" else "loss"),
                         esc(_ci_cell(r["ci_low"], r["ci_high"], int(r["n"]))), _p_cell(r["p"], r["p_holm"]),
                         f"{int(r['n'])} of {int(r['n_seeds'])}", esc(nxt)]
                        + ([f"×{r['lr_multiplier']:g}"] if multi else []) + [esc(r["diverged"] or "–")])
        out.append(f"<h3>Ranking of formats by {esc(what)}, {esc(optimizer_name(rk.optimizer))} runs</h3>")
        out.append('<p class="sub">Each format\'s gap is paired by seed with the BF16 run of the same seed (same '
                   "initial weights and batches). <i>vs next</i>: this format minus the next one, paired by seed, with "
                   "its 95% CI; a format is named first only when that interval excludes 0. <i>p (Holm)</i>: the "
                   "paired t-test's p of the gap and, in brackets, Holm-adjusted over the formats; a gap is "
                   "called established only when the adjusted p is below 0.05.</p>")
        out.append(table([("rank", False), ("format", True), ("optimizer", True), ("mean " + what, False),
                           ("95% CI (t, over seeds)", True), ("p (Holm)", False), ("seeds used", False),
                           ("vs next (paired)", False)]
                          + ([("lr multiplier", False)] if multi else []) + [("diverged", True)], rows,
                          row_classes=["diverged" if r["n_diverged"] else "" for _, r in t.iterrows()],
                          table_id="ranking-table"))
    if not v.effects.empty:
        rows = []
        null_key = (v.null["format"], v.null["optimizer"]) if v.null else None
        for _, r in v.effects.iterrows():
            div = "; ".join(s for s in (
                f"{optimizer_name(r['optimizer'])}: seed {', '.join(map(str, r['diverged_geo']))}" if r["diverged_geo"] else "",
                f"AdamW: seed {', '.join(map(str, r['diverged_ref']))}" if r["diverged_ref"] else "") if s)
            name = arm_label(r["format"], r["optimizer"], r["master_weights"], r["tag"])
            is_null = null_key == (r["format"], r["optimizer"]) and r["master_weights"] == "fp32" and _missing(r["tag"])
            rows.append([esc(name) + (' <span class="note">(null control)</span>' if is_null else ""),
                         str(int(r["n_pairs"])), fmt_num(r["mean"], "gap"),
                         esc(_ci_cell(r["ci_low"], r["ci_high"], int(r["n_pairs"]))), _yes_no(r["excludes_zero"]),
                         _p_cell(r["p"], r["p_holm"]),
                         f"{fmt_num(r['stall_ref'])} → {fmt_num(r['stall_geo'])}",
                         f"{fmt_num(r['flips_ref'], 'sci')} → {fmt_num(r['flips_geo'], 'sci')}",
                         f"{fmt_num(r['cos_ref'])} → {fmt_num(r['cos_geo'])}"]
                        + ([f"×{r['lr_ref']:g} / ×{r['lr_geo']:g}"] if multi else []) + [esc(div or "–")])
        out.append("<h3>Geometry-aware optimizer vs AdamW, same quantized format, paired by seed "
                   "(Δ final val loss; &lt; 0 = helps)</h3>")
        out.append('<p class="sub">BF16 is the control and is not a row: it has no grid, so its geometry-aware '
                   f"optimizer is AdamW. The {esc(NULL_FORMAT)} row is the null control: on its uniform grid a "
                   "step-matched geometry-aware step is AdamW's step, so its interval must include 0. <i>p (Holm)</i>: "
                   "the paired t-test's p and, in brackets, Holm-adjusted over every row; a gain or loss is called "
                   "real only when the adjusted p is below 0.05.</p>")
        out.append(table([("arm", True), ("pairs", False), ("mean Δ", False), ("95% CI (t)", True),
                           ("CI excludes 0", True), ("p (Holm)", False), ("stall ratio AdamW → geo", False),
                           ("flips/step AdamW → geo", False), ("grad cosine AdamW → geo", False)]
                          + ([("lr multiplier AdamW / geo", False)] if multi else []) + [("diverged", True)],
                          rows, row_classes=["flagged" if v.null and v.null["flagged"] and null_key == (r["format"], r["optimizer"])
                                             else "" for _, r in v.effects.iterrows()], table_id="effects-table"))
    if multi:
        out.append(_lr_table(v))
    return "".join(out)


def _lr_table(v: Verdict) -> str:
    rows = []
    for _, r in v.lr[v.lr["multipliers"].map(len) > 1].iterrows():
        means = []
        for m in r["multipliers"]:
            vals = list(r["loss"][m].values())
            done = [x for x in vals if math.isfinite(x)]
            cell = f"×{m:g}: " + (f"{sum(done) / len(done):.4f}" if done else "–")
            if len(done) < len(vals):
                cell += f" ({len(vals) - len(done)} diverged)"
            means.append(cell)
        others = {s: b for s, b in r["best_by_seed"].items() if s != r["selection_seed"]}
        rows.append([esc(r["arm"]), esc(" · ".join(means)), f"×{r['chosen']:g}",
                     "–" if r["selection_seed"] is None else str(int(r["selection_seed"])),
                     esc(", ".join(f"seed {s}: " + ("–" if b is None else f"×{b:g}") for s, b in others.items()) or "–"),
                     _yes_no(r["holds"])])
    return ("<h3>Learning-rate multipliers: each arm at its best</h3>"
            '<p class="sub">Mean final val loss over seeds per multiplier (diverged runs apart). The multiplier is '
            "chosen on the selection seed alone and confirmed when every other seed has the same best; the "
            "comparisons above use each arm at its chosen multiplier, the selection seed included.</p>"
            + table([("arm", True), ("mean final val loss per multiplier", True), ("chosen", False),
                     ("selection seed", False), ("best on the other seeds", True), ("choice holds", True)], rows,
                    table_id="lr-table"))


def _decomposition_table(v: Verdict) -> str:
    d = v.decomposition
    if d.empty:
        return ""
    rows, rcls = [], []
    names = {"full": "every site (the format's run)", "sum": "sum of the sites", "interaction": "interaction = full − sum"}
    for _, r in d.iterrows():
        part = names.get(r["part"], f"{r['part']} only")
        rows.append([esc(r["format"]), esc(part), fmt_num(r["mean"], "gap"), esc(_ci_cell(r["ci_low"], r["ci_high"], int(r["n"]))),
                     str(int(r["n"])), _yes_no(r["excludes_zero"]),
                     "–" if r["part"] == "full" or _missing(r["share"]) else f"{r['share']:.0%}", esc(r["diverged"] or "–")])
        rcls.append("diverged" if r["n_diverged"] else "muted" if r["part"] in ("sum", "interaction") else "")
    causes = "".join(f"<li><b>{esc(r['format'])}</b>: {esc(r['text'].removeprefix(str(r['format']) + ': '))}</li>"
                     for _, r in v.site_causes.iterrows())
    return ("<h3>By intervention: the gap to BF16 split by quantized site</h3>"
            '<p class="sub">Ablation runs quantize one site (weights, activations or gradients) with the format and '
            "leave everything else BF16, AdamW. Each gap is that run's final val loss minus the BF16 AdamW run of "
            "the same seed, at the ablation runs' lr multiplier; interaction = full gap − sum of the site gaps, per "
            "seed. A site is named when its interval excludes 0 upward; the largest such part of the full gap is the "
            "cause.</p>"
            + table([("format", True), ("quantized", True), ("mean gap (nats)", False), ("95% CI (t)", True),
                     ("seeds", False), ("CI excludes 0", True), ("share of full gap", False), ("diverged", True)],
                    rows, rcls, table_id="ablation-table") + f"<ul>{causes}</ul>")


def _attribution_section(v: Verdict) -> str:
    th = v.thresholds
    rules = "".join(f"<li><b>{esc(r['label'])}</b>: {esc(r['condition'])}</li>" for r in describe_rules(th))
    thr = ", ".join(f"{esc(k)} = {v_:g}" for k, v_ in th.items())
    has_abl = not v.decomposition.empty
    out = ['<h2 id="attribution">Failure attribution</h2>',
           "<p>By intervention where ablation runs exist (below), else by diagnostic rules, labelled "
           "<i>heuristic</i>: the rules read symptoms, they do not test a cause."
           + ("" if has_abl else " No ablation ran, so every attribution here is heuristic.") + "</p>",
           _decomposition_table(v),
           "<h3>Heuristic rules</h3><p>Each arm without an ablation (diagnostics averaged over its seeds) gets the "
           "first rule that fires, in this order:</p>", f"<ol>{rules}</ol>",
           f'<p class="sub">Forward precision: {esc(EARLY_GAP_RULE)}. The update rule reads the zero-update '
           "fraction (weights unchanged despite a gradient) where FP32 master weights accumulate sub-ULP steps, and "
           f"the stall ratio only where the weights live on the grid. Thresholds: {thr}.</p>"]
    head = [("format / optimizer", True), ("seeds", False), ("attribution", True), ("diverged", True),
            ("final gap", False), ("format's gap after warm-up (AdamW arm; step)", False), ("w / a overflow", False),
            ("w / a underflow", False), ("grad cosine", False), ("grad underflow", False), ("stall ratio", False),
            ("zero-update", False)]
    th_html = "".join(f'<th class="t">{esc(t)}</th>' if text else f"<th>{esc(t)}</th>" for t, text in head)
    body = []
    for _, a in v.attribution.iterrows():
        div = bool(a["n_diverged"])
        st = a["early_eval_steps"]
        early = fmt_num(a.get("early_gap"), "gap") + (f" (@{'/'.join(map(str, st))})" if st else "")
        cells = [
            f'<td class="t"><span class="arm">{esc(a["arm"])}</span></td>', f"<td>{int(a['n_seeds'])}</td>",
            f'<td class="t cause-{esc(a["cause"])}">{esc(a["label"])}</td>',
            f'<td class="t{" status-diverged" if div else ""}">{esc(a["diverged"] or "–")}</td>',
            f"<td>{fmt_num(a['gap_to_bf16'], 'gap')}</td>", f"<td>{esc(early)}</td>",
            f"<td>{fmt_num(a['weight_overflow_rate'], 'rate')} / {fmt_num(a['activation_overflow_rate'], 'rate')}</td>",
            f"<td>{fmt_num(a['weight_underflow_rate'], 'rate')} / {fmt_num(a['activation_underflow_rate'], 'rate')}</td>",
            f"<td>{fmt_num(a['grad_cos_mean'])}</td>", f"<td>{fmt_num(a['gradient_underflow_rate'], 'rate')}</td>",
            f"<td>{fmt_num(a['stall_ratio_mean'])}</td>", f"<td>{fmt_num(a['zero_update_frac_mean'], 'rate')}</td>",
        ]
        cls = ' class="diverged"' if div else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
        if len(a["evidence"]):
            ev = "; ".join(esc(x) for x in a["evidence"])
            body.append(f'<tr{cls}><td></td><td class="t evidence" colspan="{len(head) - 1}">'
                        f"evidence — {ev}</td></tr>")
    out.append(f'<div class="scroll"><table class="attr" id="attribution-table"><thead><tr>{th_html}</tr></thead>'
               f"<tbody>{''.join(body)}</tbody></table></div>")
    return "".join(out)


def _nz(x: Any) -> float:
    return 0.0 if _missing(x) else float(x)


def _figures_section(figures) -> str:
    out = ['<h2 id="figures">Figures</h2>']
    for f in figures:
        out.append(f'<figure id="fig-{esc(f.key)}"><h3>{esc(f.title)}</h3>')
        if f.png is None:
            out.append(f'<p class="missing">{esc(f.caption)}</p></figure>')
            continue
        out.append(f"{img(f.png, f.title)}<figcaption>{esc(f.caption)}</figcaption></figure>")
    return "".join(out)


def _worst_rate(r: pd.Series, kind: str) -> str:
    """The largest of the weight/activation/gradient rates, with its operand: ``0.250 (w)``."""
    vals = [(r.get(f"{op}_{kind}_rate"), op[0]) for op in ("weight", "activation", "gradient")]
    vals = [(float(v), op) for v, op in vals if not _missing(v)]
    if not vals:
        return "–"
    v, op = max(vals)
    return fmt_num(v, "rate") + (f" ({op})" if v > 0 else "")


def _runs_section(runs: pd.DataFrame, selected: pd.DataFrame | None = None) -> str:
    show_master = bool((runs["master_weights"] != "fp32").any())
    show_site = bool((runs["site"] != "all").any())
    show_lr = bool((runs["lr_multiplier"] != 1.0).any())
    head = [("run", True), ("optimizer", True)] + ([("master", True)] if show_master else []) \
        + ([("quantized", True)] if show_site else []) + ([("lr ×", False)] if show_lr else []) + [
        ("seed", False), ("status", True), ("steps", False), ("final val loss", False), ("best val loss", False),
        ("final val ppl", False), ("gap to BF16", False), ("stall ratio", False), ("flips / step", False),
        ("max overflow", False), ("max underflow", False), ("grad cosine", False), ("step size", True),
        ("tokens/s", False), ("GPU-h", False)]
    status_col = [t for t, _ in head].index("status")
    chosen = set(selected["run_id"]) if selected is not None and show_lr else None
    rows, rcls, ccls = [], [], []
    for _, r in runs.iterrows():
        div = r.get("status") == "diverged"
        rows.append([f'<span class="id">{esc(r["run_id"])}</span>', esc(optimizer_name(r["optimizer"]))]
                    + ([esc(r["master_weights"])] if show_master else [])
                    + ([esc("all sites" if r["site"] == "all" else f"{r['site']} only")] if show_site else [])
                    + ([f"{r['lr_multiplier']:g}" + (" ✓" if r["run_id"] in chosen else "")] if show_lr else []) + [
                     "–" if _missing(r.get("seed")) else str(int(r["seed"])), esc(r["status_label"]),
                     fmt_num(r.get("steps"), "int"),
                     fmt_num(r.get("final_val_loss"), "loss"), fmt_num(r.get("best_val_loss"), "loss"),
                     fmt_num(r.get("final_val_ppl"), "ppl"), fmt_num(r.get("gap_to_bf16"), "gap"),
                     fmt_num(r.get("stall_ratio_mean")), fmt_num(r.get("flips_mean"), "sci"),
                     _worst_rate(r, "overflow"), _worst_rate(r, "underflow"), fmt_num(r.get("grad_cos_mean")),
                     _step_size(r), fmt_num(r.get("tokens_per_s_median"), "int"), fmt_num(r.get("gpu_hours"), "hours")])
        rcls.append("diverged" if div else "")
        ccls.append(["status-diverged" if div and j == status_col else "" for j in range(len(head))])
    note = ("<p class=\"sub\">Means over each run's steps (a diverged run's up to its last finite step). "
            "The gap is final val loss minus the BF16 run of the same seed; empty where that baseline is "
            "missing or the run diverged. Overflow/underflow: the largest mean rate over the weight (w), "
            "activation (a) and gradient (g) operands. Step size: how a geometry-aware arm's steps on gridded "
            "weights were sized, with the range of its per-layer lrs at the schedule's peak (ManifoldAdamW: ULPs "
            "per step; GridOptim: real-unit lr on the bias-corrected momentum). <i>calibrated</i>: each layer's "
            "RMS real-unit step equals AdamW's at step 0; <i>uncalibrated</i>: a fixed lr from the config, so "
            "the arms also differ in step size. GPU-h = wall time / 3600 (FLOPs: budget table)."
            + (" lr ×: the run's learning-rate multiplier; ✓ marks the multiplier its arm is compared at."
               if show_lr else "")
            + (" Quantized: an ablation run quantizes one site only (everything else BF16)." if show_site else "")
            + "</p>")
    return '<h2 id="runs">Runs</h2>' + note + table(head, rows, rcls, ccls, table_id="runs-table")


def _step_size(r: pd.Series) -> str:
    """``calibrated 0.21–3.3`` (per-layer lr range), ``uncalibrated 1``, or ``–`` (AdamW: no gain)."""
    mode = r.get("calibration")
    if _missing(mode) or mode == "none":
        return "–"
    lrs = list(json.loads(r["calibrated_lr"]).values()) if not _missing(r.get("calibrated_lr")) else []
    if not lrs:
        return esc(mode)
    low, high = fmt_num(min(lrs)), fmt_num(max(lrs))
    return esc(f"{mode} {low}" if low == high else f"{mode} {low}–{high}")


def _equivalence_text(runs: pd.DataFrame) -> str:
    """Registry formats that quantize identically under the runs' amax scaling, and which member ran."""
    if "scaling" not in runs or runs["scaling"].dropna().empty:
        return "not recorded"
    ran = set(runs["format"])
    parts = []
    for scaling in dict.fromkeys(runs["scaling"].dropna()):
        classes = [c for c in equivalence_classes(FORMAT_NAMES, scaling) if len(c) > 1]
        for members in classes:
            run = [m for m in members if m in ran]
            parts.append(f"{' = '.join(members)} under {scaling} scaling (ran: {', '.join(run) or 'none'})")
        if not classes:
            parts.append(f"none under {scaling} scaling")
    return "; ".join(parts)


def _kv_table(items: Sequence[tuple[str, str]]) -> str:
    rows = "".join(f'<tr><th class="t">{esc(k)}</th><td class="t">{v}</td></tr>' for k, v in items)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'



_SKIP_CORPUS_KEYS = ("sha256", "format", "dtype", "eot_id")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"tokens": {"train": 1}}`` -> ``{"tokens.train": 1}``; a corpus meta.json's checksums are left out."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if k in _SKIP_CORPUS_KEYS:
            continue
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _setup_section(runs: pd.DataFrame, ctx: ReportContext) -> str:
    done = runs[runs["status"] != "diverged"] if (runs["status"] != "diverged").any() else runs

    def uniq(col: str, kind: str = "int", frame: pd.DataFrame = done) -> str:
        if col not in frame or frame[col].dropna().empty:
            return "not recorded"
        vals = sorted({float(x) for x in frame[col].dropna()})
        return " / ".join(fmt_num(x, kind) for x in vals) + (" (differs between runs)" if len(vals) > 1 else "")

    stopped = " (completed runs; diverged runs stop early)" if len(done) < len(runs) else ""

    corpus_text = ", ".join(f"{k}: {fmt_num(v, 'int') if isinstance(v, (int, float)) and not isinstance(v, bool) else v}"
                            for k, v in _flatten(ctx.corpus or {}).items()) or "not given"
    model = ctx.model or {}
    model_text = ", ".join(f"{k}={v}" for k, v in model.items())
    params = uniq("params_total")
    nonemb = uniq("params_non_embedding")
    total_tokens = runs["tokens"].dropna().astype(float).sum() if "tokens" in runs else math.nan
    items = [
        ("corpus", esc(corpus_text)),
        ("training tokens per run", esc(uniq("tokens") + stopped)),
        ("training tokens, all runs", esc(fmt_num(total_tokens, "int"))),
        ("model", esc((model_text + "; " if model_text else "") + f"parameters {params} (non-embedding {nonemb})")),
        ("steps per run", esc(uniq("steps") + stopped)),
        ("runs", esc(f"{len(runs)}: formats {', '.join(dict.fromkeys(runs['format']))}; optimizers "
                    f"{', '.join(optimizer_name(o) for o in dict.fromkeys(runs['optimizer']))}; seeds "
                    f"{', '.join(str(int(s)) for s in sorted(runs['seed'].dropna().unique()))}")),
        ("equivalent formats", esc(_equivalence_text(runs))),
        ("hardware", esc(ctx.hardware or ("devices: " + ", ".join(map(str, runs["device"].dropna().unique()))
                                         if "device" in runs else "not given"))),
        ("commit", esc(ctx.commit or "not given")),
        ("run config hashes", esc(", ".join(dict.fromkeys(str(x) for x in runs["config_hash"].dropna()))
                                 if "config_hash" in runs and runs["config_hash"].notna().any() else "not recorded")),
    ]
    return '<h2 id="setup">Setup</h2>' + _kv_table(items)


_JOB_FIELDS = ("name", "seconds", "basis", "gpu_hours", "usd", "flops", "device", "price_usd")


def _job_dict(j: Any) -> dict[str, Any]:
    """One planned job as a mapping; a plan without ``seconds`` (made before the estimate carried
    them) is its device-hours × 3600, and a plan that does not say its basis is ``assumed``."""
    d = dict(j) if isinstance(j, Mapping) else {k: getattr(j, k) for k in _JOB_FIELDS if hasattr(j, k)}
    if _missing(d.get("seconds")) and not _missing(d.get("gpu_hours")):
        d["seconds"] = float(d["gpu_hours"]) * 3600.0
    if not _missing(d.get("seconds")) and not d.get("basis"):
        d["basis"] = "assumed"
    return d


_BASIS_LABEL = {"measured": "calibrated estimate", "assumed": "assumed-MFU estimate"}


def _seconds(v: Any) -> str:
    return fmt_num(v) if _missing(v) or float(v) < 1000 else fmt_num(v, "int")


def _ratio(v: Any) -> str:
    return fmt_num(v) if _missing(v) or not 0.1 <= float(v) < 100 else fmt_num(v, ".2f")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _other_device(planned: Any, ran: Any) -> bool:
    """True when the plan priced a GPU and the run ran on the CPU, or the other way round."""
    if _missing(planned) or _missing(ran) or not planned or not ran:
        return False
    return (str(planned).lower() == "cpu") != (str(ran).lower().split(":")[0] == "cpu")


def _budget_section(runs: pd.DataFrame, ctx: ReportContext) -> str:
    """Per job: FLOPs, wall seconds and USD planned vs spent, the estimate's basis and
    spent/planned; above the table, the estimate's error over the jobs (per basis)."""
    planned = {d["name"]: d for d in map(_job_dict, ctx.planned)}
    rows, tot = [], {"pf": 0.0, "sf": 0.0, "ps": 0.0, "ss": 0.0, "pu": 0.0, "su": 0.0}
    errors: dict[str, list[float]] = {}
    left_out = {"no spent figure": 0, "diverged (stopped early)": 0, "ran on another device than planned": 0}
    complete = True  # every row has both a planned and a spent wall time
    any_spent = "job_wall_s" in runs and bool(runs["job_wall_s"].notna().any())
    for _, r in runs.iterrows():
        p = planned.get(r["run_id"], {})
        price, planned_s = p.get("price_usd"), p.get("seconds")
        spent_s = r.get("job_wall_s")
        spent_s = math.nan if _missing(spent_s) else float(spent_s)
        spent_usd = spent_s / 3600.0 * price if price is not None and not _missing(spent_s) else math.nan
        has_plan = not _missing(planned_s) and float(planned_s) > 0
        ratio = spent_s / float(planned_s) if has_plan and not _missing(spent_s) else math.nan
        complete = complete and not _missing(ratio)
        device = esc(p.get("device", r.get("device", "–")))
        ratio_cell = _ratio(ratio)
        if has_plan:
            why = None
            if _missing(spent_s):
                why = "no spent figure"
            elif r.get("status") == "diverged":
                why = "diverged (stopped early)"
                ratio_cell += f' <span class="note">stopped at step {esc(fmt_num(r.get("diverged_at"), "int"))}</span>'
            elif _other_device(p.get("device"), r.get("device")):
                why = "ran on another device than planned"
                device += f' <span class="note">ran on {esc(r.get("device"))}</span>'
            if why is None:
                errors.setdefault(str(p["basis"]), []).append(ratio)
            else:
                left_out[why] += 1
        rows.append([esc(r["run_id"]), device, esc(p.get("basis", "–")),
                     fmt_num(p.get("flops"), "sci"), fmt_num(r.get("flops"), "sci"),
                     _seconds(planned_s), _seconds(spent_s), ratio_cell,
                     fmt_num(p.get("usd"), "hours"), fmt_num(spent_usd, "hours")])
        for k, val in (("pf", p.get("flops")), ("sf", r.get("flops")), ("ps", planned_s), ("ss", spent_s),
                       ("pu", p.get("usd")), ("su", spent_usd)):
            tot[k] += 0.0 if _missing(val) else float(val)
    priced = any(d.get("price_usd") is not None for d in planned.values())
    rows.append(["<b>total</b>", "", "", fmt_num(tot["pf"] if planned else math.nan, "sci"), fmt_num(tot["sf"], "sci"),
                 _seconds(tot["ps"] if planned else math.nan), _seconds(tot["ss"] if any_spent else math.nan),
                 _ratio(tot["ss"] / tot["ps"] if complete and tot["ps"] > 0 else math.nan),
                 fmt_num(tot["pu"] if planned else math.nan, "hours"), fmt_num(tot["su"] if priced and any_spent else math.nan, "hours")])

    lines = []
    for basis in sorted(errors, key=lambda b: (b != "measured", b != "assumed", b)):
        v = sorted(errors[basis])
        lines.append(f"{_BASIS_LABEL.get(basis, basis + ' estimate')}: spent/planned median "
                     f"{_ratio(statistics.median(v))} ({_ratio(v[0])}–{_ratio(v[-1])}) over {_plural(len(v), 'job')}")
    if not lines:
        lines.append("the estimate's error is not known: no completed job has both a planned and a spent wall time "
                     "on the device it was planned for"
                     + ("" if planned else " (no plan was given to the report)"))
    out = [f"{_plural(n, 'job')} {why}" for why, n in left_out.items() if n]
    if out:
        lines.append("left out of the error: " + ", ".join(out))
    summary = "<br>".join(f"<b>{esc(line)}</b>" if i < len(errors) else esc(line) for i, line in enumerate(lines))

    note = ("Planned: the budget planner's estimate of each job's wall seconds before the runs; basis measured: "
            "from the calibration file (`altgrad calibrate`) of the device, assumed: from the job's FLOPs at an "
            "assumed MFU. Spent: the wall seconds of the `altgrad train` processes that made the run, from process "
            "start to the summary written (not the interpreter's exit after it), summed over resumes (job_wall_s; a "
            "summary written before it existed has none); USD at the plan's hourly rate. spent/planned > 1: the job took longer than planned. FLOPs "
            "spent = the trainer's count for the tokens actually trained (a diverged run stops early).")
    if not planned:
        note += " No plan was given to the report, so only the spent columns are filled."
    if ctx.budget_usd is not None:
        note += f" Budget cap: ${ctx.budget_usd:g}."
    head = [("run", True), ("device", True), ("basis", True), ("FLOPs planned", False), ("FLOPs spent", False),
            ("wall s planned", False), ("wall s spent", False), ("spent / planned", False),
            ("USD planned", False), ("USD spent", False)]
    return (f'<h2 id="budget">Budget: planned vs spent</h2><p id="budget-error">{summary}</p>'
            f'<p class="sub">{esc(note)}</p>' + table(head, rows, table_id="budget-table"))


def _footer(ctx: ReportContext) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in ctx.versions.items()) or "not given"
    configs = "".join(f"<p><b>{esc(rid)}</b></p><pre>{esc(text)}</pre>" for rid, text in ctx.run_configs.items())
    return (f'<footer id="reproduce"><h2>Reproduce</h2>'
            f"<p><b>Command</b></p><pre>{esc(ctx.command or 'not given')}</pre>"
            f"<p><b>Versions</b>: {esc(versions)}. <b>Commit</b>: {esc(ctx.commit or 'not given')}."
            + (f" Generated {esc(ctx.generated)}." if ctx.generated else "") + "</p>"
            + (f"<details><summary>Run configs (each run's resolved config.yaml)</summary>{configs}</details>"
               if configs else "") + "</footer>")


def render_report(runs: pd.DataFrame, metrics_df: pd.DataFrame,
                  context: ReportContext | Mapping[str, Any] | None = None, *,
                  figures: Sequence[Any] | None = None, verdict: Verdict | None = None) -> str:
    """The report page as one self-contained HTML string (see the module doc for the order).

    ``runs``: the exported summary (:func:`altgrad.analysis.run_table.run_table`'s columns; a
    summary exported before a column existed is recomputed from ``metrics_df``).
    ``figures``: already made :func:`altgrad.analysis.plots.make_figures` output (e.g. when the
    caller also writes them as PNG files for Snakemake's report); made here when None. ``verdict``:
    already built from ``runs`` with the context's thresholds; built here when None.
    """
    from altgrad.analysis.plots import make_figures

    ctx = ReportContext.coerce(context)
    if runs is None or len(runs) == 0:
        raise ValueError("render_report: the summary table has no runs")
    v = verdict if verdict is not None else build_verdict(ensure_run_table(runs, metrics_df), ctx.thresholds)
    if figures is None:
        figures = make_figures(v.runs, metrics_df, verdict=v)
    n_div = int((v.runs["status"] == "diverged").sum())
    sub = (f"Which 8-bit float format gains most from geometry-aware (ULP-scaled) weight updates? "
           f"{len(v.runs)} runs, {n_div} diverged (a diverged run is a result: it is marked where it stopped).")
    nav = " · ".join(f'<a href="#{k}">{t}</a>' for k, t in (("verdict", "Verdict"), ("attribution", "Failure attribution"),
                                                           ("figures", "Figures"), ("runs", "Runs"), ("setup", "Setup"),
                                                           ("budget", "Budget"), ("reproduce", "Reproduce")))
    body = "".join([
        f"<h1>{esc(ctx.title)}</h1><p class=\"sub\">{esc(sub)}<br>{nav}</p>",
        _verdict_section(v), _attribution_section(v), _figures_section(figures), _runs_section(v.runs, v.selected),
        _setup_section(v.runs, ctx), _budget_section(v.runs, ctx), _footer(ctx),
    ])
    return page(ctx.title, body)
