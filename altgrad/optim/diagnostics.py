"""What an optimizer step did on the grid: flips, stalls, rungs moved, and weight-matrix rank.

    diag = UpdateDiagnostics({name: (param, fmt, scale_fn), ...})
    diag.before_step()          # after backward (and any clipping), before optimizer.step()
    optimizer.step()
    metrics = diag.after_step() # right after the step (the snapshot keeps its own |g|)
    ranks, warnings = diag.rank_stats()   # every rank_interval steps

A weight's code is its grid index (`grid_position` rounded half to even, the index of
round-to-nearest-even quantization of w * scale, saturating at ±max), so "code changed" is
"index changed" and the index difference is the number of rungs (grid points, ULPs) moved.
Entries with fmt None take part in rank_stats only.

Per layer (keys update.{name}.*) and in total (update.*):
    flips           weights whose code changed
    attempted       weights with a non-zero gradient (inf/NaN count as non-zero)
    stall_ratio     attempted weights whose code did not change / attempted, i.e.
                    1 - flips/attempted when only attempted weights move (NaN if none attempted)
    ulps_moved_hist.{0,1,2-3,4-7,8+}  weights by |index change|
    grid_distance   mean |grid position - nearest index| in ULPs: 0 when weights are on the grid
Per layer only:
    bitpos_mean, bitpos_std   of the code's magnitude index |i| (0 = zero, top = ±max):
                    where on the format's dynamic range the weights sit
    grad_stiffness_corr       Pearson correlation of |g| and the stiffness S at the step's start
                    (NaN when either is constant, e.g. always on E0M7)
    grad_nonfinite  1 if the gradient holds inf/NaN, else 0

Every call is whole-tensor ops per layer and one host sync at the end; large layers are
watched through a fixed sample (see UpdateDiagnostics) so that this costs little per step.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Callable, Mapping

import torch

from altgrad.quantization import FloatFormat

from .geometry import (
    count_nonzero,
    current_scale,
    grid_position,
    stiffness,
    to_grid_units,
)

HIST_BINS = ("0", "1", "2-3", "4-7", "8+")
SAMPLE_BLOCK = 64
CRITICAL_LAYERS = ("*lm_head*", "*attn.c_proj*")

Geometry = tuple[torch.Tensor, FloatFormat | None, Callable[[], torch.Tensor] | None]


class UpdateDiagnostics:
    """Update statistics per layer from a before/after snapshot of the grid codes.

    `sample`: a layer with more entries is watched through a fixed random sample of
    sample // 64 blocks of 64 consecutive entries (seeded by `seed`); its counts are then
    the sample's scaled to the layer (unbiased estimates) and its means are the sample's.
    None watches every entry (exact, but several torch-AdamW steps of time per call on CPU).
    `critical` are fnmatch patterns of the layers whose stable rank is watched; rank_stats
    warns when one is below `min_stable_rank`. `geometry` is public: after a format change
    (MantissaShift) replace the entry's fmt.
    """

    def __init__(self, named_geometry: Mapping[str, Geometry], sample: int | None = 16384,
                 critical: tuple[str, ...] = CRITICAL_LAYERS, min_stable_rank: float = 2.0, seed: int = 0):
        if sample is not None and sample < SAMPLE_BLOCK:
            raise ValueError(f"sample must be None or at least {SAMPLE_BLOCK}, got {sample}")
        self.geometry = dict(named_geometry)
        self.critical, self.min_stable_rank = critical, min_stable_rank
        # A fixed sample of whole blocks of SAMPLE_BLOCK consecutive entries: copying blocks is a
        # few memcpys, where gathering scattered entries would cost a cache miss each.
        generator = torch.Generator().manual_seed(seed)
        self.sample_blocks = {
            name: torch.randperm(p.numel() // SAMPLE_BLOCK, generator=generator)[: sample // SAMPLE_BLOCK]
            .sort().values.to(p.device)
            for name, (p, fmt, _) in self.geometry.items()
            if fmt is not None and sample is not None and p.numel() > sample
        }
        self._before: dict[str, tuple] = {}

    def _watched(self, name: str) -> int:
        blocks = self.sample_blocks.get(name)
        return self.geometry[name][0].numel() if blocks is None else blocks.numel() * SAMPLE_BLOCK

    def _entries(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """The watched entries of a layer's tensor, flat: all of them, or its sample."""
        flat = t.detach().flatten()
        blocks = self.sample_blocks.get(name)
        if blocks is None:
            return flat
        whole = flat[: flat.numel() // SAMPLE_BLOCK * SAMPLE_BLOCK].view(-1, SAMPLE_BLOCK)
        return whole.index_select(0, blocks).flatten()

    @torch.no_grad()
    def before_step(self) -> None:
        """Snapshot every gridded layer that has a gradient: codes, |g|, |g|-S sums."""
        self._before = {}
        for name, (p, fmt, scale_fn) in self.geometry.items():
            if fmt is None or p.grad is None:
                continue
            scale, w = current_scale(scale_fn), self._entries(name, p)
            index = grid_position(to_grid_units(w, scale), fmt).round_()
            g, s = self._entries(name, p.grad).abs(), stiffness(w, fmt, scale)
            attempted = count_nonzero(g)
            corr_sums = torch.stack([g.sum(), s.sum(), g.dot(g), s.dot(s), g.dot(s)])
            self._before[name] = (index, g, attempted, corr_sums)

    @torch.no_grad()
    def after_step(self) -> dict[str, float]:
        """Compare with the snapshot; returns the metrics dict (one host sync)."""
        rows = []
        for name, (before, g, attempted, corr_sums) in self._before.items():
            p, fmt, scale_fn = self.geometry[name]
            position = grid_position(to_grid_units(self._entries(name, p), current_scale(scale_fn)), fmt)
            index = position.round()
            distance = position.sub_(index).abs_().sum()
            moved = before.sub_(index).abs_()  # |index change|: integral, >= 0
            flips = count_nonzero(moved)
            at_least = [torch.ge(moved, k, out=position).sum() for k in (2, 4, 8)]
            attempted_and_moved = count_nonzero(moved.mul_(g))
            bitpos = index.abs_()
            rows.append(torch.stack([
                flips, *at_least, attempted, attempted_and_moved,
                bitpos.sum(), bitpos.dot(bitpos), distance, *corr_sums,
            ]).double())
        names, self._before = list(self._before), {}
        values = torch.stack(rows).tolist() if rows else []
        return self._summarise(names, values)

    def _summarise(self, names: list[str], values: list[list[float]]) -> dict[str, float]:
        out: dict[str, float] = {}
        totals = [0.0] * 8  # flips, >= 2, >= 4, >= 8, attempted, attempted and moved, distance, entries
        for name, row in zip(names, values):
            flips, ge2, ge4, ge8, attempted, moved, bit_sum, bit_sq, distance, *corr = row
            numel, watched = self.geometry[name][0].numel(), self._watched(name)
            # sums over the watched entries, scaled to the whole layer (factor 1 when all are watched)
            layer = [v * numel / watched for v in (flips, ge2, ge4, ge8, attempted, moved, distance)] + [numel]
            key = f"update.{name}."
            out.update(_update_metrics(key, *layer))
            bit_mean = bit_sum / watched
            out[key + "bitpos_mean"] = bit_mean
            out[key + "bitpos_std"] = math.sqrt(max(bit_sq / watched - bit_mean**2, 0.0))
            out[key + "grad_stiffness_corr"] = _pearson(watched, *corr)
            out[key + "grad_nonfinite"] = float(not math.isfinite(corr[0]))
            totals = [t + v for t, v in zip(totals, layer)]
        if names:
            out.update(_update_metrics("update.", *totals))
        return out

    @torch.no_grad()
    def rank_stats(self, names=None) -> tuple[dict[str, float], list[str]]:
        """Stable rank ||W||_F^2 / ||W||_2^2, effective rank exp(H(sigma / sum sigma)) and spectral
        norm of each named weight (names from named_geometry, fmt None included; by default all
        matrices; a tensor is viewed as (rows, -1)), and a warning for each critical layer whose
        stable rank is below min_stable_rank. The rank of the stored weight (master or grid)."""
        names = [n for n, (p, *_) in self.geometry.items() if p.dim() >= 2] if names is None else list(names)
        rows = []
        for name in names:
            w = self.geometry[name][0].detach().float()
            sigma = torch.linalg.svdvals(w.reshape(w.shape[0], -1))
            share = sigma / sigma.sum()
            entropy = -(share * share.clamp_min(torch.finfo(share.dtype).tiny).log()).sum()
            rows.append(torch.stack([sigma.square().sum() / sigma[0].square(), entropy.exp(), sigma[0]]))
        values = torch.stack(rows).tolist() if rows else []
        out, warnings = {}, []
        for name, (stable, effective, spectral) in zip(names, values):
            out |= {f"rank.{name}.stable": stable, f"rank.{name}.effective": effective,
                    f"rank.{name}.spectral_norm": spectral}
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in self.critical) and stable < self.min_stable_rank:
                warnings.append(f"{name}: stable rank {stable:.3g} is below {self.min_stable_rank:g}")
        return out, warnings


def _update_metrics(key, flips, ge2, ge4, ge8, attempted, attempted_and_moved, distance, n) -> dict[str, float]:
    metrics = {
        key + "flips": flips,
        key + "attempted": attempted,
        key + "stall_ratio": (attempted - attempted_and_moved) / attempted if attempted else math.nan,
        key + "grid_distance": distance / n,
    }
    counts = (n - flips, flips - ge2, ge2 - ge4, ge4 - ge8, ge8)
    metrics.update({f"{key}ulps_moved_hist.{b}": c for b, c in zip(HIST_BINS, counts)})
    return metrics


def _pearson(n: int, sum_a: float, sum_b: float, sum_aa: float, sum_bb: float, sum_ab: float) -> float:
    """Correlation from float32 sums; NaN where a variance is below their rounding (~1e-6 relative)."""
    mean_a, mean_b = sum_a / n, sum_b / n
    var_a, var_b = sum_aa / n - mean_a**2, sum_bb / n - mean_b**2
    if not (var_a > 1e-6 * sum_aa / n and var_b > 1e-6 * sum_bb / n):
        return math.nan
    return (sum_ab / n - mean_a * mean_b) / math.sqrt(var_a * var_b)
