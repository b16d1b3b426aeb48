"""Optimizer step time on CPU against torch.optim.AdamW, as ratios measured in one run.

A ~10M-parameter set of GPT-block-shaped float32 tensors (e4m3 weights with power-of-two
amax scales, plus ungridded norm vectors) with fixed gradients. Each optimizer is timed
alone, with UpdateDiagnostics around every step as constructed by default (large layers
watched through a 16384-entry sample), and with exact diagnostics (sample=None). Each
optimizer has its own copy of the tensors; after a warm-up step they are timed round-robin,
one step each per round (machine speed drifts alike for all), median of N rounds. Compiled
rows (the grid projection, torch's AdamW under torch.compile) compile in the warm-up;
GridOptim with compile=True runs its fused C move on CPU (grid_move_cpu.py).

    python benchmarks/optim_step.py [--n-embd 512] [--n-layer 3] [--repeats 7]
"""

import argparse
import statistics
import time

import torch

from altgrad.optim import GridOptim, GridProjection, ManifoldAdamW, UpdateDiagnostics
from altgrad.quantization import get_format
from altgrad.training.allocator import keep_freed_memory

FMT = get_format("e4m3")


def make_params(n_embd: int, n_layer: int):
    gen = torch.Generator().manual_seed(0)
    shapes = [(3 * n_embd, n_embd), (n_embd, n_embd), (4 * n_embd, n_embd), (n_embd, 4 * n_embd)]
    groups, geometry = [], {}
    for layer in range(n_layer):
        for i, shape in enumerate(shapes):
            w = torch.nn.Parameter(torch.randn(shape, generator=gen) * 0.02)
            w.grad = torch.randn(shape, generator=gen) * 1e-3
            scale = torch.exp2(torch.floor(torch.log2(FMT.max_value / w.detach().abs().amax())))
            scale_fn = lambda s=scale: s  # noqa: E731
            groups.append({"params": [w], "fmt": FMT, "scale": scale_fn})
            geometry[f"h.{layer}.{i}"] = (w, FMT, scale_fn)
        norms = [torch.nn.Parameter(torch.ones(n_embd)) for _ in range(2)]
        for p in norms:
            p.grad = torch.randn(n_embd, generator=gen) * 1e-3
        groups.append({"params": norms, "weight_decay": 0.0})
    return groups, geometry


def step_timers(make_optimizer, n_embd, n_layer):
    """Step functions over one fresh copy of the tensors: alone, with default and exact diagnostics."""
    groups, geometry = make_params(n_embd, n_layer)
    optimizer = make_optimizer(groups)

    def with_diagnostics(diag):
        def step():
            diag.before_step()
            optimizer.step()
            diag.after_step()
        return step

    optimizer.step()  # warm-up: state allocation
    return {
        "alone": optimizer.step,
        "diag": with_diagnostics(UpdateDiagnostics(geometry)),
        "exact": with_diagnostics(UpdateDiagnostics(geometry, sample=None)),
    }


def compiled_step(optimizer):
    """The optimizer's whole step (its post-step hooks, e.g. the grid projection, included)
    under torch.compile: PyTorch's fused, compiled path. The trainer does not do this yet."""
    optimizer.step = torch.compile(optimizer.step)
    return optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-embd", type=int, default=512)
    parser.add_argument("--n-layer", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    memory = keep_freed_memory()

    def adamw(groups):
        return torch.optim.AdamW(groups, lr=1e-3)

    def with_projection(optimizer, compile=False):
        GridProjection.attach(optimizer, "nearest", seed=0, compile=compile)
        return optimizer

    candidates = {
        "torch AdamW": adamw,
        "AdamW + grid master weights": lambda groups: with_projection(adamw(groups)),
        "  the same, compiled projection": lambda groups: with_projection(adamw(groups), True),
        "ManifoldAdamW": lambda groups: ManifoldAdamW(groups, lr=1e-3),
        "  + grid master weights, compiled projection": lambda groups: with_projection(ManifoldAdamW(groups, lr=1e-3), True),
        "GridOptim": lambda groups: GridOptim(groups, lr=1e-3, rung_clip=4.0),
        "GridOptim, compile=True": lambda groups: GridOptim(groups, lr=1e-3, rung_clip=4.0, compile=True),
        "torch AdamW, compiled step": lambda groups: compiled_step(adamw(groups)),
        "  + grid master weights in the step": lambda groups: compiled_step(with_projection(adamw(groups))),
    }
    n = sum(p.numel() for g in make_params(args.n_embd, args.n_layer)[0] for p in g["params"])
    print(f"{n / 1e6:.1f}M parameters, {torch.get_num_threads()} threads, median of {args.repeats} rounds, {memory}")
    timers = {(name, kind): fn for name, make in candidates.items()
              for kind, fn in step_timers(make, args.n_embd, args.n_layer).items()}
    times = {key: [] for key in timers}
    for _ in range(args.repeats):
        for key, fn in timers.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    ms = {key: statistics.median(t) * 1e3 for key, t in times.items()}
    base = ms["torch AdamW", "alone"]
    print(f"{'optimizer':<46}{'step ms':>9}{'/AdamW':>8}{'+diag ms':>10}{'/AdamW':>8}{'+exact ms':>11}{'/AdamW':>8}")
    for name in candidates:
        row = "".join(f"{ms[name, kind]:>{w}.1f}{ms[name, kind] / base:>8.2f}"
                      for kind, w in (("alone", 9), ("diag", 10), ("exact", 11)))
        print(f"{name:<46}{row}")

if __name__ == "__main__":
    main()
