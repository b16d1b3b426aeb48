"""The fair comparison (DESIGN.md): geometry-aware arms step-matched to their AdamW control.

ULPs measured on the side a step goes, step sizes calibrated to AdamW's, one real-unit weight
decay, AdamW wherever there is no grid, the floor that lets ULP-scaled weights cross zero, the
sign-change diagnostic, and what a run records about its calibration.
"""

import math

import pandas as pd
import pytest
import torch
from test_optim import constant_scale, param, toy_step
from test_trainer import corpus, tiny_config  # noqa: F401 (corpus is a fixture)

from altgrad.optim import (
    DEFAULT_MIN_STIFFNESS,
    GridProjection,
    ManifoldAdamW,
    ManifoldSGD,
    UpdateDiagnostics,
    build_optimizer,
    calibration_record,
    grid_position,
    grid_value,
    stiffness,
)
from altgrad.quantization import get_format, quantize
from altgrad.training.config import RunConfig
from altgrad.training.trainer import train

ARM_FORMATS = ["e5m2", "e4m3", "e3m4", "e7m0"]


def amax_scale(w: torch.Tensor, fmt) -> torch.Tensor:
    """The power-of-two scale that puts |w|'s max just under the format's max (amax scaling)."""
    return torch.exp2(torch.floor(torch.log2(fmt.max_value / w.abs().max())))


# --- direction-aware ULPs -------------------------------------------------------------------


def one_ulp_optimizer(kind: str, groups):
    """lr = 1 ULP, uncalibrated, no floor. With betas 0.5 / 0.75, eps 0 and |g| = 1 Adam's first
    direction is exactly ±1 (m = g/2, sqrt(v) = 1/2 and both bias corrections are powers of two)."""
    if kind == "manifold_adamw":
        return ManifoldAdamW(groups, lr=1.0, betas=(0.5, 0.75), eps=0.0, weight_decay=0.0, lr_gain=1.0,
                             min_stiffness=0.0)
    return ManifoldSGD(groups, lr=1.0, momentum=0.0, min_stiffness=0.0)


@pytest.mark.parametrize("kind", ["manifold_adamw", "manifold_sgd"])
@pytest.mark.parametrize("master", ["fp32", "grid"])
@pytest.mark.parametrize("scale", [1.0, 2.0**12], ids=["scale1", "scale4096"])
@pytest.mark.parametrize("name", ARM_FORMATS)
def test_a_one_ulp_step_from_every_grid_value_lands_on_its_neighbour(name, scale, master, kind):
    """From every grid value (both signs and zero), one ULP up and one ULP down land on the
    adjacent grid value. Toward zero from a power of two the step is the spacing below, half
    the one above (e5m2: 1.0 -> 0.875, not 0.75; e7m0: 2^k -> 2^(k-1), not 0); from zero it is
    the smallest subnormal. Outward from ±max the grid has no value: stored on the grid
    (GridProjection) the weight saturates at ±max, an fp32 master weight takes the top binade's
    step (stiffness continues it beyond max). UpdateDiagnostics counts every move as one rung."""
    fmt = get_format(name)
    grid = fmt.grid()  # ascending, one zero
    top_step = 2.0 ** (math.floor(math.log2(fmt.max_value)) - fmt.man_bits)
    beyond = fmt.max_value if master == "grid" else fmt.max_value + top_step
    upward = torch.cat([grid[1:], torch.tensor([beyond])])
    downward = torch.cat([torch.tensor([-beyond]), grid[:-1]])
    for gradient, neighbours in ((-1.0, upward), (1.0, downward)):
        w = param(grid / scale)
        optimizer = one_ulp_optimizer(kind, [{"params": [w], "fmt": fmt, "scale": constant_scale(scale)}])
        if master == "grid":
            GridProjection.attach(optimizer, "nearest", seed=0)
        diag = UpdateDiagnostics({"w": (w, fmt, constant_scale(scale))}, sample=None)
        w.grad = torch.full_like(w, gradient)
        diag.before_step()
        optimizer.step()
        metrics = diag.after_step()
        assert torch.equal(w.detach() * scale, neighbours)
        assert metrics["update.w.ulps_moved_hist.1"] == grid.numel() - 1  # all but ±max outward
        assert metrics["update.w.ulps_moved_hist.0"] == 1


def test_stiffness_reads_only_the_steps_sign_and_floors_in_grid_units():
    """The side of the step comes from signs alone: an update so small that w * update would
    underflow float32 still steps down from e7m0's 2^-49 by 2^-50. The floor is in grid units
    (w * scale), at most the top binade's step."""
    e7m0, e5m2 = get_format("e7m0"), get_format("e5m2")
    w = torch.tensor([2.0**-49, 2.0**-49])
    assert stiffness(w, e7m0, update=torch.tensor([1e-30, -1e-30])).tolist() == [2.0**-50, 2.0**-49]
    w, scale = torch.tensor([0.0, 2.0, -8.0]) / 8, torch.tensor(8.0)  # grid values 0, 2, -8
    assert stiffness(w, e5m2, scale, floor=0.25).tolist() == [0.25 / 8, 0.5 / 8, 2.0 / 8]
    assert stiffness(w, e5m2, scale, floor=1e9).max().item() == 8192.0 / 8  # the top binade's step


# --- calibrated arms ------------------------------------------------------------------------


def test_calibrated_manifold_adamw_on_e0m7_is_adamw():
    """The null control. E0M7 is one binade: S = 2^-7 / scale everywhere (zero and beyond ±max
    included), so calibration gives c = 1 / S and ManifoldAdamW takes AdamW's steps, weight
    decay included, with the default floor (a fraction below 1 of a constant S never binds)."""
    fmt, scale = get_format("e0m7"), 4.0
    w0 = torch.linspace(-0.3, 0.3, 41)  # the grid covers ±127/512: zero, inside and beyond
    assert torch.all(stiffness(w0, fmt, torch.tensor(scale)) == 2.0**-7 / scale)
    ours_w, adamw_w = param(w0), param(w0)
    kwargs = dict(lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    ours = ManifoldAdamW([{"params": [ours_w], "fmt": fmt, "scale": constant_scale(scale)}], **kwargs)
    adamw = torch.optim.AdamW([adamw_w], **kwargs)
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        ours_w.grad = torch.randn(41, generator=g)
        adamw_w.grad = ours_w.grad.clone()
        ours.step()
        adamw.step()
        torch.testing.assert_close(ours_w, adamw_w, rtol=1e-6, atol=1e-9)
    assert ours.state[ours_w]["lr_gain"] == 2.0**7 * scale
    assert not torch.equal(ours_w, param(w0))


def test_the_null_control_holds_while_the_amax_scale_moves():
    """As a layer's amax grows its scale halves and E0M7's grid spacing in real units doubles.
    Calibrated ManifoldAdamW still takes AdamW's steps: the gain is matched at every step, so a
    drifting scale cannot act as a hidden lr change."""
    fmt = get_format("e0m7")
    scales = iter([8.0, 8.0, 4.0, 2.0, 2.0, 0.5])
    current = {"scale": 8.0}
    ours_w, adamw_w = param(torch.linspace(-0.1, 0.1, 33)), param(torch.linspace(-0.1, 0.1, 33))
    kwargs = dict(lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    ours = ManifoldAdamW([{"params": [ours_w], "fmt": fmt, "scale": lambda: torch.tensor(current["scale"])}],
                         **kwargs)
    adamw = torch.optim.AdamW([adamw_w], **kwargs)
    g = torch.Generator().manual_seed(1)
    for scale in scales:
        current["scale"] = scale
        ours_w.grad = torch.randn(33, generator=g)
        adamw_w.grad = ours_w.grad.clone()
        ours.step()
        adamw.step()
        torch.testing.assert_close(ours_w, adamw_w, rtol=1e-6, atol=1e-9)
    assert ours.state[ours_w]["lr_gain"] == 2.0**7 * 8.0  # the record: step 0's gain


@pytest.mark.parametrize("name", ARM_FORMATS)
def test_calibrated_manifold_adamw_matches_adamws_rms_step_at_every_step(name):
    """Not only at step 0: each step's RMS real-unit move equals AdamW's on the same gradients."""
    fmt = get_format(name)
    w0 = torch.randn(64, 32, generator=torch.Generator().manual_seed(2)) * 0.02
    scale = amax_scale(w0, fmt)
    ours_w, adamw_w = param(w0), param(w0)
    kwargs = dict(lr=3e-3, betas=(0.9, 0.95), weight_decay=0.0)
    ours = ManifoldAdamW([{"params": [ours_w], "fmt": fmt, "scale": constant_scale(scale.item())}], **kwargs)
    adamw = torch.optim.AdamW([adamw_w], **kwargs)
    g = torch.Generator().manual_seed(3)
    for _ in range(8):
        grad = torch.randn(64, 32, generator=g) * 1e-3 + 5e-4  # a steady part and noise
        before_ours, before_adamw = ours_w.detach().clone(), adamw_w.detach().clone()
        ours_w.grad, adamw_w.grad = grad.clone(), grad.clone()
        ours.step()
        adamw.step()
        assert rms(ours_w.detach() - before_ours) == pytest.approx(rms(adamw_w.detach() - before_adamw), rel=1e-3)
        adamw_w.data.copy_(ours_w.detach())  # compare steps from the same weights


def gridded_layers(fmt, seed=0):
    """Two N(0, 0.02) layers on fmt's grid, each with its amax scale, and their gradients."""
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for name, shape in (("a", (48, 32)), ("b", (32, 80))):
        w = torch.randn(shape, generator=g) * 0.02
        scale = amax_scale(w, fmt)
        layers[name] = (quantize(w * scale, fmt) / scale, scale, torch.randn(shape, generator=g) * 1e-3)
    return layers


def build(overrides: dict, layers: dict, fmt, extra_groups=()):
    """The optimizer build_optimizer makes from a run config with these dotted overrides, over
    fresh copies of the layers (gridded groups, with their scales) and any extra groups."""
    cfg = RunConfig().with_overrides(overrides)
    weights = {name: param(w0) for name, (w0, _, _) in layers.items()}
    groups = [{"params": [weights[name]], "fmt": fmt, "scale": constant_scale(scale.item())}
              for name, (_, scale, _) in layers.items()]
    return build_optimizer(groups + list(extra_groups), cfg.optimizer, cfg.train), weights


def step_with(optimizer, weights: dict, layers: dict) -> None:
    for layer, (_, _, grad) in layers.items():
        weights[layer].grad = grad.clone()
    optimizer.step()


def rms(x: torch.Tensor) -> float:
    return x.double().square().mean().sqrt().item()


@pytest.mark.parametrize("name", ARM_FORMATS)
def test_calibrated_arms_take_adamws_rms_step_per_layer_at_step_0(name):
    """Built from a run config (ulp_lr, grid_lr null), each layer's RMS real-unit step at step
    0 is AdamW's: ManifoldAdamW's actual step; GridOptim's intended move lr * c * m_hat (rungs x
    ULP before the stochastic rounding), which every weight's move brackets on the grid."""
    fmt, lr = get_format(name), 3e-3
    layers = gridded_layers(fmt)
    steps = {}
    for arm in ("adamw", "manifold_adamw", "grid"):
        optimizer, weights = build({"optimizer.name": arm, "train.lr": lr, "train.weight_decay": 0.0}, layers, fmt)
        step_with(optimizer, weights, layers)
        steps[arm] = {layer: weights[layer].detach() - w0 for layer, (w0, _, _) in layers.items()}
        if arm == "grid":
            record = calibration_record(optimizer, {w: layer for layer, w in weights.items()}, lr)
            assert record["mode"] == "calibrated"
            intended = {layer: -record["lr"][layer] * grad for layer, (_, _, grad) in layers.items()}
    for layer, (w0, scale, _) in layers.items():
        adamw = rms(steps["adamw"][layer])
        assert rms(steps["manifold_adamw"][layer]) == pytest.approx(adamw, rel=1e-4)
        assert rms(intended[layer]) == pytest.approx(adamw, rel=1e-5)
        target = grid_position((w0 + intended[layer]) * scale, fmt)
        below, above = (grid_value(torch.floor(target), fmt) / scale, grid_value(torch.ceil(target), fmt) / scale)
        moved = w0 + steps["grid"][layer]
        assert torch.all((below <= moved) & (moved <= above))
        assert 0.2 < (steps["grid"][layer] != 0).float().mean() < 1  # a real, partly rounded-away move


@pytest.mark.parametrize("arm", ["grid", "manifold_adamw"])
def test_parameters_without_a_grid_step_exactly_as_adamw(arm):
    """Embeddings, norms, biases: the arm steps them with torch AdamW's ops, its lr, betas,
    eps, weight decay and no-decay group, so they are AdamW's bit for bit, moments included."""
    fmt, g = get_format("e4m3"), torch.Generator().manual_seed(1)
    layers = gridded_layers(fmt)
    matrix, vector = torch.randn(16, 8, generator=g), torch.randn(8, generator=g)
    copies = {}
    for name in ("adamw", arm):
        m, v = param(matrix), param(vector)
        extra = [{"params": [m]}, {"params": [v], "weight_decay": 0.0}]
        copies[name] = (m, v, *build({"optimizer.name": name}, layers, fmt, extra))
    for _ in range(5):
        grads = (torch.randn(16, 8, generator=g), torch.randn(8, generator=g))
        for m, v, optimizer, weights in copies.values():
            m.grad, v.grad = grads[0].clone(), grads[1].clone()
            step_with(optimizer, weights, layers)
    (m_ref, v_ref, adamw, _), (m, v, ours, _) = copies["adamw"], copies[arm]
    for ours_p, ref_p in ((m, m_ref), (v, v_ref)):
        assert torch.equal(ours_p, ref_p)
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(ours.state[ours_p][key], adamw.state[ref_p][key])
    assert not torch.equal(m, param(matrix))


def test_weight_decay_is_the_same_real_unit_decay_in_every_arm():
    """w <- w (1 - lr * wd) per step in every arm, gridded or not (not ULP-scaled, not at another
    lr). Zero gradients isolate the decay; lr * wd = 1/8 maps the e5m2 powers of two on 7/8 of
    themselves, grid values, so GridOptim's rounding is deterministic too."""
    fmt = get_format("e5m2")
    w0 = torch.tensor([2.0, -4.0, 0.5, 8.0, -0.25])
    layers = {"a": (w0, torch.tensor(1.0), torch.zeros(5))}
    results = {}
    for arm in ("adamw", "manifold_adamw", "grid"):
        plain = param(w0)
        overrides = {"optimizer.name": arm, "train.lr": 0.5, "train.weight_decay": 0.25}
        optimizer, weights = build(overrides, layers, fmt, [{"params": [plain]}])
        plain.grad = torch.zeros(5)
        step_with(optimizer, weights, layers)
        results[arm] = (weights["a"].detach().clone(), plain.detach().clone())
        if arm != "adamw":  # a zero gradient moves nothing whatever the gain: calibrated at the first step that moves
            assert "lr_gain" not in optimizer.state[weights["a"]]
            weights["a"].grad = torch.ones(5)
            optimizer.step()
            assert optimizer.state[weights["a"]]["lr_gain"] > 0
    for gridded, plain in results.values():
        assert torch.equal(gridded, w0 * 0.875) and torch.equal(plain, w0 * 0.875)


@pytest.mark.parametrize("arm, key", [("manifold_adamw", "ulp_lr"), ("grid", "grid_lr")])
def test_an_explicit_ulp_or_grid_lr_is_an_uncalibrated_run_at_that_peak_lr(arm, key):
    """optimizer.ulp_lr / grid_lr set: every weight's gain is that lr over train.lr, the run is
    labelled uncalibrated, and (no floor) a ManifoldAdamW weight moves that many ULPs at the
    schedule's peak lr: 0.5 rung, toward zero from a power of two too."""
    fmt = get_format("e4m3")
    layers = gridded_layers(fmt)
    overrides = {"optimizer.name": arm, f"optimizer.{key}": 0.5, "optimizer.min_stiffness": 0.0,
                 "train.weight_decay": 0.0}
    optimizer, weights = build(overrides, layers, fmt)
    step_with(optimizer, weights, layers)
    names = {w: layer for layer, w in weights.items()}
    peak = RunConfig().train.lr
    assert calibration_record(optimizer, names, peak) == {"mode": "uncalibrated", "lr": {"a": 0.5, "b": 0.5}}
    if arm == "manifold_adamw":
        for layer, (w0, scale, grad) in layers.items():
            rungs = (grid_position(weights[layer].detach() * scale, fmt) - grid_position(w0 * scale, fmt)).abs()
            adam_first_step = grad.abs() / (grad.abs() + 1e-8)  # |u|: m_hat = g, sqrt(v_hat) = |g|
            torch.testing.assert_close(rungs, 0.5 * adam_first_step, rtol=0, atol=1e-4)


def test_calibration_record_of_a_calibrated_arm_and_of_adamw():
    fmt = get_format("e5m2")
    layers = gridded_layers(fmt)
    for arm in ("adamw", "manifold_adamw"):
        optimizer, weights = build({"optimizer.name": arm}, layers, fmt)
        names = {w: layer for layer, w in weights.items()}
        assert calibration_record(optimizer, names, 1e-3) == {"mode": "none" if arm == "adamw" else "calibrated",
                                                              "lr": {}}  # nothing calibrated before a step
        step_with(optimizer, weights, layers)
    record = calibration_record(optimizer, names, 1e-3)
    assert record["lr"] == {layer: 1e-3 * optimizer.state[w]["lr_gain"] for w, layer in names.items()}


# --- crossing zero --------------------------------------------------------------------------


def steps_to_cross_zero(name: str | None, min_stiffness: float = 0.0, limit: int = 100) -> int | None:
    """Steps until the weight at 0.02 of an N(0, 0.02) layer (4096, amax scale, fp32 master
    weights) is below zero under a steady gradient +1, the others' gradients random: calibrated
    ManifoldAdamW on format `name`, or AdamW (None), lr 3e-3. None: not within `limit`."""
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(4096, generator=g) * 0.02
    w0[0] = 0.02
    w = param(w0)
    if name is None:
        optimizer = torch.optim.AdamW([w], lr=3e-3, weight_decay=0.0)
    else:
        fmt = get_format(name)
        group = {"params": [w], "fmt": fmt, "scale": constant_scale(amax_scale(w0, fmt).item())}
        optimizer = ManifoldAdamW([group], lr=3e-3, weight_decay=0.0, min_stiffness=min_stiffness)
    for step in range(1, limit + 1):
        w.grad = torch.randn(4096, generator=g)
        w.grad[0] = 1.0
        optimizer.step()
        if w[0] < 0:
            return step
    return None


@pytest.mark.parametrize("name", ARM_FORMATS)
def test_the_default_floor_lets_ulp_scaled_weights_cross_zero(name):
    """DEFAULT_MIN_STIFFNESS's measurement, kept honest: with it a weight crosses zero from 0.02
    within 4x AdamW's steps on every format (without it e5m2 takes 205 and e7m0, whose step
    toward zero halves with the weight, never crosses), while fewer than 10% of an N(0, 0.02)
    layer's weights take the floor rather than their grid's spacing at step 0."""
    adamw = steps_to_cross_zero(None)
    assert adamw == 7
    assert steps_to_cross_zero(name, DEFAULT_MIN_STIFFNESS) <= 4 * adamw
    if name in ("e5m2", "e7m0"):
        floorless = steps_to_cross_zero(name)
        assert floorless is None or floorless > 10 * adamw
    fmt, w = get_format(name), torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 0.02
    s = stiffness(w, fmt, amax_scale(w, fmt))
    assert (s < DEFAULT_MIN_STIFFNESS * rms(s)).float().mean() < 0.1


def test_update_diagnostics_count_sign_changes_against_a_hand_computed_toy():
    """A sign change is non-zero to non-zero of the other sign: to or from zero is not one. The
    stored weight's sign counts, also below the grid's smallest step (1e-9 has code 0 in e5m2).
    A sampled layer counts its sample: every other entry flips, so every 64-block sample says 1/2."""
    fmt = get_format("e5m2")
    a_before = [0.5, -0.25, 0.0, 1.0, -1.0, 0.0, 1e-9, 2.0]
    a_after = [-0.5, -0.25, -0.125, 0.0, 0.25, 0.0, -1e-9, 3.0]  # flipped: 0.5, -1.0, 1e-9
    b_before, b_after = [1.0, 2.0, -3.0, 4.0], [1.0, -2.0, -3.0, 4.0]  # flipped: 2.0
    c_before = torch.linspace(0.1, 1.0, 4096)
    c_after = torch.where(torch.arange(4096) % 2 == 0, -c_before, c_before)
    weights = {"a": param(a_before), "b": param(b_before), "c": param(c_before)}
    diag = UpdateDiagnostics({name: (w, fmt, None) for name, w in weights.items()}, sample=1024)
    assert "c" in diag.sample_blocks and "a" not in diag.sample_blocks
    m = toy_step(diag, {}, {"a": [1.0] * 8, "b": [1.0] * 4, "c": [1.0] * 4096},
                 {"a": a_after, "b": b_after, "c": c_after.tolist()})
    assert m["update.a.sign_changes"] == 3 / 8
    assert m["update.b.sign_changes"] == 1 / 4
    assert m["update.c.sign_changes"] == 1 / 2
    assert m["update.sign_changes"] == (3 + 1 + 2048) / (8 + 4 + 4096)


# --- what a run records ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("arm, overrides, mode", [
    ("manifold_adamw", {}, "calibrated"),
    ("grid", {"optimizer.grid_lr": 0.01}, "uncalibrated"),
    ("adamw", {}, "none"),
])
def test_a_run_records_its_calibration(corpus, tmp_path, arm, overrides, mode):  # noqa: F811 (fixture)
    """summary.json's "calibration" block and step 0's calib.<layer> columns: per quantized
    layer (the trainer's names) its lr at the schedule's peak, in ULPs per step for ManifoldAdamW."""
    cfg = tiny_config(corpus, **{"optimizer.name": arm, "train.max_steps": 4, "train.shadow_interval": 0,
                                 "train.rank_interval": 0, **overrides})
    summary = train(cfg, tmp_path / "run", progress=False)
    steps = pd.read_parquet(tmp_path / "run" / "steps.parquet")
    record = summary["calibration"]
    assert record["mode"] == mode
    calib = {c.removeprefix("calib."): v for c, v in steps.iloc[0].items() if c.startswith("calib.")}
    assert calib == record["lr"]
    assert steps.filter(like="calib.").iloc[1:].isna().all().all()  # step 0's row only
    if mode == "none":
        assert record["lr"] == {}
        return
    assert set(record["lr"]) == {"h.0.attn.c_attn", "h.0.attn.c_proj", "h.0.mlp.c_fc", "h.0.mlp.c_proj",
                                 "h.1.attn.c_attn", "h.1.attn.c_proj", "h.1.mlp.c_fc", "h.1.mlp.c_proj"}
    if mode == "uncalibrated":
        assert set(record["lr"].values()) == {0.01}
    else:  # on e4m3 at lr 3e-3, weights ~N(0, 0.02) under amax scaling: a fraction of a ULP to a few per step
        assert all(0.05 < v < 20 for v in record["lr"].values())
