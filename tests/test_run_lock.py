"""One writer per run directory: a second holder is refused at once, naming the first's pid;
a killed holder leaves no stale lock."""

import os
import signal
import subprocess
import sys
import time

import pytest

from altgrad.training.run_lock import RunDirBusy, RunDirLock

HOLD = """
import sys, time
from altgrad.training.run_lock import RunDirLock
with RunDirLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_is_refused_with_the_holders_pid_until_the_holder_dies(tmp_path):
    run_dir = tmp_path / "runs" / "e4m3-adamw-s0"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.perf_counter()
        with pytest.raises(RunDirBusy) as info:
            RunDirLock(run_dir).__enter__()
        assert time.perf_counter() - started < 1.0  # at once, not after a wait
        message = str(info.value)
        assert "\n" not in message and str(run_dir) in message and f"pid {holder.pid}" in message
        assert f"kill {holder.pid}" in message
    finally:
        holder.send_signal(signal.SIGKILL)  # the hardest exit: no cleanup code runs
        holder.wait()
    with RunDirLock(run_dir) as lock:  # the kernel dropped the dead holder's lock
        assert lock.path.read_text().strip() != str(holder.pid)
    with RunDirLock(run_dir):  # and released ours on exit
        pass


def test_the_lock_nests_within_one_process(tmp_path):
    """`altgrad train` takes it before writing the config, the trainer again for the run."""
    run_dir = tmp_path / "run"
    with RunDirLock(run_dir) as outer:
        with RunDirLock(run_dir) as inner:
            assert inner.fd == outer.fd
        holder = subprocess.run([sys.executable, "-c", HOLD, str(run_dir)], capture_output=True, text=True, timeout=60)
        assert holder.returncode != 0 and f"pid {os.getpid()}" in holder.stderr  # still held after the inner exit
    with RunDirLock(run_dir):  # released by the outer exit
        pass
