"""altgrad pipeline: corpus -> tokens -> one training job per run -> export -> report.

    snakemake --cores 1 results/report.html   # the embedded default (config/config.yaml), CPU
    snakemake --profile runpod                # the H100 matrix (config/runpod.yaml)
    snakemake -n [--profile NAME]             # plan only: jobs + the budget table

Before any job: the config is validated (workflow/schemas/config.schema.yaml plus the
RunConfig validator, every problem in one error), expanded into runs
(altgrad.analysis.matrix), priced (altgrad.analysis.budget) and the budget table printed
once; over budget.usd the workflow refuses to start. Rules are thin: they call the
`altgrad` CLI (prepare, train, export, report) with the Python running Snakemake.
"""

import json
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


from altgrad.analysis import matrix as M
from altgrad.analysis.budget import BudgetExceeded
from altgrad.errors import AltgradError

SCHEMA = "workflow/schemas/config.schema.yaml"
# The CLI of the same Python (and altgrad install) that runs Snakemake.
ALTGRAD = f"{shlex.quote(sys.executable)} -m altgrad.cli"

config.update(M.normalize_scalars(config))  # YAML 1.2 numbers (3e-4), typed --config values
try:
    # every problem at once: schema, each run's RunConfig, formats, duplicate ids, block size
    EXP = M.load_experiment(config, schema=Path(workflow.basedir) / SCHEMA, data_root="data")
except AltgradError as error:
    raise WorkflowError(f"invalid altgrad config (no job started)\n{error}") from None
validate(config, SCHEMA)  # structure already checked above; this fills in schema defaults

LIB_HASH = M.library_hash()  # source of altgrad.{quantization,nn,optim,training}
RUNS = EXP.runs  # the comparison matrix: what export and the report read
TRAIN_RUNS = EXP.train_runs  # what the train rule can make: RUNS and the scaling sweep's runs
CORPUS = EXP.corpus["name"]
DATA = f"data/{CORPUS}"

if workflow.is_main_process:  # not again in job subprocesses (slurm, run: blocks)
    print(EXP.budget_report(), file=sys.stderr)
    try:
        EXP.check_budget()
    except BudgetExceeded as error:
        raise WorkflowError(f"over budget, not starting:\n{error}") from None


wildcard_constraints:
    corpus=re.escape(CORPUS),
    run="|".join(re.escape(r) for r in TRAIN_RUNS),


localrules:
    all,
    prepare,
    export,
    report,


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/scaling.smk"


rule all:
    default_target: True
    input:
        "results/report.html",
