# Collect every configured run into tables, then render the report from them, the runs'
# configs (shown, and priced with the `budget` section's settings) and the corpus's meta.json.


rule export:
    input:
        steps=run_dirs(RUNS, "steps.parquet"),
        summaries=run_dirs(RUNS, "summary.json"),
        labels=run_dirs(RUNS, "run.json"),
    output:
        metrics="results/metrics.parquet",
        summary="results/summary.parquet",
        csv=report(
            "results/summary.csv", category="Results", labels={"table": "summary"}
        ),
    log:
        "results/logs/export.log",
    params:
        dirs=lambda wildcards, input: parent_dirs(input.summaries),
    shell:
        "altgrad export --metrics {output.metrics} --summary {output.summary} --csv {output.csv} "
        "{params.dirs} > {log} 2>&1"


rule report:
    input:
        summary="results/summary.parquet",
        metrics="results/metrics.parquet",
        configs=run_dirs(RUNS, "config.yaml"),
        meta=f"{DATA}/meta.json",
    output:
        html=report(
            "results/report.html", category="Results", labels={"table": "report"}
        ),
        figures=report(
            directory("results/figures"), patterns=["{name}.png"], category="Figures"
        ),
    log:
        "results/logs/report.log",
    params:
        budget=shlex.join(EXP.budget_args()),
    shell:
        "altgrad report --summary {input.summary} --metrics {input.metrics} --run-configs {input.configs} "
        '--corpus {input.meta} {params.budget} --out {output.html} --figures {output.figures} --command "$ALTGRAD_INVOCATION" '
        "> {log} 2>&1"
