"""One writer per run directory: an exclusive lock the trainer holds for as long as it runs.

Two trainers on one run directory would interleave checkpoints and rows (after `kill -9` of
Snakemake its train job runs on, orphaned; an `--unlock` and rerun starts a second one). The
lock is `flock` on ``<run dir>/.lock``: the kernel drops it when the holder exits, however it
exits, so a crashed or killed trainer never leaves a stale lock behind. The file holds the
holder's pid, so the refusal can say which process to stop (``cat <run dir>/.lock``).

Within one process the lock nests: ``altgrad train`` takes it before it writes the run's
config and labels, and the trainer takes it again for the run (a second ``flock`` on another
descriptor of the same file would refuse its own process).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from altgrad.errors import AltgradError

LOCK_NAME = ".lock"

_held: dict[Path, tuple[int, int]] = {}  # lock file (resolved) -> (descriptor, nesting depth), this process


class RunDirBusy(AltgradError):
    """Another process holds the run directory's lock."""


class RunDirLock:
    """`with RunDirLock(run_dir):` holds the run directory exclusively, or raises RunDirBusy at once."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None

    def __enter__(self) -> RunDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = self.path.resolve()
        if key in _held:  # this process holds it already: nest
            fd, depth = _held[key]
            _held[key] = (fd, depth + 1)
            self.fd = fd
            return self
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
        _held[key] = (fd, 1)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        key = self.path.resolve()
        fd, depth = _held[key]
        if depth > 1:
            _held[key] = (fd, depth - 1)
        else:
            del _held[key]
            os.close(fd)  # closing drops the flock; the file stays (removing it would race a waiter)
        self.fd = None


class ProcessWatch:
    """Whether the process ``pid`` still runs: the trainer's check that the Snakemake which
    started its job is alive (``altgrad train --stop-with PID``; the train rule passes the
    shell's ``$PPID``, Snakemake's pid).

    After ``kill -9`` of Snakemake its job's shell and trainer run on, orphaned; with this
    check the trainer saves a checkpoint and stops within one step. A pid is reused only
    after the process is gone and reaped: where ``/proc`` exists, the process's start time is
    compared too, and a zombie (killed, not yet reaped) counts as gone.
    """

    def __init__(self, pid: int):
        self.pid = int(pid)
        self.started = _proc_stat(self.pid)[1]

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # it exists (another user's process)
        state, started = _proc_stat(self.pid)
        return state not in ("Z", "X") and (self.started is None or started == self.started)

    def describe(self) -> str:
        return f"pid {self.pid}"


def _proc_stat(pid: int) -> tuple[str | None, str | None]:
    """(state, start time) of ``pid`` from /proc (None, None where there is no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None, None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is field 3, starttime 22
    return fields[0], fields[19]
