"""What a training job cost in wall time: seconds of the processes that made a run.

A run's ``wall_time_s`` sums its optimizer steps only. What the job cost (what a device
is billed for) also holds the interpreter and torch start-up, the data checks, building the
model, evaluation, checkpoints and writing the outputs. :class:`JobClock` measures that:
from the start of the process (Linux: ``/proc/self/stat`` field 22, the start time in clock
ticks since boot, against ``/proc/uptime``) to now, plus what earlier processes of the same
run spent (restored from the run's checkpoint on resume).

Only the first clock made in a process counts from the process start: a program that trains
several runs one after another (a benchmark, a test session) charges each later run from
the moment its clock was made. Where ``/proc`` cannot be read, the clock counts from when it
was made. The time a killed process spent after its last checkpoint is not recorded anywhere,
so a run resumed after a kill reports at least what was saved, never more than was spent.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

__all__ = ["JobClock", "process_age"]

_process_claimed = False  # set by the first JobClock of this process


def process_age() -> float | None:
    """Seconds since this process started, from ``/proc``; None where that cannot be read."""
    try:
        stat = Path("/proc/self/stat").read_text()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        # field 2 (the command name) is in parentheses and may hold spaces: count after it;
        # field 22 (starttime) is then the 20th
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    age = uptime - start_ticks / ticks
    # a container may show its own uptime beside the host's start times: not a usable age
    return age if age >= 0.0 else None


class JobClock:
    """Wall seconds of a run's processes so far: :meth:`total`.

    ``before`` is what earlier processes of the run spent (0 for a new run; set it from a
    checkpoint when resuming). ``since`` says where this process's share is counted from:
    ``"process start"`` or ``"clock made"``.
    """

    def __init__(self) -> None:
        global _process_claimed
        now = time.perf_counter()
        age = None if _process_claimed else process_age()
        _process_claimed = True
        self.origin = now - (age or 0.0)
        self.since = "clock made" if age is None else "process start"
        self.before = 0.0

    def this_process(self) -> float:
        """Seconds this process has spent on the run."""
        return time.perf_counter() - self.origin

    def total(self) -> float:
        """Seconds all processes of the run have spent on it."""
        return self.before + self.this_process()
