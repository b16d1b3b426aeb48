"""config/README.md, generated: every key of an experiment config, from where it is declared.

The experiment-level keys come from the schema (type, default, bounds, description); the
``run`` section's keys from the RunConfig dataclasses (type, default, bounds and the ``doc``
field metadata). ``python -m altgrad.experiment.docs > config/README.md`` writes the file;
tests/test_config_docs.py fails when the committed file is not what this prints.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from altgrad.experiment.config import schema
from altgrad.training.config import RunConfig

__all__ = ["config_reference"]

_INTRO = """\
# Configuration

The pipeline reads `config/config.yaml`, the embedded default (a small real corpus, a tiny
model, CPU, minutes); `snakemake --profile runpod` reads `config/runpod.yaml` (the H100
matrix) instead. A file given with `--configfile` extends the default (mappings merge, lists
are replaced; add `--replace-workflow-config` to use only your file), and `--config key=value`
overrides single keys. `altgrad plan --config FILE` validates a config and prints its budget
table without Snakemake.

Before any job starts the whole config is checked (the schema, every run's RunConfig,
format names, duplicate run ids, the budget) and every problem is reported at once.

This file is generated from where each key is declared, and lists every key with its type,
default and meaning: the experiment keys from the schema
(`altgrad/experiment/config.schema.yaml`, linked as `workflow/schemas/config.schema.yaml`),
the `run` section's keys from the run config's dataclasses (`altgrad/training/config.py`).
Regenerate it with `python -m altgrad.experiment.docs > config/README.md`;
`tests/test_config_docs.py` fails when it is out of date.
"""

_RUN_INTRO = """\
## The run section

`run` is the base run, a RunConfig: every run of the matrix starts from it. The same keys
are what `recipes` entries (the `precision` keys), `extra_runs[].overrides` (any key, nested
or dotted: `train.lr: 3.0e-4`) and `scaling.train` (the `train` keys) change. An experiment
sets `train.seed` and `train.data_seed` from each run's seed, `precision.weight`,
`activation`, `gradient` from its format (an ablation run: its site from the format, the
others from `baseline.format`), `optimizer.name` and `master_weights` from the matrix, and
multiplies `train.lr` and `train.min_lr` (and a set `optimizer.ulp_lr`/`grid_lr`) by its
`lr_multipliers` entry; `data` is filled in from `corpus` and may not be given. `altgrad train --config
FILE` reads the same keys (all of them optional) as a single run's config.
"""


def config_reference() -> str:
    """The text of config/README.md."""
    root = schema()
    lines = [_INTRO, "## Experiment keys", ""]
    for key, node in root["properties"].items():
        lines += [f"### `{key}`", ""]
        if key == "run":
            lines += [_text(node["description"]), "", "Its keys: [the run section](#the-run-section) below.", ""]
            continue
        if "properties" in _merged(node, root):
            lines += [_text(node.get("description", "")), ""]
        lines += _table(("key", "type", "default", "description"), list(_schema_rows(key, node, root)))
    lines += [_RUN_INTRO]
    for f in dataclasses.fields(RunConfig):
        section = typing.get_type_hints(RunConfig)[f.name]
        lines += [f"### `run.{f.name}`", "", _text(section.__doc__ or ""), ""]
        lines += _table(("key", "type", "default", "description"), list(_dataclass_rows(f"run.{f.name}", section)))
    return "\n".join(lines).rstrip() + "\n"


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return out + [""]


def _text(s: str) -> str:
    return " ".join(s.split())


def _yaml(value: Any) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (list, tuple)) and not value:
        return "`[]`"
    if isinstance(value, Mapping) and not value:
        return "`{}`"
    if isinstance(value, (list, tuple, Mapping)):
        return "`" + json.dumps(value).replace('"', "") + "`"
    return f"`{value}`"


# --------------------------------------------------------------------------- the schema


def _parts(node: Mapping[str, Any], root: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    out = [node]
    ref = node.get("$ref")
    if isinstance(ref, str):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        out += _parts(target, root)
    return out


def _merged(node: Mapping[str, Any], root: Mapping[str, Any]) -> dict[str, Any]:
    """The keywords of ``node`` and what it ``$ref``s; ``properties`` merged, ``node`` first."""
    out: dict[str, Any] = {}
    props: dict[str, Any] = {}
    for part in reversed(_parts(node, root)):  # what is referenced first, so its keys keep their order
        for k, v in part.items():
            if k == "properties":
                for name, sub in v.items():
                    props[name] = {**props.get(name, {}), **sub}
            elif k == "required":
                out[k] = [*out.get(k, []), *v]
            else:
                out[k] = v
    if props:
        out["properties"] = props
    return out


def _schema_type(node: Mapping[str, Any], root: Mapping[str, Any]) -> str:
    n = _merged(node, root)
    if "enum" in n:
        return "one of " + ", ".join(f"`{v}`" for v in n["enum"])
    if "oneOf" in n:
        return " or ".join(_schema_type(alt, root) for alt in n["oneOf"])
    types_ = n.get("type", "object" if "properties" in n else "any")
    types_ = [types_] if isinstance(types_, str) else list(types_)
    words = []
    for t in types_:
        if t == "array" and "items" in n:
            words.append("list of " + _schema_type(n["items"], root).replace("mapping", "mappings"))
        else:
            words.append({"object": "mapping", "null": "null", "number": "number"}.get(t, t))
    bounds = [f"{op} {n[k]:g}" for k, op in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"),
                                              ("exclusiveMaximum", "<")) if k in n]
    return " or ".join(words) + (f" ({', '.join(bounds)})" if bounds else "")


def _schema_rows(key: str, node: Mapping[str, Any], root: Mapping[str, Any],
                 required: bool = False) -> Iterator[tuple[str, str, str, str]]:
    n = _merged(node, root)
    default = _yaml(n["default"]) if "default" in n else ("required" if required else "—")
    yield (f"`{key}`", _schema_type(node, root), default,
           _text(n.get("description", "")) if "properties" not in n else "the section (above)")
    for name, sub in n.get("properties", {}).items():
        yield from _schema_rows(f"{key}.{name}", sub, root, name in n.get("required", ()))
    items = n.get("items")
    if isinstance(items, Mapping) and "properties" in _merged(items, root):
        item = _merged(items, root)
        for name, sub in item["properties"].items():
            yield from _schema_rows(f"{key}[].{name}", sub, root, name in item.get("required", ()))


# --------------------------------------------------------------------------- the dataclasses


def _hint(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return "mapping"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_hint(a) for a in args if a is not type(None)) + " or null"
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin is tuple:
        return "list of " + _hint(args[0]).replace("mapping", "mappings")
    return {bool: "boolean", int: "integer", float: "number", str: "string"}[tp]


def _dataclass_rows(prefix: str, cls: type) -> Iterator[tuple[str, str, str, str]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if "doc" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} has no doc (altgrad.nn.recipe.setting)")
        tp = hints[f.name]
        bounds = [f"{ {'ge': '≥', 'gt': '>', 'le': '≤', 'lt': '<'}[op]} {v:g}" for op, v in
                  f.metadata.get("bounds", {}).items()]
        default = "required" if f.default is dataclasses.MISSING else _yaml(f.default)
        yield (f"`{prefix}.{f.name}`", _hint(tp) + (f" ({', '.join(bounds)})" if bounds else ""), default,
               _text(f.metadata["doc"]))
        inner = [a for a in (*typing.get_args(tp), tp) if dataclasses.is_dataclass(a)]
        if typing.get_origin(tp) is tuple:
            inner = [typing.get_args(tp)[0]]
        for sub in inner:
            yield from _dataclass_rows(f"{prefix}.{f.name}" + ("[]" if typing.get_origin(tp) is tuple else ""), sub)


if __name__ == "__main__":
    print(config_reference(), end="")
