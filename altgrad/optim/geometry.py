"""Where a weight sits on its format's grid, and what a step of one grid point is worth.

A parameter group may carry its geometry: ``fmt`` (a FloatFormat, or absent/None for an
ordinary group) and ``scale`` (a zero-arg callable returning the current multiplier, or
absent/None for 1). The convention is altgrad.nn's: the grid value of a weight w is
w * scale, so the grid in real units is fmt.grid() / scale. The scale may be a scalar
tensor or anything that broadcasts against the weight.

Two coordinates on the grid, both from the float32 bit pattern (whole-tensor ops, no sync):

* `stiffness`: the grid spacing at w in real units, the "ULP" that geometry-aware steps
  are measured in: the gap to the next grid value in the direction the step goes.
* `grid_position`: a signed fractional index: k at the k-th grid value above zero, -k
  below, linear in value between neighbours. On the grid it is the code's magnitude
  bits with the sign applied, so rounding it is encoding and integer steps are rungs.

Geometry is bound to the live model, not saved: `keep_geometry_out_of_state` makes an
optimizer's state_dict leave ``fmt``/``scale`` out and keep the live ones on load (a
pickled scale callable would drag its module into the checkpoint, or replace the live
one with a stale copy on resume).
"""

from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass

import torch

from altgrad.quantization import FloatFormat, quantize
from altgrad.quantization.formats import per_format_constants
from altgrad.quantization.random_bits import draw_key

GEOMETRY_KEYS = ("fmt", "scale")
_EXP_MASK = 0x7F800000


def _pow2_bits(exponent: int) -> int:
    """The float32 bit pattern of 2^exponent (normal range)."""
    return (exponent + 127) << 23


def _float32_bits(value: float) -> int:
    """The bit pattern of a positive value rounded to float32, as an int32 (order = value order)."""
    return struct.unpack("<i", struct.pack("<f", value))[0]


@dataclass(frozen=True)
class _Layout:
    """Per-format constants for the bit arithmetic below."""

    min_normal: float  # 2^emin: the subnormal step times 2^M
    inv_min_normal: float  # 2^-emin
    min_normal_bits: int  # also the lowest binade: zero and subnormals take the subnormal step
    binade_hi_bits: int  # bits of 2^(exponent of max): above max the top step continues
    ulp_of_binade: float  # 2^-M: ulp = binade * 2^-M
    step_bits: int  # 23 - M: float32 mantissa bits below one grid step
    top_index: int  # grid position of +max
    bottom_index: int  # grid position of the lowest value (-max, or 0 when unsigned)


@per_format_constants
def _layout(fmt: FloatFormat) -> _Layout:
    if fmt.emin < -126:
        raise ValueError(f"{fmt.name}: grid geometry needs emin >= -126 (normal float32), got {fmt.emin}")
    top_exponent = max(math.frexp(fmt.max_value)[1] - 1, fmt.emin)
    positives = (fmt.num_finite - 1) // 2 if fmt.signed else fmt.num_finite - 1
    return _Layout(
        min_normal=fmt.min_normal,
        inv_min_normal=2.0**-fmt.emin,
        min_normal_bits=_pow2_bits(fmt.emin),
        binade_hi_bits=_pow2_bits(top_exponent),
        ulp_of_binade=2.0**-fmt.man_bits,
        step_bits=23 - fmt.man_bits,
        top_index=positives,
        bottom_index=-positives if fmt.signed else 0,
    )


def current_scale(scale_fn) -> torch.Tensor | None:
    """The multiplier a scale callable returns now (None means 1)."""
    return None if scale_fn is None else torch.as_tensor(scale_fn()).detach()


def group_scale(group: dict) -> torch.Tensor | None:
    return current_scale(group.get("scale"))


def to_grid_units(w: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    w = w.detach().float()
    return w if scale is None else w * scale


def stiffness(
    w: torch.Tensor, fmt: FloatFormat, scale: torch.Tensor | None = None, max_stiffness: float = 0.0,
    update: torch.Tensor | None = None, floor: float = 0.0,
) -> torch.Tensor:
    """The local ULP S at w in real units: the grid spacing next to w on the side the step goes.

    A step w <- w - lr * S * update goes toward zero where w != 0 and `update` has w's sign;
    there S is the spacing *below* |w| (the gap to the next grid value toward zero), everywhere
    else (update None, w = 0, a step away from zero) the spacing *above* |w|. The two differ
    only at a power of two 2^k above the subnormal range, where the spacing below is half the
    one above; so a 1-ULP step from a grid value lands on its neighbour in either direction
    (on E7M0, all powers of two, the step down from 2^k is 2^(k-1), not 2^k).

    Formula: 2^(clamp(floor(log2 m), emin, top) - M) / s with m = |w*s|, or, toward zero, m =
    |w*s| (1 - 2^-24): rounded to float32 that is the float just below |w*s| at a power of two
    (so its binade is the one below) and stays in |w*s|'s binade elsewhere. The clamp from
    below gives zero and the subnormal range the subnormal step 2^(emin - M); from above,
    values at or beyond max keep the top binade's step. A one-binade format (E0M7) gives the
    constant 2^-M / s.

    `floor` > 0 raises S to at least `floor` in grid units (the units of w * s: a spacing of
    the grid, wherever the scale puts it), at most to the top binade's step; `max_stiffness`
    > 0 caps S in real units. 0 = neither. A new float32 tensor.
    """
    layout = _layout(fmt)
    x = to_grid_units(w, scale)
    own_copy = scale is not None
    if update is not None:  # x (1 - 2^-24) where the step goes toward zero: x and update of one sign
        toward_zero = torch.sign(update).to(torch.float32).mul_(x).gt_(0)  # sign: x * update could underflow
        x, own_copy = torch.addcmul(x, x, toward_zero, value=-(2.0**-24), out=toward_zero), True
    # 2^floor(log2|w*s|) is the bit pattern of w*s with sign and mantissa cleared
    bits = x.view(torch.int32)
    binade = bits.bitwise_and_(_EXP_MASK) if own_copy else bits & _EXP_MASK  # in place on our own copy only
    lowest = layout.min_normal_bits  # floor or not: one clamp of the binade's bits
    if floor > 0:
        lowest = min(max(lowest, _float32_bits(floor / layout.ulp_of_binade)), layout.binade_hi_bits)
    ulp = binade.clamp_(lowest, layout.binade_hi_bits).view(torch.float32)
    ulp.mul_(layout.ulp_of_binade if scale is None else layout.ulp_of_binade / scale)
    if max_stiffness > 0:
        ulp.clamp_(max=max_stiffness)
    return ulp


def root_mean_square(x: torch.Tensor) -> torch.Tensor:
    """RMS of all entries, accumulated in float64 (a device scalar: no host sync)."""
    return torch.linalg.vector_norm(x, dtype=torch.float64) / math.sqrt(max(x.numel(), 1))


def count_nonzero(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Entries of a float32 tensor that are not +0.0, in all or along `dim` (use on |values| or
    differences, where no -0.0 occurs). Counting the bit view avoids a per-element branch:
    several times faster on CPU."""
    return torch.count_nonzero(x.view(torch.int32), dim=dim)


def grid_position(x: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """Signed fractional grid index of x, given in grid units (w * scale): a new float32 tensor.

    Integral exactly on grid values (k = the k-th value above zero), linear in value between
    neighbours, saturated at the index of ±max beyond the range (inf included); NaN stays
    NaN. Unsigned formats map negatives to 0. Round it (half to even) to get the index of
    round-to-nearest-even, i.e. the code's magnitude bits with the sign applied. Being
    float32, the fraction between grid points resolves 2^-24 of the index: ~1e-5 of a step
    for 8-bit formats, ~2^-9 for bf16.
    """
    layout = _layout(fmt)
    magnitude = x.detach().float().abs()
    # Below 2^emin the grid is uniform (subnormal step): index = 2^M * |x| / 2^emin, which
    # is 2^M at 2^emin. Above it each binade holds 2^M indices laid out like float32's own
    # mantissa bits, so (bits(|x|) - bits(2^emin)) / 2^(23 - M) counts the rest.
    subnormal_part = torch.mul(magnitude, layout.inv_min_normal).clamp_(max=1.0)
    bits = magnitude.clamp_(min=layout.min_normal).view(torch.int32).sub_(layout.min_normal_bits)
    position = torch.mul(bits, 2.0**-layout.step_bits, out=magnitude)  # int32 -> float32 in place
    position.add_(subnormal_part, alpha=2.0**fmt.man_bits).clamp_(max=layout.top_index)
    position.copysign_(x)
    return position.clamp_(min=0.0) if not fmt.signed else position


def index_range(fmt: FloatFormat) -> tuple[int, int]:
    """(lowest, highest) grid index: (-positives, positives), or (0, positives) if unsigned."""
    layout = _layout(fmt)
    return layout.bottom_index, layout.top_index


def grid_value(index: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """The grid values (grid units) at integral float32 indices within index_range(fmt): a new tensor.

    The inverse of grid_position, by the same layout: |i| < 2^M is i subnormal steps; above,
    the float32 bit pattern is bits(2^emin) + (|i| - 2^M) * 2^(23 - M). Arithmetic rather than
    a table lookup, so it runs on any device and fuses under torch.compile.
    """
    layout = _layout(fmt)
    magnitude = index.abs()
    subnormal = magnitude * (layout.min_normal * layout.ulp_of_binade)
    above = (magnitude - 2.0**fmt.man_bits).clamp_(min=0.0).mul_(2.0**layout.step_bits).to(torch.int32)
    normal = above.add_(layout.min_normal_bits).view(torch.float32)
    return torch.where(magnitude < 2.0**fmt.man_bits, subnormal, normal).copysign_(index)


def project_weight(p: torch.Tensor, scale: torch.Tensor | None, fmt: FloatFormat, rounding: str = "nearest",
                   generator: torch.Generator | torch.Tensor | None = None) -> None:
    """Put one weight back on its grid (saturating), in place; `generator` as in quantize."""
    q = quantize(to_grid_units(p, scale), fmt, rounding, generator=generator)
    p.copy_(q if scale is None else q.div_(scale))


@functools.cache
def _compiled_project_weight():
    """project_weight under torch.compile, made on first use (not at import: that costs ~0.6 s)."""
    return torch.compile(project_weight, dynamic=True)


@torch.no_grad()
def project_to_grid(param_groups, rounding: str = "nearest", generator: torch.Generator | None = None,
                    compile: bool = False) -> None:
    """Put every weight of a group with ``fmt`` back on its grid (saturating), in place.

    With it after each step, a weight's stored value is always a grid value, so an update
    smaller than half a ULP (nearest) is lost, and with "stochastic" it survives only in
    expectation. Works with any optimizer: it reads only the groups' geometry. With a
    power-of-two scale (the default recipe) the stored weight times the scale is exactly
    a grid value. compile=True projects each weight in one fused kernel (torch.compile,
    shapes dynamic); stochastic rounding then draws keys from `generator` for the counter
    hash, as GridOptim(compile=True) does.
    """
    for group in param_groups:
        fmt = group.get("fmt")
        if fmt is None:
            continue
        scale = group_scale(group)
        for p in group["params"]:
            if compile:
                source = draw_key(generator, p.device) if rounding == "stochastic" else None
                _compiled_project_weight()(p, scale, fmt, rounding, source)
            else:
                project_weight(p, scale, fmt, rounding, generator)


# --- optimizer plumbing shared by every optimizer here --------------------------------------


def keep_geometry_out_of_state(optimizer: torch.optim.Optimizer) -> None:
    """state_dict() drops the groups' fmt/scale; load_state_dict() keeps the live ones."""

    def strip(_, state_dict):
        state_dict["param_groups"] = [
            {k: v for k, v in g.items() if k not in GEOMETRY_KEYS} for g in state_dict["param_groups"]
        ]
        return state_dict

    def restore(opt, state_dict):
        state_dict["param_groups"] = [
            {**saved, **{k: live[k] for k in GEOMETRY_KEYS if k in live}}
            for saved, live in zip(state_dict["param_groups"], opt.param_groups)
        ]
        return state_dict

    optimizer.register_state_dict_post_hook(strip)
    optimizer.register_load_state_dict_pre_hook(restore)


def checkpoint_generator(optimizer: torch.optim.Optimizer, key: str, generator: torch.Generator) -> None:
    """Save `generator`'s state under `key` in optimizer.state_dict(), restore it on load,
    so a resumed run draws the same random numbers as an uninterrupted one."""

    def save(_, state_dict):
        state_dict[key] = generator.get_state()
        return state_dict

    def load(_, state_dict):
        if key not in state_dict:
            raise KeyError(f"optimizer state_dict has no {key!r}: it was saved without this generator")
        generator.set_state(state_dict.pop(key))
        return state_dict

    optimizer.register_state_dict_post_hook(save)
    optimizer.register_load_state_dict_pre_hook(load)


def decay_factor(group: dict) -> float:
    """Decoupled weight decay in real units, the same in every optimizer here and in
    torch.optim.AdamW: w <- w * (1 - lr * weight_decay) each step."""
    return 1 - group["lr"] * group["weight_decay"]


def adam_moments(p: torch.Tensor, state: dict, betas: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """One step of Adam's moments, as torch.optim.AdamW computes them (state "step",
    "exp_avg", "exp_avg_sq"): returns (m, v, bias correction 1, sqrt(bias correction 2))."""
    beta1, beta2 = betas
    if "step" not in state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    state["step"] += 1
    exp_avg, exp_avg_sq, grad = state["exp_avg"], state["exp_avg_sq"], p.grad
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    return exp_avg, exp_avg_sq, 1 - beta1 ** state["step"], (1 - beta2 ** state["step"]) ** 0.5


def adamw_update(p: torch.Tensor, state: dict, group: dict) -> None:
    """torch.optim.AdamW's step for one parameter, op for op (the same bits: tested). Every
    optimizer here steps the parameters of a group without ``fmt`` with it, so that an arm
    differs from its AdamW control only on the gridded weights."""
    if group["weight_decay"] != 0:
        p.mul_(decay_factor(group))  # torch decays before the moments; they do not read w
    exp_avg, exp_avg_sq, bias_correction1, bias_correction2_sqrt = adam_moments(p, state, group["betas"])
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(group["eps"])
    p.addcdiv_(exp_avg, denom, value=-group["lr"] / bias_correction1)


def known_gain(state: dict, group: dict) -> float | None:
    """A gridded weight's lr gain c, its steps being lr * c * (the optimizer's direction): the
    group's fixed "lr_gain" (uncalibrated), else the one `calibrate_gain` stored at the
    weight's first step; None before that."""
    return group["lr_gain"] if group["lr_gain"] is not None else state.get("lr_gain")


def matched_gain(direction: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """c = RMS(reference) / RMS(direction) as a device scalar (no host sync); 0 where the
    direction is all zero or c is not finite (nothing moves then, whatever c is)."""
    gain = (root_mean_square(reference) / root_mean_square(direction)).float()
    return torch.where(torch.isfinite(gain), gain, torch.zeros_like(gain))


def calibrate_gain(state: dict, direction: torch.Tensor, reference: torch.Tensor) -> float:
    """Store and return c = RMS(reference) / RMS(direction), so RMS(c * direction) equals
    RMS(reference): the arm's step direction matched to AdamW's u = m_hat / (sqrt(v_hat) + eps).
    In optimizer state, so a resumed run goes on with the same c. A direction that is all
    zero moves nothing whatever c is (nor does a non-finite one measure anything): 0 is
    returned and the weight calibrates at its first step that moves. One host sync, at that
    step only."""
    ours, target = torch.stack([root_mean_square(direction), root_mean_square(reference)]).tolist()
    if not (0 < ours < math.inf and math.isfinite(target)):
        return 0.0
    state["lr_gain"] = target / ours
    return state["lr_gain"]


class GeometryOptimizer(torch.optim.Optimizer):
    """Base of the optimizers here: groups may carry fmt/scale (kept out of state_dict), and
    step() hands each parameter that has a gradient to `_update` with its group's geometry."""

    def __init__(self, params, defaults: dict):
        super().__init__(params, defaults)
        keep_geometry_out_of_state(self)

    def _update(self, p: torch.Tensor, state: dict, group: dict, fmt: FloatFormat | None,
                scale: torch.Tensor | None) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            fmt = group.get("fmt")
            scale = group_scale(group) if fmt is not None else None
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, self.state[p], group, fmt, scale)
        return loss


def first_device(param_groups) -> torch.device:
    return param_groups[0]["params"][0].device


class GridProjection:
    """The `grid` master-weight storage: after every optimizer step, `project_to_grid`.

    `attach` registers it as a step post-hook and checkpoints its generator in the
    optimizer's state_dict, so it works unchanged with torch's AdamW and with ours.
    """

    def __init__(self, rounding: str, generator: torch.Generator, compile: bool = False):
        self.rounding, self.generator, self.compile = rounding, generator, compile

    @classmethod
    def attach(cls, optimizer: torch.optim.Optimizer, rounding: str, seed: int,
               compile: bool = False) -> "GridProjection":
        generator = torch.Generator(first_device(optimizer.param_groups)).manual_seed(seed)
        projection = cls(rounding, generator, compile)
        optimizer.register_step_post_hook(projection)
        checkpoint_generator(optimizer, "grid_projection_rng", generator)
        return projection

    def __call__(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        project_to_grid(optimizer.param_groups, self.rounding, self.generator, self.compile)
