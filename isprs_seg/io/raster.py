"""Raster input: opening an input, its validity mask, and row bands read once each.

Knows nothing of the model or of outputs (:mod:`isprs_seg.io.outputs` writes). A *view*
is anything the row reader can read from: a rasterio dataset, or the same dataset seen
at another resolution (:class:`isprs_seg.io.resample.ResampledView`).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from ..errors import InputError, first_line

#: GDAL settings of every run, unless the user's environment sets them.
GDAL_SETTINGS = {
    # Every block is read once and written once, so GDAL's default block cache (5 % of
    # RAM) would only hold blocks that are never used again, and grow with the image.
    "GDAL_CACHEMAX": 64 * 2**20,  # bytes
    # Network reads (/vsicurl/, /vsis3/ ...): a server that accepts and never answers, or
    # stalls mid-transfer, fails the input after 30 s without data instead of hanging;
    # a busy server (429, 5xx) is tried again three times with growing delays.
    "GDAL_HTTP_CONNECTTIMEOUT": "15",
    "GDAL_HTTP_LOW_SPEED_TIME": "30",
    "GDAL_HTTP_LOW_SPEED_LIMIT": "1",
    "GDAL_HTTP_MAX_RETRY": "3",
    "GDAL_HTTP_RETRY_DELAY": "1",
}


@contextlib.contextmanager
def gdal_env() -> Iterator[None]:
    """The GDAL settings of every run (:data:`GDAL_SETTINGS`), for the command line and the
    Python API alike. They step aside for the caller's own: a setting of the process
    environment, or of a ``rasterio.Env`` the caller has entered, is left as it is (the
    others are added to that ``Env`` for the length of the block)."""
    chosen = set(os.environ)
    if rasterio.env.local._env is not None:  # the caller's rasterio.Env (rasterio's own test for one)
        chosen |= set(rasterio.env.getenv())
    with rasterio.Env(**{key: value for key, value in GDAL_SETTINGS.items() if key not in chosen}):
        yield


class RasterView(Protocol):
    """What the row reader and the recipe use of a dataset (a rasterio dataset is one)."""

    name: str
    height: int
    width: int
    dtypes: Sequence[str]
    nodata: float | None
    mask_flag_enums: Sequence[Sequence[MaskFlags]]

    def read(self, indexes=None, window: Window | None = None) -> np.ndarray: ...
    def dataset_mask(self, window: Window | None = None) -> np.ndarray: ...


def open_input(path: str | os.PathLike) -> rasterio.DatasetReader:
    """Open a raster for reading, with one clear sentence when that is not possible."""
    name = str(path)
    if not name.startswith("/vsi"):
        p = Path(name)
        if p.is_dir():
            raise InputError(f"{name} is a directory, not a raster")
        if not p.exists():
            raise InputError(f"{name} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(name)
    except RasterioIOError as exc:
        raise InputError(f"{name} cannot be read as a raster ({first_line(exc)})") from exc
    if src.count == 0:
        subdatasets = src.subdatasets
        src.close()
        if subdatasets:
            listed = ", ".join(subdatasets[:5]) + (f" and {len(subdatasets) - 5} more" if len(subdatasets) > 5 else "")
            raise InputError(f"{name} has no raster bands of its own but {len(subdatasets)} subdatasets: give one "
                             f"of them as the input ({listed})")
        raise InputError(f"{name} has no raster bands")
    return src


def is_georeferenced(src) -> bool:
    return src.crs is not None or not src.transform.is_identity or bool(src.gcps[0])


def metres_per_pixel(src, option: str, hint: str = "") -> tuple[float, float]:
    """Pixel size (x, y) in metres of a north-up grid in a projected CRS.

    Anything else is an :class:`InputError` naming ``option`` (the option that needs
    metres), followed by ``hint`` when given.
    """
    crs = src.crs
    if crs is None or not crs.is_projected or not is_georeferenced(src):
        raise InputError(f"{option} needs a projected CRS in metres, and {src.name} has none{hint}")
    a, b, _, d, e, _ = src.transform[:6]
    if b or d:
        raise InputError(f"{option} needs a north-up grid, and {src.name} is rotated")
    to_metres = crs.linear_units_factor[1]
    return abs(a) * to_metres, abs(e) * to_metres


# --------------------------------------------------------------------------- validity


def _mask_source(src, mask: str) -> str:
    """Where validity comes from: ``all`` valid, the ``nodata`` value, or GDAL's ``dataset`` mask."""
    flags = src.mask_flag_enums
    if mask == "none" or (mask == "dataset" and all(MaskFlags.all_valid in f for f in flags)):
        return "all"
    if src.nodata is not None and (mask == "nodata" or all(MaskFlags.nodata in f for f in flags)):
        return "nodata"
    return "dataset"


def _nodata_valid(every: np.ndarray, nodata: float) -> np.ndarray:
    """Valid unless every band holds the nodata value (GDAL's dataset mask semantics)."""
    missing = np.isnan(every) if np.isnan(nodata) else every == np.asarray(nodata, every.dtype)
    return ~np.all(missing, axis=0)


def _read_window(src, bands: list[int], mask: str, window: Window, raw: np.ndarray, valid: np.ndarray) -> None:
    how = _mask_source(src, mask)
    if how == "nodata":
        # Computed from the pixels read anyway rather than decoding them a second time.
        every = src.read(window=window)
        raw[:] = every[[b - 1 for b in bands]]
        valid[:] = _nodata_valid(every, src.nodata)
    else:
        raw[:] = src.read(bands, window=window)
        valid[:] = True if how == "all" else src.dataset_mask(window=window) > 0


def read_validity(src, mask: str, row: int, rows: int) -> np.ndarray:
    """Validity ``[rows, width]`` of image rows ``[row, row + rows)`` (as :class:`RowReader`).

    ``mask``: ``dataset`` (GDAL's dataset mask: alpha, internal or external mask, nodata),
    ``nodata`` (the nodata value only) or ``none`` (every pixel valid).
    """
    window = Window(0, row, src.width, rows)
    how = _mask_source(src, mask)
    if how == "all":
        return np.ones((rows, src.width), bool)
    if how == "nodata":
        return _nodata_valid(src.read(window=window), src.nodata)
    return src.dataset_mask(window=window) > 0


def validity_overview(src, mask: str, shape: tuple[int, int]) -> np.ndarray | None:
    """Validity of the whole of ``src`` sampled to ``shape`` (nearest pixel; from the
    file's overviews where it has them), or None when every pixel is valid. ``shape``
    equal to the image's gives the validity itself. ``mask`` as in :func:`read_validity`."""
    how = _mask_source(src, mask)
    if how == "all":
        return None
    try:
        if how == "nodata":
            return _nodata_valid(src.read(out_shape=(src.count, *shape)), src.nodata)
        return src.dataset_mask(out_shape=shape) > 0
    except rasterio.errors.RasterioError as exc:
        raise InputError(f"{src.name} could not be read ({first_line(exc)}); the file may be truncated or "
                         "damaged") from exc


# --------------------------------------------------------------------------- row bands


class RowReader:
    """Row bands of an image for patch rows that advance down it, each row read once.

    :meth:`rows` returns raw ``bands`` ``[bands, count, width]`` and validity
    ``[count, width]`` for image rows ``[row, row + count)`` (read-only: views of the
    reader's buffer where it can); requests must not go back above an earlier one. Rows
    are read in whole blocks of the file (at least ``min_rows`` at a time), so every
    block is decoded once although patches overlap.
    ``width`` may exceed the image. Pixels outside the image and invalid pixels read
    as 0 (the model sees the same zeros wherever there is no valid data) and are
    invalid. ``mask`` is as in :func:`read_validity`. With ``palette`` (a colour table
    ``[indices, 3]`` uint8), the one band read holds indices and comes out as its colours,
    R, G, B: the zeros above are then black, as in the same image stored as RGB.
    """

    #: Rows read at once at most, even when a file's blocks are taller (single strips).
    MAX_ROWS = 1024

    def __init__(self, view: RasterView, bands: Sequence[int], mask: str, width: int, min_rows: int = 256,
                 palette: np.ndarray | None = None):
        self.view, self.bands, self.mask, self.width, self.palette = view, list(bands), mask, width, palette
        block = view.block_shapes[0][0] if hasattr(view, "block_shapes") else 1
        if block > self.MAX_ROWS:
            block = 1
        self.chunk = max(block, -(-min_rows // block) * block)
        self.block = block
        self.first = 0  # image row held in buffer row 0
        self.raw = np.zeros((3 if palette is not None else len(self.bands), 0, width),
                            dtype=np.uint8 if palette is not None else view.dtypes[self.bands[0] - 1])
        self.valid = np.zeros((0, width), dtype=bool)

    def rows(self, row: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        if row < self.first:
            raise ValueError(f"rows above {self.first} were dropped (asked for {row})")
        drop = min(row - self.first, self.valid.shape[0])
        self.raw, self.valid = self.raw[:, drop:], self.valid[drop:]
        self.first = max(self.first + drop, row)
        want = min(row + count, self.view.height)
        while self.first + self.valid.shape[0] < want:
            start = self.first + self.valid.shape[0]
            stop = min(self.view.height, -(-max(want, start + self.chunk) // self.block) * self.block)
            raw, valid = self._read(start, stop - start)
            self.raw = np.concatenate([self.raw, raw], axis=1)
            self.valid = np.concatenate([self.valid, valid])
        have = max(0, want - row)
        at = row - self.first
        if have == count:  # views: the buffer is replaced, never written, when more rows are read
            return self.raw[:, at : at + count], self.valid[at : at + count]
        raw = np.zeros((self.raw.shape[0], count, self.width), dtype=self.raw.dtype)
        valid = np.zeros((count, self.width), dtype=bool)
        raw[:, :have] = self.raw[:, at : at + have]
        valid[:have] = self.valid[at : at + have]
        return raw, valid

    def _read(self, row: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        width = min(self.width, self.view.width)
        raw = np.zeros((self.raw.shape[0], count, self.width), dtype=self.raw.dtype)
        valid = np.zeros((count, self.width), dtype=bool)
        try:
            if self.palette is None:
                _read_window(self.view, self.bands, self.mask, Window(0, row, width, count),
                             raw[:, :, :width], valid[:, :width])
            else:
                indices = np.zeros((1, count, width), self.view.dtypes[self.bands[0] - 1])
                _read_window(self.view, self.bands, self.mask, Window(0, row, width, count), indices,
                             valid[:, :width])
                raw[:, :, :width] = np.moveaxis(self.palette[indices[0]], -1, 0)
            if not valid[:, :width].all():
                raw[:, ~valid] = 0
        except rasterio.errors.RasterioError as exc:
            raise InputError(
                f"{self.view.name} could not be read at rows {row}-{row + count} ({first_line(exc)}); "
                "the file may be truncated or damaged"
            ) from exc
        return raw, valid


class RowsOf:
    """Rows ``[start, stop)`` of a dataset, as the output rasters see a dataset: its
    width, the strip's height, its CRS and its transform moved down to the strip's
    first row. Ground control points are left out: they belong to the whole image."""

    def __init__(self, dataset, start: int, stop: int):
        self.name = f"{dataset.name} rows {start}-{stop}"
        self.width, self.height = dataset.width, min(stop, dataset.height) - start
        self.crs = dataset.crs
        self.transform = dataset.transform * Affine.translation(0, start)
        self.gcps = ([], None)
