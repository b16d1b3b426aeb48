"""The H100 path runs before anyone pays for it: config/runpod.yaml, shrunk, end to end on CPU.

The test reads config/runpod.yaml itself (so a change to it is tested) and shrinks only
what costs time or needs what this machine lacks: the device (cpu), the steps (3), the batch,
the model's shape, the intervals of what it turns on (kept on), and the hub corpus (the
embedded EUR-Lex sample, with the file's own vocabulary setting). Every switch the file turns
on stays on: bf16 autocast, the full GPT-2 vocabulary, W&B offline, the FP32 shadow, rank
probes, eval, keep_checkpoints, the lr multipliers, and train.compile. Then the real
`snakemake --profile runpod` runs a few of the matrix's runs (a ManifoldAdamW arm at an lr
multiplier, a GridOptim arm, an ablation, the bf16 baseline) through `altgrad prepare` and
`altgrad train`, as on the pod.

torch.compile of the model is exercised by its own test (the file sets compile for GPUs or
not; a compiled CPU run costs its own compile time). The hub source without network is
tests/test_data.py::test_hub_dataset_unreachable.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from test_trainer import wandb_history
from tiny_workflow import ROOT, executed_jobs, make_workflow, pin_library_hash

from altgrad.experiment import load_experiment, read_config_files
from altgrad.training.config import RunConfig
from altgrad.training.data import prepare
from altgrad.training.tokenizer import GPT2_VOCAB_SIZE
from altgrad.training.trainer import Trainer

RUNPOD = ROOT / "config" / "runpod.yaml"
STEPS = 3


def runpod_config() -> dict:
    """config/runpod.yaml as the workflow reads it (YAML 1.2)."""
    return read_config_files([RUNPOD])


def shrunk(cfg: dict) -> dict:
    """`cfg` (the H100 config) small enough for this machine, every switch it turns on kept on."""
    cfg = copy.deepcopy(cfg)
    corpus = cfg["corpus"]
    corpus.pop("split", None)  # a hub option
    corpus.pop("paths", None)
    corpus.pop("field", None)
    corpus.update(source="eurlex-sample", name="eurlex-sample-runpod")  # compact_vocab: the file's
    model = cfg["run"]["model"]
    model.update(n_layer=min(model["n_layer"], 2), n_head=2, n_embd=32, block_size=32)
    train = cfg["run"]["train"]
    on = {k: bool(train.get(k)) for k in ("shadow_interval", "rank_interval")}
    train.update(
        max_steps=STEPS, batch_size=2, grad_accum=min(train.get("grad_accum", 1), 2),
        warmup_steps=min(train["warmup_steps"], 1),  # step 0 then runs at the arm's peak lr
        eval_interval=2, eval_batches=1, checkpoint_interval=1,  # 4 saves: keep_checkpoints prunes
        shadow_interval=2 if on["shadow_interval"] else 0, rank_interval=2 if on["rank_interval"] else 0,
        device="cpu",
    )
    return cfg


def chosen_runs(exp) -> list[str]:
    """One run of each kind the matrix has: a ManifoldAdamW arm at an lr multiplier other than 1
    (when there is one), a GridOptim arm at the largest multiplier, an ablation run, the bf16
    baseline at x1."""
    runs = sorted(exp.runs.values(), key=lambda r: r.seed)  # stable: the matrix's order

    def first(*tests):
        return next((r for r in runs if all(t(r) for t in tests)), None)

    grid = [r for r in runs if r.optimizer == "grid"]
    picks = [
        first(lambda r: r.optimizer == "manifold_adamw", lambda r: r.lr_multiplier != 1)
        or first(lambda r: r.optimizer == "manifold_adamw"),
        max(grid, key=lambda r: r.lr_multiplier) if grid else None,
        first(lambda r: r.origin == "ablation"),
        first(lambda r: r.format == "bf16", lambda r: r.origin != "ablation", lambda r: r.lr_multiplier == 1)
        or first(lambda r: r.format == "bf16", lambda r: r.origin != "ablation"),
    ]
    return [r.run_id for r in picks if r is not None]


def test_the_shrunk_config_is_the_h100_matrix_with_every_switch_kept():
    """Only sizes, the device and the corpus source change: the same runs, optimizers, formats,
    lr multipliers, tracking and switches (fast; the run itself is below)."""
    full, small = runpod_config(), shrunk(runpod_config())
    exp_full, exp_small = load_experiment(full), load_experiment(small)
    assert set(exp_small.train_runs) == set(exp_full.train_runs)
    for rid, big in exp_full.train_runs.items():
        a, b = big.config, exp_small.train_runs[rid].config
        assert (a.precision, a.optimizer, a.tracking) == (b.precision, b.optimizer, b.tracking), rid
        assert (a.model.vocab_size, a.model.dropout, a.model.bias) == (b.model.vocab_size, b.model.dropout, b.model.bias)
        ta, tb = a.train, b.train
        for key in ("seed", "data_seed", "lr", "min_lr", "lr_schedule", "weight_decay", "grad_clip", "autocast",
                    "compile", "keep_checkpoints", "beta1", "beta2"):
            assert getattr(ta, key) == getattr(tb, key), (rid, key)
        for key in ("shadow_interval", "rank_interval", "eval_interval", "checkpoint_interval"):
            assert bool(getattr(ta, key)) == bool(getattr(tb, key)), (rid, key)
        assert tb.device == "cpu" and tb.max_steps == STEPS
    assert exp_small.corpus["compact_vocab"] == exp_full.corpus["compact_vocab"]
    assert exp_small.corpus["source"]["name"] == "eurlex-sample"
    picked = chosen_runs(exp_small)  # one of each kind the matrix has (4 while it has them all)
    assert picked and len(set(picked)) == len(picked), picked


def run_env(tmp_path: Path) -> dict[str, str]:
    """No WANDB_MODE (the config's offline mode applies) and W&B's own files under tmp_path."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"}
    wandb_home = tmp_path / "wandb-home"
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        env[var] = str(wandb_home / var.lower())
    env["OMP_NUM_THREADS"] = "1"
    return env


@pytest.mark.slow
def test_the_h100_config_runs_end_to_end_on_cpu(tmp_path):
    full = runpod_config()
    cfg = shrunk(full)
    wf = make_workflow(tmp_path)
    pin_library_hash(wf)
    (wf / "config" / "runpod-shrunk.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    exp = load_experiment(cfg)
    picked = chosen_runs(exp)
    targets = [f"results/runs/{rid}/summary.json" for rid in picked]
    # the runpod profile as on the pod, with the shrunk file in place of config/runpod.yaml
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--profile", "runpod", "--configfile", "config/runpod-shrunk.yaml",
         "--cores", "2", *targets],
        cwd=wf, env=run_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
    )
    logs = "\n".join(p.read_text()[-3000:] for p in sorted((wf / "results" / "logs").rglob("*.log")))
    assert proc.returncode == 0, proc.stdout[-4000:] + logs
    assert executed_jobs(proc.stdout) == {"prepare": 1, "train": len(picked)}
    assert "eurlex-sample" in proc.stdout and "lex_glue" not in proc.stdout

    meta = json.loads((wf / "data" / "eurlex-sample-runpod" / "meta.json").read_text())
    vocab = GPT2_VOCAB_SIZE if not full["corpus"].get("compact_vocab", False) else meta["vocab_size"]
    assert meta["vocab_size"] == vocab
    tc, tracking = RunConfig.from_dict(full["run"]).train, RunConfig.from_dict(full["run"]).tracking

    for rid in picked:
        run = exp.runs[rid]
        d = wf / "results" / "runs" / rid
        summary = json.loads((d / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["steps"] == STEPS and summary["device"] == "cpu", rid
        # autocast ran: the training forward's logits came out in bfloat16
        assert summary["logits_dtype"] == ("bfloat16" if tc.autocast else "float32"), rid
        steps = pd.read_parquet(d / "steps.parquet")
        assert steps["step"].tolist() == list(range(STEPS))
        losses = steps["loss"].to_numpy()
        assert all(math.isfinite(v) for v in losses) and len(set(losses.tolist())) == STEPS, (rid, losses)
        assert steps["nan_source"].eq("").all()
        assert steps["zero_update_frac"].lt(1).all()  # every step moved weights
        assert not steps["grad_norm"].isna().any()
        # eval at its (shrunk) interval and at the last step, finite
        evals = steps.dropna(subset=["val_loss"])
        assert evals["step"].tolist() == [0, 2] and evals["val_loss"].map(math.isfinite).all()
        # the FP32 shadow's cosine and the rank probes, when the file turns them on
        if tc.shadow_interval:
            assert steps.dropna(subset=["grad_cos"])["step"].tolist() == [0, 2], rid
            assert steps["grad_cos"].dropna().between(-1, 1).all()
        if tc.rank_interval:
            rank_cols = [c for c in steps if c.startswith("rank.") and c.endswith(".stable")]
            assert rank_cols and steps.dropna(subset=rank_cols[:1])["step"].tolist() == [0, 2], rid
        # the arm's lr multiplier: step 0 (warm-up of one step) runs at the arm's peak lr
        assert steps["lr"].iloc[0] == pytest.approx(tc.lr * run.lr_multiplier), rid
        assert run.config.train.lr == pytest.approx(tc.lr * run.lr_multiplier)
        # the run's own config as the job wrote it: the file's switches, on cpu
        written = yaml.safe_load((d / "config.yaml").read_text())
        assert written["train"]["autocast"] == tc.autocast and written["train"]["device"] == "cpu"
        # keep_checkpoints: 4 periodic saves (steps 1, 2, 3 and the final one), the newest kept
        ckpts = sorted(p.name for p in (d / "checkpoints").glob("step-*.pt"))
        assert len(ckpts) == min(tc.keep_checkpoints, STEPS) and ckpts[-1] == f"step-{STEPS:08d}.pt", ckpts
        state = torch.load(d / "checkpoints" / ckpts[-1], map_location="cpu", weights_only=True)
        # the full vocabulary: the embedding (and the tied head) has one row per GPT-2 id
        assert state["model"]["transformer.wte.weight"].shape[0] == vocab, rid
        # W&B offline, no network: its run file is under the run's wandb/ with every step
        if tracking.wandb_mode == "offline":
            files = list((d / "wandb").glob("offline-run-*/run-*.wandb"))
            assert len(files) == 1, (rid, list((d / "wandb").rglob("*")))
            history = wandb_history(files[0])
            assert sorted(history) == list(range(STEPS))
            assert [history[s]["loss"] for s in range(STEPS)] == pytest.approx(losses.tolist())


@pytest.mark.slow
def test_the_h100_run_compiles_on_cpu(tmp_path):
    import torch._dynamo
    """train.compile on the shrunk H100 config's GridOptim arm, autocast as the file sets it: the
    model under torch.compile (and GridOptim's fused move: grid_move.c on CPU, torch.compile on a
    GPU) trains, and its first loss is the eager run's. Dynamo breaks the graph at each quantized
    layer under delayed amax scaling (the scaler's history is mutated inside the autograd
    Function); the run is still correct, only less fused."""
    cfg = shrunk(runpod_config())
    cfg["run"]["model"]["n_layer"] = 1  # a cold compile here: ~28 s for one layer, ~42 s for two
    exp = load_experiment(cfg)
    rid = next(r for r in chosen_runs(exp) if exp.runs[r].optimizer == "grid")
    corpus = cfg["corpus"]
    data = tmp_path / "data"
    prepare("eurlex-sample", data, val_fraction=corpus["val_fraction"], seed=corpus["seed"],
            compact_vocab=corpus.get("compact_vocab", False), progress=False)
    paths = {"train_bin": str(data / "train.bin"), "val_bin": str(data / "val.bin"), "meta": str(data / "meta.json")}
    run = exp.runs[rid].config.to_dict()
    run.update(data=paths, tracking={**run["tracking"], "wandb_mode": "disabled"})  # W&B: the test above
    losses, trainers = {}, {}
    for compiled in (False, True):
        run["train"]["compile"] = compiled
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        trainer = trainers[compiled] = Trainer(RunConfig.from_dict(run), tmp_path / f"compile-{compiled}", rid)
        summary = trainer.run(progress=False)
        assert summary["status"] == "completed" and summary["steps"] == STEPS
        assert summary["logits_dtype"] == ("bfloat16" if run["train"]["autocast"] else "float32")
        losses[compiled] = pd.read_parquet(tmp_path / f"compile-{compiled}" / "steps.parquet")["loss"].tolist()
    assert isinstance(trainers[True].forward, torch._dynamo.eval_frame.OptimizedModule)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # dynamo made graphs: it compiled
    assert all(math.isfinite(v) for v in losses[True]) and len(set(losses[True])) == STEPS
    assert losses[True][0] == pytest.approx(losses[False][0], rel=1e-2)  # same weights, same batch
