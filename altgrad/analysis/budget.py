"""Price every training job before it runs: FLOPs, device-hours, dollars, compute-optimal plans.

Pure Python/numpy; no torch. Every FLOP count in altgrad goes through one function,
:func:`flops_per_token`, so the budget table, the budget check, the compute-optimal planner
and the scaling-law fits all use the same convention.

Typical use::

    shape = ModelShape(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=50257)
    jobs = [plan_job(f"e5m2-manifold-s{s}", shape, tokens=50e6, device="h100") for s in range(3)]
    print(budget_table(jobs))
    check_budget(jobs, budget_usd=20.0)          # raises BudgetExceeded with advice
    plan = plan_compute_optimal(20.0, device="h100", price=2.69, mfu=0.3)
    print(plan.describe())
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from altgrad.errors import AltgradError

# The model's shape, parameter counts and FLOPs per token live beside the model
# (altgrad.training.flops); re-exported here because every plan starts from them.
from altgrad.training.flops import FlopsFn, ModelShape, flops_per_token, param_counts

__all__ = [
    "BudgetExceeded",
    "BudgetTotals",
    "ComputePlan",
    "DEFAULT_MFU",
    "DEVICES",
    "Device",
    "FlopsFn",
    "InfeasiblePlan",
    "JobCost",
    "MemoryEstimate",
    "ModelShape",
    "budget_table",
    "budget_totals",
    "check_budget",
    "eng",
    "flops_per_token",
    "get_device",
    "memory_estimate",
    "param_counts",
    "plan_compute_optimal",
    "plan_job",
    "shape_family",
    "shape_for_params",
]


class BudgetExceeded(AltgradError):
    """The planned jobs cost more than the configured budget (``budget.usd``)."""

    def __init__(self, message: str, *, total_usd: float, budget_usd: float) -> None:
        super().__init__(message)
        self.total_usd = total_usd
        self.budget_usd = budget_usd
        self.overrun_usd = total_usd - budget_usd


class InfeasiblePlan(AltgradError):
    """A compute-optimal plan cannot be met (too few tokens, out of memory, budget too small)."""


def _resolve_flops_fn(flops_fn: FlopsFn | None) -> FlopsFn:
    return flops_per_token if flops_fn is None else flops_fn


# --------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """A training device: dense BF16 peak FLOP/s, memory, and an hourly price (USD)."""

    name: str
    peak_flops: float
    memory_bytes: float
    price_usd: float


# Vendor peak numbers are DENSE BF16 tensor-core throughput (the datasheets' headline
# numbers with 2:4 sparsity are 2x these):
#   NVIDIA H100 SXM5 datasheet: 989 TFLOPS BF16 dense (1,979 sparse), 80 GB HBM3.
#   NVIDIA A100 datasheet: 312 TFLOPS BF16 dense (624 sparse), 40 or 80 GB.
# Prices are per device-hour and only defaults: h100 2.69 is the project's reference
# on-demand rate; a100 is a rough cloud figure; the local cpu costs nothing. cpu peak is
# a rough order of magnitude for a few-core machine in float32; override it per host.
DEVICES: dict[str, Device] = {
    "h100": Device("h100", peak_flops=989e12, memory_bytes=80e9, price_usd=2.69),
    "a100": Device("a100", peak_flops=312e12, memory_bytes=80e9, price_usd=1.64),
    "cpu": Device("cpu", peak_flops=1e11, memory_bytes=16e9, price_usd=0.0),
}

DEFAULT_MFU = 0.3


def get_device(
    device: str | Device | Mapping[str, Any],
    *,
    peak_flops: float | None = None,
    memory_bytes: float | None = None,
    price_usd: float | None = None,
) -> Device:
    """Look up a device by name (``h100``, ``a100``, ``cpu``) or pass one through; keyword
    arguments override single fields (e.g. the cpu's rough peak)."""
    if isinstance(device, Device):
        dev = device
    elif isinstance(device, Mapping):
        base = get_device(device["name"]) if device.get("name") in DEVICES else None
        vals = {**(base.__dict__ if base else {}), **device}
        try:
            dev = Device(
                name=str(vals["name"]),
                peak_flops=float(vals["peak_flops"]),
                memory_bytes=float(vals["memory_bytes"]),
                price_usd=float(vals["price_usd"]),
            )
        except KeyError as exc:
            raise AltgradError(f"device spec is missing {exc.args[0]!r}") from None
    else:
        key = str(device).lower()
        if key not in DEVICES:
            raise AltgradError(f"unknown device {device!r}; known: {', '.join(sorted(DEVICES))}")
        dev = DEVICES[key]
    over = {
        k: float(v)
        for k, v in (("peak_flops", peak_flops), ("memory_bytes", memory_bytes), ("price_usd", price_usd))
        if v is not None
    }
    dev = replace(dev, **over) if over else dev
    if not (math.isfinite(dev.peak_flops) and dev.peak_flops > 0):
        raise AltgradError(f"device {dev.name}: peak_flops must be > 0, got {dev.peak_flops}")
    if not (math.isfinite(dev.memory_bytes) and dev.memory_bytes > 0):
        raise AltgradError(f"device {dev.name}: memory_bytes must be > 0, got {dev.memory_bytes}")
    if not (math.isfinite(dev.price_usd) and dev.price_usd >= 0):
        raise AltgradError(f"device {dev.name}: price_usd must be >= 0, got {dev.price_usd}")
    return dev


def _check_mfu(mfu: float) -> float:
    mfu = float(mfu)
    if not (0.0 < mfu <= 1.0):
        raise AltgradError(f"mfu must be in (0, 1], got {mfu}")
    return mfu


# --------------------------------------------------------------------------------------
# Jobs, the budget table, the budget check
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobCost:
    """What one training job costs."""

    name: str
    shape: ModelShape
    tokens: float
    n_params: int
    n_params_nonembed: int
    flops_per_token: float
    flops: float
    device: str
    mfu: float
    price_usd: float  # per device-hour
    gpu_hours: float
    usd: float


def plan_job(
    name: str,
    shape: ModelShape | Mapping[str, Any],
    tokens: float,
    device: str | Device = "h100",
    mfu: float = DEFAULT_MFU,
    price: float | None = None,
    *,
    flops_fn: FlopsFn | None = None,
) -> JobCost:
    """Cost of training ``shape`` on ``tokens`` tokens: FLOPs, device-hours, USD.

    device-hours = FLOPs / (peak · mfu) / 3600; USD = device-hours · price (default: the
    device's price). Device-hours do not depend on how many devices share the job.
    """
    shape = ModelShape.from_config(shape)
    dev = get_device(device, price_usd=price)
    mfu = _check_mfu(mfu)
    tokens = float(tokens)
    if not (math.isfinite(tokens) and tokens > 0):
        raise AltgradError(f"job {name!r}: tokens must be a positive number, got {tokens}")
    fpt = float(_resolve_flops_fn(flops_fn)(shape))
    flops = fpt * tokens
    hours = flops / (dev.peak_flops * mfu) / 3600.0
    total, nonembed = param_counts(shape)
    return JobCost(
        name=str(name),
        shape=shape,
        tokens=tokens,
        n_params=total,
        n_params_nonembed=nonembed,
        flops_per_token=fpt,
        flops=flops,
        device=dev.name,
        mfu=mfu,
        price_usd=dev.price_usd,
        gpu_hours=hours,
        usd=hours * dev.price_usd,
    )


def eng(x: float, digits: int = 3) -> str:
    """Engineering notation: mantissa in [1, 1000), exponent a multiple of 3 (``7.94e18``)."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    sign = "-" if x < 0 else ""
    x = abs(x)
    exp3 = 3 * math.floor(math.log10(x) / 3)
    mant = x / 10.0**exp3
    # rounding can push the mantissa to 1000 (e.g. 999.96e3 -> 1.00e6)
    decimals = max(digits - 1 - int(math.floor(math.log10(mant))), 0)
    if round(mant, decimals) >= 1000:
        exp3 += 3
        mant /= 1000.0
        decimals = digits - 1
    return f"{sign}{mant:.{decimals}f}e{exp3}"


def _usd(x: float) -> str:
    """Dollars with cents, or 2 significant digits below one cent (``$0.0000015``)."""
    return f"${x:.2f}" if x == 0 or abs(x) >= 0.01 else f"${x:.2g}"


def _si(x: float) -> str:
    """Three significant digits with a k/M/B/T suffix: ``10.6M``, ``4.20B``, ``512``."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    if abs(x) < 1000 and float(x).is_integer():
        return str(int(x))
    for div, suf in ((1.0, ""), (1e3, "k"), (1e6, "M"), (1e9, "B"), (1e12, "T")):
        v = x / div
        decimals = max(0, 2 - int(math.floor(math.log10(abs(v)))))
        if abs(round(v, decimals)) < 1000 or suf == "T":
            if abs(round(v, decimals)) >= 10 ** (3 - decimals) and decimals > 0:
                decimals -= 1  # 9.996 -> "10.0", not "10.00"
            return f"{v:.{decimals}f}{suf}"
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class BudgetTotals:
    n_jobs: int
    tokens: float
    flops: float
    gpu_hours: float
    usd: float


def budget_totals(jobs: Iterable[JobCost]) -> BudgetTotals:
    """Sums over jobs (tokens, FLOPs, device-hours, USD)."""
    jobs = list(jobs)
    return BudgetTotals(
        n_jobs=len(jobs),
        tokens=math.fsum(j.tokens for j in jobs),
        flops=math.fsum(j.flops for j in jobs),
        gpu_hours=math.fsum(j.gpu_hours for j in jobs),
        usd=math.fsum(j.usd for j in jobs),
    )


def budget_table(jobs: Iterable[JobCost], budget_usd: float | None = None) -> str:
    """Aligned text table: job, device, params, non-embedding params, tokens, FLOPs
    (engineering notation), device-hours, USD, and a TOTAL row (plus the budget if given)."""
    jobs = list(jobs)
    head = ("job", "device", "params", "non-emb", "tokens", "FLOPs", "GPU-h", "USD")
    rows = [
        (
            j.name,
            j.device,
            _si(j.n_params),
            _si(j.n_params_nonembed),
            _si(j.tokens),
            eng(j.flops),
            f"{j.gpu_hours:.3f}",
            f"{j.usd:.2f}",
        )
        for j in jobs
    ]
    t = budget_totals(jobs)
    total = (
        f"TOTAL ({t.n_jobs} jobs)", "", "", "", _si(t.tokens), eng(t.flops), f"{t.gpu_hours:.3f}", f"{t.usd:.2f}"
    )
    allrows = [head, *rows, total]
    widths = [max(len(r[i]) for r in allrows) for i in range(len(head))]

    def fmt(r: Sequence[str]) -> str:
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])]
        cells += [c.rjust(w) for c, w in zip(r[2:], widths[2:])]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = [fmt(head), rule, *(fmt(r) for r in rows), rule, fmt(total)]
    if budget_usd is not None:
        left = budget_usd - t.usd
        lines.append(f"budget {budget_usd:.2f} USD, {'left' if left >= 0 else 'OVER BY'} {abs(left):.2f} USD")
    return "\n".join(lines)


def check_budget(jobs: Iterable[JobCost], budget_usd: float) -> float:
    """Return the total USD of ``jobs``; raise :class:`BudgetExceeded` if it is over budget.

    The message gives the total, the budget, the overrun, the biggest jobs, and the knobs
    that reduce cost.
    """
    jobs = list(jobs)
    budget_usd = float(budget_usd)
    if not (math.isfinite(budget_usd) and budget_usd >= 0):
        raise AltgradError(f"budget.usd must be a finite number >= 0, got {budget_usd}")
    total = budget_totals(jobs).usd
    if total <= budget_usd:
        return total
    over = total - budget_usd
    biggest = sorted(jobs, key=lambda j: j.usd, reverse=True)[:3]
    big = ", ".join(f"{j.name} ${j.usd:.2f} ({100 * j.usd / total:.0f}%)" for j in biggest)
    pct = f" ({100 * over / budget_usd:.0f}% over)" if budget_usd > 0 else ""
    msg = (
        f"planned cost ${total:.2f} for {len(jobs)} jobs exceeds the budget ${budget_usd:.2f} "
        f"by ${over:.2f}{pct}"
    )
    msg += (
        f". Biggest jobs: {big}. To reduce cost: run fewer seeds/formats/optimizers in the grid, "
        "fewer steps/tokens per run, a smaller model, or a cheaper device/higher MFU; "
        f"or raise budget.usd to at least {math.ceil(total * 100) / 100:.2f}."
    )
    raise BudgetExceeded(msg, total_usd=total, budget_usd=budget_usd)


# --------------------------------------------------------------------------------------
# Memory estimate
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryEstimate:
    state_bytes: float  # weights + grads + Adam moments
    activation_bytes: float
    logits_bytes: float

    @property
    def total_bytes(self) -> float:
        return self.state_bytes + self.activation_bytes + self.logits_bytes


def memory_estimate(
    shape: ModelShape,
    batch_size: int,
    *,
    bytes_per_param: float = 16.0,
    activation_bytes: float = 2.0,
    flash_attention: bool = False,
) -> MemoryEstimate:
    """Rough peak training memory for one micro-batch of ``batch_size × block_size``.

    * State: ``bytes_per_param`` per parameter — fp32 weights 4 + grads 4 + Adam m, v 8 = 16.
    * Activations per layer: ``s·b·h·(34 + 5·a·s/h)`` bytes at 16-bit activations
      (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
      Models", no parallelism, no recomputation); the ``5·a·s/h`` term (attention scores)
      disappears with a fused attention kernel. Scaled by ``activation_bytes / 2``.
    * Logits: ``b·s·V`` in fp32, plus their gradient.
    The quantization simulation keeps extra temporaries; treat this as a lower bound and
    keep head-room (the planner uses 90% of device memory).
    """
    b, s, h, a, V = batch_size, shape.block_size, shape.n_embd, shape.n_head, shape.vocab_size
    total, _ = param_counts(shape)
    per_layer = s * b * h * (34.0 + (0.0 if flash_attention else 5.0 * a * s / h))
    acts = shape.n_layer * per_layer * (activation_bytes / 2.0)
    logits = 2.0 * 4.0 * b * s * V
    return MemoryEstimate(state_bytes=bytes_per_param * total, activation_bytes=acts, logits_bytes=logits)


# --------------------------------------------------------------------------------------
# Compute-optimal planning
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


@dataclass(frozen=True)
class ComputePlan:
    """A compute-optimal plan: what to train, for how long, at what cost."""

    budget_usd: float
    device: str
    price_usd: float
    mfu: float
    n_runs: int
    law: str
    flops_per_run: float
    n_target: float  # non-embedding N the scaling law asks for
    d_target: float  # tokens the law asks for (C / 6N)
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
    def tokens_per_param(self) -> float:
        return self.tokens / self.n_params_nonembed

    @property
    def usd_total(self) -> float:
        return self.usd_per_run * self.n_runs

    def describe(self) -> str:
        s = self.shape
        lines = [
            f"budget ${self.budget_usd:.2f} on {self.device} at ${self.price_usd:.2f}/h, MFU {self.mfu:.2f}, "
            f"{self.n_runs} run(s): {eng(self.flops_per_run)} FLOPs per run ({self.law})",
            f"law target: N* = {_si(self.n_target)} non-embedding params, D* = {_si(self.d_target)} tokens",
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
    tokens_per_param: float = 20.0,
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
) -> ComputePlan:
    """Turn a dollar budget into a compute-optimal model shape and token count.

    1. budget → FLOPs per run: ``C = budget/price · 3600 · peak · mfu / n_runs``.
    2. C → target non-embedding N*: with ``fit`` (a :class:`altgrad.analysis.scaling.PowerLaw`
       or any ``C -> N`` callable) ``N* = k'·C^b``; otherwise Chinchilla (Hoffmann et al.
       2022): ``D = r·N`` with r = ``tokens_per_param`` (≈20) and ``C = 6·N·D``, so
       ``N* = sqrt(C / (6r))``.
    3. N* → the nearest shape of :func:`shape_family` (width multiple of 64, head dim 64,
       width/depth = ``aspect``), then the real tokens for that shape from the one FLOPs
       convention: ``D = C / flops_per_token(shape)``, rounded down to whole optimizer
       steps of ``batch_size × block_size`` tokens (so the plan never exceeds the budget).

    Raises :class:`InfeasiblePlan` (an AltgradError) when the budget cannot buy the smallest
    shape, when the plan has fewer tokens than N/10, or when one batch does not fit in
    ``memory_fraction`` of device memory.
    """
    dev = get_device(device, price_usd=price)
    mfu = _check_mfu(mfu)
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
    if not (tokens_per_param > 0):
        raise InfeasiblePlan(f"tokens_per_param must be > 0, got {tokens_per_param}")
    ffn = _resolve_flops_fn(flops_fn)
    notes: list[str] = []

    flops_total = budget_usd / dev.price_usd * 3600.0 * dev.peak_flops * mfu
    C = flops_total / n_runs

    if fit is None:
        n_target = math.sqrt(C / (6.0 * tokens_per_param))
        law = f"Chinchilla, D = {tokens_per_param:g}·N, C = 6ND"
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
    d_target = C / (6.0 * n_target)

    fam = dict(block_size=block_size, vocab_size=vocab_size, aspect=aspect, head_dim=head_dim, bias=bias)
    tokens_per_step = batch_size * block_size

    smallest = shape_family(min_layers, **fam)
    n_small = param_counts(smallest)[1]
    c_min = ffn(smallest) * max(n_small / 10.0, tokens_per_step)
    if C < c_min:
        usd_min = c_min * n_runs / (3600.0 * dev.peak_flops * mfu) * dev.price_usd
        raise InfeasiblePlan(
            f"budget {_usd(budget_usd)} buys {eng(C)} FLOPs per run, too little for even the smallest shape "
            f"(n_layer={smallest.n_layer}, n_embd={smallest.n_embd}, N={n_small:,}), which needs "
            f"{eng(c_min)} FLOPs per run (max(N/10, one batch) tokens); raise the budget to at least "
            f"{_usd(usd_min)} or use fewer runs"
        )

    shape = shape_for_params(n_target, min_layers=min_layers, max_layers=max_layers, **fam)
    total, nonembed = param_counts(shape)
    if n_target < n_small:
        notes.append(f"N* = {_si(n_target)} is below the smallest shape; using n_layer={min_layers}")
    elif n_target > param_counts(shape_family(max_layers, **fam))[1]:
        notes.append(f"N* = {_si(n_target)} is above the largest shape (n_layer={max_layers}); clamped")

    fpt = float(ffn(shape))
    steps = int(C / fpt // tokens_per_step)
    tokens = steps * tokens_per_step
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
    per_run = plan_job("per run", shape, tokens, dev, mfu, flops_fn=ffn)  # the table's own pricing
    return ComputePlan(
        budget_usd=budget_usd,
        device=dev.name,
        price_usd=dev.price_usd,
        mfu=mfu,
        n_runs=n_runs,
        law=law,
        flops_per_run=C,
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
