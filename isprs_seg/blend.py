"""Blend weights for patches and the streaming accumulator that stitches them.

Pure numpy, no TensorFlow and no files.

Every patch gets a separable weight window built from its overlaps with its neighbours
(:meth:`isprs_seg.grid.Axis.ramps`). Towards the image border a patch keeps full weight,
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

from .grid import Grid

BLEND_MODES = ("taper", "crop")


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

    Holds ``band_rows`` rows of ``width x channels`` float32 sums plus a weight sum in a
    ring (image row ``r`` lives in band row ``r % band_rows``), so sliding the band down
    moves no data: memory depends on the patch height and the image width, never on
    the image height. Patches must arrive in row order of their origins; :meth:`release`
    hands back the finished rows above a given row in chunks of bounded size.
    """

    #: Values per released chunk, at most (bounds the temporary arrays of consumers).
    CHUNK_VALUES = 8_000_000

    def __init__(self, height: int, width: int, channels: int, band_rows: int):
        self.height, self.width, self.channels = height, width, channels
        self.band_rows = band_rows
        self.top = 0  # first image row not yet released
        self.sums = np.zeros((band_rows, width, channels), np.float32)
        self.weights = np.zeros((band_rows, width), np.float32)
        self.chunk_rows = max(1, min(band_rows, self.CHUNK_VALUES // max(1, width * channels)))
        self._buffer: np.ndarray | None = None

    def _segments(self, row: int, count: int) -> Iterator[tuple[int, int, int]]:
        """(band row, offset into the request, rows) pieces of image rows [row, row + count)."""
        done = 0
        while done < count:
            start = (row + done) % self.band_rows
            n = min(count - done, self.band_rows - start)
            yield start, done, n
            done += n

    def add(self, y: int, x: int, values: np.ndarray, weights: np.ndarray) -> None:
        """Add ``weights * values`` of a patch whose top-left pixel is at (``y``, ``x``)."""
        h = min(values.shape[0], self.height - y)
        w = min(values.shape[1], self.width - x)
        if y < self.top or y + h > self.top + self.band_rows:
            raise ValueError(f"patch at row {y} is outside the band of rows from {self.top}")
        if h <= 0 or w <= 0:
            return
        wgt = weights[:h, :w]
        weighted = self._scratch(values.shape)[:h, :w]
        np.multiply(values[:h, :w], wgt[..., None], out=weighted)
        for start, offset, n in self._segments(y, h):
            self.sums[start : start + n, x : x + w] += weighted[offset : offset + n]
            self.weights[start : start + n, x : x + w] += wgt[offset : offset + n]

    def _scratch(self, shape: tuple[int, ...]) -> np.ndarray:
        """A reused buffer for one patch's weighted values (no allocation per patch)."""
        if self._buffer is None or self._buffer.shape != shape:
            self._buffer = np.empty(shape, np.float32)
        return self._buffer

    def release(self, until: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Finish rows ``[top, until)``, in chunks of at most :attr:`chunk_rows` rows.

        Yields (first row, values, valid): ``values`` is ``[rows, width, channels]``
        float32 (the weighted mean, 0 where there is no weight) and ``valid`` is
        ``[rows, width]`` bool. The arrays are new, not views of the band.
        """
        until = min(until, self.height)
        if until < self.top:
            raise ValueError(f"rows up to {until} were already released (band at {self.top})")
        while self.top < until:
            first = self.top
            count = min(until - first, self.chunk_rows)
            values = np.empty((count, self.width, self.channels), np.float32)
            valid = np.empty((count, self.width), bool)
            for start, offset, n in self._segments(first, count):
                weights = self.weights[start : start + n]
                np.greater(weights, 0, out=valid[offset : offset + n])
                # where no weight arrived the sums are 0 too, and 0 / tiny is the 0 we want
                divisor = np.maximum(weights, np.float32(1e-30))
                np.divide(self.sums[start : start + n], divisor[..., None], out=values[offset : offset + n])
                self.sums[start : start + n] = 0
                self.weights[start : start + n] = 0
            self.top += count
            yield first, values, valid
