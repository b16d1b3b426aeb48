"""Training step time on CPU: the BF16 baseline (operands rounded to bfloat16) vs every registry format, and the FP32 shadow's cost.

Each recipe quantizes weights, activations and gradients (delayed scaling, telemetry on,
shadow off); medians over N steps after warm-up, as ratios to the BF16 step measured in
the same run. The recipes' trainers take their steps in turn, so a shared machine whose
speed drifts slows them alike; with one thread a step is timed in CPU seconds. Also
tokens/s for the tiny default model and the research plan's ~10M non-embedding model
(6 x 384 x 6, block 256, GPT-2 vocabulary).

    python benchmarks/train_step.py [--steps 8] [--models tiny reference]
"""

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from altgrad.quantization import FORMAT_NAMES
from altgrad.training.allocator import keep_freed_memory
from altgrad.training.config import RunConfig
from altgrad.training.data import prepare
from altgrad.training.tracking import Tracker
from altgrad.training.trainer import Trainer

MODELS = {
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64},
    "reference": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256},
}
RECIPES = FORMAT_NAMES  # every registry format, bf16 (the baseline) first


def median_step_s(cfgs: dict[str, RunConfig], root: Path, steps: int, cpu: bool) -> dict[str, float]:
    """Median seconds per step of each config's trainer. The trainers take their steps in turn
    (one step each, round after round), so a shared machine whose speed drifts slows every
    config alike; `cpu`: the process's CPU time per step (time descheduled does not count)."""
    clock = time.process_time if cpu else time.perf_counter
    trainers = {name: Trainer(cfg, root / name) for name, cfg in cfgs.items()}
    tracker = Tracker("disabled", "", "", root, {}, None)
    times: dict[str, list[float]] = {name: [] for name in cfgs}
    for i in range(steps + 2):
        for name, trainer in trainers.items():
            start = clock()
            trainer.train_step(tracker)
            trainer.step += 1
            if i >= 2:  # warm-up
                times[name].append(clock() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as a pipeline job)")
    args = parser.parse_args()
    memory = keep_freed_memory()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for model in args.models:
            compact = model == "tiny"  # the reference model keeps the full GPT-2 vocabulary
            data = tmp / f"data-{model}"
            prepare("eurlex-sample", data, compact_vocab=compact, progress=False)
            base = {
                "data": {"train_bin": str(data / "train.bin"), "val_bin": str(data / "val.bin"),
                         "meta": str(data / "meta.json")},
                "model": MODELS[model],
                "train": {"batch_size": 8, "device": "cpu", "shadow_interval": 0, "rank_interval": 0, "warmup_steps": 0,
                          "max_steps": args.steps + 2},
                "tracking": {"wandb_mode": "disabled"},
            }
            cfgs = {recipe: RunConfig.from_dict(base | {"precision": {"weight": recipe, "activation": recipe,
                                                                      "gradient": recipe}})
                    for recipe in RECIPES}
            cfgs["shadow"] = RunConfig.from_dict(base | {"precision": {"weight": "e4m3", "activation": "e4m3",
                                                                       "gradient": "e5m2"},
                                                         "train": base["train"] | {"shadow_interval": 1}})
            cfgs["hybrid"] = cfgs["shadow"].with_overrides({"train.shadow_interval": 0})
            results = median_step_s(cfgs, tmp / model, args.steps, cpu=args.threads == 1)
            shadow, hybrid = results.pop("shadow"), results.pop("hybrid")
            tokens = 8 * MODELS[model]["block_size"]
            bf16 = results["bf16"]
            print(f"\n{model}: {Trainer(RunConfig.from_dict(base), tmp / 'x').params_non_embedding:,} non-embedding "
                  f"params, batch 8 x {MODELS[model]['block_size']} tokens, median of {args.steps} steps taken in "
                  f"turn, {memory}")
            print(f"{'recipe':<22}{'step ms':>9}{'/bf16':>7}{'tokens/s':>10}   "
                  f"({'CPU' if args.threads == 1 else 'wall'} time)")
            for recipe, seconds in results.items():
                print(f"{recipe + ' (w+a+g)':<22}{seconds * 1e3:>9.1f}{seconds / bf16:>7.2f}{tokens / seconds:>10.0f}")
            print(f"{'e4m3/e5m2 hybrid':<22}{hybrid * 1e3:>9.1f}{hybrid / bf16:>7.2f}{tokens / hybrid:>10.0f}")
            print(f"{'  + FP32 shadow':<22}{shadow * 1e3:>9.1f}{shadow / bf16:>7.2f}   (shadow adds {shadow / hybrid - 1:.0%})")


if __name__ == "__main__":
    main()
