"""Checkpoints: atomic writes, best + last N kept, loaded with weights_only=True.

Files are `step-00000100.pt` (periodic / anomaly) and `best.pt` (lowest val loss). A
checkpoint that cannot be read (truncated, corrupt) is skipped with a warning and the
previous one is used: a crash during a write never costs more than one interval.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from altgrad.files import atomic_write

_STEP_FILE = re.compile(r"^step-(\d{8})\.pt$")


class CheckpointStore:
    """The checkpoints of one run, in `directory`."""

    def __init__(self, directory: str | os.PathLike, keep: int = 2):
        self.directory = Path(directory)
        self.keep = keep

    def step_files(self) -> list[Path]:
        """Periodic checkpoints, newest first."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if _STEP_FILE.match(p.name)]
        return sorted(found, key=lambda p: int(_STEP_FILE.match(p.name).group(1)), reverse=True)

    def save(self, state: dict[str, Any], step: int, best: bool = False) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"step-{step:08d}.pt"
        atomic_write(path, lambda tmp: torch.save(state, tmp))
        if best:
            atomic_write(self.directory / "best.pt", lambda tmp: torch.save(state, tmp))
        for old in self.step_files()[self.keep :]:
            old.unlink()
        return path

    def load_latest(self, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        """The newest readable periodic checkpoint, or None when there is none."""
        for path in self.step_files():
            try:
                return torch.load(path, map_location=map_location, weights_only=True)
            except Exception as error:  # noqa: BLE001 - any unreadable file means "try the previous one"
                warnings.warn(f"checkpoint {path} is unreadable ({error}); falling back to the previous one")
        return None
