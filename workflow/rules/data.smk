# Tokenize the configured corpus: data/{corpus}/train.bin, val.bin (uint16, EOT between
# documents, split by document) and meta.json. `params.corpus` is the corpus config, so
# changing it re-tokenizes (and, through the new .bin files, retrains everything).


rule prepare:
    input:
        local_corpus_files,
    output:
        train=f"{DATA}/train.bin",
        val=f"{DATA}/val.bin",
        meta=f"{DATA}/meta.json",
    log:
        f"results/logs/prepare/{CORPUS}.log",
    benchmark:
        f"results/benchmarks/prepare/{CORPUS}.tsv"
    threads: workflow.cores
    params:
        corpus=EXP.corpus_json(),
        args=shlex.join(EXP.prepare_args()),
        out=lambda wildcards, output: os.path.dirname(output.meta),
    shell:
        "altgrad prepare {params.args} --out {params.out} --workers {threads} > {log} 2>&1"
