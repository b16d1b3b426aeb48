"""Training step time on CPU: the BF16 baseline (operands rounded to bfloat16) vs every registry format, and the FP32 shadow's cost.

Each recipe quantizes weights, activations and gradients (delayed scaling, telemetry on,
shadow off); medians over N steps after warm-up, as ratios to the BF16 step measured in
the same run. Also tokens/s for the tiny default model and the research plan's ~10M
non-embedding model (6 x 384 x 6, block 256, GPT-2 vocabulary).

    python benchmarks/train_step.py [--steps 8] [--models tiny reference]
"""

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch
from steady_memory import keep_freed_memory

from altgrad.quantization import FORMAT_NAMES
from altgrad.training.config import RunConfig
from altgrad.training.data import prepare
from altgrad.training.tracking import Tracker
from altgrad.training.trainer import Trainer

MODELS = {
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64},
    "reference": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256},
}
RECIPES = FORMAT_NAMES  # every registry format, bf16 (the baseline) first


def median_step_s(cfg: RunConfig, out: Path, steps: int) -> float:
    trainer = Trainer(cfg, out)
    tracker = Tracker("disabled", "", "", out, {}, None)
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        trainer.train_step(tracker)
        trainer.step += 1
        if i >= 2:  # warm-up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


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
            results = {}
            for recipe in RECIPES:
                precision = {"weight": recipe, "activation": recipe, "gradient": recipe}
                cfg = RunConfig.from_dict(base | {"precision": precision})
                results[recipe] = median_step_s(cfg, tmp / f"{model}-{recipe}", args.steps)
            shadow_cfg = RunConfig.from_dict(base | {"precision": {"weight": "e4m3", "activation": "e4m3",
                                                                   "gradient": "e5m2"},
                                                     "train": base["train"] | {"shadow_interval": 1}})
            hybrid_cfg = shadow_cfg.with_overrides({"train.shadow_interval": 0})
            shadow = median_step_s(shadow_cfg, tmp / f"{model}-shadow", args.steps)
            hybrid = median_step_s(hybrid_cfg, tmp / f"{model}-hybrid", args.steps)
            tokens = 8 * MODELS[model]["block_size"]
            bf16 = results["bf16"]
            print(f"\n{model}: {Trainer(RunConfig.from_dict(base), tmp / 'x').params_non_embedding:,} non-embedding "
                  f"params, batch 8 x {MODELS[model]['block_size']} tokens, median of {args.steps} steps, {memory}")
            print(f"{'recipe':<22}{'step ms':>9}{'/bf16':>7}{'tokens/s':>10}")
            for recipe, seconds in results.items():
                print(f"{recipe + ' (w+a+g)':<22}{seconds * 1e3:>9.1f}{seconds / bf16:>7.2f}{tokens / seconds:>10.0f}")
            print(f"{'e4m3/e5m2 hybrid':<22}{hybrid * 1e3:>9.1f}{hybrid / bf16:>7.2f}{tokens / hybrid:>10.0f}")
            print(f"{'  + FP32 shadow':<22}{shadow * 1e3:>9.1f}{shadow / bf16:>7.2f}   (shadow adds {shadow / hybrid - 1:.0%})")


if __name__ == "__main__":
    main()
