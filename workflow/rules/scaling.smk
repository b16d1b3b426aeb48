# The scaling study (config `scaling` block): `snakemake --cores N results/scaling/report.html`.
#
# Not part of `all`: the default target never trains the sweep. Every sweep point is a
# normal run of the train rule (results/runs/scale-{format}-c{budget}-d{width}/, same params,
# staleness and resume), trained on its planned C / flops_per_token tokens; this rule reads
# their summary.json files, fits per format and writes results/scaling/: points, optima,
# fits and chinchilla tables (parquet), isoflop.png, report.html and section.html (the
# page's body, for the main report to embed).

SCALING_RUNS = EXP.scaling_runs
# The command line shown on the page: not a param, so another invocation does not make it stale.
SCALING_COMMAND = shlex.join(["snakemake", *sys.argv[1:]])


def _scaling_inputs(kind):
    def inputs(wildcards):
        if not SCALING_RUNS:
            raise WorkflowError(
                "results/scaling/report.html needs a `scaling` block in the config (formats, budgets, "
                "sizes; see config/config.yaml and workflow/schemas/config.schema.yaml)"
            )
        return [f"results/runs/{run}/{kind}" for run in SCALING_RUNS]

    return inputs


localrules:
    scaling_report,


rule scaling_report:
    input:
        summaries=_scaling_inputs("summary.json"),
        labels=_scaling_inputs("run.json"),
    output:
        html=report("results/scaling/report.html", category="Scaling", labels={"table": "scaling"}),
        figure=report("results/scaling/isoflop.png", category="Scaling", labels={"figure": "isoFLOP"}),
        fits="results/scaling/fits.parquet",
        chinchilla="results/scaling/chinchilla.parquet",
        optima="results/scaling/optima.parquet",
        points="results/scaling/points.parquet",
        section="results/scaling/section.html",
    params:
        experiment=json.dumps(EXP.raw, sort_keys=True),
        out="results/scaling",
    log:
        "results/logs/scaling.log",
    shell:
        "printf '%s' {params.experiment:q} | "
        "{ALTGRAD} scaling --config - --runs results/runs --out {params.out} "
        "--command {SCALING_COMMAND:q} > {log} 2>&1"
