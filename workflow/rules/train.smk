# One training job per configured run id (the matrix's and the scaling sweep's).
#
# params carry the run's full resolved config, one param per section (so changing any
# setting of one run reruns exactly that run, and `snakemake -n` shows the section that
# changed), and the hash of the altgrad code a run depends on (so a changed quantizer or
# optimizer reruns the runs; `-n` says "Params have changed" before money is spent).
# Resumable state lives in results/runs/{run}/checkpoints/, which is not a declared
# output (declared outputs are deleted when a job fails): a killed job resumes there.
# The checkpoints are discarded first when they belong to another config, code or corpus
# (the stamp below), so a rerun for a reason never resumes stale state.

RUN_SECTIONS = ("data", "model", "train", "precision", "optimizer", "tracking")


def _config_line(section):
    return lambda wildcards: TRAIN_RUNS[wildcards.run].config_lines()[section]


def _train_resources(key):
    return lambda wildcards: EXP.resources(wildcards.run)[key]


rule train:
    input:
        train=f"{DATA}/train.bin",
        val=f"{DATA}/val.bin",
        meta=f"{DATA}/meta.json",
    output:
        steps="results/runs/{run}/steps.parquet",
        summary="results/runs/{run}/summary.json",
        config="results/runs/{run}/config.yaml",
        labels="results/runs/{run}/run.json",
    params:
        **{section: _config_line(section) for section in RUN_SECTIONS},
        labels=lambda wildcards: json.dumps(TRAIN_RUNS[wildcards.run].labels(), sort_keys=True),
        code=f"altgrad-library-{LIB_HASH}",
        dir="results/runs/{run}",
    threads: lambda wildcards: 4 if TRAIN_RUNS[wildcards.run].config.train.device == "cuda" else 1
    resources:
        gpu=_train_resources("gpu"),
        mem_mb=_train_resources("mem_mb"),
        runtime=_train_resources("runtime"),
    log:
        "results/logs/train/{run}.log",
    benchmark:
        "results/benchmarks/train/{run}.tsv"
    shell:
        """
        printf '%s\\n' {params.data:q} {params.model:q} {params.train:q} {params.precision:q} \\
            {params.optimizer:q} {params.tracking:q} > {output.config}
        printf '%s\\n' {params.labels:q} > {output.labels}
        mkdir -p {params.dir}/checkpoints
        stamp="{params.code}-$(cat {output.config} {input.meta} | sha256sum | cut -c1-16)"
        if [ "$(cat {params.dir}/checkpoints/pipeline.stamp 2>/dev/null)" != "$stamp" ]; then
            rm -f {params.dir}/checkpoints/*.pt {params.dir}/checkpoints/steps.partial.parquet
            printf '%s\\n' "$stamp" > {params.dir}/checkpoints/pipeline.stamp
        fi
        {ALTGRAD} train --config {output.config} --out {params.dir} --run-id {wildcards.run} \\
            --threads {threads} --quiet > {log} 2>&1
        """
