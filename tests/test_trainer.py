"""Real training on the real EUR-Lex sample: metrics, divergence, exact resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from altgrad.errors import AltgradError
from altgrad.training.config import RunConfig
from altgrad.training.data import prepare
from altgrad.training.trainer import TIMING_COLUMNS, Trainer, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "eurlex-sample"
    prepare("eurlex-sample", out, compact_vocab=True, progress=False)
    return out


def tiny_config(corpus: Path, **overrides) -> RunConfig:
    cfg = {
        "data": {"train_bin": str(corpus / "train.bin"), "val_bin": str(corpus / "val.bin"), "meta": str(corpus / "meta.json")},
        "model": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 32},
        "train": {"max_steps": 24, "batch_size": 4, "lr": 3e-3, "warmup_steps": 4, "eval_interval": 8,
                  "eval_batches": 2, "checkpoint_interval": 5, "shadow_interval": 2, "rank_interval": 8,
                  "device": "cpu"},
        "precision": {"weight": "e4m3", "activation": "e4m3", "gradient": "e5m2"},
        "tracking": {"wandb_mode": "disabled"},
    }
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        cfg.setdefault(section, {})[key] = value
    return RunConfig.from_dict(cfg)


def test_a_real_run_writes_every_metric(corpus, tmp_path):
    summary = train(tiny_config(corpus), tmp_path / "run", progress=False)
    steps = pd.read_parquet(tmp_path / "run" / "steps.parquet")
    assert summary["status"] == "completed" and summary["steps"] == 24
    assert list(steps["step"]) == list(range(24))
    for column in ("loss", "lr", "grad_norm", "tokens_per_s", "grad_cos", "zero_update_frac", "grad.dead_frac",
                   "quant.weight.overflow_rate", "quant.gradient.underflow_rate", "update.stall_ratio"):
        assert column in steps, column
    assert steps["val_loss"].notna().sum() == 4  # steps 0, 8, 16 and the last
    assert steps["grad_cos"].notna().sum() == 12  # every second step
    assert steps["grad_cos"].dropna().between(0.5, 1.0).all()  # e4m3/e5m2 gradients point the right way
    assert steps["loss"].iloc[-5:].mean() < steps["loss"].iloc[:5].mean() - 0.5
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["best_val_loss"] == pytest.approx(steps["val_loss"].min())
    assert on_disk["flops"] > 0 and on_disk["tokens"] == 24 * 4 * 32


def test_a_run_that_blows_up_is_labelled_diverged(corpus, tmp_path):
    cfg = tiny_config(corpus, **{"train.lr": 1e30, "train.warmup_steps": 0, "train.nan_patience": 3,
                                 "train.grad_clip": 0.0, "precision.weight": "bf16",
                                 "precision.activation": "bf16", "precision.gradient": "bf16"})
    summary = train(cfg, tmp_path / "run", progress=False)
    steps = pd.read_parquet(tmp_path / "run" / "steps.parquet")
    assert summary["status"] == "diverged"
    assert summary["diverged_at"] == steps["step"].iloc[-1]
    assert (steps["nan_source"].iloc[-3:] != "").all()
    assert any(e["kind"] == "diverged" for e in summary["events"])


def _train_cmd(config: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "altgrad.cli", "train", "--config", str(config), "--out", str(out), "--quiet"]


def test_resume_after_sigkill_is_exact(corpus, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(tiny_config(corpus, **{"train.max_steps": 30}).to_dict()))
    env = {**os.environ, "WANDB_MODE": "disabled"}
    subprocess.run(_train_cmd(config, tmp_path / "whole"), check=True, env=env)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(config, killed), env=env)
    first = killed / "checkpoints" / "step-00000010.pt"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
    subprocess.run(_train_cmd(config, killed), check=True, env=env)

    a = pd.read_parquet(tmp_path / "whole" / "steps.parquet").drop(columns=list(TIMING_COLUMNS))
    b = pd.read_parquet(killed / "steps.parquet").drop(columns=list(TIMING_COLUMNS))
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    wa = torch.load(tmp_path / "whole" / "checkpoints" / "step-00000030.pt", weights_only=True)["model"]
    wb = torch.load(killed / "checkpoints" / "step-00000030.pt", weights_only=True)["model"]
    for name, tensor in wa.items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(tensor, wb[name]), name


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous(corpus, tmp_path):
    cfg = tiny_config(corpus, **{"train.max_steps": 12})
    train(cfg, tmp_path / "run", progress=False)
    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("step-*.pt"))
    checkpoints[-1].write_bytes(b"not a checkpoint")
    longer = tiny_config(corpus, **{"train.max_steps": 12})
    with pytest.warns(UserWarning, match="unreadable"):
        summary = train(longer, tmp_path / "run", progress=False)
    assert summary["steps"] == 12


def test_missing_data_is_reported_before_training(corpus, tmp_path):
    cfg = tiny_config(corpus)
    broken = RunConfig.from_dict({**cfg.to_dict(), "data": {**cfg.to_dict()["data"], "train_bin": str(tmp_path / "nope.bin")}})
    with pytest.raises(AltgradError, match="nope.bin"):
        train(broken, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_mantissa_shift_moves_a_stalled_layer_and_resumes(corpus, tmp_path):
    # E7M0 under AdamW stalls; with a low threshold and patience 2 the policy must act
    cfg = tiny_config(corpus, **{"train.max_steps": 12, "precision.weight": "e7m0", "optimizer.mantissa_shift": True,
                                 "optimizer.mantissa_shift_threshold": 0.3, "optimizer.mantissa_shift_patience": 2,
                                 "optimizer.partition_clip": True, "train.shadow_interval": 0})
    summary = train(cfg, tmp_path / "run", progress=False)
    shifts = [e for e in summary["events"] if e["kind"] == "mantissa_shift"]
    assert shifts and "e7m0 -> " in shifts[0]["message"]
    # resuming from the final checkpoint rebuilds the shifted layers before loading their state
    resumed = Trainer(cfg, tmp_path / "run")
    assert resumed.resume()
    shifted = {name: fmt.name for name, fmt in resumed.mantissa_shift.formats.items() if fmt.name != "e7m0"}
    assert shifted and all(resumed.layers[name].weight_format.name == fmt for name, fmt in shifted.items())


def test_a_changed_config_starts_over_and_keeps_the_old_state(corpus, tmp_path):
    train(tiny_config(corpus, **{"train.max_steps": 6}), tmp_path / "run", progress=False)
    changed = tiny_config(corpus, **{"train.max_steps": 6, "train.lr": 1e-3})
    with pytest.warns(UserWarning, match="saved under another config.*starting from step 0"):
        summary = train(changed, tmp_path / "run", progress=False)
    assert summary["steps"] == 6
    assert len(list(tmp_path.glob("run/checkpoints.stale-1/step-*.pt"))) >= 1


def test_state_from_another_corpus_is_moved_aside_every_time_and_never_deleted(tmp_path):
    """The trainer's one staleness policy (config, library code, corpus), for `altgrad train`
    and the pipeline alike: a re-prepared corpus makes the saved state stale."""
    data = tmp_path / "data"
    prepare("eurlex-sample", data, compact_vocab=True, progress=False)
    cfg = tiny_config(data, **{"train.max_steps": 6})
    train(cfg, tmp_path / "run", progress=False)
    first = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())

    prepare("eurlex-sample", data, seed=1, compact_vocab=True, progress=False)  # same paths, other tokens
    with pytest.warns(UserWarning, match="saved under another corpus"):
        train(cfg, tmp_path / "run", progress=False)
    with pytest.warns(UserWarning, match="saved under another config"):
        train(tiny_config(data, **{"train.max_steps": 6, "train.lr": 1e-3}), tmp_path / "run", progress=False)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints.stale-1").iterdir()) == first
    assert list((tmp_path / "run" / "checkpoints.stale-2").glob("step-*.pt"))
    assert Trainer(tiny_config(data, **{"train.max_steps": 6, "train.lr": 1e-3}), tmp_path / "run").resume()


@pytest.mark.parametrize("optimizer, master", [("manifold_adamw", "fp32"), ("grid", "fp32"), ("adamw", "grid"),
                                               ("manifold_adamw", "grid")])
def test_every_optimizer_trains_and_writes_its_diagnostics(corpus, tmp_path, optimizer, master):
    cfg = tiny_config(corpus, **{"optimizer.name": optimizer, "optimizer.master_weights": master,
                                 "train.shadow_interval": 0})
    train(cfg, tmp_path / "run", progress=False)
    steps = pd.read_parquet(tmp_path / "run" / "steps.parquet")
    assert steps["loss"].iloc[-5:].mean() < steps["loss"].iloc[:5].mean() - 0.3
    for column in ("update.flips", "update.attempted", "update.stall_ratio", "update.h.0.attn.c_attn.bitpos_mean",
                   "update.h.0.attn.c_attn.grid_distance", "update.h.0.mlp.c_fc.grad_stiffness_corr",
                   "rank.lm_head.stable", "rank.h.1.attn.c_proj.effective", "zero_update_frac"):
        assert steps[column].notna().any(), column
    if master == "grid" or optimizer == "grid":  # stored weights are grid points: no distance to the grid
        assert steps["update.h.0.attn.c_attn.grid_distance"].max() == 0


@pytest.mark.parametrize("optimizer, master", [("adamw", "grid"), ("grid", "fp32")])
def test_compiled_training_follows_eager_training(corpus, tmp_path, optimizer, master):
    """train.compile: the quantized model, the grid projection and GridOptim's move are
    compiled. The first forward pass is the same bit for bit; after it, the compiler's float
    reordering in the backward pass moves weights that sit near a rounding tie, and GridOptim's
    rung rounding draws other (seeded) bits, so the runs only follow each other closely."""
    losses = {}
    for compile in (False, True):
        cfg = tiny_config(corpus, **{"optimizer.name": optimizer, "optimizer.master_weights": master,
                                     "train.shadow_interval": 0, "train.max_steps": 12, "train.compile": compile})
        summary = train(cfg, tmp_path / f"run-{compile}", progress=False)
        steps = pd.read_parquet(tmp_path / f"run-{compile}" / "steps.parquet")
        assert summary["status"] == "completed"
        assert steps["update.h.0.attn.c_attn.grid_distance"].max() == 0  # weights stay grid points
        losses[compile] = steps["loss"].to_numpy()
    assert losses[True][0] == losses[False][0]
    assert abs(losses[True] - losses[False]).max() < (0.01 if optimizer == "adamw" else 0.05)
    assert losses[True][-3:].mean() < losses[True][:3].mean() - 0.3


def wandb_history(path: Path) -> dict[int, dict]:
    """The history rows of an offline W&B run, read back from its .wandb file: a 7-byte header,
    then LevelDB-style log blocks of 32 KiB whose chunks (crc32c, length, kind) carry protobuf
    Records, a record split over blocks as first/middle/last chunks."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block, position, pending, rows = path.read_bytes(), 1 << 15, 7, b"", {}
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a chunk header is padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # full, last
            record = Record.FromString(pending)
            pending = b""
            if record.HasField("history"):
                row = {item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                rows[int(row["_step"])] = row
    return rows


def test_every_metric_reaches_the_wandb_mirror(corpus, tmp_path, monkeypatch):
    """The real W&B client, offline (no server): every finite number of every steps.parquet row,
    the update diagnostics and ranks included, is in the run's W&B history at its step."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = tiny_config(corpus, **{"tracking.wandb_mode": "offline", "optimizer.name": "grid", "train.max_steps": 9})
    train(cfg, tmp_path / "run", progress=False)
    (path,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    history = wandb_history(path)
    steps = pd.read_parquet(tmp_path / "run" / "steps.parquet")
    assert sorted(history) == steps["step"].tolist()
    numeric = steps.select_dtypes("number")
    assert any(c.startswith("update.") for c in numeric) and any(c.startswith("rank.") for c in numeric)
    for _, row in numeric.iterrows():
        logged = history[int(row["step"])]
        expected = {k: v for k, v in row.items() if pd.notna(v)}
        assert set(expected) <= set(logged), set(expected) - set(logged)
        assert all(logged[k] == pytest.approx(v) for k, v in expected.items())



def test_the_shadow_gradient_is_float32_even_when_the_model_trains_under_autocast(corpus, tmp_path):
    """The shadow is the float32 reference of the gradient-fidelity cosine: autocast must not
    reach it, whatever the quantized model runs under."""
    trainer = Trainer(tiny_config(corpus, **{"train.autocast": True}), tmp_path / "run")
    trainer.autocast = True  # bf16 autocast, as on CUDA (CPU runs it too)
    batches = trainer._micro_batches()
    trainer._loss_and_grads(trainer.forward, batches, autocast=True)
    trainer._shadow_cosine(batches, row := {})
    reference = trainer.shadow.__class__(trainer.shadow.config)
    reference.load_state_dict(trainer.shadow.state_dict())
    reference.zero_grad(set_to_none=True)
    for x, y in batches:
        (reference(x, y)[1] / len(batches)).backward()
    for (name, p), q in zip(trainer.shadow.named_parameters(), reference.parameters()):
        assert p.grad.dtype == torch.float32
        assert torch.equal(p.grad, q.grad), name
    assert 0.5 < row["grad_cos"] < 1.0
