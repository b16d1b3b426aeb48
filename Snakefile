"""altgrad pipeline: corpus -> tokens -> one training job per run -> export -> report.

    snakemake --cores 1 results/report.html   # the embedded default (config/config.yaml), CPU
    snakemake --profile runpod                # the H100 matrix (config/runpod.yaml)
    snakemake -n [--profile NAME]             # plan only: jobs + the budget table

Before any job (workflow/rules/common.smk): the config is loaded once by
altgrad.experiment.load_experiment (normalised, checked against its schema and the RunConfig
validator, every problem in one error, defaults filled in from the schema), expanded into runs,
priced and the budget table printed once; over budget.usd the workflow refuses to start.
Every key: config/README.md. Rules are thin: each is one call of the `altgrad` CLI.

Software: one pip install (`pip install -e .`; see the README) provides every rule's tool, the
`altgrad` CLI of the Python that runs Snakemake, so no rule declares a conda environment or a
container and `snakemake --lint`'s advice to do so does not apply. Every rule runs the same
package, and on a GPU pod torch must be the image's CUDA build, which a per-rule conda
environment would replace.
"""

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/scaling.smk"


rule all:
    default_target: True
    input:
        "results/report.html",
