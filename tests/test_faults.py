"""Fault suite (issue #16, "nothing lost, nothing silent"): bad inputs and damaged files.

Each case is one row: how the input is damaged or made, the call that must refuse it, and
fragments of the one-line error (what is wrong, the file, the fix). Every case also checks
that the failing call left everything under the data directory as it was: no file lost,
changed or added (no stray staging directory either).

The prepared corpus is the real eurlex-sample, prepared once per module; each case works
on a copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from altgrad.cli import main as cli_main
from altgrad.errors import AltgradError, PreparedDataError
from altgrad.training import corpus, data

GOOD_DOCS = {
    "a.txt": "The Commission shall adopt implementing acts laying down the procedure.\n",
    "b.txt": "Member States shall lay down the rules on penalties applicable to infringements.\n",
}
REPREPARE = "re-create it with `snakemake --forcerun prepare` (without Snakemake: `altgrad prepare"
EURLEX_PREPARE = "`altgrad prepare --source eurlex-sample --val-fraction 0.1 --seed 0 --out {d}`"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pristine") / "eurlex-sample"
    data.prepare("eurlex-sample", out, val_fraction=0.1, seed=0, workers=2, progress=False)
    return out


@pytest.fixture
def data_dir(prepared, tmp_path) -> Path:
    d = tmp_path / "data" / "eurlex-sample"
    shutil.copytree(prepared, d)
    return d


def _snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (hidden ones too): sha256 of a file, "dir" for a directory."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


# --- damage to a prepared corpus ---------------------------------------------------------
def _truncate(name: str, n_bytes: int) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        os.truncate(d / name, (d / name).stat().st_size - n_bytes)

    return damage


def _append(name: str, extra: bytes) -> Callable[[Path], None]:
    def damage(d: Path) -> None:
        with open(d / name, "ab") as f:
            f.write(extra)

    return damage


def _swap_two_tokens(d: Path) -> None:
    """Same size, same ids, different content: only the sha256 can tell."""
    path = d / "train.bin"
    tokens = np.fromfile(path, dtype="<u2")
    i = int(np.flatnonzero(tokens[:-1] != tokens[1:])[0])
    tokens[[i, i + 1]] = tokens[[i + 1, i]]
    tokens.tofile(path)


def _cut_meta_json(d: Path) -> None:
    text = (d / "meta.json").read_text()
    (d / "meta.json").write_text(text[: len(text) // 2])


def _drop_meta_keys(d: Path) -> None:
    meta = json.loads((d / "meta.json").read_text())
    del meta["tokens"]["val"], meta["sha256"]
    (d / "meta.json").write_text(json.dumps(meta))


# --- corpus inputs -----------------------------------------------------------------------
def _write(src: Path, files: dict[str, str | bytes | list[str | None]]) -> None:
    src.mkdir(exist_ok=True)
    for name, content in files.items():
        if isinstance(content, list):
            pq.write_table(pa.table({"text": content}), src / name)
        elif isinstance(content, bytes):
            (src / name).write_bytes(content)
        else:
            (src / name).write_text(content, encoding="utf-8")


def _local(src: Path, glob: str = "*") -> dict[str, Any]:
    return {"name": "local", "paths": str(src / glob)}


@dataclass(frozen=True)
class Fault:
    id: str
    make: Callable[[Path, Path], None]  # (data dir, corpus source dir): damage or write inputs
    call: Callable[[Path, Path], Any]  # the call that must refuse it
    expect: tuple[str, ...]  # fragments of the message; {d} = data dir, {src} = source dir
    error: type[AltgradError] = AltgradError


def _verify(d: Path, src: Path) -> Any:
    return data.verify_prepared(d)


def _open_train(d: Path, src: Path) -> Any:
    return data.TokenBin.from_dir(d, "train", block_size=64)


def _prepare_local(glob: str = "*", **options: Any) -> Callable[[Path, Path], Any]:
    def call(d: Path, src: Path) -> Any:
        return data.prepare(_local(src, glob), d, workers=1, progress=False, **options)

    return call


def _damage(fn: Callable[[Path], None]) -> Callable[[Path, Path], None]:
    return lambda d, src: fn(d)


def _files(files: dict[str, str | bytes | list[str | None]]) -> Callable[[Path, Path], None]:
    return lambda d, src: _write(src, {**GOOD_DOCS, **files})


SIZE = ("is corrupt: ", " bytes, but meta.json records ", REPREPARE, EURLEX_PREPARE)
NO_TEXT = "has no printable text (empty, or only whitespace and control characters such as NUL)"

FAULTS = [
    Fault("train.bin truncated to an even size", _damage(_truncate("train.bin", 2)), _verify,
          ("token file {d}/train.bin", *SIZE), PreparedDataError),
    Fault("train.bin truncated to an even size, opened", _damage(_truncate("train.bin", 2)),
          _open_train, ("token file {d}/train.bin", *SIZE), PreparedDataError),
    Fault("train.bin truncated to an odd size", _damage(_truncate("train.bin", 1)), _verify,
          ("token file {d}/train.bin", *SIZE), PreparedDataError),
    Fault("train.bin truncated to an odd size, opened", _damage(_truncate("train.bin", 1)),
          _open_train, ("token file {d}/train.bin", *SIZE), PreparedDataError),
    Fault("val.bin with bytes appended", _damage(_append("val.bin", b"\x00\x01\x02\x03")), _verify,
          ("token file {d}/val.bin", *SIZE), PreparedDataError),
    Fault("train.bin changed in place (right size, sha256 differs)", _damage(_swap_two_tokens),
          _verify, ("token file {d}/train.bin is corrupt: its sha256 is ", "(same size: changed in place)",
                    REPREPARE, EURLEX_PREPARE), PreparedDataError),
    Fault("train.bin missing", _damage(lambda d: (d / "train.bin").unlink()), _verify,
          ("token file {d}/train.bin not found", REPREPARE, EURLEX_PREPARE), PreparedDataError),
    Fault("meta.json not valid JSON", _damage(_cut_meta_json), _verify,
          ("{d}/meta.json is corrupt (not valid JSON", REPREPARE, "--source <source> [options] --out {d}`"),
          PreparedDataError),
    Fault("meta.json missing keys", _damage(_drop_meta_keys), _verify,
          ("{d}/meta.json is corrupt: missing or invalid tokens.val, sha256.train.bin, sha256.val.bin;",
           REPREPARE), PreparedDataError),
    Fault("meta.json of another program", _damage(lambda d: (d / "meta.json").write_text('{"a": 1}')),
          _verify, ("{d}/meta.json is not an altgrad altgrad-tokens/1 file", REPREPARE), PreparedDataError),
    Fault(".txt of 5,000 NUL bytes", _files({"nul.txt": b"\x00" * 5000}), _prepare_local(),
          ("{src}/nul.txt " + NO_TEXT, "remove the file from the corpus or fix it")),
    Fault("whitespace-only .txt", _files({"blank.txt": " \n\t \r\n"}), _prepare_local(),
          ("{src}/blank.txt " + NO_TEXT, "remove the file")),
    Fault(".txt of control and zero-width characters", _files({"ctl.txt": "\x01\x1b\x7f\u200b\ufeff\n"}),
          _prepare_local(), ("{src}/ctl.txt " + NO_TEXT,)),
    Fault("empty .jsonl text field", _files({"x.jsonl": '{"text": "a row"}\n{"text": ""}\n'}),
          _prepare_local(), ("{src}/x.jsonl:2: field 'text' " + NO_TEXT, "remove the line")),
    Fault(".parquet null and blank rows", _files({"p.parquet": ["a row", None, " "]}), _prepare_local(),
          ("{src}/p.parquet: row 1, column 'text' " + NO_TEXT, "remove the row")),
    Fault("local glob matching nothing, at config load", _files({}),
          lambda d, src: corpus.source_files(_local(src, "*.jsonl")),
          ("no files match '{src}/*.jsonl'", "fix the glob")),
    Fault("local glob matching nothing, at prepare", _files({}), _prepare_local("*.jsonl"),
          ("no files match '{src}/*.jsonl'", "fix the glob")),
    Fault("corpus source given as a mapping", _files({}),
          lambda d, src: corpus.normalize_source({"name": {"name": "local"}}),
          ("unknown corpus source {{'name': 'local'}}; choose one of eurlex-sample, ",)),
    Fault("corpus too small for block_size", _files({}), _prepare_local(block_size=64),
          ("corpus for {d} too small for block_size 64: train has 13 tokens (1 document), val has ",
           "block_size + 1 = 65", "nothing was written to {d}.", "a smaller model.block_size or a larger corpus")),
    Fault("corpus too small, new corpus directory", _files({}),
          lambda d, src: data.prepare(_local(src), d.parent / "new", progress=False, block_size=64),
          ("/data/new too small for block_size 64", "/data/new. Fix: ")),
]  # fmt: skip


@pytest.mark.parametrize("fault", FAULTS, ids=[f.id for f in FAULTS])
def test_fault(fault: Fault, data_dir: Path, tmp_path: Path):
    src = tmp_path / "src"
    fault.make(data_dir, src)
    before = _snapshot(data_dir.parent)
    with pytest.raises(fault.error) as err:
        fault.call(data_dir, src)
    msg = str(err.value)
    assert "\n" not in msg
    for fragment in fault.expect:
        assert fragment.format(d=data_dir, src=src) in msg, msg
    assert _snapshot(data_dir.parent) == before  # nothing lost, changed or left behind


def test_prepare_failure_through_cli_is_one_line(tmp_path, capsys):
    _write(tmp_path / "src", {**GOOD_DOCS, "nul.txt": b"\x00" * 5000})
    code = cli_main(["prepare", "--source", "local", "--paths", str(tmp_path / "src" / "*.txt"),
                     "--out", str(tmp_path / "data" / "x"), "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"{tmp_path}/src/nul.txt has no printable text" in err
    assert not (tmp_path / "data").exists()  # refused before anything was created


def test_intact_corpus_verifies_and_fits(data_dir: Path, prepared: Path, tmp_path: Path):
    """The checks refuse only what is wrong: a good corpus passes, and prepare with a
    block_size the corpus fits writes the same files as without one."""
    meta = data.verify_prepared(data_dir)
    assert meta == data.load_meta(prepared)
    assert len(data.TokenBin.from_dir(data_dir, "val", block_size=64)) == meta["tokens"]["val"]
    again = data.prepare("eurlex-sample", tmp_path / "again", workers=2, progress=False, block_size=256)
    assert again == meta
    assert _snapshot(tmp_path / "again") == _snapshot(prepared)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging dir left
