"""The Snakemake pipeline, run for real on a tiny config in a temporary copy of the workflow.

Each test copies Snakefile, workflow/, config/, profiles/ and the `runpod` link into a temp
directory, replaces config/config.yaml (the embedded default) with a tiny experiment and
runs the real `snakemake` on it: real tokenization, real (tiny) training, real export and
report. Fast tests at the top check export/report/profiles without Snakemake.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tiny_workflow import (
    ROOT,
    executed_jobs,
    make_workflow,
    snakemake,
    tiny_experiment,
    write_config,
)

from altgrad.analysis.export import export_runs

TIMING = ["tokens_per_s", "step_time_s"]


# ------------------------------------------------------------------------------ helpers


def tiny_config(**changes) -> dict:
    """3 runs (bf16 and e5m2 with AdamW from the grid, e5m2 GridOptim as an extra run
    with its own lr), a 1-layer GPT, 12 steps."""
    extra = [{"format": "e5m2", "optimizer": "grid", "seed": 0, "overrides": {"train.lr": 1.0e-2}}]
    return tiny_experiment(**{"extra_runs": extra, **changes})


TINY_RUNS = ["bf16-adamw-s0", "e5m2-adamw-s0", "e5m2-grid-s0"]


def mtimes(wf: Path, pattern: str) -> dict[str, int]:
    return {str(p.relative_to(wf)): p.stat().st_mtime_ns for p in sorted(wf.glob(pattern))}


def steps_without_timing(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path).drop(columns=TIMING)


# ------------------------------------------------------------------------------ fast


def _fake_run(root: Path, rid: str, status: str = "completed", extra_col: bool = False) -> Path:
    d = root / rid
    d.mkdir(parents=True)
    steps = pd.DataFrame({"step": [0, 1, 2], "loss": [5.0, 4.0, 3.5], "val_loss": [5.1, None, 3.9],
                          "tokens_per_s": [1.0, 1.0, 1.0], "step_time_s": [0.1, 0.1, 0.1]})
    if extra_col:
        steps["quant.weight.overflow_rate"] = [0.0, 0.01, 0.0]
    steps.to_parquet(d / "steps.parquet")
    summary = {"run_id": rid, "status": status, "diverged_at": 2 if status == "diverged" else None, "steps": 3,
               "tokens": 96, "wall_time_s": 0.3, "final_val_loss": 3.9, "best_val_loss": 3.9, "final_val_ppl": 49.4,
               "flops": 1e9, "params_total": 1000, "params_non_embedding": 500, "device": "cpu",
               "precision": {"weight": "e5m2", "activation": "e5m2", "gradient": "e5m2"},
               "optimizer": {"name": "adamw", "master_weights": "fp32"}, "seed": 0, "config_hash": "abc",
               "events": [{"step": 2, "kind": "nan", "message": "x"}] if status == "diverged" else []}
    (d / "summary.json").write_text(json.dumps(summary))
    labels = {"run_id": rid, "format": rid.split("-")[0], "optimizer": rid.split("-")[1], "master_weights": "fp32",
              "seed": 0, "tag": None, "origin": "grid", "weight": "e5m2", "activation": "e5m2",
              "gradient": "e5m2", "config_hash": "abc"}
    (d / "run.json").write_text(json.dumps(labels))
    return d


def test_export_collects_runs_into_metrics_and_summary(tmp_path):
    a = _fake_run(tmp_path / "runs", "bf16-adamw-s0")
    b = _fake_run(tmp_path / "runs", "e5m2-manifold-s0", status="diverged", extra_col=True)
    out = tmp_path / "results"
    metrics, summary = export_runs([a, b], out / "metrics.parquet", out / "summary.parquet", out / "summary.csv")
    m = pd.read_parquet(out / "metrics.parquet")
    assert len(m) == 6 and list(m.columns[:3]) == ["run_id", "format", "optimizer"]
    assert m.loc[m.run_id == "bf16-adamw-s0", "quant.weight.overflow_rate"].isna().all()  # union of columns
    s = pd.read_parquet(out / "summary.parquet")
    assert list(s.run_id) == ["bf16-adamw-s0", "e5m2-manifold-s0"]
    assert list(s.status) == ["completed", "diverged"] and list(s.n_events) == [0, 1]
    assert s.final_loss.tolist() == [3.5, 3.5]
    assert pd.read_csv(out / "summary.csv").shape[0] == 2
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files


def test_profiles_do_not_fight():
    """profiles/default is loaded with every --profile and wins key by key: it must not
    set a key that runpod or slurm sets."""
    load = lambda name: yaml.safe_load((ROOT / "profiles" / name / "config.yaml").read_text())  # noqa: E731
    default, runpod, slurm = load("default"), load("runpod"), load("slurm")
    assert not set(default) & set(runpod), set(default) & set(runpod)
    assert not set(default) & set(slurm), set(default) & set(slurm)
    assert runpod["configfile"] == "config/runpod.yaml" and runpod["replace-workflow-config"] is True
    assert "gpu=1" in runpod["resources"]
    # the literal `snakemake --profile runpod` from the repo root finds ./runpod
    assert (ROOT / "runpod").resolve() == (ROOT / "profiles" / "runpod").resolve()


# ------------------------------------------------------------------------------ slow


@pytest.mark.slow
def test_dry_run_lists_jobs_and_budget_and_creates_nothing(tmp_path):
    wf = make_workflow(tmp_path, tiny_config())
    proc = snakemake(wf, "-n")
    assert proc.stdout.count("altgrad budget:") == 1  # printed once
    assert "TOTAL (3 jobs)" in proc.stdout and "budget 20.00 USD, left 20.00 USD" in proc.stdout
    assert executed_jobs(proc.stdout) == {"prepare": 1, "train": 3, "export": 1, "report": 1, "all": 1}
    for rid in TINY_RUNS:
        assert f"run={rid}" in proc.stdout
    assert not (wf / "results").exists() and not (wf / "data").exists()


@pytest.mark.slow
def test_over_budget_refuses_to_start_with_the_overrun(tmp_path):
    wf = make_workflow(tmp_path, tiny_config(**{"budget.usd": 1e-7, "budget.device": "h100",
                                                "budget.price_usd_per_hour": 2.69}))
    proc = snakemake(wf, "--cores", "1", check=False)
    assert proc.returncode == 2
    # amounts with the digits they need (not "$0.00 exceeds the budget $0.00 by $0.00")
    assert "OVER BY" in proc.stdout and "exceeds the budget $0.00000010 by $0." in proc.stdout
    assert "run.train.max_steps" in proc.stdout  # the knobs
    assert not (wf / "results").exists() and not (wf / "data").exists()


@pytest.mark.slow
def test_invalid_config_lists_every_problem_and_starts_no_job(tmp_path):
    wf = make_workflow(tmp_path)
    # a prepared corpus, so the block size can be checked against it
    subprocess.run([sys.executable, "-m", "altgrad.cli", "prepare", "--out", "data/eurlex-sample",
                    "--compact-vocab", "--quiet"], cwd=wf, check=True)
    cfg = tiny_config(**{"grid.formats": ["e5m2", "e9m9"], "grid.optimizers": ["adamw", "adamm"],
                         "run.model.block_size": 30000})
    cfg["extra_runs"] = [{"format": "e5m2", "optimizer": "adamw"},
                         {"format": "bf16", "tag": "neg", "overrides": {"train.lr": -0.1}}]
    cfg["gird"] = {}
    write_config(wf, cfg)
    before = mtimes(wf, "data/**/*")
    proc = snakemake(wf, "--cores", "1", check=False)
    assert proc.returncode != 0
    err = proc.stdout
    assert "no job started" in err and "6 problems" in err, err
    for text in ("gird: unknown key", "'adamm' is not one of", "unknown format 'e9m9'",
                 "train.lr: must be > 0", "duplicate run id 'e5m2-adamw-s0'", "model.block_size 30000"):
        assert text in err, text
    assert not (wf / "results").exists() and mtimes(wf, "data/**/*") == before


@pytest.mark.slow
def test_staleness_complete_run_then_noop_then_one_lr_then_corpus(tmp_path):
    wf = make_workflow(tmp_path, tiny_config())
    # the library hash of this workflow copy is taken from a copy of the altgrad sources,
    # so the test can "change the quantizer" without touching the installed package
    import altgrad

    lib = tmp_path / "lib"
    for pkg in ("quantization", "nn", "optim", "training", "analysis", "experiment"):
        shutil.copytree(Path(altgrad.__file__).parent / pkg, lib / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(Path(altgrad.__file__).parent / "scaling_laws.py", lib)
    common = wf / "workflow" / "rules" / "common.smk"
    assert "LIB_HASH = library_hash()" in common.read_text()
    common.write_text(common.read_text().replace("LIB_HASH = library_hash()", f"LIB_HASH = library_hash(root={str(lib)!r})"))
    report_rules = wf / "workflow" / "rules" / "report.smk"
    report_code = '("analysis", "experiment", "scaling_laws.py")'
    assert report_code in report_rules.read_text()
    report_rules.write_text(report_rules.read_text().replace(report_code, f"{report_code}, root={str(lib)!r}"))

    # 1. a complete run: every output, three runs, the report; the budget printed once
    proc = snakemake(wf, "--cores", "2")
    assert proc.stdout.count("altgrad budget:") == 1
    s = pd.read_parquet(wf / "results" / "summary.parquet")
    assert sorted(s.run_id) == sorted(TINY_RUNS) and set(s.status) <= {"completed", "diverged"}
    assert (s.steps == 12).all() or (s.status == "diverged").any()
    html = (wf / "results" / "report.html").read_text()
    assert all(r in html for r in TINY_RUNS)
    # the verdict first, and the budget planned (from the experiment config) vs spent
    assert html.index('id="verdict"') < html.index('id="runs"')
    assert "FLOPs planned" in html and "snakemake --cores 2" in html
    assert sorted(p.name for p in (wf / "results" / "figures").glob("*.png"))
    cfg_written = yaml.safe_load((wf / "results/runs/e5m2-grid-s0/config.yaml").read_text())
    assert cfg_written["train"]["lr"] == 1e-2 and cfg_written["optimizer"]["name"] == "grid"
    labels = json.loads((wf / "results/runs/e5m2-grid-s0/run.json").read_text())
    assert labels["format"] == "e5m2" and labels["optimizer"] == "grid" and labels["origin"] == "extra_runs[0]"
    assert (wf / "results/logs/train/e5m2-grid-s0.log").exists()
    assert (wf / "results/benchmarks/train/e5m2-grid-s0.tsv").exists()

    # 2. right after: nothing to do
    outputs = mtimes(wf, "results/**/*.parquet") | mtimes(wf, "results/report.html")
    proc = snakemake(wf, "--cores", "2")
    assert "Nothing to be done" in proc.stdout
    assert mtimes(wf, "results/**/*.parquet") | mtimes(wf, "results/report.html") == outputs

    # `snakemake --report` works on the registered outputs
    snakemake(wf, "--report", "snakemake-report.zip")
    assert (wf / "snakemake-report.zip").stat().st_size > 0

    # a changed quantizer: every run is planned again, and -n says why
    formats_py = lib / "quantization" / "formats.py"
    original = formats_py.read_text()
    formats_py.write_text(original + "\n# a changed quantizer\n")
    dry = snakemake(wf, "-n")
    assert executed_jobs(dry.stdout) == {"train": 3, "export": 1, "report": 1, "all": 1}
    assert dry.stdout.count("Params have changed") == 3 and "altgrad-library-" in dry.stdout
    formats_py.write_text(original)
    assert "Nothing to be done" in snakemake(wf, "-n").stdout

    # a changed verdict: the tables and the report are made again, no run
    verdict_py = lib / "analysis" / "verdict.py"
    original = verdict_py.read_text()
    verdict_py.write_text(original + "\n# a changed verdict\n")
    dry = snakemake(wf, "-n")
    assert executed_jobs(dry.stdout) == {"export": 1, "report": 1, "all": 1}
    assert "Params have changed" in dry.stdout and "altgrad-report-" in dry.stdout
    verdict_py.write_text(original)
    assert "Nothing to be done" in snakemake(wf, "-n").stdout

    # 3. one run's lr: that run, export and report rerun; nothing else; -n shows the change
    cfg = tiny_config()
    cfg["extra_runs"][0]["overrides"]["train.lr"] = 5.0e-3
    write_config(wf, cfg)
    dry = snakemake(wf, "-n")
    assert executed_jobs(dry.stdout) == {"train": 1, "export": 1, "report": 1, "all": 1}
    reason = next(line for line in dry.stdout.splitlines() if "Params have changed" in line)
    assert '"lr":0.01' in reason and '"lr":0.005' in reason and "precision:" not in reason
    steps_before = mtimes(wf, "results/runs/*/steps.parquet")
    meta_before = mtimes(wf, "data/eurlex-sample/*")
    snakemake(wf, "--cores", "2")
    steps_after = mtimes(wf, "results/runs/*/steps.parquet")
    changed = {k for k in steps_after if steps_after[k] != steps_before[k]}
    assert changed == {"results/runs/e5m2-grid-s0/steps.parquet"}
    assert mtimes(wf, "data/eurlex-sample/*") == meta_before
    assert yaml.safe_load((wf / "results/runs/e5m2-grid-s0/config.yaml").read_text())["train"]["lr"] == 5e-3
    assert mtimes(wf, "results/report.html") != {k: v for k, v in outputs.items() if k.endswith(".html")}

    # 4. the corpus config: re-tokenize and rerun everything downstream
    cfg["corpus"]["val_fraction"] = 0.15
    write_config(wf, cfg)
    dry = snakemake(wf, "-n")
    assert executed_jobs(dry.stdout) == {"prepare": 1, "train": 3, "export": 1, "report": 1, "all": 1}
    snakemake(wf, "--cores", "2")
    meta = json.loads((wf / "data/eurlex-sample/meta.json").read_text())
    assert meta["split"]["val_fraction"] == 0.15
    steps_final = mtimes(wf, "results/runs/*/steps.parquet")
    assert all(steps_final[k] != steps_after[k] for k in steps_final)


@pytest.mark.slow
def test_killed_workflow_resumes_to_the_same_results(tmp_path):
    cfg = tiny_config(**{"grid.formats": ["e5m2"], "run.train.max_steps": 60, "run.train.checkpoint_interval": 5,
                         "run.train.eval_interval": 20})
    cfg["extra_runs"] = []
    wf = make_workflow(tmp_path, cfg)
    run_dir = wf / "results/runs/e5m2-adamw-s0"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1"], cwd=wf, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while not list(run_dir.glob("checkpoints/step-*.pt")):
            assert proc.poll() is None, "the workflow ended before the first checkpoint"
            assert time.time() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole process group: snakemake and the trainer
        proc.wait()
    assert not (run_dir / "steps.parquet").exists()

    snakemake(wf, "--unlock")  # the killed Snakemake left its lock
    snakemake(wf, "--cores", "1")
    assert "resumed at step" in (wf / "results/logs/train/e5m2-adamw-s0.log").read_text()
    resumed = steps_without_timing(run_dir / "steps.parquet")

    shutil.rmtree(wf / "results")  # an uninterrupted run of the same config
    snakemake(wf, "--cores", "1", "--forceall")
    straight = steps_without_timing(run_dir / "steps.parquet")
    assert len(straight) == 60
    pd.testing.assert_frame_equal(resumed, straight)


def runpod_jobs() -> int:
    """The H100 matrix's run count (tests/test_matrix.py checks what the runs are)."""
    from altgrad.experiment import load_experiment, read_config_files

    return len(load_experiment(read_config_files([ROOT / "config" / "runpod.yaml"])).runs)


@pytest.mark.slow
def test_runpod_profile_plans_the_h100_matrix(tmp_path):
    wf = make_workflow(tmp_path, tiny_config())  # a different embedded default must not leak in
    proc = snakemake(wf, "-n", "--profile", "runpod")
    err = proc.stdout
    n = runpod_jobs()
    assert err.count("altgrad budget:") == 1
    assert f"{n} training jobs on h100 at $2.69/h, MFU 0.3" in err and f"TOTAL ({n} jobs)" in err
    total = float(err.split(f"TOTAL ({n} jobs)")[1].split("\n")[0].split()[-1])
    assert 0 < total <= 20
    assert executed_jobs(err) == {"prepare": 1, "train": n, "export": 1, "report": 1, "all": 1}
    assert "data/lex_glue-eurlex/train.bin" in err and "gpu=1" in err
    assert "eurlex-sample" not in err  # the tiny default did not leak in
    assert not (wf / "results").exists() and not (wf / "data").exists()
    # and without a profile the same tree plans the CPU default
    proc = snakemake(wf, "-n")
    assert "3 training jobs on cpu" in proc.stdout


@pytest.mark.slow
def test_slurm_profile_dry_run_plans(tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    wf = make_workflow(tmp_path)
    proc = snakemake(wf, "-n", "--profile", "profiles/slurm")
    assert executed_jobs(proc.stdout)["train"] == runpod_jobs()
    assert "slurm_partition=gpu" in proc.stdout and "gpu=1" in proc.stdout
    assert not (wf / "results").exists() and not (wf / "data").exists()
