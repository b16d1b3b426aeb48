"""Dollars -> model shapes: compute-optimal plans from a budget, per run and per format.

Over 600 lines because both planners (per run and per configured matrix) share the budget
split, the shape family and the refusal rules, which are kept next to each other.

* :func:`plan_compute_optimal`: a dollar budget (split over ``n_runs``) -> the FLOPs per run
  -> the target non-embedding size N* (Chinchilla's ``D = 20·N``, or a fitted ``N*(C)``)
  -> the nearest member of :func:`shape_family` and the tokens it can train.
* :func:`plan_budget` (``altgrad plan --budget-usd``): the same for every run of a configured
  matrix, each format sized with its own fitted ``N*(C)`` from the scaling study's
  ``fits.parquet`` when there is one (:func:`load_fitted_laws`), else Chinchilla; every job
  priced by :func:`altgrad.experiment.pricing.plan_job` with the run's eval/shadow overhead,
  exactly as the pipeline's budget table prices it.

Typical use::

    plan = plan_compute_optimal(20.0, device="h100", price=2.69, mfu=0.3)
    print(plan.describe())
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from altgrad.errors import AltgradError
from altgrad.experiment.calibration import kind_runs
from altgrad.experiment.pricing import (
    DEFAULT_MFU,
    Device,
    JobCost,
    budget_table,
    check_mfu,
    dollars,
    eng,
    eval_and_shadow_factor,
    get_device,
    memory_estimate,
    plan_job,
    price_run,
    si,
)
from altgrad.experiment.runs import Run
from altgrad.scaling_laws import PowerLaw, size_at_tokens_per_param, unphysical_reason
from altgrad.training.flops import FlopsFn, ModelShape, flops_per_token, flops_per_token_by_size, param_counts

if TYPE_CHECKING:
    from altgrad.training.config import RunConfig

__all__ = [
    "BudgetPlan",
    "BudgetSplit",
    "ComputePlan",
    "FormatPlan",
    "InfeasiblePlan",
    "load_fitted_laws",
    "plan_budget",
    "plan_compute_optimal",
    "shape_family",
    "shape_for_params",
]

CHINCHILLA_TOKENS_PER_PARAM = 20.0
# A plan is compute-optimal only if its shape and tokens are both within this factor of the
# law's N* and D*; a budget that cannot get that close (it asks for a model below the
# smallest shape, or between two shapes too far apart) is refused with the least that works.
PLAN_FACTOR = 2.0


class InfeasiblePlan(AltgradError):
    """A compute-optimal plan cannot be met (too few tokens, out of memory, budget too small).

    ``reason``: what is wrong, without the remedy; ``least_usd``: the least total budget at
    or above the refused one whose plan is accepted, when more money is the remedy (else None).
    """

    def __init__(self, message: str, *, reason: str | None = None, least_usd: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message
        self.least_usd = least_usd


def least_budget(accepts: Callable[[float], bool], refused_usd: float, *, max_factor: float = 1e12) -> float | None:
    """The least budget above ``refused_usd`` that ``accepts`` (to 0.1%, then rounded up to two
    significant digits, checked again): a geometric scan upward, then bisection. None when no
    budget up to ``max_factor``·``refused_usd`` is accepted."""
    lo, hi = float(refused_usd), float(refused_usd)
    while True:
        hi *= 1.25
        if hi > refused_usd * max_factor:
            return None
        if accepts(hi):
            break
        lo = hi
    while hi / lo > 1.001:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if accepts(mid) else (mid, hi)
    exp = math.floor(math.log10(hi)) - 1
    for k in range(100):  # two significant digits, rounded up (and past any refused gap just above)
        usd = (math.ceil(hi / 10.0**exp - 1e-9) + k) * 10.0**exp
        if accepts(usd):
            return usd
    return hi


# --------------------------------------------------------------------------------------
# The shape family
# --------------------------------------------------------------------------------------


def shape_family(
    n: int,
    *,
    block_size: int,
    vocab_size: int,
    aspect: int = 64,
    head_dim: int = 64,
    bias: bool = False,
) -> ModelShape:
    """Member ``n`` of the planner's shape family: ``n_layer = n``,
    ``n_embd = aspect·n`` rounded to a multiple of 64 (at least 64),
    ``n_head = n_embd / head_dim``.

    Rule: width/depth (d_model/n_layer) = 64 by default. It reproduces GPT-2 small
    (768/12) and the research plan's reference model (384/6); Kaplan et al. 2020 (§3.1,
    Fig. 5) found loss at fixed N changes only a few percent over a wide range of aspect
    ratios, so one fixed ratio loses little and makes sizes comparable. Widths that are
    multiples of 64 with head dim 64 keep matmuls tensor-core friendly.
    """
    if head_dim <= 0 or (head_dim % 64 and 64 % head_dim):
        raise AltgradError(f"head_dim must divide or be a multiple of 64, got {head_dim}")
    d = max(64, 64 * round(aspect * n / 64))
    d = max(head_dim, d - d % head_dim)
    return ModelShape(n_layer=n, n_head=d // head_dim, n_embd=d, block_size=block_size, vocab_size=vocab_size, bias=bias)


def shape_for_params(
    n_target: float,
    *,
    block_size: int,
    vocab_size: int,
    aspect: int = 64,
    head_dim: int = 64,
    bias: bool = False,
    min_layers: int = 1,
    max_layers: int = 128,
) -> ModelShape:
    """The family member whose non-embedding N is closest to ``n_target`` in log space
    (clamped to ``[min_layers, max_layers]``)."""
    best, best_err = None, math.inf
    for n in range(min_layers, max_layers + 1):
        s = shape_family(n, block_size=block_size, vocab_size=vocab_size, aspect=aspect, head_dim=head_dim, bias=bias)
        err = abs(math.log(param_counts(s)[1] / n_target))
        if err < best_err:
            best, best_err = s, err
    assert best is not None
    return best


# --------------------------------------------------------------------------------------
# One plan
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetSplit:
    """A dollar budget on one device, split evenly over ``n_runs`` runs."""

    budget_usd: float
    device: str
    price_usd: float  # per device-hour
    peak_flops: float
    mfu: float
    n_runs: int

    @classmethod
    def of(cls, budget_usd: float, device: str | Device, price: float | None, mfu: float, n_runs: int) -> BudgetSplit:
        """Checked: a positive budget, a priced device, MFU in (0, 1], at least one run."""
        dev = get_device(device, price_usd=price)
        budget_usd = float(budget_usd)
        if not (math.isfinite(budget_usd) and budget_usd > 0):
            raise InfeasiblePlan(f"budget must be a positive number of USD, got {budget_usd}")
        if dev.price_usd <= 0:
            raise InfeasiblePlan(
                f"device {dev.name} has price 0 USD/h, so a dollar budget buys unbounded compute; "
                "give a positive price (e.g. price=2.69) to plan from dollars"
            )
        if isinstance(n_runs, bool) or not isinstance(n_runs, int) or n_runs < 1:
            raise InfeasiblePlan(f"n_runs must be a positive integer, got {n_runs!r}")
        return cls(budget_usd, dev.name, dev.price_usd, dev.peak_flops, check_mfu(mfu), n_runs)

    @property
    def flops_per_run(self) -> float:
        """``C = budget / price · 3600 · peak · mfu / n_runs``."""
        return self.budget_usd / self.price_usd * 3600.0 * self.peak_flops * self.mfu / self.n_runs

    def describe(self) -> str:
        return (f"${self.budget_usd:.2f} on {self.device} at ${self.price_usd:.2f}/h, MFU {self.mfu:g}, "
                f"split over {self.n_runs} run(s): {eng(self.flops_per_run)} FLOPs per run")


@dataclass(frozen=True)
class ComputePlan:
    """A compute-optimal plan: what to train, for how long, at what cost."""

    split: BudgetSplit
    law: str
    n_target: float  # non-embedding N the scaling law asks for
    d_target: float  # tokens the law asks for: C / flops_per_token(shape of size N*)
    shape: ModelShape
    n_params: int
    n_params_nonembed: int
    flops_per_token: float
    batch_size: int
    steps: int
    tokens: int
    gpu_hours_per_run: float
    usd_per_run: float
    memory_bytes: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def flops_per_run(self) -> float:
        return self.split.flops_per_run

    @property
    def tokens_per_param(self) -> float:
        return self.tokens / self.n_params_nonembed

    @property
    def usd_total(self) -> float:
        return self.usd_per_run * self.split.n_runs

    def describe(self) -> str:
        s = self.shape
        lines = [
            f"budget {self.split.describe()} ({self.law})",
            f"law target: N* = {si(self.n_target)} non-embedding params, D* = {si(self.d_target)} tokens",
            f"shape: n_layer={s.n_layer} n_embd={s.n_embd} n_head={s.n_head} (head dim {s.head_dim}) "
            f"block_size={s.block_size} vocab_size={s.vocab_size} bias={s.bias}",
            f"params: {self.n_params:,} total, {self.n_params_nonembed:,} non-embedding",
            f"training: {self.steps:,} steps x {self.batch_size} x {s.block_size} = {self.tokens:,} tokens "
            f"({self.tokens_per_param:.1f} tokens/param), {eng(self.flops_per_token)} FLOPs/token",
            f"cost per run: {self.gpu_hours_per_run:.2f} GPU-h, ${self.usd_per_run:.2f}; total ${self.usd_total:.2f}",
            f"memory for one batch: {self.memory_bytes / 1e9:.1f} GB (rough)",
        ]
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def plan_compute_optimal(
    budget_usd: float,
    device: str | Device = "h100",
    price: float | None = None,
    mfu: float = DEFAULT_MFU,
    n_runs: int = 1,
    fit: Any = None,
    tokens_per_param: float = CHINCHILLA_TOKENS_PER_PARAM,
    *,
    batch_size: int = 16,
    block_size: int = 1024,
    vocab_size: int = 50257,
    bias: bool = False,
    aspect: int = 64,
    head_dim: int = 64,
    min_layers: int = 1,
    max_layers: int = 128,
    flops_fn: FlopsFn | None = None,
    memory_fraction: float = 0.9,
    bytes_per_param: float = 16.0,
    activation_bytes: float = 2.0,
    flash_attention: bool = False,
    factor: float = PLAN_FACTOR,
) -> ComputePlan:
    """Turn a dollar budget into a compute-optimal model shape and token count.

    1. budget → FLOPs per run: ``C = budget/price · 3600 · peak · mfu / n_runs``.
    2. C → the law's non-embedding N* and tokens D*: with ``fit`` (a
       :class:`altgrad.scaling_laws.PowerLaw` or any ``C -> N`` callable) ``N* = k'·C^b``;
       otherwise Chinchilla (Hoffmann et al. 2022): ``D = r·N`` with r = ``tokens_per_param``
       (≈20), i.e. the N whose run trains r·N tokens at C
       (:func:`altgrad.scaling_laws.size_at_tokens_per_param`). Either way
       ``D* = C / flops_per_token(N*)``, with the FLOPs per token of the shape family at
       size N* (:func:`altgrad.training.flops.flops_per_token_by_size`: the lm_head and
       attention count, so D* is not C / 6N*).
    3. N* → the nearest shape of :func:`shape_family` (width multiple of 64, head dim 64,
       width/depth = ``aspect``), then the real tokens for that shape from the one FLOPs
       convention: ``D = C / flops_per_token(shape)``, rounded down to whole optimizer
       steps of ``batch_size × block_size`` tokens (so the plan never exceeds the budget).

    Raises :class:`InfeasiblePlan` (an AltgradError) when the plan's shape or tokens are not
    within ``factor`` of the law's N* and D* (a budget that asks for a model below the
    smallest shape, or between two shapes too far apart), when the budget cannot buy one
    batch of the smallest shape, when the plan has fewer tokens than N/10, or when one batch
    does not fit in ``memory_fraction`` of device memory. A refusal that more money would
    fix names the least budget that works (``least_usd``).
    """
    args = dict(device=device, price=price, mfu=mfu, n_runs=n_runs, fit=fit, tokens_per_param=tokens_per_param,
                batch_size=batch_size, block_size=block_size, vocab_size=vocab_size, bias=bias, aspect=aspect,
                head_dim=head_dim, min_layers=min_layers, max_layers=max_layers, flops_fn=flops_fn,
                memory_fraction=memory_fraction, bytes_per_param=bytes_per_param,
                activation_bytes=activation_bytes, flash_attention=flash_attention, factor=factor)
    try:
        return _plan_once(budget_usd, **args)
    except _TooSmall as e:
        def accepts(usd: float) -> bool:
            try:
                _plan_once(usd, **args)
            except InfeasiblePlan:
                return False
            return True

        least = least_budget(accepts, float(budget_usd))
        remedy = (f"the least budget that works is {dollars(least)}" + (f" ({n_runs} runs)" if n_runs > 1 else "")
                  + (" or use fewer runs" if n_runs > 1 else "")) if least is not None else \
            "no budget up to 1e12 times this one works: change the shape family (block_size, vocab_size, aspect)"
        raise InfeasiblePlan(f"{e}; {remedy}", reason=str(e), least_usd=least) from None


class _TooSmall(InfeasiblePlan):
    """A refusal that a larger budget fixes."""


def _plan_once(
    budget_usd: float, *, device, price, mfu, n_runs, fit, tokens_per_param, batch_size, block_size, vocab_size,
    bias, aspect, head_dim, min_layers, max_layers, flops_fn, memory_fraction, bytes_per_param, activation_bytes,
    flash_attention, factor,
) -> ComputePlan:
    split = BudgetSplit.of(budget_usd, device, price, mfu, n_runs)
    dev = get_device(device, price_usd=price)
    if not (tokens_per_param > 0):
        raise InfeasiblePlan(f"tokens_per_param must be > 0, got {tokens_per_param}")
    if not (factor > 1):
        raise InfeasiblePlan(f"factor must be > 1, got {factor}")
    ffn = flops_fn or flops_per_token
    notes: list[str] = []
    C = split.flops_per_run
    fam = dict(block_size=block_size, vocab_size=vocab_size, aspect=aspect, head_dim=head_dim, bias=bias)
    members = _family(min_layers, max_layers, **fam)
    fpt_of_n = flops_per_token_by_size(members, ffn)

    if fit is None:
        n_target = size_at_tokens_per_param(C, tokens_per_param, fpt_of_n)
        law = f"Chinchilla, D = {tokens_per_param:g}·N at C = FLOPs/token(N)·D"
    else:
        predict = getattr(fit, "predict_n", fit)
        n_target = float(predict(C))
        if not (math.isfinite(n_target) and n_target > 0):
            raise InfeasiblePlan(f"the fitted law predicts N* = {n_target} for C = {eng(C)}; cannot plan")
        has_kb = hasattr(fit, "k") and hasattr(fit, "b")
        law = "fitted N*(C) = " + (f"{fit.k:.3g}·C^{fit.b:.3f}" if has_kb else "fit(C)")
        c_range = getattr(fit, "c_range", None)
        if c_range is not None and not (c_range[0] <= C <= c_range[1]):
            notes.append(
                f"C = {eng(C)} is outside the fit's measured range "
                f"[{eng(c_range[0])}, {eng(c_range[1])}]: extrapolated"
            )
    d_target = C / fpt_of_n(n_target)
    tokens_per_step = batch_size * block_size

    smallest = members[0]
    n_small = param_counts(smallest)[1]
    c_min = ffn(smallest) * max(n_small / 10.0, tokens_per_step)
    if C < c_min:
        raise _TooSmall(
            f"budget {dollars(split.budget_usd)} buys {eng(C)} FLOPs per run, too little for even the smallest shape "
            f"(n_layer={smallest.n_layer}, n_embd={smallest.n_embd}, N={n_small:,}), which needs "
            f"{eng(c_min)} FLOPs per run (max(N/10, one batch) tokens)"
        )

    shape = shape_for_params(n_target, min_layers=min_layers, max_layers=max_layers, **fam)
    total, nonembed = param_counts(shape)
    fpt = float(ffn(shape))
    steps = int(C / fpt // tokens_per_step)
    tokens = steps * tokens_per_step
    far = []
    above_largest = shape.n_layer == max_layers and n_target > nonembed
    if not 1 / factor <= nonembed / n_target <= factor:
        where = ("below the smallest shape" if n_target < n_small else
                 "above the largest shape" if above_largest else "between two shapes")
        far.append(f"the law's N* = {si(n_target)} non-embedding params is {where}: the nearest "
                   f"(n_layer={shape.n_layer}, n_embd={shape.n_embd}) has N = {si(nonembed)}, "
                   f"{max(nonembed / n_target, n_target / nonembed):.1f}x off")
    if not 1 / factor <= tokens / d_target <= factor:
        far.append(f"it trains {si(tokens)} tokens, {max(tokens / d_target, d_target / max(tokens, 1)):.1f}x "
                   f"{'below' if tokens < d_target else 'above'} the law's D* = {si(d_target)} "
                   f"(C / FLOPs per token at N*)")
    if far:
        raise (InfeasiblePlan if above_largest else _TooSmall)(f"budget {dollars(split.budget_usd)} ({eng(C)} FLOPs per run, {law}) has no plan within "
                  f"{factor:g}x of the law's N* and D*: " + "; ".join(far))
    if tokens < nonembed / 10.0:
        raise InfeasiblePlan(
            f"the plan trains N={nonembed:,} params on only {tokens:,} tokens (< N/10 = {nonembed // 10:,}); "
            f"at {eng(fpt)} FLOPs/token the budget per run buys too few tokens for this shape — "
            "raise the budget, use fewer runs, or plan a smaller model "
            + ("(raise tokens_per_param)" if fit is None else "(the fitted law asks for too large an N here)")
        )
    mem = memory_estimate(
        shape,
        batch_size,
        bytes_per_param=bytes_per_param,
        activation_bytes=activation_bytes,
        flash_attention=flash_attention,
    )
    if mem.total_bytes > memory_fraction * dev.memory_bytes:
        raise InfeasiblePlan(
            f"one batch of {batch_size}x{block_size} tokens for n_layer={shape.n_layer}, n_embd={shape.n_embd} "
            f"needs ~{mem.total_bytes / 1e9:.1f} GB (state {mem.state_bytes / 1e9:.1f}, activations "
            f"{mem.activation_bytes / 1e9:.1f}, logits {mem.logits_bytes / 1e9:.1f}) but {dev.name} has "
            f"{dev.memory_bytes / 1e9:.0f} GB ({memory_fraction:.0%} usable); lower batch_size (use gradient "
            "accumulation), shorten block_size, use flash attention, or a larger device"
        )
    per_run = plan_job("per run", shape, tokens, dev, split.mfu, flops_fn=ffn)  # the table's own pricing
    return ComputePlan(
        split=split,
        law=law,
        n_target=n_target,
        d_target=d_target,
        shape=shape,
        n_params=total,
        n_params_nonembed=nonembed,
        flops_per_token=fpt,
        batch_size=batch_size,
        steps=steps,
        tokens=tokens,
        gpu_hours_per_run=per_run.gpu_hours,
        usd_per_run=per_run.usd,
        memory_bytes=mem.total_bytes,
        notes=tuple(notes),
    )


def _family(min_layers: int, max_layers: int, **fam: Any) -> list[ModelShape]:
    return [shape_family(n, **fam) for n in range(min_layers, max_layers + 1)]


# --------------------------------------------------------------------------------------
# A plan for every format of a matrix: `altgrad plan --budget-usd`
# --------------------------------------------------------------------------------------


def load_fitted_laws(path: str | os.PathLike) -> dict[str, tuple[PowerLaw | None, str]]:
    """The scaling study's ``fits.parquet`` (written by
    :func:`altgrad.analysis.scaling_study.fits_frame`) -> format -> (its ``N*(C)`` law or
    None, a note saying where the law came from or why there is none). A law the study
    flagged (``n_problem``: boundary optima, an exponent outside (0, 1)) is not returned."""
    import pandas as pd

    out: dict[str, tuple[PowerLaw | None, str]] = {}
    for r in pd.read_parquet(path).itertuples():
        problem = str(getattr(r, "n_problem", "") or "")
        if problem:  # a law the study itself would not extrapolate (boundary optima, unphysical exponent)
            out[str(r.format)] = (None, f"its fitted N*(C) is not used: {problem}")
        elif math.isfinite(r.n_k) and math.isfinite(r.n_b) and r.n_k > 0:
            law = PowerLaw(k=float(r.n_k), b=float(r.n_b), r2=float(r.n_r2), n_points=int(r.n_n_points),
                           c_range=(float(r.c_min), float(r.c_max)))
            out[str(r.format)] = (law, f"measured {eng(r.c_min)}–{eng(r.c_max)} FLOPs; N* from {r.n_basis}")
        else:
            out[str(r.format)] = (None, str(r.n_error) or "no N*(C) law")
    return out


@dataclass
class FormatPlan:
    """The plan of one format's runs."""

    format: str
    run_ids: list[str]
    source: str  # "fitted N*(C) from …" or "Chinchilla …"
    plan: ComputePlan | None
    refused: str = ""  # InfeasiblePlan message
    eval_shadow_factor: float = 1.0  # FLOPs per training token charged on top (eval_and_shadow_factor)
    jobs: list[JobCost] = field(default_factory=list)  # its runs at the plan, priced as the pipeline prices them
    native_usd: float = 0.0  # the budget the plan was sized for at native BF16 speed (<= its share)
    least_usd: float | None = None  # refused: the least budget (over all the matrix's runs) that works


@dataclass
class BudgetPlan:
    """A dollar budget split evenly over the matrix's runs, sized per format."""

    split: BudgetSplit
    fits_path: str
    fits_found: bool
    formats: list[FormatPlan]
    jobs: list[JobCost]
    attention: str

    @property
    def refused(self) -> list[FormatPlan]:
        return [f for f in self.formats if f.refused]

    def describe(self) -> str:
        lines = [
            f"altgrad plan: {self.split.describe()}",
            f"laws: {self.fits_path} " + ("found: each format's fitted N*(C) where it has one, else Chinchilla"
                                          if self.fits_found else "not found: Chinchilla (D = 20·N) for every format"),
            (f"FLOPs/token: 6·N + 6·V·d (lm_head) + {self.attention} attention, times the run's eval/shadow "
             "passes; N = non-embedding parameters; shapes: width a multiple of 64, head dim 64, width/depth 64"),
        ]
        groups: dict[tuple, list[FormatPlan]] = {}  # formats with the same law and plan print once
        for f in self.formats:
            key = (f.source, f.refused,
                   None if f.plan is None else (f.plan.shape, f.plan.steps), round(f.eval_shadow_factor, 9))
            groups.setdefault(key, []).append(f)
        for group in groups.values():
            f = group[0]
            ids = [r for g in group for r in g.run_ids]
            lines.append("")
            lines.append(f"== {', '.join(g.format for g in group)} ({len(ids)} run(s): {', '.join(ids[:4])}"
                         f"{' ...' if len(ids) > 4 else ''})")
            lines.append(f"law used: {f.source}")
            if f.refused:
                lines.append(f"REFUSED: {f.refused}")
                continue
            assert f.plan is not None
            body = f.plan.describe().splitlines()[1:]  # the header line is the split, printed above
            lines += [ln for ln in body if not ln.startswith("cost per run")]
            total = sum(j.usd for g in group for j in g.jobs)
            share = self.split.budget_usd * len(ids) / self.split.n_runs
            lines.append(f"cost: ${total:.2f} for the {len(ids)} run(s) ({', '.join(sorted({j.basis for j in f.jobs}))}, "
                         f"as the budget table prices them: {min(j.overhead for j in f.jobs):.2g}-"
                         f"{max(j.overhead for j in f.jobs):.2g}x native BF16 and each job's start-up); sized "
                         f"as if ${f.native_usd * len(ids) / len(f.run_ids):.2f} of native BF16 compute, so "
                         f"that the price stays within their ${share:.2f} share")
            if f.eval_shadow_factor != 1.0:
                lines.append(f"eval/shadow passes: x{f.eval_shadow_factor:.3f} FLOPs per training token")
        shapes = {(f.plan.shape, f.plan.steps) for f in self.formats if f.plan is not None}
        if len(shapes) > 1:
            lines += ["", ("note: the formats get different plans. The matrix compares formats at one shared "
                           "run.model (same shape, seed and data order), so use one plan for run.model (e.g. "
                           "bf16's), or these per-format plans for a compute-optimal comparison.")]
        if self.jobs:
            lines += ["", "budget table (the pipeline's computation: altgrad.experiment.pricing.price_run):",
                      budget_table(self.jobs, budget_usd=self.split.budget_usd)]
        return "\n".join(lines)


def planned_config(config: RunConfig, plan: ComputePlan) -> RunConfig:
    """``config`` made the planned run, for pricing: the plan's shape, steps and batch (and the
    warm-up cut to the steps if it is longer). Not validated again: the plan's values are."""
    s, t = plan.shape, config.train
    model = replace(config.model, n_layer=s.n_layer, n_head=s.n_head, n_embd=s.n_embd, block_size=s.block_size,
                    vocab_size=s.vocab_size)
    train = replace(t, max_steps=plan.steps, batch_size=plan.batch_size, grad_accum=1,
                    warmup_steps=min(t.warmup_steps, plan.steps - 1))
    return replace(config, model=model, train=train)


def _within_share(plan_format: Callable[[float], tuple[ComputePlan, float]],
                  priced: Callable[[ComputePlan], list[JobCost]], budget_usd: float, share_usd: float
                  ) -> tuple[ComputePlan, float, float, list[JobCost]]:
    """The plan whose runs, priced as the budget table prices them, cost at most ``share_usd``.

    The planner sizes runs for native BF16 compute (``budget_usd`` of it over all runs); a
    simulated format's overhead and each job's start-up make the price more, so the plan is
    sized again for less: the largest native budget u whose plan exists (u at least some
    least L) and whose price fits (u at most some u*), found by bisection to 0.1%. Raises the
    planner's refusal (a _TooSmall) when no such u exists: then L > u*."""
    def attempt(usd: float):
        """(plan, factor, jobs, fits) at ``usd``, or None when no shape is large enough."""
        try:
            plan, factor = plan_format(usd)
        except _TooSmall:
            return None
        jobs = priced(plan)
        return plan, factor, jobs, sum(j.usd for j in jobs) <= share_usd

    plan, factor = plan_format(budget_usd)  # too small even before the price: the caller's refusal
    jobs = priced(plan)
    cost = sum(j.usd for j in jobs)
    if cost <= share_usd:
        return plan, factor, budget_usd, jobs
    hi, lo, small = budget_usd, budget_usd * share_usd / cost, None
    while True:  # step down until the price fits, or no plan exists (start-up makes the price shrink slower)
        got = attempt(lo)
        if got is None:
            small = lo
            break
        if got[3]:
            break
        hi, lo = lo, lo / 2
    if small is not None:  # between a budget with no plan and one over the price: find one that is neither
        lo, got = small, None
        while hi / lo > 1.001:
            mid = math.sqrt(lo * hi)
            got = attempt(mid)
            if got is None:
                lo = mid
            elif got[3]:
                lo = mid
                break
            else:
                hi = mid
        if got is None or not got[3]:
            try:
                plan_format(small)
            except _TooSmall as e:
                raise _TooSmall(f"priced as the budget table prices it (simulated overhead, job start-up), "
                                f"{dollars(share_usd)} for these runs leaves {dollars(small)} of native BF16 "
                                f"compute over the matrix: {e}") from None
    best = (got[0], got[1], lo, got[2])
    while hi / lo > 1.001:
        mid = math.sqrt(lo * hi)
        got = attempt(mid)
        if got is not None and got[3]:
            lo, best = mid, (got[0], got[1], mid, got[2])
        else:
            hi = mid
    return best


def plan_budget(
    runs: Iterable[Run],
    budget: Mapping[str, Any],
    budget_usd: float,
    *,
    meta: Mapping[str, Any] | None = None,
    device: str | None = None,
    price: float | None = None,
    mfu: float | None = None,
    formats: Sequence[str] | None = None,
    fits_path: str | os.PathLike = "results/scaling/fits.parquet",
    block_size: int | None = None,
    batch_size: int | None = None,
    vocab_size: int | None = None,
    attention: str = "causal",
) -> BudgetPlan:
    """Compute-optimal size and tokens for every run of a matrix under ``budget_usd``.

    ``runs``: the matrix (an Experiment's ``runs.values()``); ``budget``: its ``budget`` section
    (the device, price and MFU unless given here); ``meta``: the prepared corpus, whose
    vocabulary a run with a null ``vocab_size`` takes. The budget is split evenly over the
    runs (of ``formats`` if given). For each
    format, :func:`plan_compute_optimal` sizes the run with that format's fitted ``N*(C)``
    from ``fits_path`` when the file exists and has a law for it that rests on interior
    isoFLOP vertices and whose exponent lies in (0, 1) (N* and D* both grow with C), else
    Chinchilla; the printed source says which and why. A format whose plan cannot come within
    :data:`PLAN_FACTOR` of its law's N* and D* is refused with the least budget that works. Context length, batch and vocabulary are the runs' (overridable). FLOPs per token
    include the run's evaluation and FP32-shadow passes (:func:`eval_and_shadow_factor`, as
    the pipeline's budget table charges them), so the jobs, priced by :func:`plan_job`
    exactly as the pipeline prices them, stay within the budget. Infeasible formats are kept
    with the planner's reason (``refused``).
    """
    from altgrad.training.tokenizer import GPT2_VOCAB_SIZE

    budget_usd = float(budget_usd)
    if not (math.isfinite(budget_usd) and budget_usd > 0):
        raise InfeasiblePlan(f"--budget-usd must be a positive number, got {budget_usd}")
    b = budget
    peak = b["peak_flops"] if device is None else None
    dev = get_device(device or b["device"], peak_flops=peak,
                     price_usd=price if price is not None else (b["price_usd_per_hour"] if device is None else None))
    if dev.price_usd <= 0:
        raise InfeasiblePlan(f"device {dev.name} is priced at 0 USD/h, so dollars buy unbounded compute; "
                             "give --price (e.g. --device h100 --price 2.69)")
    by_format: dict[str, list[Run]] = {}
    for run in runs:
        by_format.setdefault(run.format, []).append(run)
    if formats:
        unknown = [f for f in formats if f not in by_format]
        if unknown:
            raise AltgradError(f"--formats {', '.join(unknown)}: not in the configured matrix (its formats: "
                               f"{', '.join(by_format)})")
        by_format = {f: by_format[f] for f in formats}
    split = BudgetSplit.of(budget_usd, dev, None, b["mfu"] if mfu is None else mfu,
                           sum(len(v) for v in by_format.values()))
    fits_path = str(fits_path)
    found = Path(fits_path).exists()
    laws = load_fitted_laws(fits_path) if found else {}
    meta_vocab = int(meta["vocab_size"]) if meta and "vocab_size" in meta else None

    plans, jobs = [], []
    for fmt, runs in by_format.items():
        cfg = runs[0].config
        law, note = laws.get(fmt, (None, "" if not found else f"{fits_path} has no row for {fmt}"))
        if law is not None and unphysical_reason(law):
            note = f"its fitted N*(C) in {fits_path} is not used: {unphysical_reason(law)}"
            law = None
        if law is not None:
            source = f"fitted N*(C) = {law.k:.4g}·C^{law.b:.4f} from {fits_path} ({fmt}; {note})"
        else:
            source = ("Chinchilla: D* = 20·N*, the N* whose run trains 20 tokens per parameter at C (FLOPs per "
                      "token of the shape family, not 6·N)" + (f"; {note}" if note else ""))
        block = int(block_size or cfg.model.block_size)
        batch = int(batch_size or cfg.train.batch_size * cfg.train.grad_accum)
        vocab = int(vocab_size or cfg.model.vocab_size or meta_vocab or GPT2_VOCAB_SIZE)

        def plan_format(usd: float, *, law=law, cfg=cfg, block=block, batch=batch, vocab=vocab
                        ) -> tuple[ComputePlan, float]:
            """The plan at ``usd`` with the eval/shadow factor of its own steps, or InfeasiblePlan.
            The factor only grows from one try to the next and stops when the plan's own is not
            larger than the one it was planned with (a step or two), so the plan stays in budget."""
            factor = 1.0
            for _ in range(20):
                plan = _plan_once(
                    usd, device=dev, price=None, mfu=split.mfu, n_runs=split.n_runs, fit=law,
                    tokens_per_param=CHINCHILLA_TOKENS_PER_PARAM, batch_size=batch, block_size=block,
                    vocab_size=vocab, bias=False, aspect=64, head_dim=64, min_layers=1, max_layers=128,
                    flops_fn=lambda s, f=factor: f * flops_per_token(s, attention=attention), memory_fraction=0.9,
                    bytes_per_param=16.0, activation_bytes=2.0, flash_attention=False, factor=PLAN_FACTOR)
                new = eval_and_shadow_factor(cfg.train, plan.steps)
                if new <= factor * (1 + 1e-9):
                    break
                factor = new
            return plan, eval_and_shadow_factor(cfg.train, plan.steps)  # what the pipeline's table charges

        kinds = kind_runs(runs, vocab)  # runs of one kind cost the same: price one of each

        def priced(plan: ComputePlan, kinds=kinds) -> list[JobCost]:
            """The runs at ``plan``, priced by the budget table's own function: simulated formats at
            their overhead over native BF16, plus each job's start-up."""
            jobs = []
            for same in kinds.values():
                job = price_run(same[0].run_id, planned_config(same[0].config, plan),
                                data_vocab_size=plan.shape.vocab_size, device=dev, mfu=split.mfu, price=None)
                jobs += [replace(job, name=r.run_id) for r in same]
            return jobs

        share = split.budget_usd * len(runs) / split.n_runs
        plan, refused, factor, native, fmt_jobs, least = None, "", 1.0, split.budget_usd, [], None
        try:
            plan, factor, native, fmt_jobs = _within_share(plan_format, priced, split.budget_usd, share)
        except _TooSmall as e:
            def has_plan(usd: float, plan_format=plan_format) -> bool:
                try:
                    plan_format(usd)
                except InfeasiblePlan:
                    return False
                return True

            def accepts(usd: float, plan_format=plan_format, priced=priced, runs=runs) -> bool:
                try:
                    _within_share(plan_format, priced, usd, usd * len(runs) / split.n_runs)
                except InfeasiblePlan:
                    return False
                return True

            least = least_budget(has_plan, split.budget_usd)  # native compute: a lower bound of the price
            if least is not None:  # the least the table's price accepts, searched up from the smallest plan's
                least = least_budget(accepts, 0.8 * sum(j.usd for j in priced(plan_format(least)[0]))
                                     * split.n_runs / len(runs))
            refused = f"{e}; " + (
                f"the least budget that works is {dollars(least)} for these {split.n_runs} run(s) (or plan fewer runs: "
                "--formats)" if least is not None else "no budget up to 1e12 times this one works")
        except InfeasiblePlan as e:
            refused = str(e)
        plans.append(FormatPlan(fmt, [r.run_id for r in runs], source, plan, refused, factor, fmt_jobs,
                                native * len(runs) / split.n_runs, least if refused else None))
        jobs += fmt_jobs
    return BudgetPlan(split=split, fits_path=fits_path, fits_found=found, formats=plans, jobs=jobs,
                      attention=attention)
