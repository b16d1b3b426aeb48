# Collect every configured run into tables, then render the report from them, the runs'
# configs (shown, and priced with the `budget` section's settings) and the corpus's meta.json.
# Both commands read all their inputs before they write (a damaged run file is named with its
# run and the command that re-creates it), and the outputs are update(): a failing export or
# report leaves the previous tables and page in place (Snakemake restores them). Both carry the
# hash of the code that makes tables and pages from runs (as the train rule carries the
# library's): a changed verdict or table reruns them, and `-n` says "Params have changed".

REPORT_CODE = "altgrad-report-" + library_hash(
    ("analysis", "experiment", "scaling_laws.py")
)


rule export:
    input:
        steps=matrix_run_files("steps.parquet"),
        summaries=matrix_run_files("summary.json"),
        labels=matrix_run_files("run.json"),
    output:
        metrics=update("results/metrics.parquet"),
        summary=update("results/summary.parquet"),
        csv=report(
            update("results/summary.csv"),
            category="Results",
            labels={"table": "summary"},
        ),
    log:
        "results/logs/export.log",
    params:
        dirs=lambda wildcards, input: parent_dirs(input.summaries),
        code=REPORT_CODE,
    shell:
        "altgrad export --metrics {output.metrics} --summary {output.summary} --csv {output.csv} "
        "{params.dirs} > {log} 2>&1"


rule report:
    input:
        summary="results/summary.parquet",
        metrics="results/metrics.parquet",
        configs=matrix_run_files("config.yaml"),
        meta=f"{DATA}/meta.json",
    output:
        html=report(
            update("results/report.html"),
            category="Results",
            labels={"table": "report"},
        ),
        figures=report(
            update(directory("results/figures")),
            patterns=["{name}.png"],
            category="Figures",
        ),
    log:
        "results/logs/report.log",
    params:
        budget=shlex.join(EXP.budget_args()),
        code=REPORT_CODE,
    shell:
        "altgrad report --summary {input.summary} --metrics {input.metrics} --run-configs {input.configs} "
        '--corpus {input.meta} {params.budget} --out {output.html} --figures {output.figures} --command "$ALTGRAD_INVOCATION" '
        "> {log} 2>&1"
