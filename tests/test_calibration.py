"""Calibration: `altgrad calibrate` times each kind of job, and the budget table prices from it.

The slow test calibrates a tiny matrix with the real pipeline, then trains its jobs for real
and checks that the table's "measured" estimates are within 2x of each job's wall time
(Snakemake's benchmark file of the train rule). The fast ones check the assumed basis, a
calibration measured on another device, the arithmetic of a measured row, and a damaged file.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from tiny_workflow import ROOT, load, make_workflow, snakemake, tiny_experiment

from altgrad.cli import main
from altgrad.errors import AltgradError
from altgrad.experiment import load_experiment, read_config_files
from altgrad.experiment.calibration import CALIBRATION_VERSION, kind_key, load_calibration
from altgrad.experiment.matrix import RUNTIME_MARGIN, RUNTIME_SLACK_MIN
from altgrad.experiment.calibration import run_events
from altgrad.experiment.pricing import REFERENCE_CPU
from altgrad.training.tokenizer import GPT2_VOCAB_SIZE


def _config(**changes):
    """A matrix whose jobs spend real time in steps, evaluations, shadow passes and checkpoints
    (not only in start-up): the default's tiny model, 60 steps."""
    base = {
        "run.model": {"n_layer": 2, "n_head": 2, "n_embd": 64, "block_size": 64},
        "run.train": {"max_steps": 60, "batch_size": 8, "lr": 3.0e-3, "min_lr": 3.0e-4, "warmup_steps": 5,
                      "eval_interval": 20, "eval_batches": 4, "checkpoint_interval": 20, "shadow_interval": 10,
                      "rank_interval": 30, "device": "cpu"},
    }
    return tiny_experiment(**{**base, **changes})


@pytest.mark.slow
def test_calibrated_table_is_measured_and_within_2x_of_the_real_jobs(tmp_path):
    wf = make_workflow(tmp_path, _config())
    snakemake(wf, "--cores", "1", "results/calibration.json")
    calib = json.loads((wf / "results" / "calibration.json").read_text())
    assert calib["version"] == CALIBRATION_VERSION and calib["device"] == "cpu" and calib["threads"] == 1
    assert calib["hardware"] and calib["torch"] and calib["date"].endswith("Z")
    assert calib["startup_s"] > 0 and calib["startup"]["wall_s"] > calib["startup_s"]
    assert sorted(r for k in calib["kinds"].values() for r in k["runs"]) == ["bf16-adamw-s0", "e5m2-adamw-s0"]
    for k in calib["kinds"].values():
        assert k["step_s"] > 0 and k["tokens_per_s"] == pytest.approx(8 * 64 / k["step_s"])
        assert k["shadow_s"] > 0 and k["eval_batch_s"] > 0 and k["checkpoint_s"] > 0
    print(f"\ncalibrate wall {calib['wall_s']:.1f} s, start-up {calib['startup_s']:.2f} s")

    runs = ["bf16-adamw-s0", "e5m2-adamw-s0"]
    proc = snakemake(wf, "--cores", "1", *(f"results/runs/{r}/summary.json" for r in runs))
    assert "MEASURED: 2 of 2 rows, from results/calibration.json" in proc.stdout and "ASSUMED" not in proc.stdout
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.split()[:1] in (["bf16-adamw-s0"],
                                                                                                        ["e5m2-adamw-s0"])}
    assert {r: rows[r][2] for r in runs} == {r: "measured" for r in runs}

    exp = load_experiment(read_config_files([wf / "config" / "config.yaml"]), data_root=wf / "data",
                          calibration=wf / "results" / "calibration.json")
    jobs = {j.name: j for j in exp.jobs()}
    for rid in runs:
        job = jobs[rid]
        assert job.basis == "measured" and job.gpu_hours == pytest.approx(job.seconds / 3600)
        wall = float(pd.read_csv(wf / "results" / "benchmarks" / "train" / f"{rid}.tsv", sep="\t")["s"].iloc[0])
        print(f"{rid}: estimated {job.seconds:.2f} s, the job took {wall:.2f} s (ratio {job.seconds / wall:.2f})")
        assert 0.5 <= job.seconds / wall <= 2.0
        # the train rule's runtime comes from the same estimate, with the stated margin
        assert exp.resources(rid)["runtime"] == math.ceil(RUNTIME_MARGIN * job.seconds / 60 + RUNTIME_SLACK_MIN)
        # the events the estimate counts are the ones the trainer ran
        steps = pd.read_parquet(wf / "results" / "runs" / rid / "steps.parquet")
        ev = run_events(exp.runs[rid].config.train)
        assert ev.steps == len(steps) and ev.evals == steps["val_loss"].notna().sum()
        assert ev.shadows == steps["grad_cos"].notna().sum()

    # a damaged calibration stops the pipeline before any job, naming the file and the fix
    (wf / "results" / "calibration.json").write_text('{"version": 1, "device": "cpu"')
    proc = snakemake(wf, "-n", check=False)
    assert proc.returncode == 2
    err = [line for line in proc.stdout.splitlines() if "altgrad: error" in line]
    assert len(err) == 1 and "calibration file results/calibration.json is corrupt" in err[0]
    assert "--forcerun calibrate results/calibration.json" in err[0]


def _write_calibration(path, exp, device="cpu", step_s=0.05, **fields):
    kinds = {}
    for run in exp.runs.values():
        key = kind_key(run.config, GPT2_VOCAB_SIZE)
        kinds.setdefault(key, {"step_s": step_s, "tokens_per_s": 1.0, "shadow_s": 0.02, "rank_s": 0.01,
                               "eval_batch_s": 0.005, "checkpoint_s": 0.1, "steps_timed": 20, "runs": [],
                               "recipe": {}})["runs"].append(run.run_id)
    doc = {"version": CALIBRATION_VERSION, "device": device, "hardware": "test machine", "torch": "0", "threads": 1,
           "date": "2026-11-30T00:00:00Z", "startup_s": 2.5, "kinds": kinds, **fields}
    path.write_text(json.dumps(doc))
    return doc


def test_measured_row_is_the_calibrations_arithmetic_and_another_device_is_not_used(tmp_path):
    cfg = _config(**{"grid.formats": ["bf16", "e5m2"]})
    exp = load(cfg)
    path = tmp_path / "calibration.json"
    _write_calibration(path, exp, step_s=0.05)
    measured = load_experiment(cfg, calibration=path)
    report = measured.budget_report()
    print("\n" + report)
    assert f"MEASURED: 2 of 2 rows, from {path} (measured 2026-11-30T00:00:00Z on test machine" in report
    job = measured.jobs()[0]
    # 60 steps, evals at 0, 20, 40 and the last (4 x 4 batches), shadows at 0, 10, ..., 50, ranks at
    # 0 and 30, checkpoints after 20, 40, 60 and after each eval (59 is the end: counted once), and the final one
    ev = run_events(exp.runs[job.name].config.train)
    assert (ev.steps, ev.evals, ev.eval_batches, ev.shadows, ev.ranks, ev.checkpoints) == (60, 4, 16, 6, 2, 7)
    assert job.basis == "measured" and job.seconds == pytest.approx(2.5 + 60 * 0.05 + 16 * 0.005 + 6 * 0.02
                                                                     + 2 * 0.01 + 7 * 0.1)
    assert job.usd == 0.0 and job.gpu_hours == pytest.approx(job.seconds / 3600)

    # measured on another device: not used, and the header says so
    _write_calibration(path, exp, device="a100")
    other = load_experiment(cfg, calibration=path)
    assert {j.basis for j in other.jobs()} == {"assumed"}
    report = other.budget_report()
    assert "ASSUMED: 2 of 2 rows" in report and f"{path} was measured on a100 (test machine), not budget.device cpu" \
        in report and "MEASURED" not in report

    # a kind it has not timed (another shape) is assumed, the others measured, both said
    _write_calibration(path, exp)
    cfg["extra_runs"] = [{"format": "e5m2", "optimizer": "adamw", "master_weights": "fp32", "seed": 0, "tag": "wide",
                          "overrides": {"model.n_embd": 128}}]
    mixed = load_experiment(cfg, calibration=path)
    basis = {j.name: j.basis for j in mixed.jobs()}
    assert basis == {"bf16-adamw-s0": "measured", "e5m2-adamw-s0": "measured", "e5m2-adamw-s0-wide": "assumed"}
    report = mixed.budget_report()
    assert "MEASURED: 2 of 3 rows" in report and "ASSUMED: 1 of 3 rows" in report and "not in" in report
    # no file at all: every row assumed, and the header says how to measure
    none = load_experiment(cfg, calibration=tmp_path / "absent.json")
    assert "ASSUMED: 3 of 3 rows" in none.budget_report() and "snakemake --cores 1 results/calibration.json" \
        in none.budget_report()


def test_assumed_basis_prices_simulated_formats_above_bf16():
    for device, price in (("h100", 2.69), ("a100", 1.64), ("cpu", 0.0)):
        cfg = _config(**{"grid.formats": ["bf16", "e5m2", "e4m3", "e7m0"], "grid.optimizers": ["adamw", "grid"],
                         "budget": {"usd": 1000, "device": device, "price_usd_per_hour": price, "mfu": 0.3}})
        jobs = {j.name: j for j in load(cfg).jobs()}
        assert {j.basis for j in jobs.values()} == {"assumed"}
        bf16 = jobs["bf16-adamw-s0"]
        for fmt in ("e5m2", "e4m3", "e7m0"):
            sim = jobs[f"{fmt}-adamw-s0"]
            assert sim.shape == bf16.shape and sim.flops == bf16.flops  # same FLOPs ...
            assert sim.overhead > bf16.overhead >= 1.0 and sim.seconds > bf16.seconds  # ... not the same price
            if price:
                assert sim.usd > bf16.usd
        # never cheaper than the FLOPs at the BF16 MFU
        assert bf16.seconds > bf16.flops / (bf16.mfu * {"h100": 989e12, "a100": 312e12, "cpu": 1e11}[device])


def test_reference_cpu_calibration_is_committed_and_complete():
    ref = load_calibration(REFERENCE_CPU)
    assert ref.device == "cpu" and ref.startup_s > 0
    exp = load_experiment(read_config_files([ROOT / "config" / "config.yaml"]))
    # every recipe x optimizer of the default matrix has its measured ratio
    have = {(k.recipe["weight"], k.recipe["activation"], k.recipe["gradient"], k.recipe["optimizer"])
            for k in ref.kinds.values()}
    for run in exp.runs.values():
        p = run.config.precision
        assert (p.weight, p.activation, p.gradient, run.config.optimizer.name) in have, run.run_id
    assert ref.overhead(exp.runs["bf16-adamw-s0"].config) == 1.0


def test_damaged_calibration_is_one_line_naming_the_file_and_the_fix(tmp_path, capsys):
    cfg = _config()
    path = tmp_path / "calibration.json"
    for text, why in (("{not json", "corrupt (Expecting property name"),
                      ('{"version": 1, "device": "cpu", "hardware": "x", "torch": "2", "date": "d", "kinds": '
                       '{"k": {"step_s": -1}}}', "kinds.k.step_s is -1, not a number >= 0"),
                      ('{"version": 7}', "version 7, this altgrad reads version 1"),
                      ("[]", "not a JSON object")):
        path.write_text(text)
        with pytest.raises(AltgradError) as e:
            load_experiment(cfg, calibration=path)
        msg = str(e.value)
        assert msg.startswith(f"calibration file {path} is corrupt") and why in msg, msg
        assert "snakemake --cores 1 --forcerun calibrate results/calibration.json" in msg and "delete it" in msg
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(cfg))
    assert main(["plan", "--config", str(config), "--calibration", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"altgrad: error: calibration file {path} is corrupt")


def test_h100_matrix_is_priced_as_several_times_native_bf16():
    """config/runpod.yaml without a calibration: the memory-traffic model (2.2-2.5x) and the host's
    eager dispatch (2.8-4.6x) put every simulated run at several times its BF16 price, the
    geometry-aware optimizers above AdamW, no run below the bf16 baseline."""
    exp = load_experiment(read_config_files([ROOT / "config" / "runpod.yaml"]))
    jobs = {j.name: j for j in exp.jobs()}
    assert {j.basis for j in jobs.values()} == {"assumed"}
    base = jobs["bf16-adamw-s0"]
    assert 2.0 < base.overhead < 4.0
    for name, job in jobs.items():
        assert 2.0 < job.overhead < 6.0 and job.usd >= base.usd, name
    assert jobs["e5m2-grid-s0"].overhead > jobs["e5m2-manifold-s0"].overhead > jobs["e5m2-adamw-s0"].overhead
    print("\n" + "\n".join(f"{n}: {j.overhead:.2f}x, {j.seconds / 60:.1f} min, ${j.usd:.3f}"
                           for n, j in jobs.items() if n.endswith("-s0")))
