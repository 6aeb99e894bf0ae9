"""Blend weights for patches and the streaming accumulator that stitches them.

Pure numpy, no TensorFlow and no files.

Every patch gets a separable weight window built from its overlaps with its neighbours
(:meth:`isprs_seg.tiling.grid.Axis.ramps`). Towards the image border a patch keeps full weight,
so the image frame is never attenuated. Inside the image:

``taper`` (default)
    The outer quarter of each overlap gets no weight (the network's own patch-border
    effects live there); across the middle half the weight rises as a raised cosine
    that sums to exactly one with the neighbour's falling ramp.
``crop``
    Each pixel of an overlap counts only for the patch whose centre is nearer: the
    half-overlap margins get zero weight.

The output is ``sum(w * p) / sum(w)`` in float32; pixels without weight (invalid input)
are reported as invalid.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterator

import numpy as np

from ..options import BLEND_MODES
from .grid import Grid


def ramp(length: int, mode: str) -> np.ndarray:
    """Rising weights across an overlap of ``length`` pixels (pixel centres at k + 0.5).

    ``ramp(n)[k] + ramp(n)[n - 1 - k] == 1``: a patch's rising ramp and its neighbour's
    falling ramp over the same pixels form a partition of unity.
    """
    centres = np.arange(length, dtype=np.float64) + 0.5
    if mode == "taper":
        t = np.clip((centres - length / 4) / (length / 2), 0.0, 1.0)
        return np.sin(np.pi / 2 * t) ** 2
    if mode == "crop":
        return (centres >= length / 2).astype(np.float64)
    raise ValueError(f"unknown blend mode {mode!r}; choose from {', '.join(BLEND_MODES)}")


@lru_cache(maxsize=64)
def profile(size: int, before: int, after: int, mode: str) -> np.ndarray:
    """1-D weights of a patch of ``size`` pixels with the given overlaps on each side."""
    weights = np.ones(size, dtype=np.float64)
    if before:
        weights[:before] *= ramp(before, mode)
    if after:
        weights[size - after :] *= ramp(after, mode)[::-1]
    weights = weights.astype(np.float32)
    weights.flags.writeable = False
    return weights


def patch_window(grid: Grid, row: int, col: int, mode: str, stride: int = 1) -> np.ndarray:
    """2-D weights ``[h / stride, w / stride]`` of patch (``row``, ``col``) of ``grid`` (read-only).

    With ``stride`` > 1 the window is built at the output's lower resolution (patch
    sizes and overlaps are multiples of the lattice, hence of the stride), so the
    weights of neighbouring patches still sum to one. A grid has only a handful of
    distinct windows (edges, corners, interior), each computed once.
    """
    (before_y, after_y), (before_x, after_x) = grid.rows.ramps(row), grid.cols.ramps(col)
    return _window(grid.rows.size // stride, before_y // stride, after_y // stride,
                   grid.cols.size // stride, before_x // stride, after_x // stride, mode)


def weighted_extent(grid: Grid, row: int, col: int, mode: str, stride: int = 1) -> tuple[slice, slice]:
    """Rows and columns of patch (``row``, ``col``), in input pixels from its top-left
    corner, where its window (:func:`patch_window`) is non-zero: a rectangle, since the
    window is the outer product of two profiles that are each non-zero on one run."""
    (before_y, after_y), (before_x, after_x) = grid.rows.ramps(row), grid.cols.ramps(col)
    return (_nonzero(grid.rows.size, before_y, after_y, mode, stride),
            _nonzero(grid.cols.size, before_x, after_x, mode, stride))


@lru_cache(maxsize=64)
def _nonzero(size: int, before: int, after: int, mode: str, stride: int) -> slice:
    where = np.flatnonzero(profile(size // stride, before // stride, after // stride, mode))
    return slice(int(where[0]) * stride, (int(where[-1]) + 1) * stride)


@lru_cache(maxsize=32)
def _window(height: int, top: int, bottom: int, width: int, left: int, right: int, mode: str) -> np.ndarray:
    window = np.outer(profile(height, top, bottom, mode), profile(width, left, right, mode))
    window.flags.writeable = False
    return window


def pool_valid(valid: np.ndarray, stride: int) -> np.ndarray:
    """Validity at 1/``stride`` resolution: an output pixel is valid when any input pixel
    under it is (``valid``'s sides are multiples of ``stride``)."""
    if stride == 1:
        return valid
    h, w = valid.shape
    return valid.reshape(h // stride, stride, w // stride, stride).any(axis=(1, 3))


class StreamingAccumulator:
    """Weighted sums over a band of rows that slides down the image.

    Holds ``channels x band_rows x width`` float32 sums (channel-first, so that every
    channel is a contiguous plane, as GeoTIFF bands are) plus a weight sum in a ring
    (image row ``r`` lives in band row ``r % band_rows``), so sliding the band down
    moves no data: memory depends on the patch height and the image width, never on the
    image height. Patches must arrive in row order of their origins; :meth:`release`
    hands back the finished rows above a given row in chunks of bounded size.
    """

    #: Values per released chunk, at most (bounds the temporary arrays of consumers).
    CHUNK_VALUES = 8_000_000

    def __init__(self, height: int, width: int, channels: int, band_rows: int, top: int = 0):
        self.height, self.width, self.channels = height, width, channels
        self.band_rows = band_rows
        self.top = top  # first image row not yet released (a strip of the image starts lower)
        self.sums = np.zeros((channels, band_rows, width), np.float32)
        self.weights = np.zeros((band_rows, width), np.float32)
        self.chunk_rows = max(1, min(band_rows, self.CHUNK_VALUES // max(1, width * channels)))
        self._means: np.ndarray | None = None  # reused buffer of released means
        # where the patches so far reach: the previous patch row, and the last patch of this one
        self._row_y: int | None = None
        self._prev_end = self._row_end = self._left_end = 0

    def _segments(self, row: int, count: int) -> Iterator[tuple[int, int, int]]:
        """(band row, offset into the request, rows) pieces of image rows [row, row + count)."""
        done = 0
        while done < count:
            start = (row + done) % self.band_rows
            n = min(count - done, self.band_rows - start)
            yield start, done, n
            done += n

    def _fresh(self, y: int, x: int, h: int, w: int) -> tuple[int, int]:
        """(first row, first column) of the part of a patch no earlier patch reached.

        Patches come row by row, left to right: the rows above the end of the previous
        patch row, and the columns left of the end of the previous patch in this row,
        already hold sums; the rest of the patch is the first to reach its pixels, so it
        is written rather than added to (no zeroing of released rows, one pass less).
        """
        if y != self._row_y:
            self._prev_end = self._row_end if self._row_y is not None else 0
            self._row_y, self._left_end = y, 0
        top, left = max(y, self._prev_end), max(x, self._left_end)
        self._row_end, self._left_end = max(self._row_end, y + h), max(self._left_end, x + w)
        return top, left

    def _clip(self, y: int, x: int, h: int, w: int) -> tuple[int, int]:
        h, w = min(h, self.height - y), min(w, self.width - x)
        if y < self.top or y + h > self.top + self.band_rows:
            raise ValueError(f"patch at row {y} is outside the band of rows from {self.top}")
        return h, w

    def add(self, y: int, x: int, weighted: np.ndarray, weights: np.ndarray) -> None:
        """Add a patch whose top-left pixel is at (``y``, ``x``): ``weighted`` ``[channels, h, w]``
        holds its values already multiplied by its ``weights`` ``[h, w]`` (done where the model
        runs). Patches must come in the row-major order of the plan, each one, sent or not
        (:meth:`skip` for those not sent)."""
        h, w = self._clip(y, x, weighted.shape[1], weighted.shape[2])
        if h <= 0 or w <= 0:
            return
        top, left = self._fresh(y, x, h, w)
        regions = (  # (rows, columns, write instead of add)
            (range(y, top), range(x, x + w), False),
            (range(top, y + h), range(x, left), False),
            (range(top, y + h), range(left, x + w), True),
        )
        for rows, cols, first in regions:
            if not rows or not cols:
                continue
            c0, c1 = cols.start - x, cols.stop - x
            for start, offset, n in self._segments(rows.start, len(rows)):
                r = rows.start - y + offset
                sums = self.sums[:, start : start + n, cols.start : cols.stop]
                sums_w = self.weights[start : start + n, cols.start : cols.stop]
                if first:
                    sums[:] = weighted[:, r : r + n, c0:c1]
                    sums_w[:] = weights[r : r + n, c0:c1]
                else:
                    sums += weighted[:, r : r + n, c0:c1]
                    sums_w += weights[r : r + n, c0:c1]

    def skip(self, y: int, x: int, h: int, w: int) -> None:
        """A patch of ``h x w`` at (``y``, ``x``) that sends nothing (no valid pixel): the
        pixels it is the first to reach get nothing yet."""
        h, w = self._clip(y, x, h, w)
        if h <= 0 or w <= 0:
            return
        top, left = self._fresh(y, x, h, w)
        for start, _, n in self._segments(top, y + h - top):
            self.sums[:, start : start + n, left : x + w] = 0
            self.weights[start : start + n, left : x + w] = 0

    def release(self, until: int, normalise: bool = True) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Finish rows ``[top, until)``, in chunks of at most :attr:`chunk_rows` rows.

        Yields (first row, values, valid): ``values`` is ``[channels, rows, width]``
        float32, the weighted mean (0 where there is no weight), or with ``normalise``
        False the weighted sums themselves (the same per-pixel order of channels, for
        an argmax, without the division); ``valid`` is ``[rows, width]`` bool. ``values``
        is a view or a reused buffer, valid until the next chunk is asked for: copy what
        must outlive it.
        """
        until = min(until, self.height)
        if until < self.top:
            raise ValueError(f"rows up to {until} were already released (band at {self.top})")
        while self.top < until:
            first = self.top
            start = first % self.band_rows
            count = min(until - first, self.chunk_rows, self.band_rows - start)  # one piece of the ring
            sums = self.sums[:, start : start + count]
            weights = self.weights[start : start + count]
            valid = weights > 0
            if normalise:
                if self._means is None or self._means.shape[1] < count:
                    self._means = np.empty((self.channels, self.chunk_rows, self.width), np.float32)
                values = self._means[:, :count]
                # where no weight arrived the sums are 0 too, and 0 / tiny is the 0 we want
                np.divide(sums, np.maximum(weights, np.float32(1e-30)), out=values)
            else:
                values = sums
            yield first, values, valid  # no zeroing: the next patch to reach these rows writes them first
            self.top += count


def argmax_planes(values: np.ndarray) -> np.ndarray:
    """``np.argmax(values, axis=0)`` as uint8 for a few channel planes ``[channels, rows, width]``:
    the maximum over the planes, then each plane compared with it, last to first, so that
    ties go to the first channel as numpy's do (about twice as fast as an argmax across
    the planes, which steps through memory with the channel stride)."""
    best = values.max(axis=0)
    index = np.full(best.shape, values.shape[0] - 1, np.uint8)
    for channel in range(values.shape[0] - 2, -1, -1):
        np.copyto(index, np.uint8(channel), where=values[channel] == best)
    return index
