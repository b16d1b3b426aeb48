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
# registry and entry point
# ---------------------------------------------------------------------------------------
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_prepare,
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
