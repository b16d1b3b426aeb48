"""Experiment tracking: a W&B mirror of the metric rows (offline by default, never required).

Local parquet is the record; W&B only mirrors it. Mode comes from the config and can be
overridden with the WANDB_MODE environment variable (tests set "disabled"). Offline runs
write under the run directory and can be uploaded later with `wandb sync`.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

from altgrad.errors import AltgradError


class Tracker:
    """Mirrors rows and alerts to W&B when enabled; does nothing when disabled."""

    def __init__(self, mode: str, project: str, name: str, run_dir: Path, config: dict, run_id: str | None):
        self.mode = os.environ.get("WANDB_MODE", mode)
        self.run = None
        self.run_id = run_id
        if self.mode == "disabled":
            return
        try:
            import wandb
        except ImportError as error:
            raise AltgradError(f"tracking.wandb_mode is {self.mode!r} but wandb is not installed ({error}); "
                               "install it or set tracking.wandb_mode: disabled") from None
        try:
            self.run = wandb.init(
                project=project, name=name, id=run_id, resume="allow", mode=self.mode,
                dir=str(run_dir), config=config, settings=wandb.Settings(silent=True),
            )
        except Exception as error:  # noqa: BLE001 - wandb raises many kinds when its servers are unreachable
            if self.mode == "online":
                raise AltgradError(
                    f"W&B online tracking failed to start ({error}). Check network access to the W&B "
                    "server and `wandb login`, or set tracking.wandb_mode: offline (sync later with "
                    "`wandb sync`) or disabled."
                ) from None
            warnings.warn(f"W&B {self.mode} tracking unavailable ({error}); continuing without it")
            return
        self.run_id = self.run.id

    def log(self, row: dict[str, Any]) -> None:
        if self.run is not None:
            clean = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v))}
            self.run.log(clean, step=int(row["step"]))

    def alert(self, title: str, text: str) -> None:
        if self.run is not None:
            try:
                self.run.alert(title=title, text=text)
            except Exception as error:  # noqa: BLE001 - alerts are best effort offline
                warnings.warn(f"W&B alert not sent: {error}")

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
