"""Progress of a batch on stderr: a bar on a terminal, occasional plain lines in a log.

On a terminal each input gets a tqdm bar (patches done, rate, time left) labelled with
its place in the batch. When stderr is a file or a pipe, carriage-return frames would
fill the log, so progress is written as a plain line at most every :data:`LOG_EVERY`
seconds, and after each input a line says how many inputs are left and about how long
they will take.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Sequence, TextIO

#: Seconds between two progress lines of one input in a log.
LOG_EVERY = 30.0


def duration(seconds: float) -> str:
    """``75`` -> ``1 min 15 s``; ``5400`` -> ``1 h 30 min``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s" if minutes < 10 and seconds else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


class _LogLines:
    """A :class:`isprs_seg.tiling.stream.Progress` that writes a plain line now and then."""

    def __init__(self, label: str, total: int, stream: TextIO, every: float):
        self.label, self.total, self.stream, self.every = label, total, stream, every
        self.done = 0
        self.started = self.last = time.monotonic()

    def __enter__(self) -> _LogLines:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every and self.done < self.total:
            self.last = now
            rate = self.done / max(now - self.started, 1e-9)
            left = (self.total - self.done) / rate if rate else 0
            print(f"isprs-seg: {self.label}: {self.done}/{self.total} patches ({100 * self.done // self.total} %), "
                  f"about {duration(left)} left", file=self.stream, flush=True)


class BatchProgress:
    """Progress display for a batch of ``paths`` (nothing at all when ``quiet``)."""

    def __init__(self, paths: Sequence[str], quiet: bool, stream: TextIO | None = None,
                 interactive: bool | None = None, every: float = LOG_EVERY):
        self.paths, self.quiet, self.every = list(paths), quiet, every
        self.stream = stream or sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.sizes = [_size(p) for p in self.paths]
        self.work_seconds = 0.0  # spent on inputs that were run (not skipped)
        self.work_bytes = 0
        self.runs = 0

    def _label(self, index: int) -> str:
        prefix = f"[{index + 1}/{len(self.paths)}] " if len(self.paths) > 1 else ""
        return prefix + Path(self.paths[index]).name

    def bar(self, index: int):
        """The progress factory for input ``index`` (see :data:`isprs_seg.runs.local.ProgressFactory`)."""
        label = self._label(index)
        if not self.interactive or self.quiet:
            return lambda total: _LogLines(label, total, self.stream, self.every if not self.quiet else float("inf"))
        from tqdm import tqdm

        return lambda total: tqdm(total=total, desc=label, unit="patch", file=self.stream, dynamic_ncols=True)

    def finished(self, index: int, seconds: float | None, ran: bool) -> None:
        """After input ``index``: in a log, a line with the inputs left and an estimate of the time they need."""
        if ran:
            self.runs += 1
            self.work_seconds += seconds or 0.0
            self.work_bytes += self.sizes[index] or 0
        left = len(self.paths) - index - 1
        if self.quiet or self.interactive or not ran or len(self.paths) == 1:
            return
        line = f"isprs-seg: {self._label(index)} done in {duration(seconds or 0)}"
        if left:
            line += f"; {left} input{'s' if left > 1 else ''} left"
            estimate = self._estimate(index + 1)
            if estimate is not None:
                line += f", about {duration(estimate)}"
        print(line, file=self.stream, flush=True)

    def _estimate(self, start: int) -> float | None:
        """Seconds for inputs ``start...``: by bytes on disk when every size is known, else by count."""
        if not self.runs:
            return None
        rest = self.sizes[start:]
        if self.work_bytes and all(size is not None for size in rest):
            return self.work_seconds / self.work_bytes * sum(rest)
        return self.work_seconds / self.runs * len(rest)


def _size(path: str) -> int | None:
    try:
        return os.path.getsize(path) if not path.startswith("/vsi") else None
    except OSError:
        return None
