"""An experiment config as data: read, merged, normalised, checked against the schema, defaulted.

The schema (``config.schema.yaml`` beside this module, package data; the workflow's
``workflow/schemas/config.schema.yaml`` is a link to it) is the one source of the
experiment-level defaults: :func:`with_defaults` fills them in from its ``default`` keys. The
``run`` section is a RunConfig, whose defaults are its dataclasses' (altgrad.training.config).
Two defaults are derived from other keys and filled here, as the schema's descriptions say:
``corpus.name`` (the source's name) and ``ab.seeds`` (the grid's seeds).
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from altgrad.training.config import ConfigError, Yaml12Loader, did_you_mean

__all__ = [
    "SCHEMA_PATH",
    "ExperimentError",
    "default",
    "merge",
    "normalize_scalars",
    "overrides_tree",
    "read_config_files",
    "schema",
    "schema_problems",
    "with_defaults",
]

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")


class ExperimentError(ConfigError):
    """An experiment config that cannot be used; ``problems`` lists every problem."""


@functools.cache
def schema() -> dict[str, Any]:
    """The experiment config's JSON schema (read once per process)."""
    return yaml.safe_load(SCHEMA_PATH.read_text())


def default(*keys: str) -> Any:
    """The schema's default of one key, e.g. ``default("budget", "mfu")`` (for CLI options
    that stand for a config key, so that the two cannot disagree)."""
    node = schema()
    for key in keys:
        node = node["properties"][key]
    return node["default"]


# --------------------------------------------------------------------------- reading


def read_config_files(paths: Sequence[str | Path]) -> dict[str, Any]:
    """Read and deep-merge experiment config files (later files win; lists are replaced)."""
    merged: dict[str, Any] = {}
    for path in paths:
        path = Path(path)
        try:
            data = yaml.load(path.read_text(), Loader=Yaml12Loader)  # noqa: S506 - a SafeLoader subclass
        except OSError as e:
            raise ExperimentError([f"cannot read the file: {e.strerror or e}"], str(path)) from None
        except yaml.YAMLError as e:
            raise ExperimentError([f"not valid YAML: {e}"], str(path)) from None
        if data is None:
            continue
        if not isinstance(data, dict):
            raise ExperimentError(["expected a mapping at the top level"], str(path))
        merge(data, into=merged)
    return merged


def merge(new: Mapping[str, Any], *, into: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``new`` into ``into`` (mappings merge, anything else is replaced); returns ``into``."""
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(into.get(k), dict):
            merge(v, into=into[k])
        else:
            into[k] = copy.deepcopy(v)
    return into


def overrides_tree(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``{"train.lr": 1e-3, "model": {"n_layer": 2}}`` -> a nested dict."""
    tree: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if isinstance(value, Mapping) and isinstance(node.get(parts[-1]), dict):
            merge(value, into=node[parts[-1]])
        else:
            node[parts[-1]] = copy.deepcopy(value) if not isinstance(value, Mapping) else overrides_tree(value)
    return tree


_NUMBER = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?$")
_WORDS = {"true": True, "false": False, "null": None, "~": None}


def normalize_scalars(x: Any) -> Any:
    """Scalars written as strings -> numbers/booleans/null (the YAML 1.2 core schema).

    Snakemake reads config files as YAML 1.1, which leaves ``3e-4`` a string, and reads
    nested ``--config`` values with no types at all (``--config budget="{usd: 5}"`` gives
    the string ``"5"``); ``altgrad train`` reads YAML 1.2. This makes all of them agree.
    """
    if isinstance(x, str):
        if x in _WORDS:
            return _WORDS[x]
        if _NUMBER.match(x):
            return int(x.replace("_", "")) if re.fullmatch(r"[-+]?[0-9_]+", x) else float(x.replace("_", ""))
        return x
    if isinstance(x, Mapping):
        return {k: normalize_scalars(v) for k, v in x.items()}
    if isinstance(x, list):
        return [normalize_scalars(v) for v in x]
    return x


# --------------------------------------------------------------------------- the schema


def schema_problems(config: Mapping[str, Any]) -> list[str]:
    """Every way ``config`` breaks the schema, one line each (``where: what``)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    out = []
    for err in sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path]):
        where = _dotted(err.absolute_path)
        if err.validator == "additionalProperties":
            known = err.schema.get("properties", {})
            for key in sorted(set(err.instance) - set(known)):
                hint = did_you_mean(key, known) or f"; valid keys: {', '.join(known)}"
                out.append(f"{_join(where, key)}: unknown key{hint}")
            continue
        out.append(f"{where or '<top level>'}: {err.message}")
    return out


def _dotted(path: Sequence[Any]) -> str:
    s = ""
    for p in path:
        s += f"[{p}]" if isinstance(p, int) else (f".{p}" if s else str(p))
    return s


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}[{key}]" if isinstance(key, int) else (f"{prefix}.{key}" if prefix else str(key))


def with_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``config`` with every default of the schema filled in, and the two
    derived ones (``corpus.name``, ``ab.seeds``).

    A key the schema gives a ``default`` is filled when it is missing, or null where the
    default is a mapping or a list (``recipes: null`` means no recipes). Values of the wrong
    type are left as they are: :func:`schema_problems` reports them.
    """
    c = copy.deepcopy(dict(config))
    root = schema()
    _fill(c, root, root)
    corpus = c["corpus"]
    if isinstance(corpus, dict):
        corpus.setdefault("name", corpus["source"] if isinstance(corpus.get("source"), str) else "corpus")
    if isinstance(c.get("ab"), dict) and "seeds" not in c["ab"] and isinstance(c["grid"], dict):
        c["ab"]["seeds"] = copy.deepcopy(c["grid"].get("seeds"))
    return c


def _resolve(node: Mapping[str, Any], root: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """``node`` and the local definitions it ``$ref``s (their keywords apply together)."""
    out = [node]
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        out += _resolve(target, root)
    return out


def _fill(value: Any, node: Mapping[str, Any], root: Mapping[str, Any]) -> None:
    parts = _resolve(node, root)
    if isinstance(value, dict):
        for part in parts:
            for key, sub in part.get("properties", {}).items():
                default = next((p["default"] for p in _resolve(sub, root) if "default" in p), None)
                has_default = any("default" in p for p in _resolve(sub, root))
                if has_default and (key not in value or (value[key] is None and isinstance(default, (dict, list)))):
                    value[key] = copy.deepcopy(default)
                if key in value:
                    _fill(value[key], sub, root)
    elif isinstance(value, list):
        for part in parts:
            if isinstance(part.get("items"), Mapping):
                for item in value:
                    _fill(item, part["items"], root)
