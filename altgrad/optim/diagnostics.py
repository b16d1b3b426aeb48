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
    sign_changes    fraction of weights whose sign flipped (both signs non-zero, one before the
                    step and the other after; the stored weight's sign, so an fp32 master weight
                    below the grid's smallest step counts too): weights crossing zero
Per layer only:
    bitpos_mean, bitpos_std   of the code's magnitude index |i| (0 = zero, top = ±max):
                    where on the format's dynamic range the weights sit
    grad_stiffness_corr       Pearson correlation of |g| and the stiffness S at the step's start
                    (NaN when either is constant, e.g. always on E0M7)
    grad_nonfinite  1 if the gradient holds inf/NaN, else 0

Every call is whole-tensor ops on the layers stacked by format (one op per statistic for
all of them) and one host sync at the end; large layers are watched through a fixed sample
(see UpdateDiagnostics) so that this costs little per step.
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
        self.geometry, self.sample = dict(named_geometry), sample
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
        self._before: list[tuple] = []

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

    def _batches(self) -> dict[tuple, list[str]]:
        """Gridded layers that have a gradient, grouped by format and watched entry count: a
        group's statistics are row-wise ops on one [layers, entries] stack, so a step costs a
        few dozen ops per group (the ops' fixed cost dominated when each layer had its own).
        Watched whole (sample=None), each layer is its own group: stacking them would copy them."""
        batches: dict[tuple, list[str]] = {}
        for name, (p, fmt, _) in self.geometry.items():
            if fmt is not None and p.grad is not None:
                batches.setdefault((fmt, name if self.sample is None else self._watched(name)), []).append(name)
        return batches

    def _stack(self, names: list[str], tensors) -> torch.Tensor:
        """[layers, entries] of the watched entries; may be a view of a single layer's tensor."""
        rows = [self._entries(name, t) for name, t in zip(names, tensors)]
        return rows[0].unsqueeze(0) if len(rows) == 1 else torch.stack(rows)

    def _grid_units(self, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(watched weights, their scales) of a batch: [layers, entries] and [layers, 1 or entries]."""
        params = [self.geometry[name][0] for name in names]
        scales = [current_scale(self.geometry[name][2]) for name in names]
        scales = [torch.ones((), device=p.device) if s is None else s.float() for p, s in zip(params, scales)]
        if all(s.numel() == 1 for s in scales):
            scale = torch.stack([s.reshape(()) for s in scales]).view(-1, 1)
        else:  # block scaling: one scale per entry
            scale = self._stack(names, [s.reshape(1).expand(p.numel()) if s.numel() == 1 else s
                                        for p, s in zip(params, scales)])
        return self._stack(names, params), scale

    @torch.no_grad()
    def before_step(self) -> None:
        """Snapshot every gridded layer that has a gradient: codes, signs, |g|, |g|-S sums."""
        self._before = []
        for (fmt, _), names in self._batches().items():
            w, scale = self._grid_units(names)
            position = grid_position(to_grid_units(w, scale), fmt)  # has w's sign, and is 0 only where w is
            sign = torch.sign(position)
            index = position.round_()
            g = self._stack(names, [self.geometry[name][0].grad for name in names]).abs()
            attempted = _row_count(g)
            s = stiffness(w, fmt, scale)
            corr_sums = torch.stack([g.sum(1), s.sum(1), _row_dot(g, g), _row_dot(s, s), _row_dot(g, s)], 1)
            self._before.append((names, fmt, index, sign, g, attempted, corr_sums))

    @torch.no_grad()
    def after_step(self) -> dict[str, float]:
        """Compare with the snapshot; returns the metrics dict (one host sync)."""
        rows, names = [], []
        for batch, fmt, before, sign, g, attempted, corr_sums in self._before:
            w, scale = self._grid_units(batch)
            position = grid_position(to_grid_units(w, scale), fmt)
            sign_changes = _row_count(sign.mul_(position).lt_(0))  # 1.0 where before * after < 0
            index = position.round()
            distance = position.sub_(index).abs_().sum(1)
            moved = before.sub_(index).abs_()  # |index change|: integral, >= 0
            flips = _row_count(moved)
            at_least = [torch.ge(moved, k, out=position).sum(1) for k in (2, 4, 8)]
            attempted_and_moved = _row_count(moved.mul_(g))
            bitpos = index.abs_()
            columns = [flips, *at_least, attempted, attempted_and_moved, bitpos.sum(1), _row_dot(bitpos, bitpos), distance,
                       sign_changes]
            rows.append(torch.cat([torch.stack([c.double() for c in columns], 1), corr_sums.double()], 1))
            names += batch
        self._before = []
        values = torch.cat(rows).tolist() if rows else []
        return self._summarise(names, values)

    def _summarise(self, names: list[str], values: list[list[float]]) -> dict[str, float]:
        out: dict[str, float] = {}
        totals = [0.0] * 9  # flips, >= 2, >= 4, >= 8, attempted, attempted and moved, distance, sign changes, entries
        for name, row in zip(names, values):
            flips, ge2, ge4, ge8, attempted, moved, bit_sum, bit_sq, distance, sign_changes, *corr = row
            numel, watched = self.geometry[name][0].numel(), self._watched(name)
            # sums over the watched entries, scaled to the whole layer (factor 1 when all are watched)
            counts = (flips, ge2, ge4, ge8, attempted, moved, distance, sign_changes)
            layer = [v * numel / watched for v in counts] + [numel]
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


# Per-row reductions of a stack. A single row (a layer watched whole) takes the whole-tensor
# op, which makes no [rows, entries] temporary: exact mode's stacks are whole layers.


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Each row's dot product (a batched matmul took 1.2 ms on 12 x 16384 here, mul + sum 22 us)."""
    return torch.dot(a[0], b[0]).view(1) if len(a) == 1 else torch.linalg.vecdot(a, b, dim=1)


def _row_count(x: torch.Tensor) -> torch.Tensor:
    """Each row's non-zero entries, as count_nonzero counts them."""
    return count_nonzero(x).view(1) if len(x) == 1 else count_nonzero(x, dim=1)


def _update_metrics(key, flips, ge2, ge4, ge8, attempted, attempted_and_moved, distance, sign_changes,
                    n) -> dict[str, float]:
    metrics = {
        key + "flips": flips,
        key + "attempted": attempted,
        key + "stall_ratio": (attempted - attempted_and_moved) / attempted if attempted else math.nan,
        key + "grid_distance": distance / n,
        key + "sign_changes": sign_changes / n,
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
