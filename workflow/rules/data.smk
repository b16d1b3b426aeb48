# Tokenize the configured corpus: data/{corpus}/train.bin, val.bin (uint16, EOT between
# documents, split by document) and meta.json. `params.corpus` is the corpus config, so
# changing it re-tokenizes (and, through the new .bin files, retrains everything).


def _local_corpus_files(wildcards):
    """Source `local`: the files themselves are inputs (editing one re-tokenizes)."""
    src = EXP.corpus["source"]
    if src["name"] != "local":
        return []
    from altgrad.training.corpus import expand_paths

    return [str(p) for p in expand_paths(src["paths"])]


rule prepare:
    input:
        _local_corpus_files,
    output:
        train=f"{DATA}/train.bin",
        val=f"{DATA}/val.bin",
        meta=f"{DATA}/meta.json",
    params:
        corpus=EXP.corpus_json(),
        args=shlex.join(EXP.prepare_args()),
        out=DATA,
    threads: workflow.cores
    log:
        f"results/logs/prepare/{CORPUS}.log",
    benchmark:
        f"results/benchmarks/prepare/{CORPUS}.tsv"
    shell:
        "{ALTGRAD} prepare {params.args} --out {params.out} --workers {threads} > {log} 2>&1"
