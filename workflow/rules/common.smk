# Load the experiment once per invocation, print the budget table, constrain the wildcards.
# Only code here (no rules): the rule files use what it defines.
#
# Bad input is refused with one line per problem on stderr and exit code 2, before any job
# starts (refuse(): Snakemake would print an exception with a traceback):
# * at load: the config files (read here as YAML 1.2; a malformed one is named with its line),
#   the experiment (every problem at once), a local corpus glob that matches nothing;
# * while Snakemake builds the jobs (input functions, so only what the requested targets
#   need, and after Snakemake knows what is forced): the budget of the requested train jobs
#   (check_budget_of), the prepared corpus against its meta.json (check_prepared_corpus).

import dataclasses
import json
import os
import re
import shlex
import sys
from pathlib import Path

from altgrad.errors import AltgradError, PreparedDataError
from altgrad.experiment import load_experiment
from altgrad.experiment.calibration import CALIBRATION_FILE
from altgrad.experiment.config import (
    merge,
    normalize_scalars,
    read_config_files,
    with_defaults,
)
from altgrad.experiment.pricing import BudgetExceeded
from altgrad.training.corpus import max_tokens, source_files
from altgrad.training.data import load_meta, verify_prepared
from altgrad.training.provenance import library_hash


def refuse(message):
    """Stop before any job: `message` on stderr as `altgrad: error: ...`, exit code 2."""
    print(f"altgrad: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def config_files():
    """The config files in the order Snakemake merges them: the workflow's own (unless
    `--replace-workflow-config` with files of the command line or profile), then `--configfile`s.
    """
    settings = workflow.config_settings
    given = [
        os.path.relpath(p) if not os.path.relpath(p).startswith("..") else str(p)
        for p in settings.configfiles
    ]
    if settings.replace_workflow_config and settings.overwrite_config:
        return given
    if not os.path.exists(WORKFLOW_CONFIGFILE):
        if not given:
            refuse(
                f"{WORKFLOW_CONFIGFILE} not found: restore it (git checkout {WORKFLOW_CONFIGFILE}) or pass a config "
                "with --configfile FILE"
            )
        return given
    return [WORKFLOW_CONFIGFILE, *given]


def read_config():
    """The experiment config as Snakemake would merge it, read by altgrad (YAML 1.2, quoted
    values stay strings), with `--config KEY=VALUE` on top (typeless: normalised)."""
    files = config_files()
    cfg = read_config_files(files)
    merge(normalize_scalars(dict(workflow.config_settings.config)), into=cfg)
    return cfg, files


CALIBRATION = CALIBRATION_FILE  # results/calibration.json: `snakemake --cores 1 results/calibration.json`


def load():
    """The experiment, checked against the prepared corpus when there is a valid one (block
    sizes, vocabulary; a damaged meta.json is reported while the jobs are built, below), and
    priced from the calibration file when it exists (re-read at every invocation; a damaged
    one is refused, naming the file and the command that re-creates it).
    """
    cfg, files = read_config()
    corpus = with_defaults(normalize_scalars(cfg)).get("corpus")
    name = corpus.get("name") if isinstance(corpus, dict) else None
    data_root = "data"
    try:
        load_meta(f"data/{name}")
    except PreparedDataError:
        data_root = None  # missing (prepare makes it) or damaged (check_prepared_corpus says so)
    return load_experiment(
        cfg,
        data_root=data_root,
        source=", ".join(files) or "config",
        calibration=CALIBRATION,
    )


def check_corpus_size(exp):
    """A local corpus whose files cannot hold enough tokens for the runs' context length,
    known before tokenizing (altgrad.training.corpus.max_tokens): refused now, not at prepare.
    """
    bound = max_tokens(exp.corpus["source"])  # also: a local glob that matches nothing
    need = max(run.config.model.block_size for run in exp.train_runs.values()) + 1
    if exp.meta is None and bound is not None and bound < 2 * need:
        raise AltgradError(
            f"corpus {exp.corpus['name']!r} is too small for block_size {need - 1}: its files hold at most "
            f"{bound} tokens (one per byte), and the train and val splits need block_size + 1 = {need} each; "
            f"use a smaller run.model.block_size or a larger corpus"
        )


try:
    # every problem at once: schema, each run's RunConfig, formats, duplicate ids, block size
    EXP = load()
    check_corpus_size(EXP)
except AltgradError as error:
    # one line per problem: `FILE: problem` alone, or a count and the list
    problems = getattr(error, "problems", None) or [" ".join(str(error).split())]
    where = f"{error.source}: " if hasattr(error, "source") else ""
    if len(problems) == 1:
        refuse(f"invalid altgrad config (no job started): {where}{problems[0]}")
    refuse(
        "\n".join(
            [
                f"invalid altgrad config (no job started): {where}{len(problems)} problems",
                *(f"  - {p}" for p in problems),
            ]
        )
    )

LIB_HASH = library_hash()  # source of altgrad.{quantization,nn,optim,training}
# the merged experiment config, as loaded (the calibrate rule passes it)
CONFIG = read_config()[0]
RUNS = EXP.runs  # the comparison matrix: what export and the report read
SWEEP_RUNS = EXP.sweep_runs  # the scaling study's isoFLOP sweep
TRAIN_RUNS = EXP.train_runs  # both: what the train rule makes
CORPUS = EXP.corpus["name"]
DATA = f"data/{CORPUS}"
DATA_FILES = [f"{DATA}/train.bin", f"{DATA}/val.bin", f"{DATA}/meta.json"]
# the context length the prepared corpus must serve: prepare refuses a smaller corpus
MAX_BLOCK_SIZE = max(run.config.model.block_size for run in TRAIN_RUNS.values())

# Every job's shell starts in bash strict mode (Snakemake's own default prefix, kept) with the
# `altgrad` installed beside the Python that runs Snakemake first on PATH (not another install's),
# and with the command line the reports show in their footers as $ALTGRAD_INVOCATION. That is not
# a param: a param would make every report stale under another invocation (`snakemake -n` too).
INVOCATION = (
    shlex.join(["snakemake", *sys.argv[1:]]) if workflow.is_main_process else ""
)
shell.prefix(
    (
        f'set -euo pipefail; export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH" '
        f"ALTGRAD_INVOCATION={shlex.quote(INVOCATION)}; "
    )
    .replace("{", "{{")
    .replace("}", "}}")  # shell.prefix formats its text like a shell command
)

if workflow.is_main_process:  # not again in job subprocesses (slurm, run: blocks)
    print(EXP.budget_report(), file=sys.stderr)


# --------------------------------------------------------------------- checks at DAG time
# Input functions run while Snakemake builds the jobs of the requested targets (dry-run too),
# before any job starts; by then it knows the targets and what is forced.

BUDGETED = set()  # run ids of the train jobs the requested targets need, so far


def check_budget_of(run_ids):
    """Count `run_ids` among the requested train jobs and refuse when those cost more than
    budget.usd: the matrix counts for results/report.html, the sweep for
    results/scaling/report.html, both when both are asked for."""
    new = set(run_ids) - BUDGETED
    if not new or not workflow.is_main_process:
        return
    BUDGETED.update(new)
    requested = dataclasses.replace(
        EXP,
        runs={r: run for r, run in RUNS.items() if r in BUDGETED},
        sweep_runs={r: run for r, run in SWEEP_RUNS.items() if r in BUDGETED},
    )
    try:
        requested.check_budget()
    except BudgetExceeded as error:
        refuse(
            f"over budget, not starting (the requested targets need {len(BUDGETED)} training jobs): {error}"
        )


def prepare_forced():
    """Whether this invocation forces the prepare job (then it re-creates the corpus)."""
    dag = workflow.dag_settings
    forced = {os.path.normpath(str(f)) for f in dag.forcerun}
    if dag.forcetargets:
        forced |= {os.path.normpath(str(t)) for t in dag.targets}
    return (
        dag.forceall
        or "prepare" in forced
        or any(os.path.normpath(f) in forced for f in DATA_FILES)
    )


CORPUS_CHECKED = []


def check_prepared_corpus():
    """Once per invocation: a prepared corpus the train jobs would read as it is (complete,
    made from this corpus config, prepare not forced) must match its meta.json: size and
    sha256 of each token file. A damaged one is refused naming the file and the command that
    re-creates it (`snakemake --forcerun prepare`)."""
    if CORPUS_CHECKED or not workflow.is_main_process:
        return
    CORPUS_CHECKED.append(True)
    if prepare_forced() or not all(os.path.exists(f) for f in DATA_FILES):
        return  # prepare makes it (again)
    try:
        load_meta(DATA)
        # EXP.meta is None: made from another corpus config, and prepare runs again
        if EXP.meta is not None:
            verify_prepared(DATA)
    except PreparedDataError as error:
        refuse(error)


def train_inputs(wildcards):
    """The prepared corpus, after the checks above (this run's budget, the corpus)."""
    check_budget_of([wildcards.run])
    check_prepared_corpus()
    return dict(zip(("train", "val", "meta"), DATA_FILES))


def calibrate_inputs(wildcards):
    """The prepared corpus, after the corpus check: the calibration trains on it."""
    check_prepared_corpus()
    return dict(zip(("train", "val", "meta"), DATA_FILES))


# ----------------------------------------------------------------------------------- helpers


def run_dirs(runs, file):
    """`file` in the run directory of each run id."""
    return [f"results/runs/{run}/{file}" for run in runs]


def parent_dirs(paths):
    return [os.path.dirname(p) for p in paths]


def matrix_run_files(file):
    """Input function: `file` of every run of the matrix (their budget checked first)."""

    def inputs(wildcards):
        check_budget_of(RUNS)
        return run_dirs(RUNS, file)

    return inputs


def local_corpus_files(wildcards):
    """Source `local`: the files themselves are inputs (editing one re-tokenizes)."""
    return [str(p) for p in source_files(EXP.corpus["source"])]


def run_config_line(section):
    """One section of a run's resolved config, as the YAML line the run's config.yaml holds."""
    return lambda wildcards: TRAIN_RUNS[wildcards.run].config_lines()[section]


def train_resource(key):
    """threads, gpu, mem_mb or runtime of a train job: the experiment decides them."""
    return lambda wildcards: EXP.resources(wildcards.run)[key]


def sweep_run_files(file):
    def inputs(wildcards):
        if not SWEEP_RUNS:
            refuse(
                "results/scaling/report.html needs a `scaling` block in the config (formats, budgets, "
                "sizes; see config/README.md)"
            )
        check_budget_of(SWEEP_RUNS)
        return run_dirs(SWEEP_RUNS, file)

    return inputs


wildcard_constraints:
    corpus=re.escape(CORPUS),
    run="|".join(re.escape(r) for r in TRAIN_RUNS),


localrules:
    all,
    prepare,
    export,
    report,
    scaling_report,
