"""Vector tables written in chunks: a GeoPackage layer (pyogrio) or a GeoParquet 1.1 file (pyarrow).

The polygons of ``vectorize`` and the pooled embeddings of ``features --pool`` are
produced a chunk of rows at a time and never held whole: :class:`VectorTable` appends
each chunk as it comes, to the GeoPackage layer or as one Parquet row group, so memory
holds one chunk. Both formats get the same rows, in the same order, with the same
attribute values (NaN stays NaN) and the same geometries.

GeoParquet (https://geoparquet.org, version :data:`GEOPARQUET_VERSION`): geometries
are WKB in a ``geometry`` column (the last), and the file's ``geo`` metadata names it
the primary column with its encoding, geometry types, CRS (PROJJSON, or null when the
raster had none) and bounding box. That metadata is known only when the last chunk is
written, so it is stored in the file's footer at close, without the Arrow schema copy
(``store_schema=False``: a copy written with the first row group would hold no
``geo``). Other table metadata (the settings record) goes beside it in the footer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Mapping, Sequence, get_args

import numpy as np

from ..errors import InputError

#: A vector output's format: a GeoPackage layer, or a GeoParquet file.
VectorFormat = Literal["gpkg", "parquet"]
VECTOR_FORMATS: tuple[str, ...] = get_args(VectorFormat)

#: File name extension of each format.
EXTENSIONS = {"gpkg": ".gpkg", "parquet": ".parquet"}

#: The GeoParquet specification version written.
GEOPARQUET_VERSION = "1.1.0"

#: Name of the geometry column in GeoParquet files.
GEOMETRY_COLUMN = "geometry"


def format_of(path: str | Path) -> str:
    """The vector format a file name says (``.parquet``/``.geoparquet``: parquet; else gpkg)."""
    return "parquet" if Path(path).suffix.lower() in (".parquet", ".geoparquet") else "gpkg"


def require_format(format: str, option: str) -> None:
    """The one-sentence error when ``format`` is unknown or its library is missing."""
    if format not in VECTOR_FORMATS:
        raise InputError(f"{option} must be one of {', '.join(VECTOR_FORMATS)}, got {format!r}")
    if format == "parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise InputError("GeoParquet is written with pyarrow, which is not installed: "
                             "pip install 'isprs-seg[parquet]'") from None
    else:
        try:
            import pyogrio  # noqa: F401
        except ImportError:
            raise InputError("GeoPackages are written with pyogrio, which is not installed: "
                             "pip install 'isprs-seg[vector]'") from None


def read_table_metadata(path: Path) -> dict[str, str]:
    """The table metadata of a vector output (GeoPackage layer metadata, Parquet footer keys)."""
    if format_of(path) == "parquet":
        import pyarrow.parquet as pq

        meta = pq.read_metadata(path).metadata or {}
        return {k.decode(): v.decode() for k, v in meta.items()}
    import pyogrio

    return pyogrio.read_info(path).get("layer_metadata") or {}


def check_readable(path: Path) -> None:
    """Raise when ``path`` is not a complete vector output (its footer or header cannot be read)."""
    if format_of(path) == "parquet":
        import pyarrow.parquet as pq

        pq.read_metadata(path)
    else:
        import pyogrio

        pyogrio.read_info(path)


def _arrow_type(kind: str):
    import pyarrow as pa

    return pa.string() if kind == "str" else pa.from_numpy_dtype(np.dtype(kind))


def geo_metadata(crs, geometry_types: Sequence[str], bbox: Sequence[float] | None) -> dict:
    """The GeoParquet ``geo`` metadata of a table whose geometry column is :data:`GEOMETRY_COLUMN`.

    ``crs``: a rasterio CRS or None (stored as null: undefined, as opposed to a missing
    key, which would mean WGS 84 longitude/latitude); ``bbox``: of every geometry, None
    when there is none.
    """
    column: dict = {"encoding": "WKB", "geometry_types": list(geometry_types),
                    "crs": crs.to_dict(projjson=True) if crs is not None else None}
    if bbox is not None:
        column["bbox"] = [float(v) for v in bbox]
    return {"version": GEOPARQUET_VERSION, "primary_column": GEOMETRY_COLUMN, "columns": {GEOMETRY_COLUMN: column}}


class VectorTable:
    """A table of geometries and attribute columns, appended to in chunks, in one format.

    ``fields``: the attribute columns in order, name -> kind (a numpy dtype name, or
    ``"str"``); ``geometry_type``: the one type of every geometry (``"Polygon"``);
    ``crs``: a rasterio CRS or None; ``metadata``: text stored with the table (the
    GeoPackage layer's metadata, keys of the Parquet footer). The file exists, complete,
    after :meth:`close` (an empty table when nothing was appended).
    """

    def __init__(self, path: Path, format: str, layer: str, fields: Mapping[str, str], geometry_type: str, crs,
                 metadata: Mapping[str, str] | None = None):
        self.path, self.format, self.layer = Path(path), format, layer
        self.fields, self.geometry_type, self.crs = dict(fields), geometry_type, crs
        self.metadata = dict(metadata or {})
        self.rows = 0
        self._bbox = np.array([np.inf, np.inf, -np.inf, -np.inf])
        self._writer = None
        self._written = False

    def append(self, wkb: Sequence[bytes], columns: Sequence[np.ndarray], bounds: np.ndarray) -> None:
        """Rows: WKB geometries, one array per field (in order), bounds ``[n, 4]`` (xmin, ymin, xmax, ymax)."""
        if self._written and not len(wkb):
            return
        if len(wkb):
            bounds = np.asarray(bounds, np.float64).reshape(-1, 4)
            self._bbox[:2] = np.minimum(self._bbox[:2], bounds[:, :2].min(axis=0))
            self._bbox[2:] = np.maximum(self._bbox[2:], bounds[:, 2:].max(axis=0))
        if self.format == "parquet":
            self._append_parquet(wkb, columns)
        else:
            self._append_gpkg(wkb, columns)
        self.rows += len(wkb)
        self._written = True

    def _append_gpkg(self, wkb, columns) -> None:
        import pyogrio.raw

        kinds = self.fields.values()
        arrays = [np.asarray(c, dtype=object if kind == "str" else kind) for c, kind in zip(columns, kinds)]
        metadata = None if self._written or not self.metadata else self.metadata
        pyogrio.raw.write(str(self.path), np.asarray(wkb, dtype=object), arrays, list(self.fields), layer=self.layer,
                          driver="GPKG", geometry_type=self.geometry_type,
                          crs=self.crs.to_wkt() if self.crs is not None else None, append=self._written,
                          nan_as_null=False, layer_metadata=metadata)

    def _schema(self):
        import pyarrow as pa

        return pa.schema([(name, _arrow_type(kind)) for name, kind in self.fields.items()]
                         + [(GEOMETRY_COLUMN, pa.binary())])

    def _append_parquet(self, wkb, columns) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = self._schema()
        if self._writer is None:
            self._writer = pq.ParquetWriter(str(self.path), schema, store_schema=False)
        arrays = [pa.array(np.asarray(c), type=field.type) for c, field in zip(columns, schema)]
        arrays.append(pa.array(list(wkb), type=pa.binary()))
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=schema))

    def close(self) -> None:
        """Write what is still due (an empty table when no row came) and, for Parquet, the footer."""
        if not self._written:
            self.append([], [np.empty(0, object if k == "str" else k) for k in self.fields.values()], np.empty((0, 4)))
        if self._writer is not None:
            bbox = self._bbox if self.rows else None
            geo = geo_metadata(self.crs, [self.geometry_type] if self.rows else [], bbox)
            self._writer.add_key_value_metadata({"geo": json.dumps(geo), **self.metadata})
            self._writer.close()
            self._writer = None
