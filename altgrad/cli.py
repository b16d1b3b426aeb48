"""``altgrad`` command line: what the pipeline's rules call.

Each subcommand is one ``_add_<name>(subparsers)`` function that declares its arguments
and sets ``func`` to a handler taking the parsed args (returning an exit code or None);
``SUBCOMMANDS`` registers it. Expected failures raise :class:`AltgradError`: one line on
stderr, exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from altgrad import __version__
from altgrad.errors import AltgradError
from altgrad.experiment.calibration import CALIBRATION_FILE
from altgrad.experiment.config import default

PROG = "altgrad"
EXIT_USAGE = 2


# ---------------------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------------------
def _add_prepare(sub: argparse._SubParsersAction) -> None:
    from altgrad.training.corpus import DEFAULT_SOURCE, SOURCES

    p = sub.add_parser(
        "prepare",
        help="tokenize a corpus into train.bin, val.bin and meta.json",
        description=(
            "Tokenize a corpus (GPT-2 BPE, offline) into OUT/train.bin, OUT/val.bin "
            "(uint16 ids, end-of-text after each document) and OUT/meta.json. "
            "The split is by document and deterministic in --seed."
        ),
    )
    p.add_argument(
        "--source",
        choices=SOURCES,
        default=DEFAULT_SOURCE,
        help=f"corpus source (default: {DEFAULT_SOURCE})",
    )
    p.add_argument("--out", required=True, help="output directory, e.g. data/eurlex-sample")
    p.add_argument(
        "--paths",
        nargs="+",
        metavar="GLOB",
        help="--source local: .jsonl/.parquet/.txt files (globs, ** allowed)",
    )
    p.add_argument(
        "--field",
        default=None,
        help="--source local: text field of .jsonl/.parquet rows (default: text)",
    )
    p.add_argument(
        "--split",
        default=None,
        help="--source lex_glue|multi_eurlex: dataset split (default: train)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=default("corpus", "val_fraction"),
        help="share of documents for validation (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=default("corpus", "seed"), help="split seed (default: %(default)s)")
    p.add_argument(
        "--compact-vocab",
        action="store_true",
        help="remap the ids that occur to 0..K-1 (smaller softmax for tiny models)",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="tokenizer threads (default: all cores)"
    )
    p.add_argument(
        "--block-size", type=int, default=None,
        help="the largest context length the corpus must serve: a split shorter than BLOCK_SIZE + 1 tokens "
             "is an error and nothing is written (the pipeline passes its runs' largest)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> None:
    from altgrad.training.data import prepare

    if args.source == "local" and not args.paths:
        raise AltgradError("--source local needs --paths GLOB [GLOB ...]")
    source: dict[str, object] = {"name": args.source}
    given = {"paths": args.paths, "field": args.field, "split": args.split}
    source.update({k: v for k, v in given.items() if v is not None})
    # normalize_source rejects options the chosen source does not take

    t0 = time.perf_counter()
    meta = prepare(
        source,
        args.out,
        val_fraction=args.val_fraction,
        seed=args.seed,
        compact_vocab=args.compact_vocab,
        workers=args.workers,
        progress=False if args.quiet else None,
        block_size=args.block_size,
    )
    if not args.quiet:
        d, t = meta["documents"], meta["tokens"]
        print(
            f"{args.out}: documents train={d['train']} val={d['val']}, "
            f"tokens train={t['train']} val={t['val']}, vocab_size={meta['vocab_size']}, "
            f"{time.perf_counter() - t0:.2f}s"
        )


# ---------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train one run (resumes from OUT/checkpoints when they belong to it)",
        description=(
            "Train one run from a run config; writes OUT/steps.parquet and OUT/summary.json. It resumes "
            "from OUT/checkpoints when they were saved under the same config, library code and corpus; "
            "otherwise they are moved aside (never deleted) and the run starts over."
        ),
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", help="run config YAML")
    src.add_argument("--config-lines", nargs="+", metavar="LINE",
                     help="the run config as YAML lines (the pipeline passes one per section); written to "
                          "OUT/config.yaml, which the run is then trained from")
    p.add_argument("--labels", default=None, metavar="JSON",
                   help="what identifies the run in tables (the pipeline's run.json); written to OUT/run.json")
    p.add_argument("--out", required=True, help="run directory, e.g. results/runs/e5m2-manifold-s0")
    p.add_argument("--run-id", default=None, help="run id (default: the name of --out)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; set it to the cores the job owns, "
                        "or parallel jobs spin against each other)")
    p.add_argument("--stop-with", type=int, default=None, metavar="PID",
                   help="save a checkpoint and stop when process PID is gone (the pipeline passes Snakemake's pid, "
                        "so a train job does not run on after Snakemake is killed)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> None:
    import json

    import torch

    from altgrad.files import atomic_open
    from altgrad.training.allocator import keep_freed_memory
    from altgrad.training.config import RunConfig
    from altgrad.training.run_lock import ProcessWatch, RunDirLock
    from altgrad.training.trainer import train

    if args.stop_with is not None and not ProcessWatch(args.stop_with).alive():
        raise AltgradError(f"--stop-with {args.stop_with}: no such process")
    try:
        labels = None if args.labels is None else json.loads(args.labels)
    except ValueError as e:
        raise AltgradError(f"--labels is not valid JSON ({e})") from None
    # One writer per run directory: the lock comes before the config and labels are written,
    # so a second trainer cannot change them under a running one.
    with RunDirLock(args.out):
        config = args.config
        if args.config_lines:
            config = Path(args.out) / "config.yaml"
            with atomic_open(config, "w") as f:
                f.write("".join(f"{line}\n" for line in args.config_lines))
        if labels is not None:
            with atomic_open(Path(args.out) / "run.json", "w") as f:
                f.write(json.dumps(labels, sort_keys=True) + "\n")
        if args.threads:
            torch.set_num_threads(args.threads)
        keep_freed_memory()  # a step reuses its temporaries' pages (the default job: 18.0 -> 13.5 s)
        summary = train(RunConfig.from_yaml(config), args.out, run_id=args.run_id, progress=not args.quiet,
                        stop_with=args.stop_with)
    detail = f"diverged at step {summary['diverged_at']}" if summary["status"] == "diverged" else "completed"
    print(f"{summary['run_id']}: {detail}, {summary['steps']} steps, best val loss {summary['best_val_loss']}")


# ---------------------------------------------------------------------------------------
# export, report, plan (experiment-level: what the pipeline's export/report rules and
# the budget table use)
# ---------------------------------------------------------------------------------------
def _unreadable(path: Path) -> str | None:
    """Why ``path`` (a .parquet or .json output) cannot be read, or None when it can."""
    if not path.is_file():
        return "is missing"
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            pq.read_table(path, page_checksum_verification=True)  # the trainer writes a CRC per page
        else:
            import json

            if not isinstance(json.loads(path.read_text(encoding="utf-8")), dict):
                return "is corrupt (not a JSON object)"
    except Exception as e:  # noqa: BLE001 - pyarrow and json raise several types for a damaged file
        return f"is corrupt ({type(e).__name__}: {e})"
    return None


def _check_run_dirs(dirs: Sequence[str], files: Sequence[str]) -> None:
    """Every run's outputs readable, checked before anything is written: a damaged one is
    named with its run and the command that re-creates it (the run's train job, which
    resumes from its last checkpoint). ``run.json`` is optional (runs made without the
    pipeline have none) but must be readable when present."""
    for d in map(Path, dirs):
        for name in files:
            path = d / name
            if name == "run.json" and not path.exists():
                continue
            why = _unreadable(path)
            if why is None:
                continue
            if why == "is missing":
                why = "is missing: the run has not finished"
            raise AltgradError(
                f"run {d.name}: {path} {why}; re-create it by rerunning the run's train job, which resumes from "
                f"its last checkpoint: `snakemake --forcerun {d / 'summary.json'}` (without Snakemake: "
                f"`altgrad train --config {d / 'config.yaml'} --out {d}`)"
            )


def _load_experiment(paths: Sequence[str], data_root: str, calibration: str | None = None):
    from altgrad.experiment import load_experiment, read_config_files

    return load_experiment(read_config_files(paths), data_root=data_root, source=", ".join(paths),
                           calibration=calibration)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="collect run directories into metrics.parquet and summary.parquet/.csv",
        description=(
            "Collect finished run directories (steps.parquet, summary.json, run.json) into one "
            "metrics table (every step of every run) and one summary table (one row per run). "
            "Files are written atomically."
        ),
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories, e.g. results/runs/e5m2-adamw-s0")
    p.add_argument("--metrics", default="results/metrics.parquet", help="default: results/metrics.parquet")
    p.add_argument("--summary", default="results/summary.parquet", help="default: results/summary.parquet")
    p.add_argument("--csv", default=None, help="also write the summary as CSV here")
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> None:
    from altgrad.analysis.export import export_runs

    _check_run_dirs(args.runs, ("steps.parquet", "summary.json", "run.json"))  # before anything is written
    metrics, summary = export_runs(args.runs, args.metrics, args.summary, args.csv)
    n_div = int((summary["status"] == "diverged").sum())
    print(f"exported {len(summary)} runs ({n_div} diverged), {len(metrics)} metric rows "
          f"-> {args.metrics}, {args.summary}")


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="render results/report.html from the exported tables",
        description=(
            "Render the HTML report from the exported summary and metrics tables, with each run's "
            "resolved config (shown, and priced for the budget table on --device at --mfu and --price) "
            "and the corpus's meta.json."
        ),
    )
    p.add_argument("--summary", default="results/summary.parquet", help="default: results/summary.parquet")
    p.add_argument("--metrics", default="results/metrics.parquet", help="default: results/metrics.parquet")
    p.add_argument("--out", default="results/report.html", help="output HTML (default: results/report.html)")
    p.add_argument("--run-configs", nargs="+", default=[], metavar="FILE",
                   help="the runs' config.yaml files (RUN_DIR/config.yaml; the directory is named by the run id)")
    p.add_argument("--corpus", default=None, metavar="META_JSON", help="the prepared corpus's meta.json")
    g = p.add_argument_group("budget planned (the experiment's `budget` section)")
    g.add_argument("--device", default=default("budget", "device"), help="h100 | a100 | cpu (default: %(default)s)")
    g.add_argument("--mfu", type=float, default=default("budget", "mfu"),
                   help="model FLOPs utilisation (default: %(default)s)")
    g.add_argument("--price", type=float, default=None, metavar="USD_PER_HOUR", help="default: the device's")
    g.add_argument("--peak-flops", type=float, default=None, help="default: the device's")
    g.add_argument("--budget-usd", type=float, default=None, metavar="USD", help="the cap, shown beside the plan")
    p.add_argument("--figures", default=None, help="also write the figures as PNGs into this directory")
    p.add_argument("--command", default=None, help="the command to show in the reproducibility footer")
    p.set_defaults(func=_run_report)


def _run_report(args: argparse.Namespace) -> None:
    from altgrad.analysis.report import build_report

    for table in (args.summary, args.metrics):  # before anything is written
        why = _unreadable(Path(table))
        if why is not None:
            raise AltgradError(f"{table} {why}; re-create it with `snakemake --forcerun export` (without Snakemake: "
                               f"`altgrad export --metrics {args.metrics} --summary {args.summary} RUN_DIR ...`)")
    if args.corpus is not None and Path(args.corpus).name == "meta.json":
        from altgrad.training.data import load_meta

        load_meta(Path(args.corpus).parent)  # a damaged meta.json: its file and the command that re-creates it
    out = build_report(args.summary, args.metrics, args.out, run_configs=args.run_configs, corpus_meta=args.corpus,
                       device=args.device, mfu=args.mfu, price=args.price, peak_flops=args.peak_flops,
                       budget_usd=args.budget_usd, command=args.command or " ".join(sys.argv),
                       figures_dir=args.figures)
    print(f"wrote {out}")


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="print the budget table of a config, or (--budget-usd) a compute-optimal plan",
        description=(
            "Validate an experiment config (every problem at once), expand it into runs and "
            "print the budget table: FLOPs, device-hours and USD per job, with totals. "
            "Exits 2 on an invalid config, and with --check also when over budget.usd. "
            "With --budget-usd: split that budget over the matrix's runs and print, per format, the "
            "compute-optimal model shape and token count, from the format's fitted N*(C) in --fits "
            "(the scaling study's results/scaling/fits.parquet) when there is one, else Chinchilla "
            "(D = 20 N); then the runs' budget table. Exits 2 when a plan is infeasible."
        ),
    )
    p.add_argument(
        "--config", action="append", default=[], metavar="FILE",
        help="experiment config (repeatable, later files win; default: config/config.yaml)",
    )
    p.add_argument("--data-root", default="data", help="prepared corpora, for the vocabulary and block size checks")
    p.add_argument("--calibration", default=CALIBRATION_FILE, metavar="JSON",
                   help="price from this calibration (`altgrad calibrate`) when it exists and was measured on "
                        "budget.device (default: %(default)s, as the pipeline)")
    p.add_argument("--check", action="store_true", help="fail when the total exceeds budget.usd")
    p.add_argument("--runs", action="store_true", help="print only the run ids, one per line")
    g = p.add_argument_group("compute-optimal plan")
    g.add_argument("--budget-usd", type=float, default=None, metavar="USD",
                   help="plan model size and tokens per run for this budget (split over the matrix's runs)")
    g.add_argument("--device", default=None, help="h100 | a100 | cpu (default: the config's budget.device)")
    g.add_argument("--price", type=float, default=None, metavar="USD_PER_HOUR",
                   help="device price per hour (default: the config's with its device, else the device's)")
    g.add_argument("--mfu", type=float, default=None, help="model FLOPs utilisation (default: the config's budget.mfu)")
    g.add_argument("--formats", nargs="+", default=None, metavar="FORMAT",
                   help="plan only the matrix's runs of these formats (the budget is split over them)")
    g.add_argument("--fits", default="results/scaling/fits.parquet",
                   help="fitted laws of the scaling study (default: results/scaling/fits.parquet; absent = Chinchilla)")
    g.add_argument("--block-size", type=int, default=None, help="context length (default: the runs')")
    g.add_argument("--batch-size", type=int, default=None,
                   help="sequences per optimizer step (default: the runs' batch_size x grad_accum)")
    g.add_argument("--vocab-size", type=int, default=None,
                   help="vocabulary (default: the runs', else the prepared corpus's, else 50257)")
    g.add_argument("--attention", choices=("causal", "full", "none"), default="causal",
                   help="attention FLOPs convention of flops_per_token (default: causal)")
    p.set_defaults(func=_run_plan)


def _run_plan(args: argparse.Namespace) -> None:
    exp = _load_experiment(args.config or ["config/config.yaml"], args.data_root, args.calibration)
    if args.runs:
        print("\n".join(exp.run_ids))
        return
    if args.budget_usd is None:
        extra = [name for name in ("device", "price", "mfu", "formats", "block_size", "batch_size", "vocab_size")
                 if getattr(args, name) is not None]
        if extra:
            raise AltgradError(f"--{extra[0].replace('_', '-')} needs --budget-usd (it shapes a compute-optimal plan)")
        print(exp.budget_report())
        if args.check:
            exp.check_budget()
        return
    from altgrad.experiment.planning import plan_budget
    from altgrad.experiment.pricing import dollars

    plan = plan_budget(exp.runs.values(), exp.budget, args.budget_usd, meta=exp.meta, device=args.device,
                       price=args.price, mfu=args.mfu, formats=args.formats, fits_path=args.fits,
                       block_size=args.block_size, batch_size=args.batch_size, vocab_size=args.vocab_size,
                       attention=args.attention)
    print(plan.describe())
    if plan.refused:
        least = [f.least_usd for f in plan.refused]
        raise AltgradError(
            f"infeasible plan for {', '.join(f.format for f in plan.refused)} (each reason is printed above, "
            "REFUSED); " + (f"the least budget that works for every format is {dollars(max(least))}"
                            if None not in least else "for some, no budget up to 1e12 times this one works"))


# ---------------------------------------------------------------------------------------
# calibrate (what the pipeline's calibrate rule calls; the budget table prices from its file)
# ---------------------------------------------------------------------------------------
def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="time each kind of job of a config on this machine; the budget table then prices from it",
        description=(
            "Group the experiment's train runs into kinds (recipe, optimizer, shape, batch, device, autocast, "
            "compile: not seed or lr), build each kind's real trainer on the prepared corpus in this process and "
            "time --steps training steps after --warmup, the FP32 shadow pass, the rank probe, an eval batch and "
            "a checkpoint; then time one short real `altgrad train` process of the cheapest kind for the per-job "
            "start-up. Writes OUT (JSON: device, hardware, torch, threads, date, startup_s, per kind step_s, "
            "tokens_per_s, shadow_s, eval_batch_s, ... and its run ids), which `altgrad plan` and the pipeline "
            "read from results/calibration.json."
        ),
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", action="append", default=[], metavar="FILE",
                     help="experiment config (repeatable, later files win; default: config/config.yaml)")
    src.add_argument("--experiment-json", default=None, metavar="JSON",
                     help="the experiment config as one JSON object (the pipeline passes its merged config)")
    p.add_argument("--data-root", default="data", help="prepared corpora (default: data)")
    p.add_argument("--out", default=CALIBRATION_FILE, help="the calibration file (default: %(default)s)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per kind (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per kind first (default: %(default)s)")
    p.add_argument("--startup-steps", type=int, default=5,
                   help="steps of the start-up probe's `altgrad train` (default: %(default)s)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="aim to take this long: a kind times fewer steps (at least 5) once its share is spent "
                        "(default: 30 on a CPU, 120 with a GPU; 0: always --steps)")
    p.add_argument("--include-sweep", action="store_true", help="also the scaling sweep's runs")
    p.add_argument("--quiet", action="store_true", help="no line per kind")
    p.set_defaults(func=_run_calibrate)


def _run_calibrate(args: argparse.Namespace) -> None:
    from altgrad.experiment.calibrate import calibrate

    if args.experiment_json is not None:
        import json

        from altgrad.experiment import load_experiment

        try:
            config = json.loads(args.experiment_json)
        except ValueError as e:
            raise AltgradError(f"--experiment-json is not valid JSON ({e})") from None
        paths = ["--experiment-json"]
        exp = load_experiment(config, data_root=args.data_root, source="the pipeline's config")
    else:
        paths = args.config or ["config/config.yaml"]
        exp = _load_experiment(paths, args.data_root)
    if exp.meta is None:
        raise AltgradError(f"calibrate needs the prepared corpus: {args.data_root}/{exp.corpus['name']} is missing or "
                           f"was made from another corpus config; make it with `snakemake --cores 1 "
                           f"{exp.corpus_dir}/meta.json` (or `altgrad prepare`)")
    log = None if args.quiet else (lambda line: print(line, flush=True))
    result = calibrate(exp, args.out, steps=args.steps, warmup=args.warmup, startup_steps=args.startup_steps,
                       include_sweep=args.include_sweep, time_budget=args.time_budget, config_files=paths,
                       log=log)
    print(f"wrote {args.out}: {len(result['kinds'])} kinds on {result['device']} ({result['hardware']}), start-up "
          f"{result['startup_s']:.2f} s per job, {result['wall_s']:.1f} s")


# ---------------------------------------------------------------------------------------
# scaling (the scaling study: what the pipeline's scaling_report rule calls)
# ---------------------------------------------------------------------------------------
def _add_scaling(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scaling",
        help="fit per-format scaling laws to the scaling sweep's runs and write results/scaling/",
        description=(
            "Read every given run of the config's `scaling` sweep (run.json: format and budget; "
            "config.yaml: shape and steps; summary.json: what it spent and its final val loss), fit per "
            "format L(C) = k*C^a + Linf and N*(C) = k'*C^b (D* = C/(6N*)) from the isoFLOP curves, and "
            "write OUT/points.parquet, optima.parquet, fits.parquet, chinchilla.parquet, isoflop.png, "
            "section.html and report.html (verdict: how the format gap to bf16 changes with compute)."
        ),
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="the sweep's run directories, e.g. results/runs/scale-*")
    p.add_argument("--out", default="results/scaling", help="output directory (default: results/scaling)")
    p.add_argument("--n-boot", type=int, default=default("scaling", "n_boot"),
                   help="bootstrap resamples (config: scaling.n_boot; default: %(default)s)")
    p.add_argument("--seed", type=int, default=default("scaling", "seed"),
                   help="bootstrap seed (config: scaling.seed; default: %(default)s)")
    p.add_argument("--command", default=None, help="the command to show on the page")
    p.set_defaults(func=_run_scaling)


def _run_scaling(args: argparse.Namespace) -> None:
    from altgrad.analysis.report import build_scaling_report

    _check_run_dirs(args.runs, ("summary.json", "run.json"))  # before anything is written
    paths = build_scaling_report(args.runs, args.out, n_boot=args.n_boot, seed=args.seed,
                                 command=args.command or " ".join(sys.argv))
    print("wrote " + ", ".join(str(p) for p in paths.values()))


# ---------------------------------------------------------------------------------------
# registry and entry point
# ---------------------------------------------------------------------------------------
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_prepare,
    _add_train,
    _add_export,
    _add_report,
    _add_plan,
    _add_calibrate,
    _add_scaling,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="altgrad: 8-bit float formats vs geometry-aware updates, a test bench.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 usage or expected error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except AltgradError as e:
        print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


def entry() -> None:
    """The `altgrad` command: :func:`main`, then the process ends without tearing the interpreter
    down. With torch loaded that teardown costs 0.9 s of every process here (2.4 vs 3.3 s for a
    script that imports the trainer and takes one AdamW step), 6% of a default train job, and
    nothing is left to do by then: every file is written and closed by the commands. W&B keeps
    its normal exit (its service is stopped by an exit hook)."""
    code = main()
    if "wandb" in sys.modules:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
