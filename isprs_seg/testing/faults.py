"""Fault injection for the tests of the Ray engine: a worker that dies in the middle of a strip.

Set :data:`FAULT_EXIT_ONCE` to a path that does not exist: the first worker to reach
the middle of a strip creates it and exits at once, as a crashing worker would; the
others (and the restarted worker) carry on. Workers read it through
:func:`progress_for_strips`; without the variable it costs nothing.
"""

from __future__ import annotations

import os

from ..tiling.stream import NoProgress

#: The environment variable that arms the fault (forwarded to Ray's workers like every ``ISPRS_SEG_`` one).
FAULT_EXIT_ONCE = "ISPRS_SEG_FAULT_EXIT_ONCE"


class ExitOnce(NoProgress):
    """A progress display that makes the process exit at its first update, once per armed path."""

    def update(self, n: int = 1) -> None:
        try:
            with open(os.environ[FAULT_EXIT_ONCE], "x"):
                pass
        except FileExistsError:
            return
        os._exit(1)


def progress_for_strips():
    """The progress display a worker gives its strips: :class:`ExitOnce` when armed, else None."""
    return ExitOnce if os.environ.get(FAULT_EXIT_ONCE) else None
