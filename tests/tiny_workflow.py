"""A tiny experiment and a temporary copy of the workflow to run it in: shared by the
pipeline, matrix and scaling-study tests (imported by name; pytest puts tests/ on the path)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from altgrad.experiment import load_experiment

ROOT = Path(__file__).resolve().parents[1]


def tiny_experiment(**changes) -> dict:
    """bf16 and e5m2 with AdamW on a 1-layer GPT for 12 steps of the bundled EUR-Lex sample.

    `changes` are dotted paths ("run.train.max_steps") or top-level keys, set in place.
    """
    cfg = {
        "corpus": {"name": "eurlex-sample", "source": "eurlex-sample", "val_fraction": 0.1, "seed": 0,
                   "compact_vocab": True},
        "run": {
            "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32},
            "train": {"max_steps": 12, "batch_size": 4, "lr": 3.0e-3, "min_lr": 3.0e-4, "warmup_steps": 2,
                      "eval_interval": 6, "eval_batches": 2, "checkpoint_interval": 4, "rank_interval": 0,
                      "device": "cpu"},
            "tracking": {"wandb_mode": "disabled"},
        },
        "grid": {"formats": ["bf16", "e5m2"], "optimizers": ["adamw"], "master_weights": ["fp32"], "seeds": [0]},
        "budget": {"usd": 20, "device": "cpu", "price_usd_per_hour": 0, "mfu": 0.3},
    }
    for dotted, value in changes.items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg


def load(cfg: dict, **kw):
    """The experiment as the workflow loads it."""
    return load_experiment(cfg, **kw)


def make_workflow(tmp_path: Path, config: dict | None = None) -> Path:
    """Copy Snakefile, workflow/, config/, profiles/ and the `runpod` link into tmp_path/wf;
    with `config`, it replaces the embedded default config/config.yaml."""
    wf = tmp_path / "wf"
    wf.mkdir()
    for name in ("Snakefile", "workflow", "config", "profiles"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, wf / name)
    (wf / "runpod").symlink_to(os.readlink(ROOT / "runpod"))
    if config is not None:
        write_config(wf, config)
    return wf


def pin_library_hash(wf: Path, value: str = "pinned-by-test") -> None:
    """The workflow copy's train params stop depending on the altgrad sources (the `code`
    param), so a copy that is complete stays complete while the sources are edited."""
    common = wf / "workflow" / "rules" / "common.smk"
    text = common.read_text()
    assert "LIB_HASH = library_hash()" in text
    common.write_text(text.replace("LIB_HASH = library_hash()", f"LIB_HASH = {value!r}"))


def write_config(wf: Path, config: dict) -> None:
    (wf / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def snakemake(wf: Path, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real snakemake in ``wf``; ``.stdout`` holds stdout and stderr, interleaved."""
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=wf, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}")
    return proc


def executed_jobs(output: str) -> dict[str, int]:
    """The last 'Job stats' table Snakemake printed: rule -> count."""
    counts, inside = {}, False
    for line in output.splitlines():
        if line.startswith("Job stats:"):
            inside, counts = True, {}
            continue
        if inside:
            parts = line.split()
            if not parts:
                if counts:
                    inside = False
                continue
            if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total",):
                counts[parts[0]] = int(parts[1])
            elif parts[0] == "total":
                inside = False
    return counts
