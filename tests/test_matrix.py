"""The experiment matrix: run ids, per-run configs, validation of a whole config, the budget."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import pytest
import yaml
from tiny_workflow import ROOT, load

from altgrad.experiment.config import ExperimentError, normalize_scalars, read_config_files
from altgrad.experiment.pricing import BudgetExceeded, budget_totals, plan_job
from altgrad.analysis.export import LABEL_COLUMNS
from altgrad.experiment.runs import run_id
from altgrad.training.flops import ModelShape, flops_per_token
from altgrad.training.provenance import library_hash

# the registry's 8-bit formats and the baseline, one member per equivalence class (e1m6 = e0m7)
MATRIX_FORMATS = ["bf16", "e5m2", "e4m3", "e3m4", "e2m5", "e0m7", "e7m0"]


def small(**sections) -> dict:
    cfg = {
        "corpus": {"name": "eurlex-sample", "source": "eurlex-sample", "compact_vocab": True},
        "run": {"model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32},
                "train": {"max_steps": 10, "batch_size": 2, "warmup_steps": 2, "device": "cpu"}},
        "grid": {"formats": ["bf16", "e5m2"], "optimizers": ["adamw"], "seeds": [0]},
        "budget": {"usd": 20, "device": "cpu", "price_usd_per_hour": 0},
    }
    cfg.update(copy.deepcopy(sections))
    return cfg


def test_run_ids_follow_the_naming_rule():
    assert run_id("e5m2", "manifold_adamw", "fp32", 0) == "e5m2-manifold-s0"
    assert run_id("bf16", "adamw", "fp32", 0) == "bf16-adamw-s0"
    assert run_id("e4m3", "grid", "grid", 2) == "e4m3-grid-grid-s2"
    assert run_id("e4m3", "adamw", "grid", 1, tag="lr3e4") == "e4m3-adamw-grid-s1-lr3e4"
    assert run_id("e4m3", "adamw", "fp32", 0, site="weight") == "e4m3-weightonly-adamw-s0"
    assert run_id("e3m4", "grid", "grid", 2, site="gradient") == "e3m4-gradientonly-grid-grid-s2"
    assert run_id("e4m3", "manifold_adamw", "fp32", 0, lr_multiplier=0.5) == "e4m3-manifold-s0-lr0.5x"
    assert run_id("e4m3", "manifold_adamw", "fp32", 0, lr_multiplier=2.0) == "e4m3-manifold-s0-lr2x"
    assert run_id("e4m3", "manifold_adamw", "fp32", 0, lr_multiplier=1.0) == "e4m3-manifold-s0"


def test_grid_ab_and_extra_runs_expand_into_validated_run_configs():
    exp = load(small(
        grid={"formats": ["bf16", "e5m2"], "optimizers": ["adamw", "manifold"], "master_weights": ["fp32", "grid"],
              "seeds": [0, 1]},
        ab={"formats": ["e3m4"], "optimizers": ["grid"]},
        recipes={"hybrid": {"weight": "e4m3", "activation": "e4m3", "gradient": "e5m2"}},
        extra_runs=[{"format": "hybrid", "optimizer": "manifold_adamw", "seed": 3, "tag": "lr",
                     "overrides": {"train.lr": 2e-3, "model": {"n_layer": 2}}}],
    ))
    # bf16 x manifold is not made: the baseline runs with its optimizers only (AdamW by default)
    assert len(exp.runs) == 2 * 2 * 2 * 2 - 4 + 2 + 1 and not [r for r in exp.runs if r.startswith("bf16-manifold")]
    assert exp.run_ids[:3] == ["bf16-adamw-s0", "bf16-adamw-s1", "bf16-adamw-grid-s0"]
    r = exp.runs["e5m2-manifold-grid-s1"]
    c = r.config
    assert (c.precision.weight, c.precision.activation, c.precision.gradient) == ("e5m2",) * 3
    assert (c.optimizer.name, c.optimizer.master_weights) == ("manifold_adamw", "grid")
    assert (c.train.seed, c.train.data_seed) == (1, 1001)
    assert c.data.train_bin == "data/eurlex-sample/train.bin"
    ab = exp.runs["e3m4-grid-s0"]  # ab seeds default to the grid's
    assert ab.origin == "ab" and ab.config.optimizer.name == "grid" and "e3m4-grid-s1" in exp.runs
    h = exp.runs["hybrid-manifold-s3-lr"]
    assert (h.config.precision.weight, h.config.precision.gradient) == ("e4m3", "e5m2")
    assert h.config.train.lr == 2e-3 and h.config.model.n_layer == 2 and h.config.train.data_seed == 1003
    assert h.labels()["format"] == "hybrid" and h.labels()["optimizer"] == "manifold"
    # one seed = one init and one batch order across formats and optimizers
    seeds = {(x.config.train.seed, x.config.train.data_seed) for x in exp.runs.values() if x.seed == 0}
    assert seeds == {(0, 1000)}
    # the resolved config is what `altgrad train` reads back
    from altgrad.training.config import RunConfig

    assert RunConfig.from_dict(json.loads(r.config_json())) == c


def test_the_baseline_runs_with_the_optimizers_its_entry_lists():
    grid = {"formats": ["bf16", "e5m2"], "optimizers": ["adamw", "manifold"], "seeds": [0]}
    ab = {"formats": ["bf16", "e5m2"], "optimizers": ["grid"]}
    assert list(load(small(grid=grid, ab=ab)).runs) == ["bf16-adamw-s0", "e5m2-adamw-s0", "e5m2-manifold-s0",
                                                       "e5m2-grid-s0"]
    every = small(grid=grid, ab=ab, baseline={"optimizers": ["adamw", "manifold_adamw", "grid"]})
    assert len(load(every).runs) == 6 and "bf16-manifold-s0" in load(every).runs
    # explicit runs are made as written
    extra = small(grid=grid, extra_runs=[{"format": "bf16", "optimizer": "manifold"}])
    assert "bf16-manifold-s0" in load(extra).runs


def test_ablation_quantizes_one_site_with_the_format_and_the_others_with_the_baseline():
    exp = load(small(grid={"formats": ["bf16", "e4m3", "e3m4"], "optimizers": ["adamw", "manifold"],
                           "seeds": [0, 1]},
                     ablation={"formats": ["e4m3", "e3m4"], "sites": ["weight", "activation", "gradient"],
                               "optimizers": ["adamw"]}))
    abl = {rid: r for rid, r in exp.runs.items() if r.origin == "ablation"}
    assert len(abl) == 2 * 3 * 2  # formats x sites x seeds (the grid's)
    assert list(abl)[:3] == ["e4m3-weightonly-adamw-s0", "e4m3-weightonly-adamw-s1", "e4m3-activationonly-adamw-s0"]
    for fmt in ("e4m3", "e3m4"):
        for site in ("weight", "activation", "gradient"):
            for seed in (0, 1):
                r = abl[f"{fmt}-{site}only-adamw-s{seed}"]
                p = r.config.precision
                assert {k: getattr(p, k) for k in ("weight", "activation", "gradient")} == {
                    k: (fmt if k == site else "bf16") for k in ("weight", "activation", "gradient")}
                labels = r.labels()
                assert (labels["format"], labels["site"], labels["lr_multiplier"]) == (fmt, site, 1.0)
                assert (labels[site], labels["optimizer"], labels["seed"]) == (fmt, "adamw", seed)
                full = exp.runs[f"{fmt}-adamw-s{seed}"]  # same seed, init and batches as its full run
                assert (r.config.train.seed, r.config.train.data_seed) == (full.config.train.seed,
                                                                          full.config.train.data_seed)
                assert r.config.train == full.config.train and r.config.model == full.config.model
    # every ordinary run says "all" and 1.0
    assert {(r.labels()["site"], r.labels()["lr_multiplier"]) for r in exp.runs.values() if r.origin != "ablation"} \
        == {("all", 1.0)}
    # the expanded config keeps the derived seeds
    assert exp.config["ablation"]["seeds"] == [0, 1]


def test_ablation_problems_are_reported_with_the_way_out():
    cfg = small(grid={"formats": ["bf16", "e4m3"], "optimizers": ["adamw"], "seeds": [0]},
                recipes={"hyb": {"weight": "e4m3", "activation": "e4m3", "gradient": "e5m2"}},
                ablation={"formats": ["bf16", "hyb", "e5m2", "e9m9"], "sites": ["weight"], "seeds": [0, 1]})
    with pytest.raises(ExperimentError) as info:
        load(cfg)
    problems = info.value.problems
    assert problems[:3] == [
        "ablation.formats[0]: 'bf16' is the baseline format, which every site of an ablation run already has; "
        "list the formats to decompose",
        "ablation.formats[1]: 'hyb' is a recipe; an ablation quantizes one site with a registry format (the "
        "others with the baseline's)",
        "ablation.formats[3]: unknown format 'e9m9'; valid: bf16, e5m2, e4m3, e3m4, e2m5, e1m6, e0m7, e7m0, e8m0, hyb",
    ]
    assert problems[3].startswith("ablation: its runs are decomposed against the full runs and the baseline runs")
    assert "e5m2-adamw-s0, e5m2-adamw-s1, bf16-adamw-s1" in problems[3] and len(problems) == 4
    with pytest.raises(ExperimentError, match=r"ablation.sites\[0\]: 'weights' is not one of"):
        load(small(ablation={"formats": ["e5m2"], "sites": ["weights"]}))


def test_lr_multipliers_expand_every_arm_but_not_the_ablation_or_explicit_runs():
    exp = load(small(
        grid={"formats": ["bf16", "e4m3"], "optimizers": ["adamw", "manifold"], "seeds": [0]},
        ab={"formats": ["e4m3"], "optimizers": ["grid"]},
        ablation={"formats": ["e4m3"], "sites": ["weight"]},
        extra_runs=[{"format": "e4m3", "optimizer": "manifold", "tag": "x", "overrides": {"optimizer.ulp_lr": 0.5}}],
        lr_multipliers=[0.5, 1, 2],
    ))
    assert exp.run_ids == [
        "bf16-adamw-s0-lr0.5x", "bf16-adamw-s0", "bf16-adamw-s0-lr2x",
        "e4m3-adamw-s0-lr0.5x", "e4m3-adamw-s0", "e4m3-adamw-s0-lr2x",
        "e4m3-manifold-s0-lr0.5x", "e4m3-manifold-s0", "e4m3-manifold-s0-lr2x",
        "e4m3-grid-s0-lr0.5x", "e4m3-grid-s0", "e4m3-grid-s0-lr2x",
        "e4m3-weightonly-adamw-s0", "e4m3-manifold-s0-x",
    ]
    base = exp.runs["e4m3-manifold-s0"].config
    for m in (0.5, 2.0):
        r = exp.runs[f"e4m3-manifold-s0-lr{m:g}x"]
        assert r.config.train.lr == pytest.approx(m * base.train.lr)
        assert r.config.train.min_lr == pytest.approx(m * base.train.min_lr)  # the schedule's shape is kept
        assert r.labels()["lr_multiplier"] == m and r.labels()["site"] == "all" and r.labels()["tag"] is None
        assert r.labels()["format"] == "e4m3" and r.labels()["optimizer"] == "manifold"
        # nothing else differs from the arm at multiplier 1
        assert r.config.with_overrides({"train.lr": base.train.lr, "train.min_lr": base.train.min_lr}) == base
    assert exp.runs["e4m3-weightonly-adamw-s0"].config.train.lr == base.train.lr
    # an uncalibrated geometry-aware step is a learning rate too
    fixed = load(small(grid={"formats": ["e4m3"], "optimizers": ["manifold"]}, lr_multipliers=[1, 2],
                       run={**small()["run"], "optimizer": {"ulp_lr": 0.25}}))
    assert fixed.runs["e4m3-manifold-s0-lr2x"].config.optimizer.ulp_lr == 0.5
    assert fixed.runs["e4m3-manifold-s0"].config.optimizer.ulp_lr == 0.25
    with pytest.raises(ExperimentError, match=r"lr_multipliers: must hold 1"):
        load(small(lr_multipliers=[0.5, 2]))
    with pytest.raises(ExperimentError, match=r"lr_multipliers: \[1, 1.0\] has non-unique elements"):
        load(small(lr_multipliers=[1, 1.0]))


def test_every_run_label_is_an_exported_column():
    exp = load(small(grid={"formats": ["bf16", "e4m3"], "optimizers": ["adamw"], "seeds": [0]},
                     ablation={"formats": ["e4m3"]}, lr_multipliers=[1, 2]))
    for run in exp.runs.values():
        assert set(run.labels()) <= set(LABEL_COLUMNS)
    assert {"site", "lr_multiplier"} <= set(LABEL_COLUMNS)


def test_every_problem_is_reported_at_once():
    cfg = small(
        grid={"formats": ["e5m2", "e9m9", "bf61"], "optimizers": ["adamw", "adam"]},
        extra_runs=[{"format": "e5m2", "optimizer": "adamw"},
                    {"format": "bf16", "tag": "neg", "overrides": {"train.lr": -0.1}}],
        gird={},
    )
    cfg["corpus"]["colour"] = "blue"
    with pytest.raises(ExperimentError) as info:
        load(cfg)
    text = str(info.value)
    problems = info.value.problems
    assert len(problems) == 7, text
    assert "gird: unknown key (did you mean 'grid'?)" in text
    assert "corpus.colour: unknown key" in text
    assert "grid.optimizers[1]: 'adam' is not one of" in text
    assert "grid.formats[1]: unknown format 'e9m9'" in text
    assert "grid.formats[2]: unknown format 'bf61' (did you mean 'bf16'?)" in text
    assert "extra_runs[1] (bf16-adamw-s0-neg): train.lr: must be > 0, got -0.1" in text
    assert "duplicate run id 'e5m2-adamw-s0' (from grid, extra_runs[0])" in text


def test_base_run_problems_are_reported_once_not_per_run():
    cfg = small(grid={"formats": MATRIX_FORMATS, "optimizers": ["adamw", "manifold_adamw"]})
    cfg["run"]["train"]["lr"] = -1
    cfg["run"]["model"]["n_head"] = 3
    cfg["run"]["data"] = {"train_bin": "x"}
    with pytest.raises(ExperimentError) as info:
        load(cfg)
    assert info.value.problems == [
        "run.data: the data paths are filled in from `corpus`; remove run.data",
        "run.model.n_embd: 32 is not divisible by n_head (3)",
        "run.train.lr: must be > 0, got -1.0",
    ]


def test_recipes_are_checked_and_may_not_shadow_registry_names():
    cfg = small(recipes={"hyb": {"weight": "e4m3", "gradient": "e5m3"}, "e5m2": {"weight": "e4m3"}},
                grid={"formats": ["hyb"], "optimizers": ["adamw"]})
    with pytest.raises(ExperimentError) as info:
        load(cfg)
    assert info.value.problems == [
        "recipes.hyb.gradient: unknown value 'e5m3'; valid: bf16, e5m2, e4m3, e3m4, e2m5, e1m6, e0m7, e7m0, e8m0 "
        "(did you mean 'e5m2'?)",
        "recipes.e5m2: a recipe may not be named like a registry format",
    ]


def test_block_size_is_checked_against_a_prepared_corpus(tmp_path):
    meta = {"source": {"name": "eurlex-sample"}, "split": {"seed": 0, "val_fraction": 0.1}, "compact_vocab": True,
            "tokens": {"train": 5000, "val": 100}, "vocab_size": 900}
    (tmp_path / "eurlex-sample").mkdir()
    (tmp_path / "eurlex-sample" / "meta.json").write_text(json.dumps(meta))
    cfg = small()
    cfg["run"]["model"]["block_size"] = 100
    with pytest.raises(ExperimentError, match=r"block_size 100 .* 5000 train and 100 val tokens"):
        load(cfg, data_root=tmp_path)
    cfg["run"]["model"]["block_size"] = 99
    exp = load(cfg, data_root=tmp_path)
    assert exp.jobs()[0].shape.vocab_size == 900  # the budget uses the prepared vocabulary
    # a meta.json made from another corpus config is not used (prepare will rerun)
    cfg["corpus"]["seed"] = 1
    cfg["run"]["model"]["block_size"] = 100
    assert load(cfg, data_root=tmp_path).meta is None


def test_strings_from_yaml11_and_untyped_cli_values_become_numbers():
    assert normalize_scalars({"a": "3e-4", "b": ["1", "-2.5", "true", "null", "e5m2", "1_000"]}) == {
        "a": 3e-4, "b": [1, -2.5, True, None, "e5m2", 1000]}
    cfg = small()
    cfg["run"]["train"]["lr"] = "3e-4"
    cfg["budget"]["usd"] = "5"
    exp = load(cfg)
    assert exp.runs["bf16-adamw-s0"].config.train.lr == 3e-4 and exp.budget["usd"] == 5


def test_budget_is_the_budget_modules_computation():
    exp = load(small(budget={"usd": 20, "device": "h100", "price_usd_per_hour": 2.69, "mfu": 0.3}))
    jobs = exp.jobs()
    run = exp.runs["e5m2-adamw-s0"]
    t = run.config.train
    shape = ModelShape(1, 2, 32, 32, 50257)
    # tokens: steps x batch x block; FLOPs: the budget module's per-token count, scaled for the eval passes
    n_evals = len(range(0, t.max_steps, t.eval_interval)) + 1
    factor = 1 + n_evals * t.eval_batches * t.batch_size / (3 * t.max_steps * t.batch_size)
    ref = plan_job("x", shape, 10 * 2 * 32, device="h100", mfu=0.3, price=2.69,
                   flops_fn=lambda s: factor * flops_per_token(s))
    job = jobs[exp.run_ids.index("e5m2-adamw-s0")]
    assert job.tokens == 640 and math.isclose(job.flops, ref.flops)
    # with no calibration the price is assumed: a simulated format is never priced like native BF16
    # (ref: the same FLOPs at the BF16 MFU), and the dollars are its hours at the price
    assert job.basis == "assumed" and job.overhead > 1 and job.seconds > ref.seconds
    assert math.isclose(job.usd, job.seconds / 3600 * 2.69) and math.isclose(job.gpu_hours, job.seconds / 3600)
    assert "TOTAL (2 jobs)" in exp.budget_report() and exp.check_budget() == pytest.approx(budget_totals(jobs).usd)
    tight = load(small(budget={"usd": 1e-9, "device": "h100", "price_usd_per_hour": 2.69}))
    with pytest.raises(BudgetExceeded, match=r"exceeds the budget \$0\.0000000010 by \$0\.\d+.*run\.train\.max_steps"):
        tight.check_budget()


def arms(exp) -> dict[tuple, set[int]]:
    """(format, site, optimizer, master weights, lr multiplier) -> the seeds it ran with."""
    out: dict[tuple, set[int]] = {}
    for r in exp.runs.values():
        out.setdefault((r.format, r.site, r.optimizer, r.master_weights, r.lr_multiplier), set()).add(r.seed)
    return out


def test_embedded_default_is_the_promised_cpu_matrix():
    exp = load(yaml.safe_load((ROOT / "config" / "config.yaml").read_text()))
    for fmt in MATRIX_FORMATS:
        assert f"{fmt}-adamw-s0" in exp.runs
        assert (f"{fmt}-manifold-s0" in exp.runs) == (fmt != "bf16")  # the baseline is the AdamW control
    assert {"e5m2-grid-s0", "e3m4-grid-s0", "e7m0-grid-s0"} <= set(exp.runs)
    # at least three seeds of every arm, the ablation's too
    assert all(len(seeds) >= 3 for seeds in arms(exp).values()), arms(exp)
    ablated = {r.format for r in exp.runs.values() if r.site != "all"}
    assert len(ablated) >= 2 and "bf16" not in ablated
    for fmt in ablated:
        assert {r.site for r in exp.runs.values() if r.format == fmt} == {"all", "weight", "activation", "gradient"}
    assert not [r for r in exp.runs if r.startswith("e1m6")]  # e0m7 stands for its class
    assert exp.corpus["source"]["name"] == "eurlex-sample" and exp.corpus["compact_vocab"]
    for run in exp.runs.values():
        assert run.config.train.device == "cpu"
        assert run.config.tracking.wandb_mode in ("disabled", "offline")
    assert exp.budget["usd"] == 20


def test_runpod_matrix_is_the_research_plan_and_fits_the_budget():
    exp = load(read_config_files([ROOT / "config" / "runpod.yaml"]))
    m = next(iter(exp.runs.values())).config.model
    assert (m.n_layer, m.n_embd, m.n_head, m.block_size, m.vocab_size) == (6, 384, 6, 256, None)
    assert not exp.corpus["compact_vocab"] and exp.corpus["source"]["name"] == "lex_glue"
    assert {r.seed for r in exp.runs.values()} == {0, 1, 2}
    assert all(len(seeds) == 3 for seeds in arms(exp).values())
    assert all(r.config.train.device == "cuda" and r.config.train.autocast for r in exp.runs.values())
    assert (exp.budget["device"], exp.budget["price_usd_per_hour"], exp.budget["mfu"]) == ("h100", 2.69, 0.3)
    # the ablation for every format of the matrix but the baseline, every site
    formats = {r.format for r in exp.runs.values() if r.origin == "grid"}
    for fmt in formats - {"bf16"}:
        assert {r.site for r in exp.runs.values() if r.format == fmt} == {"all", "weight", "activation", "gradient"}
    # every grid/ab arm at three learning rates, control and geometry-aware alike
    mult = {r.lr_multiplier for r in exp.runs.values() if r.origin in ("grid", "ab")}
    assert len(mult) >= 3 and 1.0 in mult
    for fmt, site, opt, mw, _ in arms(exp):
        if site == "all":
            assert all((fmt, site, opt, mw, x) in arms(exp) for x in mult), (fmt, opt)
    # its budget table, as `snakemake -n --profile runpod` prints it, is under budget.usd
    total = exp.check_budget()
    assert 0 < total <= exp.budget["usd"] == 20
    table = exp.budget_report()
    assert f"TOTAL ({len(exp.runs)} jobs)" in table and "OVER" not in table
    assert {j.shape.vocab_size for j in exp.jobs()} == {50257}


def test_library_hash_follows_the_source(tmp_path):
    import altgrad

    src = Path(altgrad.__file__).parent
    copy_root = tmp_path / "altgrad"
    for pkg in ("quantization", "nn", "optim", "training"):
        shutil.copytree(src / pkg, copy_root / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    assert library_hash(root=copy_root) == library_hash()
    with open(copy_root / "quantization" / "formats.py", "a") as f:
        f.write("\n# a changed quantizer\n")
    assert library_hash(root=copy_root) != library_hash()


def test_equivalent_formats_in_one_matrix_are_refused_unless_allowed():
    """e1m6 (bias 0) and e0m7 are one format under amax scaling: running both measures noise."""
    cfg = small(grid={"formats": ["bf16", "e1m6", "e4m3", "e0m7"], "optimizers": ["adamw"], "seeds": [0]})
    with pytest.raises(ExperimentError) as info:
        load(cfg)
    assert info.value.problems == [
        "formats e1m6 and e0m7 quantize identically under delayed amax scaling (their grids differ by a power "
        "of two): keep one of them, or set allow_equivalent: true to run both"
    ]
    assert {"e1m6-adamw-s0", "e0m7-adamw-s0"} <= set(load({**cfg, "allow_equivalent": True}).runs)
    # without amax scaling the grids' power-of-two offset matters: they are two formats
    unscaled = copy.deepcopy(cfg)
    unscaled["run"]["precision"] = {"scaling": "none"}
    assert {"e1m6-adamw-s0", "e0m7-adamw-s0"} <= set(load(unscaled).runs)
