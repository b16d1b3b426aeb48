"""Price every training job before it runs: FLOPs, device-hours, dollars, memory, the budget check.

Pure Python; no torch. Every FLOP count in altgrad goes through one function,
:func:`altgrad.training.flops.flops_per_token`, so the budget table, the budget check, the
compute-optimal planner (:mod:`altgrad.experiment.planning`) and the scaling-law fits all use
the same convention. A run also spends compute outside its training tokens (evaluation, the
FP32 shadow model): :func:`eval_and_shadow_factor` is that overhead, and :func:`price_run`
prices one run config with it, exactly as the pipeline's budget table does.

Typical use::

    shape = ModelShape(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=50257)
    jobs = [plan_job(f"e5m2-manifold-s{s}", shape, tokens=50e6, device="h100") for s in range(3)]
    print(budget_table(jobs))
    check_budget(jobs, budget_usd=20.0)          # raises BudgetExceeded with advice
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from altgrad.errors import AltgradError
from altgrad.training.flops import FlopsFn, ModelShape, flops_per_token, param_counts

if TYPE_CHECKING:
    from altgrad.training.config import RunConfig, TrainConfig

__all__ = [
    "DEFAULT_MFU",
    "DEVICES",
    "BudgetExceeded",
    "BudgetTotals",
    "Device",
    "JobCost",
    "MemoryEstimate",
    "budget_table",
    "budget_totals",
    "check_budget",
    "dollars",
    "eng",
    "eval_and_shadow_factor",
    "get_device",
    "memory_estimate",
    "plan_job",
    "price_run",
    "si",
]


class BudgetExceeded(AltgradError):
    """The planned jobs cost more than the configured budget (``budget.usd``)."""

    def __init__(self, message: str, *, total_usd: float, budget_usd: float) -> None:
        super().__init__(message)
        self.total_usd = total_usd
        self.budget_usd = budget_usd
        self.overrun_usd = total_usd - budget_usd


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


def check_mfu(mfu: float) -> float:
    """``mfu`` as a float in (0, 1], or an AltgradError."""
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
    mfu = check_mfu(mfu)
    tokens = float(tokens)
    if not (math.isfinite(tokens) and tokens > 0):
        raise AltgradError(f"job {name!r}: tokens must be a positive number, got {tokens}")
    fpt = float((flops_fn or flops_per_token)(shape))
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


def _cent_decimals(x: float) -> int:
    """Decimals that show ``x`` in dollars: cents, or 2 significant digits below one cent."""
    if x == 0 or not math.isfinite(x) or abs(x) >= 0.01:
        return 2
    return min(1 - math.floor(math.log10(abs(x))), 15)


def dollars(x: float) -> str:
    """Dollars with cents, or 2 significant digits below one cent (``$0.0000015``)."""
    return f"${x:.{_cent_decimals(x)}f}"


def si(x: float) -> str:
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
            si(j.n_params),
            si(j.n_params_nonembed),
            si(j.tokens),
            eng(j.flops),
            f"{j.gpu_hours:.3f}",
            f"{j.usd:.2f}",
        )
        for j in jobs
    ]
    t = budget_totals(jobs)
    total = (
        f"TOTAL ({t.n_jobs} jobs)", "", "", "", si(t.tokens), eng(t.flops), f"{t.gpu_hours:.3f}", f"{t.usd:.2f}"
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
        lines.append(f"budget {dollars(budget_usd)[1:]} USD, {'left' if left >= 0 else 'OVER BY'} "
                     f"{dollars(abs(left))[1:]} USD")
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
    # as many decimals as it takes to show the two amounts (and that they differ): never
    # "$0.00 exceeds the budget $0.00 by $0.00"
    d = max(_cent_decimals(total), _cent_decimals(budget_usd))
    while round(total, d) == round(budget_usd, d) and d < 15:
        d += 1
    biggest = sorted(jobs, key=lambda j: j.usd, reverse=True)[:3]
    big = ", ".join(f"{j.name} {dollars(j.usd)} ({100 * j.usd / total:.0f}%)" for j in biggest)
    pct = f" ({100 * over / budget_usd:.0f}% over)" if budget_usd > 0 else ""
    msg = (
        f"planned cost ${total:.{d}f} for {len(jobs)} jobs exceeds the budget ${budget_usd:.{d}f} "
        f"by {dollars(over)}{pct}"
    )
    raise_to = math.ceil(total * 10**d) / 10**d
    msg += (
        f". Biggest jobs: {big}. To reduce cost: run fewer seeds/formats/optimizers in the grid, "
        "fewer steps/tokens per run, a smaller model, or a cheaper device/higher MFU; "
        f"or raise budget.usd to at least {raise_to:.{d}f}."
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
# A run config's cost
# --------------------------------------------------------------------------------------


def eval_and_shadow_factor(train: TrainConfig, steps: int | None = None) -> float:
    """A run's compute relative to its training tokens × flops_per_token.

    On top of training: every evaluation's forward passes (``eval_batches`` batches, a third
    of a training token's FLOPs each) and, every ``shadow_interval`` steps, the FP32 shadow
    model's forward and backward pass. ``steps``: the run's length if not ``max_steps``.
    """
    steps = train.max_steps if steps is None else max(int(steps), 1)
    evals = len(range(0, steps, train.eval_interval)) + (0 if (steps - 1) % train.eval_interval == 0 else 1)
    eval_tokens = evals * train.eval_batches * train.batch_size
    train_tokens = steps * train.batch_size * train.grad_accum
    shadow = 0.0 if not train.shadow_interval else len(range(0, steps, train.shadow_interval)) / steps
    return 1.0 + shadow + eval_tokens / (3.0 * train_tokens)


def price_run(
    name: str, config: RunConfig, *, data_vocab_size: int, device: str | Device, mfu: float, price: float | None
) -> JobCost:
    """What one run costs: its training tokens (steps × batch × grad_accum × block) at
    flops_per_token of its model, times :func:`eval_and_shadow_factor`. A null
    ``model.vocab_size`` is ``data_vocab_size`` (the prepared corpus's, or an upper bound)."""
    m, t = config.model, config.train
    shape = ModelShape(n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, block_size=m.block_size,
                       vocab_size=m.vocab_size or data_vocab_size, bias=m.bias)
    factor = eval_and_shadow_factor(t)
    tokens = t.max_steps * t.batch_size * t.grad_accum * m.block_size
    return plan_job(name, shape, tokens, device=device, mfu=mfu, price=price,
                    flops_fn=lambda s: factor * flops_per_token(s))
