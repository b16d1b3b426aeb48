"""The one exception type for expected, user-fixable failures.

Raise :class:`AltgradError` with a message that says what went wrong and how to fix it
(bad config, missing or corrupt input, unreachable data source, ...). The CLI prints
such errors as one line on stderr and exits with code 2, without a traceback; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class AltgradError(Exception):
    """An expected error whose message is meant for the user (no traceback needed)."""


class PreparedDataError(AltgradError):
    """A prepared corpus (``train.bin``, ``val.bin``, ``meta.json``) is missing, corrupt or
    disagrees with its ``meta.json``; preparing it again fixes it. A separate type so that a
    caller which can re-prepare (the pipeline, when asked to) can tell it from other errors."""


__all__ = ["AltgradError", "PreparedDataError"]
