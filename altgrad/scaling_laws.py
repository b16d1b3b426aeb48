"""Scaling-law fits: loss vs compute, isoFLOP optima, compute-optimal model size (pure math).

Laws (Hoffmann et al. 2022 "Training Compute-Optimal Large Language Models";
Kumar et al. 2024 "Scaling Laws for Precision" fit the same forms per precision):

* loss vs compute      ``L(C) = k·C^a + L∞``    (a < 0), fitted in LINEAR loss space;
* isoFLOP optimum      ``L ≈ α + β·log N + γ·(log N)²`` over one fixed-compute curve;
* optimal model size   ``N*(C) = k'·C^b``, and ``D*(C) = C / flops_per_token(N*(C))``: the
  tokens a model of size N* trains at C, with C counted as the runs counted it.

C is whatever FLOP count the caller measured; use
:func:`altgrad.training.flops.flops_per_token` × tokens so fits and plans agree, and
:func:`altgrad.training.flops.flops_per_token_by_size` for the ``N -> FLOPs per token``
relation of D*. (``C = 6·N·D`` holds only where the lm_head and attention are negligible;
on a small model they are most of the FLOPs, and ``C / 6N*`` overstates D* several-fold.)
A size law whose exponent lies outside (0, 1) is unphysical (N* or D* would shrink as
compute grows): :func:`unphysical_reason` says so, and :func:`chinchilla_table` refuses it.
Degenerate input raises :class:`ScalingInputError` (an AltgradError) with a clear message;
the input checks (:func:`positive_finite`, :func:`require_distinct`) are public so that a
sweep can be refused with the fitter's own words before any run is trained.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

from altgrad.errors import AltgradError

__all__ = [
    "ChinchillaRow",
    "Fit",
    "IsoflopResult",
    "PowerLaw",
    "ScalingInputError",
    "chinchilla_table",
    "fit_loss_vs_compute",
    "fit_optimal_size",
    "format_chinchilla_table",
    "isoflop_optimum",
    "positive_finite",
    "require_distinct",
    "size_at_tokens_per_param",
    "unphysical_reason",
]

DEFAULT_BUDGETS = tuple(10.0**e for e in range(15, 22))  # 1e15 ... 1e21 FLOPs, decades


class ScalingInputError(AltgradError, ValueError):
    """Input a scaling-law fit cannot use (NaN/inf, non-positive, too few points, ...)."""


# --------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------


def positive_finite(name: str, values: Sequence[float] | np.ndarray) -> np.ndarray:
    """``values`` as a 1-D float array, or :class:`ScalingInputError` naming what is wrong."""
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ScalingInputError(f"{name} must be numbers: {exc}") from None
    if arr.ndim != 1:
        raise ScalingInputError(f"{name} must be a 1-D sequence, got shape {arr.shape}")
    if arr.size == 0:
        raise ScalingInputError(f"{name} is empty")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ScalingInputError(
            f"{name} contains NaN/inf at index {np.flatnonzero(bad).tolist()} "
            "(a diverged run? drop it or fit the runs that finished)"
        )
    nonpos = arr <= 0
    if nonpos.any():
        raise ScalingInputError(
            f"{name} must be > 0; got {arr[nonpos].tolist()} at index {np.flatnonzero(nonpos).tolist()}"
        )
    return arr


def _pair(xname: str, x, yname: str, y) -> tuple[np.ndarray, np.ndarray]:
    xa = positive_finite(xname, x)
    ya = positive_finite(yname, y)
    if xa.size != ya.size:
        raise ScalingInputError(f"{xname} and {yname} have different lengths ({xa.size} vs {ya.size})")
    return xa, ya


def require_distinct(name: str, x: np.ndarray, what: str, k: int = 3) -> None:
    """:class:`ScalingInputError` unless ``x`` holds at least ``k`` distinct values of ``what``."""
    n = np.unique(x).size
    if n < k:
        raise ScalingInputError(f"need at least {k} distinct {what} to fit, got {n} ({name}={x.tolist()})")


def _r2(y: np.ndarray, yhat: np.ndarray) -> float:
    ss_res = float(np.sum((y - yhat) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def _summarise(samples: np.ndarray, names: Sequence[str]) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    if samples.shape[0] < 2:
        nan = float("nan")
        return {n: nan for n in names}, {n: (nan, nan) for n in names}
    std = {n: float(np.std(samples[:, i], ddof=1)) for i, n in enumerate(names)}
    ci = {
        n: (float(np.percentile(samples[:, i], 2.5)), float(np.percentile(samples[:, i], 97.5)))
        for i, n in enumerate(names)
    }
    return std, ci


# --------------------------------------------------------------------------------------
# Loss vs compute
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fit:
    """``L(C) = k·C^a + l_inf`` with goodness of fit and bootstrap uncertainty.

    ``std`` and ``ci95`` map each of ``k``, ``a``, ``l_inf`` to the bootstrap standard
    deviation and the 2.5–97.5 percentile interval (points resampled with replacement).
    ``r2`` is computed in linear loss space.
    """

    k: float
    a: float
    l_inf: float
    r2: float
    n_points: int
    c_range: tuple[float, float]
    std: dict[str, float] = field(default_factory=dict)
    ci95: dict[str, tuple[float, float]] = field(default_factory=dict)
    n_boot: int = 0

    @property
    def params(self) -> dict[str, float]:
        return {"k": self.k, "a": self.a, "l_inf": self.l_inf}

    def predict(self, C):
        """Predicted loss at compute C (scalar or array)."""
        C = np.asarray(C, dtype=float)
        out = self.k * np.power(C, self.a) + self.l_inf
        return float(out) if out.ndim == 0 else out


def _loss_model(x: np.ndarray, A: float, a: float, E: float) -> np.ndarray:
    # x = log10(C) - x0, so A is the reducible loss at the reference compute C0 = 10**x0:
    # all three parameters are O(1) and the fit is well conditioned.
    return A * np.power(10.0, a * x) + E


def _initial_guess(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Grid over L∞ in [0, min L); for each, a log-linear fit of log(L - L∞) vs x; keep the
    candidate with the smallest squared error in linear space."""
    best, best_sse = None, math.inf
    ymin = float(y.min())
    for E in np.linspace(0.0, ymin, 60, endpoint=False)[::-1]:
        r = y - E
        slope, icpt = np.polyfit(x, np.log10(r), 1)
        a = float(np.clip(slope, -1.99, -1e-4))
        A = float(10.0**icpt)
        sse = float(np.sum((_loss_model(x, A, a, E) - y) ** 2))
        if sse < best_sse:
            best, best_sse = (A, a, float(E)), sse
    assert best is not None
    return best


def _fit_loss_once(x: np.ndarray, y: np.ndarray, p0: tuple[float, float, float]) -> np.ndarray:
    ymin = float(y.min())
    lower = (1e-12, -2.0, 0.0)
    upper = (np.inf, 0.0, ymin)
    # start strictly inside the bounds (trf requires it)
    p0 = (max(float(p0[0]), 1e-9), float(np.clip(p0[1], -1.999, -1e-6)), float(np.clip(p0[2], 0.0, ymin * (1 - 1e-9))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        popt, _ = curve_fit(_loss_model, x, y, p0=p0, bounds=(lower, upper), method="trf", maxfev=20000)
    return popt


def fit_loss_vs_compute(C, L, *, n_boot: int = 200, seed: int = 0) -> Fit:
    """Fit ``L(C) = k·C^a + L∞`` by nonlinear least squares in linear loss space.

    Bounds: ``k > 0``, ``-2 ≤ a ≤ 0``, ``0 ≤ L∞ ≤ min(L)``. Needs ≥ 3 distinct C.
    Uncertainty: ``n_boot`` bootstrap refits on points resampled with replacement
    (``numpy.random.default_rng(seed)``); resamples with < 3 distinct C are redrawn.
    """
    c, y = _pair("C", C, "L", L)
    require_distinct("C", c, "compute budgets")
    if np.ptp(y) == 0:
        raise ScalingInputError(f"all losses are equal ({y[0]}): there is no trend to fit")
    x0 = float(np.mean(np.log10(c)))
    x = np.log10(c) - x0

    def to_natural(p: np.ndarray) -> tuple[float, float, float]:
        A, a, E = (float(v) for v in p)
        return A * 10.0 ** (-a * x0), a, E  # k·C^a = A·(C/C0)^a  =>  k = A·C0^(-a)

    try:
        popt = _fit_loss_once(x, y, _initial_guess(x, y))
    except RuntimeError as exc:
        raise ScalingInputError(f"loss-vs-compute fit did not converge: {exc}") from None
    k, a, E = to_natural(popt)
    r2 = _r2(y, _loss_model(x, *popt))

    rng = np.random.default_rng(seed)
    samples = []
    n = c.size
    tries = 0
    while len(samples) < n_boot and tries < 20 * max(n_boot, 1):
        tries += 1
        idx = rng.integers(0, n, n)
        if np.unique(c[idx]).size < 3:
            continue
        try:
            p = _fit_loss_once(x[idx], y[idx], tuple(popt))
        except (RuntimeError, ValueError):
            continue
        samples.append(to_natural(p))
    std, ci = _summarise(np.array(samples).reshape(-1, 3), ("k", "a", "l_inf"))
    return Fit(
        k=k, a=a, l_inf=E, r2=r2, n_points=int(n), c_range=(float(c.min()), float(c.max())),
        std=std, ci95=ci, n_boot=len(samples),
    )


# --------------------------------------------------------------------------------------
# IsoFLOP optimum
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IsoflopResult:
    """Vertex of a parabola fitted to L vs log10 N over one isoFLOP curve.

    ``valid`` is False (and ``n_opt``/``l_opt`` are NaN) when the parabola opens downward
    or its vertex lies outside the sampled N range; ``reason`` says which, and
    ``n_best_sampled``/``l_best_sampled`` give the lowest measured point instead.
    Unpacks as ``n_opt, l_opt = isoflop_optimum(N, L)``.
    """

    n_opt: float
    l_opt: float
    valid: bool
    reason: str
    curvature: float  # γ in L = α + β·u + γ·u², u = log10 N
    n_best_sampled: float
    l_best_sampled: float
    n_range: tuple[float, float]

    def __iter__(self):
        return iter((self.n_opt, self.l_opt))


def isoflop_optimum(N, L, *, strict: bool = False) -> IsoflopResult:
    """Loss-minimising model size on one isoFLOP curve (≥ 3 distinct N).

    Fits ``L = α + β·u + γ·u²`` with ``u = log10 N`` by least squares; the optimum is the
    vertex ``u* = -β/(2γ)``. It is reported only if ``γ > 0`` (a minimum) and ``u*`` lies
    within the sampled range; otherwise the result is marked invalid with the reason
    (``strict=True`` raises instead). Never extrapolates.
    """
    n, y = _pair("N", N, "L", L)
    require_distinct("N", n, "model sizes on the isoFLOP curve")
    u = np.log10(n)
    um = float(u.mean())
    g, b, c0 = np.polyfit(u - um, y, 2)
    ibest = int(np.argmin(y))
    lo, hi = float(n.min()), float(n.max())
    reason = ""
    if not g > 0:
        reason = (
            f"parabola opens downward (curvature {g:.3g} <= 0): no minimum in the data; "
            "sample model sizes on both sides of the optimum"
        )
    else:
        uv = -b / (2.0 * g)
        nv = 10.0 ** (uv + um)
        if not (lo <= nv <= hi):
            side = "below the smallest" if nv < lo else "above the largest"
            reason = (
                f"parabola vertex N={nv:.3g} lies {side} sampled size (range [{lo:.3g}, {hi:.3g}]); "
                "not extrapolating — add " + ("smaller" if nv < lo else "larger") + " models to this isoFLOP curve"
            )
    if reason:
        if strict:
            raise ScalingInputError(f"isoFLOP optimum not found: {reason}")
        return IsoflopResult(
            n_opt=float("nan"), l_opt=float("nan"), valid=False, reason=reason, curvature=float(g),
            n_best_sampled=float(n[ibest]), l_best_sampled=float(y[ibest]), n_range=(lo, hi),
        )
    lv = float(c0 - b * b / (4.0 * g))
    return IsoflopResult(
        n_opt=float(nv), l_opt=lv, valid=True, reason="", curvature=float(g),
        n_best_sampled=float(n[ibest]), l_best_sampled=float(y[ibest]), n_range=(lo, hi),
    )


# --------------------------------------------------------------------------------------
# Optimal model size vs compute
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerLaw:
    """``N*(C) = k·C^b`` (no additive constant); ``D*(C) = C / flops_per_token(N*(C))``.

    ``r2`` is computed in log10 space, where the law was fitted. ``std``/``ci95``: bootstrap
    over (C, N*) points for ``k`` and ``b``.
    """

    k: float
    b: float
    r2: float
    n_points: int
    c_range: tuple[float, float]
    std: dict[str, float] = field(default_factory=dict)
    ci95: dict[str, tuple[float, float]] = field(default_factory=dict)
    n_boot: int = 0

    def predict_n(self, C):
        C = np.asarray(C, dtype=float)
        out = self.k * np.power(C, self.b)
        return float(out) if out.ndim == 0 else out

    def predict_d(self, C, flops_per_token: Callable[[float], float]):
        """Compute-optimal tokens ``C / flops_per_token(N*(C))``: the tokens a model of size
        N* trains on budget C. ``flops_per_token`` maps a non-embedding size to the training
        FLOPs per token of a model of that size, counted as C was (e.g.
        :func:`altgrad.training.flops.flops_per_token_by_size`)."""
        C = np.asarray(C, dtype=float)
        n = np.asarray(self.predict_n(C), dtype=float)
        fpt = np.vectorize(lambda v: float(flops_per_token(float(v))), otypes=[float])(n)
        out = C / fpt
        return float(out) if out.ndim == 0 else out

    __call__ = predict_n


def unphysical_reason(fit: PowerLaw) -> str:
    """Why ``N*(C) = k·C^b`` cannot describe compute-optimal training ("" when it can):
    its exponent must lie in (0, 1), so that both N* and the tokens grow with compute."""
    if not (math.isfinite(fit.b) and math.isfinite(fit.k) and fit.k > 0):
        return f"N*(C) = {fit.k:.3g}·C^{fit.b:.3f} is not a finite positive law"
    if not 0.0 < fit.b < 1.0:
        what = "N* falls as compute grows" if fit.b <= 0 else "D* falls as compute grows (N* grows faster than C)"
        return (f"the exponent of N*(C) = {fit.k:.3g}·C^{fit.b:.3f} is outside (0, 1): {what}, which no "
                "compute-optimal frontier does; the sampled sizes probably do not bracket the optima")
    return ""


def _loglog_line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares line y = icpt + slope·x, returns (slope, icpt)."""
    xm = x.mean()
    slope, icpt_c = np.polyfit(x - xm, y, 1)
    return float(slope), float(icpt_c - slope * xm)


def fit_optimal_size(C_list, N_opt_list, *, n_boot: int = 1000, seed: int = 0) -> PowerLaw:
    """Fit ``N*(C) = k·C^b`` by least squares on ``log10 N* = log10 k + b·log10 C``.

    Needs ≥ 3 distinct compute budgets. NaN entries (e.g. an invalid isoFLOP optimum) are
    rejected: drop those budgets explicitly.
    """
    c, nn = _pair("C", C_list, "N_opt", N_opt_list)
    require_distinct("C", c, "compute budgets")
    x, y = np.log10(c), np.log10(nn)
    b, icpt = _loglog_line(x, y)
    r2 = _r2(y, icpt + b * x)
    rng = np.random.default_rng(seed)
    samples = []
    tries = 0
    while len(samples) < n_boot and tries < 20 * max(n_boot, 1):
        tries += 1
        idx = rng.integers(0, c.size, c.size)
        if np.unique(x[idx]).size < 2:
            continue
        bb, ii = _loglog_line(x[idx], y[idx])
        samples.append((10.0**ii, bb))
    std, ci = _summarise(np.array(samples).reshape(-1, 2), ("k", "b"))
    return PowerLaw(
        k=float(10.0**icpt), b=b, r2=r2, n_points=int(c.size), c_range=(float(c.min()), float(c.max())),
        std=std, ci95=ci, n_boot=len(samples),
    )


def size_at_tokens_per_param(C: float, tokens_per_param: float, flops_per_token: Callable[[float], float]) -> float:
    """The size N whose run at budget C trains ``tokens_per_param``·N tokens: the root of
    ``tokens_per_param · N · flops_per_token(N) = C`` (Chinchilla's rule D = 20·N with C
    counted as the runs count it; ``sqrt(C / 120)`` only where ``flops_per_token(N) = 6N``).
    ``flops_per_token`` must grow with N (then the root is unique); found by bisection in log N."""
    C, r = float(C), float(tokens_per_param)
    if not (math.isfinite(C) and C > 0 and math.isfinite(r) and r > 0):
        raise ScalingInputError(f"C and tokens_per_param must be positive numbers, got {C}, {r}")

    def excess(log_n: float) -> float:
        n = math.exp(log_n)
        return math.log(r * n * float(flops_per_token(n))) - math.log(C)

    lo, hi = 0.0, max(math.log(C), 1.0)
    while excess(lo) > 0 or excess(hi) < 0:
        lo, hi = (lo - 10.0, hi) if excess(lo) > 0 else (lo, hi + 10.0)
        if lo < -200 or hi > 400:
            raise ScalingInputError(f"no size trains {r:g} tokens per parameter at C = {C:g}")
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if excess(mid) > 0:
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-12:
            break
    return math.exp(0.5 * (lo + hi))


# --------------------------------------------------------------------------------------
# Chinchilla-style table
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChinchillaRow:
    compute: float
    n_opt: float
    d_opt: float
    loss: float  # NaN when no loss fit was given
    extrapolated: bool


def chinchilla_table(
    fit: PowerLaw,
    budgets: Sequence[float] = DEFAULT_BUDGETS,
    measured_range: tuple[float, float] | None = None,
    *,
    flops_per_token: Callable[[float], float],
    loss_fit: Fit | None = None,
) -> list[ChinchillaRow]:
    """Predicted N*, D* (and L if ``loss_fit`` is given) per compute budget.

    ``D* = C / flops_per_token(N*)`` (see :meth:`PowerLaw.predict_d`). ``extrapolated`` is
    True for budgets outside ``measured_range`` (default: the range of compute the size law
    was fitted on). A law whose exponent is outside (0, 1) is refused
    (:class:`ScalingInputError` with :func:`unphysical_reason`'s text).
    """
    why = unphysical_reason(fit)
    if why:
        raise ScalingInputError(f"no Chinchilla table: {why}")
    cs = positive_finite("budgets", list(budgets))
    if measured_range is None:
        lo, hi = fit.c_range
    else:
        lo, hi = (float(v) for v in positive_finite("measured_range", list(measured_range)))
        if lo > hi:
            raise ScalingInputError(f"measured_range must be (low, high), got ({lo:g}, {hi:g})")
    rows = []
    for C in cs:
        rows.append(
            ChinchillaRow(
                compute=float(C),
                n_opt=fit.predict_n(float(C)),
                d_opt=fit.predict_d(float(C), flops_per_token),
                loss=float(loss_fit.predict(float(C))) if loss_fit is not None else float("nan"),
                extrapolated=bool(C < lo * (1 - 1e-9) or C > hi * (1 + 1e-9)),
            )
        )
    return rows


def format_chinchilla_table(rows: Sequence[ChinchillaRow]) -> str:
    """Aligned text rendering of :func:`chinchilla_table` rows."""
    head = ("FLOPs", "N*", "D*", "D*/N*", "loss", "")
    body = [
        (
            f"{r.compute:.2e}", f"{r.n_opt:.3g}", f"{r.d_opt:.3g}", f"{r.d_opt / r.n_opt:.1f}",
            "-" if math.isnan(r.loss) else f"{r.loss:.3f}", "extrapolated" if r.extrapolated else "",
        )
        for r in rows
    ]
    allrows = [head, *body]
    w = [max(len(r[i]) for r in allrows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(wi) for c, wi in zip(r, w)).rstrip() for r in allrows)
