"""altgrad pipeline: corpus -> tokens -> one training job per run -> export -> report.

    snakemake --cores 1 results/report.html   # the embedded default (config/config.yaml), CPU
    snakemake --profile runpod                # the H100 matrix (config/runpod.yaml)
    snakemake -n [--profile NAME]             # plan only: jobs + the budget table
    snakemake --cores 1 results/calibration.json   # time each kind of job here; the table then prices from it

Before any job (workflow/rules/common.smk): the config files are read once, as YAML 1.2 (a
quoted value stays a string; a malformed file is named with its line), and loaded by
altgrad.experiment.load_experiment (checked against its schema and the RunConfig validator,
every problem in one error, defaults filled in from the schema), expanded into runs, priced and
the budget table printed once. While Snakemake builds the jobs, the prepared corpus is checked
against its meta.json and the jobs of the requested targets against budget.usd. A bad input is
refused with exit code 2 before any job starts, one line per problem (what, where, the fix).
Every key: config/README.md. Rules are thin: each is one call of the `altgrad` CLI.

Nothing that took compute is lost to a failing job: the outputs of prepare, train, export and
report are marked update(), so Snakemake keeps them while the job runs and restores them when
it fails; checkpoints are not outputs at all (the trainer moves stale ones aside).

Software: one pip install (`pip install -e .`; see the README) provides every rule's tool, the
`altgrad` CLI of the Python that runs Snakemake, so no rule declares a conda environment or a
container and `snakemake --lint`'s advice to do so does not apply. Every rule runs the same
package, and on a GPU pod torch must be the image's CUDA build, which a per-rule conda
environment would replace.
"""

from snakemake.utils import min_version

min_version("9.0")

WORKFLOW_CONFIGFILE = "config/config.yaml"  # the embedded default


# First, before Snakemake's own YAML 1.1 reading of the config file (`configfile:`), whose
# error names neither file nor line: common.smk reads the config files itself.
include: "workflow/rules/common.smk"


configfile: WORKFLOW_CONFIGFILE


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/scaling.smk"
include: "workflow/rules/calibrate.smk"


rule all:
    default_target: True
    input:
        "results/report.html",
