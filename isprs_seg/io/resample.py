"""Running the model at another ground sampling distance (``--gsd``).

:class:`ResampledView` shows the input at the model's resolution through GDAL
decimated reads (averaging when shrinking, bilinear when enlarging), computed on the fly
for the rows being processed. :class:`Regridder` brings the blended outputs back onto
the input's own grid by bilinear interpolation of the model-grid results, streaming row
by row, so the outputs have the size and transform they would have without ``--gsd``;
:class:`RegriddedSink` puts it between the engine and the writers.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Callable

import numpy as np
from rasterio.enums import Resampling
from rasterio.windows import Window

from ..tiling.blend import pool_valid
from .raster import metres_per_pixel, open_input, read_validity

if TYPE_CHECKING:
    from ..tiling.stream import Sink


class ResampledView:
    """The dataset ``src`` seen with square pixels of ``gsd`` metres (a :class:`RasterView`);
    ``nearest`` for values that must not be mixed (the indices of a colour-mapped image).

    The grid starts at the input's origin; a last partial pixel is left out (the
    regridder extends the outputs over it).
    """

    def __init__(self, src, gsd: float, nearest: bool = False):
        x_metres, y_metres = metres_per_pixel(src, "--gsd")
        self.src = src
        self.scale_x, self.scale_y = gsd / x_metres, gsd / y_metres  # input pixels per model pixel
        self.width = max(1, math.floor(src.width / self.scale_x))
        self.height = max(1, math.floor(src.height / self.scale_y))
        shrinking = min(self.scale_x, self.scale_y) >= 1
        self.resampling = (Resampling.nearest if nearest  # indices of a colour table cannot be averaged
                           else Resampling.average if shrinking else Resampling.bilinear)
        self.name, self.dtypes, self.nodata = src.name, src.dtypes, src.nodata
        self.mask_flag_enums = src.mask_flag_enums

    def _native(self, window: Window) -> Window:
        return Window(window.col_off * self.scale_x, window.row_off * self.scale_y,
                      window.width * self.scale_x, window.height * self.scale_y)

    def read(self, indexes=None, window: Window | None = None):
        indexes = list(self.src.indexes) if indexes is None else indexes
        count = len(indexes) if isinstance(indexes, (list, tuple)) else 1
        shape = (count, int(window.height), int(window.width))
        return self.src.read(indexes, window=self._native(window), out_shape=shape, resampling=self.resampling)

    def dataset_mask(self, window: Window):
        shape = (int(window.height), int(window.width))
        return self.src.dataset_mask(window=self._native(window), out_shape=shape, resampling=Resampling.nearest)


def _axis_weights(native: int, model: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output pixel along an axis: the two model pixels around it and the weight of the second."""
    centres = (np.arange(native) + 0.5) / scale - 0.5
    first = np.clip(np.floor(centres), 0, model - 1).astype(np.int64)
    second = np.minimum(first + 1, model - 1)
    weight = np.clip(centres - first, 0.0, 1.0).astype(np.float32)
    weight[second == first] = 0.0
    return first, second, weight


class Regridder:
    """Bilinear resampling of blended model-grid rows onto the input's grid, streamed.

    Model-grid rows ``(first_row, values [C, n, w_model], valid [n, w_model])`` go into
    :meth:`add` in order (they are copied: the caller may reuse its arrays); finished
    native rows go to ``consume`` in order, with the same signature. A native pixel is
    valid when its own input pixels are (``native_valid``) and some model pixel around it
    is. Invalid model pixels get no interpolation weight.
    """

    #: Values per temporary array while interpolating (bounds memory for 720 channels).
    CHUNK_VALUES = 16_000_000

    def __init__(self, native_shape: tuple[int, int], model_shape: tuple[int, int], scale: tuple[float, float],
                 native_valid: Callable[[int, int], np.ndarray], consume: Callable):
        self.native_height, native_width = native_shape
        self.model_height, model_width = model_shape
        self.rows = _axis_weights(self.native_height, self.model_height, scale[0])
        self.cols = _axis_weights(native_width, model_width, scale[1])
        self.native_width = native_width
        self.native_valid, self.consume = native_valid, consume
        self.next_row = 0  # next native row to emit
        self.base = 0  # model row held in buffer row 0
        self.values: np.ndarray | None = None
        self.valid: np.ndarray | None = None

    def add(self, row: int, values: np.ndarray, valid: np.ndarray) -> None:
        if self.values is None:
            self.base, self.values, self.valid = row, values.copy(), valid.copy()
        else:
            self.values = np.concatenate([self.values, values], axis=1)
            self.valid = np.concatenate([self.valid, valid])
        self._emit(self.base + self.values.shape[1])

    def finish(self) -> None:
        self._emit(self.model_height)

    def _emit(self, available: int) -> None:
        """Emit every native row whose model rows are all below ``available``."""
        first, second, _ = self.rows
        ready = self.next_row
        while ready < self.native_height and second[ready] < available:
            ready += 1
        channels = self.values.shape[0] if self.values is not None else 1
        chunk = max(1, self.CHUNK_VALUES // (self.native_width * channels))
        for start in range(self.next_row, ready, chunk):
            stop = min(ready, start + chunk)
            self.consume(start, *self._interpolate(start, stop))
        self.next_row = ready
        if ready < self.native_height:  # keep only what later rows still need
            drop = first[ready] - self.base
            if drop > 0:
                self.values, self.valid = self.values[:, drop:], self.valid[drop:]
                self.base += drop

    def _interpolate(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        y0, y1, wy = (a[start:stop] for a in self.rows)
        x0, x1, wx = self.cols
        y0, y1 = y0 - self.base, y1 - self.base
        num = 0.0
        den = 0.0
        for ys, fy in ((y0, 1 - wy), (y1, wy)):
            for xs, fx in ((x0, 1 - wx), (x1, wx)):
                weight = fy[:, None] * fx[None, :] * self.valid[ys][:, xs]
                num = num + weight * self.values[:, ys][:, :, xs]
                den = den + weight
        valid = (den > 0) & self.native_valid(start, stop - start)
        values = np.zeros_like(num, dtype=np.float32)
        np.divide(num, den, out=values, where=valid)
        return values, valid


class RegriddedSink:
    """A sink that takes rows on the view's grid and hands ``inner`` rows on the input's grid.

    ``stride`` is the output's (1 for classes, 4 for features). The input's validity is
    read through a dataset handle of its own (:meth:`opened`), since this runs in the
    engine's blend thread while the reader thread reads the view.
    """

    def __init__(self, src, view: ResampledView, mask: str, stride: int, inner: Sink):
        self.src, self.mask, self.stride, self.inner = src, mask, stride, inner
        self.regridder = Regridder(
            (-(-src.height // stride), -(-src.width // stride)),
            (-(-view.height // stride), -(-view.width // stride)),
            (view.scale_y, view.scale_x), self._native_valid, inner.write,
        )

    @classmethod
    @contextlib.contextmanager
    def opened(cls, view: ResampledView, mask: str, stride: int, inner: Sink):
        with open_input(view.src.name) as src:
            yield cls(src, view, mask, stride, inner)

    def _native_valid(self, row: int, rows: int) -> np.ndarray:
        src, stride = self.src, self.stride
        first, last = row * stride, min(src.height, (row + rows) * stride)
        valid = np.zeros((rows * stride, -(-src.width // stride) * stride), bool)
        valid[: last - first, : src.width] = read_validity(src, self.mask, first, last - first)
        return pool_valid(valid, stride)

    def write(self, row: int, values: np.ndarray, valid: np.ndarray) -> None:
        self.regridder.add(row, values, valid)

    def finish(self) -> None:
        self.regridder.finish()
        self.inner.finish()
