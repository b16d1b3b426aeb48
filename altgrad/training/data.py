"""Token files: ``prepare()`` writes them, ``TokenBin`` / ``BatchSampler`` read them.

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
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from altgrad.errors import AltgradError
from altgrad.files import atomic_open, sha256_file, temp_beside
from altgrad.training.corpus import Document, iter_records, normalize_source
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
) -> dict[str, Any]:
    """Tokenize a corpus into ``out_dir/{train,val}.bin`` and ``out_dir/meta.json``.

    ``workers`` threads tokenize (default: all cores). ``progress``: tqdm bar on stderr
    (``None``: only on a terminal). Every file is written atomically; ``meta.json`` is
    written last, so its presence means a complete, consistent directory. Returns the
    meta dict. Same input and arguments give byte-identical files.
    """
    from tqdm import tqdm

    cfg = normalize_source(source_cfg)
    if not 0.0 < val_fraction < 1.0:
        raise AltgradError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise AltgradError(f"workers must be >= 1, got {workers}")
    out = Path(out_dir)

    docs: list[Document] = []
    n_empty = 0
    for doc in iter_records(cfg):
        if doc.text.strip():
            docs.append(doc)
        else:
            n_empty += 1
    texts = [d.text for d in docs]
    split_idx = dict(zip(SPLITS, split_documents(texts, val_fraction, seed)))

    out.mkdir(parents=True, exist_ok=True)
    enc_name = get_tokenizer().name
    counts = {s: np.zeros(GPT2_VOCAB_SIZE, dtype=np.int64) for s in SPLITS}
    n_tokens: dict[str, int] = {}
    tmp_files: list[Path] = []
    try:
        raw: dict[str, Path] = {}
        with tqdm(
            total=len(docs), unit="doc", desc=f"tokenize {cfg['name']}",
            disable=(None if progress is None else not progress),
        ) as bar:  # fmt: skip
            for s in SPLITS:
                fd, raw[s] = temp_beside(out / f"{s}.bin")
                tmp_files.append(raw[s])
                with os.fdopen(fd, "wb") as f:
                    split_texts = [texts[i] for i in split_idx[s]]
                    n_tokens[s] = _tokenize_to(f, split_texts, workers, counts[s], bar)

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
            final = {}
            for s in SPLITS:
                fd, final[s] = temp_beside(out / f"{s}.bin")
                os.close(fd)
                tmp_files.append(final[s])
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
        with contextlib.suppress(FileNotFoundError):
            os.unlink(out / "meta.json")
        for s in SPLITS:
            os.replace(final[s], out / f"{s}.bin")
        with atomic_open(out / "meta.json", "w") as f:
            f.write(_meta_json(meta))
    finally:
        for p in tmp_files:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    return meta


def _meta_json(meta: dict[str, Any]) -> str:
    """Indented JSON, except the (long) id map, which stays on one line."""
    text = json.dumps({**meta, "vocab_ids": "@VOCAB_IDS@"}, indent=2)
    ids = json.dumps(meta["vocab_ids"], separators=(",", ":"))
    return text.replace('"@VOCAB_IDS@"', ids, 1) + "\n"


# ---------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------
def _run_prepare_hint(data_dir: Path) -> str:
    return (
        f"run `altgrad prepare --source <source> --out {data_dir}` "
        f"(or the pipeline's prepare rule) first"
    )


def load_meta(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``data_dir/meta.json`` of a prepared corpus (error if missing or unreadable)."""
    data_dir = Path(data_dir)
    path = data_dir / "meta.json"
    if not path.is_file():
        raise AltgradError(f"{path} not found: {_run_prepare_hint(data_dir)}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise AltgradError(f"{path} is unreadable ({e}); {_run_prepare_hint(data_dir)}") from e
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise AltgradError(
            f"{path} is not an altgrad {META_FORMAT} file; {_run_prepare_hint(data_dir)}"
        )
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
            raise AltgradError(f"token file {path} not found: {_run_prepare_hint(path.parent)}")
        size = path.stat().st_size
        if size % 2:
            raise AltgradError(
                f"token file {path} is corrupt: {size} bytes is not a whole number of "
                f"uint16 tokens; {_run_prepare_hint(path.parent)} again"
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
        """``data_dir/{split}.bin`` with the ``vocab_size`` recorded in its meta.json."""
        if split not in SPLITS:
            raise AltgradError(f"split must be one of {SPLITS}, got {split!r}")
        meta = load_meta(data_dir)
        return cls(Path(data_dir) / f"{split}.bin", int(meta["vocab_size"]), block_size)

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
    "split_documents",
]
