# Tokenize the configured corpus: data/{corpus}/train.bin, val.bin (uint16, EOT between
# documents, split by document) and meta.json. `params.corpus` is the corpus config, so
# changing it re-tokenizes (and, through the new .bin files, retrains everything).
#
# `--block-size`: the runs' largest context length; a corpus too small for it fails here and
# writes nothing. It is a param derived from the output (a function of `output`), which
# Snakemake does not track: a model's context length is a check on the tokens, not an input
# of them, so changing it must not re-tokenize. The outputs are update(): a prepare that
# fails leaves the previous corpus in place (Snakemake restores it) instead of deleting it.


rule prepare:
    input:
        local_corpus_files,
    output:
        train=update(f"{DATA}/train.bin"),
        val=update(f"{DATA}/val.bin"),
        meta=update(f"{DATA}/meta.json"),
    log:
        f"results/logs/prepare/{CORPUS}.log",
    benchmark:
        f"results/benchmarks/prepare/{CORPUS}.tsv"
    threads: workflow.cores
    params:
        corpus=EXP.corpus_json(),
        args=shlex.join(EXP.prepare_args()),
        out=lambda wildcards, output: os.path.dirname(output.meta),
        block_size=lambda wildcards, output: MAX_BLOCK_SIZE,
    shell:
        "altgrad prepare {params.args} --out {params.out} --block-size {params.block_size} --workers {threads} "
        "> {log} 2>&1"
