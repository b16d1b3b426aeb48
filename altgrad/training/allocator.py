"""Make glibc keep freed blocks of up to 32 MB in the process: a train step then reuses its
temporaries' memory instead of faulting it in again, and timings do not depend on luck.

By default glibc returns large freed blocks to the kernel (mmap'd blocks, and the trimmed top
of the heap) with a threshold that moves with what was freed before, so the next allocation
of the same size may fault its pages in again, or not. That made the same AdamW step measure
15 to 29 ms within one run here. Serving blocks up to 32 MB (glibc's largest mmap threshold)
from the heap and never trimming it makes them reused, as a GPU's caching allocator reuses
them. Larger blocks (a 16M-element float32 tensor is 64 MB) are still mmap'd: every such
allocation faults its pages in, the same for every row of a table.

`altgrad train` calls it before building the model (the default tiny job: 17.97 -> 13.49 s
wall, the same rows, benchmarks/job_overhead.py); the benchmarks call it before timing.
"""

import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> str:
    """Set glibc's malloc to reuse freed memory; returns what it did, for the table's header
    (where that is not glibc, timings include page faults)."""
    left = "allocator left as is (timings include page faults)"
    if not sys.platform.startswith("linux"):
        return left
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return left
    done = all(mallopt(option, value) == 1 for option, value in (
        (_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 2**31 - 1)))
    return "freed blocks <= 32 MB reused" if done else left
