"""Quantize throughput on CPU, as ratios measured in one run (machines here are noisy).

For 16M float32 elements: every registry format with round-to-nearest-even and stochastic
rounding, with and without telemetry, against (a) torch's own float8_e4m3fn round trip
`x.to(torch.float8_e4m3fn).float()` and (b) `x.clone()`. Median of N runs after warm-up.
Two tables: `quantize` as called (eager), and `torch.compile(quantize)`, which fuses the
same code into one kernel per call (as in a model trained with `compile: true`). Each row
is timed round-robin with its references, so drift between rows does not bias its ratios.

    python benchmarks/quantize.py [--elements 16777216] [--repeats 7] [--eager-only]
"""

import argparse
import statistics
import time

import torch

from altgrad.quantization import FORMAT_NAMES, QuantStats, quantize
from altgrad.training.allocator import keep_freed_memory


def round_robin_ms(fns: dict, repeats: int) -> dict:
    """Median ms of each function, timed one call each per round after a warm-up call (which
    also compiles): machine speed drifts alike for all of them."""
    for fn in fns.values():
        fn()
    times = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(t) * 1e3 for key, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=16 * 1024 * 1024)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--eager-only", action="store_true", help="skip the torch.compile table")
    args = parser.parse_args()
    memory = keep_freed_memory()

    x = torch.randn(args.elements, generator=torch.Generator().manual_seed(0)) * 3
    generator = torch.Generator().manual_seed(1)
    print(f"{args.elements:,} float32 elements, {torch.get_num_threads()} threads, median of {args.repeats} rounds, "
          f"{memory}")
    print("each format's row is timed round-robin with torch's e4m3fn round trip and clone() (ms in the last columns)")
    print(f"{'':<7}{'RNE ms':>8}{'/torch':>8}{'/clone':>8}{'SR ms':>8}{'/torch':>8}{'+telem RNE':>12}{'+telem SR':>11}"
          f"{'torch ms':>10}{'clone ms':>10}")
    modes = {"eager": lambda fn: fn}
    if not args.eager_only:
        modes["torch.compile"] = torch.compile
    for mode, wrap in modes.items():
        print(mode)
        for name in FORMAT_NAMES:
            torch._dynamo.reset()  # formats never share (or exhaust) recompiles
            stats = QuantStats()
            variants = {
                "rne": lambda v: quantize(v, name),
                "sr": lambda v: quantize(v, name, "stochastic", generator=generator),
                "rne_t": lambda v: quantize(v, name, stats=stats),
                "sr_t": lambda v: quantize(v, name, "stochastic", generator=generator, stats=stats),
            }
            ms = round_robin_ms({"torch": lambda: x.to(torch.float8_e4m3fn).float(), "clone": lambda: x.clone()}
                                | {key: lambda f=wrap(fn): f(x) for key, fn in variants.items()}, args.repeats)
            print(
                f"{name:<7}{ms['rne']:>8.1f}{ms['rne'] / ms['torch']:>8.2f}{ms['rne'] / ms['clone']:>8.2f}"
                f"{ms['sr']:>8.1f}{ms['sr'] / ms['torch']:>8.2f}{ms['rne_t'] / ms['rne'] - 1:>11.0%}"
                f"{ms['sr_t'] / ms['sr'] - 1:>11.0%}{ms['torch']:>10.1f}{ms['clone']:>10.1f}"
            )


if __name__ == "__main__":
    main()
