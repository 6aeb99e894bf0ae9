"""Polygons from a class raster, in bands of rows, equal to polygonising the whole raster.

The raster is read in bands of ``band_rows`` rows. Each band is polygonised in pixel
coordinates (4-connected pixels of one class form one polygon, holes kept, nodata never
polygonised). A polygon that reaches the bottom of its band stays *open*: when the next
band is read, every run of columns where the same class continues across the seam joins
the open polygon above to the piece below (a union of pixel-aligned polygons, exact in
integer coordinates). A polygon that can grow no more is finished: moved to the raster's
CRS, filtered by area, simplified and written. So the result is the polygonisation of
the whole raster, while memory holds one band of rows and the open polygons only.
Finished polygons go to a GeoPackage layer or a GeoParquet file in chunks
(:class:`isprs_seg.io.vector.VectorTable`), the same rows in either format.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from affine import Affine
from rasterio.windows import Window

from .. import __version__
from ..errors import InputError
from ..io.atomic import atomic_outputs
from ..io.legend import class_ids, class_names
from ..io.outputs import check_outputs, output_paths
from ..io.raster import gdal_env, is_georeferenced, metres_per_pixel, open_input, read_validity
from ..io.vector import EXTENSIONS, VectorTable, format_of, require_format

#: Layer name of the polygons in the GeoPackage.
LAYER = "polygons"
#: Rows of the class raster polygonised at once.
BAND_ROWS = 1024
#: Finished polygons written at once (a GeoParquet row group).
_WRITE_EVERY = 5000


def require_vector(format: str = "gpkg") -> None:
    """Polygons need shapely, and pyogrio (GeoPackage) or pyarrow (GeoParquet): optional extras."""
    try:
        import shapely  # noqa: F401
    except ImportError:
        raise InputError("polygons need shapely, which is not installed: pip install 'isprs-seg[vector]'") from None
    require_format(format, "--format")


def vector_format(output: str | os.PathLike | None, format: str | None) -> str:
    """The format of a polygons output: ``format``, else what ``-o``'s extension says, else gpkg.

    A format that contradicts the extension of ``output`` is refused (no ``.gpkg`` file
    holding Parquet)."""
    if format is None:
        return format_of(output) if output is not None else "gpkg"
    require_format(format, "--format")
    if output is not None and format_of(output) != format:
        raise InputError(f"-o {output} names a {'GeoParquet' if format_of(output) == 'parquet' else 'GeoPackage'} "
                         f"file but --format is {format}: name it *{EXTENSIONS[format]} or leave --format out")
    return format


def polygon_suffixes(format: str) -> dict[str, str]:
    """The file name suffix of the polygons role in ``format`` (for output naming)."""
    return {"polygons": f".polygons{EXTENSIONS[format]}"}


@dataclass
class VectorResult:
    """What one run of :func:`vectorize_raster` did."""

    input: str
    outputs: list[str]
    width: int
    height: int
    polygons: int
    seconds: float


def _transform(geoms, transform: Affine):
    import shapely

    a, b, c, d, e, f = transform[:6]
    return shapely.transform(geoms, lambda xy: xy @ np.array([[a, d], [b, e]]) + np.array([c, f]))


class _Polygons:
    """Open polygons in pixel coordinates, joined across band seams (see the module docstring)."""

    def __init__(self):
        self.geoms: list = []  # open polygons, reaching the seam below the last band read
        self.classes: list[int] = []

    def band(self, data: np.ndarray, selected: np.ndarray, top: int, last_row: np.ndarray | None,
             last_selected: np.ndarray | None, final: bool) -> Iterator[tuple[object, int]]:
        """Add a band of rows; yield the polygons that are finished (pixel coordinates, class)."""
        import rasterio.features
        import shapely

        pieces, classes = [], []
        for geometry, value in rasterio.features.shapes(data, mask=selected, connectivity=4,
                                                        transform=Affine.translation(0, top)):
            pieces.append(shapely.geometry.shape(geometry))
            classes.append(int(value))
        geoms, kinds = self.geoms + pieces, self.classes + classes
        parent = list(range(len(geoms)))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        if self.geoms and pieces and last_row is not None:
            same = last_selected & selected[0] & (last_row == data[0])
            cols = np.flatnonzero(same)
            if cols.size:  # one point per run of columns of one class: a run is one polygon on each side
                starts = cols[np.r_[True, (np.diff(cols) != 1) | (np.diff(data[0][cols]) != 0)]]
                above = shapely.points(starts + 0.5, np.full(len(starts), top - 0.5))
                below = shapely.points(starts + 0.5, np.full(len(starts), top + 0.5))
                up = dict(zip(*shapely.STRtree(self.geoms).query(above, predicate="intersects")))
                down = dict(zip(*shapely.STRtree(pieces).query(below, predicate="intersects")))
                for run in range(len(starts)):
                    a, b = root(up[run]), root(len(self.geoms) + down[run])
                    if a != b:
                        parent[b] = a
        members: dict[int, list[int]] = {}
        for i in range(len(geoms)):
            members.setdefault(root(i), []).append(i)
        bottom = top + data.shape[0]
        self.geoms, self.classes = [], []
        for group in members.values():
            geom = geoms[group[0]] if len(group) == 1 else shapely.union_all([geoms[i] for i in group])
            if not final and geom.bounds[3] >= bottom:
                self.geoms.append(geom)
                self.classes.append(kinds[group[0]])
            else:
                yield geom, kinds[group[0]]


def vectorize_raster(
    input: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    classes: str | Sequence | None = None,
    min_area: float | None = None,
    simplify: float | None = None,
    band_rows: int = BAND_ROWS,
    settings: dict | None = None,
    format: str | None = None,
) -> VectorResult:
    """Write the polygons of a class raster to a GeoPackage (``output``, or ``out_dir/<stem>.polygons.gpkg``)
    or, with ``format="parquet"`` (or an ``output`` named ``*.parquet``), a GeoParquet file
    (``out_dir/<stem>.polygons.parquet``).

    One polygon per 4-connected region of one class (holes kept), in the raster's CRS,
    with ``class_id``, ``class_name`` and ``area`` (square metres in a projected CRS,
    else square CRS units). ``classes``: the classes to keep (names or ids, default all);
    ``min_area``: drop smaller polygons (m2); ``simplify``: tolerance in metres
    (topology-preserving, each polygon on its own). ``settings``: what the output records
    as having produced it (see :mod:`isprs_seg.io.provenance`).
    """
    started = time.perf_counter()
    format = vector_format(output, format)
    require_vector(format)
    for name, value in (("--min-area", min_area), ("--simplify", simplify)):
        if value is not None and not (value >= 0 and np.isfinite(value)):
            raise InputError(f"{name} must be a number of (square) metres, at least 0, got {value}")
    finals = output_paths(input, "polygons", output=output, out_dir=out_dir, suffixes=polygon_suffixes(format))
    check_outputs(input, finals)
    with gdal_env(), open_input(input) as src, atomic_outputs(finals) as temps:
        names = class_names(src)
        if src.count != 1 or src.dtypes[0] not in ("uint8", "uint16", "int16", "int32"):
            raise InputError(f"{src.name} is not a class raster (one band of integer class ids)")
        wanted = class_ids(classes, names, "--classes")
        metres = _metres_per_unit(src, min_area, simplify)
        writer = _Writer(temps["polygons"], format, src, names, metres, min_area, simplify,
                         settings or vector_settings(input, classes=wanted, min_area=min_area, simplify=simplify))
        polygons = _Polygons()
        last_row = last_selected = None
        for top in range(0, src.height, band_rows):
            rows = min(band_rows, src.height - top)
            data = src.read(1, window=Window(0, top, src.width, rows))
            selected = read_validity(src, "dataset", top, rows)
            if wanted is not None:
                selected &= np.isin(data, wanted)
            final = top + rows >= src.height
            for geom, value in polygons.band(data, selected, top, last_row, last_selected, final):
                writer.add(geom, value)
            last_row, last_selected = data[-1].copy(), selected[-1].copy()
        writer.close()
        return VectorResult(str(input), [str(finals["polygons"])], src.width, src.height, writer.count,
                            time.perf_counter() - started)


def _metres_per_unit(src, min_area, simplify) -> float | None:
    """Metres per CRS unit of a projected raster; None (areas in CRS units) otherwise."""
    if src.crs is not None and src.crs.is_projected and is_georeferenced(src):
        return src.crs.linear_units_factor[1]
    for option, value in (("--min-area", min_area), ("--simplify", simplify)):
        if value:
            metres_per_pixel(src, option)  # raises the sentence for a raster without metres
    return None


def vector_settings(input, *, classes, min_area, simplify) -> dict:
    """The settings a polygons output records (see :mod:`isprs_seg.io.provenance`)."""
    stat = os.stat(input) if os.path.exists(input) else None
    return {"polygons": {
        "software": f"isprs-seg {__version__}",
        "source": f"{stat.st_size}:{stat.st_mtime_ns}" if stat else str(input),
        "classes": ",".join(map(str, classes)) if classes is not None else None,  # ids
        "min_area": min_area, "simplify": simplify,
    }}


class _Writer:
    """Finished polygons to the output table, in chunks, in the raster's CRS."""

    def __init__(self, path: Path, format: str, src, names, metres: float | None, min_area, simplify,
                 settings: dict):
        self.names, self.metres = names, metres
        self.transform = src.transform
        self.min_area = min_area / metres**2 if min_area and metres else None
        self.tolerance = simplify / metres if simplify and metres else None
        metadata = {"ISPRS_SEG_SETTINGS": json.dumps(settings, sort_keys=True),
                    "AREA_UNITS": "square metres" if metres else "square CRS units"}
        self.table = VectorTable(path, format, LAYER, {"class_id": "int16", "class_name": "str", "area": "float64"},
                                 "Polygon", src.crs, metadata)
        self.pending: list = []
        self.values: list[int] = []

    @property
    def count(self) -> int:
        return self.table.rows

    def add(self, geom, value: int) -> None:
        self.pending.append(geom)
        self.values.append(value)
        if len(self.pending) >= _WRITE_EVERY:
            self._flush()

    def _flush(self) -> None:
        import shapely

        geoms = _transform(np.array(self.pending, dtype=object), self.transform)
        values = np.array(self.values, np.int32)
        areas = shapely.area(geoms)
        keep = areas >= self.min_area if self.min_area else np.ones(len(geoms), bool)
        geoms, values, areas = geoms[keep], values[keep], areas[keep]
        if self.tolerance:
            geoms = shapely.simplify(geoms, self.tolerance, preserve_topology=True)
        fields = [values.astype(np.int16), np.array([self.names[v] for v in values], dtype=object),
                  areas * (self.metres**2 if self.metres else 1.0)]
        self.table.append(shapely.to_wkb(geoms), fields, shapely.bounds(geoms))
        self.pending, self.values = [], []

    def close(self) -> None:
        self._flush()
        self.table.close()


def expected_settings(input, classes: str | Sequence | None, min_area: float | None, simplify: float | None) -> dict:
    """The settings a run of :func:`vectorize_raster` on ``input`` would record (for reruns)."""
    with gdal_env(), open_input(input) as src:
        wanted = class_ids(classes, class_names(src), "--classes")
    return vector_settings(input, classes=wanted, min_area=min_area, simplify=simplify)
