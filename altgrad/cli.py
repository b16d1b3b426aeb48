"""``altgrad`` command line: what the pipeline's rules call.

Each subcommand is one ``_add_<name>(subparsers)`` function that declares its arguments
and sets ``func`` to a handler taking the parsed args (returning an exit code or None);
``SUBCOMMANDS`` registers it. Expected failures raise :class:`AltgradError`: one line on
stderr, exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

from altgrad import __version__
from altgrad.errors import AltgradError

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
        default=0.1,
        help="share of documents for validation (default: 0.1)",
    )
    p.add_argument("--seed", type=int, default=0, help="split seed (default: 0)")
    p.add_argument(
        "--compact-vocab",
        action="store_true",
        help="remap the ids that occur to 0..K-1 (smaller softmax for tiny models)",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="tokenizer threads (default: all cores)"
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
        help="train one run (resumes from OUT/checkpoints if present)",
        description="Train one run from a run config; writes OUT/steps.parquet and OUT/summary.json.",
    )
    p.add_argument("--config", required=True, help="run config YAML")
    p.add_argument("--out", required=True, help="run directory, e.g. results/runs/e5m2-manifold-s0")
    p.add_argument("--run-id", default=None, help="run id (default: the name of --out)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; set it to the cores the job owns, "
                        "or parallel jobs spin against each other)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> None:
    import torch

    from altgrad.training.config import RunConfig
    from altgrad.training.trainer import train

    if args.threads:
        torch.set_num_threads(args.threads)
    summary = train(RunConfig.from_yaml(args.config), args.out, run_id=args.run_id, progress=not args.quiet)
    detail = f"diverged at step {summary['diverged_at']}" if summary["status"] == "diverged" else "completed"
    print(f"{summary['run_id']}: {detail}, {summary['steps']} steps, best val loss {summary['best_val_loss']}")


# ---------------------------------------------------------------------------------------
# export, report, plan (experiment-level: what the pipeline's export/report rules and
# the budget table use)
# ---------------------------------------------------------------------------------------
def _read_experiment_config(paths: Sequence[str]) -> dict:
    """Merge experiment config files in order; ``-`` reads one (JSON or YAML) from stdin."""
    import yaml

    from altgrad.analysis.matrix import (
        ExperimentError,
        _deep_merge,
        load_experiment_files,
    )

    merged: dict = {}
    for path in paths:
        if path == "-":
            try:
                data = yaml.safe_load(sys.stdin.read())
            except yaml.YAMLError as e:
                raise ExperimentError([f"not valid YAML/JSON: {e}"], "<stdin>") from None
            if data is not None and not isinstance(data, dict):
                raise ExperimentError(["expected a mapping at the top level"], "<stdin>")
            _deep_merge(merged, data or {})
        else:
            _deep_merge(merged, load_experiment_files([path]))
    return merged


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

    metrics, summary = export_runs(args.runs, args.metrics, args.summary, args.csv)
    n_div = int((summary["status"] == "diverged").sum())
    print(f"exported {len(summary)} runs ({n_div} diverged), {len(metrics)} metric rows "
          f"-> {args.metrics}, {args.summary}")


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="render results/report.html from the exported tables",
        description="Render the HTML report from RESULTS/summary.parquet and the experiment's budget.",
    )
    p.add_argument("--results", default="results", help="directory with summary.parquet (default: results)")
    p.add_argument("--out", default=None, help="output HTML (default: RESULTS/report.html)")
    p.add_argument(
        "--config", action="append", default=[], metavar="FILE",
        help="experiment config (repeatable, later files win; - = stdin) for the setup and budget tables",
    )
    p.add_argument("--figures", default=None, help="also write the figures as PNGs into this directory")
    p.add_argument("--command", default=None, help="the command to show in the reproducibility footer")
    p.set_defaults(func=_run_report)


def _run_report(args: argparse.Namespace) -> None:
    from altgrad.analysis.report import build_report

    config = _read_experiment_config(args.config) if args.config else None
    out = build_report(args.results, args.out or f"{args.results}/report.html", config,
                       command=args.command or " ".join(sys.argv), figures_dir=args.figures)
    print(f"wrote {out}")


def _add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="validate an experiment config, list its runs and print the budget table",
        description=(
            "Validate an experiment config (every problem at once), expand it into runs and "
            "print the budget table: FLOPs, device-hours and USD per job, with totals. "
            "Exits 2 on an invalid config, and with --check also when over budget.usd."
        ),
    )
    p.add_argument(
        "--config", action="append", default=[], metavar="FILE",
        help="experiment config (repeatable, later files win; - = stdin; default: config/config.yaml)",
    )
    p.add_argument("--schema", default="workflow/schemas/config.schema.yaml",
                   help="JSON schema to check the structure against (skipped if the file is absent)")
    p.add_argument("--data-root", default="data", help="prepared corpora, for the vocabulary and block size checks")
    p.add_argument("--check", action="store_true", help="fail when the total exceeds budget.usd")
    p.add_argument("--runs", action="store_true", help="print only the run ids, one per line")
    p.set_defaults(func=_run_plan)


def _run_plan(args: argparse.Namespace) -> None:
    import os

    from altgrad.analysis.matrix import load_experiment

    paths = args.config or ["config/config.yaml"]
    schema = args.schema if args.schema and os.path.exists(args.schema) else None
    exp = load_experiment(_read_experiment_config(paths), schema=schema, data_root=args.data_root,
                          source=", ".join(paths))
    if args.runs:
        print("\n".join(exp.run_ids))
        return
    print(exp.budget_report())
    if args.check:
        exp.check_budget()


# ---------------------------------------------------------------------------------------
# registry and entry point
# ---------------------------------------------------------------------------------------
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_prepare,
    _add_train,
    _add_export,
    _add_report,
    _add_plan,
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


if __name__ == "__main__":
    sys.exit(main())
