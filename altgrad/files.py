"""File helpers every part uses: atomic writes (temp file beside, then rename) and hashing.

A reader never sees a partial file, and a killed process leaves at most a stray
`.name.*.tmp` beside the target, never a truncated target.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def temp_beside(path: str | os.PathLike[str]) -> tuple[int, Path]:
    """A temp file next to `path` (same filesystem, so `os.replace` is atomic), with the
    permissions a plain `open()` would give (mkstemp makes them 0600). Returns (fd, path)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_UMASK)
    return fd, Path(tmp)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb") -> Iterator[IO[Any]]:
    """Write through a temp file that is fsynced and renamed over `path` on success."""
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """For writers that take a path (parquet, torch.save): `write(tmp)`, then rename."""
    fd, tmp = temp_beside(path)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def cache_dir() -> Path:
    """altgrad's cache (downloads, built kernels): ``$ALTGRAD_CACHE``, else ``$XDG_CACHE_HOME/altgrad``,
    else ``~/.cache/altgrad``. Never inside the repository."""
    env = os.environ.get("ALTGRAD_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "altgrad"


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
