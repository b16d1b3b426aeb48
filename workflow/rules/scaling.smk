# The scaling study (config `scaling` block): `snakemake --cores N results/scaling/report.html`.
#
# Not part of `all`: the default target never trains the sweep. Every sweep point is a
# normal run of the train rule (results/runs/scale-{format}-c{budget}-d{width}/, same params,
# staleness and resume), trained on its planned C / flops_per_token tokens; this rule reads
# their run.json (format, budget), config.yaml (shape, steps) and summary.json files, fits
# per format and writes results/scaling/: points, optima, fits and chinchilla tables
# (parquet), isoflop.png, report.html and section.html (the page's body, for another page
# to embed).


rule scaling_report:
    input:
        summaries=sweep_run_files("summary.json"),
        labels=sweep_run_files("run.json"),
        configs=sweep_run_files("config.yaml"),
    output:
        html=report(
            "results/scaling/report.html",
            category="Scaling",
            labels={"table": "scaling"},
        ),
        figure=report(
            "results/scaling/isoflop.png",
            category="Scaling",
            labels={"figure": "isoFLOP"},
        ),
        fits="results/scaling/fits.parquet",
        chinchilla="results/scaling/chinchilla.parquet",
        optima="results/scaling/optima.parquet",
        points="results/scaling/points.parquet",
        section="results/scaling/section.html",
    log:
        "results/logs/scaling.log",
    params:
        runs=lambda wildcards, input: parent_dirs(input.summaries),
        out=lambda wildcards, output: os.path.dirname(output.fits),
        n_boot=lambda wildcards: EXP.config["scaling"]["n_boot"],
        seed=lambda wildcards: EXP.config["scaling"]["seed"],
        code=REPORT_CODE,
    shell:
        "altgrad scaling {params.runs} --out {params.out} --n-boot {params.n_boot} --seed {params.seed} "
        '--command "$ALTGRAD_INVOCATION" > {log} 2>&1'
