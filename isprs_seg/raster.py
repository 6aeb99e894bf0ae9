"""Raster input and output: reading row bands with their validity mask, turning raw
bands into model input, and writing georeferenced outputs safely.

Knows nothing of the model. Outputs are written under a temporary name in the
destination directory and renamed only when complete (:func:`atomic_outputs`), in
whole blocks of rows (:class:`BlockRowWriter`) so that compressed tiles are written once.
"""

from __future__ import annotations

import contextlib
import os
import uuid
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import rasterio
import rasterio.control
from affine import Affine
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from ._native import native_stderr_captured
from .errors import InputError, OutputError

#: Block side of every output GeoTIFF.
OUTPUT_BLOCK = 512


class IsprsSegWarning(UserWarning):
    """Something the user should know about an input or output; processing goes on."""


# --------------------------------------------------------------------------- input


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
            return rasterio.open(name)
    except RasterioIOError as exc:
        raise InputError(f"{name} cannot be read as a raster ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    """The most specific message: rasterio wraps GDAL's own error as the cause."""
    while exc.__cause__ is not None and "previous exception" in str(exc):
        exc = exc.__cause__
    text = str(exc).strip().splitlines()
    return text[0].rstrip(".") if text else type(exc).__name__


def is_georeferenced(src: rasterio.DatasetReader) -> bool:
    return src.crs is not None or not src.transform.is_identity or bool(src.gcps[0])


class RowReader:
    """Row bands of an image for patch rows that advance down it, each row read once.

    :meth:`rows` returns raw ``bands`` ``[bands, count, width]`` and validity
    ``[count, width]`` for image rows ``[row, row + count)``; requests must not go back
    above an earlier one. Rows are read in whole blocks of the file (at least
    ``min_rows`` at a time), so every block is decoded once although patches overlap.
    ``width`` may exceed the image. Pixels outside the image and invalid pixels read
    as 0 (the model sees the same zeros wherever there is no valid data) and are
    invalid. ``mask`` is as in :func:`read_validity`.
    """

    #: Rows read at once at most, even when a file's blocks are taller (single strips).
    MAX_ROWS = 1024

    def __init__(self, src, bands: Sequence[int], mask: str, width: int, min_rows: int = 256):
        self.src, self.bands, self.mask, self.width = src, list(bands), mask, width
        block = src.block_shapes[0][0] if hasattr(src, "block_shapes") else 1
        if block > self.MAX_ROWS:
            block = 1
        self.chunk = max(block, -(-min_rows // block) * block)
        self.block = block
        self.first = 0  # image row held in buffer row 0
        self.raw = np.zeros((len(self.bands), 0, width), dtype=src.dtypes[self.bands[0] - 1])
        self.valid = np.zeros((0, width), dtype=bool)

    def rows(self, row: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        if row < self.first:
            raise ValueError(f"rows above {self.first} were dropped (asked for {row})")
        drop = min(row - self.first, self.valid.shape[0])
        self.raw, self.valid = self.raw[:, drop:], self.valid[drop:]
        self.first += drop
        self.first = max(self.first, row)
        want = min(row + count, self.src.height)
        while self.first + self.valid.shape[0] < want:
            start = self.first + self.valid.shape[0]
            stop = min(self.src.height, -(-max(want, start + self.chunk) // self.block) * self.block)
            raw, valid = self._read(start, stop - start)
            self.raw = np.concatenate([self.raw, raw], axis=1)
            self.valid = np.concatenate([self.valid, valid])
        raw = np.zeros((len(self.bands), count, self.width), dtype=self.raw.dtype)
        valid = np.zeros((count, self.width), dtype=bool)
        have = max(0, want - row)
        raw[:, :have] = self.raw[:, row - self.first : row - self.first + have]
        valid[:have] = self.valid[row - self.first : row - self.first + have]
        return raw, valid

    def _read(self, row: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        width = min(self.width, self.src.width)
        raw = np.zeros((len(self.bands), count, self.width), dtype=self.raw.dtype)
        valid = np.zeros((count, self.width), dtype=bool)
        try:
            _read_window(self.src, self.bands, self.mask, Window(0, row, width, count),
                         raw[:, :, :width], valid[:, :width])
            raw[:, ~valid] = 0
        except rasterio.errors.RasterioError as exc:
            raise InputError(
                f"{self.src.name} could not be read at rows {row}-{row + count} ({_first_line(exc)}); "
                "the file may be truncated or damaged"
            ) from exc
        return raw, valid


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
    """Validity ``[rows, width]`` of image rows ``[row, row + rows)`` (as :class:`RowReader`)."""
    window = Window(0, row, src.width, rows)
    how = _mask_source(src, mask)
    if how == "all":
        return np.ones((rows, src.width), bool)
    if how == "nodata":
        return _nodata_valid(src.read(window=window), src.nodata)
    return src.dataset_mask(window=window) > 0


# --------------------------------------------------------------------------- output


@contextlib.contextmanager
def atomic_outputs(finals: Sequence[Path]) -> Iterator[list[Path]]:
    """Temporary paths beside ``finals``; renamed to the final names only on success.

    On any exception (including KeyboardInterrupt) the temporaries are removed and no
    file appears under a final name. The renames go in order: put the file whose
    presence means "done" last.
    """
    token = uuid.uuid4().hex[:8]
    # hidden, unmistakably partial, and with the final suffix so drivers recognise the format
    temps = [f.with_name(f".{f.stem}.{token}.partial{f.suffix}") for f in finals]
    try:
        yield temps
        for tmp, final in zip(temps, finals):
            if _is_tiff(tmp):
                verify_complete(tmp, final)
        for tmp, final in zip(temps, finals):
            os.replace(tmp, final)
    except BaseException:
        for tmp in temps:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise


def _is_tiff(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def verify_complete(path: Path, final: Path) -> None:
    """Check that every block of a GeoTIFF just written lies inside the file.

    GDAL compresses and writes cached blocks when a dataset is closed and only logs a
    failure there (a full disk, a file size limit): without this check a truncated
    file would be renamed as if complete.
    """
    size = path.stat().st_size
    try:
        with rasterio.open(path) as ds:
            bands = [1] if ds.interleaving and ds.interleaving.value == "PIXEL" else ds.indexes
            rows, cols = (-(-ds.height // ds.block_shapes[0][0]), -(-ds.width // ds.block_shapes[0][1]))
            for band in bands:
                for j in range(rows):
                    for i in range(cols):
                        offset = ds.get_tag_item(f"BLOCK_OFFSET_{i}_{j}", "TIFF", bidx=band)
                        length = ds.get_tag_item(f"BLOCK_SIZE_{i}_{j}", "TIFF", bidx=band)
                        if not offset or not length or int(offset) + int(length) > size:
                            raise OutputError(f"writing {final} failed part way (is the disk full?)")
    except RasterioIOError as exc:
        raise OutputError(f"writing {final} failed ({_first_line(exc)})") from exc


def check_output_path(path: Path) -> None:
    """Fail early, before any work, when ``path`` cannot be written."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputError(f"output {path} is a directory")
    if not parent.is_dir():
        raise OutputError(f"output directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output directory {parent} is not writable")


def _base_profile(src: rasterio.DatasetReader, count: int, dtype: str) -> dict:
    profile = {
        "driver": "GTiff",
        "width": src.width,
        "height": src.height,
        "count": count,
        "dtype": dtype,
        "tiled": True,
        "blockxsize": OUTPUT_BLOCK,
        "blockysize": OUTPUT_BLOCK,
        "compress": "deflate",
        "predictor": 3 if dtype.startswith("float") else 2,
        "num_threads": "all_cpus",  # GDAL compresses blocks in worker threads
        "bigtiff": "if_safer",
        "interleave": "pixel" if count == 1 else "band",
    }
    if src.crs is not None or not src.transform.is_identity:
        profile["crs"] = src.crs
        profile["transform"] = src.transform
    return profile


def copy_gcps(src, dst, stride: int = 1) -> None:
    """Carry ground control points over to an output at 1/``stride`` of the input grid."""
    gcps, crs = src.gcps
    if gcps:
        scaled = [rasterio.control.GroundControlPoint(g.row / stride, g.col / stride, g.x, g.y, g.z, g.id, g.info)
                  for g in gcps]
        dst.gcps = (scaled, crs)


def open_class_raster(
    path: Path, src, class_names: Sequence[str], colors: Sequence[tuple[int, int, int]],
    nodata: int, tags: dict,
) -> rasterio.io.DatasetWriter:
    """A uint8 class raster with the input's grid, a colour table and class names."""
    profile = _base_profile(src, 1, "uint8")
    profile["nodata"] = nodata
    dst = _open_output(path, profile)
    copy_gcps(src, dst)
    colormap = {i: (*c, 255) for i, c in enumerate(colors)}
    colormap[nodata] = (0, 0, 0, 0)
    dst.write_colormap(1, colormap)
    dst.set_band_description(1, "class")
    dst.update_tags(**tags, CLASS_NAMES=",".join(class_names), NODATA_CLASS=str(nodata))
    dst.update_tags(1, **{f"CLASS_{i}": name for i, name in enumerate(class_names)})
    return dst


def open_probability_raster(
    path: Path, src, class_names: Sequence[str], dtype: str, tags: dict
) -> rasterio.io.DatasetWriter:
    """One band per class: float32 (nodata NaN) or uint8 0-255 (internal mask)."""
    profile = _base_profile(src, len(class_names), dtype)
    if dtype == "float32":
        profile["nodata"] = float("nan")
    dst = _open_output(path, profile)
    copy_gcps(src, dst)
    for i, name in enumerate(class_names, start=1):
        dst.set_band_description(i, name)
    scale = "probability" if dtype == "float32" else "probability * 255"
    dst.update_tags(**tags, CLASS_NAMES=",".join(class_names), VALUES=scale)
    return dst


#: Block side of feature rasters: a block holds every channel of 64 x 64 pixels (pixel
#: interleaved), so one read gives whole feature vectors; the writer buffers one block
#: row, 64 x width/4 x 720 float32 values.
FEATURE_BLOCK = 64


def open_feature_raster(
    path: Path, src, channels: int, stride: int, dtype: str, tags: dict
) -> rasterio.io.DatasetWriter:
    """Features at 1/``stride`` of the input grid: ``ceil(H/stride) x ceil(W/stride)``.

    The transform is the input's times ``Affine.scale(stride)``. ``float16`` is stored
    as GDAL Float32 with NBITS=16 (IEEE half precision on disk, float32 when read);
    invalid pixels are NaN, the declared nodata value.
    """
    profile = _base_profile(src, channels, "float32")
    profile.update(
        width=-(-src.width // stride),
        height=-(-src.height // stride),
        blockxsize=FEATURE_BLOCK,
        blockysize=FEATURE_BLOCK,
        interleave="pixel",
        nodata=float("nan"),
        # a lighter codec than the DEFLATE of the class rasters: features are large and
        # read by data tools; ZSTD level 1 is about 3x faster at the same size here
        compress="zstd",
        zstd_level=1,
    )
    if "transform" in profile:
        profile["transform"] = src.transform @ Affine.scale(stride)
    if dtype == "float16":
        profile["nbits"] = 16
    dst = _open_output(path, profile)
    copy_gcps(src, dst, stride)
    dst.update_tags(**tags, FEATURE_STRIDE=str(stride), PRECISION=dtype)
    return dst


def _open_output(path: Path, profile: dict) -> rasterio.io.DatasetWriter:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
                return rasterio.open(path, "w", **profile)
    except (RasterioIOError, OSError) as exc:
        raise OutputError(f"cannot create {path} ({_first_line(exc)})") from exc


class BlockRowWriter:
    """Writes rows that arrive in order, in whole blocks of rows, with an optional mask.

    Rows are copied into one preallocated block-row buffer ``[bands, block_rows, width]``
    (converted from the pipeline's channel-last layout on the way) and written when it
    is full, so compressed tiles are written exactly once, without GDAL re-reading or
    rewriting partial blocks. Memory: one block of rows of the output.
    """

    def __init__(self, dataset: rasterio.io.DatasetWriter, block_rows: int = OUTPUT_BLOCK, mask: bool = False,
                 fill: float | None = None):
        self.dataset = dataset
        self.block_rows = min(block_rows, dataset.height)
        self.fill = fill
        self.buffer = np.empty((dataset.count, self.block_rows, dataset.width), dataset.dtypes[0])
        self.valid = np.empty((self.block_rows, dataset.width), bool) if mask else None
        self.next_row = 0  # image row held in buffer row 0
        self.filled = 0

    def write(self, row: int, values: np.ndarray, valid: np.ndarray) -> None:
        """Rows ``[row, row + n)``: ``values [n, width, bands]`` (or ``[n, width]`` for one
        band) and validity ``[n, width]``; invalid pixels get ``fill`` when one is set."""
        if row != self.next_row + self.filled:
            raise ValueError(f"rows must arrive in order: got {row}, expected {self.next_row + self.filled}")
        if values.ndim == 2:
            values = values[..., None]
        done = 0
        while done < len(values):
            n = min(len(values) - done, self.block_rows - self.filled)
            target = self.buffer[:, self.filled : self.filled + n]
            np.copyto(target, np.moveaxis(values[done : done + n], -1, 0), casting="unsafe")
            part = valid[done : done + n]
            if self.fill is not None:
                target[:, ~part] = self.fill
            if self.valid is not None:
                self.valid[self.filled : self.filled + n] = part
            self.filled += n
            done += n
            if self.filled == self.block_rows or self.next_row + self.filled == self.dataset.height:
                self._flush()

    def close(self) -> None:
        """Write the remaining rows and close the dataset.

        GDAL compresses and writes its cached blocks here; a failure is only logged by
        GDAL (libtiff also prints it), so it is detected afterwards by
        :func:`verify_complete` when the outputs are committed.
        """
        if self.filled:
            self._flush()
        with native_stderr_captured():
            self.dataset.close()

    def _flush(self) -> None:
        rows = self.filled
        window = Window(0, self.next_row, self.dataset.width, rows)
        try:
            with native_stderr_captured():  # libtiff prints write failures itself
                self.dataset.write(self.buffer[:, :rows], window=window)
                if self.valid is not None:
                    self.dataset.write_mask(np.where(self.valid[:rows], 255, 0).astype(np.uint8), window=window)
        except (RasterioIOError, OSError) as exc:
            raise OutputError(f"cannot write {self.dataset.name} ({_first_line(exc)})") from exc
        self.next_row += rows
        self.filled = 0
