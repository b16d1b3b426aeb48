"""altgrad.optim: grid geometry, the optimizers under test, and the diagnostics that judge them."""

import copy
import io
import json
import math

import numpy as np
import pytest
import torch

from altgrad.optim import (
    GridOptim,
    GridProjection,
    ManifoldAdamW,
    ManifoldSGD,
    MantissaShift,
    UpdateDiagnostics,
    build_optimizer,
    grid_position,
    grid_value,
    index_range,
    one_more_mantissa_bit,
    partition_relative_clip,
    project_to_grid,
    stiffness,
)
from altgrad.optim import grid_move_cpu
from altgrad.optim.grid_optim import move_on_grid
from altgrad.quantization import FORMAT_NAMES, FloatFormat, encode, get_format, quantize
from altgrad.quantization.random_bits import draw_key
from altgrad.training.config import RunConfig

EIGHT_BIT = [n for n in FORMAT_NAMES if get_format(n).bits <= 8]


def param(values) -> torch.nn.Parameter:
    values = torch.as_tensor(values)
    return torch.nn.Parameter(values.clone() if values.is_floating_point() else values.float())


def constant_scale(value: float):
    scale = torch.tensor(value)
    return lambda: scale


def spread(fmt, n=20000, seed=0) -> torch.Tensor:
    """Random values over the whole range: subnormals, every binade, beyond ±max, zeros."""
    g = torch.Generator().manual_seed(seed)
    top = math.log2(fmt.max_value) + 1
    exponent = torch.rand(n, generator=g) * (top - math.log2(fmt.min_subnormal) + 2) + math.log2(fmt.min_subnormal) - 2
    x = torch.exp2(exponent) * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    x[:10] = 0.0
    grid = fmt.grid().double()
    midpoints = ((grid[:-1] + grid[1:]) / 2).float()
    return x[~torch.isin(x, midpoints)]  # ties: e7m0 rounds them away from zero, not to even


# --- geometry -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FORMAT_NAMES)
def test_grid_position_is_the_code_index(name):
    fmt = get_format(name)
    lo, hi = index_range(fmt)
    indices = torch.arange(lo, hi + 1, dtype=torch.float32)
    assert torch.equal(grid_position(fmt.grid(), fmt), indices)
    assert torch.equal(grid_value(indices, fmt), fmt.grid())
    if fmt.bits > 8:
        return
    x = spread(fmt)
    index = grid_position(x, fmt).round()
    assert torch.equal(grid_value(index, fmt), quantize(x, fmt))  # rounding the position = RNE
    magnitude_bits = encode(x, fmt).long() & (2 ** (fmt.exp_bits + fmt.man_bits) - 1)
    assert torch.equal(index.abs().long(), magnitude_bits)


@pytest.mark.parametrize("name", EIGHT_BIT)
def test_stiffness_is_the_grid_spacing_in_real_units(name):
    fmt = get_format(name)
    x = torch.cat([spread(fmt), torch.tensor([0.0, -0.0, fmt.min_subnormal, fmt.max_value, -fmt.max_value])])
    assert torch.equal(stiffness(x, fmt), fmt.ulp(x))  # zero and subnormals: the subnormal step
    scale = torch.tensor(8.0)
    w = x / 8.0
    assert torch.equal(stiffness(w, fmt, scale), fmt.ulp(x) / 8.0)
    cap = fmt.ulp(torch.tensor(1.0)).item()
    assert stiffness(x, fmt, max_stiffness=cap).max() == cap


# --- ManifoldAdamW --------------------------------------------------------------------------


def test_manifold_adamw_without_fmt_is_torch_adamw_bit_for_bit():
    g = torch.Generator().manual_seed(0)
    shapes = [(7, 5), (5,)]
    ours_params = [param(torch.randn(s, generator=g)) for s in shapes]
    theirs_params = [param(p.detach()) for p in ours_params]

    def groups(ps):
        return [{"params": [ps[0]]}, {"params": [ps[1]], "weight_decay": 0.0, "lr": 3e-3}]

    kwargs = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    ours, theirs = ManifoldAdamW(groups(ours_params), **kwargs), torch.optim.AdamW(groups(theirs_params), **kwargs)
    for _ in range(6):
        for a, b in zip(ours_params, theirs_params):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        ours.step()
        theirs.step()
    for a, b in zip(ours_params, theirs_params):
        assert torch.equal(a, b)
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(ours.state[a][key], theirs.state[b][key])


def test_gradient_side_stiffness_is_cancelled_by_adam_but_direction_side_is_not():
    """Multiplying the gradient by S before Adam's moments changes nothing but eps's weight
    (it acts as eps / S): the per-coordinate normalisation divides S out. That is why
    ManifoldAdamW scales the direction instead, and the gradient-side variant is SGD-only."""
    fmt = get_format("e4m3")
    g = torch.Generator().manual_seed(1)
    w0 = torch.exp2(torch.rand(64, generator=g) * 10 - 5) * torch.where(torch.rand(64, generator=g) < 0.5, -1.0, 1.0)
    w0 = w0.double()  # float64 weights, so the tiny updates are measured exactly
    plain, gradient_side, manifold = param(w0), param(w0), param(w0)
    lr, ulp_lr = 1e-5, 0.01  # small: no weight leaves its binade, so S stays constant
    adam_plain = torch.optim.AdamW([plain], lr=lr, eps=1e-12, weight_decay=0.0)
    adam_scaled_grad = torch.optim.AdamW([gradient_side], lr=lr, eps=1e-12, weight_decay=0.0)
    ours = ManifoldAdamW([{"params": [manifold], "fmt": fmt}], lr=ulp_lr, eps=1e-12, weight_decay=0.0, lr_gain=1.0,
                         min_stiffness=0.0)  # lr in ULPs, S the grid's own
    s = stiffness(w0, fmt).double()
    for _ in range(5):
        grad = torch.randn(64, generator=g, dtype=torch.float64) * 1e-2
        plain.grad, manifold.grad = grad.clone(), grad.clone()
        gradient_side.grad = grad * stiffness(gradient_side, fmt)
        for opt in (adam_plain, adam_scaled_grad, ours):
            opt.step()
    for w in (gradient_side, manifold):
        assert torch.equal(stiffness(w, fmt).double(), s)
    plain_update = plain.detach() - w0
    torch.testing.assert_close(gradient_side.detach() - w0, plain_update, rtol=1e-4, atol=0.0)  # the no-op
    torch.testing.assert_close(manifold.detach() - w0, plain_update * s * ulp_lr / lr, rtol=1e-4, atol=0.0)
    assert (s.max() / s.min()) > 100  # S really varied across coordinates


@pytest.mark.parametrize("name", ["e7m0", "e5m2", "e3m4"])
def test_sub_half_ulp_adamw_stalls_on_grid_weights_while_manifold_adamw_flips_every_step(name):
    fmt, steps, n = get_format(name), 8, 16
    half_ulp = fmt.ulp(torch.tensor(1.0)).item() / 2  # the gap above 1.0 (the weights move up)

    def run(make_optimizer):
        w = param(torch.ones(n))
        optimizer = make_optimizer([{"params": [w], "fmt": fmt}])
        GridProjection.attach(optimizer, "nearest", seed=0)  # master_weights: grid
        diag = UpdateDiagnostics({"w": (w, fmt, None)})
        metrics = []
        for _ in range(steps):
            w.grad = torch.full((n,), -1e-3)
            diag.before_step()
            optimizer.step()
            metrics.append(diag.after_step())
        return w, metrics

    w, metrics = run(lambda groups: torch.optim.AdamW(groups, lr=half_ulp / 2, weight_decay=0.0))
    assert all(m["update.w.stall_ratio"] == 1.0 and m["update.w.flips"] == 0 for m in metrics)
    assert torch.all(w == 1.0)

    w, metrics = run(lambda groups: ManifoldAdamW(groups, lr=1.0, weight_decay=0.0, lr_gain=1.0))  # one ULP per step
    assert all(m["update.w.stall_ratio"] == 0.0 and m["update.w.ulps_moved_hist.1"] == n for m in metrics)
    assert torch.all(grid_position(w.detach(), fmt) == grid_position(torch.tensor(1.0), fmt) + steps)


def test_manifold_adamw_tracks_latent_grid_position():
    fmt, scale = get_format("e4m3"), constant_scale(16.0)
    w = param([0.01, -0.02, 0.3])
    optimizer = ManifoldAdamW([{"params": [w], "fmt": fmt, "scale": scale}], lr=0.3, lr_gain=1.0, track_position=True)
    w.grad = torch.tensor([1.0, -1.0, 0.5])
    optimizer.step()
    position = optimizer.state[w]["position"]
    assert torch.equal(position, grid_position(w.detach() * 16.0, fmt))
    assert not torch.equal(position, position.round())  # 0.3 ULP steps: between codes


def test_manifold_sgd_scales_the_gradient_by_the_ulp_on_the_side_it_moves():
    fmt = get_format("e5m2")
    w0 = torch.tensor([1.0, 3.0, 0.0])
    w, plain = param(w0), param(w0)
    ours = ManifoldSGD([{"params": [w], "fmt": fmt}, {"params": [plain]}], lr=0.5, momentum=0.9, min_stiffness=0.0)
    w.grad, plain.grad = torch.tensor([1.0, -2.0, 4.0]), torch.tensor([1.0, -2.0, 4.0])
    ours.step()
    # 1.0 moves down: the spacing below a power of two, 1/8 (above it is 1/4); 3.0 moves up
    # inside [2, 4): 1/2; 0.0 moves down: the subnormal step 2^-16
    assert w.tolist() == [1.0 - 0.5 * 0.125 * 1.0, 3.0 + 0.5 * 0.5 * 2.0, 0.0 - 0.5 * 2.0**-16 * 4.0]
    assert torch.equal(plain.detach(), w0 - 0.5 * plain.grad)


# --- UpdateDiagnostics ----------------------------------------------------------------------


def toy_step(diag, weights: dict, grads: dict, new_weights: dict) -> dict:
    """Set gradients, snapshot, 'step' by writing the new weights, and read the metrics."""
    for name, (w, *_) in diag.geometry.items():
        w.grad = torch.tensor(grads[name], dtype=w.dtype)
    diag.before_step()
    with torch.no_grad():
        for name, (w, *_) in diag.geometry.items():
            w.copy_(torch.tensor(new_weights[name], dtype=w.dtype))
    return diag.after_step()


def test_update_diagnostics_against_a_hand_computed_toy():
    fmt = get_format("e5m2")  # codes: 1.0 -> 60, 1.25 -> 61, 0.5 -> 56, 2.5 -> 65, 3.0 -> 66, 4.0 -> 68
    before = [1.0, 1.0, 0.5, 0.0, -2.0, 3.0, 1.0, 0.25]
    grads = [1.0, 0.0, 1.0, 1.0, -1.0, 0.0, 1.0, 1.0]  # attempted: 6
    after = [1.25, 1.0, 0.5, 0.0, -3.0, 2.5, 1.1, 4.0]  # rungs: 1, 0, 0, 0, 2, 1 (no grad), 0 (1.1 -> 1.0), 16
    w = param(before)
    diag = UpdateDiagnostics({"toy": (w, fmt, None)})
    m = toy_step(diag, {}, {"toy": grads}, {"toy": after})
    assert m["update.toy.flips"] == 4
    assert m["update.toy.attempted"] == 6
    assert m["update.toy.stall_ratio"] == 3 / 6  # 0.5, 0.0 and 1.1 tried and stayed
    hist = [m[f"update.toy.ulps_moved_hist.{b}"] for b in ("0", "1", "2-3", "4-7", "8+")]
    assert hist == [4, 2, 1, 0, 1]
    bitpos = np.array([61, 60, 56, 0, 66, 65, 60, 68], dtype=np.float64)
    assert np.array_equal(bitpos, (encode(torch.tensor(after), fmt).long() & 0x7F).numpy())  # codes' magnitudes
    assert m["update.toy.bitpos_mean"] == pytest.approx(bitpos.mean())
    assert m["update.toy.bitpos_std"] == pytest.approx(bitpos.std())
    assert m["update.toy.grid_distance"] == pytest.approx(0.4 / 8, rel=1e-5)  # 1.1 is 0.4 ULP above 1.0
    ulps = np.array([0.25, 0.25, 0.125, 2.0**-16, 0.5, 0.5, 0.25, 0.0625])  # S at the step's start
    expected_corr = np.corrcoef(np.abs(grads), ulps)[0, 1]
    assert m["update.toy.grad_stiffness_corr"] == pytest.approx(expected_corr, rel=1e-5)
    assert m["update.toy.grad_nonfinite"] == 0.0
    for key in ("flips", "attempted", "stall_ratio", "grid_distance", "ulps_moved_hist.8+"):
        assert m[f"update.{key}"] == m[f"update.toy.{key}"]  # one layer: totals are the layer


def test_update_diagnostics_totals_correlation_sign_and_nonfinite():
    fmt = get_format("e5m2")
    ulps = np.array([0.125, 0.25, 0.5, 1.0])
    a, b = param([0.5, 1.0, 2.0, 4.0]), param([0.5, 1.0, 2.0, 4.0])
    diag = UpdateDiagnostics({"a": (a, fmt, None), "b": (b, fmt, None)})
    m = toy_step(diag, {}, {"a": list(ulps * 3), "b": list(1 / ulps)},
                 {"a": [0.625, 1.0, 2.0, 4.0], "b": [0.5, 1.0, 2.0, 4.0]})
    assert m["update.a.grad_stiffness_corr"] == pytest.approx(1.0)
    assert m["update.b.grad_stiffness_corr"] < -0.5
    assert m["update.flips"] == 1 and m["update.attempted"] == 8 and m["update.stall_ratio"] == 7 / 8
    m = toy_step(diag, {}, {"a": [math.nan, 1, 1, 1], "b": [0.0] * 4}, {"a": [0.5, 1, 2, 4], "b": [0.5, 1, 2, 4]})
    assert m["update.a.grad_nonfinite"] == 1.0 and math.isnan(m["update.a.grad_stiffness_corr"])
    assert math.isnan(m["update.b.stall_ratio"])  # nothing attempted


def test_update_diagnostics_take_a_scale_per_entry():
    """Block scaling gives one scale per entry. A layer whose per-entry scales all equal 64 has
    the statistics of the same layer with the scalar scale 64 (the two are stacked together),
    and layers of different sizes sit side by side."""
    fmt, g = get_format("e4m3"), torch.Generator().manual_seed(0)
    start, grads = torch.randn(256, generator=g) * 0.05, torch.randn(256, generator=g)
    after = (start - 0.002 * grads).tolist()
    a, b, c = param(start), param(start), param(start[:100])
    diag = UpdateDiagnostics({"a": (a, fmt, lambda: torch.tensor(64.0)), "b": (b, fmt, lambda: torch.full((256,), 64.0)),
                              "c": (c, fmt, lambda: torch.tensor(64.0))})
    m = toy_step(diag, {}, {"a": grads.tolist(), "b": grads.tolist(), "c": grads[:100].tolist()},
                 {"a": after, "b": after, "c": after[:100]})
    keys = ("flips", "attempted", "stall_ratio", "grid_distance", "bitpos_mean", "bitpos_std", "grad_stiffness_corr")
    assert all(m[f"update.a.{key}"] == m[f"update.b.{key}"] for key in keys)
    assert 0 < m["update.a.flips"] < 256 and m["update.c.attempted"] == 100
    assert m["update.flips"] == 2 * m["update.a.flips"] + m["update.c.flips"]


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_grid_master_weights_have_zero_grid_distance(compile):
    fmt = get_format("e4m3")
    w = param(torch.randn(300, generator=torch.Generator().manual_seed(0)) * 0.05)
    optimizer = torch.optim.AdamW([{"params": [w], "fmt": fmt, "scale": constant_scale(64.0)}], lr=1e-2)
    GridProjection.attach(optimizer, "stochastic", seed=0, compile=compile)
    diag = UpdateDiagnostics({"w": (w, fmt, constant_scale(64.0))})
    w.grad = torch.randn(300)
    diag.before_step()
    optimizer.step()
    assert diag.after_step()["update.w.grid_distance"] == 0.0


def test_sampled_diagnostics_estimate_the_exact_ones():
    fmt, n = get_format("e4m3"), 1 << 17
    g = torch.Generator().manual_seed(0)
    start = quantize(torch.randn(n, generator=g) * 20, fmt)
    choice = torch.multinomial(torch.tensor([0.6, 0.2, 0.1, 0.07, 0.03]), n, replacement=True, generator=g)
    rungs = torch.tensor([0.0, 1.0, 2.0, 5.0, 9.0])[choice]
    moved = grid_value(torch.clamp(grid_position(start, fmt) + rungs, *index_range(fmt)), fmt)
    grads = torch.where(torch.rand(n, generator=g) < 0.8, 1.0, 0.0)
    results = []
    for sample in (None, 1 << 15):  # a quarter of the entries: tolerances are about 4 sigma
        w = param(start)
        diag = UpdateDiagnostics({"w": (w, fmt, None)}, sample=sample)
        results.append(toy_step(diag, {}, {"w": grads.tolist()}, {"w": moved.tolist()}))
    exact, sampled = results
    for key in ("flips", "attempted", "ulps_moved_hist.1", "ulps_moved_hist.2-3"):
        assert sampled[f"update.w.{key}"] == pytest.approx(exact[f"update.w.{key}"], rel=0.06)
    for key in ("stall_ratio", "bitpos_mean"):
        assert sampled[f"update.w.{key}"] == pytest.approx(exact[f"update.w.{key}"], rel=0.03)


def test_rank_stats_of_known_matrices_and_critical_warning():
    diag = UpdateDiagnostics({
        "h.0.attn.c_proj": (param(torch.diag(torch.tensor([3.0, 4.0]))), None, None),
        "h.0.mlp.c_fc": (param(torch.ones(3, 5)), None, None),  # rank 1, but not a critical layer
        "h.0.ln_1": (param(torch.ones(4)), None, None),  # not a matrix: skipped
    })
    ranks, warnings = diag.rank_stats()
    assert ranks["rank.h.0.attn.c_proj.stable"] == pytest.approx(25 / 16)
    share = np.array([4 / 7, 3 / 7])
    assert ranks["rank.h.0.attn.c_proj.effective"] == pytest.approx(math.exp(-(share * np.log(share)).sum()))
    assert ranks["rank.h.0.attn.c_proj.spectral_norm"] == pytest.approx(4.0)
    assert ranks["rank.h.0.mlp.c_fc.stable"] == pytest.approx(1.0)
    assert ranks["rank.h.0.mlp.c_fc.effective"] == pytest.approx(1.0, abs=1e-3)
    assert "rank.h.0.ln_1.stable" not in ranks
    assert len(warnings) == 1 and warnings[0].startswith("h.0.attn.c_proj")


# --- GridOptim ------------------------------------------------------------------------------


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("rungs", [0.3, -1.7])
def test_grid_optim_stochastic_rungs_are_unbiased(rungs, compile):
    """From 1.0 in E5M2 the step above is 0.25 and the one below 0.125: the target sits `rungs`
    grid points away. The mean move must be `rungs` within 4 sigma (about 0.01): rounding to
    nearest (0 or -2) fails, and so does using the upward ULP for a downward move (-0.85).
    Compiled, the draws come from the counter hash: the same bound holds."""
    fmt, n = get_format("e5m2"), 40000
    spacing = 0.25 if rungs > 0 else 0.125
    w = param(torch.ones(n))
    optimizer = GridOptim([{"params": [w], "fmt": fmt}], lr=1.0, momentum=0.0, lr_gain=1.0, weight_decay=0.0,
                          seed=0, compile=compile)
    w.grad = torch.full((n,), -rungs * spacing)
    optimizer.step()
    moved = grid_position(w.detach(), fmt) - grid_position(torch.tensor(1.0), fmt)
    assert set(moved.unique().tolist()) == {math.floor(rungs), math.ceil(rungs)}
    assert abs(moved.mean().item() - rungs) < 0.01
    assert optimizer.state[w]["flips"] == torch.count_nonzero(moved)
    assert optimizer.state[w]["attempted"] == n


@pytest.mark.parametrize("compile, strided", [(False, False), (True, False), (True, True)],
                         ids=["eager", "fused", "torch.compile"])
def test_grid_optim_counts_each_weight_of_any_size(compile, strided):
    """Whole-rung targets move deterministically, so the counts are known: 2 rungs up for the
    first k entries, none for the rest. Sizes shrink, then grow. Strided weights do not fit the
    C move, so compiled they take torch.compile's, GridOptim's path on GPUs: its flag buffer
    shared by all weights is sliced, then reallocated."""
    fmt = get_format("e4m3")  # at 1.0 the step is 1/8
    weights = [torch.nn.Parameter(torch.ones(n, 2)[:, 0] if strided else torch.ones(n)) for n in (300, 7, 1000)]
    optimizer = GridOptim([{"params": weights, "fmt": fmt}], lr=1.0, momentum=0.0, lr_gain=1.0, weight_decay=0.0,
                          compile=compile)
    for w, k in zip(weights, (120, 3, 999)):
        w.grad = torch.cat([torch.full((k,), -0.25), torch.zeros(w.numel() - k)])
    optimizer.step()
    for w, k in zip(weights, (120, 3, 999)):
        assert (int(optimizer.state[w]["attempted"]), int(optimizer.state[w]["flips"])) == (k, k)
        assert torch.equal(w.detach()[:k], torch.full((k,), 1.25)) and (w.detach()[k:] == 1).all()


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("name", ["e5m2", "e4m3", "e3m4"])
def test_grid_optim_rung_clip_at_the_grid_edges_stays_finite(name, compile):
    fmt = get_format(name)
    top, below_top = fmt.max_value, fmt.grid()[-2].item()
    start = torch.tensor([top, -top, top, 1.0, 1.0, 1.0, below_top])
    w = param(start)
    optimizer = GridOptim([{"params": [w], "fmt": fmt}], lr=1.0, momentum=0.0, lr_gain=1.0, weight_decay=0.0,
                          rung_clip=2.0, seed=0, compile=compile)
    w.grad = torch.tensor([-1e30, 1e30, 1e30, -math.inf, math.nan, math.inf, -1e30])
    optimizer.step()
    rung = grid_position(w.detach(), fmt) - grid_position(start, fmt)
    assert torch.isfinite(w).all()
    assert rung.tolist() == [0, 0, -2, 2, 0, -2, 1]  # pinned at ±max, clipped to 2, NaN: no move
    assert (int(optimizer.state[w]["attempted"]), int(optimizer.state[w]["flips"])) == (4, 4)

    w = param([top, -top])
    unclipped = GridOptim([{"params": [w], "fmt": fmt}], lr=1.0, momentum=0.0, lr_gain=1.0, weight_decay=0.0,
                          compile=compile)
    w.grad = torch.tensor([-math.inf, math.inf])
    unclipped.step()
    assert w.tolist() == [top, -top]


MOVE_FORMATS = [get_format(n) for n in ("e4m3", "e5m2", "e0m7", "e7m0", "bf16")] + [FloatFormat(3, 4, signed=False)]


def move_inputs(fmt, scale_kind, seed=0):
    """Weights over the whole range plus its edges (±0, ±max, beyond max, tiny), gradients with
    NaN and ±inf, random momentum; a scale that is absent, one non-power-of-two value, or one
    power of two per entry. An odd size, so that the threads' ranges end mid-vector."""
    g, n = torch.Generator().manual_seed(seed), 20011
    scale = {"none": None, "tensor": torch.tensor(3.0),
             "per-entry": torch.exp2(torch.randint(-3, 4, (n,), generator=g).float())}[scale_kind]
    grid_units = torch.randn(n, generator=g) * min(fmt.max_value, 1e30) / 4
    grid_units[:8] = torch.tensor([0.0, -0.0, fmt.max_value, -fmt.max_value, 2 * fmt.max_value, 1e-30, -1e-30, 0.7])
    p = grid_units if scale is None else grid_units / scale
    grad = torch.randn(n, generator=g) * p.abs().mean()
    grad[8:11] = torch.tensor([math.nan, math.inf, -math.inf])
    return p, torch.randn(n, generator=g), grad, scale


@pytest.mark.parametrize("fmt", MOVE_FORMATS, ids=str)
@pytest.mark.parametrize("scale_kind", ["none", "tensor", "per-entry"])
def test_fused_cpu_move_is_move_on_grid_bit_for_bit(fmt, scale_kind):
    """grid_move.c (GridOptim(compile=True) on CPU) against move_on_grid fed the same hash keys:
    weights, momentum and counts identical bit for bit, clipped and unclipped. For two cases also
    against move_on_grid under torch.compile (GridOptim's path on GPUs)."""
    p, buf, grad, scale = move_inputs(fmt, scale_kind)
    movers = [move_on_grid, grid_move_cpu.move_on_grid_cpu]
    if (str(fmt), scale_kind) in (("e4m3", "per-entry"), ("e7m0", "none")):
        compiled = torch.compile(move_on_grid, dynamic=True)
        movers.append(lambda *args: compiled(*args, torch.empty_like(p)))
    for clip in (2.0, math.inf):
        hyper, keys = torch.tensor([0.3, 0.9, 0.997, clip]), draw_key(torch.Generator().manual_seed(1), "cpu")
        results = []
        for move in movers:
            moved_p, moved_buf = p.clone(), buf.clone()
            counts = move(moved_p, moved_buf, grad, scale, hyper, keys, fmt)
            results.append((moved_p.view(torch.int32), moved_buf.view(torch.int32), [int(c) for c in counts]))
        reference = results[0]
        assert 0 < reference[2][1] <= reference[2][0] <= p.numel()  # weights move
        for result in results[1:]:
            assert torch.equal(result[0], reference[0]) and torch.equal(result[1], reference[1])
            assert result[2] == reference[2]


@pytest.mark.parametrize("compiler, problem", [("no-such-cc", "C compiler 'no-such-cc' not found"),
                                               ("false", r"building grid_move.c with 'false' failed \(exit 1\)")])
def test_fused_cpu_move_without_a_working_compiler_fails_at_construction_naming_the_fix(monkeypatch, compiler, problem):
    monkeypatch.setenv("CC", compiler)
    grid_move_cpu.library.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=f"(?s){problem}.*install a C compiler.*train.compile: false"):
            GridOptim([{"params": [param(torch.ones(4))], "fmt": get_format("e4m3")}], lr=1.0, compile=True)
    finally:
        grid_move_cpu.library.cache_clear()  # the next test builds with the restored CC


def make_grid_run(start, seed, compile=False):
    w = param(start)
    fmt = get_format("e4m3")
    optimizer = GridOptim([{"params": [w], "fmt": fmt, "scale": constant_scale(2.0)}],
                          lr=0.05, momentum=0.9, rung_clip=3.0, weight_decay=0.1, seed=seed, compile=compile)
    return w, optimizer


def run_steps(w, optimizer, grads):
    for grad in grads:
        w.grad = grad.clone()
        optimizer.step()


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_grid_optim_is_deterministic_and_resumes_exactly_from_state_dict(compile):
    g = torch.Generator().manual_seed(0)
    start = torch.randn(500, generator=g) * 10
    grads = [torch.randn(500, generator=g) for _ in range(6)]

    a, b, c = (make_grid_run(start, seed, compile) for seed in (0, 0, 1))
    for w, optimizer in (a, b, c):
        run_steps(w, optimizer, grads)
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])

    w, optimizer = make_grid_run(start, seed=0, compile=compile)
    run_steps(w, optimizer, grads[:3])
    buffer = io.BytesIO()
    torch.save({"w": w.detach().clone(), "optimizer": optimizer.state_dict()}, buffer)  # the scale lambda is left out
    assert "scale" not in optimizer.state_dict()["param_groups"][0]
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)
    resumed_w, resumed = make_grid_run(saved["w"], seed=123, compile=compile)  # its own seed is overwritten by the state
    live_scale = resumed.param_groups[0]["scale"]
    resumed.load_state_dict(saved["optimizer"])
    assert resumed.param_groups[0]["scale"] is live_scale
    run_steps(resumed_w, resumed, grads[3:])
    assert torch.equal(resumed_w, a[0])


def test_compiled_grid_projection_rounds_to_nearest_as_eager_does():
    fmt, g = get_format("e4m3"), torch.Generator().manual_seed(0)
    start = torch.randn(5000, generator=g) * 0.05
    projected = []
    for compile in (False, True):
        w = param(start.clone())
        project_to_grid([{"params": [w], "fmt": fmt, "scale": constant_scale(64.0)}], compile=compile)
        projected.append(w.detach())
    assert torch.equal(projected[0], projected[1]) and torch.equal(projected[0], quantize(start * 64, fmt) / 64)


@pytest.mark.parametrize("compile", [False, True], ids=["eager", "compiled"])
def test_grid_projection_resumes_exactly(compile):
    fmt, g = get_format("e5m2"), torch.Generator().manual_seed(0)
    start, grads = torch.randn(200, generator=g), [torch.randn(200, generator=g) for _ in range(4)]

    def make(w0):
        w = param(w0)
        optimizer = ManifoldAdamW([{"params": [w], "fmt": fmt}], lr=0.3)
        GridProjection.attach(optimizer, "stochastic", seed=7, compile=compile)
        return w, optimizer

    w, optimizer = make(start)
    run_steps(w, optimizer, grads)
    w2, optimizer2 = make(start)
    run_steps(w2, optimizer2, grads[:2])
    state = copy.deepcopy(optimizer2.state_dict())
    w3, optimizer3 = make(w2.detach())
    optimizer3.load_state_dict(state)
    run_steps(w3, optimizer3, grads[2:])
    assert torch.equal(w3, w)


# --- build_optimizer and the safety measures ------------------------------------------------


@pytest.mark.parametrize("name, master, cls", [
    ("adamw", "fp32", torch.optim.AdamW),
    ("adamw", "grid", torch.optim.AdamW),
    ("manifold_adamw", "grid", ManifoldAdamW),
    ("grid", "fp32", GridOptim),
])
def test_build_optimizer_from_config(name, master, cls):
    cfg = RunConfig().with_overrides({"optimizer.name": name, "optimizer.master_weights": master})
    fmt = get_format("e4m3")
    w, bias = param(torch.randn(8, 4) * 0.1), param(torch.zeros(4))
    model_groups = [{"params": [w], "fmt": fmt, "scale": constant_scale(512.0)},
                    {"params": [bias], "weight_decay": 0.0}]
    optimizer = build_optimizer(model_groups, cfg.optimizer, cfg.train)
    assert type(optimizer) is cls and "lr" not in model_groups[0]
    # every group of every arm carries the AdamW control's lr (the schedule sets it each step)
    assert [g["lr"] for g in optimizer.param_groups] == [cfg.train.lr] * 2
    assert optimizer.param_groups[0]["weight_decay"] == cfg.train.weight_decay
    assert optimizer.param_groups[1]["weight_decay"] == 0.0
    w.grad, bias.grad = torch.randn(8, 4), torch.randn(4)
    optimizer.step()
    on_grid = torch.equal(w.detach(), quantize(w.detach() * 512.0, fmt) / 512.0)
    assert on_grid == (master == "grid" or name == "grid")


def test_partition_relative_clip_limits_rms_to_the_grid_top():
    fmt = get_format("e4m3")  # max 448; scale 2: the grid's top is 224 in real units
    loud, quiet, plain = param(torch.zeros(4)), param(torch.zeros(4)), param(torch.zeros(4))
    loud.grad, quiet.grad, plain.grad = torch.full((4,), 1000.0), torch.ones(4), torch.full((4,), 1e6)
    groups = [{"params": [loud, quiet], "fmt": fmt, "scale": constant_scale(2.0)}, {"params": [plain]}]
    clipped = partition_relative_clip(groups, threshold=0.5)
    assert clipped.item() == 1
    torch.testing.assert_close(loud.grad, torch.full((4,), 112.0))  # RMS = 0.5 * 224
    assert torch.equal(quiet.grad, torch.ones(4)) and torch.equal(plain.grad, torch.full((4,), 1e6))


def test_mantissa_shift_ladder_and_policy():
    ladder = ("e5m2", "e4m3", "e3m4", "e2m5", "e1m6", "e0m7")
    names = [one_more_mantissa_bit(get_format(n), scaling="none") for n in ladder]
    assert [f.name if f else None for f in names] == ["e4m3", "e3m4", "e2m5", "e1m6", "e0m7", None]
    # under amax scaling e1m6 -> e0m7 changes nothing (the same grid times 4): the ladder ends at e1m6
    for scaling in ("delayed", "current", "block"):
        names = [one_more_mantissa_bit(get_format(n), scaling) for n in ladder]
        assert [f.name if f else None for f in names] == ["e4m3", "e3m4", "e2m5", "e1m6", None, None]
    assert one_more_mantissa_bit(get_format("bf16")) is None  # the baseline does not shift
    off_ladder = one_more_mantissa_bit(FloatFormat(4, 3, specials="ieee"))
    assert (off_ladder.exp_bits, off_ladder.man_bits, off_ladder.specials) == (3, 4, "ieee")

    policy = MantissaShift({"a": get_format("e5m2"), "b": get_format("e5m2")}, threshold=0.9, patience=3)
    stalled = {"update.a.stall_ratio": 0.95, "update.b.stall_ratio": 0.5}
    assert policy.observe(1, stalled) == [] and policy.observe(2, stalled) == []
    state = copy.deepcopy(policy.state_dict())
    (event,) = policy.observe(3, stalled)
    assert (event["layer"], event["reason"], event["from"], event["to"]) == ("a", "stall", "e5m2", "e4m3")
    assert policy.formats["a"].name == "e4m3" and policy.observe(4, stalled) == []  # streak restarts
    copied = MantissaShift({}, threshold=0.9, patience=3)
    copied.load_state_dict(json.loads(json.dumps(policy.state_dict())))  # plain values: checkpoint-safe
    assert copied.formats == policy.formats and copied.bad_streak == policy.bad_streak
    policy.load_state_dict(state)
    nan = {**stalled, "update.b.grad_nonfinite": 1.0, "update.b.stall_ratio": math.nan}
    assert policy.observe(3, nan)[0]["reason"] == "stall"  # a's third stalled observation
    policy.observe(4, nan)
    (event,) = policy.observe(5, nan)
    assert (event["layer"], event["reason"]) == ("b", "nonfinite")
