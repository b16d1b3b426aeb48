import dataclasses
import textwrap

import pytest

from altgrad.errors import AltgradError
from altgrad.training.config import FORMAT_NAMES, ConfigError, ModelConfig, RunConfig
from altgrad.training.model import GPTConfig


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(d):
    with pytest.raises(ConfigError) as info:
        RunConfig.from_dict(d)
    return info.value.problems


def test_defaults_are_valid():
    cfg = RunConfig()
    assert RunConfig.from_dict({}) == cfg
    assert RunConfig.from_dict(None) == cfg
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.precision.weight == "bf16" and cfg.optimizer.name == "adamw"


def test_round_trip_dict_and_yaml(tmp_path):
    cfg = RunConfig.from_dict(
        {
            "train": {"lr": 3e-4, "min_lr": 3e-5, "max_steps": 20, "warmup_steps": 2},
            "precision": {
                "weight": "e4m3",
                "rules": [
                    {"pattern": "*.attn.c_attn", "recipe": {"weight": "e5m2"}},
                    {"pattern": "*.mlp.c_proj", "recipe": None},
                ],
            },
            "model": {"vocab_size": 65},
        }
    )
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    path = write(tmp_path, cfg.to_yaml())
    again = RunConfig.from_yaml(path)
    assert again == cfg
    assert again.config_hash() == cfg.config_hash()
    assert cfg.precision.rules[1].recipe is None
    assert cfg.to_dict()["precision"]["rules"][0] == {
        "pattern": "*.attn.c_attn",
        "recipe": {"weight": "e5m2", "activation": None, "gradient": None},
    }


def test_hash_stable_and_sensitive(tmp_path):
    a = write(tmp_path, "train:\n  lr: 3e-4\n  seed: 7\nmodel:\n  n_layer: 2\n", "a.yaml")
    b = write(tmp_path, "model:\n  n_layer: 2\ntrain:\n  seed: 7\n  lr: 0.0003\n", "b.yaml")
    ha, hb = RunConfig.from_yaml(a).config_hash(), RunConfig.from_yaml(b).config_hash()
    assert ha == hb
    assert len(ha) == 12 and int(ha, 16) >= 0
    assert RunConfig.from_yaml(a).config_hash() == ha  # same input, same hash
    changed = RunConfig.from_yaml(a).with_overrides({"train.lr": 1e-3})
    assert changed.train.lr == 1e-3
    assert changed.config_hash() != ha


def test_yaml_with_four_problems_lists_all(tmp_path):
    path = write(
        tmp_path,
        """
        train:
          lr: fast
          batch_size: 0
        precision:
          weight: e4m4
        optimiser:
          name: adamw
        """,
    )
    with pytest.raises(ConfigError) as info:
        RunConfig.from_yaml(path)
    err = info.value
    assert isinstance(err, AltgradError)
    assert len(err.problems) == 4, err.problems
    text = str(err)
    assert str(path) in text and "4 problems" in text
    assert "train.lr: expected a number, got str 'fast'" in text
    assert "train.batch_size: must be >= 1, got 0" in text
    assert "precision.weight: unknown value 'e4m4'" in text
    assert ", ".join(FORMAT_NAMES) in text
    assert "optimiser: unknown key (did you mean 'optimizer'?)" in text


def test_did_you_mean():
    (p,) = problems_of({"train": {"lr_shedule": "cosine"}})
    assert p == "train.lr_shedule: unknown key (did you mean 'lr_schedule'?)"
    (p,) = problems_of({"optimizer": {"name": "manifold_adam"}})
    assert "did you mean 'manifold_adamw'?" in p
    (p,) = problems_of({"lr": 0.1})
    assert "belongs under 'train'" in p
    (p,) = problems_of({"train": {"zzz": 1}})
    assert "valid keys:" in p and "max_steps" in p


def test_int_for_float_accepted():
    cfg = RunConfig.from_dict({"train": {"lr": 1, "min_lr": 0, "grad_clip": 2}})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert isinstance(cfg.train.min_lr, float)
    same = RunConfig.from_dict({"train": {"lr": 1.0, "min_lr": 0.0, "grad_clip": 2.0}})
    assert cfg.config_hash() == same.config_hash()


def test_bool_and_number_not_interchangeable():
    (p,) = problems_of({"train": {"max_steps": True}})
    assert p == "train.max_steps: expected an integer, got bool True"
    (p,) = problems_of({"train": {"lr": False}})
    assert "expected a number" in p
    (p,) = problems_of({"train": {"compile": 1}})
    assert p == "train.compile: expected true or false, got int 1"
    (p,) = problems_of({"train": {"batch_size": 4.0}})
    assert "expected an integer" in p


def test_scientific_notation_in_yaml_is_a_number(tmp_path):
    cfg = RunConfig.from_yaml(write(tmp_path, "train:\n  lr: 3e-4\n  min_lr: 1E-5\n"))
    assert cfg.train.lr == 3e-4 and cfg.train.min_lr == 1e-5
    # a quoted string stays a string, and is rejected
    with pytest.raises(ConfigError, match="expected a number"):
        RunConfig.from_yaml(write(tmp_path, "train:\n  lr: '3e-4'\n"))


def test_cross_field_checks():
    problems = problems_of(
        {
            "train": {"lr": 1e-4, "min_lr": 1e-3, "max_steps": 10, "warmup_steps": 20},
            "model": {"n_embd": 100, "n_head": 3},
        }
    )
    assert sorted(problems) == sorted(
        [
            "model.n_embd: 100 is not divisible by n_head (3)",
            "train.min_lr: 0.001 is larger than lr (0.0001)",
            "train.warmup_steps: 20 is larger than max_steps (10)",
        ]
    )
    (p,) = problems_of({"train": {"lr": 0}})
    assert p == "train.lr: must be > 0, got 0.0"


def test_rules_validation():
    problems = problems_of(
        {
            "precision": {
                "rules": [
                    {"pattern": "*.c_fc"},
                    {"pattern": "*.c_fc", "recipe": {"weight": "e9m9"}},
                    {"pattern": "*.c_fc", "recipe": {}},
                    "lm_head",
                ]
            }
        }
    )
    assert problems[0] == "precision.rules[0].recipe: missing (required)"
    assert problems[1].startswith("precision.rules[1].recipe.weight: unknown value 'e9m9'")
    assert problems[2].startswith("precision.rules[2].recipe: empty recipe")
    assert problems[3] == "precision.rules[3]: expected a mapping, got str 'lm_head'"


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        RunConfig.from_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        RunConfig.from_yaml(write(tmp_path, "train: [1,\n"))
    with pytest.raises(ConfigError, match="duplicate key 'lr'"):
        RunConfig.from_yaml(write(tmp_path, "train:\n  lr: 0.1\n  lr: 0.2\n"))
    with pytest.raises(ConfigError, match="<top level>: expected a mapping"):
        RunConfig.from_yaml(write(tmp_path, "- 1\n- 2\n"))
    assert RunConfig.from_yaml(write(tmp_path, "")) == RunConfig()


def test_model_config_mirrors_gpt_config():
    assert [f.name for f in dataclasses.fields(ModelConfig)] == [
        f.name for f in dataclasses.fields(GPTConfig)
    ]
    m = RunConfig().model
    assert m.gpt_config(data_vocab_size=65).vocab_size == 65
    with pytest.raises(ConfigError, match="vocab_size"):
        m.gpt_config()
    padded = RunConfig.from_dict({"model": {"vocab_size": 128}}).model
    assert padded.gpt_config(65).vocab_size == 128
    with pytest.raises(ConfigError, match="smaller than the data's vocabulary"):
        padded.gpt_config(200)


def test_with_overrides_validates():
    cfg = RunConfig().with_overrides({"precision.weight": "e5m2", "optimizer.name": "grid"})
    assert (cfg.precision.weight, cfg.optimizer.name) == ("e5m2", "grid")
    with pytest.raises(ConfigError, match="did you mean 'weight'"):
        RunConfig().with_overrides({"precision.weigth": "e5m2"})


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RunConfig().train.lr = 1.0  # type: ignore[misc]


def test_the_experiment_keys_of_ablation_lr_multipliers_and_baseline_are_documented_with_their_defaults():
    """config/README.md (generated from the schema) says what each new key does and its default."""
    import re
    from pathlib import Path

    from altgrad.experiment.config import with_defaults

    text = (Path(__file__).resolve().parents[1] / "config" / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([^`]+)` \| [^|]+ \| ([^|]+) \|", text, re.M))
    assert rows["lr_multipliers"] == "`[1]`" and rows["baseline.format"] == "`bf16`"
    assert rows["baseline.optimizers"] == "`[adamw]`" and rows["ablation.sites"] == "`[weight, activation, gradient]`"
    assert rows["ablation.formats"] == "required" and rows["ablation.optimizers"] == "`[adamw]`"
    assert "ablation.seeds" in rows and "ablation.master_weights" in rows
    assert "e4m3-weightonly-adamw-s0" in text and "-lr{m}x" in text and "e4m3-manifold-s0-lr0.5x" in text
    c = with_defaults({})
    assert c["lr_multipliers"] == [1] and c["baseline"] == {"format": "bf16", "optimizers": ["adamw"]}
    assert "ablation" not in c  # an optional section stays absent
