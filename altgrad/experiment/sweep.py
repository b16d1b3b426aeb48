"""The scaling study's isoFLOP sweep, planned from the config's ``scaling`` block.

Called when the experiment is loaded (:func:`altgrad.experiment.matrix.load_experiment`), so
a sweep that cannot be fitted fails before any job starts. The block gives formats, compute
budgets C and model sizes; every (format, C, shape) is one normal run of the pipeline's
``train`` rule, id ``scale-{format}-c{C}-d{width}`` (e.g. ``scale-e4m3-c1e13-d128``), trained
for ``steps = round(C / (flops_per_token(shape) · tokens_per_step))`` optimizer steps, i.e. on
its planned ``D = C / flops_per_token(shape)`` tokens up to half a step (the cosine schedule
ends at that step; there are no epochs). The fits themselves are
:mod:`altgrad.analysis.scaling_study`'s.

The sizes of each budget are centred on ``scaling.centre``'s N*(C): a law ``{k, b}``,
N*(C) = k·C^b, e.g. the study's own fit from an earlier sweep, or (null) Chinchilla's D = 20·N
with C counted as the runs count it (the N whose run trains 20 tokens per parameter; not
``sqrt(C/120)``, which assumes 6·N FLOPs per token while the lm_head and attention are most of
a small model's). A sweep brackets its optima when every budget's isoFLOP vertex is interior;
the report says where it is not (widen ``sizes``/``window`` there, or re-centre).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from altgrad.errors import AltgradError
from altgrad.experiment.planning import CHINCHILLA_TOKENS_PER_PARAM, shape_family
from altgrad.experiment.pricing import eng
from altgrad.experiment.runs import SEED_DATA_OFFSET
from altgrad.scaling_laws import ScalingInputError, positive_finite, require_distinct, size_at_tokens_per_param
from altgrad.training.flops import ModelShape, flops_per_token, flops_per_token_by_size, param_counts

__all__ = ["RUN_PREFIX", "SweepPoint", "SweepShape", "budget_tag", "plan_sweep", "point_run_id", "sweep_centre",
           "sweep_train_overrides"]

RUN_PREFIX = "scale"
# Sweep runs spend their FLOPs on training only: no FP32 shadow model, no rank probes
# (a config can still turn them on under scaling.train).
SWEEP_TRAIN_DEFAULTS = {"shadow_interval": 0, "rank_interval": 0}


def budget_tag(c: float) -> str:
    """``1e13`` -> ``"1e13"``, ``2.5e13`` -> ``"2.5e13"``: the C part of a run id."""
    c = float(c)
    exp = math.floor(math.log10(c))
    mant = f"{c / 10.0**exp:.3g}"
    if mant == "10":
        exp, mant = exp + 1, "1"
    return f"{mant}e{exp}"


@dataclass(frozen=True)
class SweepShape:
    """One (budget, model shape) of the sweep; every format trains it."""

    budget: float
    shape: ModelShape
    steps: int
    tokens_per_step: int
    size_tag: str  # d128 (or l2d128 when a width has more than one depth in the sweep)

    @property
    def tokens(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def flops_per_token(self) -> float:
        return flops_per_token(self.shape)

    @property
    def flops(self) -> float:
        """The FLOPs the run will spend: C up to half an optimizer step of rounding."""
        return self.flops_per_token * self.tokens

    @property
    def n_params_nonembed(self) -> int:
        return param_counts(self.shape)[1]


@dataclass(frozen=True)
class SweepPoint:
    """One run of the sweep: a format at one :class:`SweepShape`."""

    run_id: str
    format: str
    plan: SweepShape


def point_run_id(fmt: str, budget: float, size_tag: str) -> str:
    return f"{RUN_PREFIX}-{fmt}-c{budget_tag(budget)}-{size_tag}"


def _feasibility(shape: ModelShape, budget: float, tokens_per_step: int, min_steps: int) -> tuple[int, str]:
    """(steps, "" or why the point cannot be trained usefully)."""
    fpt = flops_per_token(shape)
    steps = round(budget / (fpt * tokens_per_step))
    n = param_counts(shape)[1]
    tokens = steps * tokens_per_step
    why = []
    if steps < min_steps:
        why.append(f"{steps} steps < scaling.min_steps {min_steps}")
    if tokens < n / 10:
        why.append(f"{tokens:,} tokens < N/10 = {n // 10:,}")
    return steps, " and ".join(why)


def _describe(shape: ModelShape) -> str:
    return f"n_layer={shape.n_layer} n_embd={shape.n_embd} n_head={shape.n_head} (N={param_counts(shape)[1]:,})"


def sweep_centre(sc: Mapping[str, Any], shapes: list[ModelShape]) -> tuple[Callable[[float], float], str]:
    """``scaling.centre`` -> (C -> the N the sizes of budget C are centred on, its description).

    A mapping ``{k, b}``: ``N*(C) = k·C^b``; null: Chinchilla's N, the one whose run trains 20
    tokens per parameter at C with the FLOPs per token of ``shapes``
    (:func:`altgrad.training.flops.flops_per_token_by_size`)."""
    centre = sc.get("centre")
    if not centre:
        fpt_of_n = flops_per_token_by_size(shapes)
        return (lambda c: size_at_tokens_per_param(c, CHINCHILLA_TOKENS_PER_PARAM, fpt_of_n),
                "Chinchilla's N (20 tokens per parameter at C, FLOPs per token counted)")
    k, b = float(centre["k"]), float(centre["b"])
    return (lambda c: k * c**b), f"N*(C) = {k:.4g}·C^{b:.4g}"


def _window(c: float, feasible: list[tuple[ModelShape, int]], k: int, centre: Callable[[float], float]
            ) -> list[tuple[ModelShape, int]]:
    """k consecutive (by N) of the ``feasible`` shapes, centred on ``centre(c)`` in log N."""
    feasible = sorted(feasible, key=lambda t: param_counts(t[0])[1])
    target = centre(c)
    errs = [abs(math.log(param_counts(s)[1] / target)) for s, _ in feasible]
    mid = errs.index(min(errs))
    start = min(max(mid - (k - 1) // 2, 0), len(feasible) - k)
    return feasible[start:start + k]


def plan_sweep(
    sc: Mapping[str, Any], *, block_size: int, vocab_size: int, tokens_per_step: int, bias: bool = False
) -> tuple[list[SweepShape], list[str]]:
    """The (budget, shape, steps) grid of a ``scaling`` block, and every problem with it.

    ``sc``: the block with the schema's defaults filled in. ``sizes`` is either

    * an integer k (≥ 3): for each budget, k consecutive members of
      :func:`altgrad.experiment.planning.shape_family` (width = ``aspect``·depth rounded to a
      multiple of 64, head dim ``head_dim``: tensor-core friendly) centred on ``centre``'s N
      (:func:`sweep_centre`), among the members the budget can train (≥ ``min_steps`` steps
      and ≥ N/10 tokens); or
    * an explicit list of shapes ``{n_layer, n_embd, n_head}`` (``n_head`` default
      ``max(1, n_embd // head_dim)``): all of them at every budget, or with ``window: k``
      the k consecutive ones (by N) centred on ``centre``'s N among those the budget can
      train. Any width is allowed — the CPU default uses widths 16 to 96 — but for GPU runs
      keep widths and head dims multiples of 64.

    Fewer than 3 distinct budgets, or fewer than 3 distinct sizes per budget, is the scaling
    fitter's own error (:class:`altgrad.scaling_laws.ScalingInputError` text).
    """
    problems: list[str] = []
    try:
        budgets_arr = positive_finite("scaling.budgets", list(sc["budgets"]))
        require_distinct("scaling.budgets", budgets_arr, "compute budgets")
    except ScalingInputError as e:
        return [], [f"scaling.budgets: {e}"]
    budgets = [float(c) for c in budgets_arr]
    tags: dict[str, float] = {}
    for c in budgets:
        t = budget_tag(c)
        if t in tags:
            problems.append(f"scaling.budgets: {tags[t]:g} and {c:g} both give the run-id part c{t}; "
                            "use budgets that differ in the first 3 significant digits")
        tags[t] = c
    min_steps = int(sc["min_steps"])
    head_dim = int(sc["head_dim"])
    fam = {"block_size": block_size, "vocab_size": vocab_size, "aspect": int(sc["aspect"]), "head_dim": head_dim,
           "bias": bias}
    centre_block = sc.get("centre")
    if centre_block:
        try:
            k_c, b_c = float(centre_block["k"]), float(centre_block["b"])
            if not (k_c > 0 and 0 < b_c < 1):
                raise ValueError(f"k must be > 0 and b in (0, 1), got k={k_c:g}, b={b_c:g}")
        except (KeyError, TypeError, ValueError) as e:
            return [], [f"scaling.centre: {e} (a law N*(C) = k·C^b, e.g. the n_k and n_b of fits.parquet)"]

    per_budget: list[tuple[float, list[tuple[ModelShape, int]]]] = []
    sizes = sc["sizes"]
    if isinstance(sizes, int) and not isinstance(sizes, bool):
        try:
            members = [shape_family(n, **fam) for n in range(1, 129)]
        except AltgradError as e:
            return [], [f"scaling.head_dim: {e}"]
        centre, _ = sweep_centre(sc, members)
        for c in budgets:
            feasible = []
            for s in members:
                steps, why = _feasibility(s, c, tokens_per_step, min_steps)
                if why:  # larger members have more FLOPs per token and a larger N/10: only worse
                    break
                feasible.append((s, steps))
            if len(feasible) < sizes:
                problems.append(
                    f"scaling.budgets: C={c:g} can train only {len(feasible)} shape(s) of the family "
                    f"(aspect {fam['aspect']}, head dim {head_dim}; each needs >= {min_steps} steps of "
                    f"{tokens_per_step} tokens and >= N/10 tokens), scaling.sizes asks for {sizes}; "
                    "raise the budget, lower scaling.aspect, or give scaling.sizes as a list of shapes"
                )
                continue
            per_budget.append((c, _window(c, feasible, sizes, centre)))
    else:
        shapes: list[ModelShape] = []
        for i, spec in enumerate(sizes):
            try:
                n_embd = int(spec["n_embd"])
                n_head = int(spec.get("n_head") or max(1, n_embd // head_dim))
                shapes.append(ModelShape(n_layer=int(spec["n_layer"]), n_head=n_head, n_embd=n_embd,
                                         block_size=block_size, vocab_size=vocab_size, bias=bias))
            except (AltgradError, KeyError, TypeError, ValueError) as e:
                problems.append(f"scaling.sizes[{i}]: {e}")
        if problems:
            return [], problems
        try:
            require_distinct("scaling.sizes N", positive_finite("N", [param_counts(s)[1] for s in shapes]),
                           "model sizes on the isoFLOP curve")
        except ScalingInputError as e:
            return [], [f"scaling.sizes: {e}"]
        window = sc.get("window")
        if window is not None and int(window) > len(shapes):
            return [], [f"scaling.window: {window} is more than the {len(shapes)} shapes of scaling.sizes"]
        centre, _ = sweep_centre(sc, shapes)
        for c in budgets:
            chosen, refused = [], []
            for s in shapes:
                steps, why = _feasibility(s, c, tokens_per_step, min_steps)
                if why:
                    refused.append(
                        f"scaling: C={c:g} is too small for {_describe(s)}: {why} at "
                        f"{eng(flops_per_token(s))} FLOPs/token and {tokens_per_step} tokens/step; "
                        "raise the budget or drop the shape"
                    )
                else:
                    chosen.append((s, steps))
            if window is None:
                problems += refused
            elif len(chosen) < int(window):
                problems.append(
                    f"scaling: C={c:g} can train only {len(chosen)} of the shapes of scaling.sizes (each needs >= "
                    f"{min_steps} steps of {tokens_per_step} tokens and >= N/10 tokens), scaling.window asks for "
                    f"{window}; raise the budget or add smaller shapes"
                )
            else:
                chosen = _window(c, chosen, int(window), centre)
            per_budget.append((c, chosen))
    if problems:
        return [], problems

    # size tags: the width alone when it names one shape across the sweep
    keys = {(s.n_layer, s.n_embd, s.n_head) for _, chosen in per_budget for s, _ in chosen}
    widths_unique = len({w for _, w, _ in keys}) == len(keys)
    depth_width_unique = len({(layer, w) for layer, w, _ in keys}) == len(keys)

    def tag(s: ModelShape) -> str:
        if widths_unique:
            return f"d{s.n_embd}"
        return f"l{s.n_layer}d{s.n_embd}" + ("" if depth_width_unique else f"h{s.n_head}")

    out = [SweepShape(c, s, steps, tokens_per_step, tag(s)) for c, chosen in per_budget for s, steps in chosen]
    return out, problems


def sweep_train_overrides(sc: Mapping[str, Any], point: SweepShape, batch_size: int) -> dict[str, Any]:
    """The ``train`` section of a sweep run on top of the base run: the planned steps, the
    batch, the seed, warm-up as a fraction of the steps, evaluation at the start and the end
    (the score is the final held-out loss), then ``scaling.train`` as given."""
    seed = int(sc["seed"])
    t: dict[str, Any] = {
        **SWEEP_TRAIN_DEFAULTS,
        "max_steps": point.steps,
        "batch_size": batch_size,
        "seed": seed,
        "data_seed": SEED_DATA_OFFSET + seed,
        "warmup_steps": round(float(sc["warmup_fraction"]) * point.steps),
        "eval_interval": point.steps,
    }
    t.update({k: v for k, v in (sc.get("train") or {}).items() if k not in ("max_steps",)})
    return t
