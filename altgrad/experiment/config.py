"""An experiment config as data: read, merged, normalised, checked against the schema, defaulted.

The schema (``config.schema.yaml`` beside this module, package data; the workflow's
``workflow/schemas/config.schema.yaml`` is a link to it) is the one source of the
experiment-level defaults: :func:`with_defaults` fills them in from its ``default`` keys. The
``run`` section is a RunConfig, whose defaults are its dataclasses' (altgrad.training.config).
Two defaults are derived from other keys and filled here, as the schema's descriptions say:
``corpus.name`` (the source's name) and ``ab.seeds`` (the grid's seeds). A block written as
null (``scaling: null``, or ``budget:`` with every key commented out) is the same as an
absent one: its defaults, or nothing where it has none.

Config files are read as YAML 1.2 (``3e-4`` is a number) and a quoted scalar stays a string
(``tag: '300'``, ``name: '2024'``): :func:`read_config_files` marks the strings it read, and
:func:`normalize_scalars`, which turns strings from typeless sources into numbers (Snakemake's
``--config``, YAML 1.1 readers), leaves those alone.
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
    "ConfigString",
    "ExperimentError",
    "default",
    "merge",
    "normalize_scalars",
    "overrides_tree",
    "read_config_file",
    "read_config_files",
    "yaml_problem",
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


class ConfigString(str):
    """A string read from a config file: a final value, which :func:`normalize_scalars`
    does not turn into a number (``tag: '300'`` stays the string ``"300"``)."""


class _ConfigLoader(Yaml12Loader):
    """Yaml12Loader whose strings are :class:`ConfigString`."""

    def construct_yaml_str(self, node):  # type: ignore[override]
        return ConfigString(super().construct_yaml_str(node))


_ConfigLoader.add_constructor("tag:yaml.org,2002:str", _ConfigLoader.construct_yaml_str)
yaml.SafeDumper.add_representer(ConfigString, yaml.SafeDumper.represent_str)  # it dumps as the string it is


def yaml_problem(error: yaml.YAMLError) -> str:
    """One line: where (line, column) and what of a YAML error (the file is named by the caller)."""
    problem, pmark = getattr(error, "problem", None), getattr(error, "problem_mark", None)
    context, cmark = getattr(error, "context", None), getattr(error, "context_mark", None)
    if pmark is None:
        return " ".join(str(error).split())

    def at(mark) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"

    text = f"at {at(pmark)}: {problem}"
    if context:
        text += f" ({context}" + (f" that starts at {at(cmark)})" if cmark is not None and cmark.line != pmark.line
                                  else ")")
    return text


def read_config_file(path: str | Path) -> dict[str, Any] | None:
    """One experiment config file (None when it is empty), its strings marked as read.
    Raises :class:`ExperimentError` naming the file (and the line of a YAML error)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ExperimentError([f"cannot read the file: {getattr(e, 'strerror', None) or e}"], str(path)) from None
    try:
        data = yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        where = yaml_problem(e)
        fix = "indent with spaces, not tabs" if "'\\t'" in where else "fix the file there"
        raise ExperimentError([f"not valid YAML {where}; {fix}"], str(path)) from None
    if data is not None and not isinstance(data, dict):
        raise ExperimentError([f"expected a mapping (key: value lines) at the top level, got {type(data).__name__}"],
                              str(path))
    return data


def read_config_files(paths: Sequence[str | Path]) -> dict[str, Any]:
    """Read and deep-merge experiment config files (later files win; lists are replaced)."""
    merged: dict[str, Any] = {}
    for path in paths:
        data = read_config_file(path)
        if data is not None:
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

    For sources without types: Snakemake reads nested ``--config`` values with no types at
    all (``--config budget="{usd: 5}"`` gives the string ``"5"``) and YAML 1.1 readers leave
    ``3e-4`` a string; ``altgrad train`` reads YAML 1.2. This makes all of them agree. A
    :class:`ConfigString` (read from a config file by :func:`read_config_files`, quoted or
    not) is final: it stays a (plain) string.
    """
    if isinstance(x, ConfigString):
        return str(x)
    if isinstance(x, str):
        if x in _WORDS:
            return _WORDS[x]
        if _NUMBER.match(x):
            return int(x.replace("_", "")) if re.fullmatch(r"[-+]?[0-9_]+", x) else float(x.replace("_", ""))
        return x
    if isinstance(x, Mapping):
        return {(str(k) if isinstance(k, ConfigString) else k): normalize_scalars(v) for k, v in x.items()}
    if isinstance(x, list):
        return [normalize_scalars(v) for v in x]
    return x


# --------------------------------------------------------------------------- the schema


def schema_problems(config: Mapping[str, Any]) -> list[str]:
    """Every way ``config`` breaks the schema, one line each (``where: what``). A null block
    that :func:`with_defaults` fills in is not a problem."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    out = []
    config = _without_null_blocks(config)
    for err in sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path]):
        where = _dotted(err.absolute_path)
        if err.validator == "additionalProperties":
            known = err.schema.get("properties", {})
            for key in sorted(set(err.instance) - set(known)):
                hint = did_you_mean(key, known) or f"; valid keys: {', '.join(known)}"
                out.append(f"{_join(where, key)}: unknown key{hint}")
            continue
        hint = ""
        expected = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
        if err.validator == "type" and "string" in expected and isinstance(err.instance, (bool, int, float)):
            text = str(err.instance).lower() if isinstance(err.instance, bool) else str(err.instance)
            kind = {bool: "a boolean", int: "an integer", float: "a number"}[type(err.instance)]
            hint = f" (YAML reads {text} unquoted as {kind}: write '{text}' for the string)"
        out.append(f"{where or '<top level>'}: {err.message}{hint}")
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
    default is a mapping or a list (``recipes: null`` means no recipes, ``budget: null`` the
    default budget); a null section of ``run`` (``run: {model: null}``) is dropped, so the
    RunConfig's defaults apply. Values of the wrong type are left as they are:
    :func:`schema_problems` reports them.
    """
    c = copy.deepcopy(_without_null_blocks(config))
    root = schema()
    _fill(c, root, root)
    corpus = c["corpus"]
    if isinstance(corpus, dict):
        corpus.setdefault("name", corpus["source"] if isinstance(corpus.get("source"), str) else "corpus")
    if isinstance(c.get("ab"), dict) and "seeds" not in c["ab"] and isinstance(c["grid"], dict):
        c["ab"]["seeds"] = copy.deepcopy(c["grid"].get("seeds"))
    return c


RUN_SECTIONS = ("data", "model", "train", "precision", "optimizer", "tracking")


def _without_null_blocks(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` (a shallow copy where changed) without the nulls that mean "absent": a key
    whose schema default is a mapping or a list, at any depth, and a section of ``run``."""
    root = schema()
    out = _drop_nulls(dict(config), root, root)
    if isinstance(out.get("run"), Mapping):
        out["run"] = {k: v for k, v in out["run"].items() if not (k in RUN_SECTIONS and v is None)}
    return out


def _drop_nulls(value: Any, node: Mapping[str, Any], root: Mapping[str, Any]) -> Any:
    if not isinstance(value, Mapping):
        return value
    out = dict(value)
    for part in _resolve(node, root):
        for key, sub in part.get("properties", {}).items():
            if key not in out:
                continue
            subs = _resolve(sub, root)
            if out[key] is None and any(isinstance(p.get("default"), (dict, list)) for p in subs):
                del out[key]
            else:
                out[key] = _drop_nulls(out[key], sub, root)
    return out


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
