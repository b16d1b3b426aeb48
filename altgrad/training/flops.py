"""A GPT's shape, its exact parameter counts and its training FLOPs per token.

Pure Python (no torch): the trainer records what a run spent with it, and the budget
planner (altgrad.experiment.pricing) prices runs with it, so both use one convention.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from altgrad.errors import AltgradError

@dataclass(frozen=True)
class ModelShape:
    """Shape of a nanoGPT-style GPT (pre-LN blocks, GELU MLP with 4x expansion,
    learned position embeddings, lm_head weight tied to the token embedding)."""

    n_layer: int
    n_head: int
    n_embd: int
    block_size: int
    vocab_size: int
    bias: bool = False

    def __post_init__(self) -> None:
        for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise AltgradError(f"model.{name} must be a positive integer, got {v!r}")
        if self.n_embd % self.n_head:
            raise AltgradError(
                f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head})"
            )

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_config(cls, obj: Any, **overrides: Any) -> ModelShape:
        """Build from a ModelShape, a mapping (e.g. the ``model:`` config section) or any
        object with the same attribute names (e.g. a GPT config). Extra keys are ignored."""
        if isinstance(obj, ModelShape):
            return replace(obj, **overrides) if overrides else obj
        names = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias")
        if isinstance(obj, Mapping):
            vals = {k: obj[k] for k in names if k in obj}
        else:
            vals = {k: getattr(obj, k) for k in names if hasattr(obj, k)}
        vals.update(overrides)
        missing = [k for k in names[:5] if k not in vals]
        if missing:
            raise AltgradError(f"model shape is missing {', '.join(missing)}")
        return cls(**vals)


def param_counts(shape: ModelShape) -> tuple[int, int]:
    """Exact parameter count of the nanoGPT-style model: ``(total, non_embedding)``.

    Per layer (d = n_embd): ln_1 and ln_2 (weight d each, + bias d each if ``bias``),
    attention qkv ``3d²`` (+3d), attention proj ``d²`` (+d), MLP up ``4d·d`` (+4d),
    MLP down ``d·4d`` (+d). Then the final LayerNorm ln_f (d, +d).
    Embeddings: token ``V·d`` (the lm_head shares this weight, so it is counted once)
    and position ``T·d``.

    Convention: ``non_embedding`` excludes BOTH the token and the position embedding
    (Kaplan et al. 2020's N). ``total`` is what ``sum(p.numel() for p in model.parameters())``
    reports for a tied model. (nanoGPT's own ``get_num_params`` subtracts only the
    position embedding; this function does not follow that.)
    """
    d, L = shape.n_embd, shape.n_layer
    ln = d * (2 if shape.bias else 1)
    linear_bias = (3 * d + d + 4 * d + d) if shape.bias else 0
    per_layer = 2 * ln + 12 * d * d + linear_bias
    non_embedding = L * per_layer + ln
    total = non_embedding + shape.vocab_size * d + shape.block_size * d
    return total, non_embedding


# --------------------------------------------------------------------------------------
# FLOPs convention (the one function used everywhere)
# --------------------------------------------------------------------------------------

FlopsFn = Callable[[ModelShape], float]

_ATTENTION_MODES = ("causal", "full", "none")


def flops_per_token(
    shape: ModelShape,
    include_attention: bool = True,
    *,
    attention: str = "causal",
    lm_head: bool = True,
) -> float:
    """Training FLOPs (forward + backward) per token.

    ``6·N_nonembed + 6·V·d (lm_head) + attention``, attention = ``6·L·T·d`` ("causal",
    default), ``12·L·T·d`` ("full") or 0 ("none" / ``include_attention=False``).

    Derivation (d = n_embd, L = n_layer, T = block_size, V = vocab_size):

    * A matmul (m×k)·(k×n) is m·k·n multiply-adds = 2mkn FLOPs. A weight matrix with P
      entries applied to one token costs 2P forward. Backward costs twice that: the
      gradient w.r.t. the input (2P) and w.r.t. the weight (2P). Training = 6P per token.
      Summed over all non-embedding weights: 6·N_nonembed (the LayerNorm/bias vectors are
      elementwise and tiny; they ride along in N as in the usual "6N" rule).
    * lm_head: the logits matmul uses the tied V×d embedding weight, so it is real
      compute even though its parameters are counted once: 6·V·d. The embedding lookups
      themselves are gathers (~0 FLOPs).
    * Attention (no weights, both operands are activations): per layer, a query
      attending to k keys costs 2·d·k for the scores QKᵀ (d_head per head, summed over
      n_head heads = d) and 2·d·k for the weighted sum of values: 4·d·k forward. Backward
      of each of those matmuls is again 2× forward, so training is 3× forward = 12·d·k.
      - "full": every query counted against all T keys (k = T): 12·L·T·d. This is the
        PaLM appendix B count (12·L·H·Q·T with H·Q = d) and Chinchilla appendix F.
      - "causal" (default): with a causal mask query i sees i+1 keys, mean (T+1)/2 ≈ T/2:
        6·L·T·d — equal to 3× Kaplan et al. 2020 Table 1's forward attention term
        2·n_layer·n_ctx·d_attn, and what a causal kernel (FlashAttention, is_causal=True)
        actually computes (it skips fully masked tiles).
    * Softmax, GELU, LayerNorm, residual adds: O(T·d) elementwise per layer; ignored.

    The quantization simulation (quantize/dequantize around each matmul) adds real
    wall-clock cost that is NOT counted here: it shows up as a lower achieved MFU.
    """
    if attention not in _ATTENTION_MODES:
        raise AltgradError(f"attention FLOPs convention must be one of {_ATTENTION_MODES}, got {attention!r}")
    _, n_nonembed = param_counts(shape)
    d, L, T, V = shape.n_embd, shape.n_layer, shape.block_size, shape.vocab_size
    flops = 6.0 * n_nonembed
    if lm_head:
        flops += 6.0 * V * d
    if include_attention and attention != "none":
        flops += (6.0 if attention == "causal" else 12.0) * L * T * d
    return flops


def flops_per_token_by_size(
    shapes: Sequence[ModelShape], flops_fn: FlopsFn | None = None
) -> Callable[[float], float]:
    """``N -> FLOPs per token`` of a model of non-embedding size N shaped like ``shapes``
    (:func:`size_flops_relation` over their ``(param_counts(s)[1], flops_fn(s))``)."""
    ffn = flops_fn or flops_per_token
    shapes = list(shapes)
    return size_flops_relation([param_counts(s)[1] for s in shapes], [float(ffn(s)) for s in shapes])


def size_flops_relation(sizes: Sequence[float], flops: Sequence[float]) -> Callable[[float], float]:
    """``N -> FLOPs per token`` through measured ``(N, FLOPs per token)`` pairs of one kind of model.

    What turns a model size into tokens: a law that gives the compute-optimal size N* at a
    budget C gives ``D* = C / flops_per_token(shape of N*)``, because C counts every FLOP
    of a step (:func:`flops_per_token`: 6·N plus the lm_head and attention, which on a
    small model are most of it), not 6·N.

    The FLOPs per token are ``6·N + overhead(N)``, ``overhead = flops - 6·N`` (the lm_head,
    attention, and any multiplier the caller's count applies). It is exact at every given
    size; between two of them the overhead is interpolated linearly in
    ``(log N, log overhead)``; below the smallest and above the largest it follows the power
    law ``overhead ∝ N^s`` fitted by least squares through all of them (one size: constant).
    With an overhead ≤ 0 somewhere (a pure 6·N count), it is interpolated linearly in
    ``log N`` and held constant beyond the ends.
    """
    pts: dict[float, float] = {}
    for n, f in zip(sizes, flops, strict=True):
        n, f = float(n), float(f)
        if not (math.isfinite(n) and n > 0 and math.isfinite(f) and f > 0):
            raise AltgradError(f"sizes and FLOPs per token must be positive numbers, got N={n}, FLOPs={f}")
        pts.setdefault(n, f)
    if not pts:
        raise AltgradError("a size -> FLOPs relation needs at least one (N, FLOPs per token) pair")
    ns = sorted(pts)
    logn = [math.log(n) for n in ns]
    over = [pts[n] - 6.0 * n for n in ns]
    positive = all(o > 0 for o in over)
    ys = [math.log(o) for o in over] if positive else over
    if positive and len(ns) > 1:
        xm, ym = sum(logn) / len(ns), sum(ys) / len(ns)
        slope = sum((x - xm) * (y - ym) for x, y in zip(logn, ys)) / sum((x - xm) ** 2 for x in logn)
    else:
        slope = 0.0

    def overhead(n: float) -> float:
        x = math.log(n)
        if len(ns) == 1 or x <= logn[0] or x >= logn[-1]:
            end = 0 if x <= logn[0] else len(ns) - 1
            y = ys[end] + slope * (x - logn[end])
        else:
            i = next(j for j in range(1, len(ns)) if x <= logn[j])
            w = (x - logn[i - 1]) / (logn[i] - logn[i - 1])
            y = ys[i - 1] + w * (ys[i] - ys[i - 1])
        return math.exp(y) if positive else y

    def fpt(n: float) -> float:
        n = float(n)
        if not (math.isfinite(n) and n > 0):
            raise AltgradError(f"a model size must be a positive number, got {n}")
        return pts[n] if n in pts else 6.0 * n + overhead(n)

    return fpt
