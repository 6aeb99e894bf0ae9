"""The streaming engine: the batches of a plan through the model, blended, row by row.

Three stages overlap through bounded queues: a reader thread cuts the planned batches
out of full-width row bands (each row read once), the calling thread runs the model on
them, and a blend thread accumulates the outputs and hands finished rows to a sink;
while the model runs batch k, batch k+1 is read and batch k-1 blended and written.

The batches are those of the plan (:mod:`isprs_seg.tiling.plan`), whatever the timing of
the threads: a patch without a valid pixel under a non-zero weight is dropped from its
batch (never sent to the model), and nothing else changes a batch. The accumulator
releases rows as soon as no later patch can touch them, so memory depends on the patch
size and the image width, not on the image height.

Knows nothing of files, formats or the command line: rows come from a row source
(:class:`isprs_seg.io.raster.RowReader`) and go to a sink.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np

from .blend import StreamingAccumulator, patch_window, pool_valid
from .grid import Grid
from .plan import Batch, PlannedPatch, Strip


class RowSource(Protocol):
    """Raw bands ``[bands, count, width]`` and validity ``[count, width]`` of image rows
    ``[row, row + count)``, asked for in order down the image."""

    def rows(self, row: int, count: int) -> tuple[np.ndarray, np.ndarray]: ...


class Sink(Protocol):
    """Where finished output rows go, in order: ``values [channels, rows, width]`` and
    ``valid [rows, width]`` at the output's resolution; :meth:`finish` after the last row.
    The arrays are only lent for the call: a sink copies what it keeps."""

    def write(self, row: int, values: np.ndarray, valid: np.ndarray) -> None: ...
    def finish(self) -> None: ...


class Progress(Protocol):
    """A progress display (a tqdm bar fits): a context manager with ``update(n)``."""

    def __enter__(self) -> Progress: ...
    def __exit__(self, *exc) -> object: ...
    def update(self, n: int = 1) -> object: ...


class NoProgress:
    def __init__(self, total: int = 0):
        pass

    def __enter__(self) -> NoProgress:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass


#: Maps raw patches ``[n, bands, h, w]`` and their blend weights ``[n, h / stride, w / stride]``
#: to the model's outputs times the weights, channel-first: ``[n, channels, h / stride, w / stride]``
#: (the weighting is done where the model runs, on the GPU when there is one).
Infer = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass
class Counts:
    sent: int = 0  # patches sent to the model
    skipped: int = 0  # patches without a valid pixel under a non-zero weight


@dataclass
class _Batch:
    """A planned batch as read: the patches kept, their raw pixels and blend weights."""

    patches: tuple[PlannedPatch, ...]  # the patches kept
    planned: tuple[PlannedPatch, ...]  # the batch as planned, in order
    raw: np.ndarray | None  # [n, bands, h, w]; None when every patch was dropped
    weights: np.ndarray  # [n, h / stride, w / stride]: blend window x validity
    dropped: int
    outputs: np.ndarray | None = field(default=None)


def cut_batches(batches: Sequence[Batch], reader: RowSource, grid: Grid, blend: str, stride: int
                ) -> Iterator[_Batch]:
    """The planned batches with their pixels, patches without weight dropped."""
    th, tw = grid.patch_shape
    band_row, band_raw, band_valid = -1, None, None
    for batch in batches:
        kept, raws, weights = [], [], []
        for patch in batch:
            if patch.row != band_row:
                band_raw, band_valid = reader.rows(patch.y, th)
                band_row = patch.row
            window = patch_window(grid, patch.row, patch.col, blend, stride)
            valid = band_valid[:, patch.x : patch.x + tw]
            if not valid.all():
                window = window * pool_valid(valid, stride)
                if not window.any():
                    continue
            kept.append(patch)
            raws.append(band_raw[:, :, patch.x : patch.x + tw])
            weights.append(window)
        raw = np.stack(raws) if raws else None  # a copy: the row bands can go
        stacked = np.stack(weights) if weights else np.zeros((0, 0, 0), np.float32)
        yield _Batch(tuple(kept), tuple(batch), raw, stacked, len(batch) - len(kept))


_DONE = object()


class _Stopped(Exception):
    """A stage gave up because another one failed or was interrupted."""


class _Stage(threading.Thread):
    """One engine stage in its own thread; the calling thread re-raises its error."""

    def __init__(self, work: Callable[[], None], name: str):
        super().__init__(name=name, daemon=True)
        self.work, self.error = work, None

    def run(self) -> None:
        try:
            self.work()
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            self.error = exc


def _put(q: queue.Queue, item, stop: threading.Event, peer: _Stage | None = None) -> None:
    """Put ``item`` when there is room; give up when stopped or when the consumer died."""
    while True:
        if peer is not None and peer.error is not None:
            raise peer.error
        if stop.is_set():
            raise _Stopped()
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _get(q: queue.Queue, stop: threading.Event, peer: _Stage | None = None):
    """Take the next item; give up when stopped or when the producer died."""
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if peer is not None and peer.error is not None:
                raise peer.error from None
            if peer is not None and not peer.is_alive():
                try:  # it may have put its last item just after the timeout
                    return q.get_nowait()
                except queue.Empty:
                    raise RuntimeError(f"{peer.name} ended without finishing") from None
            if stop.is_set():
                raise _Stopped() from None


def _join(*stages: _Stage) -> None:
    """Wait for the stages to end, even through a second Ctrl-C: the datasets they use
    are closed only after this returns."""
    for stage in stages:
        while stage.is_alive():
            try:
                stage.join()
            except BaseException:  # noqa: BLE001 - the first interruption is already on its way
                continue


def stream(
    grid: Grid, batches: Sequence[Batch], reader: RowSource, infer: Infer, sink: Sink, *,
    blend: str, stride: int, channels: int, progress: Progress | None = None, normalise: bool = True,
    strip: Strip | None = None,
) -> Counts:
    """Run ``batches`` of ``grid`` through ``infer`` and write the blended rows to ``sink``.

    ``stride``: output pixels are ``stride`` input pixels a side (1 for classes, 4 for
    features); ``channels``: values per output pixel. ``progress`` advances once per
    planned patch. The sink receives every output row exactly once, in order, as the
    weighted mean, or with ``normalise`` False as the weighted sums (enough for an
    argmax); it is not finished here.

    With ``strip`` (image rows that are a multiple of ``stride`` apart), ``batches``
    are those of :func:`isprs_seg.tiling.plan.strip_batches`: only the patches touching the
    strip are blended, only its rows go to the sink (still numbered as in the whole
    output), and the counts and the progress are those of the patches it owns.
    """
    stop = threading.Event()
    progress = progress or NoProgress()
    # one batch waiting between stages is enough to keep every stage busy
    to_model: queue.Queue = queue.Queue(maxsize=1)
    to_blend: queue.Queue = queue.Queue(maxsize=1)
    counts = Counts()
    height, width = -(-grid.height // stride), -(-grid.width // stride)
    patch_height = grid.patch_shape[0]
    if strip is None:
        def blended(patch: PlannedPatch) -> bool:
            return True
        counted, first_row, last_row = blended, 0, height
    else:
        def blended(patch: PlannedPatch) -> bool:
            return strip.touches(patch, patch_height)
        counted, first_row, last_row = strip.owns, strip.start // stride, -(-strip.stop // stride)

    def read() -> None:
        for batch in cut_batches(batches, reader, grid, blend, stride):
            counts.sent += sum(map(counted, batch.patches))
            counts.skipped += sum(map(counted, batch.planned)) - sum(map(counted, batch.patches))
            _put(to_model, batch, stop)
        _put(to_model, _DONE, stop)

    def accumulate() -> None:
        top = min((p.y for b in batches for p in b if blended(p)), default=0) // stride
        acc = StreamingAccumulator(height, width, channels, patch_height // stride, top)

        def release(until: int) -> None:
            for row, values, valid in acc.release(until, normalise):
                if stop.is_set():
                    raise _Stopped()
                if row < first_row:  # rows above a strip: other strips write them
                    cut = first_row - row
                    if cut >= valid.shape[0]:
                        continue
                    row, values, valid = first_row, values[:, cut:], valid[cut:]
                sink.write(row, values, valid)

        side_y, side_x = patch_height // stride, grid.patch_shape[1] // stride
        while (batch := _get(to_blend, stop)) is not _DONE:
            sent = dict(zip(batch.patches, zip(batch.outputs, batch.weights)))
            for patch in batch.planned:  # every planned patch in order: the accumulator counts on it
                if not blended(patch):
                    continue
                row, col = patch.y // stride, patch.x // stride
                release(row)
                if patch in sent:
                    acc.add(row, col, *sent[patch])
                else:
                    acc.skip(row, col, side_y, side_x)
            progress.update(sum(map(counted, batch.planned)))
        release(last_row)

    reader_stage = _Stage(read, "isprs-seg-reader")
    blend_stage = _Stage(accumulate, "isprs-seg-blender")
    reader_stage.start()
    blend_stage.start()
    try:
        while (batch := _get(to_model, stop, reader_stage)) is not _DONE:
            batch.outputs = infer(batch.raw, batch.weights) if batch.raw is not None else ()
            _put(to_blend, batch, stop, blend_stage)
        _put(to_blend, _DONE, stop, blend_stage)
        blend_stage.join()
        if blend_stage.error is not None:
            raise blend_stage.error
    except BaseException:
        stop.set()
        _join(reader_stage, blend_stage)
        raise
    _join(reader_stage)
    return counts
