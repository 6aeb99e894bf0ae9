"""What ``isprs-seg features`` derives from the dense features as they stream by:
mean-pooled embeddings on a regular grid of cells (a GeoPackage or GeoParquet table,
:mod:`isprs_seg.io.vector`) and a false-colour PCA quick-look (a PNG).
"""

from __future__ import annotations

import math
import struct
import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from ..errors import InputError, OutputWarning
from ..io.raster import metres_per_pixel
from ..io.vector import VectorTable, require_format

#: Layer name of the pooled table.
POOLED_LAYER = "pooled_features"
#: Long side of the preview PNG, at most.
PREVIEW_SIDE = 1024
#: Feature vectors sampled for the principal components.
PCA_SAMPLES = 20000


def parse_pool_spec(value: str | float) -> tuple[float, str]:
    """``"10"``/``"10m"`` -> (10.0, "m"); ``"256px"`` -> (256.0, "px"). Checked before any work."""
    text = str(value).strip().lower()
    unit = "px" if text.endswith("px") else "m"
    number = text[:-2] if unit == "px" else (text[:-1] if text.endswith("m") else text)
    try:
        size = float(number)
    except ValueError:
        raise InputError(f"--pool must be a size in metres (10, 10m) or pixels (256px), got {value!r}") from None
    if not (size > 0 and math.isfinite(size)):
        raise InputError(f"--pool must be a positive size, got {value!r}")
    return size, unit


def pool_text(value: str | float) -> str:
    """The canonical spelling of a pool size: ``"10"`` and ``"10.0m"`` are both ``"10m"``."""
    size, unit = parse_pool_spec(value)
    return f"{size:g}{unit}"


def require_pool_format(format: str) -> None:
    """--pool writes GeoPackages with pyogrio, GeoParquet with pyarrow: optional dependencies."""
    require_format(format, "--pool-format")


def pool_cell(value: str | float, src) -> tuple[int, int]:
    """Cell size ``(rows, cols)`` in input pixels, a multiple of the feature stride (4).

    ``value``: metres (``"10"``, ``"10m"``; needs a projected CRS) or pixels (``"256px"``).
    The size is rounded to whole feature pixels; a warning says so when it changes.
    """
    size, unit = parse_pool_spec(value)
    if unit == "px":
        wanted = (size, size)
    else:
        hint = ": give the cell size in pixels instead, e.g. --pool 256px"
        x_metres, y_metres = metres_per_pixel(src, f"--pool {value} (metres)", hint)
        wanted = (size / y_metres, size / x_metres)
    cell = tuple(max(4, int(round(w / 4)) * 4) for w in wanted)
    if any(abs(c - w) > 0.01 * w for c, w in zip(cell, wanted)):
        warnings.warn(
            f"pooling cells are {cell[1]} x {cell[0]} px, the nearest whole feature pixels "
            f"(4 px) to --pool {value}",
            OutputWarning,
        )
    return cell  # type: ignore[return-value]


def _polygon_wkb(x0: float, y0: float, x1: float, y1: float, transform) -> bytes:
    """WKB of the pixel rectangle [x0, x1) x [y0, y1) mapped through ``transform``."""
    corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
    coords = [transform @ c for c in corners]
    return struct.pack("<BIII", 1, 3, 1, 5) + b"".join(struct.pack("<dd", *c) for c in coords)


def _rectangle_bounds(x0: np.ndarray, y0: float, x1: np.ndarray, y1: float, transform) -> np.ndarray:
    """Bounds ``[n, 4]`` of the pixel rectangles [x0, x1) x [y0, y1) mapped through ``transform``."""
    a, b, c, d, e, f = transform[:6]
    xs = np.stack([a * x + b * y + c for x in (x0, x1) for y in (y0, y1)])
    ys = np.stack([d * x + e * y + f for x in (x0, x1) for y in (y0, y1)])
    return np.column_stack([xs.min(0), ys.min(0), xs.max(0), ys.max(0)])


class CellPooler:
    """Mean of the valid feature vectors in each cell of a regular grid, streamed.

    Feature rows arrive in order; each completed row of cells is appended to a
    table (``format``: a GeoPackage layer or a GeoParquet file, one row group per row of
    cells) with the cell polygon (in the input's CRS), ``cell_row``, ``cell_col``,
    ``valid_fraction`` and one column per channel (NaN for a cell without valid pixels).
    Memory: one row of cells.
    """

    def __init__(self, path: Path, src, cell: tuple[int, int], stride: int, height: int, width: int, channels: int,
                 format: str = "gpkg"):
        self.stride = stride
        self.cell_rows, self.cell_cols = cell[0] // stride, cell[1] // stride  # in feature pixels
        self.cell_px = cell
        self.height, self.width, self.channels = height, width, channels
        self.image_height, self.image_width = src.height, src.width
        self.transform = src.transform
        self.starts = np.arange(0, width, self.cell_cols)
        self.cell_row = 0
        self._reset()
        fields = {"cell_row": "int32", "cell_col": "int32", "valid_fraction": "float32"}
        fields.update({f"f{c:03d}": "float32" for c in range(channels)})
        self.table = VectorTable(path, format, POOLED_LAYER, fields, "Polygon", src.crs)

    def _reset(self) -> None:
        self.sums = np.zeros((len(self.starts), self.channels), np.float64)
        self.counts = np.zeros(len(self.starts), np.int64)

    def add(self, row: int, values: np.ndarray, valid: np.ndarray) -> None:
        """Feature rows ``[row, row + n)``: values ``[channels, n, width]``, valid ``[n, width]``."""
        while values.shape[1]:
            end_of_cell = (self.cell_row + 1) * self.cell_rows
            n = min(values.shape[1], end_of_cell - row)
            v, m = values[:, :n], valid[:n]
            masked = np.where(m, v, 0).sum(axis=1, dtype=np.float64)  # [channels, width]
            self.sums += np.add.reduceat(masked, self.starts, axis=1).T
            self.counts += np.add.reduceat(m.sum(axis=0), self.starts)
            row += n
            values, valid = values[:, n:], valid[n:]
            if row >= min(end_of_cell, self.height):
                self._flush()

    def _flush(self) -> None:
        r = self.cell_row
        y0, y1 = r * self.cell_px[0], min((r + 1) * self.cell_px[0], self.image_height)
        cols = np.arange(len(self.starts))
        x0 = cols * self.cell_px[1]
        x1 = np.minimum(x0 + self.cell_px[1], self.image_width)
        rows_in = min((r + 1) * self.cell_rows, self.height) - r * self.cell_rows
        cols_in = np.minimum(self.starts + self.cell_cols, self.width) - self.starts
        with np.errstate(invalid="ignore", divide="ignore"):
            means = (self.sums / self.counts[:, None]).astype(np.float32)
        data = [
            np.full(len(cols), r, np.int32),
            cols.astype(np.int32),
            (self.counts / (rows_in * cols_in)).astype(np.float32),
            *means.T,
        ]
        geometry = np.array([_polygon_wkb(a, y0, b, y1, self.transform) for a, b in zip(x0, x1)], dtype=object)
        self.table.append(geometry, data, _rectangle_bounds(x0, y0, x1, y1, self.transform))
        self.cell_row += 1
        self._reset()

    def close(self) -> None:
        if self.cell_row * self.cell_rows < self.height:
            self._flush()
        self.table.close()


class PcaPreview:
    """A false-colour quick-look: the first three principal components as RGB.

    Feature vectors are sampled as they stream by (about :data:`PCA_SAMPLES`); the
    components are computed once at the end and the written feature raster is read back
    at a reduced resolution (long side at most :data:`PREVIEW_SIDE`) and projected.
    """

    def __init__(self, total_pixels: int, seed: int = 0):
        self.rate = min(1.0, PCA_SAMPLES / max(total_pixels, 1))
        self.rng = np.random.default_rng(seed)
        self.samples: list[np.ndarray] = []

    def add(self, values: np.ndarray, valid: np.ndarray) -> None:
        """Feature rows: values ``[channels, n, width]``, valid ``[n, width]``."""
        vectors = values[:, valid].T
        keep = self.rng.random(len(vectors)) < self.rate
        if keep.any():
            self.samples.append(vectors[keep].astype(np.float32))

    def components(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(mean, 3 components [channels, 3], low and high display limits per component)."""
        x = np.concatenate(self.samples).astype(np.float64)
        mean = x.mean(axis=0)
        centred = x - mean
        _, vectors = np.linalg.eigh(centred.T @ centred / max(len(x) - 1, 1))
        top = vectors[:, ::-1][:, :3]
        top *= np.sign(top[np.abs(top).argmax(axis=0), range(top.shape[1])])  # deterministic signs
        projected = centred @ top
        low, high = np.percentile(projected, [2, 98], axis=0)
        return mean, top, low, np.where(high > low, high, low + 1)

    def write(self, features_path: Path, png_path: Path) -> None:
        if not self.samples:
            warnings.warn("no valid pixel to draw: the preview is empty", OutputWarning)
        with rasterio.open(features_path) as src:
            step = max(1, math.ceil(max(src.height, src.width) / PREVIEW_SIDE))
            out_h, out_w = math.ceil(src.height / step), math.ceil(src.width / step)
            rgba = np.zeros((4, out_h, out_w), np.uint8)
            if self.samples:
                mean, top, low, high = self.components()
                chunk = 64
                for r0 in range(0, out_h, chunk):
                    r1 = min(out_h, r0 + chunk)
                    window = Window(0, r0 * step, src.width, min(src.height, r1 * step) - r0 * step)
                    feats = src.read(window=window, out_shape=(src.count, r1 - r0, out_w))
                    ok = np.all(np.isfinite(feats), axis=0)
                    proj = np.tensordot(top.T, np.nan_to_num(feats) - mean[:, None, None], axes=1)
                    scaled = (proj - low[:, None, None]) / (high - low)[:, None, None]
                    rgba[:3, r0:r1] = np.clip(scaled * 255, 0, 255).astype(np.uint8) * ok
                    rgba[3, r0:r1] = np.where(ok, 255, 0)
        with rasterio.Env(GDAL_PAM_ENABLED=False), warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(png_path, "w", driver="PNG", width=out_w, height=out_h, count=4, dtype="uint8") as dst:
                dst.write(rgba)
