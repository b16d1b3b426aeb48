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

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from altgrad.errors import AltgradError
from altgrad.experiment.calibration import kind_key, load_calibration, run_events
from altgrad.training.flops import FlopsFn, ModelShape, flops_per_token, param_counts

if TYPE_CHECKING:
    from altgrad.training.config import RunConfig, TrainConfig

__all__ = [
    "DEFAULT_MFU",
    "DEVICES",
    "ASSUMED",
    "MEASURED",
    "BudgetExceeded",
    "BudgetTotals",
    "Device",
    "JobCost",
    "MemoryEstimate",
    "budget_table",
    "budget_totals",
    "cent_decimals",
    "check_budget",
    "dollars",
    "duration",
    "eng",
    "eval_and_shadow_factor",
    "get_device",
    "memory_estimate",
    "plan_job",
    "price_run",
    "run_shape",
    "with_seconds",
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
    """A training device: dense BF16 peak FLOP/s, memory, an hourly price (USD), and what the
    assumed estimate needs besides: memory bandwidth (B/s: eager simulated quantization is
    memory-bound), the FP32 matmul peak (the FP32 shadow pass) and an assumed per-job start-up.
    """

    name: str
    peak_flops: float
    memory_bytes: float
    price_usd: float
    bandwidth: float = 0.0  # bytes/s; 0 = unknown (the traffic model then adds nothing)
    fp32_flops: float = 0.0  # FP32 (non-tensor-core) peak; 0 = peak_flops
    startup_s: float = 0.0  # assumed fixed cost of one job (process, imports, data check, writes)


# Vendor peak numbers are DENSE BF16 tensor-core throughput (the datasheets' headline
# numbers with 2:4 sparsity are 2x these):
#   NVIDIA H100 SXM5 datasheet: 989 TFLOPS BF16 dense (1,979 sparse), 80 GB HBM3.
#   NVIDIA A100 datasheet: 312 TFLOPS BF16 dense (624 sparse), 40 or 80 GB.
# Memory bandwidth, same datasheets: H100 SXM5 3.35 TB/s HBM3; A100 80GB SXM 2.0 TB/s HBM2e
# (2,039 GB/s). FP32 (no tensor cores; torch leaves TF32 matmuls off, and the shadow model
# runs without autocast): H100 SXM 67 TFLOPS, A100 19.5 TFLOPS.
# Prices are per device-hour and only defaults: h100 2.69 is the project's reference
# on-demand rate; a100 is a rough cloud figure; the local cpu costs nothing. cpu peak is
# a rough order of magnitude for a few-core machine in float32; override it per host.
# startup_s of a GPU is an ASSUMPTION, not a measurement (CUDA context, imports, the corpus's
# sha256, W&B offline, checkpoint and parquet writes): `altgrad calibrate` measures it on the
# machine. The cpu's comes from the committed reference calibration (REFERENCE_CPU).
GPU_STARTUP_S = 60.0
DEVICES: dict[str, Device] = {
    "h100": Device("h100", peak_flops=989e12, memory_bytes=80e9, price_usd=2.69, bandwidth=3.35e12,
                   fp32_flops=67e12, startup_s=GPU_STARTUP_S),
    "a100": Device("a100", peak_flops=312e12, memory_bytes=80e9, price_usd=1.64, bandwidth=2.0e12,
                   fp32_flops=19.5e12, startup_s=GPU_STARTUP_S),
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
                **{k: float(vals[k]) for k in ("bandwidth", "fp32_flops", "startup_s") if k in vals},
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


MEASURED, ASSUMED = "measured", "assumed"  # JobCost.basis


@dataclass(frozen=True)
class JobCost:
    """What one training job costs.

    ``seconds`` is the estimated wall time of the whole job (``altgrad train``, start to end);
    ``gpu_hours = seconds / 3600`` and ``usd = gpu_hours * price_usd``. ``basis`` says where
    ``seconds`` comes from: ``"measured"`` (a calibration file's timings of this kind of job
    on this device: :mod:`altgrad.experiment.calibration`) or ``"assumed"`` (FLOPs at the
    BF16 ``mfu`` of the device's peak, times ``overhead``, the simulated recipe's and
    optimizer's cost relative to native BF16 (1 = native BF16)). ``kind``: the job's kind
    (what sets the cost of a step; :func:`altgrad.experiment.calibration.kind_key`) when it
    was priced from a run config.
    """

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
    seconds: float = 0.0
    basis: str = ASSUMED
    overhead: float = 1.0
    kind: str | None = None


def plan_job(
    name: str,
    shape: ModelShape | Mapping[str, Any],
    tokens: float,
    device: str | Device = "h100",
    mfu: float = DEFAULT_MFU,
    price: float | None = None,
    *,
    flops_fn: FlopsFn | None = None,
    overhead: float = 1.0,
) -> JobCost:
    """Cost of training ``shape`` on ``tokens`` tokens: FLOPs, device-hours, USD.

    device-hours = FLOPs / (peak · mfu) · overhead / 3600; USD = device-hours · price (default:
    the device's price). ``mfu`` is the BF16 MFU; ``overhead`` the simulated precision's cost
    relative to native BF16 (1: priced like native BF16). Device-hours do not depend on how
    many devices share the job.
    """
    shape = ModelShape.from_config(shape)
    dev = get_device(device, price_usd=price)
    mfu = check_mfu(mfu)
    tokens = float(tokens)
    if not (math.isfinite(tokens) and tokens > 0):
        raise AltgradError(f"job {name!r}: tokens must be a positive number, got {tokens}")
    if not (math.isfinite(overhead) and overhead > 0):
        raise AltgradError(f"job {name!r}: overhead must be a positive number, got {overhead}")
    fpt = float((flops_fn or flops_per_token)(shape))
    flops = fpt * tokens
    seconds = flops / (dev.peak_flops * mfu) * overhead
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
        gpu_hours=seconds / 3600.0,
        usd=seconds / 3600.0 * dev.price_usd,
        seconds=seconds,
        overhead=float(overhead),
    )


def with_seconds(job: JobCost, seconds: float, basis: str, overhead: float | None = None,
                 kind: str | None = None) -> JobCost:
    """``job`` with another wall-time estimate (hours and dollars follow)."""
    hours = float(seconds) / 3600.0
    return replace(job, seconds=float(seconds), gpu_hours=hours, usd=hours * job.price_usd, basis=basis,
                   overhead=job.overhead if overhead is None else float(overhead), kind=kind)


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


def cent_decimals(x: float) -> int:
    """Decimals that show ``x`` in dollars: cents, or 2 significant digits below one cent."""
    if x == 0 or not math.isfinite(x) or abs(x) >= 0.01:
        return 2
    return min(1 - math.floor(math.log10(abs(x))), 15)


def dollars(x: float) -> str:
    """Dollars with cents, or 2 significant digits below one cent (``$0.0000015``)."""
    return f"${x:.{cent_decimals(x)}f}"


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


def duration(seconds: float) -> str:
    """A wall time for a table: ``14.2s``, ``3.5m``, ``2.40h``."""
    if not math.isfinite(seconds):
        return f"{seconds:g}"
    if seconds < 99.95:
        return f"{seconds:.1f}s"
    if seconds < 5997.0:  # 99.95 min shows as "100.0m" otherwise
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.2f}h"


def budget_table(jobs: Iterable[JobCost], budget_usd: float | None = None) -> str:
    """Aligned text table: job, device, basis (measured | assumed), params, non-embedding
    params, tokens, FLOPs (engineering notation), estimated wall time, device-hours, USD, and
    a TOTAL row (plus the budget if given)."""
    jobs = list(jobs)
    head = ("job", "device", "basis", "params", "non-emb", "tokens", "FLOPs", "time", "GPU-h", "USD")
    rows = [
        (
            j.name,
            j.device,
            j.basis,
            si(j.n_params),
            si(j.n_params_nonembed),
            si(j.tokens),
            eng(j.flops),
            duration(j.seconds),
            f"{j.gpu_hours:.3f}",
            f"{j.usd:.2f}",
        )
        for j in jobs
    ]
    t = budget_totals(jobs)
    total = (f"TOTAL ({t.n_jobs} jobs)", "", "", "", "", si(t.tokens), eng(t.flops), duration(t.gpu_hours * 3600.0),
             f"{t.gpu_hours:.3f}", f"{t.usd:.2f}")
    allrows = [head, *rows, total]
    widths = [max(len(r[i]) for r in allrows) for i in range(len(head))]

    def fmt(r: Sequence[str]) -> str:
        cells = [r[i].ljust(widths[i]) for i in range(3)]
        cells += [c.rjust(w) for c, w in zip(r[3:], widths[3:])]
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
    d = max(cent_decimals(total), cent_decimals(budget_usd))
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


def run_shape(config: RunConfig, data_vocab_size: int) -> ModelShape:
    """A run's model shape; a null ``model.vocab_size`` is ``data_vocab_size``."""
    m = config.model
    return ModelShape(n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, block_size=m.block_size,
                      vocab_size=m.vocab_size or data_vocab_size, bias=m.bias)


# --------------------------------------------------------------------------------------
# The assumed basis: BF16 MFU x the simulated precision's overhead
# --------------------------------------------------------------------------------------
#
# On a GPU there is no measurement here, so the overhead is a memory-traffic model. Eager
# simulated quantization is a chain of elementwise kernels, each reading and writing the whole
# tensor in float32, so its time is (elements quantized) x (bytes moved per quantized element)
# / (memory bandwidth). Bytes per quantized element = eager quantize time / clone() time x 8
# (clone reads and writes 4 bytes per element), with telemetry on (training records it):
# bytes = (quantize ms / clone ms) x (1 + telemetry's share) x 8, measured by
#     python benchmarks/quantize.py --eager-only
# (16,777,216 float32 elements, 2 threads, median of 7 rounds) on this repository's shared CPU
# machine, 2026-11-30 08:20 UTC: e.g. e5m2 RNE 178.3 ms, clone 50.1 ms, telemetry +87% -> 53.2 B;
# SR 308.8 ms, +57% -> 77.4 B. Between rows clone() itself measured 32-60 ms: read the figures
# as +-30%. QUANT_BYTES below: (nearest, stochastic) per format. A CPU's ratio to clone()
# stands in for a GPU's: both are memory-bound chains of elementwise passes there.
# Elements quantized per step, per quantized linear layer (d = n_embd): the weight once per
# micro-batch (out x in), the activation (in) and the gradient into the output (out) per token;
# a block's four linears: weights 12 d^2, activations 7 d, gradients 9 d per token (and the
# lm_head, when not skipped: V d, d, V). The GPU overhead ratio is then 1 + t_sim / t_bf16,
# t_bf16 = flops_per_token / (peak x mfu). For config/runpod.yaml (6 x 384, batch 64 x 256, H100,
# mfu 0.3): 2.5 MB of quantize traffic per token for e5m2 -> 0.75 us vs 0.62 us of BF16 compute
# -> ratio 2.2 (bf16 2.2: its gradients are stochastically rounded and its telemetry recorded
# through the same simulation; e7m0 2.4). The host's dispatch of the eager chain is a second
# floor (below, DISPATCH_S): the ratio is the larger of the two. Not modelled: the per-layer
# precision rules (the base recipe's formats are used), the trainer's per-step diagnostics'
# memory traffic (a few passes over the weights). `altgrad calibrate` on the GPU measures it all.
QUANT_BYTES: dict[str, tuple[float, float]] = {
    "bf16": (57.8, 68.4),
    "e5m2": (53.2, 77.4),
    "e4m3": (53.5, 78.7),
    "e3m4": (45.3, 80.8),
    "e2m5": (37.4, 52.1),
    "e1m6": (54.1, 80.0),
    "e0m7": (41.1, 76.3),
    "e7m0": (63.4, 85.2),
    "e8m0": (48.4, 59.4),
}
# The optimizer step is memory-bound too: AdamW moves 28 bytes per parameter (float32 p, grad,
# m, v read; p, m, v written). The geometry-aware optimizers cost more per step, relative to
# AdamW, both with the trainer's default update diagnostics, eager (as config/runpod.yaml runs),
# measured by `OMP_NUM_THREADS=1 python benchmarks/optim_step.py` (9.4M parameters, 1 thread,
# median of 7, the same machine and date): AdamW 18.7 ms, ManifoldAdamW 44.3 ms (2.4x),
# GridOptim 110.0 ms (5.9x). The extra (ratio - 1) x 28 B per parameter is added per step.
ADAMW_BYTES_PER_PARAM = 28.0
OPTIMIZER_RATIO: dict[str, float] = {"adamw": 1.0, "manifold_adamw": 2.4, "grid": 5.9}

REFERENCE_CPU = Path(__file__).parent / "reference_calibration" / "cpu.json"
REFERENCE_RELATIVE = "altgrad/experiment/reference_calibration/cpu.json"


def _quant_bytes(fmt: str | None, rounding: str) -> float:
    if fmt is None:
        return 0.0
    nearest, stochastic = QUANT_BYTES.get(str(fmt), max(QUANT_BYTES.values()))  # an unknown format: the dearest
    return stochastic if rounding == "stochastic" else nearest


def gpu_overhead(config: RunConfig, shape: ModelShape, dev: Device, mfu: float) -> float:
    """The ratio of a simulated step to a native BF16 one on a GPU: the memory-traffic model's
    ``1 + t_sim / t_bf16``, or the host's eager dispatch of the step's operators over t_bf16 when
    that is larger (see the notes above)."""
    if dev.bandwidth <= 0:
        return 1.0
    p, d, L, V = config.precision, shape.n_embd, shape.n_layer, shape.vocab_size
    head = 0 if p.skip_lm_head else 1
    tokens_per_micro = config.train.batch_size * shape.block_size
    weights = (12 * d * d * L + head * V * d) / tokens_per_micro  # per token
    acts = 7 * d * L + head * d
    grads = 9 * d * L + head * V
    t_sim = (weights * _quant_bytes(p.weight, p.rounding) + acts * _quant_bytes(p.activation, p.rounding)
             + grads * _quant_bytes(p.gradient, p.grad_rounding)) / dev.bandwidth
    n_params, _ = param_counts(shape)
    extra_opt = OPTIMIZER_RATIO.get(config.optimizer.name, max(OPTIMIZER_RATIO.values())) - 1.0
    tokens_per_step = tokens_per_micro * config.train.grad_accum
    t_sim += max(extra_opt, 0.0) * n_params * ADAMW_BYTES_PER_PARAM / dev.bandwidth / tokens_per_step
    t_bf16 = flops_per_token(shape) / (dev.peak_flops * mfu)
    # the host's floor: every operator of the step dispatched one by one (eager)
    calls = 4 * L + head
    quant_ops = calls * (_quant_ops(p.weight, p.rounding) + _quant_ops(p.activation, p.rounding)
                         + _quant_ops(p.gradient, p.grad_rounding))
    base_ops = L * OPS_PER_LAYER.get(config.optimizer.name, max(OPS_PER_LAYER.values()))
    t_host = (base_ops + config.train.grad_accum * quant_ops) * DISPATCH_S / tokens_per_step
    return max(1.0 + t_sim / t_bf16, t_host / t_bf16)


# Eager PyTorch dispatches every operator from the host, one by one: a step of many small
# operators is bound by the host however fast the GPU, and simulated quantization is many
# operators. Counted with torch.profiler (top-level aten ops of one Trainer.train_step, the
# config/runpod.yaml model 6 x 384 on this CPU, shadow and rank probe off, 2026-11-30): a
# scaled_quantize call with delayed scaling and telemetry is 50 ops (e5m2, nearest), 56
# (stochastic); e7m0 52 / 58; bf16 25 / 32. A whole step: bf16-AdamW 5,476, e5m2-AdamW 7,516,
# e5m2-ManifoldAdamW 8,206, e5m2-GridOptim 9,118 ops; less the quantize calls' (24 linears x
# W, A, G), the rest per layer: OPS_PER_LAYER (model forward and backward, the optimizer, the
# per-step diagnostics). One tiny elementwise op costs 3.3 us of host time on this CPU
# (measured); a CUDA launch adds its own host cost, so DISPATCH_S = 5 us is an ASSUMPTION (a
# conservative one for eager CUDA; `altgrad calibrate` on the GPU measures the real step).
# For config/runpod.yaml at mfu 0.3 (t_bf16 10.1 ms per 64 x 256 step): bf16-AdamW 28 ms on
# the host (2.8x), e5m2-AdamW 38 ms (3.7x), e7m0-GridOptim 46 ms (4.6x): above the traffic
# model's 2.2-2.5x, so the host floor is what prices those runs.
QUANT_OPS: dict[str, tuple[int, int]] = {"bf16": (25, 32), "e7m0": (52, 58), "e8m0": (52, 58)}
QUANT_OPS_DEFAULT = (50, 56)  # the other registry formats (e5m2 measured)
OPS_PER_LAYER: dict[str, int] = {"adamw": 629, "manifold_adamw": 744, "grid": 896}
DISPATCH_S = 5e-6


def _quant_ops(fmt: str | None, rounding: str) -> int:
    if fmt is None:
        return 0
    nearest, stochastic = QUANT_OPS.get(str(fmt), QUANT_OPS_DEFAULT)
    return stochastic if rounding == "stochastic" else nearest


@functools.cache
def _reference(path: str) -> Any:
    return load_calibration(path)


def cpu_overhead(config: RunConfig, reference: str | Path = REFERENCE_CPU) -> tuple[float, float]:
    """(overhead ratio, start-up seconds) on a CPU from the committed reference calibration
    (``altgrad calibrate`` of config/config.yaml): the step time of the reference kind with this
    run's formats per site and optimizer over the bf16-AdamW kind's (the tiny model's ratios,
    applied to any shape); a recipe the reference has not measured gets the dearest ratio of
    its optimizer (or of all)."""
    if not Path(reference).is_file():
        raise AltgradError(
            f"the reference calibration {reference} (part of altgrad: the assumed CPU basis's overhead ratios) is "
            f"missing; restore it (git checkout {REFERENCE_RELATIVE}) or make it again with `altgrad calibrate "
            f"--config config/config.yaml --out {REFERENCE_RELATIVE}`"
        )
    ref = _reference(str(reference))
    return ref.overhead(config), ref.startup_s


# --------------------------------------------------------------------------------------
# A run config's cost
# --------------------------------------------------------------------------------------


def price_run(
    name: str, config: RunConfig, *, data_vocab_size: int, device: str | Device, mfu: float, price: float | None,
    calibration: Any = None,
) -> JobCost:
    """What one run costs, as wall seconds of its job.

    Always: its training tokens (steps × batch × grad_accum × block) and FLOPs (flops_per_token
    of its model times :func:`eval_and_shadow_factor`). A null ``model.vocab_size`` is
    ``data_vocab_size`` (the prepared corpus's, or an upper bound).

    ``"measured"`` when ``calibration`` (an :class:`altgrad.experiment.calibration.Calibration`
    for this device) has timed the run's kind: start-up + steps × step_s + shadow passes ×
    shadow_s + rank probes × rank_s + eval batches × eval_batch_s + checkpoints ×
    checkpoint_s (:func:`run_events` counts them). Otherwise ``"assumed"``: training and eval
    FLOPs at the BF16 ``mfu`` of the device's peak times the recipe's overhead ratio (GPU: the
    memory-traffic model, :func:`gpu_overhead`; CPU: the reference calibration's measured
    ratios, :func:`cpu_overhead`), the FP32 shadow passes at its FP32 peak, plus the device's
    assumed start-up.
    """
    t = config.train
    shape = run_shape(config, data_vocab_size)
    factor = eval_and_shadow_factor(t)
    tokens = t.max_steps * t.batch_size * t.grad_accum * shape.block_size
    dev = get_device(device, price_usd=price)
    base = plan_job(name, shape, tokens, device=dev, mfu=mfu, flops_fn=lambda s: factor * flops_per_token(s))
    timing = calibration.timing(config, data_vocab_size) if calibration is not None else None
    if timing is not None:
        return with_seconds(base, timing.job_seconds(config.train, calibration.startup_s), MEASURED,
                            overhead=timing.step_s / (t.batch_size * t.grad_accum * shape.block_size)
                            / (flops_per_token(shape) / (dev.peak_flops * mfu)), kind=timing.kind)
    if dev.name == "cpu" and dev.bandwidth <= 0:
        overhead, startup = cpu_overhead(config)
    else:
        overhead, startup = gpu_overhead(config, shape, dev, mfu), dev.startup_s
    ev = run_events(t)
    fpt = flops_per_token(shape)
    per_token = fpt / (dev.peak_flops * mfu) * overhead
    seconds = (startup + tokens * per_token + ev.eval_batches * t.batch_size * shape.block_size * per_token / 3.0
               + ev.shadows * t.batch_size * t.grad_accum * shape.block_size * fpt
               / ((dev.fp32_flops or dev.peak_flops) * mfu))
    return with_seconds(base, seconds, ASSUMED, overhead=overhead, kind=kind_key(config, data_vocab_size))
