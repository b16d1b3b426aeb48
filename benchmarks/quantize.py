"""Quantize throughput on CPU, as ratios measured in one run (machines here are noisy).

For 16M float32 elements: every registry format with round-to-nearest-even and stochastic
rounding, with and without telemetry, against (a) torch's own float8_e4m3fn round trip
`x.to(torch.float8_e4m3fn).float()` and (b) `x.clone()`. Median of N runs after warm-up.
Two tables: `quantize` as called (eager), and `torch.compile(quantize)`, which fuses the
same code into one kernel per call (as in a model trained with `compile: true`).

    python benchmarks/quantize.py [--elements 16777216] [--repeats 7] [--eager-only]
"""

import argparse
import statistics
import time

import torch
from steady_memory import keep_freed_memory

from altgrad.quantization import FORMAT_NAMES, QuantStats, quantize


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=16 * 1024 * 1024)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--eager-only", action="store_true", help="skip the torch.compile table")
    args = parser.parse_args()
    memory = "freed blocks <= 32 MB reused" if keep_freed_memory() else "allocator left as is (timings include page faults)"

    x = torch.randn(args.elements, generator=torch.Generator().manual_seed(0)) * 3
    generator = torch.Generator().manual_seed(1)
    torch_rt = median_ms(lambda: x.to(torch.float8_e4m3fn).float(), args.repeats)
    clone = median_ms(lambda: x.clone(), args.repeats)
    print(f"{args.elements:,} float32 elements, {torch.get_num_threads()} threads, median of {args.repeats}, {memory}")
    print(f"torch e4m3fn round trip: {torch_rt:.1f} ms   clone: {clone:.1f} ms")
    print(f"{'':<7}{'RNE ms':>8}{'/torch':>8}{'/clone':>8}{'SR ms':>8}{'/torch':>8}{'+telem RNE':>12}{'+telem SR':>11}")
    modes = {"eager": lambda fn: fn}
    if not args.eager_only:
        modes["torch.compile"] = compile_fresh
    for mode, wrap in modes.items():
        print(mode)
        for name in FORMAT_NAMES:
            stats = QuantStats()
            rne, sr, rne_t, sr_t = (
                median_ms(lambda f=wrap(fn): f(x), args.repeats)
                for fn in (
                    lambda v: quantize(v, name),
                    lambda v: quantize(v, name, "stochastic", generator=generator),
                    lambda v: quantize(v, name, stats=stats),
                    lambda v: quantize(v, name, "stochastic", generator=generator, stats=stats),
                )
            )
            print(
                f"{name:<7}{rne:>8.1f}{rne / torch_rt:>8.2f}{rne / clone:>8.2f}{sr:>8.1f}{sr / torch_rt:>8.2f}"
                f"{rne_t / rne - 1:>11.0%}{sr_t / sr - 1:>11.0%}"
            )


def compile_fresh(fn):
    """torch.compile fn with an empty cache, so formats never share (or exhaust) recompiles."""
    torch._dynamo.reset()
    return torch.compile(fn)


if __name__ == "__main__":
    main()
