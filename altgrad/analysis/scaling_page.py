"""The scaling study's figure and page: the report's page, table and number helpers and its
plot palette (altgrad.analysis.html, altgrad.analysis.plots), the study's own content.

* :func:`scaling_figure`: three panels, every format: the isoFLOP curves, the
  compute-optimal loss with ``L(C)``, and ``N*(C)`` against Chinchilla's line.
* :func:`render_section`: verdict, figure and tables as a ``<section id="scaling">`` another
  page can embed; :func:`render_page`: the same as ``results/scaling/report.html``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from altgrad.analysis.html import esc, fmt_num, img, page, table
from altgrad.analysis.plots import BASELINE_COLOR, PALETTE, png
from altgrad.analysis.scaling_study import (
    BASELINE,
    C_DEFINITION,
    D_DEFINITION,
    N_DEFINITION,
    FormatFits,
    gap_verdict,
)
from altgrad.experiment.planning import CHINCHILLA_TOKENS_PER_PARAM
from altgrad.experiment.pricing import eng
from altgrad.scaling_laws import size_at_tokens_per_param

__all__ = ["render_page", "render_section", "scaling_figure"]

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">")  # one per budget


def _format_colors(formats: Sequence[str]) -> dict[str, str]:
    """The palette in order, the baseline grey (as in the report's figures)."""
    colors, i = {}, 0
    for f in formats:
        if f == BASELINE:
            colors[f] = BASELINE_COLOR
        else:
            colors[f] = PALETTE[i % len(PALETTE)]
            i += 1
    return colors


def _plot_law(ax, c_range, predict, color) -> None:
    """A fitted law over its measured compute range (solid) and 30x beyond it (dotted: extrapolation)."""
    lo, hi = c_range
    xs = np.geomspace(lo, hi, 50)
    ax.plot(xs, predict(xs), color=color, lw=1.8)
    xe = np.geomspace(hi, hi * 30, 30)
    ax.plot(xe, predict(xe), color=color, lw=1.2, ls=":")


def scaling_figure(points_df: pd.DataFrame, fits: Mapping[str, FormatFits]) -> bytes:
    """One figure, three panels, every format: (a) the isoFLOP curves (held-out loss vs N,
    one marker per budget, the fitted parabola dashed, its vertex a star), (b) the
    compute-optimal loss with the fitted ``L(C)`` (dotted beyond the measured range),
    (c) ``N*(C)`` with its power law and the Chinchilla 20-tokens-per-parameter line (the N
    that trains 20·N tokens at C, with the sweep's FLOPs per token)."""
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
    flops_at = next((f.flops_at for f in fits.values() if f.flops_at is not None), None)
    if budgets and flops_at is not None:  # D = 20·N with the sweep's own FLOPs per token
        xs = np.geomspace(min(budgets), max(budgets) * 30, 50)
        ax_c.plot(xs, [size_at_tokens_per_param(x, CHINCHILLA_TOKENS_PER_PARAM, flops_at) for x in xs],
                  color="black", lw=1, ls="--", alpha=0.5)
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
    return png(fig)


# ------------------------------------------------------------------------------ page


def _head(*titles: str, text: int = 1) -> list[tuple[str, bool]]:
    """Table head: the first ``text`` columns are text (left-aligned), the rest numbers."""
    return [(t, i < text) for i, t in enumerate(titles)]


def render_section(points_df: pd.DataFrame, fits: Mapping[str, FormatFits], chinchilla_df: pd.DataFrame, png_bytes: bytes | None) -> str:
    """The study as an HTML fragment (``<section id="scaling">``): verdict, figure, fits,
    Chinchilla table, per-budget optima, every run. Embeddable in another page."""
    parts = ['<section id="scaling">', "<h2>How the format gap changes with compute</h2>", '<div class="verdict">']
    parts += [f"<p>{esc(p)}</p>" for p in gap_verdict(fits)]
    parts.append("</div>")
    if png_bytes:  # in a <figure>: the pages' stylesheet fits figure images to the page width
        parts.append('<figure id="fig-isoflop">' + img(png_bytes, "isoFLOP curves and fitted frontiers per format"))
        parts.append("<figcaption>(a) final held-out loss of every run against N at each budget; dashed: the "
                     "parabola in log N whose vertex (star) is that budget's optimum. (b), (c): the per-budget optima "
                     "(hollow: no interior vertex, the lowest measured point) and the fitted laws, dotted beyond the "
                     "measured compute.</figcaption></figure>")

    parts.append("<h2>Fitted laws per format</h2>")
    rows = []
    for fmt, f in fits.items():
        L, S = f.loss, f.size

        def ci(fit: Any, p: str, spec: str = ".3g") -> str:
            if fit is None or not fit.ci95:
                return ""
            lo, hi = fit.ci95[p]
            return f" [{fmt_num(lo, spec)}, {fmt_num(hi, spec)}]"

        c_max = max((o["budget"] for o in f.optima), default=math.nan)
        d_max = f.d_at(c_max) if S else math.nan
        rows.append([
            esc(fmt),
            (fmt_num(L.k, ".3g") + ci(L, "k")) if L else esc(f.loss_error or "–"),
            (fmt_num(L.a, ".3f") + ci(L, "a", ".3f")) if L else "",
            (fmt_num(L.l_inf, ".3f") + ci(L, "l_inf", ".3f")) if L else "",
            fmt_num(L.r2, ".3f") if L else "", str(L.n_points) if L else "",
            (fmt_num(S.k, ".3g") + ci(S, "k")) if S else esc(f.size_error or "–"),
            (fmt_num(S.b, ".3f") + ci(S, "b", ".3f")) if S else "",
            fmt_num(S.r2, ".3f") if S else "",
            fmt_num(d_max / S.predict_n(c_max), ".3g") if S and math.isfinite(d_max) else "",
            esc(f.size_basis),
        ])
    parts.append(table(_head("format", "L(C): k", "a", "L∞", "R²", "budgets", "N*(C): k'", "b", "R² (log)",
                             "D*/N* at C max", "N* rests on"), rows))
    parts.append('<p class="sub">Brackets: 95% bootstrap intervals (points resampled with replacement). '
                 f"N = {esc(N_DEFINITION)}; C = {esc(C_DEFINITION)}; {esc(D_DEFINITION)}. L(C) is fitted by "
                 "nonlinear least squares in linear loss space to the per-budget optimal losses. With as many "
                 "points as parameters a law passes through its points exactly, and R² says nothing.</p>")

    parts.append("<h2>Chinchilla table: predicted compute-optimal N* and D*</h2>")
    refused = [(fmt, f.law_problem) for fmt, f in fits.items() if f.law_problem]
    if refused:
        parts.append('<div class="verdict">' + "".join(
            f"<p>No Chinchilla table for {esc(fmt)}: {esc(why)}.</p>" for fmt, why in refused) + "</div>")
    if len(chinchilla_df):
        muted = ["muted" if e else "" for e in chinchilla_df["extrapolated"]]
        rows = [[esc(r.format), f"{r.compute:.0e}", fmt_num(r.n_opt, ".3g"), fmt_num(r.d_opt, ".3g"),
                 fmt_num(r.tokens_per_param, ".3g"),
                 fmt_num(r.loss, ".3f"), "extrapolated" if r.extrapolated else "measured range"]
                for r in chinchilla_df.itertuples()]
        parts.append(table(_head("format", "C (FLOPs)", "N*", "D*", "D*/N*", "predicted L", ""), rows, muted))
        parts.append('<p class="sub">D* = C / flops_per_token(N*): the tokens a model of size N* trains at C. Grey '
                     "italic rows lie outside the measured compute range: extrapolations of the fitted laws, not "
                     "measurements.</p>")
        for fmt in dict.fromkeys(chinchilla_df["format"]):
            S = fits[fmt].size
            far = float(chinchilla_df.loc[chinchilla_df["format"] == fmt, "compute"].max())
            lo, hi = S.c_range
            if S.ci95 and far > hi:
                decades = math.log10(far / hi)
                b_lo, b_hi = S.ci95["b"]
                parts.append(f'<p class="sub">{esc(fmt)}: measured over {eng(lo)}–{eng(hi)} FLOPs (a factor '
                             f"{hi / lo:.3g}); at {far:.0e} FLOPs, {decades:.1f} decades beyond, the 95% interval of b "
                             f"alone, [{b_lo:.3f}, {b_hi:.3f}], spans a factor {10 ** ((b_hi - b_lo) * decades):.3g} in "
                             "N*.</p>")
    elif not refused:
        parts.append("<p>No format has an N*(C) law (see the errors above).</p>")

    parts.append("<h2>IsoFLOP optima per budget</h2>")
    rows = []
    for fmt, f in fits.items():
        for o in f.optima:
            rows.append([esc(fmt), eng(o["budget"]), str(o["n_sizes"]), esc(o["source"]),
                         fmt_num(o["n_used"], ".3g"), fmt_num(o["l_used"], ".4f"),
                         esc(o["reason"])])
    parts.append(table(_head("format", "C", "sizes", "optimum from", "N*", "L*", "why not a vertex"), rows))

    parts.append("<h2>Every run of the sweep</h2>")
    rows, muted = [], []
    for r in points_df.itertuples():
        rows.append([esc(r.run_id), esc(r.format), eng(r.budget), f"{r.n_layer}×{r.n_embd}/{r.n_head}",
                     f"{r.n_params_nonembed:,}", f"{r.steps_planned:,}", fmt_num(r.steps, ",.0f"), f"{r.tokens_planned:,}",
                     fmt_num(r.flops, ".4g"), fmt_num(r.flops_ratio, ".3f"), esc(str(r.status)),
                     fmt_num(r.val_loss, ".4f")])
        muted.append("" if r.status == "completed" else "muted")
    parts.append(table(_head("run", "format", "C", "layers×width/heads", "N", "steps planned", "steps", "D",
                             "FLOPs spent", "spent/C", "status", "val loss", text=2), rows, muted))
    parts.append("</section>")
    return "\n".join(parts)


def render_page(points_df: pd.DataFrame, fits: Mapping[str, FormatFits], chinchilla_df: pd.DataFrame,
                png_bytes: bytes | None, command: str | None = None) -> str:
    """The study as a page of its own (``results/scaling/report.html``)."""
    formats = ", ".join(fits)
    budgets = ", ".join(eng(c) for c in sorted(points_df["budget"].unique()))
    foot = f'<p class="sub">Made by <code>{esc(command)}</code>.</p>' if command else ""
    return page(
        "altgrad scaling study",
        "<h1>altgrad scaling study</h1>"
        f'<p class="sub">isoFLOP sweep: formats {esc(formats)}; budgets {budgets} FLOPs; {len(points_df)} runs, '
        "each trained on exactly its planned tokens D = C / flops_per_token(shape) and scored on its final "
        f"held-out validation loss.</p>{render_section(points_df, fits, chinchilla_df, png_bytes)}{foot}",
    )


