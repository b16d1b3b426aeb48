"""The experiment: a config -> its runs (the matrix and the sweep), priced, before any job starts.

Over 600 lines because validation collects every problem of a config in one pass, so the
sections it checks (corpus, run, recipes, products, ablation, sweep, budget) share its state.

An *experiment config* (``config/config.yaml``, ``config/runpod.yaml``; every key in
``config/README.md``) describes many runs at once; :func:`load_experiment` validates it and
expands it into :class:`~altgrad.experiment.runs.Run` objects. The Snakefile loads it once
per invocation, and ``altgrad plan`` the same way, so a config means the same thing
everywhere:

* ``grid``, ``ab``, ``extra_runs`` -> ``runs``, the comparison matrix (export, the report):
  each product section's formats x optimizers x master_weights x seeds x ``lr_multipliers``,
  except the ``baseline`` format with an optimizer its ``baseline.optimizers`` does not list;
* ``ablation`` -> more of ``runs``: per format, site, optimizer and seed, a run that quantizes
  only that site (weight, activation or gradient) with the format and the others with the
  baseline's (at the base learning rate);
* ``scaling`` -> ``sweep_runs``, the scaling study's isoFLOP sweep
  (:mod:`altgrad.experiment.sweep`), trained by the same train rule but not in the matrix;
* ``budget`` -> every job priced (:mod:`altgrad.experiment.pricing`), the budget table and
  check, and each train job's resources.

Validation collects every problem (the schema, each run's RunConfig, unknown formats,
duplicate ids, equivalent formats, the sweep, block size vs the prepared corpus) into one
:class:`~altgrad.experiment.config.ExperimentError`.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from altgrad.errors import AltgradError
from altgrad.experiment.config import (
    ExperimentError,
    merge,
    normalize_scalars,
    overrides_tree,
    schema_problems,
    with_defaults,
)
from altgrad.experiment.calibration import CALIBRATION_FILE, Calibration, read_calibration
from altgrad.experiment.pricing import (
    MEASURED,
    REFERENCE_RELATIVE,
    BudgetExceeded,
    JobCost,
    budget_table,
    budget_totals,
    check_budget,
    get_device,
    memory_estimate,
    price_run,
)
from altgrad.experiment.runs import (
    ALL_SITES,
    MASTER_WEIGHTS,
    OPTIMIZER_NAMES,
    OPTIMIZER_SHORT,
    SEED_DATA_OFFSET,
    SITES,
    Run,
    run_id,
)
from altgrad.experiment.sweep import SweepPoint, budget_tag, plan_sweep, point_run_id, sweep_train_overrides
from altgrad.quantization import FORMAT_NAMES, equivalence_classes
from altgrad.training.config import ConfigError, RunConfig, did_you_mean
from altgrad.training.data import prepare_args
from altgrad.training.provenance import library_hash
from altgrad.training.tokenizer import GPT2_VOCAB_SIZE

__all__ = ["Experiment", "load_experiment", "read_meta"]

# A train job's runtime resource (minutes) = RUNTIME_MARGIN x the budget table's estimate of its
# wall time + RUNTIME_SLACK_MIN: a job over its runtime is killed on a cluster (it resumes from
# its checkpoint when rerun), and an estimate is an estimate (a calibration's error is visible in
# the report's planned vs spent).
RUNTIME_MARGIN = 1.5
RUNTIME_SLACK_MIN = 10.0
CUDA_THREADS = 4  # CPU threads of a GPU train job (data loading, the host side); a CPU job gets 1


@dataclass(frozen=True)
class Experiment:
    """A validated experiment: the corpus, the runs (in config order) and the budget.

    ``runs`` is the comparison matrix (grid, ab, ablation, extra_runs: what export and the
    report read); ``sweep_runs`` the scaling sweep's runs, one per ``sweep_points`` entry;
    ``train_runs`` both (what the train rule can make).
    """

    corpus: dict[str, Any]  # name, source (normalized), val_fraction, seed, compact_vocab
    runs: dict[str, Run]
    budget: dict[str, Any]
    config: dict[str, Any] = field(repr=False)  # the config as loaded, every default filled in
    meta: dict[str, Any] | None = field(default=None, repr=False)  # the prepared corpus, if any
    sweep_runs: dict[str, Run] = field(default_factory=dict)
    sweep_points: list[SweepPoint] = field(default_factory=list, repr=False)
    # the calibration file as read (load_experiment's `calibration`), whatever its device; it
    # prices only when it was measured on budget.device (`pricing_calibration`)
    calibration: Calibration | None = field(default=None, repr=False)

    @property
    def train_runs(self) -> dict[str, Run]:
        return {**self.runs, **self.sweep_runs}

    @property
    def corpus_dir(self) -> str:
        return f"data/{self.corpus['name']}"

    @property
    def run_ids(self) -> list[str]:
        return list(self.runs)

    def prepare_args(self) -> list[str]:
        """Arguments of ``altgrad prepare`` for this corpus (without ``--out``)."""
        c = self.corpus
        return prepare_args(c["source"], c["val_fraction"], c["seed"], c["compact_vocab"])

    def corpus_json(self) -> str:
        return json.dumps(self.corpus, sort_keys=True, separators=(",", ":"))

    def budget_args(self) -> list[str]:
        """The pricing settings as ``altgrad report`` options: the report prices the runs'
        own config files with them, as :meth:`jobs` does here."""
        b = self.budget
        args = ["--device", b["device"], "--mfu", repr(float(b["mfu"])), "--budget-usd", repr(float(b["usd"]))]
        if b["price_usd_per_hour"] is not None:
            args += ["--price", repr(float(b["price_usd_per_hour"]))]
        if b["peak_flops"] is not None:
            args += ["--peak-flops", repr(float(b["peak_flops"]))]
        return args

    # --- pricing --------------------------------------------------------------------------
    def jobs(self, meta: Mapping[str, Any] | None = None) -> list[JobCost]:
        """Every run of the matrix priced (:func:`altgrad.experiment.pricing.price_run`).

        A null ``vocab_size`` is taken from the prepared corpus's meta.json, else GPT-2's
        50257 (an upper bound for a compacted vocabulary).
        """
        return self._price(self.runs.values(), meta)

    def sweep_jobs(self, meta: Mapping[str, Any] | None = None) -> list[JobCost]:
        """The scaling sweep's runs, priced like :meth:`jobs`."""
        return self._price(self.sweep_runs.values(), meta)

    @property
    def pricing_calibration(self) -> Calibration | None:
        """The calibration the budget prices from: the file's, when it was measured on
        ``budget.device``."""
        c = self.calibration
        return c if c is not None and c.device == self.budget["device"] else None

    def _price(self, runs: Iterable[Run], meta: Mapping[str, Any] | None) -> list[JobCost]:
        b = self.budget
        meta = self.meta if meta is None else meta
        vocab = int(meta["vocab_size"]) if meta and "vocab_size" in meta else GPT2_VOCAB_SIZE
        device = b["device"] if b["peak_flops"] is None else get_device(b["device"], peak_flops=b["peak_flops"])
        calibration = self.pricing_calibration
        return [price_run(run.run_id, run.config, data_vocab_size=vocab, device=device, mfu=b["mfu"],
                          price=b["price_usd_per_hour"], calibration=calibration) for run in runs]

    def basis_report(self, jobs: list[JobCost]) -> str:
        """Which rows are measured and which assumed, and from what (the budget table's header)."""
        b, c = self.budget, self.calibration
        measured = [j for j in jobs if j.basis == MEASURED]
        assumed = [j for j in jobs if j.basis != MEASURED]
        lines = []
        if measured:
            stale = "" if not c.library or c.library == library_hash() else (
                "; the library code changed since: recalibrate if it changed the speed")
            lines.append(f"MEASURED: {len(measured)} of {len(jobs)} rows, from {c.describe()}{stale}")
        if assumed:
            if b["device"] == "cpu":
                how = (f"BF16 MFU {b['mfu']:g} x the recipe's overhead ratio from the reference calibration "
                       f"{REFERENCE_RELATIVE}, + its start-up")
            else:
                how = (f"BF16 MFU {b['mfu']:g} x the recipe's overhead ratio from a model of eager simulated "
                       f"quantization (memory traffic, host dispatch: altgrad/experiment/pricing.py), + an assumed "
                       f"{get_device(b['device']).startup_s:.0f} s start-up")
            if c is None:
                why = f"no {CALIBRATION_FILE}; measure with `snakemake --cores 1 {CALIBRATION_FILE}`"
            elif c.device != b["device"]:
                why = (f"{c.path} was measured on {c.device} ({c.hardware}), not budget.device {b['device']}: "
                       "not used")
            else:
                sweep = "; the scaling sweep's runs: `altgrad calibrate --include-sweep`" if any(
                    j.name in self.sweep_runs for j in assumed) else ""
                why = (f"their kinds are not in {c.path}: recalibrate with "
                       f"`snakemake --cores 1 --forcerun calibrate {CALIBRATION_FILE}`{sweep}")
            lines.append(f"ASSUMED: {len(assumed)} of {len(jobs)} rows, {how} ({why})")
        return "\n".join(lines)

    def budget_report(self, meta: Mapping[str, Any] | None = None) -> str:
        """The budget table with a header, as printed on every pipeline invocation: what it
        prices at, which rows are measured and which assumed (and from what); with a
        ``scaling`` block, the sweep's own table and the sum of both follow."""
        b = self.budget
        jobs = self.jobs(meta)
        sweep = self.sweep_jobs(meta) if self.sweep_runs else []
        price = jobs[0].price_usd if jobs else b["price_usd_per_hour"]
        head = (
            f"altgrad budget: {len(jobs)} training jobs on {b['device']} at ${price:.2f}/h, "
            f"MFU {b['mfu']:g} for native BF16 (FLOPs = 6·N·D + lm_head + attention, incl. eval/shadow passes)\n"
            + self.basis_report([*jobs, *sweep])
        )
        meta = self.meta if meta is None else meta
        if meta is None and any(r.config.model.vocab_size is None for r in self.runs.values()):
            head += f"\n(vocab_size {GPT2_VOCAB_SIZE} until data/{self.corpus['name']} is prepared"
            head += "; compact_vocab makes it smaller)" if self.corpus["compact_vocab"] else ")"
        if not self.sweep_runs:
            return head + "\n" + budget_table(jobs, budget_usd=b["usd"])
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
            return check_budget([*self.jobs(meta), *self.sweep_jobs(meta)], self.budget["usd"])
        except BudgetExceeded as e:
            raise BudgetExceeded(
                f"{e} Knobs in the config: grid.formats/optimizers/master_weights/seeds, ab, ablation, "
                "lr_multipliers, extra_runs, run.train.max_steps/batch_size, run.model.*, "
                "scaling.formats/budgets/sizes, "
                "budget.device/mfu/price_usd_per_hour, budget.usd.",
                total_usd=e.total_usd, budget_usd=e.budget_usd,
            ) from None

    @cached_property
    def _resources(self) -> dict[str, dict[str, int]]:
        out = {}
        runs = self.train_runs
        for run, job in zip(runs.values(), self._price(runs.values(), None)):
            mem = memory_estimate(job.shape, run.config.train.batch_size)
            cuda = run.config.train.device == "cuda"
            out[run.run_id] = {
                "threads": CUDA_THREADS if cuda else 1,
                "gpu": 1 if cuda else 0,
                "mem_mb": int(max(2000, math.ceil(2.0 * mem.total_bytes / 2**20) + 1000)),
                "runtime": int(math.ceil(RUNTIME_MARGIN * job.seconds / 60.0 + RUNTIME_SLACK_MIN)),
            }
        return out

    def resources(self, rid: str) -> dict[str, int]:
        """What one train job asks for: threads, gpu, mem_mb, runtime (minutes).

        threads: :data:`CUDA_THREADS` for a GPU run, else 1 (parallel CPU jobs must not spin
        against each other). mem_mb: twice the memory estimate + 1 GB. runtime: the budget
        table's estimate of the job's wall time (measured or assumed, as its row says) x
        :data:`RUNTIME_MARGIN` + :data:`RUNTIME_SLACK_MIN` minutes (a job over its runtime is
        killed on a cluster; it resumes from its checkpoint when rerun). Profiles may override
        any of them (``set-resources``).
        """
        return self._resources[rid]


# --------------------------------------------------------------------------- loading


def load_experiment(
    config: Mapping[str, Any], *, data_root: str | Path | None = None, source: str = "config",
    calibration: str | Path | None = None,
) -> Experiment:
    """Validate an experiment config and expand it into runs (the config is normalised,
    checked against the schema and given its defaults here, once).

    ``data_root``: where prepared corpora live (relative to it, ``{corpus.name}/meta.json``);
    when that meta.json exists and matches the corpus config, block sizes and vocabularies
    are checked against it and the budget uses its vocabulary.
    ``calibration``: a calibration file (the pipeline and ``altgrad plan`` pass
    :data:`~altgrad.experiment.calibration.CALIBRATION_FILE`, results/calibration.json); when it
    exists it is read, and the budget prices from it the runs whose kind it timed on
    ``budget.device`` (a damaged file: an AltgradError naming it and the fix).
    Raises :class:`ExperimentError` listing every problem.
    """
    if not isinstance(config, Mapping):
        raise ExperimentError([f"expected a mapping at the top level, got {type(config).__name__}"], source)
    config = normalize_scalars(dict(config))
    problems = schema_problems(config)
    c = with_defaults(config)

    corpus = _corpus(c["corpus"] if isinstance(c["corpus"], dict) else {}, problems)
    base, base_cfg = _base_run(c["run"] if isinstance(c["run"], dict) else {}, corpus["name"], problems)
    names = _Names(c["recipes"] if isinstance(c["recipes"], dict) else {}, base if base_cfg is not None else None,
                   problems)

    baseline = _baseline(c, names)
    multipliers = [float(m) for m in c["lr_multipliers"] if _is_number(m)] if isinstance(
        c["lr_multipliers"], list) else [1.0]
    if isinstance(c["lr_multipliers"], list) and c["lr_multipliers"] and 1.0 not in multipliers:
        problems.append("lr_multipliers: must hold 1 (the base learning rate, at which the report pairs the "
                        "formats and the ablation runs), e.g. [0.5, 1, 2]")
    specs = [*_product(c, "grid", names, baseline, multipliers), *_product(c, "ab", names, baseline, multipliers)]
    ablation = _ablation(c, names, baseline, specs)
    specs += [*ablation, *_extra_runs(c, names)]
    runs = _matrix_runs(specs, base, base_cfg, names, problems)
    if not specs and not problems:
        problems.append("grid/ab/ablation/extra_runs: the experiment has no runs")
    if not c["allow_equivalent"]:
        problems += _equivalent_formats(runs)

    sweep_points: list[SweepPoint] = []
    sweep_runs: dict[str, Run] = {}
    # a scaling block the schema refuses (a wrong type) is not planned: its problems say enough
    scaling_ok = not any(p.startswith(("scaling.", "scaling:")) for p in problems)
    if isinstance(c.get("scaling"), dict) and base_cfg is not None and scaling_ok:
        sweep_points, sweep_runs = _sweep(c["scaling"], base, base_cfg, names, corpus, problems)
        for rid in set(sweep_runs) & set(runs):
            problems.append(f"duplicate run id {rid!r} (from the matrix and scaling); rename the recipe")

    meta = None
    if data_root is not None and "source" in corpus and isinstance(corpus["name"], str):
        meta = read_meta(Path(data_root) / corpus["name"] / "meta.json", corpus)
    if meta is not None:
        problems += _corpus_fit(meta, corpus["name"], {**runs, **sweep_runs})

    if problems:
        raise ExperimentError(list(dict.fromkeys(problems)), source)
    corpus["compact_vocab"] = bool(corpus["compact_vocab"])
    calib = read_calibration(calibration)
    return Experiment(corpus=corpus, runs=runs, budget=dict(c["budget"]), config=c, meta=meta,
                      sweep_runs=sweep_runs, sweep_points=sweep_points, calibration=calib)


def _corpus(cc: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
    """name, source (normalized: what `altgrad prepare` takes), val_fraction, seed, compact_vocab."""
    from altgrad.training.corpus import normalize_source

    corpus: dict[str, Any] = {}
    src_cfg = {"name": cc.get("source")}
    for key in ("paths", "field", "split"):
        if cc.get(key) is not None:
            src_cfg[key] = cc[key]
    try:
        corpus["source"] = normalize_source(src_cfg)
    except AltgradError as e:
        problems.append(f"corpus: {e}")
    corpus.update(name=cc.get("name"), val_fraction=cc.get("val_fraction"), seed=cc.get("seed"),
                  compact_vocab=cc.get("compact_vocab"))
    return corpus


def _build_config(d: Mapping[str, Any], where: str, problems: list[str], sep: str = ": ") -> RunConfig | None:
    try:
        return RunConfig.from_dict(d)
    except ConfigError as e:
        problems.extend(f"{where}{sep}{p}" for p in e.problems)
        return None


def _base_run(run: Mapping[str, Any], corpus_name: Any, problems: list[str]) -> tuple[dict[str, Any], RunConfig | None]:
    """The ``run`` section with the corpus's data paths, and its RunConfig (None if invalid:
    its problems are reported once here, not once per run)."""
    if "data" in run:
        problems.append("run.data: the data paths are filled in from `corpus`; remove run.data")
        run = {k: v for k, v in run.items() if k != "data"}
    data = {split: f"data/{corpus_name}/{split}.bin" for split in ("train", "val")}
    base = {**copy.deepcopy(dict(run)),
            "data": {"train_bin": data["train"], "val_bin": data["val"], "meta": f"data/{corpus_name}/meta.json"}}
    n_before = len(problems)
    cfg = _build_config(base, "run", problems, sep=".")
    return base, (cfg if len(problems) == n_before else None)


class _Names:
    """The format and optimizer names a config may use: registry formats, its recipes (each
    checked once against the base run) and the optimizers' names; unknown ones are problems."""

    def __init__(self, recipes: Mapping[str, Any], base: dict[str, Any] | None, problems: list[str]) -> None:
        self.problems = problems
        self.recipes: dict[str, dict[str, Any]] = {}
        self.broken: set[str] = set()
        for name, recipe in recipes.items():
            if name in FORMAT_NAMES:
                problems.append(f"recipes.{name}: a recipe may not be named like a registry format")
                continue
            if not isinstance(recipe, Mapping):
                continue  # the schema reports it
            self.recipes[name] = dict(recipe)
            if base is not None:
                found: list[str] = []
                _build_config(merge({"precision": dict(recipe)}, into=copy.deepcopy(base)), "", found, sep="")
                problems += [f"recipes.{name}.{p.removeprefix('precision.')}" if p.startswith("precision.")
                             else f"recipes.{name}: {p}" for p in found]
                if found:
                    self.broken.add(name)

    def precision(self, fmt: str) -> dict[str, Any]:
        """The ``precision`` section a format name stands for."""
        return self.recipes[fmt] if fmt in self.recipes else {"weight": fmt, "activation": fmt, "gradient": fmt}

    def format(self, fmt: Any, where: str) -> bool:
        """Whether ``fmt`` names a usable format (a problem is recorded when it does not)."""
        if not isinstance(fmt, str):
            return False  # the schema reports it
        if fmt in FORMAT_NAMES or fmt in self.recipes:
            return fmt not in self.broken  # a broken recipe is reported once, under recipes
        valid = [*FORMAT_NAMES, *self.recipes]
        self.problems.append(f"{where}: unknown format {fmt!r}{did_you_mean(fmt, valid)}; valid: " + ", ".join(valid))
        return False

    @staticmethod
    def optimizer(name: Any) -> str | None:
        """The RunConfig name of an optimizer name (None: the schema reports it)."""
        return OPTIMIZER_NAMES.get(name) if isinstance(name, str) else None


def _spec(fmt: str, optimizer: str, master_weights: str, seed: int, origin: str, tag: str | None = None,
          overrides: Mapping[str, Any] | None = None, site: str = ALL_SITES, lr_multiplier: float = 1.0,
          precision: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return dict(format=fmt, optimizer=optimizer, master_weights=master_weights, seed=seed, tag=tag,
                overrides=dict(overrides or {}), origin=origin, site=site, lr_multiplier=lr_multiplier,
                precision=precision)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _seeds(values: Any) -> list[int]:
    return [s for s in values if isinstance(s, int) and not isinstance(s, bool) and s >= 0] \
        if isinstance(values, list) else []


@dataclass(frozen=True)
class _Baseline:
    format: str
    optimizers: tuple[str, ...]  # RunConfig names

    def runs_with(self, fmt: str, optimizer: str) -> bool:
        """Whether a product section makes this format x optimizer: the baseline format only
        with the optimizers ``baseline.optimizers`` lists (a geometry-aware optimizer has no
        8-bit grid to act on there, and the report leaves the baseline out of optimizer effects)."""
        return fmt != self.format or optimizer in self.optimizers


def _baseline(c: Mapping[str, Any], names: _Names) -> _Baseline:
    b = c["baseline"] if isinstance(c.get("baseline"), dict) else {}
    fmt = b.get("format") if isinstance(b.get("format"), str) else "bf16"
    opts = b.get("optimizers") if isinstance(b.get("optimizers"), list) else list(OPTIMIZER_SHORT)
    return _Baseline(fmt, tuple(o for o in map(names.optimizer, opts) if o is not None))


def _product(c: Mapping[str, Any], section: str, names: _Names, baseline: _Baseline,
             multipliers: list[float]) -> list[dict[str, Any]]:
    """The runs of a product section (``grid``, ``ab``), in config order, the learning-rate
    multipliers innermost; the baseline format only with the baseline's optimizers."""
    sec = c.get(section)
    if not isinstance(sec, dict):
        return []
    lists = {k: sec.get(k) for k in ("formats", "optimizers", "master_weights", "seeds")}
    if not all(isinstance(v, list) for v in lists.values()):
        return []  # the schema reports it
    fmts = [f for i, f in enumerate(lists["formats"]) if names.format(f, f"{section}.formats[{i}]")]
    opts = [o for o in map(names.optimizer, lists["optimizers"]) if o is not None]
    mws = [m for m in lists["master_weights"] if m in MASTER_WEIGHTS]
    seeds = _seeds(lists["seeds"])
    return [_spec(f, o, m, s, section, lr_multiplier=x)
            for f in fmts for o in opts if baseline.runs_with(f, o) for m in mws for s in seeds for x in multipliers]


def _ablation(c: Mapping[str, Any], names: _Names, baseline: _Baseline,
              arms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``ablation`` block's runs: per format x site x optimizer x master_weights x seed, the
    format on that site and the baseline format on the others (seeds default: the grid's).

    Not expanded by ``lr_multipliers``: an ablation run decomposes its format's gap to the
    baseline at the base learning rate, so it needs the full run and the baseline run of its
    seed at multiplier 1, which must be in the matrix (a problem otherwise).
    """
    sec = c.get("ablation")
    if not isinstance(sec, dict):
        return []
    if "seeds" not in sec and isinstance(c["grid"], dict):  # a derived default, filled in like ab's
        sec["seeds"] = copy.deepcopy(c["grid"].get("seeds"))
    lists = {k: sec.get(k) for k in ("formats", "sites", "optimizers", "master_weights", "seeds")}
    if not all(isinstance(v, list) for v in lists.values()):
        return []  # the schema reports it
    fmts = []
    for i, f in enumerate(lists["formats"]):
        where = f"ablation.formats[{i}]"
        if isinstance(f, str) and f in names.recipes:
            names.problems.append(f"{where}: {f!r} is a recipe; an ablation quantizes one site with a registry "
                                  "format (the others with the baseline's)")
        elif f == baseline.format:
            names.problems.append(f"{where}: {f!r} is the baseline format, which every site of an ablation run "
                                  "already has; list the formats to decompose")
        elif names.format(f, where):
            fmts.append(f)
    sites = [s for s in lists["sites"] if s in SITES]
    opts = [o for o in map(names.optimizer, lists["optimizers"]) if o is not None]
    mws = [m for m in lists["master_weights"] if m in MASTER_WEIGHTS]
    seeds = _seeds(lists["seeds"])

    # the baseline run every gap is measured against: AdamW's when the baseline runs with it
    control = "adamw" if "adamw" in baseline.optimizers or not baseline.optimizers else baseline.optimizers[0]
    at_base_lr = {(a["format"], a["optimizer"], a["master_weights"], a["seed"]) for a in arms
                  if a["lr_multiplier"] == 1.0}
    missing = []
    for f in fmts:
        for o in opts:
            for m in mws:
                for s in seeds:
                    for need in ((f, o, m, s), (baseline.format, control, "fp32", s)):
                        rid = run_id(*need)
                        if need not in at_base_lr and rid not in missing:
                            missing.append(rid)
    if missing:
        names.problems.append(
            f"ablation: its runs are decomposed against the full runs and the baseline runs of their seeds at "
            f"lr multiplier 1, which grid/ab do not make: {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}"
            "; add them to grid (formats, optimizers, seeds) or narrow the ablation")
    return [_spec(f, o, m, s, "ablation", site=site, precision={
                k: (f if k == site else baseline.format) for k in SITES})
            for f in fmts for site in sites for o in opts for m in mws for s in seeds]


def _extra_runs(c: Mapping[str, Any], names: _Names) -> list[dict[str, Any]]:
    specs = []
    for i, extra in enumerate(c["extra_runs"] if isinstance(c["extra_runs"], list) else []):
        where = f"extra_runs[{i}]"
        if not isinstance(extra, Mapping):
            continue
        ok = names.format(extra.get("format"), f"{where}.format")
        opt, mw, seed, overrides = (names.optimizer(extra.get("optimizer")), extra.get("master_weights"),
                                    extra.get("seed"), extra.get("overrides") or {})
        if not ok or opt is None or mw not in MASTER_WEIGHTS or not isinstance(overrides, Mapping):
            continue
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            continue
        if extra.get("tag") is not None and not isinstance(extra["tag"], str):
            continue  # the schema reports it (tag: 300 unquoted is a number)
        specs.append(_spec(extra["format"], opt, mw, seed, where, extra.get("tag"), overrides))
    return specs


def _matrix_runs(specs: list[dict[str, Any]], base: dict[str, Any], base_cfg: RunConfig | None, names: _Names,
                 problems: list[str]) -> dict[str, Run]:
    """Every spec's validated RunConfig; one problem per duplicate run id."""
    runs: dict[str, Run] = {}
    origins: dict[str, list[str]] = {}
    for spec in specs:
        rid = run_id(spec["format"], spec["optimizer"], spec["master_weights"], spec["seed"], spec["tag"],
                     site=spec["site"], lr_multiplier=spec["lr_multiplier"])
        origins.setdefault(rid, []).append(spec["origin"])
        if base_cfg is None or rid in runs:
            continue
        d = merge({
            "precision": spec["precision"] or names.precision(spec["format"]),
            "optimizer": {"name": spec["optimizer"], "master_weights": spec["master_weights"]},
            "train": {"seed": spec["seed"], "data_seed": SEED_DATA_OFFSET + spec["seed"]},
        }, into=copy.deepcopy(base))
        if spec["lr_multiplier"] != 1.0:
            merge(_scaled_lrs(base_cfg, spec["lr_multiplier"]), into=d)
        over = overrides_tree(spec["overrides"])
        if "data" in over:
            problems.append(f"{spec['origin']}.overrides.data: the data paths come from `corpus`")
            over.pop("data")
        merge(over, into=d)
        cfg = _build_config(d, f"{spec['origin']} ({rid})" if spec["origin"].startswith("extra") else rid, problems)
        if cfg is not None:
            runs[rid] = Run(rid, spec["format"], spec["optimizer"], spec["master_weights"], spec["seed"],
                            spec["origin"], cfg, spec["tag"], site=spec["site"],
                            lr_multiplier=spec["lr_multiplier"])
    for rid, where in origins.items():
        if len(where) > 1:
            problems.append(
                f"duplicate run id {rid!r} (from {', '.join(where)}); remove the repeat, or give an "
                "extra run a distinct `tag`"
            )
    return runs


def _scaled_lrs(base_cfg: RunConfig, m: float) -> dict[str, Any]:
    """The base run's learning-rate schedule times ``m``: lr and min_lr (the cosine's shape is
    kept), and the uncalibrated geometry-aware step sizes when they are set (a calibrated one
    follows lr by itself)."""
    t, o = base_cfg.train, base_cfg.optimizer
    out: dict[str, Any] = {"train": {"lr": t.lr * m, "min_lr": t.min_lr * m}}
    for key in ("ulp_lr", "grid_lr"):
        if getattr(o, key) is not None:
            out.setdefault("optimizer", {})[key] = getattr(o, key) * m
    return out


def _sweep(
    sc: Mapping[str, Any], base: dict[str, Any], base_cfg: RunConfig, names: _Names, corpus: Mapping[str, Any],
    problems: list[str],
) -> tuple[list[SweepPoint], dict[str, Run]]:
    """The ``scaling`` block -> its points and their runs (problems appended)."""
    n_before = len(problems)
    fmts = [f for i, f in enumerate(sc.get("formats") or []) if names.format(f, f"scaling.formats[{i}]")]
    opt = names.optimizer(sc.get("optimizer"))
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
        for s in sweep:
            rid = point_run_id(fmt, s.budget, s.size_tag)
            d = merge({
                "model": {"n_layer": s.shape.n_layer, "n_head": s.shape.n_head, "n_embd": s.shape.n_embd,
                          "block_size": block, "vocab_size": int(vocab)},
                "train": sweep_train_overrides(sc, s, batch),
                "precision": names.precision(fmt),
                "optimizer": {"name": opt, "master_weights": "fp32"},
            }, into=copy.deepcopy(base))
            cfg = _build_config(d, f"scaling ({rid})", problems)
            if cfg is None:
                return [], {}  # one report per problem is enough: every point shares the settings
            points.append(SweepPoint(rid, fmt, s))
            runs[rid] = Run(rid, fmt, opt, "fp32", int(sc["seed"]), "scaling", cfg,
                            tag=f"c{budget_tag(s.budget)}-{s.size_tag}", budget=s.budget)
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


def _corpus_fit(meta: Mapping[str, Any], name: str, runs: Mapping[str, Run]) -> list[str]:
    """Block sizes and vocabularies the prepared corpus cannot serve."""
    problems = []
    smallest = min(int(meta["tokens"]["train"]), int(meta["tokens"]["val"]))
    too_big = sorted({r.config.model.block_size for r in runs.values() if r.config.model.block_size + 1 > smallest})
    for bs in too_big:
        ids = [r for r, run in runs.items() if run.config.model.block_size == bs]
        problems.append(
            f"model.block_size {bs} (runs {', '.join(ids[:3])}{' ...' if len(ids) > 3 else ''}) is larger than "
            f"the corpus allows: data/{name} has {meta['tokens']['train']} train and {meta['tokens']['val']} "
            f"val tokens, each split needs block_size + 1; use a smaller block_size or a larger corpus"
        )
    vocab = int(meta["vocab_size"])
    for rid, run in runs.items():
        if run.config.model.vocab_size is not None and run.config.model.vocab_size < vocab:
            problems.append(f"{rid}: model.vocab_size {run.config.model.vocab_size} is smaller than the "
                            f"corpus vocabulary ({vocab}); use null to take it from the data")
    return problems
