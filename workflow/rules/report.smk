# Collect every configured run into tables, then render the report.


rule export:
    input:
        steps=expand("results/runs/{run}/steps.parquet", run=RUNS),
        summaries=expand("results/runs/{run}/summary.json", run=RUNS),
        labels=expand("results/runs/{run}/run.json", run=RUNS),
    output:
        metrics="results/metrics.parquet",
        summary="results/summary.parquet",
        csv=report("results/summary.csv", category="Results", labels={"table": "summary"}),
    params:
        dirs=expand("results/runs/{run}", run=RUNS),
    log:
        "results/logs/export.log",
    shell:
        "{ALTGRAD} export --metrics {output.metrics} --summary {output.summary} --csv {output.csv} "
        "{params.dirs} > {log} 2>&1"


# The command line shown in the report's footer: not a param, so another invocation
# (e.g. `snakemake -n`) does not make the report stale.
INVOCATION = shlex.join(["snakemake", *sys.argv[1:]])


rule report:
    input:
        summary="results/summary.parquet",
        metrics="results/metrics.parquet",
    output:
        html=report("results/report.html", category="Results", labels={"table": "report"}),
        figures=report(directory("results/figures"), patterns=["{name}.png"], category="Figures"),
    params:
        experiment=json.dumps(EXP.raw, sort_keys=True),
    log:
        "results/logs/report.log",
    shell:
        "printf '%s' {params.experiment:q} | "
        "{ALTGRAD} report --results results --config - --out {output.html} --figures {output.figures} "
        "--command {INVOCATION:q} > {log} 2>&1"
