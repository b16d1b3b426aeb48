"""The experiment matrix: an experiment config -> run ids -> one validated RunConfig per run.

An *experiment config* (``config/config.yaml``, ``config/runpod.yaml``) describes many runs
at once; this module turns it into :class:`Run` objects and prices them. The Snakefile,
``altgrad plan`` and the report all go through :func:`load_experiment`, so a config means
the same thing everywhere. Sections:

``corpus``      one corpus, prepared into ``data/{name}/`` (source ``eurlex-sample``,
                ``lex_glue``, ``multi_eurlex`` or ``local`` with ``paths``/``field``;
                ``split`` for hub sources; ``val_fraction``, ``seed``, ``compact_vocab``).
``run``         the base run: a RunConfig dict (model/train/precision/optimizer/tracking).
                ``data`` is filled in from the corpus and may not be given.
``recipes``     optional named precision recipes (any keys of the ``precision`` section,
                e.g. ``{weight: e4m3, activation: e4m3, gradient: e5m2}`` or per-layer
                ``rules``) usable wherever a format name is.
``grid``        ``formats`` × ``optimizers`` × ``master_weights`` × ``seeds``. A registry
                format name means weight, activation and gradient in that format.
``ab``          the geometry-aware A/B, another product (``seeds`` default: the grid's).
``extra_runs``  explicit runs: ``{format, optimizer, master_weights, seed, tag, overrides}``;
                ``overrides`` is a RunConfig dict or dotted keys (``train.lr: 3e-4``).
``budget``      ``usd`` (cap), ``device`` (h100 | a100 | cpu), ``price_usd_per_hour``
                (null = the device's), ``mfu``, ``peak_flops`` (null = the device's).
``scaling``     optional isoFLOP sweep (the scaling study, target results/scaling/report.html):
                ``formats`` × ``budgets`` (training FLOPs) × ``sizes`` per budget, planned by
                :func:`altgrad.analysis.scaling_study.plan_sweep`. Its runs are trained by the
                same train rule but are not part of the matrix (``runs``, the report): they are
                ``scaling_runs``, ids ``scale-{format}-c{budget}-d{width}`` (e.g.
                ``scale-e4m3-c1e13-d128``), each on its planned ``C / flops_per_token`` tokens.

Run id: ``{format}-{optimizer}[-{master_weights}]-s{seed}[-{tag}]`` with optimizer short
names ``adamw``, ``manifold`` (manifold_adamw), ``grid``; master weights appear only when
not ``fp32``. Seed ``s`` sets ``train.seed = s`` and ``train.data_seed = 1000 + s``, so
every run of one seed shares its initial weights and batch order.

Validation collects every problem (schema, each run's RunConfig, unknown formats,
duplicate ids, block size vs. the prepared corpus) into one :class:`ExperimentError`.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from altgrad.analysis.budget import (
    DEFAULT_MFU,
    BudgetExceeded,
    JobCost,
    ModelShape,
    budget_table,
    budget_totals,
    check_budget,
    flops_per_token,
    plan_job,
)
from altgrad.analysis.scaling_study import (
    SWEEP_DEFAULTS,
    ScalingPoint,
    budget_tag,
    plan_sweep,
    point_run_id,
    sweep_train_overrides,
)
from altgrad.errors import AltgradError
from altgrad.quantization import FORMAT_NAMES, equivalence_classes
from altgrad.training.config import ConfigError, RunConfig, Yaml12Loader, did_you_mean
from altgrad.training.provenance import LIBRARY_PACKAGES, library_hash
from altgrad.training.tokenizer import GPT2_VOCAB_SIZE

__all__ = [
    "ExperimentError",
    "Experiment",
    "Run",
    "LIBRARY_PACKAGES",
    "OPTIMIZER_SHORT",
    "library_hash",
    "load_experiment",
    "load_experiment_files",
    "normalize_scalars",
    "run_id",
]

OPTIMIZER_SHORT = {"adamw": "adamw", "manifold_adamw": "manifold", "grid": "grid"}
# a config may name an optimizer by its RunConfig name or its short (run id) name
_OPTIMIZER_ALIASES = {**{k: k for k in OPTIMIZER_SHORT}, "manifold": "manifold_adamw"}
MASTER_WEIGHTS = ("fp32", "grid")
RUNTIME_FACTOR = 10.0  # train rule's runtime = RUNTIME_FACTOR x the budget estimate + 30 min
SEED_DATA_OFFSET = 1000  # train.data_seed = SEED_DATA_OFFSET + seed
_CORPUS_NAME = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]*$")


class ExperimentError(ConfigError):
    """An experiment config that cannot be used; ``problems`` lists every problem."""


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Run:
    """One training job of the matrix."""

    run_id: str
    format: str  # registry format or recipe name
    optimizer: str  # RunConfig name: adamw | manifold_adamw | grid
    master_weights: str
    seed: int
    origin: str  # "grid", "ab" or "extra_runs[i]"
    config: RunConfig
    tag: str | None = None

    @property
    def optimizer_short(self) -> str:
        return OPTIMIZER_SHORT[self.optimizer]

    def labels(self) -> dict[str, Any]:
        """What identifies the run in tables: written next to its results as run.json."""
        p = self.config.precision
        return {
            "run_id": self.run_id,
            "format": self.format,
            "optimizer": self.optimizer_short,
            "master_weights": self.master_weights,
            "seed": self.seed,
            "tag": self.tag,
            "origin": self.origin,
            "weight": p.weight,
            "activation": p.activation,
            "gradient": p.gradient,
        }

    def config_json(self) -> str:
        """The full resolved RunConfig as canonical JSON (valid YAML for ``altgrad train``)."""
        return json.dumps(self.config.to_dict(), sort_keys=True, separators=(",", ":"))

    def config_lines(self) -> dict[str, str]:
        """The resolved RunConfig as one YAML line per section (``train: {"lr": ...}``).

        Joined with newlines they are the run's config file; as separate Snakemake params
        a change shows up in `snakemake -n` as the one section that changed.
        """
        return {k: f"{k}: {json.dumps(v, sort_keys=True, separators=(',', ':'))}"
                for k, v in self.config.to_dict().items()}

    def tokens(self) -> int:
        t = self.config.train
        return t.max_steps * t.batch_size * t.grad_accum * self.config.model.block_size


def run_id(fmt: str, optimizer: str, master_weights: str, seed: int, tag: str | None = None) -> str:
    """``e5m2-manifold-s0``; ``e5m2-adamw-grid-s1``; ``bf16-adamw-s0-lr3e4`` (tag)."""
    parts = [fmt, OPTIMIZER_SHORT.get(optimizer, optimizer)]
    if master_weights != "fp32":
        parts.append(master_weights)
    parts.append(f"s{seed}")
    if tag:
        parts.append(tag)
    return "-".join(parts)


# --------------------------------------------------------------------------- experiment


@dataclass(frozen=True)
class Experiment:
    """A validated experiment: the corpus, the runs (in config order) and the budget.

    ``runs`` is the comparison matrix (grid, ab, extra_runs: what export and the report
    read); ``scaling_runs`` the scaling sweep's runs, one per ``scaling_points`` entry;
    ``train_runs`` both (what the train rule can make).
    """

    corpus: dict[str, Any]  # name, source (normalized), val_fraction, seed, compact_vocab
    runs: dict[str, Run]
    budget: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)  # the config with defaults filled in
    meta: dict[str, Any] | None = field(default=None, repr=False)  # the prepared corpus, if any
    scaling_runs: dict[str, Run] = field(default_factory=dict)
    scaling_points: list[ScalingPoint] = field(default_factory=list, repr=False)

    @property
    def train_runs(self) -> dict[str, Run]:
        return {**self.runs, **self.scaling_runs}

    @property
    def corpus_dir(self) -> str:
        return f"data/{self.corpus['name']}"

    @property
    def run_ids(self) -> list[str]:
        return list(self.runs)

    def prepare_args(self) -> list[str]:
        """Arguments of ``altgrad prepare`` for this corpus (without ``--out``)."""
        src = self.corpus["source"]
        args = ["--source", src["name"]]
        if src["name"] == "local":
            args += ["--paths", *src["paths"], "--field", src["field"]]
        if "split" in src:
            args += ["--split", src["split"]]
        args += ["--val-fraction", repr(float(self.corpus["val_fraction"])), "--seed", str(self.corpus["seed"])]
        if self.corpus["compact_vocab"]:
            args.append("--compact-vocab")
        return args

    def corpus_json(self) -> str:
        return json.dumps(self.corpus, sort_keys=True, separators=(",", ":"))

    # --- budget ---------------------------------------------------------------------------
    def jobs(self, meta: Mapping[str, Any] | None = None) -> list[JobCost]:
        """Price every run of the matrix with :mod:`altgrad.analysis.budget` (FLOPs,
        device-hours, USD).

        Tokens are the training tokens (steps × batch × grad_accum × block). The FLOPs per
        token are the budget module's, scaled for the extra passes a run makes: evaluation
        (forward only, 1/3 of a training token) and the FP32 shadow model's forward+backward
        every ``shadow_interval`` steps. A null ``vocab_size`` is taken from the prepared
        corpus's meta.json, else GPT-2's 50257 (an upper bound for a compacted vocabulary).
        """
        return self._price(self.runs.values(), meta)

    def scaling_jobs(self, meta: Mapping[str, Any] | None = None) -> list[JobCost]:
        """The scaling sweep's runs, priced like :meth:`jobs`."""
        return self._price(self.scaling_runs.values(), meta)

    def _price(self, runs: Any, meta: Mapping[str, Any] | None) -> list[JobCost]:
        b = self.budget
        meta = self.meta if meta is None else meta
        vocab_data = int(meta["vocab_size"]) if meta and "vocab_size" in meta else GPT2_VOCAB_SIZE
        jobs = []
        for run in runs:
            m, t = run.config.model, run.config.train
            shape = ModelShape(
                n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd, block_size=m.block_size,
                vocab_size=m.vocab_size or vocab_data, bias=m.bias,
            )
            factor = _pass_factor(run.config)
            jobs.append(
                plan_job(
                    run.run_id, shape, run.tokens(), device=self._device(), mfu=b["mfu"],
                    price=b["price_usd_per_hour"], flops_fn=lambda s, f=factor: f * flops_per_token(s),
                )
            )
        return jobs

    def _device(self) -> Any:
        b = self.budget
        if b.get("peak_flops") is None:
            return b["device"]
        from altgrad.analysis.budget import get_device

        return get_device(b["device"], peak_flops=b["peak_flops"])

    def budget_report(self, meta: Mapping[str, Any] | None = None) -> str:
        """The budget table with a header line, as printed on every pipeline invocation;
        with a ``scaling`` block, the sweep's own table and the sum of both follow."""
        b = self.budget
        jobs = self.jobs(meta)
        price = jobs[0].price_usd if jobs else b["price_usd_per_hour"]
        head = (
            f"altgrad budget: {len(jobs)} training jobs on {b['device']} at ${price:.2f}/h, "
            f"MFU {b['mfu']:g} (FLOPs = 6·N·D + lm_head + attention, incl. eval/shadow passes)"
        )
        meta = self.meta if meta is None else meta
        if meta is None and any(r.config.model.vocab_size is None for r in self.runs.values()):
            head += f"\n(vocab_size {GPT2_VOCAB_SIZE} until data/{self.corpus['name']} is prepared"
            head += "; compact_vocab makes it smaller)" if self.corpus["compact_vocab"] else ")"
        if not self.scaling_runs:
            return head + "\n" + budget_table(jobs, budget_usd=b["usd"])
        sweep = self.scaling_jobs(meta)
        both = budget_totals([*jobs, *sweep]).usd
        left = b["usd"] - both
        return "\n".join([
            head, budget_table(jobs),
            (f"scaling sweep (target results/scaling/report.html, not part of the default target): "
             f"{len(sweep)} training jobs"),
            budget_table(sweep),
            (f"matrix + scaling sweep: {both:.2f} USD; budget {b['usd']:.2f} USD, "
             f"{'left' if left >= 0 else 'OVER BY'} {abs(left):.2f} USD"),
        ])

    def check_budget(self, meta: Mapping[str, Any] | None = None) -> float:
        """Total USD of the matrix and the scaling sweep; raises :class:`BudgetExceeded`
        (overrun + knobs) when over ``budget.usd``."""
        try:
            return check_budget([*self.jobs(meta), *self.scaling_jobs(meta)], self.budget["usd"])
        except BudgetExceeded as e:
            raise BudgetExceeded(
                f"{e} Knobs in the config: grid.formats/optimizers/master_weights/seeds, ab, "
                "extra_runs, run.train.max_steps/batch_size, run.model.*, scaling.formats/budgets/sizes, "
                "budget.device/mfu/price_usd_per_hour, budget.usd.",
                total_usd=e.total_usd, budget_usd=e.budget_usd,
            ) from None

    def resources(self, rid: str, meta: Mapping[str, Any] | None = None) -> dict[str, int]:
        """Default resources of one train job: gpu, mem_mb, runtime (minutes).

        mem_mb: twice the budget module's memory estimate + 1 GB. runtime: ten times the
        budget estimate + 30 minutes, because simulated quantization runs far below the
        planner's MFU (a job over its runtime is killed on a cluster; it resumes from its
        checkpoint when rerun). Profiles may override any of them (``set-resources``).
        """
        run = self.train_runs[rid]
        (job,) = self._price([run], meta)
        from altgrad.analysis.budget import memory_estimate

        mem = memory_estimate(job.shape, run.config.train.batch_size)
        return {
            "gpu": 1 if run.config.train.device == "cuda" else 0,
            "mem_mb": int(max(2000, math.ceil(2.0 * mem.total_bytes / 2**20) + 1000)),
            "runtime": int(math.ceil(RUNTIME_FACTOR * job.gpu_hours * 60.0) + 30),
        }


def _pass_factor(cfg: RunConfig) -> float:
    """Compute of one run relative to its training tokens × flops_per_token."""
    t = cfg.train
    n_evals = len(range(0, t.max_steps, t.eval_interval)) + (0 if (t.max_steps - 1) % t.eval_interval == 0 else 1)
    eval_tokens = n_evals * t.eval_batches * t.batch_size
    train_tokens = t.max_steps * t.batch_size * t.grad_accum
    shadow = 0.0 if not t.shadow_interval else len(range(0, t.max_steps, t.shadow_interval)) / t.max_steps
    return 1.0 + shadow + eval_tokens / (3.0 * train_tokens)


# --------------------------------------------------------------------------- loading


def load_experiment_files(paths: Sequence[str | Path]) -> dict[str, Any]:
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
        _deep_merge(merged, data)
    return merged


def _deep_merge(into: dict[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(into.get(k), dict):
            _deep_merge(into[k], v)
        else:
            into[k] = copy.deepcopy(v)
    return into


def _schema_problems(config: Mapping[str, Any], schema_path: str | Path) -> list[str]:
    import jsonschema

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    out = []
    for err in sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path]):
        where = _dotted(err.absolute_path)
        msg = err.message
        if err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            valid = ", ".join(err.schema.get("properties", {}))
            for key in extra:
                hint = did_you_mean(key, err.schema.get("properties", {})) or f"; valid keys: {valid}"
                out.append(f"{_join(where, key)}: unknown key{hint}")
            continue
        out.append(f"{where or '<top level>'}: {msg}")
    return out


def _dotted(path: Sequence[Any]) -> str:
    s = ""
    for p in path:
        s += f"[{p}]" if isinstance(p, int) else (f".{p}" if s else str(p))
    return s


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}[{key}]" if isinstance(key, int) else (f"{prefix}.{key}" if prefix else str(key))


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


def _defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the config (YAML 1.2 floats) with every optional section filled in."""
    c = normalize_scalars(copy.deepcopy(dict(config)))
    corpus = c.setdefault("corpus", {}) or {}
    c["corpus"] = corpus
    if isinstance(corpus, dict):
        corpus.setdefault("source", "eurlex-sample")
        corpus.setdefault("name", corpus["source"] if isinstance(corpus["source"], str) else "corpus")
        corpus.setdefault("val_fraction", 0.1)
        corpus.setdefault("seed", 0)
        corpus.setdefault("compact_vocab", False)
    if c.get("run") is None:
        c["run"] = {}
    if c.get("recipes") is None:
        c["recipes"] = {}
    grid = c.setdefault("grid", {}) or {}
    c["grid"] = grid
    if isinstance(grid, dict):
        grid.setdefault("formats", ["bf16"])
        grid.setdefault("optimizers", ["adamw"])
        grid.setdefault("master_weights", ["fp32"])
        grid.setdefault("seeds", [0])
    if isinstance(c.get("ab"), dict):
        c["ab"].setdefault("master_weights", ["fp32"])
        if isinstance(grid, dict):
            c["ab"].setdefault("seeds", copy.deepcopy(grid["seeds"]))
    if c.get("extra_runs") is None:
        c["extra_runs"] = []
    budget = c.setdefault("budget", {}) or {}
    c["budget"] = budget
    if isinstance(budget, dict):
        budget.setdefault("usd", 20.0)
        budget.setdefault("device", "h100")
        budget.setdefault("price_usd_per_hour", None)
        budget.setdefault("mfu", DEFAULT_MFU)
        budget.setdefault("peak_flops", None)
    if isinstance(c.get("scaling"), dict):
        for key, value in SWEEP_DEFAULTS.items():
            c["scaling"].setdefault(key, copy.deepcopy(value))
        if c["scaling"]["train"] is None:
            c["scaling"]["train"] = {}
    return c


def _overrides_tree(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``{"train.lr": 1e-3, "model": {"n_layer": 2}}`` -> a nested dict."""
    tree: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if isinstance(value, Mapping) and isinstance(node.get(parts[-1]), dict):
            _deep_merge(node[parts[-1]], value)
        else:
            node[parts[-1]] = copy.deepcopy(value) if not isinstance(value, Mapping) else _overrides_tree(value)
    return tree


def _build_config(d: Mapping[str, Any], where: str, problems: list[str], sep: str = ": ") -> RunConfig | None:
    try:
        return RunConfig.from_dict(d)
    except ConfigError as e:
        problems.extend(f"{where}{sep}{p}" for p in e.problems)
        return None


def load_experiment(
    config: Mapping[str, Any],
    *,
    schema: str | Path | None = None,
    data_root: str | Path | None = None,
    source: str = "config",
) -> Experiment:
    """Validate an experiment config and expand it into runs.

    ``schema``: the JSON schema file to check the structure against (the pipeline passes
    ``workflow/schemas/config.schema.yaml``). ``data_root``: where prepared corpora live
    (relative to it, ``{corpus.name}/meta.json``); when that meta.json exists and matches
    the corpus config, block sizes are checked against its token counts.
    Raises :class:`ExperimentError` listing every problem.
    """
    from altgrad.training.corpus import normalize_source

    problems: list[str] = []
    if not isinstance(config, Mapping):
        raise ExperimentError([f"expected a mapping at the top level, got {type(config).__name__}"], source)
    config = normalize_scalars(dict(config))
    if schema is not None:
        problems += _schema_problems(config, schema)
    c = _defaults(config)

    # corpus ------------------------------------------------------------------------------
    corpus: dict[str, Any] = {}
    cc = c["corpus"] if isinstance(c["corpus"], dict) else {}
    src_cfg = {"name": cc.get("source")}
    for key in ("paths", "field", "split"):
        if cc.get(key) is not None:
            src_cfg[key] = cc[key]
    try:
        corpus["source"] = normalize_source(src_cfg)
    except AltgradError as e:
        problems.append(f"corpus: {e}")
    name = cc.get("name")
    if not isinstance(name, str) or not _CORPUS_NAME.match(name):
        if schema is None:  # otherwise the schema reports it
            problems.append(f"corpus.name: {name!r} must be a name of letters, digits, '_', '.', '-'")
    corpus.update(
        name=name, val_fraction=cc.get("val_fraction"), seed=cc.get("seed"), compact_vocab=cc.get("compact_vocab")
    )
    data = {"train_bin": f"data/{name}/train.bin", "val_bin": f"data/{name}/val.bin", "meta": f"data/{name}/meta.json"}

    # base run ----------------------------------------------------------------------------
    base = c["run"] if isinstance(c["run"], dict) else {}
    if "data" in base:
        problems.append("run.data: the data paths are filled in from `corpus`; remove run.data")
        base = {k: v for k, v in base.items() if k != "data"}
    base = {**copy.deepcopy(base), "data": data}
    n_before = len(problems)
    base_cfg = _build_config(base, "run", problems, sep=".")
    base_ok = len(problems) == n_before and base_cfg is not None

    # recipes -----------------------------------------------------------------------------
    recipes: dict[str, dict[str, Any]] = {}
    bad_recipes: set[str] = set()
    for rname, recipe in (c["recipes"] if isinstance(c["recipes"], dict) else {}).items():
        if rname in FORMAT_NAMES:
            problems.append(f"recipes.{rname}: a recipe may not be named like a registry format")
            continue
        if not isinstance(recipe, Mapping):
            continue  # the schema reports it
        recipes[rname] = dict(recipe)
        if base_ok:
            trial = _deep_merge(copy.deepcopy(base), {"precision": dict(recipe)})
            found: list[str] = []
            _build_config(trial, "", found, sep="")
            problems += [f"recipes.{rname}.{p.removeprefix('precision.')}" if p.startswith("precision.")
                         else f"recipes.{rname}: {p}" for p in found]
            if found:
                bad_recipes.add(rname)
    valid_formats = [*FORMAT_NAMES, *recipes]

    def check_format(fmt: Any, where: str) -> bool:
        if not isinstance(fmt, str):
            return False  # the schema reports it
        if fmt in FORMAT_NAMES or fmt in recipes:
            return fmt not in bad_recipes  # a broken recipe is reported once, under recipes
        problems.append(
            f"{where}: unknown format {fmt!r}{did_you_mean(fmt, valid_formats)}; valid: "
            + ", ".join(valid_formats)
        )
        return False

    def check_optimizer(opt: Any, where: str) -> str | None:
        if isinstance(opt, str) and opt in _OPTIMIZER_ALIASES:
            return _OPTIMIZER_ALIASES[opt]
        if schema is None:  # otherwise the schema's enum reports it
            problems.append(
                f"{where}: unknown optimizer {opt!r}{did_you_mean(str(opt), _OPTIMIZER_ALIASES)}; valid: "
                + ", ".join(_OPTIMIZER_ALIASES)
            )
        return None

    # the product sections ----------------------------------------------------------------
    specs: list[dict[str, Any]] = []  # format, optimizer, master_weights, seed, tag, overrides, origin

    def product(section: str) -> None:
        sec = c.get(section)
        if not isinstance(sec, dict):
            return
        lists = {k: sec.get(k) for k in ("formats", "optimizers", "master_weights", "seeds")}
        if not all(isinstance(v, list) for v in lists.values()):
            return  # the schema reports it
        fmts = [f for i, f in enumerate(lists["formats"]) if check_format(f, f"{section}.formats[{i}]")]
        opts = [check_optimizer(o, f"{section}.optimizers[{i}]") for i, o in enumerate(lists["optimizers"])]
        opts = [o for o in opts if o is not None]
        mws = [m for m in lists["master_weights"] if m in MASTER_WEIGHTS]
        seeds = [s for s in lists["seeds"] if isinstance(s, int) and not isinstance(s, bool) and s >= 0]
        for fmt in fmts:
            for opt in opts:
                for mw in mws:
                    for seed in seeds:
                        specs.append(dict(format=fmt, optimizer=opt, master_weights=mw, seed=seed,
                                          tag=None, overrides={}, origin=section))

    product("grid")
    product("ab")
    for i, extra in enumerate(c["extra_runs"] if isinstance(c["extra_runs"], list) else []):
        where = f"extra_runs[{i}]"
        if not isinstance(extra, Mapping):
            continue
        fmt, opt = extra.get("format"), extra.get("optimizer", "adamw")
        ok = check_format(fmt, f"{where}.format")
        opt = check_optimizer(opt, f"{where}.optimizer")
        mw = extra.get("master_weights", "fp32")
        seed = extra.get("seed", 0)
        overrides = extra.get("overrides") or {}
        if not ok or opt is None or mw not in MASTER_WEIGHTS or not isinstance(overrides, Mapping):
            continue
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            continue
        specs.append(dict(format=fmt, optimizer=opt, master_weights=mw, seed=seed, tag=extra.get("tag"),
                          overrides=dict(overrides), origin=where))

    # build every run's RunConfig ---------------------------------------------------------
    runs: dict[str, Run] = {}
    origins: dict[str, list[str]] = {}
    for spec in specs:
        rid = run_id(spec["format"], spec["optimizer"], spec["master_weights"], spec["seed"], spec["tag"])
        origins.setdefault(rid, []).append(spec["origin"])
        if not base_ok or rid in runs:
            continue
        d = copy.deepcopy(base)
        fmt = spec["format"]
        precision = recipes[fmt] if fmt in recipes else {"weight": fmt, "activation": fmt, "gradient": fmt}
        _deep_merge(d, {
            "precision": precision,
            "optimizer": {"name": spec["optimizer"], "master_weights": spec["master_weights"]},
            "train": {"seed": spec["seed"], "data_seed": SEED_DATA_OFFSET + spec["seed"]},
        })
        over = _overrides_tree(spec["overrides"])
        if "data" in over:
            problems.append(f"{spec['origin']}.overrides.data: the data paths come from `corpus`")
            over.pop("data")
        _deep_merge(d, over)
        cfg = _build_config(d, f"{spec['origin']} ({rid})" if spec["origin"].startswith("extra") else rid, problems)
        if cfg is not None:
            runs[rid] = Run(rid, fmt, spec["optimizer"], spec["master_weights"], spec["seed"], spec["origin"],
                            cfg, spec["tag"])
    for rid, where in origins.items():
        if len(where) > 1:
            problems.append(
                f"duplicate run id {rid!r} (from {', '.join(where)}); remove the repeat, or give an "
                "extra run a distinct `tag`"
            )
    if not specs and not problems:
        problems.append("grid/ab/extra_runs: the experiment has no runs")
    if not c.get("allow_equivalent"):
        problems += _equivalent_formats(runs)

    # the scaling sweep -------------------------------------------------------------------
    scaling_runs: dict[str, Run] = {}
    scaling_points: list[ScalingPoint] = []
    if isinstance(c.get("scaling"), dict) and base_ok:
        scaling_points, scaling_runs = _scaling(c["scaling"], base, base_cfg, recipes, corpus, check_format,
                                                check_optimizer, problems)
        for rid in set(scaling_runs) & set(runs):
            problems.append(f"duplicate run id {rid!r} (from the matrix and scaling); rename the recipe")

    # block size vs the prepared corpus ---------------------------------------------------
    meta = None
    if data_root is not None and "source" in corpus and isinstance(name, str):
        meta = read_meta(Path(data_root) / name / "meta.json", corpus)
    if meta is not None:
        smallest = min(int(meta["tokens"]["train"]), int(meta["tokens"]["val"]))
        every = {**runs, **scaling_runs}
        too_big = sorted({r.config.model.block_size for r in every.values() if r.config.model.block_size + 1 > smallest})
        for bs in too_big:
            ids = [r for r, run in every.items() if run.config.model.block_size == bs]
            problems.append(
                f"model.block_size {bs} (runs {', '.join(ids[:3])}{' ...' if len(ids) > 3 else ''}) is larger than "
                f"the corpus allows: data/{name} has {meta['tokens']['train']} train and {meta['tokens']['val']} "
                f"val tokens, each split needs block_size + 1; use a smaller block_size or a larger corpus"
            )
        vocab = int(meta["vocab_size"])
        for rid, run in every.items():
            if run.config.model.vocab_size is not None and run.config.model.vocab_size < vocab:
                problems.append(f"{rid}: model.vocab_size {run.config.model.vocab_size} is smaller than the "
                                f"corpus vocabulary ({vocab}); use null to take it from the data")

    # budget ------------------------------------------------------------------------------
    budget = dict(c["budget"]) if isinstance(c["budget"], dict) else {}
    from altgrad.analysis.budget import DEVICES

    if isinstance(budget.get("device"), str) and budget["device"] not in DEVICES and schema is None:
        problems.append(f"budget.device: unknown device {budget['device']!r}; valid: {', '.join(DEVICES)}")

    if problems:
        raise ExperimentError(_unique(problems), source)
    corpus["compact_vocab"] = bool(corpus["compact_vocab"])
    return Experiment(corpus=corpus, runs=runs, budget=budget, raw=c, meta=meta, scaling_runs=scaling_runs,
                      scaling_points=scaling_points)


def _scaling(
    sc: dict[str, Any], base: dict[str, Any], base_cfg: RunConfig, recipes: Mapping[str, Any],
    corpus: Mapping[str, Any], check_format: Any, check_optimizer: Any, problems: list[str],
) -> tuple[list[ScalingPoint], dict[str, Run]]:
    """The ``scaling`` block -> its points and their runs (problems appended)."""
    n_before = len(problems)
    fmts = [f for i, f in enumerate(sc.get("formats") or []) if check_format(f, f"scaling.formats[{i}]")]
    opt = check_optimizer(sc.get("optimizer"), "scaling.optimizer")
    vocab = sc.get("vocab_size") or base_cfg.model.vocab_size
    if vocab is None:
        if corpus.get("compact_vocab"):
            problems.append(
                "scaling.vocab_size: required with corpus.compact_vocab (the sweep's steps depend on the "
                "lm_head's FLOPs, and a compacted vocabulary is not known before the corpus is prepared); set "
                "it to at least the corpus's vocab_size (data/<corpus>/meta.json), e.g. rounded up to a "
                "multiple of 64"
            )
            return [], {}
        vocab = GPT2_VOCAB_SIZE
    block = int(sc.get("block_size") or base_cfg.model.block_size)
    batch = int(sc.get("batch_size") or base_cfg.train.batch_size)
    accum = int((sc.get("train") or {}).get("grad_accum", base_cfg.train.grad_accum))
    if not isinstance(sc.get("budgets"), list) or not isinstance(sc.get("sizes"), (int, list)):
        return [], {}  # the schema reports it
    sweep, found = plan_sweep(sc, block_size=block, vocab_size=int(vocab), tokens_per_step=batch * accum * block,
                              bias=base_cfg.model.bias)
    problems.extend(found)
    if len(problems) > n_before or opt is None:
        return [], {}
    points, runs = [], {}
    for fmt in fmts:
        precision = recipes.get(fmt, {"weight": fmt, "activation": fmt, "gradient": fmt})
        for s in sweep:
            rid = point_run_id(fmt, s.budget, s.size_tag)
            d = copy.deepcopy(base)
            _deep_merge(d, {
                "model": {"n_layer": s.shape.n_layer, "n_head": s.shape.n_head, "n_embd": s.shape.n_embd,
                          "block_size": block, "vocab_size": int(vocab)},
                "train": sweep_train_overrides(sc, s, batch),
                "precision": precision,
                "optimizer": {"name": opt, "master_weights": "fp32"},
            })
            cfg = _build_config(d, f"scaling ({rid})", problems)
            if cfg is None:
                return [], {}  # one report per problem is enough: every point shares the settings
            points.append(ScalingPoint(rid, fmt, s))
            runs[rid] = Run(rid, fmt, opt, "fp32", int(sc["seed"]), "scaling", cfg,
                            tag=f"c{budget_tag(s.budget)}-{s.size_tag}")
    return points, runs


def _equivalent_formats(runs: Mapping[str, Run]) -> list[str]:
    """One problem per class of registry formats in the matrix that quantize identically
    under the amax scaling their runs use: their results would differ by noise alone."""
    by_scaling: dict[str, list[str]] = {}
    for run in runs.values():
        if run.format in FORMAT_NAMES:
            names = by_scaling.setdefault(run.config.precision.scaling, [])
            if run.format not in names:
                names.append(run.format)
    return [
        f"formats {' and '.join(members)} quantize identically under {scaling} amax scaling (their grids "
        f"differ by a power of two): keep one of them, or set allow_equivalent: true to run both"
        for scaling, names in by_scaling.items()
        for members in equivalence_classes(names, scaling)
        if len(members) > 1
    ]


def read_meta(path: Path, corpus: Mapping[str, Any]) -> dict[str, Any] | None:
    """A prepared corpus's meta.json if it exists and was made from this corpus config."""
    try:
        meta = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("source") != corpus.get("source"):
        return None
    split = meta.get("split", {})
    if split.get("seed") != corpus.get("seed") or split.get("val_fraction") != corpus.get("val_fraction"):
        return None
    if bool(meta.get("compact_vocab")) != bool(corpus.get("compact_vocab")):
        return None
    return meta


def _unique(items: list[str]) -> list[str]:
    seen, out = set(), []
    for p in items:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out
