# One training job per configured run id (the matrix's and the scaling sweep's).
#
# params carry the run's full resolved config, one param per section (so changing any
# setting of one run reruns exactly that run, and `snakemake -n` shows the section that
# changed), and the hash of the altgrad code a run depends on (so a changed quantizer or
# optimizer reruns the runs; `-n` says "Params have changed" before money is spent).
# `altgrad train` takes the run directory's lock (one writer per run: a second trainer is
# refused, naming the first's pid), writes the config and labels, then trains; it stops,
# after a checkpoint, when the Snakemake that started it is gone (`--stop-with $PPID`: the
# job shell's parent), so a killed Snakemake leaves no trainer running on. Resumable state
# lives in results/runs/{run}/checkpoints/, which is not a declared output: a killed job
# resumes there. The trainer resumes only state saved under the same config, library code
# and corpus; other state is moved aside, never deleted (altgrad.training.trainer), whether
# Snakemake or a person runs `altgrad train`. The outputs are update(): while a rerun runs
# and when it fails, the previous results stay (Snakemake restores them).

RUN_SECTIONS = ("data", "model", "train", "precision", "optimizer", "tracking")


rule train:
    input:
        unpack(train_inputs),
    output:
        steps=update("results/runs/{run}/steps.parquet"),
        summary=update("results/runs/{run}/summary.json"),
        config=update("results/runs/{run}/config.yaml"),
        labels=update("results/runs/{run}/run.json"),
    log:
        "results/logs/train/{run}.log",
    benchmark:
        "results/benchmarks/train/{run}.tsv"
    threads: train_resource("threads")
    resources:
        gpu=train_resource("gpu"),
        mem_mb=train_resource("mem_mb"),
        runtime=train_resource("runtime"),
    params:
        **{section: run_config_line(section) for section in RUN_SECTIONS},
        labels=lambda wildcards: json.dumps(
            TRAIN_RUNS[wildcards.run].labels(), sort_keys=True
        ),
        code=f"altgrad-library-{LIB_HASH}",
        dir=lambda wildcards, output: os.path.dirname(output.steps),
    shell:
        "altgrad train --config-lines {params.data:q} {params.model:q} {params.train:q} {params.precision:q} "
        "{params.optimizer:q} {params.tracking:q} --labels {params.labels:q} --out {params.dir} "
        "--run-id {wildcards.run} --threads {threads} --stop-with $PPID --quiet > {log} 2>&1"
