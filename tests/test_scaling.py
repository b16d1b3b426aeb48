"""Scaling-law fits on synthetic data drawn from known laws (real math, seeded noise)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from altgrad.experiment.planning import plan_compute_optimal
from altgrad.scaling_laws import (
    PowerLaw,
    ScalingInputError,
    chinchilla_table,
    fit_loss_vs_compute,
    fit_optimal_size,
    format_chinchilla_table,
    isoflop_optimum,
    size_at_tokens_per_param,
    unphysical_reason,
)
from altgrad.errors import AltgradError
from altgrad.training.flops import ModelShape, flops_per_token_by_size, size_flops_relation

# Ground truth for L(C) = k·C^a + L∞ over 5 decades of compute; the reducible term falls
# from ~3.2 to ~1.0 nats, so L∞ = 1.8 is a large share of the loss at the top end.
K, A, LINF = 100.0, -0.10, 1.80
C = np.logspace(15, 20, 25)
NOISE = 0.002  # relative (0.2%), seeded

# Tolerances (worst case over 30 noise seeds was about half of each): they are tight
# enough that a log-log line that ignores L∞ fails every one of them.
TOL_A = 0.01  # absolute, on the exponent
TOL_LINF = 0.15  # absolute, nats
TOL_K = 0.30  # relative


def _noisy_losses(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (K * C**A + LINF) * (1.0 + NOISE * rng.standard_normal(C.size))


def test_fit_recovers_known_law():
    fit = fit_loss_vs_compute(C, _noisy_losses(), n_boot=200, seed=1)
    assert abs(fit.a - A) <= TOL_A
    assert abs(fit.l_inf - LINF) <= TOL_LINF
    assert abs(fit.k / K - 1) <= TOL_K
    assert fit.r2 > 0.999
    assert fit.n_points == C.size and fit.c_range == (C.min(), C.max())
    # bootstrap: every parameter has a finite, positive spread and an interval around the estimate
    assert fit.n_boot == 200
    for name, value in fit.params.items():
        lo, hi = fit.ci95[name]
        assert fit.std[name] > 0 and math.isfinite(fit.std[name])
        assert lo <= value <= hi
    # and the interval is informative: the exponent is pinned to a few percent
    assert fit.ci95["a"][1] - fit.ci95["a"][0] < 0.03
    # predictions in the measured range match the true law within 1%
    true = K * C**A + LINF
    assert np.max(np.abs(fit.predict(C) / true - 1)) < 0.01


def test_fit_is_deterministic_given_seed():
    f1 = fit_loss_vs_compute(C, _noisy_losses(), n_boot=50, seed=3)
    f2 = fit_loss_vs_compute(C, _noisy_losses(), n_boot=50, seed=3)
    assert f1 == f2


def test_log_space_fit_ignoring_linf_fails_the_same_tolerances():
    """A straight line in log-log space (L∞ := 0) is what the linear-space fit replaces."""
    L = _noisy_losses()
    slope, icpt = np.polyfit(np.log10(C), np.log10(L), 1)
    k_log, linf_log = 10.0**icpt, 0.0
    assert abs(slope - A) > TOL_A  # slope ≈ -0.05: half the true exponent
    assert abs(linf_log - LINF) > TOL_LINF
    assert abs(k_log / K - 1) > TOL_K
    # ... and it extrapolates badly: at 1e24 FLOPs it predicts a loss below the
    # irreducible floor L∞, while the linear-space fit stays within 0.1 nats of the truth
    fit = fit_loss_vs_compute(C, L, n_boot=0)
    true_1e24 = K * 1e24**A + LINF
    assert abs(fit.predict(1e24) - true_1e24) < 0.1
    assert k_log * 1e24**slope < LINF < true_1e24
    assert abs(k_log * 1e24**slope - true_1e24) > 0.3


def test_isoflop_recovers_known_optimum():
    n0, l0 = 3.0e7, 2.9
    N = n0 * np.logspace(-0.8, 0.6, 8)  # asymmetric around the optimum on purpose
    u = np.log10(N / n0)
    L = l0 + 0.35 * u**2 + 1e-4 * np.random.default_rng(0).standard_normal(N.size)
    r = isoflop_optimum(N, L)
    assert r.valid and r.reason == ""
    assert abs(r.n_opt / n0 - 1) < 0.01
    assert abs(r.l_opt - l0) < 1e-3
    n_opt, l_opt = r  # unpacks as (N_opt, L_opt)
    assert (n_opt, l_opt) == (r.n_opt, r.l_opt)


def test_isoflop_downward_parabola_is_reported_not_used():
    N = np.logspace(6, 8, 5)
    L = 3.0 - 0.2 * (np.log10(N) - 7.0) ** 2  # concave: a maximum, not a minimum
    r = isoflop_optimum(N, L)
    assert not r.valid and math.isnan(r.n_opt) and math.isnan(r.l_opt)
    assert "opens downward" in r.reason
    assert r.n_best_sampled in (N[0], N[-1])
    with pytest.raises(ScalingInputError, match="opens downward"):
        isoflop_optimum(N, L, strict=True)


def test_isoflop_vertex_outside_range_is_not_extrapolated():
    N = np.logspace(6, 8, 5)
    L = 2.5 + 0.1 * (np.log10(N) - 9.0) ** 2  # convex, but the minimum is at N = 1e9 > max N
    r = isoflop_optimum(N, L)
    assert not r.valid and math.isnan(r.n_opt)
    assert "above the largest" in r.reason and "larger" in r.reason
    assert r.n_best_sampled == N[-1] and r.l_best_sampled == L[-1]
    L2 = 2.5 + 0.1 * (np.log10(N) - 5.0) ** 2
    assert "below the smallest" in isoflop_optimum(N, L2).reason


def test_power_law_recovers_k_b_and_its_tokens():
    k_true, b_true = 0.09, 0.5
    Cs = np.logspace(17, 21, 9)
    rng = np.random.default_rng(0)
    N = k_true * Cs**b_true * np.exp(0.02 * rng.standard_normal(Cs.size))
    p = fit_optimal_size(Cs, N, n_boot=500, seed=0)
    assert abs(p.b - b_true) < 0.01
    assert abs(p.k / k_true - 1) < 0.15
    assert p.r2 > 0.999
    assert p.std["b"] > 0 and p.ci95["b"][0] < p.b < p.ci95["b"][1]
    # where the FLOPs per token are 6N (no lm_head, no attention), D* = C / 6N*
    for c in (1e15, 1e18, 3.3e20, 1e23):
        assert p.predict_d(c, lambda n: 6.0 * n) * 6.0 * p.predict_n(c) == pytest.approx(c, rel=1e-12)
    arr = np.array([1e18, 1e19])
    np.testing.assert_allclose(6 * p.predict_n(arr) * p.predict_d(arr, lambda n: 6.0 * n), arr, rtol=1e-12)


def test_isoflop_pipeline_on_chinchilla_parametric_law():
    """End to end: isoFLOP curves from L(N, D) = E + A/N^α + B/D^β with D = C/6N
    (Hoffmann et al. 2022, approach 3 values) → optima → N*(C). The true exponent is
    b = β/(α+β); in log N every isoFLOP curve has the same shape, so the parabola's
    constant offset only moves k', never b."""
    E, A_, B_, al, be = 1.69, 406.4, 410.7, 0.34, 0.28
    G = (al * A_ / (be * B_)) ** (1 / (al + be))
    b_true = be / (al + be)
    Cs = np.logspace(18, 21, 7)
    opts = []
    for c in Cs:
        n0 = G * (c / 6) ** b_true
        N = n0 * np.logspace(-0.6, 0.6, 9)
        r = isoflop_optimum(N, E + A_ * N**-al + B_ * (c / (6 * N)) ** -be)
        assert r.valid
        opts.append(r.n_opt)
    p = fit_optimal_size(Cs, opts, n_boot=100)
    assert abs(p.b - b_true) < 1e-6
    assert abs(p.k / (G * 6**-b_true) - 1) < 0.03  # parabola offset ≈ 1.4%
    # the fitted law drives the budget planner
    plan = plan_compute_optimal(20.0, "h100", 2.69, 0.3, fit=p)
    assert plan.law.startswith("fitted")
    assert 0.7 < plan.n_params_nonembed / p.predict_n(plan.flops_per_run) < 1.4


def test_chinchilla_table_flags_extrapolation():
    p = PowerLaw(k=0.1, b=0.5, r2=1.0, n_points=5, c_range=(1e17, 1e19))
    loss = fit_loss_vs_compute(C, _noisy_losses(), n_boot=0)
    rows = chinchilla_table(p, loss_fit=loss, flops_per_token=lambda n: 6.0 * n + 1e6)
    assert [r.compute for r in rows] == [10.0**e for e in range(15, 22)]
    assert [r.extrapolated for r in rows] == [True, True, False, False, False, True, True]
    for r in rows:
        assert (6 * r.n_opt + 1e6) * r.d_opt == pytest.approx(r.compute, rel=1e-12)
        assert r.loss == pytest.approx(loss.predict(r.compute))
    rows2 = chinchilla_table(p, budgets=[1e15, 1e16], measured_range=(1e15, 1e15), flops_per_token=lambda n: 6.0 * n)
    assert [r.extrapolated for r in rows2] == [False, True]
    assert all(math.isnan(r.loss) for r in rows2)
    text = format_chinchilla_table(rows)
    assert text.count("extrapolated") == 4 and len(text.splitlines()) == 8


# --- D* = C / FLOPs per token of the shape of N*, counted by hand here --------------------

# The default sweep's second-smallest shape, counted by hand (not by altgrad.training.flops):
# 2 layers of width 64, context 64, vocabulary 5376, no biases, lm_head tied to the embedding.
HAND_SHAPE = ModelShape(n_layer=2, n_head=1, n_embd=64, block_size=64, vocab_size=5376)
HAND_N = 2 * (4 * 64 * 64 + 8 * 64 * 64 + 2 * 64) + 64  # per layer qkv+proj 4d², MLP 8d², 2 LayerNorms; ln_f
HAND_FPT = (6 * HAND_N  # forward 2 + backward 4 FLOPs per weight per token
            + 6 * 5376 * 64  # the lm_head (V x d, tied: compute, not a parameter of N)
            + 6 * 2 * 64 * 64)  # causal attention: 12·d FLOPs per (query, key), T/2 keys per query, 2 layers


def test_d_star_is_c_over_the_flops_per_token_of_the_shape_of_n_star():
    assert (HAND_N, HAND_FPT) == (98_624, 2_705_280)
    assert HAND_FPT / (6 * HAND_N) == pytest.approx(4.57, abs=0.01)  # "4.6": C/6N* overstates D* by this much
    fpt_of_n = flops_per_token_by_size([HAND_SHAPE])
    assert fpt_of_n(HAND_N) == HAND_FPT
    c = 1e12
    law = PowerLaw(k=HAND_N / c**0.5, b=0.5, r2=1.0, n_points=5, c_range=(1e11, 1e13))  # N*(1e12) = HAND_N
    assert law.predict_n(c) == pytest.approx(HAND_N, rel=1e-12)
    assert law.predict_d(c, fpt_of_n) == pytest.approx(c / HAND_FPT, rel=1e-12)  # 369,648 tokens, not 1.69M
    (row,) = chinchilla_table(law, [c], flops_per_token=fpt_of_n)
    assert row.d_opt == pytest.approx(369_647.6, abs=0.1)
    assert row.d_opt / row.n_opt == pytest.approx(3.748, abs=1e-3)  # tokens per parameter, not 16.9


def test_size_flops_relation_is_exact_at_its_shapes_and_close_beyond():
    fam = [ModelShape(1, 1, 64, 64, 5376), HAND_SHAPE, ModelShape(3, 2, 128, 64, 5376)]
    f = flops_per_token_by_size(fam)
    hand = {49_344: 6 * 49_344 + 6 * 5376 * 64 + 6 * 1 * 64 * 64, HAND_N: HAND_FPT,
            590_720: 6 * 590_720 + 6 * 5376 * 128 + 6 * 3 * 64 * 128}
    for n, fpt in hand.items():
        assert f(n) == pytest.approx(fpt, rel=1e-12)
    assert hand[HAND_N] < f(2e5) < hand[590_720]  # between two shapes: between their counts
    # beyond the largest: 4 layers of width 128 (the next shape of this family) within 5%
    n4 = 4 * (12 * 128 * 128 + 2 * 128) + 128
    assert abs(f(n4) / (6 * n4 + 6 * 5376 * 128 + 6 * 4 * 64 * 128) - 1) < 0.05
    # a pure power-law overhead is reproduced everywhere, extrapolation included
    g = size_flops_relation([1e3, 1e4, 1e5], [6e3 + 7 * 1e3**0.5, 6e4 + 7 * 1e4**0.5, 6e5 + 7 * 1e5**0.5])
    for n in (10.0, 3e3, 1e7):
        assert g(n) == pytest.approx(6 * n + 7 * n**0.5, rel=1e-9)
    with pytest.raises(AltgradError, match="positive"):
        size_flops_relation([1e3, -1.0], [1e4, 1e5])


def test_chinchilla_size_trains_20_tokens_per_parameter_at_the_counted_flops():
    # with a pure 6N count the rule is the textbook N* = sqrt(C / 120)
    assert size_at_tokens_per_param(1e21, 20, lambda n: 6.0 * n) == pytest.approx(math.sqrt(1e21 / 120), rel=1e-9)
    # with the hand-counted shape: the budget at which it trains exactly 20 tokens per parameter
    c = 20 * HAND_N * HAND_FPT
    assert size_at_tokens_per_param(c, 20, flops_per_token_by_size([HAND_SHAPE])) == pytest.approx(HAND_N, rel=1e-9)
    assert math.sqrt(c / 120) > 2 * HAND_N  # what C = 6ND would have asked for


@pytest.mark.parametrize("b", [-0.22, 0.0, 1.0, 1.3])
def test_a_law_whose_n_star_or_d_star_falls_with_compute_gives_no_table(b):
    law = PowerLaw(k=1e3, b=b, r2=0.9, n_points=3, c_range=(1e12, 4e12))
    assert "outside (0, 1)" in unphysical_reason(law)
    with pytest.raises(ScalingInputError, match=r"no Chinchilla table: the exponent .* is outside \(0, 1\)"):
        chinchilla_table(law, flops_per_token=lambda n: 6.0 * n)
    assert unphysical_reason(PowerLaw(k=1e3, b=0.5, r2=0.9, n_points=3, c_range=(1e12, 4e12))) == ""


# --- degenerate input: every error, with its message ------------------------------------

GOOD_C = [1e15, 1e16, 1e17, 1e18]
GOOD_L = [4.0, 3.5, 3.2, 3.0]


@pytest.mark.parametrize(
    ("C_", "L_", "match"),
    [
        ([1e15, np.nan, 1e17, 1e18], GOOD_L, r"C contains NaN/inf at index \[1\]"),
        (GOOD_C, [4.0, 3.5, np.inf, 3.0], r"L contains NaN/inf at index \[2\]"),
        (GOOD_C, [4.0, -3.5, 3.2, 3.0], r"L must be > 0; got \[-3.5\]"),
        ([0.0, 1e16, 1e17, 1e18], GOOD_L, r"C must be > 0; got \[0.0\] at index \[0\]"),
        ([1e15, 1e15, 1e16, 1e16], GOOD_L, r"at least 3 distinct compute budgets to fit, got 2"),
        (GOOD_C, GOOD_L[:3], r"different lengths \(4 vs 3\)"),
        ([], [], r"C is empty"),
        (GOOD_C, [3.0, 3.0, 3.0, 3.0], r"all losses are equal"),
        ([[1e15, 1e16]], [[3.0, 2.0]], r"1-D"),
    ],
)
def test_fit_loss_degenerate_input(C_, L_, match):
    with pytest.raises(ScalingInputError, match=match) as ei:
        fit_loss_vs_compute(C_, L_, n_boot=0)
    assert isinstance(ei.value, AltgradError)


def test_isoflop_and_power_law_degenerate_input():
    with pytest.raises(ScalingInputError, match="at least 3 distinct model sizes"):
        isoflop_optimum([1e6, 1e6, 1e7], [3.0, 3.1, 2.9])
    with pytest.raises(ScalingInputError, match="different lengths"):
        isoflop_optimum([1e6, 1e7, 1e8], [3.0, 2.9])
    with pytest.raises(ScalingInputError, match="N contains NaN/inf"):
        isoflop_optimum([1e6, np.nan, 1e8], [3.0, 2.9, 3.0])
    with pytest.raises(ScalingInputError, match="at least 3 distinct compute budgets"):
        fit_optimal_size([1e18, 1e19], [1e7, 3e7])
    # an invalid isoFLOP optimum (NaN) must be dropped explicitly, not fitted
    with pytest.raises(ScalingInputError, match=r"N_opt contains NaN/inf at index \[1\]"):
        fit_optimal_size([1e18, 1e19, 1e20], [1e7, float("nan"), 1e8])
    with pytest.raises(ScalingInputError, match="N_opt must be > 0"):
        fit_optimal_size([1e18, 1e19, 1e20], [1e7, 0.0, 1e8])
    p = PowerLaw(k=0.1, b=0.5, r2=1.0, n_points=3, c_range=(1e17, 1e19))
    six_n = lambda n: 6.0 * n  # noqa: E731
    with pytest.raises(ScalingInputError, match="budgets must be > 0"):
        chinchilla_table(p, budgets=[1e18, -1.0], flops_per_token=six_n)
    with pytest.raises(ScalingInputError, match=r"measured_range must be \(low, high\)"):
        chinchilla_table(p, measured_range=(1e19, 1e17), flops_per_token=six_n)
