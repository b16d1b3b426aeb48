# Time each kind of job of the configured matrix on this machine (not a default target):
#     snakemake --cores 1 results/calibration.json
# `altgrad calibrate` builds each kind's real trainer on the prepared corpus in one process
# (a kind: recipe, optimizer, shape, batch, device, autocast, compile; not seed or lr), times a
# few dozen steps, the shadow pass, the rank probe, an eval batch and a checkpoint, and one
# short real `altgrad train` process for the per-job start-up. Every later invocation reads
# results/calibration.json (common.smk) and prices from it the runs whose kind it timed on
# budget.device ("measured" rows of the budget table), the train jobs' runtime too.
#
# params: the merged experiment config (a changed config recalibrates) and the library hash
# (changed code may change the speed). It runs where a train job runs, with a train job's
# threads and GPU (on a cluster: a GPU node, not the login node). The output is update(): a
# failing calibration leaves the previous file in place.


rule calibrate:
    input:
        unpack(calibrate_inputs),
    output:
        update(CALIBRATION),
    log:
        "results/logs/calibrate.log",
    benchmark:
        "results/benchmarks/calibrate.tsv"
    threads: max(EXP.resources(r)["threads"] for r in RUNS)
    resources:
        gpu=max(EXP.resources(r)["gpu"] for r in RUNS),
        mem_mb=max(EXP.resources(r)["mem_mb"] for r in RUNS),
        runtime=30,
    params:
        experiment=json.dumps(CONFIG, sort_keys=True, separators=(",", ":")),
        code=f"altgrad-library-{LIB_HASH}",
        data_root=os.path.dirname(DATA),
    shell:
        "altgrad calibrate --experiment-json {params.experiment:q} --data-root {params.data_root} "
        "--out {output} > {log} 2>&1"
