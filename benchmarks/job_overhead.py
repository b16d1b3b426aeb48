"""What a pipeline train job spends outside its steps: process start-up by phase, and the page
faults of glibc's default allocator. Each figure is a fresh process (median of --repeat).

Start-up phases are cumulative imports, each measured as its own process: the interpreter, torch,
altgrad's CLI, the trainer module, then the first torch optimizer (torch.optim.Optimizer imports
torch._dynamo at its first add_param_group, so every train job pays for the compiler's import).
Then `altgrad train` of the default tiny model for --steps steps (1 thread). (This benchmark
also measured glibc's default allocator against one told to keep freed memory: 17.97 vs
13.49 s for the default job, the same rows; `altgrad train` keeps freed memory since,
altgrad/training/allocator.py.)

    python benchmarks/job_overhead.py [--steps 60] [--repeat 3]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

PHASES = {
    "interpreter": "pass",
    "+ import torch": "import torch",
    "+ import altgrad.cli": "import torch, altgrad.cli",
    "+ import altgrad.training.trainer": "import torch, altgrad.cli, altgrad.training.trainer",
    "+ first optimizer (torch._dynamo)": "import torch, altgrad.cli, altgrad.training.trainer; "
                                         "torch.optim.AdamW([torch.zeros(1, requires_grad=True)])",
}


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, system CPU seconds) of one process."""
    before = os.times()
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = os.times()
    return wall, after.children_system - before.children_system


def median_of(repeat: int, cmd: list[str], env: dict | None = None, setup=None) -> tuple[float, float]:
    runs = []
    for _ in range(repeat):
        if setup:
            setup()
        runs.append(timed(cmd, env))
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    python = sys.executable
    print(f"{'start-up phase (cumulative)':<40}{'wall s':>8}{'added':>8}")
    previous = 0.0
    for name, code in PHASES.items():
        wall, _ = median_of(args.repeat, [python, "-c", code])
        print(f"{name:<40}{wall:>8.2f}{wall - previous:>+8.2f}")
        previous = wall

    from altgrad.training.config import RunConfig
    from altgrad.training.data import prepare

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        prepare("eurlex-sample", data, compact_vocab=True, progress=False)
        defaults = yaml.safe_load((Path(__file__).parents[1] / "config" / "config.yaml").read_text())["run"]
        cfg = RunConfig.from_dict({
            **defaults,
            "data": {"train_bin": str(data / "train.bin"), "val_bin": str(data / "val.bin"),
                     "meta": str(data / "meta.json")},
            "precision": {"weight": "e4m3", "activation": "e4m3", "gradient": "e4m3"},
            "train": {**defaults["train"], "max_steps": args.steps,
                      "warmup_steps": min(defaults["train"]["warmup_steps"], args.steps)},
        })
        config = tmp / "config.yaml"
        config.write_text(yaml.safe_dump(json.loads(json.dumps(cfg.to_dict()))))
        out = tmp / "run"
        train = [python, "-m", "altgrad.cli", "train", "--config", str(config), "--out", str(out),
                 "--threads", "1", "--quiet"]

        def fresh():
            subprocess.run(["rm", "-rf", str(out)], check=True)

        wall, system = median_of(args.repeat, train, None, fresh)
        print(f"\naltgrad train, default tiny model, e4m3 W+A+G, {args.steps} steps, 1 thread")
        print(f"{'wall s':>8}{'sys s':>8}\n{wall:>8.2f}{system:>8.2f}")


if __name__ == "__main__":
    main()
