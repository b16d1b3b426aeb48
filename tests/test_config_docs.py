"""config/README.md documents every config key, and the schema is the one source of defaults."""

from __future__ import annotations

import dataclasses
import re
import typing

import yaml
from tiny_workflow import ROOT, load, tiny_experiment

from altgrad.experiment.config import schema, with_defaults
from altgrad.experiment.docs import config_reference
from altgrad.experiment.runs import OPTIMIZER_NAMES
from altgrad.training.config import RunConfig

README = ROOT / "config" / "README.md"


def _schema_keys(node, root, prefix):
    """Every key the schema declares, dotted (list items as ``[]``)."""
    for part in [node, *([root["$defs"][node["$ref"].rsplit("/", 1)[1]]] if "$ref" in node else [])]:
        for name, sub in part.get("properties", {}).items():
            yield f"{prefix}.{name}" if prefix else name
            yield from _schema_keys(sub, root, f"{prefix}.{name}" if prefix else name)
        if isinstance(part.get("items"), dict):
            yield from _schema_keys(part["items"], root, f"{prefix}[]")


def _run_keys(cls, prefix):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        yield f"{prefix}.{f.name}"
        tp = hints[f.name]
        inner = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else tp
        for sub in (inner, *typing.get_args(inner)):
            if dataclasses.is_dataclass(sub):
                yield from _run_keys(sub, f"{prefix}.{f.name}" + ("[]" if inner is not tp else ""))


def test_the_readme_is_the_generated_reference():
    assert README.read_text() == config_reference(), (
        "config/README.md is out of date: python -m altgrad.experiment.docs > config/README.md")


def test_every_key_of_the_schema_and_of_the_run_config_is_documented_with_its_default():
    text = README.read_text()
    documented = dict(re.findall(r"^\| `([^`]+)` \| [^|]+ \| ([^|]+) \|", text, re.M))
    sections = set(re.findall(r"^### `([^`]+)`", text, re.M))
    keys = [*_schema_keys(schema(), schema(), ""), *_run_keys(RunConfig, "run")]
    assert len(keys) > 100 and not [k for k in keys if k not in documented and k not in sections]
    defaults = {f"run.{s}.{f.name}": f.default for s in ("train", "optimizer") for f in
                dataclasses.fields(type(getattr(RunConfig(), s)))}
    assert documented["run.optimizer.min_stiffness"] == "`0.1`" == f"`{defaults['run.optimizer.min_stiffness']}`"
    for key in ("run.optimizer.ulp_lr", "run.optimizer.grid_lr", "run.optimizer.momentum"):
        assert documented[key] == "`null`" and defaults[key] is None
    assert "calibrated" in text.split("`run.optimizer.ulp_lr`")[1].split("\n")[0]
    assert "train.beta1" in text.split("`run.optimizer.momentum`")[1].split("\n")[0]
    assert documented["allow_equivalent"] == "`false`" and documented["budget.mfu"] == "`0.3`"


def test_defaults_come_from_the_schema_and_fill_what_a_config_leaves_out():
    c = with_defaults({"grid": {"formats": ["e5m2"], "optimizers": ["adamw"]}, "ab": {"formats": ["e5m2"],
                       "optimizers": ["grid"]}, "extra_runs": [{"format": "bf16"}], "recipes": None,
                       "scaling": {"formats": ["bf16"], "budgets": [1e12, 2e12, 4e12], "train": None}})
    props = schema()["properties"]
    assert c["budget"] == {k: v["default"] for k, v in props["budget"]["properties"].items()}
    assert c["corpus"]["name"] == c["corpus"]["source"] == "eurlex-sample"  # derived: the source's name
    assert c["grid"]["seeds"] == [0] and c["ab"]["seeds"] == [0] and c["grid"]["master_weights"] == ["fp32"]
    assert c["extra_runs"] == [{"format": "bf16", "optimizer": "adamw", "master_weights": "fp32", "seed": 0}]
    assert c["recipes"] == {} and c["scaling"]["train"] == {} and c["scaling"]["n_boot"] == 200
    assert "scaling" not in with_defaults({})  # an optional section stays absent
    # a config without a grid gets the schema's (one bf16/AdamW run)
    assert list(load(tiny_experiment(grid=None) | {"grid": {"formats": ["bf16"], "optimizers": ["adamw"]}}).runs) \
        == ["bf16-adamw-s0"]


def test_the_schema_knows_every_optimizer_name_an_experiment_accepts():
    assert set(schema()["$defs"]["optimizer"]["enum"]) == set(OPTIMIZER_NAMES)


def test_the_embedded_default_config_has_only_documented_keys():
    text = README.read_text()
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())

    def keys(d, prefix):
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else k
            if key.startswith("recipes."):
                continue  # names are the config's own
            yield key
            if isinstance(v, dict) and key != "scaling.train":
                yield from keys(v, key)

    assert [k for k in keys(config, "") if f"`{k}`" not in text] == []
