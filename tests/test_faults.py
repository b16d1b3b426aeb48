"""Fault suite (issue #16, "nothing lost, nothing silent"): bad inputs and damaged files.

Each case is one row: how the input is damaged or made, the call that must refuse it, and
fragments of the one-line error (what is wrong, the file or run, the fix). Every case also
checks that the failing call left everything under the data (and results) directory as it
was: no file lost or changed, and none added but logs.

* data files and corpus inputs (the first table): the library calls that check them;
* config files: ``altgrad plan`` (what the Snakefile loads the same way): exit code 2, one line;
* run outputs, checkpoints, the trainer's arguments: ``altgrad export|report|scaling|train``;
* concurrency: two real ``altgrad train`` processes on one run directory;
* the pipeline (real Snakemake on a copy of one tiny finished workflow): refusals before any
  job starts (exit code 2), failing jobs that must not take earlier results with them, and a
  ``kill -9`` of Snakemake whose train job must stop and resume.

The prepared corpus is the real eurlex-sample, prepared once per module; each case works
on a copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from tiny_workflow import executed_jobs, make_workflow, pin_library_hash, snakemake, tiny_experiment

from altgrad.cli import main as cli_main
from altgrad.errors import AltgradError, PreparedDataError
from altgrad.experiment import load_experiment, read_config_files
from altgrad.training import corpus, data
from altgrad.training.run_lock import RunDirLock

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


# =========================================================================== config files
BASE_YAML = """\
corpus: {source: eurlex-sample, compact_vocab: true}
run:
  model: {n_layer: 1, n_head: 2, n_embd: 32, block_size: 32}
  train: {max_steps: 12, batch_size: 4, lr: 3e-3, warmup_steps: 2, device: cpu}
  tracking: {wandb_mode: disabled}
grid: {formats: [bf16, e5m2], optimizers: [adamw], master_weights: [fp32], seeds: [0]}
budget: {usd: 20, device: cpu}
"""


@dataclass(frozen=True)
class ConfigFault:
    id: str
    text: str | None  # the config file's text (None: no file)
    expect: tuple[str, ...]  # fragments of the one-line error; {path} = the file


CONFIG_FAULTS = [
    ConfigFault("malformed YAML: an unclosed list", BASE_YAML + "extra_runs: [{format: e4m3}\n",
                ("{path}: 1 problem - not valid YAML at line 9, column 1: expected ',' or ']'",
                 "while parsing a flow sequence that starts at line 8, column 13", "fix the file there")),
    ConfigFault("malformed YAML: a tab indent", BASE_YAML + "scaling:\n\tformats: [bf16]\n",
                ("{path}: 1 problem - not valid YAML at line 9, column 1: found character '\\t'",
                 "indent with spaces, not tabs")),
    ConfigFault("malformed YAML: a duplicate key", BASE_YAML + "budget: {usd: 5}\n",
                ("{path}: 1 problem - not valid YAML at line 8, column 1: duplicate key 'budget'",)),
    ConfigFault("a list at the top level", "- grid\n- run\n",
                ("{path}: 1 problem - expected a mapping (key: value lines) at the top level, got list",)),
    ConfigFault("an unquoted number where a string goes", BASE_YAML.replace("source: eurlex", "name: 2024, source: eurlex"),
                ("{path}: 1 problem - corpus.name: 2024 is not of type 'string'",
                 "(YAML reads 2024 unquoted as an integer: write '2024' for the string)")),
    ConfigFault("an unquoted number as a run's tag", BASE_YAML + "extra_runs: [{format: e4m3, tag: 300}]\n",
                ("{path}: 1 problem - extra_runs[0].tag: 300 is not of type 'string'", "write '300' for the string")),
    ConfigFault("a wrong type in the scaling block", BASE_YAML + "scaling: {formats: [bf16], budgets: [1e10, 2e10, 4e10], "
                "vocab_size: 5376, train: 7}\n", ("{path}: 1 problem - scaling.train: 7 is not of type 'object'",)),
    ConfigFault("a required list given as null", BASE_YAML.replace("formats: [bf16, e5m2]", "formats: null"),
                ("{path}: 1 problem - grid.formats: None is not of type 'array'",)),
    ConfigFault("a misspelt block", BASE_YAML + "gird: {seeds: [1]}\n",
                ("{path}: 1 problem - gird: unknown key (did you mean 'grid'?)",)),
    ConfigFault("the config file missing", None, ("{path}: 1 problem - cannot read the file: No such file",)),
]  # fmt: skip


@pytest.mark.parametrize("fault", CONFIG_FAULTS, ids=[f.id for f in CONFIG_FAULTS])
def test_config_fault(fault: ConfigFault, tmp_path: Path, capsys):
    path = tmp_path / "experiment.yaml"
    if fault.text is not None:
        path.write_text(fault.text)
    code = cli_main(["plan", "--config", str(path), "--data-root", str(tmp_path / "data"), "--runs"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fault.expect:
        assert fragment.format(path=path) in err, err
    assert not (tmp_path / "data").exists()


ACCEPTED = {
    # what the issue found crashing or refused: quoted values stay strings, null or absent
    # optional blocks are their defaults (or nothing), 3e-4 is a number
    "quoted strings stay strings": (
        BASE_YAML.replace("source: eurlex", "name: '2024', source: eurlex")
        + "extra_runs: [{format: e4m3, tag: '300'}, {format: e4m3, tag: \"1e5\", overrides: {train.lr: 3e-4}}]\n",
        {"corpus": "2024", "runs": ["bf16-adamw-s0", "e5m2-adamw-s0", "e4m3-adamw-s0-300", "e4m3-adamw-s0-1e5"],
         "lr": {"e4m3-adamw-s0-1e5": 3e-4, "bf16-adamw-s0": 3e-3}},
    ),
    "null optional blocks": (
        BASE_YAML.replace("budget: {usd: 20, device: cpu}", "budget:")
        + "scaling: null\nab: null\nextra_runs: null\nrecipes: null\n"
        + "".join(f"  {section}: null\n" for section in ()),
        {"corpus": "eurlex-sample", "runs": ["bf16-adamw-s0", "e5m2-adamw-s0"], "budget_usd": 20},
    ),
    "null sections of run": (
        BASE_YAML.replace("  tracking: {wandb_mode: disabled}\n", "  tracking:\n  precision:\n  optimizer: null\n"),
        {"corpus": "eurlex-sample", "runs": ["bf16-adamw-s0", "e5m2-adamw-s0"]},
    ),
    "absent optional blocks": (
        "grid: {formats: [bf16], optimizers: [adamw]}\n",
        {"corpus": "eurlex-sample", "runs": ["bf16-adamw-s0"], "budget_usd": 20},
    ),
}


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_config_accepted(case: str, tmp_path: Path):
    text, want = ACCEPTED[case]
    path = tmp_path / "experiment.yaml"
    path.write_text(text)
    exp = load_experiment(read_config_files([path]), source=str(path))
    assert exp.corpus["name"] == want["corpus"] and type(exp.corpus["name"]) is str
    assert list(exp.runs) == want["runs"]
    for rid, lr in want.get("lr", {}).items():
        assert exp.runs[rid].config.train.lr == lr
    if "budget_usd" in want:
        assert exp.budget["usd"] == want["budget_usd"]
    assert all(type(run.tag) in (str, type(None)) for run in exp.runs.values())
    assert yaml.safe_load(yaml.safe_dump(exp.config)) == exp.config  # plain types only


# ============================================= run outputs, checkpoints, the trainer's arguments
RID = "e5m2-adamw-s0"


@pytest.fixture(scope="module")
def compact(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compact") / "eurlex-sample"
    data.prepare("eurlex-sample", out, val_fraction=0.1, seed=0, compact_vocab=True, workers=2, progress=False)
    return out


def _run_config(corpus_dir: Path, path: Path, **train: Any) -> Path:
    cfg = {
        "data": {"train_bin": str(corpus_dir / "train.bin"), "val_bin": str(corpus_dir / "val.bin"),
                 "meta": str(corpus_dir / "meta.json")},
        "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32},
        "train": {"max_steps": 12, "batch_size": 4, "lr": 3e-3, "warmup_steps": 2, "eval_interval": 6,
                  "eval_batches": 2, "checkpoint_interval": 4, "rank_interval": 0, "device": "cpu", **train},
        "precision": {"weight": "e5m2", "activation": "e5m2", "gradient": "e5m2"},
        "tracking": {"wandb_mode": "disabled"},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train_argv(config: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(config), "--out", str(out), "--quiet", *extra]


@pytest.fixture(scope="module")
def finished(compact, tmp_path_factory) -> Path:
    """results/ of one finished tiny run (through the CLI, as the pipeline runs it) and its export."""
    results = tmp_path_factory.mktemp("finished") / "results"
    run = results / "runs" / RID
    config = _run_config(compact, results.parent / "run.yaml")
    labels = json.dumps({"run_id": RID, "format": "e5m2", "optimizer": "adamw", "seed": 0})
    assert cli_main(_train_argv(config, run, "--labels", labels)) == 0
    assert cli_main(["export", str(run), "--metrics", str(results / "metrics.parquet"),
                     "--summary", str(results / "summary.parquet"), "--csv", str(results / "summary.csv")]) == 0
    return results


@pytest.fixture
def results(finished, tmp_path) -> Path:
    out = tmp_path / "results"
    shutil.copytree(finished, out)
    shutil.copy2(finished.parent / "run.yaml", tmp_path / "run.yaml")
    return out


def _cut(name: str, keep: float = 0.5) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        os.truncate(run / name, int((run / name).stat().st_size * keep))

    return damage


def _garble_pages(name: str) -> Callable[[Path], None]:
    """A parquet file of the same size, 128 bytes in the middle of its column data (before
    the footer) overwritten: only the pages' checksums can tell."""

    def damage(run: Path) -> None:
        raw = bytearray((run / name).read_bytes())
        data_end = len(raw) - 8 - int.from_bytes(raw[-8:-4], "little")  # "PAR1" | pages | footer | len | "PAR1"
        mid = (4 + data_end) // 2
        raw[mid - 64 : mid + 64] = b"\xff" * 128
        (run / name).write_bytes(bytes(raw))

    return damage


def _export(results: Path) -> list[str]:
    return ["export", str(results / "runs" / RID), "--metrics", str(results / "metrics.parquet"),
            "--summary", str(results / "summary.parquet"), "--csv", str(results / "summary.csv")]


def _report(results: Path) -> list[str]:
    return ["report", "--summary", str(results / "summary.parquet"), "--metrics", str(results / "metrics.parquet"),
            "--out", str(results / "report.html"), "--corpus", str(results.parent / "meta" / "meta.json")]


def _drop_partial_rows(run: Path) -> None:
    partial = run / "checkpoints" / "steps.partial.parquet"
    pd.read_parquet(partial).iloc[:8].to_parquet(partial, index=False)


def _bad_meta(run: Path) -> None:
    meta = run.parents[2] / "meta"
    meta.mkdir()
    (meta / "meta.json").write_text('{"format": "altgrad-tokens/1", "tokens": ')


RERUN = "re-create it by rerunning the run's train job, which resumes from its last checkpoint: " \
        "`snakemake --forcerun {run}/summary.json` (without Snakemake: `altgrad train --config {run}/config.yaml --out {run}`)"
MOVE_ASIDE = "to start the run over, move its checkpoints aside (`mv {run}/checkpoints {run}/checkpoints.broken`) and rerun"


@dataclass(frozen=True)
class RunFault:
    id: str
    damage: Callable[[Path], None]  # on the run directory
    argv: Callable[[Path], list[str]]  # the command, given results/
    expect: tuple[str, ...]  # {run} = the run directory, {results} = results/


RUN_FAULTS = [
    RunFault("steps.parquet truncated", _cut("steps.parquet"), _export,
             ("run e5m2-adamw-s0: {run}/steps.parquet is corrupt (ArrowInvalid: ", RERUN)),
    RunFault("steps.parquet garbled in place", _garble_pages("steps.parquet"), _export,
             ("run e5m2-adamw-s0: {run}/steps.parquet is corrupt (OSError: could not verify page integrity", RERUN)),
    RunFault("steps.parquet missing", lambda run: (run / "steps.parquet").unlink(), _export,
             ("run e5m2-adamw-s0: {run}/steps.parquet is missing: the run has not finished", RERUN)),
    RunFault("summary.json truncated", _cut("summary.json"), _export,
             ("run e5m2-adamw-s0: {run}/summary.json is corrupt (JSONDecodeError: ", RERUN)),
    RunFault("summary.json not an object", lambda run: (run / "summary.json").write_text("[1, 2]"), _export,
             ("run e5m2-adamw-s0: {run}/summary.json is corrupt (not a JSON object)", RERUN)),
    RunFault("run.json truncated", _cut("run.json"), _export,
             ("run e5m2-adamw-s0: {run}/run.json is corrupt (JSONDecodeError: ", RERUN)),
    RunFault("summary.json truncated, scaling study", _cut("summary.json"),
             lambda results: ["scaling", str(results / "runs" / RID), "--out", str(results / "scaling")],
             ("run e5m2-adamw-s0: {run}/summary.json is corrupt (JSONDecodeError: ", RERUN)),
    RunFault("summary.parquet truncated, report", lambda run: _cut("summary.parquet")(run.parents[1]), _report,
             ("{results}/summary.parquet is corrupt (ArrowInvalid: ", "re-create it with `snakemake --forcerun export`")),
    RunFault("meta.json corrupt, report", _bad_meta, _report,
             ("meta/meta.json is corrupt (not valid JSON: ", "re-create it with `snakemake --forcerun prepare`")),
    RunFault("steps.partial.parquet truncated, resume", _cut("checkpoints/steps.partial.parquet"),
             lambda results: _train_argv(results.parent / "run.yaml", results / "runs" / RID),
             ("run e5m2-adamw-s0: {run}/checkpoints/steps.partial.parquet is unreadable (ArrowInvalid: ",
              "so its checkpoint at step 12 cannot be resumed with the rows before it", MOVE_ASIDE)),
    RunFault("steps.partial.parquet short of rows, resume", _drop_partial_rows,
             lambda results: _train_argv(results.parent / "run.yaml", results / "runs" / RID),
             ("run e5m2-adamw-s0: {run}/checkpoints/steps.partial.parquet holds 8 rows for its checkpoint at step 12",
              MOVE_ASIDE)),
    RunFault("model.vocab_size below the corpus's", lambda run: None,
             lambda results: _train_argv(_vocab_config(results), results / "runs" / "small-vocab"),
             ("model.vocab_size 100 is smaller than the corpus vocabulary (5354, ", "use null")),
    RunFault("--stop-with a process that is gone", lambda run: None,
             lambda results: _train_argv(results.parent / "run.yaml", results / "runs" / RID, "--stop-with",
                                         str(_dead_pid())),
             ("--stop-with ", ": no such process")),
    RunFault("--labels not JSON", lambda run: None,
             lambda results: _train_argv(results.parent / "run.yaml", results / "runs" / RID, "--labels", "{run"),
             ("--labels is not valid JSON (",)),
]  # fmt: skip


def _vocab_config(results: Path) -> Path:
    cfg = yaml.safe_load((results.parent / "run.yaml").read_text())
    cfg["model"]["vocab_size"] = 100
    path = results.parent / "small-vocab.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _kept(root: Path) -> dict[str, str]:
    """_snapshot without the lock files (they hold the pid of the last writer)."""
    return {k: v for k, v in _snapshot(root).items() if not k.endswith(".lock")}


@pytest.mark.slow
@pytest.mark.parametrize("fault", RUN_FAULTS, ids=[f.id for f in RUN_FAULTS])
def test_run_fault(fault: RunFault, results: Path, capsys):
    run = results / "runs" / RID
    fault.damage(run)
    argv = fault.argv(results)
    before = _kept(results.parent)
    code = cli_main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fault.expect:
        assert fragment.format(run=run, results=results) in err, err
    after = _kept(results.parent)
    # nothing written, nothing lost (a refused new run keeps the directory its lock made)
    assert {k: v for k, v in after.items() if k in before or v != "dir"} == before


@pytest.mark.slow
def test_stale_checkpoints_are_moved_aside_never_deleted(results: Path, capsys):
    run = results / "runs" / RID
    saved = _snapshot(run / "checkpoints")
    config = _run_config(Path(yaml.safe_load((results.parent / "run.yaml").read_text())["data"]["meta"]).parent,
                         results.parent / "other.yaml", lr=2e-3)
    with pytest.warns(UserWarning, match="was saved under another config"):
        assert cli_main(_train_argv(config, run)) == 0
    assert _snapshot(run / "checkpoints.stale-1") == saved  # the old state, byte for byte
    assert len(pd.read_parquet(run / "steps.parquet")) == 12


@pytest.mark.slow
def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous_one(results: Path, finished: Path):
    run = results / "runs" / RID
    newest = sorted((run / "checkpoints").glob("step-*.pt"))[-1]
    os.truncate(newest, newest.stat().st_size // 2)
    with pytest.warns(UserWarning, match="is unreadable"):
        assert cli_main(_train_argv(results.parent / "run.yaml", run)) == 0
    timing = ["tokens_per_s", "step_time_s"]
    pd.testing.assert_frame_equal(pd.read_parquet(run / "steps.parquet").drop(columns=timing),
                                  pd.read_parquet(finished / "runs" / RID / "steps.parquet").drop(columns=timing))


@pytest.mark.slow
def test_a_diverged_run_resumes_as_diverged(compact: Path, tmp_path: Path):
    """Rerunning a diverged run (its job reran, or Snakemake was killed before the outputs)
    keeps its rows and divergence step; it used to train on past the divergence."""
    cfg = yaml.safe_load(_run_config(compact, tmp_path / "blowup.yaml").read_text())
    cfg["train"].update(lr=1e30, warmup_steps=0, nan_patience=3, grad_clip=0.0)
    cfg["precision"] = {"weight": "bf16", "activation": "bf16", "gradient": "bf16"}
    (tmp_path / "blowup.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert cli_main(_train_argv(tmp_path / "blowup.yaml", run)) == 0
    first = json.loads((run / "summary.json").read_text())
    rows = pd.read_parquet(run / "steps.parquet")
    assert first["status"] == "diverged" and first["steps"] < 12
    assert cli_main(_train_argv(tmp_path / "blowup.yaml", run)) == 0
    again = json.loads((run / "summary.json").read_text())
    assert (again["status"], again["diverged_at"], again["steps"]) == (first["status"], first["diverged_at"],
                                                                       first["steps"])
    pd.testing.assert_frame_equal(pd.read_parquet(run / "steps.parquet"), rows)


@pytest.mark.slow
def test_a_trainer_stops_when_the_process_that_started_it_is_gone(results: Path):
    """--stop-with (the pipeline passes Snakemake's pid): a checkpoint, a one-line error,
    and a rerun that resumes to the same rows."""
    run = results / "runs" / "watched"
    config = _run_config(Path(yaml.safe_load((results.parent / "run.yaml").read_text())["data"]["meta"]).parent,
                         results.parent / "long.yaml", max_steps=80)
    parent = subprocess.Popen(["sleep", "300"])
    trainer = subprocess.Popen([sys.executable, "-m", "altgrad.cli", *_train_argv(config, run, "--stop-with",
                                                                                  str(parent.pid))],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not list(run.glob("checkpoints/step-*.pt")):
            assert trainer.poll() is None, trainer.stderr.read()
            assert time.time() < deadline
            time.sleep(0.05)
    finally:
        parent.kill()
        parent.wait()
    assert trainer.wait(timeout=60) == 2
    err = trainer.stderr.read()
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("altgrad: error: run watched: stopped at step ") and "checkpoint saved" in line, err
    assert f"(pid {parent.pid}) is gone; rerun to resume" in line
    stopped = int(line.split("stopped at step ")[1].split(",")[0])
    assert 0 < stopped < 80 and (run / "checkpoints" / f"step-{stopped:08d}.pt").exists()
    assert not (run / "steps.parquet").exists()
    assert cli_main(_train_argv(config, run)) == 0
    assert list(pd.read_parquet(run / "steps.parquet")["step"]) == list(range(80))


# ============================================================================== concurrency
@pytest.mark.slow
def test_two_trainers_on_one_run_directory(results: Path):
    """The second `altgrad train` on a directory being trained exits at once (code 2), naming
    the first's pid, and writes nothing (the run's config and labels stay the first's)."""
    run = results / "runs" / "shared"
    meta = yaml.safe_load((results.parent / "run.yaml").read_text())["data"]["meta"]
    lines = [f"{k}: {json.dumps(v)}" for k, v in yaml.safe_load(
        _run_config(Path(meta).parent, results.parent / "shared.yaml", max_steps=100000).read_text()).items()]
    first = subprocess.Popen([sys.executable, "-m", "altgrad.cli", "train", "--config-lines", *lines,
                              "--labels", '{"run_id": "first"}', "--out", str(run), "--quiet"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        lock = run / ".lock"
        while not (lock.exists() and lock.read_text().strip() == str(first.pid) and (run / "run.json").exists()):
            assert first.poll() is None, first.stderr.read()  # holding the lock, config and labels written
            assert time.time() < deadline
            time.sleep(0.05)
        files = ("config.yaml", "run.json", ".lock")  # not checkpoints/: the first is writing there
        written = {name: (run / name).read_bytes() for name in files}
        second_lines = [line.replace('"lr": 0.003', '"lr": 0.001') for line in lines]
        started = time.perf_counter()
        second = subprocess.run([sys.executable, "-m", "altgrad.cli", "train", "--config-lines", *second_lines,
                                 "--labels", '{"run_id": "second"}', "--out", str(run), "--quiet"],
                                capture_output=True, text=True, timeout=120)
        elapsed = time.perf_counter() - started
        assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
        assert second.stderr == (f"altgrad: error: {run} is being written by another trainer (pid {first.pid}); wait "
                                 f"for it to finish, or stop it (kill {first.pid}) and rerun to resume from its last "
                                 "checkpoint\n")
        assert elapsed < 30 and first.poll() is None  # at once, while the first runs on
        assert json.loads((run / "run.json").read_text()) == {"run_id": "first"}
        assert '"lr": 0.003' in (run / "config.yaml").read_text()
        assert {name: (run / name).read_bytes() for name in files} == written  # the lock still names the first
    finally:
        first.kill()
        first.wait()
    with RunDirLock(run):  # the killed holder left no lock behind
        pass


# ============================================================================ the pipeline
# Real Snakemake on copies of one tiny finished workflow (prepare, 2 runs, export, report).
# Its train params do not depend on the altgrad sources (pin_library_hash), so a copy stays
# complete while they are edited.


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Path:
    wf = make_workflow(tmp_path_factory.mktemp("done"), tiny_experiment())
    pin_library_hash(wf)
    snakemake(wf, "--cores", "2")
    return wf


@pytest.fixture
def wf(done, tmp_path) -> Path:
    out = tmp_path / "wf"
    shutil.copytree(done, out, symlinks=True)
    return out


def _outputs(wf: Path) -> dict[str, str]:
    """Everything under data/ and results/ but logs, benchmarks and lock files."""
    return {k: v for k, v in _kept(wf).items()
            if k.startswith(("data", "results")) and not k.startswith(("results/logs", "results/benchmarks"))}


def _config(wf: Path) -> dict:
    return yaml.safe_load((wf / "config" / "config.yaml").read_text())


def _set_config(wf: Path, cfg: dict, extra: str = "") -> None:
    (wf / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False) + extra)


def _with(**changes: Any) -> Callable[[Path], None]:
    """Change dotted keys of the workflow's config."""

    def change(wf: Path) -> None:
        cfg = _config(wf)
        for dotted, value in changes.items():
            node = cfg
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
        _set_config(wf, cfg)

    return change


def _local_corpus(files: dict[str, str], glob: str = "*.txt", **corpus_keys: Any) -> Callable[[Path], None]:
    def change(wf: Path) -> None:
        _write(wf / "corpus", files)
        _with(corpus={"source": "local", "paths": [str(wf / "corpus" / glob)], "compact_vocab": True,
                      **corpus_keys})(wf)

    return change


def _damage_data(fn: Callable[[Path], None]) -> Callable[[Path], None]:
    return lambda wf: fn(wf / "data" / "eurlex-sample")


H100 = {"device": "h100", "price_usd_per_hour": 2.69, "mfu": 0.3}
SWEEP = {"formats": ["bf16", "e4m3"], "budgets": [2.5e10, 5.0e10, 1.0e11], "vocab_size": 5376, "batch_size": 8,
         "sizes": [{"n_layer": 1, "n_embd": e, "n_head": 1} for e in (8, 16, 32)]}


@dataclass(frozen=True)
class Refusal:
    id: str
    change: Callable[[Path], None]
    args: tuple[str, ...]
    expect: tuple[str, ...]  # fragments of the one error line; {wf} = the workflow directory


REFUSALS = [
    Refusal("malformed YAML in the workflow's config", lambda wf: _set_config(wf, _config(wf),
                                                                              "extra_runs: [{format: e4m3\n"), ("-n",),
            ("invalid altgrad config (no job started): config/config.yaml: not valid YAML at line ",
             "while parsing a flow mapping that starts at line 41, column 14)", "fix the file there")),
    Refusal("a local glob that matches nothing", _local_corpus(GOOD_DOCS, glob="*.jsonl"), ("-n",),
            ("corpus source 'local': no files match '{wf}/corpus/*.jsonl'; fix the glob",)),
    Refusal("a local corpus too small for block_size, known from its size",
            _local_corpus({"a.txt": "Article 1.\n", "b.txt": "Article 2.\n"}), ("-n",),
            ("corpus 'local' is too small for block_size 32: its files hold at most 24 tokens (one per byte), and the "
             "train and val splits need block_size + 1 = 33 each",
             "use a smaller run.model.block_size or a larger corpus")),
    Refusal("train.bin truncated to an odd size", _damage_data(lambda d: os.truncate(d / "train.bin", 1001)), ("-n",),
            ("token file data/eurlex-sample/train.bin is corrupt: 1001 bytes, but meta.json records",
             "re-create it with `snakemake --forcerun prepare`")),
    Refusal("meta.json not valid JSON", _damage_data(_cut_meta_json), ("-n",),
            ("data/eurlex-sample/meta.json is corrupt (not valid JSON: ", "`snakemake --forcerun prepare`")),
    Refusal("over a tiny budget", _with(budget={"usd": 1e-9, **H100}), ("-n",),
            ("over budget, not starting (the requested targets need 2 training jobs): planned cost $",
             "for 2 jobs exceeds the budget $0.0000000010 by $", "Biggest jobs: ")),
    Refusal("the scaling target without a scaling block", _with(scaling=None), ("-n", "results/scaling/report.html"),
            ("results/scaling/report.html needs a `scaling` block in the config",)),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("case", REFUSALS, ids=[r.id for r in REFUSALS])
def test_pipeline_refuses_before_any_job(case: Refusal, wf: Path):
    case.change(wf)
    before = _outputs(wf)
    proc = snakemake(wf, *case.args, check=False)
    errors = [line for line in proc.stdout.splitlines() if line.startswith("altgrad: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stdout, proc.stdout
    for fragment in case.expect:
        assert fragment.format(wf=wf) in errors[0], errors[0]
    assert "$0.00 exceeds" not in proc.stdout
    assert _outputs(wf) == before


@pytest.mark.slow
def test_pipeline_quoted_strings_and_null_blocks(wf: Path):
    """`tag: '300'` stays a string (it was a TypeError), `corpus.name: '2024'` is a name
    (it was refused), null blocks are their defaults (`scaling: null` was an AttributeError)."""
    cfg = _config(wf)
    del cfg["budget"]
    _set_config(wf, cfg, "extra_runs: [{format: e4m3, tag: '300'}]\nscaling: null\nab: null\nbudget: null\n")
    dry = snakemake(wf, "-n")
    assert executed_jobs(dry.stdout) == {"train": 1, "export": 1, "report": 1, "all": 1}
    assert "run=e4m3-adamw-s0-300" in dry.stdout
    cfg["corpus"]["name"] = "2024"
    _set_config(wf, cfg, "budget: {usd: 20, device: cpu}\n")
    assert "name: '2024'" in (wf / "config" / "config.yaml").read_text()  # quoted, as a person would
    dry = snakemake(wf, "-n")
    assert "data/2024/train.bin" in dry.stdout and executed_jobs(dry.stdout)["prepare"] == 1


@pytest.mark.slow
def test_the_budget_counts_only_the_requested_targets_jobs(wf: Path):
    """The scaling sweep is not part of results/report.html: over budget only with it, the
    default target runs and the sweep's target is refused."""
    _with(budget={"usd": 0.3, **H100}, scaling=SWEEP)(wf)  # the matrix's 2 jobs ~$0.09, the sweep's 18 ~$0.8
    assert executed_jobs(snakemake(wf, "-n").stdout) == {"report": 1, "all": 1}  # the budget shown in the report
    proc = snakemake(wf, "-n", "results/scaling/report.html", check=False)
    errors = [line for line in proc.stdout.splitlines() if line.startswith("altgrad: error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stdout
    assert "over budget, not starting (the requested targets need 18 training jobs): planned cost $" in errors[0]
    assert "for 18 jobs exceeds the budget $0.30 by $" in errors[0]


@pytest.mark.slow
def test_forcerun_prepare_is_the_way_out_of_a_damaged_corpus(wf: Path):
    os.truncate(wf / "data" / "eurlex-sample" / "train.bin", 1001)
    dry = snakemake(wf, "-n", "--forcerun", "prepare")
    assert executed_jobs(dry.stdout)["prepare"] == 1


@pytest.mark.slow
def test_a_corpus_only_prepare_finds_too_small_loses_nothing(wf: Path):
    """The issue's data loss: a new corpus too small for block_size that passes `-n` (a
    .parquet: its size says nothing about its tokens) fails the prepare step, which writes
    nothing; Snakemake restores the old corpus, no train job starts, results/ stay."""
    _local_corpus({"tiny.parquet": ["The Commission shall adopt acts.", "Member States shall lay down rules."]},
                  glob="*.parquet", name="eurlex-sample")(wf)
    before = _outputs(wf)
    train_logs = _snapshot(wf / "results" / "logs" / "train")
    proc = snakemake(wf, "--cores", "1", check=False)  # `-n` passes: nothing tells before tokenizing
    assert proc.returncode != 0
    log = (wf / "results" / "logs" / "prepare" / "eurlex-sample.log").read_text()
    assert log.count("\n") == 1 and "too small for block_size 32" in log and "nothing was written" in log
    assert "Restored previous version of data/eurlex-sample/train.bin" in proc.stdout
    assert _outputs(wf) == before  # the old corpus and every result, byte for byte
    assert _snapshot(wf / "results" / "logs" / "train") == train_logs  # no train job started


@pytest.mark.slow
def test_a_failing_train_job_keeps_the_runs_results(wf: Path):
    """A rerun of a finished run that fails (here: another trainer holds its directory)
    leaves its outputs as they were, and the tables and report with them."""
    run = wf / "results" / "runs" / "e5m2-adamw-s0"
    outputs = {k: v for k, v in _outputs(wf).items() if "bf16-adamw-s0" not in k}  # the run, tables, report
    _with(**{"run.train.lr": 4e-3})(wf)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom altgrad.training.run_lock import RunDirLock\n"
                               "with RunDirLock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)", str(run)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = snakemake(wf, "--cores", "1", "results/runs/e5m2-adamw-s0/summary.json", check=False)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode != 0
    log = (wf / "results" / "logs" / "train" / "e5m2-adamw-s0.log").read_text()
    assert log == (f"altgrad: error: {Path('results/runs/e5m2-adamw-s0')} is being written by another trainer "
                   f"(pid {holder.pid}); wait for it to finish, or stop it (kill {holder.pid}) and rerun to resume "
                   "from its last checkpoint\n")
    for name in ("steps.parquet", "summary.json", "config.yaml", "run.json"):
        assert f"Restored previous version of results/runs/e5m2-adamw-s0/{name}" in proc.stdout
    after = _outputs(wf)
    assert {k: after.get(k) for k in outputs} == outputs  # the run, metrics, summary, csv, report, figures


@pytest.mark.slow
def test_a_corrupt_steps_parquet_fails_export_and_keeps_the_tables(wf: Path, done: Path):
    """Export names the run and the recovery and writes nothing; Snakemake restores the
    tables; the recovery (rerun the run's train job: it resumes from its last checkpoint)
    gives the same rows."""
    steps = wf / "results" / "runs" / "bf16-adamw-s0" / "steps.parquet"
    keep = {k: v for k, v in _outputs(wf).items() if k.startswith(("results/metrics", "results/summary"))}
    _garble_pages("steps.parquet")(steps.parent)
    proc = snakemake(wf, "--cores", "1", check=False)
    assert proc.returncode != 0 and executed_jobs(proc.stdout).get("export") == 1
    log = (wf / "results" / "logs" / "export.log").read_text()
    rerun = "snakemake --forcerun results/runs/bf16-adamw-s0/summary.json"
    assert log.count("\n") == 1 and "run bf16-adamw-s0: results/runs/bf16-adamw-s0/steps.parquet is corrupt" in log
    assert rerun in log
    after = _outputs(wf)
    assert {k: after.get(k) for k in keep} == keep and len(keep) == 3
    snakemake(wf, "--cores", "1", *rerun.split()[1:], "results/summary.parquet")  # the recovery, up to export
    timing = ["tokens_per_s", "step_time_s"]
    pd.testing.assert_frame_equal(pd.read_parquet(steps).drop(columns=timing),
                                  pd.read_parquet(done / steps.relative_to(wf)).drop(columns=timing))


@pytest.mark.slow
def test_kill_9_of_snakemake_stops_its_train_job_which_then_resumes(wf: Path):
    """After `kill -9` of Snakemake alone (not its process group) the train job notices
    within a step, saves a checkpoint and exits; the rerun resumes it."""
    _with(**{"run.train.max_steps": 60, "run.train.checkpoint_interval": 5, "grid.formats": ["e5m2"]})(wf)
    run = wf / "results" / "runs" / "e5m2-adamw-s0"
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    target = "results/runs/e5m2-adamw-s0/summary.json"
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "1", target], cwd=wf, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while not ((run / "checkpoints.stale-1").exists() and list(run.glob("checkpoints/step-*.pt"))):
            assert proc.poll() is None, "the workflow ended before the first checkpoint"
            assert time.time() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
        trainer = int((run / ".lock").read_text())
    finally:
        proc.kill()  # Snakemake alone: its job's shell and trainer are left running
        proc.wait()
    while True:  # the trainer stops by itself
        try:
            os.kill(trainer, 0)
        except ProcessLookupError:
            break
        assert time.time() < deadline, "the trainer ran on after Snakemake was killed"
        time.sleep(0.1)
    log = (wf / "results" / "logs" / "train" / "e5m2-adamw-s0.log").read_text().strip().splitlines()[-1]
    assert log.startswith("altgrad: error: run e5m2-adamw-s0: stopped at step ") and "rerun to resume" in log
    snakemake(wf, "--unlock")
    snakemake(wf, "--cores", "1", target)
    assert "resumed at step" in (wf / "results" / "logs" / "train" / "e5m2-adamw-s0.log").read_text()
    assert list(pd.read_parquet(run / "steps.parquet")["step"]) == list(range(60))
