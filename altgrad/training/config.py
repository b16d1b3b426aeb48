"""The run config: one training job, typed, validated, loaded from YAML.

A run config is a tree of frozen dataclasses. Every field has a default, and the
defaults describe the tiny CPU run (a few minutes on a laptop), so a YAML file only
lists what it changes:

    train:
      lr: 3e-4
    precision:
      weight: e4m3
      rules:
        - {pattern: "*.attn.c_attn", recipe: {weight: e5m2}}
        - {pattern: "*.mlp.c_proj", recipe: null}

Each field is declared once with its default, bounds and documentation (field metadata,
altgrad.nn.recipe.setting; config/README.md is generated from it). Validation is one
mechanism driven by the dataclasses themselves: ``_build`` walks
the fields and their type hints (bool, int, float, str, Literal choices, Optional,
tuples of dataclasses, nested dataclasses), applies the numeric bounds stored in the
field metadata, and then each dataclass's ``_problems`` method for checks that span
fields (e.g. min_lr <= lr). Every problem is collected with its dotted path and all
of them are raised together as one ``ConfigError``.

Type rules: an int is accepted where a float is expected (and stored as a float, so
``lr: 1`` and ``lr: 1.0`` hash the same); a bool is never accepted as a number and a
number never as a bool; strings must be non-empty. YAML is read with floats resolved
as in YAML 1.2, so ``lr: 3e-4`` is a number (plain PyYAML would make it a string).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from altgrad.errors import AltgradError
from altgrad.nn.recipe import PrecisionRecipe, Rounding, bound_problems, setting
from altgrad.optim import DEFAULT_MIN_STIFFNESS
from altgrad.quantization import FORMAT_NAMES
from altgrad.training.model import GPTConfig

# A number format's registry name ("bf16": the baseline, rounded to bfloat16).
Format = Literal[FORMAT_NAMES]  # type: ignore[valid-type]


class ConfigError(AltgradError):
    """A run config that cannot be used. ``problems`` lists every problem found."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = list(problems)
        self.source = source
        n = len(self.problems)
        lines = [f"{source}: {n} problem{'' if n == 1 else 's'}"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class DataConfig:
    """Where the tokenized corpus is (paths as written; relative to the working dir)."""

    train_bin: str = setting("data/eurlex-sample/train.bin", "training tokens (uint16)")
    val_bin: str = setting("data/eurlex-sample/val.bin", "validation tokens (uint16)")
    meta: str = setting("data/eurlex-sample/meta.json", "the prepared corpus's meta.json")


@dataclass(frozen=True)
class ModelConfig:
    """The GPT's shape (fields of ``GPTConfig``); vocab_size null = take it from meta.json."""

    n_layer: int = setting(4, "transformer blocks", ge=1)
    n_head: int = setting(4, "attention heads (must divide n_embd)", ge=1)
    n_embd: int = setting(128, "width", ge=1)
    block_size: int = setting(128, "context length in tokens", ge=1)
    vocab_size: int | None = setting(None, "null = the corpus's (meta.json); may be larger, not smaller", ge=1)
    dropout: float = setting(0.0, "dropout probability", ge=0, lt=1)
    bias: bool = setting(False, "biases in linear layers and layer norms")

    def _problems(self) -> list[tuple[str, str]]:
        if self.n_embd % self.n_head:
            return [("n_embd", f"{self.n_embd} is not divisible by n_head ({self.n_head})")]
        return []

    def gpt_config(self, data_vocab_size: int | None = None) -> GPTConfig:
        """The model's GPTConfig; ``data_vocab_size`` (from meta.json) fills a null vocab_size.

        An explicit vocab_size may be larger than the data's (padding) but not smaller.
        """
        vocab = self.vocab_size
        if vocab is None:
            if data_vocab_size is None:
                raise ConfigError(["model.vocab_size: null, and no vocabulary size from the data"])
            vocab = data_vocab_size
        elif data_vocab_size is not None and vocab < data_vocab_size:
            raise ConfigError(
                [f"model.vocab_size: {vocab} is smaller than the data's vocabulary ({data_vocab_size})"]
            )
        return GPTConfig(
            n_layer=self.n_layer, n_head=self.n_head, n_embd=self.n_embd,
            block_size=self.block_size, vocab_size=vocab, dropout=self.dropout, bias=self.bias,
        )


@dataclass(frozen=True)
class TrainConfig:
    """The training loop. Intervals and patiences are in optimizer steps; 0 = off where noted."""

    seed: int = setting(42, "model init (an experiment sets it from the run's seed)", ge=0)
    data_seed: int = setting(1337, "batch order, independent of the init (an experiment: 1000 + seed)", ge=0)
    max_steps: int = setting(500, "optimizer steps", ge=1)
    batch_size: int = setting(16, "sequences per micro-batch", ge=1)
    grad_accum: int = setting(1, "micro-batches per optimizer step", ge=1)
    lr: float = setting(1e-3, "peak learning rate (every optimizer of every arm)", gt=0)
    min_lr: float = setting(1e-4, "floor of the cosine schedule (<= lr)", ge=0)
    warmup_steps: int = setting(50, "linear warm-up steps (<= max_steps)", ge=0)
    lr_schedule: Literal["cosine", "constant"] = setting("cosine", "cosine decay to min_lr, or constant")
    weight_decay: float = setting(0.1, "decoupled, in real units", ge=0)
    beta1: float = setting(0.9, "first-moment EMA rate", ge=0, lt=1)
    beta2: float = setting(0.95, "second-moment EMA rate", ge=0, lt=1)
    grad_clip: float = setting(1.0, "max global grad norm; 0 = off", ge=0)
    eval_interval: int = setting(100, "steps between held-out evaluations (and at the last step)", ge=1)
    eval_batches: int = setting(20, "batches per evaluation", ge=1)
    shadow_interval: int = setting(0, "steps between FP32 shadow-gradient cosines; 0 = off, 1 = every step", ge=0)
    checkpoint_interval: int = setting(100, "steps between checkpoints", ge=1)
    keep_checkpoints: int = setting(2, "periodic checkpoints kept (besides best.pt)", ge=1)
    nan_patience: int = setting(10, "consecutive non-finite losses -> diverged", ge=1)
    divergence_patience: int = setting(100, "steps of loss above divergence_factor x best before an event; 0 = off",
                                       ge=0)
    divergence_factor: float = setting(2.0, "loss > factor x best loss counts as diverging", gt=1)
    dead_grad_steps: int = setting(20, "a weight's gradient zero this many steps in a row counts as dead", ge=1)
    rank_interval: int = setting(100, "steps between effective-rank probes; 0 = off", ge=0)
    device: Literal["cpu", "cuda", "auto"] = setting("auto", "auto = cuda when visible, else cpu")
    autocast: bool = setting(False, "bf16 autocast of the forward pass, on any device (the FP32 shadow never)")
    compile: bool = setting(False, "torch.compile the model (and fuse GridOptim's move)")

    def _problems(self) -> list[tuple[str, str]]:
        out = []
        if self.min_lr > self.lr:
            out.append(("min_lr", f"{self.min_lr:g} is larger than lr ({self.lr:g})"))
        if self.warmup_steps > self.max_steps:
            out.append(("warmup_steps", f"{self.warmup_steps} is larger than max_steps ({self.max_steps})"))
        return out


@dataclass(frozen=True)
class OperandFormats:
    """A layer rule's formats: each replaces the run's for that operand; null keeps the run's."""

    weight: Format | None = setting(None, "weight format (null: the run's)")
    activation: Format | None = setting(None, "activation format (null: the run's)")
    gradient: Format | None = setting(None, "gradient format (null: the run's)")

    def _problems(self) -> list[tuple[str, str]]:
        if self.weight is None and self.activation is None and self.gradient is None:
            return [("", "empty recipe; set weight, activation or gradient, "
                         "or use `recipe: null` to keep the layer unquantized")]
        return []


@dataclass(frozen=True)
class LayerRuleConfig:
    """A layer rule as a config writes it (altgrad.nn.LayerRule once resolved): layers whose
    module name matches ``pattern`` get the run's recipe with ``recipe``'s formats;
    ``recipe: null`` keeps them unquantized. Both keys are required."""

    pattern: str = field(metadata={"doc": "fnmatch glob over module names, e.g. *.attn.c_attn"})
    recipe: OperandFormats | None = field(metadata={"doc": "{weight, activation, gradient}, or null: unquantized"})


@dataclass(frozen=True)
class PrecisionConfig(PrecisionRecipe):
    """A run's precision: altgrad.nn's PrecisionRecipe (its settings declared there, once)
    for every linear layer, with each operand a registry format (bf16 = the baseline,
    rounded to bfloat16), per-layer rules and the lm_head exception."""

    # the operands narrowed to registry names, defaulting to the baseline
    weight: Format = setting("bf16", "weight format")
    activation: Format = setting("bf16", "activation (input) format")
    gradient: Format = setting("bf16", "format of the gradient into each layer's output")
    rules: tuple[LayerRuleConfig, ...] = setting((), "per-layer rules, tried in order; the first match wins")
    skip_lm_head: bool = setting(True, "keep the lm_head (tied to the token embedding) unquantized")


@dataclass(frozen=True)
class OptimizerConfig:
    """The optimizer. ``master_weights``: fp32 copy, or weights that live on the format grid.

    Every optimizer runs at train.lr with train's schedule, betas and weight decay (real
    units, decoupled); ungridded parameters are AdamW's in every arm (altgrad.optim.build_optimizer).
    """

    name: Literal["adamw", "manifold_adamw", "grid"] = setting("adamw", "adamw, manifold_adamw or grid")
    master_weights: Literal["fp32", "grid"] = setting("fp32", "fp32: a float32 copy; grid: weights live on the grid")
    ulp_lr: float | None = setting(
        None, "manifold_adamw: null = calibrated (each quantized weight's RMS step equals AdamW's at step 0); "
        "a number = that many ULPs per step at the schedule's peak (uncalibrated)", gt=0)
    grid_lr: float | None = setting(
        None, "grid: null = calibrated likewise; a number = the real-unit lr of the bias-corrected momentum at "
        "the schedule's peak (uncalibrated)", gt=0)
    max_stiffness: float = setting(0.0, "cap on the ULP scaling (real units); 0 = no cap", ge=0)
    # the default is measured: altgrad.optim.manifold.DEFAULT_MIN_STIFFNESS says how
    min_stiffness: float = setting(
        DEFAULT_MIN_STIFFNESS, "floor on the ULP scaling, a fraction of the weight's RMS grid spacing at its "
        "first step (steps near zero keep a floor); 0 = no floor", ge=0)
    rung_clip: float = setting(0.0, "grid: max grid rungs moved per step; 0 = no clip", ge=0)
    grid_rounding: Rounding = setting("stochastic", "master_weights grid: rounding onto the grid")
    momentum: float | None = setting(None, "grid: EMA rate of the momentum; null = train.beta1", ge=0, lt=1)
    partition_clip: bool = setting(False, "clip each gridded weight's gradient to RMS <= threshold x the largest "
                                          "weight its grid holds (real units), before the global clip")
    partition_clip_threshold: float = setting(1.0, "partition_clip's threshold", gt=0)
    mantissa_shift: bool = setting(False, "move a layer that keeps stalling to the format with one more mantissa "
                                          "bit (one rung of altgrad.optim.MANTISSA_LADDER)")
    mantissa_shift_threshold: float = setting(1.0, "stall ratio that counts as a bad step", gt=0)
    mantissa_shift_patience: int = setting(10, "bad steps in a row before a layer shifts", ge=1)


@dataclass(frozen=True)
class TrackingConfig:
    """Weights & Biases mirroring and alert thresholds (metrics always go to parquet)."""

    wandb_mode: Literal["offline", "online", "disabled"] = setting("offline", "offline, online or disabled")
    project: str = setting("altgrad", "W&B project")
    run_name: str | None = setting(None, "W&B run name; null = the run id")
    alert_stall: float = setting(0.5, "alert above this fraction of stalled weights", ge=0, le=1)
    alert_overflow: float = setting(0.01, "alert above this fraction of saturated values", ge=0, le=1)
    alert_cooldown: int = setting(100, "steps between repeats of one alert", ge=0)


@dataclass(frozen=True)
class RunConfig:
    """One training job."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, source: str = "config") -> RunConfig:
        """Validate a (possibly partial) nested dict; missing keys take their defaults."""
        problems: list[str] = []
        cfg = _build(cls, {} if d is None else d, "", problems)
        if problems:
            raise ConfigError(problems, source)
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError([f"cannot read the file: {e.strerror or e}"], str(path)) from None
        try:
            d = yaml.load(text, Loader=Yaml12Loader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as e:
            raise ConfigError([f"not valid YAML: {e}"], str(path)) from None
        return cls.from_dict(d, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts/lists/scalars; ``from_dict(to_dict())`` gives an equal config."""
        return _plain(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def config_hash(self) -> str:
        """First 12 hex digits of the sha256 of the canonical JSON of ``to_dict()``."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def with_overrides(self, overrides: Mapping[str, Any]) -> RunConfig:
        """A new, validated config with dotted keys replaced, e.g. {"train.lr": 3e-4}."""
        d = self.to_dict()
        for dotted, value in overrides.items():
            node = d
            *parents, leaf = dotted.split(".")
            for key in parents:
                if not isinstance(node.get(key), dict):
                    node[key] = {}
                node = node[key]
            node[leaf] = value
        return RunConfig.from_dict(d, source="overrides")


# --------------------------------------------------------------------------- mechanism

_BAD = object()  # returned by _build for a value that failed validation
_NONE_TYPE = type(None)


def _build(tp: Any, value: Any, path: str, problems: list[str]) -> Any:
    """Check ``value`` against the type hint ``tp``; return it converted, or _BAD.

    Every problem is appended to ``problems`` as "dotted.path: message".
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def bad(msg: str) -> object:
        problems.append(f"{path or '<top level>'}: {msg}")
        return _BAD

    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, path, problems)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None if _NONE_TYPE in args else bad("must not be null")
        (inner,) = [a for a in args if a is not _NONE_TYPE]
        return _build(inner, value, path, problems)
    if value is None:
        return bad(f"must not be null; expected {_describe(tp)}")
    if origin is Literal:
        if isinstance(value, str) and value in args:
            return value
        msg = f"unknown value {value!r}; valid: {', '.join(map(str, args))}"
        if not isinstance(value, str):
            msg = f"expected one of {', '.join(map(str, args))}; got {_show(value)}"
        return bad(msg + did_you_mean(value, args))
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return bad(f"expected a list, got {_show(value)}")
        items = [_build(args[0], v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
        return _BAD if any(v is _BAD for v in items) else tuple(items)
    if tp is bool:
        return value if isinstance(value, bool) else bad(f"expected true or false, got {_show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        return bad(f"expected an integer, got {_show(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                return bad(f"must be a finite number, got {value!r}")
            return float(value)
        return bad(f"expected a number, got {_show(value)}")
    if tp is str:
        if isinstance(value, str) and value:
            return value
        return bad(f"expected a non-empty string, got {_show(value)}")
    raise TypeError(f"config field type {tp!r} at {path!r} is not supported by _build")


def _build_dataclass(cls: type, value: Any, path: str, problems: list[str]) -> Any:
    prefix = f"{path}." if path else ""
    if not isinstance(value, Mapping):
        problems.append(f"{path or '<top level>'}: expected a mapping, got {_show(value)}")
        return _BAD
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    n_before = len(problems)

    for key in value:
        if key not in fields:
            problems.append(f"{prefix}{key}: unknown key{_unknown_key_hint(key, cls, fields)}")

    kwargs = {}
    for name, f in fields.items():
        if name not in value:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{prefix}{name}: missing (required)")
            continue
        v = _build(hints[name], value[name], prefix + name, problems)
        if v is _BAD:
            continue
        problems.extend(f"{prefix}{name}: {p}" for p in bound_problems(name, v, f.metadata.get("bounds", {})))
        kwargs[name] = v

    if len(problems) > n_before:
        return _BAD
    obj = cls(**kwargs)
    for name, msg in getattr(obj, "_problems", lambda: [])():
        where = f"{prefix}{name}" if name else (path or "<top level>")
        problems.append(f"{where}: {msg}")
    return _BAD if len(problems) > n_before else obj


def _plain(x: Any) -> Any:
    if dataclasses.is_dataclass(x):
        return {f.name: _plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, "a mapping" if dataclasses.is_dataclass(tp) else "a list")


def _show(value: Any) -> str:
    kind = {dict: "mapping", list: "list"}.get(type(value), type(value).__name__)
    return f"{kind} {value!r}" if not isinstance(value, (dict, list)) else kind


def did_you_mean(word: Any, choices: typing.Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ``""``."""
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unknown_key_hint(key: Any, cls: type, fields: Mapping[str, Any]) -> str:
    hint = did_you_mean(key, fields)
    if hint:
        return hint
    if cls is RunConfig:  # a section's key given without its section?
        hints = typing.get_type_hints(RunConfig)
        for section in fields:
            if key in {f.name for f in dataclasses.fields(hints[section])}:
                return f" (it belongs under {section!r}: {section}.{key})"
    return f"; valid keys: {', '.join(fields)}"


class Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-3 as a float (YAML 1.2) and rejects duplicate keys."""

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


__all__ = [
    "ConfigError",
    "DataConfig",
    "Yaml12Loader",
    "did_you_mean",
    "FORMAT_NAMES",
    "ModelConfig",
    "OptimizerConfig",
    "PrecisionConfig",
    "LayerRuleConfig",
    "OperandFormats",
    "RunConfig",
    "TrackingConfig",
    "TrainConfig",
]
