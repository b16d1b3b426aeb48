"""One writer per run directory: an exclusive lock the trainer holds for as long as it runs.

Two trainers on one run directory would interleave checkpoints and rows (after `kill -9` of
Snakemake its train job runs on, orphaned; an `--unlock` and rerun starts a second one). The
lock is `flock` on ``<run dir>/.lock``: the kernel drops it when the holder exits, however it
exits, so a crashed or killed trainer never leaves a stale lock behind. The file holds the
holder's pid, so the refusal can say which process to stop.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from altgrad.errors import AltgradError

LOCK_NAME = ".lock"


class RunDirBusy(AltgradError):
    """Another process holds the run directory's lock."""


class RunDirLock:
    """`with RunDirLock(run_dir):` holds the run directory exclusively, or raises RunDirBusy at once."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None

    def __enter__(self) -> "RunDirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirBusy(
                f"{self.path.parent} is being written by another trainer (pid {holder}); wait for it to finish, "
                f"or stop it (kill {holder}) and rerun to resume from its last checkpoint"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock; the file stays (removing it would race a waiter)
            self.fd = None
