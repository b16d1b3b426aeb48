"""What a run's results depend on besides its config: the library's code and the corpus.

A run is a function of three things: its config (``RunConfig.config_hash``), the source of
the altgrad packages that compute it (:func:`library_hash`) and the tokens it reads
(:func:`corpus_hash`, from the corpus's ``meta.json``). The trainer resumes a checkpoint
only when all three are the ones it was saved under (:func:`run_provenance`), and the
pipeline's train rule carries the library hash as a param, because Snakemake does not
track the files inside an installed package.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["LIBRARY_PACKAGES", "corpus_hash", "library_hash", "run_provenance"]

LIBRARY_PACKAGES = ("quantization", "nn", "optim", "training")  # what a run's numbers depend on


def library_hash(packages: Sequence[str] = LIBRARY_PACKAGES, root: str | Path | None = None) -> str:
    """sha256 (first 16 hex) over the source of altgrad packages (or single modules, given as
    ``name.py``): by default the ones a run depends on.

    ``root``: the package directory (default: the imported altgrad's).
    """
    import altgrad

    root = Path(altgrad.__file__).parent if root is None else Path(root)
    h = hashlib.sha256()
    for pkg in packages:
        for path in [root / pkg] if pkg.endswith(".py") else sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def corpus_hash(meta: Mapping[str, Any]) -> str:
    """sha256 (first 16 hex) over the checksums ``meta.json`` records for each ``.bin``."""
    sums = meta.get("sha256", {})
    text = "\0".join(f"{name}={sums[name]}" for name in sorted(sums))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_provenance(config_hash: str, meta: Mapping[str, Any]) -> dict[str, str]:
    """``{"config": ..., "code": ..., "corpus": ...}``: equal exactly when a saved state
    belongs to the run being trained."""
    return {"config": config_hash, "code": library_hash(), "corpus": corpus_hash(meta)}
