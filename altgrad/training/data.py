"""Token files: ``prepare()`` writes them, ``TokenBin`` / ``BatchSampler`` read them.

Over 600 lines because writing and reading share the file format and its integrity checks
(meta.json, sizes, sha256): one module, so a reader can never disagree with the writer.

A prepared corpus is a directory holding

* ``train.bin``, ``val.bin`` -- flat little-endian ``uint16`` token ids (``np.memmap``-able),
  each document followed by the end-of-text id;
* ``meta.json`` -- source config, document and token counts per split, ``vocab_size``,
  tokenizer name, split seed, sha256 of each ``.bin`` and, with ``compact_vocab``, the
  id map ``vocab_ids``.

The train/val split is by document, not by token: distinct document texts are ranked by
``sha256(seed, text)`` and the first ``round(val_fraction * n)`` (at least one) go to val.
Identical texts always land in the same split, the split does not depend on the order the
source yields documents in, and the same input gives byte-identical files.

Integrity is checked where it is recorded: ``verify_prepared`` (once per job, before any
work) checks ``meta.json`` and each ``.bin``'s size and sha256 against it; ``TokenBin.from_dir``
checks the size of the file it opens. A failure is a :class:`PreparedDataError` naming the
file and the command that re-creates the corpus.

``compact_vocab=True`` (meant for the tiny CPU default) maps the ids that occur
(train ∪ val, plus end-of-text) to ``0..K-1`` in increasing original order;
``meta["vocab_ids"][new_id]`` is the original GPT-2 id and ``meta["vocab_size"] == K``, so the
model's embedding and softmax are sized ``K``. Training stays real, with a smaller softmax.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from altgrad.errors import AltgradError, PreparedDataError
from altgrad.files import atomic_open, sha256_file
from altgrad.training.corpus import (
    SOURCES,
    Document,
    has_printable_text,
    iter_records,
    normalize_source,
)
from altgrad.training.tokenizer import (
    GPT2_EOT_ID,
    GPT2_VOCAB_SIZE,
    TOKENIZER_NAME,
    get_tokenizer,
)

TOKEN_DTYPE = np.uint16
META_FORMAT = "altgrad-tokens/1"
SPLITS = ("train", "val")
_ENCODE_CHUNK_DOCS = 256
_REMAP_CHUNK_TOKENS = 1 << 22
# ---------------------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------------------
def split_documents(
    texts: list[str], val_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Indices of the train and val documents (each in input order).

    Distinct texts are ranked by ``sha256(f"{seed}\\0{text}")``; the first
    ``max(1, round(val_fraction * n_distinct))`` go to val (at most ``n_distinct - 1``).
    """
    if not 0.0 < val_fraction < 1.0:
        raise AltgradError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    distinct = set(texts)
    if len(distinct) < 2:
        raise AltgradError(
            f"too few documents to split: need at least 2 distinct non-empty documents "
            f"(one for train, one for val), got {len(distinct)}"
        )
    salt = f"{seed}\0".encode()
    ranked = sorted(distinct, key=lambda t: hashlib.sha256(salt + t.encode("utf-8")).digest())
    n_val = min(max(1, int(val_fraction * len(ranked) + 0.5)), len(ranked) - 1)
    val_texts = set(ranked[:n_val])
    train_idx = [i for i, t in enumerate(texts) if t not in val_texts]
    val_idx = [i for i, t in enumerate(texts) if t in val_texts]
    return train_idx, val_idx


def _corpus_sha256(texts: list[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        b = t.encode("utf-8")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def _tokenize_to(f: IO[bytes], texts: list[str], workers: int, counts: np.ndarray, bar: Any) -> int:
    """Append each text's ids + EOT to ``f`` as uint16; add id counts; return #tokens."""
    enc = get_tokenizer()
    n = 0
    for lo in range(0, len(texts), _ENCODE_CHUNK_DOCS):
        chunk = texts[lo : lo + _ENCODE_CHUNK_DOCS]
        if workers > 1:
            ids = enc.encode_ordinary_batch(chunk, num_threads=workers)
        else:
            ids = [enc.encode_ordinary(t) for t in chunk]
        flat = np.concatenate([np.asarray(d + [GPT2_EOT_ID], dtype="<u2") for d in ids])
        counts += np.bincount(flat, minlength=GPT2_VOCAB_SIZE)
        f.write(flat.tobytes())
        n += flat.size
        bar.update(len(chunk))
    return n


def _check_corpus_fits(
    out: Path, n_tokens: Mapping[str, int], n_docs: Mapping[str, int], block_size: int
) -> None:
    """Every split must hold a training window: ``block_size + 1`` tokens."""
    short = {s: n for s, n in n_tokens.items() if n < block_size + 1}
    if short:
        detail = ", ".join(
            f"{s} has {n} tokens ({n_docs[s]} document{'s' * (n_docs[s] != 1)})"
            for s, n in short.items()
        )
        raise AltgradError(
            f"corpus for {out} too small for block_size {block_size}: {detail}, each split needs "
            f"at least block_size + 1 = {block_size + 1}; nothing was written to {out}. Fix: a "
            f"smaller model.block_size or a larger corpus (or a larger val_fraction if only val "
            f"is short)"
        )


def _remap(src: Path, dst: Path, lut: np.ndarray) -> None:
    data = np.memmap(src, dtype="<u2", mode="r") if src.stat().st_size else np.zeros(0, "<u2")
    with open(dst, "wb") as f:
        for lo in range(0, data.size, _REMAP_CHUNK_TOKENS):
            f.write(lut[data[lo : lo + _REMAP_CHUNK_TOKENS]].astype("<u2").tobytes())
    del data


def prepare(
    source_cfg: str | Mapping[str, Any] | None,
    out_dir: str | os.PathLike[str],
    val_fraction: float = 0.1,
    seed: int = 0,
    compact_vocab: bool = False,
    workers: int | None = None,
    progress: bool | None = None,
    block_size: int | None = None,
) -> dict[str, Any]:
    """Tokenize a corpus into ``out_dir/{train,val}.bin`` and ``out_dir/meta.json``.

    ``workers`` threads tokenize (default: all cores). ``progress``: tqdm bar on stderr
    (``None``: only on a terminal). ``block_size``: the model's context length; a split
    shorter than ``block_size + 1`` tokens is an error. Returns the meta dict. Same input
    and arguments give byte-identical files.

    Everything is made in a staging directory beside ``out_dir`` and checked there; only
    then are the files moved in, ``meta.json`` last, so its presence means a complete,
    consistent directory. A prepare that fails (bad document, corpus too small, ...) leaves
    ``out_dir`` exactly as it was.
    """
    from tqdm import tqdm

    cfg = normalize_source(source_cfg)
    if not 0.0 < val_fraction < 1.0:
        raise AltgradError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise AltgradError(f"workers must be >= 1, got {workers}")
    if block_size is not None and block_size < 1:
        raise AltgradError(f"block_size must be >= 1, got {block_size}")
    out = Path(out_dir)

    docs: list[Document] = []
    n_empty = 0  # only pinned and hub sources get here with one; local sources reject it
    for doc in iter_records(cfg):
        if has_printable_text(doc.text):
            docs.append(doc)
        else:
            n_empty += 1
    texts = [d.text for d in docs]
    split_idx = dict(zip(SPLITS, split_documents(texts, val_fraction, seed)))

    enc_name = get_tokenizer().name
    counts = {s: np.zeros(GPT2_VOCAB_SIZE, dtype=np.int64) for s in SPLITS}
    n_tokens: dict[str, int] = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        raw = {s: stage / f"{s}.gpt2.bin" for s in SPLITS}
        with tqdm(
            total=len(docs), unit="doc", desc=f"tokenize {cfg['name']}",
            disable=(None if progress is None else not progress),
        ) as bar:  # fmt: skip
            for s in SPLITS:
                with open(raw[s], "wb") as f:
                    split_texts = [texts[i] for i in split_idx[s]]
                    n_tokens[s] = _tokenize_to(f, split_texts, workers, counts[s], bar)
        if block_size is not None:
            _check_corpus_fits(out, n_tokens, {s: len(split_idx[s]) for s in SPLITS}, block_size)

        vocab_ids: list[int] | None = None
        vocab_size, eot_id = GPT2_VOCAB_SIZE, GPT2_EOT_ID
        final = raw
        if compact_vocab:
            used = (counts["train"] + counts["val"]) > 0
            used[GPT2_EOT_ID] = True
            ids = np.flatnonzero(used)
            lut = np.zeros(GPT2_VOCAB_SIZE, dtype=np.uint16)
            lut[ids] = np.arange(ids.size, dtype=np.uint16)
            vocab_ids, vocab_size, eot_id = ids.tolist(), int(ids.size), int(lut[GPT2_EOT_ID])
            final = {s: stage / f"{s}.bin" for s in SPLITS}
            for s in SPLITS:
                _remap(raw[s], final[s], lut)

        sha = {}
        for s in SPLITS:
            with open(final[s], "rb+") as f:
                os.fsync(f.fileno())
            sha[f"{s}.bin"] = sha256_file(final[s])

        groups = None
        if docs and "regulation" in docs[0].meta:
            groups = {}
            for s in SPLITS:
                per = Counter(str(docs[i].meta.get("regulation")) for i in split_idx[s])
                groups[s] = dict(sorted(per.items()))
        meta: dict[str, Any] = {
            "format": META_FORMAT,
            "source": cfg,
            "tokenizer": enc_name,
            "dtype": "uint16",
            "eot_id": eot_id,
            "vocab_size": vocab_size,
            "base_vocab_size": GPT2_VOCAB_SIZE,
            "compact_vocab": bool(compact_vocab),
            "split": {"by": "document", "seed": seed, "val_fraction": val_fraction},
            "documents": {s: len(split_idx[s]) for s in SPLITS},
            "documents_skipped_empty": n_empty,
            "tokens": n_tokens,
            "sha256": sha,
            "corpus_sha256": _corpus_sha256(texts),
        }
        if groups is not None:
            meta["documents_by_regulation"] = groups
        meta["vocab_ids"] = vocab_ids

        # meta.json goes last: drop a stale one first so a crash in between never
        # leaves a meta.json describing other .bin files.
        out.mkdir(exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out / "meta.json")
        for s in SPLITS:
            os.replace(final[s], out / f"{s}.bin")
        with atomic_open(out / "meta.json", "w") as f:
            f.write(_meta_json(meta))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return meta


def _meta_json(meta: dict[str, Any]) -> str:
    """Indented JSON, except the (long) id map, which stays on one line."""
    text = json.dumps({**meta, "vocab_ids": "@VOCAB_IDS@"}, indent=2)
    ids = json.dumps(meta["vocab_ids"], separators=(",", ":"))
    return text.replace('"@VOCAB_IDS@"', ids, 1) + "\n"


# ---------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------
def prepare_args(
    source: Mapping[str, Any], val_fraction: float, seed: int, compact_vocab: bool
) -> list[str]:
    """Arguments of ``altgrad prepare`` (without ``--out``) that make this corpus."""
    args = ["--source", source["name"]]
    if source["name"] == "local":
        args += ["--paths", *source["paths"], "--field", source["field"]]
    if "split" in source:
        args += ["--split", source["split"]]
    args += ["--val-fraction", repr(float(val_fraction)), "--seed", str(seed)]
    if compact_vocab:
        args.append("--compact-vocab")
    return args


def _reprepare_hint(data_dir: Path, meta: Mapping[str, Any] | None = None) -> str:
    """How to re-create ``data_dir``: with the pipeline, else with the exact CLI call
    (known from a valid ``meta``; without one, its options are a placeholder)."""
    if meta is None:
        cli = f"altgrad prepare --source <source> [options] --out {shlex.quote(str(data_dir))}"
    else:
        split = meta["split"]
        args = prepare_args(meta["source"], split["val_fraction"], split["seed"], meta["compact_vocab"])
        cli = shlex.join(["altgrad", "prepare", *args, "--out", str(data_dir)])
    return f"re-create it with `snakemake --forcerun prepare` (without Snakemake: `{cli}`)"


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_sha256(v: Any) -> bool:
    return isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None


# What readers of a prepared corpus rely on: (key path, check).
_META_FIELDS: tuple[tuple[tuple[str, ...], Callable[[Any], bool]], ...] = (
    (("source", "name"), lambda v: v in SOURCES),
    (("dtype",), lambda v: v == np.dtype(TOKEN_DTYPE).name),
    (("vocab_size",), lambda v: _is_count(v) and 1 <= v <= 1 << 16),
    (("compact_vocab",), lambda v: isinstance(v, bool)),
    (("split", "seed"), lambda v: isinstance(v, int) and not isinstance(v, bool)),
    (("split", "val_fraction"), lambda v: isinstance(v, (int, float)) and 0 < v < 1),
    *((("tokens", s), _is_count) for s in SPLITS),
    *((("sha256", f"{s}.bin"), _is_sha256) for s in SPLITS),
)


def _invalid_meta_fields(meta: Mapping[str, Any]) -> list[str]:
    bad = []
    for keys, ok in _META_FIELDS:
        value: Any = meta
        for k in keys:
            value = value.get(k) if isinstance(value, Mapping) else None
        if value is None or not ok(value):
            bad.append(".".join(keys))
    return bad


def load_meta(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``data_dir/meta.json`` of a prepared corpus, checked to hold what readers rely on.

    Raises :class:`PreparedDataError` if it is missing, not JSON, not an altgrad meta.json,
    or a field is missing or invalid (the message names them).
    """
    data_dir = Path(data_dir)
    path = data_dir / "meta.json"
    hint = _reprepare_hint(data_dir)
    if not path.is_file():
        raise PreparedDataError(f"{path} not found: the corpus is not prepared; {hint}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise PreparedDataError(f"{path} is corrupt (not UTF-8: {e}); {hint}") from e
    except ValueError as e:
        raise PreparedDataError(f"{path} is corrupt (not valid JSON: {e}); {hint}") from e
    except OSError as e:
        raise PreparedDataError(f"{path} is unreadable ({e}); {hint}") from e
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise PreparedDataError(f"{path} is not an altgrad {META_FORMAT} file; {hint}")
    bad = _invalid_meta_fields(meta)
    if bad:
        raise PreparedDataError(f"{path} is corrupt: missing or invalid {', '.join(bad)}; {hint}")
    return meta


def _check_bin(
    data_dir: Path, meta: Mapping[str, Any], split: str, sha256: bool, path: str | os.PathLike[str] | None = None
) -> Path:
    """``path`` (default ``data_dir/{split}.bin``) after checking its size (and ``sha256``)
    against what ``meta`` records for ``split``."""
    path = data_dir / f"{split}.bin" if path is None else Path(path)
    if not path.is_file():
        raise PreparedDataError(f"token file {path} not found; {_reprepare_hint(data_dir, meta)}")
    n, width = meta["tokens"][split], np.dtype(meta["dtype"]).itemsize
    size = path.stat().st_size
    if size != n * width:
        raise PreparedDataError(
            f"token file {path} is corrupt: {size} bytes, but meta.json records {n} "
            f"{meta['dtype']} tokens ({n * width} bytes; truncated or appended to); "
            f"{_reprepare_hint(data_dir, meta)}"
        )
    if sha256:
        expected, actual = meta["sha256"][f"{split}.bin"], sha256_file(path)
        if actual != expected:
            raise PreparedDataError(
                f"token file {path} is corrupt: its sha256 is {actual}, meta.json records "
                f"{expected} (same size: changed in place); {_reprepare_hint(data_dir, meta)}"
            )
    return path


def verify_prepared(
    data_dir: str | os.PathLike[str], files: Mapping[str, str | os.PathLike[str]] | None = None
) -> dict[str, Any]:
    """The meta dict of the prepared corpus in ``data_dir``, after checking everything
    against it: ``meta.json`` is valid, each ``.bin`` has the recorded size and sha256.

    ``files``: split -> token file, where a run config names them (default:
    ``data_dir/{split}.bin``). Call it once per job before any work: hashing reads each file
    once (measured: < 1 ms for the default corpus, 0.2 s for 200M tokens at sha256's ~1.8
    GB/s). Raises :class:`PreparedDataError` naming the file and the command that re-creates
    the corpus.
    """
    data_dir = Path(data_dir)
    meta = load_meta(data_dir)
    for s in SPLITS:
        _check_bin(data_dir, meta, s, sha256=True, path=(files or {}).get(s))
    return meta


class TokenBin:
    """A memmapped ``.bin`` of uint16 token ids, validated when opened.

    Errors (all :class:`AltgradError`, raised before any training work): missing file,
    size not a multiple of 2 bytes, fewer than ``block_size + 1`` tokens, an id
    ``>= vocab_size``.
    """

    def __init__(self, path: str | os.PathLike[str], vocab_size: int, block_size: int):
        path = Path(path)
        if not 1 <= vocab_size <= 1 << 16:
            raise AltgradError(
                f"vocab_size must be in 1..65536 for uint16 tokens, got {vocab_size}"
            )
        if block_size < 1:
            raise AltgradError(f"block_size must be >= 1, got {block_size}")
        if not path.is_file():
            raise PreparedDataError(f"token file {path} not found; {_reprepare_hint(path.parent)}")
        size = path.stat().st_size
        if size % 2:
            raise PreparedDataError(
                f"token file {path} is corrupt: {size} bytes is not a whole number of "
                f"uint16 tokens; {_reprepare_hint(path.parent)}"
            )
        n = size // 2
        if n < block_size + 1:
            raise AltgradError(
                f"token file {path} holds {n} tokens, fewer than block_size + 1 = "
                f"{block_size + 1}; use a smaller block_size or a larger corpus"
            )
        tokens = np.memmap(path, dtype="<u2", mode="r")
        top = int(tokens.max())
        if top >= vocab_size:
            raise AltgradError(
                f"token file {path} contains id {top} >= vocab_size {vocab_size}; the model's "
                f"vocab_size must be meta.json's vocab_size (prepared with --compact-vocab? "
                f"or with another tokenizer?)"
            )
        self.path = path
        self.vocab_size = int(vocab_size)
        self.block_size = int(block_size)
        self.tokens: np.ndarray = tokens

    @classmethod
    def from_dir(cls, data_dir: str | os.PathLike[str], split: str, block_size: int) -> TokenBin:
        """``data_dir/{split}.bin`` with the ``vocab_size`` recorded in its meta.json, after
        checking its size against the token count meta.json records (the sha256 is
        :func:`verify_prepared`'s, once per job)."""
        if split not in SPLITS:
            raise AltgradError(f"split must be one of {SPLITS}, got {split!r}")
        meta = load_meta(data_dir)
        path = _check_bin(Path(data_dir), meta, split, sha256=False)
        return cls(path, int(meta["vocab_size"]), block_size)

    def __len__(self) -> int:
        return int(self.tokens.size)

    def windows(self, starts: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 tensors ``[len(starts), block_size]``; ``y`` is ``x`` shifted by one."""
        idx = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(block_size + 1)
        w = torch.from_numpy(self.tokens[idx].astype(np.int64))
        return w[:, :-1], w[:, 1:]


def _to_device(
    xy: tuple[torch.Tensor, torch.Tensor], device: torch.device | None
) -> tuple[torch.Tensor, torch.Tensor]:
    if device is None or device.type == "cpu":
        return xy
    if device.type == "cuda":
        return tuple(t.pin_memory().to(device, non_blocking=True) for t in xy)  # type: ignore[return-value]
    return tuple(t.to(device) for t in xy)  # type: ignore[return-value]


class BatchSampler:
    """Random training windows from a :class:`TokenBin`.

    Uses its own CPU ``torch.Generator`` seeded with ``seed`` (independent of model init),
    so runs with the same data seed see the same batch sequence. ``state_dict()`` /
    ``load_state_dict()`` let a resumed run continue that exact sequence.
    """

    def __init__(
        self,
        data: TokenBin,
        batch_size: int,
        block_size: int | None = None,
        seed: int = 0,
        device: str | torch.device | None = None,
    ):
        block_size = data.block_size if block_size is None else int(block_size)
        if batch_size < 1:
            raise AltgradError(f"batch_size must be >= 1, got {batch_size}")
        if block_size < 1 or len(data) < block_size + 1:
            raise AltgradError(
                f"{data.path} holds {len(data)} tokens, fewer than "
                f"block_size + 1 = {block_size + 1}"
            )
        self.data = data
        self.batch_size = int(batch_size)
        self.block_size = block_size
        self.seed = int(seed)
        self.device = torch.device(device) if device is not None else None
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(self.seed)
        self.batches_drawn = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        high = len(self.data) - self.block_size  # start + block_size <= len - 1
        starts = torch.randint(0, high, (self.batch_size,), generator=self.generator)
        self.batches_drawn += 1
        return _to_device(self.data.windows(starts.numpy(), self.block_size), self.device)

    def __iter__(self) -> BatchSampler:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "batch_size": self.batch_size,
            "block_size": self.block_size,
            "n_tokens": len(self.data),
            "batches_drawn": self.batches_drawn,
            "generator_state": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        mine = {
            "batch_size": self.batch_size,
            "block_size": self.block_size,
            "n_tokens": len(self.data),
        }
        diff = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if diff:
            detail = ", ".join(f"{k}: saved {a}, now {b}" for k, (a, b) in diff.items())
            raise AltgradError(
                f"cannot resume the batch sequence: different data or shape ({detail})"
            )
        self.generator.set_state(torch.as_tensor(state["generator_state"], dtype=torch.uint8))
        self.seed = int(state["seed"])
        self.batches_drawn = int(state["batches_drawn"])


def eval_batches(
    data: TokenBin,
    batch_size: int,
    block_size: int | None = None,
    max_batches: int | None = None,
    device: str | torch.device | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed validation windows, identical on every call.

    Non-overlapping windows tile the file from the start; with ``max_batches`` an evenly
    spaced subset of ``max_batches * batch_size`` of them is used. The last batch may be
    smaller than ``batch_size``.
    """
    block_size = data.block_size if block_size is None else int(block_size)
    if batch_size < 1:
        raise AltgradError(f"batch_size must be >= 1, got {batch_size}")
    n_windows = (len(data) - 1) // block_size
    if n_windows < 1:
        raise AltgradError(
            f"{data.path} holds {len(data)} tokens, fewer than block_size + 1 = {block_size + 1}"
        )
    starts = np.arange(n_windows, dtype=np.int64) * block_size
    if max_batches is not None:
        keep = max_batches * batch_size
        if keep < 1:
            raise AltgradError(f"max_batches must be >= 1, got {max_batches}")
        if n_windows > keep:
            starts = starts[np.linspace(0, n_windows - 1, keep).round().astype(np.int64)]
    dev = torch.device(device) if device is not None else None
    for lo in range(0, starts.size, batch_size):
        yield _to_device(data.windows(starts[lo : lo + batch_size], block_size), dev)


def decode_ids(ids: np.ndarray | list[int], meta: Mapping[str, Any]) -> np.ndarray:
    """Map ids read from a prepared ``.bin`` back to GPT-2 ids (identity unless compacted)."""
    arr = np.asarray(ids, dtype=np.int64)
    if meta.get("vocab_ids") is None:
        return arr
    return np.asarray(meta["vocab_ids"], dtype=np.int64)[arr]


__all__ = [
    "BatchSampler",
    "META_FORMAT",
    "TOKENIZER_NAME",
    "TokenBin",
    "decode_ids",
    "eval_batches",
    "load_meta",
    "prepare",
    "prepare_args",
    "split_documents",
    "verify_prepared",
]
