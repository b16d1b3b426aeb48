"""The report's figures (matplotlib, Agg), each returned as PNG bytes with its caption.

Over 600 lines because it holds every figure of the page; they share the palette, panel
layout and seed-band conventions below, which a split would have to import back.

    figures = make_figures(runs, metrics)   # runs: run_table(summary, metrics), the exported summary
    for f in figures: f.key, f.title, f.caption, f.png (None when nothing was measured)

Conventions shared by every figure: one colour per optimizer (:data:`OPTIMIZER_COLORS`,
the BF16 baseline in grey), one panel per quantized format, lines are the mean over seeds
and the shaded band the min–max over seeds, a diverged run ends in an ``x``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import EngFormatter, FuncFormatter, NullFormatter

from altgrad.analysis.run_table import (
    BASELINE_FORMAT,
    REFERENCE_OPTIMIZER,
    arm_label,
    ensure_run_table,
    optimizer_name,
)
from altgrad.files import atomic_write

__all__ = ["BASELINE_COLOR", "OPTIMIZER_COLORS", "PALETTE", "Figure", "make_figures", "optimizer_color", "png",
           "write_figures"]

# One palette for every figure of every page: the optimizers take the first three colours
# (the scaling page gives its formats the palette in order); the BF16 baseline is grey.
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
OPTIMIZER_COLORS = dict(zip(("adamw", "manifold", "grid"), PALETTE))
BASELINE_COLOR = "#7f7f7f"
_EXTRA_COLORS = PALETTE[len(OPTIMIZER_COLORS):]
_STYLES = ("-", "--", ":", "-.")
DPI = 100


def optimizer_color(optimizer: str) -> str:
    """The colour of an optimizer in every figure (unknown optimizers get a stable extra colour)."""
    if optimizer in OPTIMIZER_COLORS:
        return OPTIMIZER_COLORS[optimizer]
    return _EXTRA_COLORS[sum(map(ord, str(optimizer))) % len(_EXTRA_COLORS)]


@dataclass
class Figure:
    key: str
    title: str
    caption: str
    png: bytes | None  # None: the metric was not recorded by any run (caption says so)


def png(fig) -> bytes:
    """The figure as PNG bytes (the pages' resolution); the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


# --------------------------------------------------------------------------- data shaping


@dataclass
class _Arm:
    fmt: str
    optimizer: str
    master: str
    tag: str | None
    run_ids: list[str]
    diverged: list[str]
    diverged_text: list[str]  # "s0 @ step 3" per diverged run

    @property
    def label(self) -> str:
        if self.fmt == BASELINE_FORMAT:
            return f"BF16 ({optimizer_name(self.optimizer)})"
        return arm_label("", self.optimizer, self.master, self.tag).lstrip(" /")

    @property
    def color(self) -> str:
        return BASELINE_COLOR if self.fmt == BASELINE_FORMAT else optimizer_color(self.optimizer)


def _arms(runs: pd.DataFrame) -> list[_Arm]:
    out = []
    for (fmt, opt, mw, tag), g in runs.groupby(["format", "optimizer", "master_weights", "tag"], sort=False, dropna=False):
        tag = None if (tag is None or (isinstance(tag, float) and math.isnan(tag))) else tag
        div = g[g["status"] == "diverged"]
        text = [f"s{'?' if pd.isna(s) else int(s)} @ step {'?' if pd.isna(d) else int(d)}"
                for s, d in zip(div["seed"], div["diverged_at"] if "diverged_at" in div else [None] * len(div))]
        out.append(_Arm(fmt, opt, mw, tag, list(g["run_id"]), list(div["run_id"]), text))
    return out


def _baseline_arm(arms: list[_Arm]) -> _Arm | None:
    base = [a for a in arms if a.fmt == BASELINE_FORMAT]
    base.sort(key=lambda a: (a.optimizer != REFERENCE_OPTIMIZER, a.master != "fp32", a.tag is not None))
    return base[0] if base else None


def _formats(runs: pd.DataFrame) -> list[str]:
    fmts = list(dict.fromkeys(runs["format"]))
    quant = [f for f in fmts if f != BASELINE_FORMAT]
    return quant or fmts


def _series(metrics: pd.DataFrame, run_ids: Sequence[str], column: str, smooth: int = 0) -> pd.DataFrame | None:
    """Steps × runs of ``column`` (finite values only), index = tokens; None when absent."""
    if column not in metrics:
        return None
    sub = metrics.loc[metrics["run_id"].isin(run_ids), ["run_id", "step", "tokens", column]]
    sub = sub[np.isfinite(sub[column].astype(float))]
    if sub.empty:
        return None
    wide = sub.pivot_table(index="step", columns="run_id", values=column, aggfunc="first").sort_index()
    if smooth > 1:
        wide = wide.rolling(smooth, min_periods=1).mean().where(wide.notna())
    tokens = sub.groupby("step")["tokens"].first().reindex(wide.index)
    wide.index = tokens.values
    return wide


def _draw(ax, wide: pd.DataFrame, arm: _Arm, style: str = "-", marker: str | None = None) -> list[tuple]:
    """Mean line and seed band; returns the diverged runs' last finite points (x, y, colour),
    drawn once the axis limits are known (see _mark_diverged)."""
    mean = wide.mean(axis=1)
    kw = {"color": arm.color, "lw": 1.4 if arm.fmt != BASELINE_FORMAT else 1.8, "ls": style}
    if marker:
        kw.update(marker=marker, ms=3)
    ax.plot(mean.index, mean.values, **kw)
    if wide.shape[1] > 1:
        ax.fill_between(wide.index, wide.min(axis=1).values, wide.max(axis=1).values, color=arm.color, alpha=0.18,
                        lw=0)
    points = []
    for rid in arm.diverged:
        if rid in wide:
            last = wide[rid].dropna()
            if len(last):
                points.append((float(last.index[-1]), float(last.values[-1]), arm.color))
    return points


def _mark_diverged(ax, points: list[tuple]) -> None:
    """An x at each diverged run's last finite value, pinned to the panel's edge when outside it."""
    lo, hi = ax.get_ylim()
    for x, y, color in points:
        ax.plot(x, min(max(y, lo), hi), marker="x", color=color, ms=9, mew=2.2, clip_on=False, zorder=5)


def _panel_grid(n: int, rows: int = 1, ncols_max: int = 4, height: float = 2.7):
    ncols = max(1, min(ncols_max, n))
    per_row = math.ceil(n / ncols)
    fig, axes = plt.subplots(per_row * rows, ncols, figsize=(3.5 * ncols + 0.6, height * per_row * rows + 0.9),
                             squeeze=False)
    return fig, axes, ncols, per_row


def _legend(fig, arms: list[_Arm], any_band: bool, any_div: bool, extra: Sequence = ()) -> None:
    handles, seen = [], set()
    for a in arms:
        key = (a.color, a.label)
        if key in seen:
            continue
        seen.add(key)
        handles.append(Line2D([], [], color=a.color, lw=1.8, ls=_style_for(a), label=a.label))
    if any_band:
        handles.append(Patch(color="#999999", alpha=0.3, label="min–max over seeds"))
    if any_div:
        handles.append(Line2D([], [], color="#333333", marker="x", ls="", ms=8, mew=2, label="diverged (last finite value)"))
    handles.extend(extra)
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 6), frameon=False, fontsize=9,
               bbox_to_anchor=(0.5, 1.0))


def _style_for(arm: _Arm) -> str:
    if arm.fmt == BASELINE_FORMAT:
        return "--"
    variant = (arm.master != "fp32") + (2 if arm.tag else 0)
    return _STYLES[variant % len(_STYLES)]


def _format_panels(runs: pd.DataFrame, metrics: pd.DataFrame, rows: Sequence[tuple[str, str]], *,
                   smooth: int = 0, baseline: bool = True, sharey: str = "row", marker: str | None = None,
                   ylim: Callable[[list[pd.DataFrame]], tuple[float, float] | None] | None = None,
                   logy: bool = False) -> bytes | None:
    """One panel per format (× one row per (column, ylabel)); None when no run has any value."""
    arms = _arms(runs)
    base = _baseline_arm(arms) if baseline else None
    fmts = _formats(runs)
    xmax = float(metrics["tokens"].max()) if "tokens" in metrics and len(metrics) else None
    fig, axes, ncols, per_row = _panel_grid(len(fmts), rows=len(rows))
    drawn_any, band, div, used = False, False, False, []
    for r, (column, ylabel) in enumerate(rows):
        row_frames: list[pd.DataFrame] = []
        row_axes, marks = [], []
        for i, fmt in enumerate(fmts):
            ax = axes[r * per_row + i // ncols][i % ncols]
            row_axes.append(ax)
            panel = ([base] if base is not None and fmt != BASELINE_FORMAT else []) + [a for a in arms if a.fmt == fmt]
            for arm in panel:
                wide = _series(metrics, arm.run_ids, column, smooth)
                if wide is None:
                    continue
                marks.append((ax, _draw(ax, wide, arm, _style_for(arm), marker)))
                row_frames.append(wide.mean(axis=1))
                drawn_any = True
                band |= wide.shape[1] > 1
                div |= any(rid in wide for rid in arm.diverged)
                if arm not in used:
                    used.append(arm)
            notes = [f"{arm.label} diverged: {', '.join(arm.diverged_text)}" for arm in panel
                     if arm.diverged and arm.fmt == fmt]
            if notes:
                div = True
                ax.text(0.98, 0.97, "\n".join(notes), transform=ax.transAxes, ha="right", va="top", fontsize=8,
                        color="#a61b1b", bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": "#a61b1b", "alpha": 0.85})
            ax.set_title(fmt if len(rows) == 1 else f"{fmt} — {ylabel.splitlines()[-1]}", fontsize=10,
                         fontweight="bold")
            ax.set_xlabel("tokens", fontsize=8)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if xmax and math.isfinite(xmax):
                ax.set_xlim(0, xmax * 1.03)
            if logy:
                ax.set_yscale("log")
        lim = ylim(row_frames) if ylim and row_frames else None
        if sharey == "row" and row_frames:
            if lim is None:
                lo = min(float(f.min()) for f in row_frames)
                hi = max(float(f.max()) for f in row_frames)
                if not logy:
                    pad = 0.05 * (hi - lo or abs(hi) or 1.0)
                    lim = (lo - pad, hi + pad)
                elif lo > 0:
                    lim = (lo / 1.5, hi * 1.5)
            if lim is not None:
                for ax in row_axes:
                    ax.set_ylim(*lim)
        for ax, points in marks:
            _mark_diverged(ax, points)
    for j in range(len(fmts), ncols * per_row):  # unused slots
        for r in range(len(rows)):
            axes[r * per_row + j // ncols][j % ncols].set_visible(False)
    if not drawn_any:
        plt.close(fig)
        return None
    _legend(fig, used, band, div)
    _margins(fig)
    return png(fig)


def _margins(fig, left: float = 0.85, right: float = 0.2, top: float = 0.75, bottom: float = 0.5,
             wspace: float = 0.32, hspace: float = 0.5) -> None:
    """Fixed margins in inches (tight_layout costs a full draw per figure); top leaves room
    for the figure legend."""
    w, h = fig.get_figwidth(), fig.get_figheight()
    fig.subplots_adjust(left=left / w, right=1 - right / w, top=1 - top / h, bottom=bottom / h,
                        wspace=wspace, hspace=hspace)


def _loss_ylim(frames: list[pd.Series]) -> tuple[float, float]:
    """From the lowest mean loss to the highest loss any arm still has after 20% of the tokens:
    the differences late in training fill the panel; the initial drop and blow-ups leave it."""
    lo = min(float(f.min()) for f in frames)
    xmax = max(float(f.index.max()) for f in frames)
    later = [f[f.index >= 0.2 * xmax] for f in frames]
    hi = max((float(f.iloc[0]) for f in later if len(f)), default=max(float(f.max()) for f in frames))
    hi = max(hi, lo + 1e-3)
    pad = 0.06 * (hi - lo)
    return lo - pad, hi + pad


# --------------------------------------------------------------------------- summary figures


def _rates_heatmap(runs: pd.DataFrame) -> bytes | None:
    cols = [(f"{op}_{kind}_rate", f"{op}\n{kind}") for op in ("weight", "activation", "gradient")
            for kind in ("overflow", "underflow")]
    quant = runs[runs["format"] != BASELINE_FORMAT]
    arms = _arms(quant)
    data = []
    for a in arms:
        g = quant[quant["run_id"].isin(a.run_ids)]
        data.append([float(np.nanmean(g[c])) if c in g and g[c].notna().any() else np.nan for c, _ in cols])
    if not arms or np.all(np.isnan(data)):
        return None
    m = np.array(data, dtype=float)
    floor = 1e-6
    fig, ax = plt.subplots(figsize=(8.6, 0.42 * len(arms) + 1.6))
    shown = np.where(np.isnan(m), np.nan, np.clip(m, floor, 1.0))
    im = ax.imshow(shown, cmap="Reds", norm=LogNorm(vmin=floor, vmax=1.0), aspect="auto")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            v = m[i, j]
            text = "n/a" if np.isnan(v) else "0" if v == 0 else f"{v:.1%}" if v >= 1e-3 else f"{v:.0e}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if (not np.isnan(v) and v > 0.05) else "black")
    ax.set_xticks(range(len(cols)), [t for _, t in cols], fontsize=8)
    ax.set_yticks(range(len(arms)), [f"{a.fmt} / {a.label}" for a in arms], fontsize=8)
    ax.xaxis.tick_top()
    fig.colorbar(im, ax=ax, label="fraction of quantized elements (log)", pad=0.02)
    fig.tight_layout()
    return png(fig)


def _max_index(fmt_name: str) -> float | None:
    """Largest code-magnitude index of a registry format (the top of its dynamic range)."""
    from altgrad.errors import AltgradError
    from altgrad.quantization import get_format

    try:
        f = get_format(fmt_name)
    except (AltgradError, KeyError, ValueError):  # recipes and other names that are not registry formats
        return None
    if f is None:
        return None
    n = f.num_finite
    return float((n - 1) // 2 if getattr(f, "signed", True) else n - 1)


def _code_use(runs: pd.DataFrame, metrics: pd.DataFrame) -> tuple[bytes | None, str]:
    hist_cols = [c for c in metrics.columns if "code_hist" in c]
    if hist_cols:
        return _code_histogram(runs, metrics, hist_cols), (
            "Code histogram: fraction of weight codes per code bin, averaged over steps and seeds. A format that "
            "uses few bins wastes its dynamic range.")
    layer_cols = [c for c in metrics.columns if c.startswith("update.") and c.endswith(".bitpos_mean")]
    quant = runs[runs["format"] != BASELINE_FORMAT]
    arms = _arms(quant)
    rows = []
    for a in arms:
        wfmt = quant.loc[quant["run_id"].isin(a.run_ids), "weight"].dropna() if "weight" in quant else pd.Series([], dtype=object)
        top = _max_index(str(wfmt.iloc[0]) if len(wfmt) else a.fmt)
        sub = metrics[metrics["run_id"].isin(a.run_ids)]
        means = sub[layer_cols].to_numpy(dtype=float)
        stds = sub[[c.replace("bitpos_mean", "bitpos_std") for c in layer_cols if c.replace("bitpos_mean", "bitpos_std") in sub]].to_numpy(dtype=float)
        if top is None or means.size == 0 or np.all(np.isnan(means)) or stds.shape != means.shape:
            continue
        mu = np.nanmean(means)
        second = np.nanmean(stds**2 + means**2)  # pooled over layers and steps
        rows.append((a, mu / top, math.sqrt(max(second - mu**2, 0.0)) / top, top))
    caption = ("No code histogram was recorded, so this shows the proxy: where the quantized weights sit on each "
               "format's code ladder — the mean ± std of the code-magnitude index (update.{layer}.bitpos_mean/std, "
               "pooled over layers, steps and seeds) divided by the format's largest index (0 = zero, 1 = ±max). "
               "The bar's width shows how much of the ladder the weights use: a narrow bar means most codes sit "
               "idle.")
    if not rows:
        return None, caption
    fig, ax = plt.subplots(figsize=(8.6, 0.42 * len(rows) + 1.4))
    for i, (a, mu, sd, top) in enumerate(rows):
        ax.errorbar(mu, i, xerr=sd, fmt="o", color=a.color, capsize=4, ms=6, lw=1.6)
        ax.text(1.02, i, f"max index {top:g}", va="center", fontsize=7, color="#555", transform=ax.get_yaxis_transform())
    ax.set_yticks(range(len(rows)), [f"{a.fmt} / {a.label}" for a, *_ in rows], fontsize=8)
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_xlabel("code-magnitude index / max index  (0 = zero, 1 = ±max)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout(rect=(0, 0, 0.9, 1))
    return png(fig), caption


def _code_histogram(runs: pd.DataFrame, metrics: pd.DataFrame, cols: list[str]) -> bytes | None:
    quant = runs[runs["format"] != BASELINE_FORMAT]
    arms = _arms(quant)
    fmts = _formats(quant)
    fig, axes, ncols, per_row = _panel_grid(len(fmts))
    drawn = False
    for i, fmt in enumerate(fmts):
        ax = axes[i // ncols][i % ncols]
        fa = [a for a in arms if a.fmt == fmt]
        width = 0.8 / max(1, len(fa))
        for k, a in enumerate(fa):
            v = metrics.loc[metrics["run_id"].isin(a.run_ids), cols].mean().to_numpy(dtype=float)
            if np.all(np.isnan(v)):
                continue
            ax.bar(np.arange(len(cols)) + k * width, v, width=width, color=a.color, label=a.label)
            drawn = True
        ax.set_title(fmt, fontsize=10, fontweight="bold")
        ax.set_xlabel("code bin", fontsize=8)
        ax.set_ylabel("fraction of codes", fontsize=8)
    for j in range(len(fmts), ncols * per_row):
        axes[j // ncols][j % ncols].set_visible(False)
    if not drawn:
        plt.close(fig)
        return None
    _legend(fig, [a for a in arms], False, False)
    _margins(fig)
    return png(fig)


def _critical_rank(metrics: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """Add the mean stable rank over blocks of attn.c_proj; rows for lm_head and attn.c_proj."""
    rows = []
    if "rank.lm_head.stable" in metrics:
        rows.append(("rank.lm_head.stable", "stable rank\nlm_head"))
    proj = [c for c in metrics.columns if c.startswith("rank.") and c.endswith("attn.c_proj.stable")]
    if proj:
        metrics = metrics.assign(**{"rank.attn.c_proj.stable_mean": metrics[proj].mean(axis=1)})
        rows.append(("rank.attn.c_proj.stable_mean", "stable rank\nattn.c_proj (mean of blocks)"))
    return metrics, rows


# --------------------------------------------------------------------------- all figures


def _lr_sensitivity(v) -> bytes | None:
    """Final val loss vs lr multiplier: one panel per format, one line per arm (mean over seeds of
    the completed runs, each seed a dot), the chosen multiplier ringed, a diverged run an x on top."""
    lr = v.lr[v.lr["multipliers"].map(len) > 1]
    if lr.empty:
        return None
    fmts = list(dict.fromkeys(lr["format"]))
    fig, axes, ncols, per_row = _panel_grid(len(fmts))
    handles, seen = [], set()
    for i, fmt in enumerate(fmts):
        ax = axes[i // ncols][i % ncols]
        rows = lr[lr["format"] == fmt]
        finite = [x for _, r in rows.iterrows() for d in r["loss"].values() for x in d.values() if math.isfinite(x)]
        top = max(finite) if finite else 1.0
        for _, r in rows.iterrows():
            color = BASELINE_COLOR if fmt == BASELINE_FORMAT else optimizer_color(r["optimizer"])
            style = _STYLES[((r["master_weights"] != "fp32") + (2 if r["tag"] else 0)) % len(_STYLES)]
            xs = r["multipliers"]
            means = [np.mean([x for x in r["loss"][m].values() if math.isfinite(x)])
                     if any(math.isfinite(x) for x in r["loss"][m].values()) else np.nan for m in xs]
            ax.plot(xs, means, color=color, ls=style, lw=1.6, marker="o", ms=4)
            for m in xs:
                for x in r["loss"][m].values():
                    if math.isfinite(x):
                        ax.plot(m, x, ".", color=color, alpha=0.45, ms=5)
                    else:
                        ax.plot(m, top, marker="x", color=color, ms=8, mew=2, clip_on=False)
            j = xs.index(r["chosen"])
            if math.isfinite(means[j]):
                ax.plot(r["chosen"], means[j], "o", mfc="none", mec=color, ms=12, mew=1.8)
            label = arm_label("", r["optimizer"], r["master_weights"], r["tag"]).lstrip(" /")
            if label not in seen:
                seen.add(label)
                handles.append(Line2D([], [], color=color if fmt != BASELINE_FORMAT else optimizer_color(r["optimizer"]),
                                      ls=style, marker="o", ms=4, label=label))
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({m for ms in rows["multipliers"] for m in ms}))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"×{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(fmt, fontsize=10, fontweight="bold")
        ax.set_xlabel("lr multiplier", fontsize=8)
        ax.set_ylabel("final val loss (nats)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for j in range(len(fmts), ncols * per_row):
        axes[j // ncols][j % ncols].set_visible(False)
    handles += [Line2D([], [], color="#333", marker="o", mfc="none", ls="", ms=10, label="chosen (selection seed)"),
                Line2D([], [], color="#333", marker=".", ls="", alpha=0.5, label="one seed"),
                Line2D([], [], color="#333", marker="x", ls="", ms=8, mew=2, label="diverged")]
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 6), frameon=False, fontsize=9,
               bbox_to_anchor=(0.5, 1.0))
    _margins(fig)
    return png(fig)


_PART_NAMES = {"full": "every site", "weight": "weight only", "activation": "activation only",
               "gradient": "gradient only", "interaction": "interaction"}


def _site_decomposition(v) -> bytes | None:
    """Per ablated format, the gap to BF16 of each part with its 95% CI (one seed: a dot)."""
    d = v.decomposition
    if d.empty:
        return None
    fmts = list(dict.fromkeys(d["format"]))
    fig, axes, ncols, per_row = _panel_grid(len(fmts), height=2.4)
    colors = {"full": "#333333", "weight": PALETTE[3], "activation": PALETTE[4], "gradient": PALETTE[5],
              "interaction": "#999999"}
    for i, fmt in enumerate(fmts):
        ax = axes[i // ncols][i % ncols]
        parts = d[(d["format"] == fmt) & (d["part"] != "sum")].reset_index(drop=True)
        for y, r in parts.iterrows():
            if not r["n"]:
                ax.text(0, y, " diverged" if r["n_diverged"] else " no data", va="center", fontsize=7, color="#a61b1b")
                continue
            err = None
            if r["n"] >= 2:
                err = [[r["mean"] - r["ci_low"]], [r["ci_high"] - r["mean"]]]
            ax.barh(y, r["mean"], color=colors.get(r["part"], "#777"), alpha=0.8, height=0.6)
            if err is not None:
                ax.errorbar(r["mean"], y, xerr=err, fmt="none", ecolor="black", capsize=3, lw=1)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(parts)), [_PART_NAMES.get(p, p) for p in parts["part"]], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(fmt, fontsize=10, fontweight="bold")
        ax.set_xlabel("gap to BF16 (nats)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", alpha=0.3)
    for j in range(len(fmts), ncols * per_row):
        axes[j // ncols][j % ncols].set_visible(False)
    _margins(fig, left=1.3, top=0.45, wspace=0.7)
    return png(fig)


def make_figures(runs: pd.DataFrame, metrics: pd.DataFrame, verdict=None) -> list[Figure]:
    """Every figure of the report, in page order. ``runs`` is :func:`altgrad.analysis.run_table.run_table`'s
    output (its normalised labels are used; the metrics' own label columns are ignored); ``verdict``
    its :func:`altgrad.analysis.verdict.build_verdict` (made here when None). The curves show the
    runs every comparison uses: ordinary runs at each arm's chosen lr multiplier."""
    from altgrad.analysis.verdict import build_verdict

    metrics = metrics.drop(columns=[c for c in ("format", "optimizer", "master_weights", "tag", "seed", "site",
                                                "lr_multiplier") if c in metrics])
    v = verdict if verdict is not None else build_verdict(ensure_run_table(runs, metrics))
    runs = v.selected
    n_steps = int(metrics.groupby("run_id")["step"].max().max() + 1) if len(metrics) else 0
    smooth = max(1, n_steps // 30)
    seeds = int(runs.groupby(["format", "optimizer"], dropna=False)["seed"].nunique().max()) if len(runs) else 0
    band = (" Lines: mean over seeds; shaded: min–max over seeds." if seeds > 1 else
            " One seed per arm, so no seed band.")
    multi = bool((v.lr["multipliers"].map(len) > 1).any())
    if multi:
        band += " Each arm at its chosen lr multiplier."
    figs = []

    def add(key, title, png, caption, missing=None):
        figs.append(Figure(key, title, caption if png is not None else (missing or f"Not recorded: {caption}"), png))

    add("val_loss", "Validation loss vs tokens",
        _format_panels(runs, metrics, [("val_loss", "val loss (nats)")], marker="o", ylim=_loss_ylim),
        "One panel per format; BF16 (grey, dashed) overlaid; colour = optimizer." + band
        + " The y-axis runs from the lowest loss to the highest loss left after 20% of the tokens, so the initial"
          " drop and any blow-up leave the panel; an x marks a diverged run's last finite value.",
        "No evaluation rows (val_loss) in the metrics.")
    add("train_loss", "Training loss vs tokens",
        _format_panels(runs, metrics, [("loss", "train loss (nats)" + (f", {smooth}-step mean" if smooth > 1 else ""))],
                       smooth=smooth, ylim=_loss_ylim),
        ("Training loss per step" + (f", smoothed with a trailing {smooth}-step mean." if smooth > 1 else ".")) + band
        + " Same y-axis rule as the validation loss.",
        "No training loss in the metrics.")
    add("stall", "Stall ratio over training",
        _format_panels(runs, metrics, [("update.stall_ratio", "stall ratio")], smooth=smooth, baseline=False,
                       ylim=lambda frames: (-0.02, 1.02)),
        "Fraction of weights with a gradient whose grid code did not change in a step"
        + (f" ({smooth}-step mean)" if smooth > 1 else "") + ". High = updates lost below the grid spacing." + band,
        "No update diagnostics (update.stall_ratio): no run had a quantized weight grid.")
    add("flips", "Code flips per step",
        _format_panels(runs, metrics, [("update.flips", "weights changing code / step")], smooth=smooth,
                       baseline=False, logy=True),
        "Number of weights whose grid code changed per step (" + (f"{smooth}-step mean, " if smooth > 1 else "")
        + "log scale)." + band,
        "No update diagnostics (update.flips) recorded.")
    add("rates", "Overflow and underflow rates", _rates_heatmap(runs),
        "Mean over steps and seeds of the fraction of quantized elements that overflowed (beyond ±max: saturated) or "
        "underflowed (flushed to zero), per operand. Colour is log-scaled; 0 means never.",
        "No quantization telemetry (quant.*.overflow_rate): only unquantized runs.")
    add("grad_cos", "Gradient cosine to the FP32 shadow",
        _format_panels(runs, metrics, [("grad_cos", "cosine to FP32 gradient")], marker="o"),
        "Cosine similarity between each run's gradient and an FP32 shadow model's on the same batch and weights "
        "(every shadow_interval steps); 1 = same direction." + band,
        "The FP32 shadow was off in every run (train.shadow_interval = 0), so no gradient cosine was recorded.")
    png, caption = _code_use(runs, metrics)
    add("code_use", "Dynamic-range use per format", png, caption,
        "No code histogram and no bit-position diagnostics (update.{layer}.bitpos_mean) were recorded.")
    rank_metrics, rank_rows = _critical_rank(metrics)
    add("rank", "Rank health of critical layers",
        _format_panels(runs, rank_metrics, rank_rows, marker="o", sharey="row", logy=True) if rank_rows else None,
        "Stable rank (‖W‖²_F / ‖W‖²_2) of lm_head and of attn.c_proj (mean over blocks), every rank_interval "
        "steps (log scale). A collapse toward 1 means the layer's weights concentrate in one direction." + band,
        "No rank diagnostics (rank.*) were recorded (train.rank_interval = 0).")
    add("lr", "Final val loss vs learning-rate multiplier", _lr_sensitivity(v),
        "One panel per format, one line per arm: mean final val loss over the seeds that completed (dots: single "
        "seeds; x: a diverged run, drawn at the panel's top). The ring marks the multiplier chosen on the selection "
        "seed, which every comparison uses. An effect that survives at every multiplier is geometry; one that "
        "appears only at some multipliers, or flips with them, is tuning.",
        "Every arm ran one learning rate (no lr_multipliers), so whether an effect is geometry or tuning is not "
        "measured here.")
    add("sites", "Gap to BF16 by quantized site (ablation)", _site_decomposition(v),
        "Per ablated format: the gap to BF16 of the format's own run (every site), of runs quantizing only the "
        "weights, only the activations, only the gradients, and the interaction (full − sum of the sites), each "
        "paired by seed; bars are means, whiskers 95% t-intervals (none with one seed).",
        "No ablation runs (site-only quantization), so the gap is not split by site.")
    return figs


def write_figures(figures: Sequence[Figure], directory) -> list:
    """Write each figure that has an image to ``directory/{key}.png`` (atomically); returns
    the paths (for Snakemake's ``report()``)."""
    out = []
    for f in figures:
        if f.png is None:
            continue
        path = Path(directory) / f"{f.key}.png"
        atomic_write(path, lambda tmp, data=f.png: Path(tmp).write_bytes(data))
        out.append(path)
    return out
