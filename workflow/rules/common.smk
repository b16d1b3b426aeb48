# Load the experiment once per invocation, print the budget table, constrain the wildcards.
# Only code here (no rules): the rule files use what it defines.

import json
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

from altgrad.errors import AltgradError
from altgrad.experiment import load_experiment
from altgrad.experiment.pricing import BudgetExceeded
from altgrad.training.provenance import library_hash

try:
    # every problem at once: schema, each run's RunConfig, formats, duplicate ids, block size
    EXP = load_experiment(config, data_root="data")
except AltgradError as error:
    raise WorkflowError(f"invalid altgrad config (no job started)\n{error}") from None

LIB_HASH = library_hash()  # source of altgrad.{quantization,nn,optim,training}
RUNS = EXP.runs  # the comparison matrix: what export and the report read
SWEEP_RUNS = EXP.sweep_runs  # the scaling study's isoFLOP sweep
TRAIN_RUNS = EXP.train_runs  # both: what the train rule makes
CORPUS = EXP.corpus["name"]
DATA = f"data/{CORPUS}"

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
    try:
        EXP.check_budget()
    except BudgetExceeded as error:
        raise WorkflowError(f"over budget, not starting:\n{error}") from None


def run_dirs(runs, file):
    """`file` in the run directory of each run id."""
    return [f"results/runs/{run}/{file}" for run in runs]


def parent_dirs(paths):
    return [os.path.dirname(p) for p in paths]


def local_corpus_files(wildcards):
    """Source `local`: the files themselves are inputs (editing one re-tokenizes)."""
    src = EXP.corpus["source"]
    if src["name"] != "local":
        return []
    from altgrad.training.corpus import expand_paths

    return [str(p) for p in expand_paths(src["paths"])]


def run_config_line(section):
    """One section of a run's resolved config, as the YAML line the run's config.yaml holds."""
    return lambda wildcards: TRAIN_RUNS[wildcards.run].config_lines()[section]


def train_resource(key):
    """threads, gpu, mem_mb or runtime of a train job: the experiment decides them."""
    return lambda wildcards: EXP.resources(wildcards.run)[key]


def sweep_run_files(file):
    def inputs(wildcards):
        if not SWEEP_RUNS:
            raise WorkflowError(
                "results/scaling/report.html needs a `scaling` block in the config (formats, budgets, "
                "sizes; see config/README.md)"
            )
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
