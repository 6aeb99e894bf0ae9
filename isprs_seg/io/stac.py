"""A STAC Item describing one output set, written beside it (``--stac``).

``NAME.stac.json`` beside the main output ``NAME.tif`` is a STAC (SpatioTemporal Asset
Catalog, version :data:`STAC_VERSION`) Item: a GeoJSON Feature whose geometry is the
raster's footprint in WGS 84 (the grid's outline, densified, transformed with GDAL) and
whose assets are the files of the set, each with a relative ``href``, a media type and
roles (``data``; ``visual`` for the colour-mapped class raster; ``metadata`` for the
category file and the QGIS style; ``overview`` for the PCA quick-look). It uses three
extensions:

- ``classification`` (v2.0.0) on the class raster: each class's value, name, title,
  colour (``color_hint``), pixel count and percentage, and nodata 255;
- ``projection`` (v2.0.0) on the Item (the main raster's grid) and on each raster
  asset: ``proj:code`` (``EPSG:n``, else null with ``proj:wkt2``), ``proj:shape``,
  ``proj:transform``, ``proj:bbox``;
- ``raster`` (v1.1.0) on each raster asset: per band its data type, nodata, scale
  (uint8 scores are x 255) and resolution.

``datetime`` is the input's ``TIFFTAG_DATETIME`` when it has one (TIFF gives no time
zone: read as UTC), else the time of the run; ``created`` is always the time of the run,
and ``isprs_seg:datetime_source`` says which was used. ``isprs_seg:settings`` holds the
settings record of the outputs (:mod:`isprs_seg.io.provenance`), ``isprs_seg:model``
the model's handle. Everything is read from the finished files, so the Item describes
what was written; it is written after them, and committed with them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import rasterio
import rasterio.warp
from rasterio.transform import array_bounds

from .legend import class_names

#: The STAC specification version of the Items written.
STAC_VERSION = "1.1.0"
CLASSIFICATION = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"
PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
RASTER = "https://stac-extensions.github.io/raster/v1.1.0/schema.json"

#: Media types of the files of an output set, by file name ending.
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
GEOTIFF_TYPE = "image/tiff; application=geotiff"
MEDIA_TYPES = {".aux.xml": "application/xml", ".qml": "application/xml", ".gpkg": "application/geopackage+sqlite3",
               ".parquet": "application/vnd.apache.parquet", ".png": "image/png"}

#: Roles of each output role's asset (``data`` for any not listed).
ASSET_ROLES = {"classes": ["data", "visual"], "categories": ["metadata"], "legend": ["metadata"],
               "preview": ["overview"]}

#: What each output role holds, for the asset titles.
TITLES = {
    "classes": "class of each pixel (ISPRS classes)", "probabilities": "per-class probabilities",
    "confidence": "confidence of the class", "features": "HRNetV2 features at 1/4 resolution",
    "polygons": "polygons of the classes", "pooled": "mean-pooled features per grid cell",
    "preview": "false-colour quick-look of the features (first three principal components)",
    "categories": "category names and attribute table of the class raster (GDAL PAM)",
    "legend": "QGIS style of the class raster",
}

#: Points per edge of the raster's outline when it is transformed to WGS 84.
_EDGE_POINTS = 16


def stac_path(main: Path) -> Path:
    """``NAME.tif`` -> ``NAME.stac.json``, the Item of the output set whose main output is ``NAME.tif``."""
    stem = main.name[: -len(main.suffix)] if main.suffix else main.name
    return main.with_name(stem + ".stac.json")


def _utc(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def acquisition_time(tags: Mapping[str, str]) -> dt.datetime | None:
    """The input's ``TIFFTAG_DATETIME`` (``YYYY:MM:DD HH:MM:SS``), as UTC; None when absent or unreadable."""
    text = (tags.get("TIFFTAG_DATETIME") or "").strip()
    try:
        return dt.datetime.strptime(text, "%Y:%m:%d %H:%M:%S").replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None


def _projection(ds) -> dict:
    """The projection extension's fields of a raster's grid."""
    fields: dict = {"proj:code": None}
    if ds.crs is not None:
        authority = ds.crs.to_authority()
        fields["proj:code"] = f"{authority[0]}:{authority[1]}" if authority else None
        if authority is None:
            fields["proj:wkt2"] = ds.crs.to_wkt()
    fields["proj:shape"] = [ds.height, ds.width]
    fields["proj:transform"] = [float(v) for v in ds.transform[:6]]
    if ds.crs is not None or not ds.transform.is_identity:
        fields["proj:bbox"] = [float(v) for v in array_bounds(ds.height, ds.width, ds.transform)]
    return fields


def footprint(ds) -> tuple[dict | None, list[float] | None]:
    """The outline of a raster's grid in WGS 84 (GeoJSON) and its bounding box; None for a raster without a CRS."""
    if ds.crs is None:
        return None, None
    t = np.linspace(0, 1, _EDGE_POINTS, endpoint=False)
    cols = np.concatenate([t, np.ones_like(t), 1 - t, np.zeros_like(t), [0]]) * ds.width
    rows = np.concatenate([np.zeros_like(t), t, np.ones_like(t), 1 - t, [0]]) * ds.height
    xs, ys = rasterio.transform.xy(ds.transform, rows, cols, offset="ul")
    ring = {"type": "Polygon", "coordinates": [list(zip(map(float, xs), map(float, ys)))]}
    geometry = rasterio.warp.transform_geom(ds.crs, "EPSG:4326", ring, antimeridian_cutting=True, precision=9)
    points = np.array([p for polygon in _polygons(geometry) for p in polygon[0]])
    bbox = [float(v) for v in (*points.min(0), *points.max(0))]
    return geometry, bbox


def _polygons(geometry: dict) -> list:
    return geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]


def _bands(ds) -> list[dict]:
    """The raster extension's bands of a raster (data type, nodata, scale of scores stored x 255)."""
    values = (ds.tags().get("VALUES") or "").strip()
    scaled = values.endswith("* 255")
    resolution = float(abs(ds.transform.a)) if not ds.transform.is_identity else None
    bands = []
    for dtype, nodata in zip(ds.dtypes, ds.nodatavals):
        band: dict = {"data_type": dtype}
        if nodata is not None:
            band["nodata"] = "nan" if np.isnan(nodata) else int(nodata) if float(nodata).is_integer() else nodata
        if scaled:
            band["scale"] = 1 / 255
            band["offset"] = 0
        if resolution is not None and ds.crs is not None:
            band["spatial_resolution"] = resolution
        bands.append(band)
    return bands


def _classes(ds, pixels: Mapping[str, int] | None) -> list[dict]:
    """The classification extension's classes of a class raster: from its names and colour table."""
    names, colours = class_names(ds), ds.colormap(1)
    total = sum(pixels.values()) if pixels else 0
    classes = []
    for value, name in enumerate(names):
        r, g, b = colours.get(value, (0, 0, 0, 255))[:3]
        entry = {"value": value, "name": "".join(c if c.isalnum() or c in "-_" else "_" for c in name),
                 "title": name, "color_hint": f"{r:02X}{g:02X}{b:02X}"}
        if pixels and name in pixels:
            entry["count"] = int(pixels[name])
            entry["percentage"] = 100 * pixels[name] / total if total else 0.0
        classes.append(entry)
    nodata = ds.nodata
    if nodata is not None:
        classes.append({"value": int(nodata), "name": "nodata", "title": "no valid input pixel", "nodata": True})
    return classes


def _media_type(path: Path) -> str | None:
    name = path.name.lower()
    return next((kind for end, kind in MEDIA_TYPES.items() if name.endswith(end)), None)


def _raster_asset(ds, role: str, pixels) -> tuple[dict, set[str]]:
    cog = ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    asset = {"type": COG_TYPE if cog else GEOTIFF_TYPE, **_projection(ds), "raster:bands": _bands(ds)}
    used = {PROJECTION, RASTER}
    if role == "classes":
        asset["classification:classes"] = _classes(ds, pixels)
        used.add(CLASSIFICATION)
    return asset, used


def item(path: Path, finals: Mapping[str, Path], files: Mapping[str, Path], main: str, src, tags: Mapping[str, str],
         pixels: Mapping[str, int] | None = None, now: dt.datetime | None = None) -> dict:
    """The Item of the output set ``finals`` (by role; ``path`` is the Item's own final
    path), read from ``files`` (the same outputs, as written: the temporaries before they
    are committed). ``src``: the input; ``tags``: the outputs' tags (settings record,
    model); ``pixels``: the class raster's pixel count per class name, when known."""
    now = now or dt.datetime.now(dt.timezone.utc)
    taken = acquisition_time(src.tags())
    assets, extensions = {}, set()
    grid: dict = {}
    for role, final in finals.items():
        if final == path:
            continue
        asset: dict = {"href": "./" + os.path.relpath(final, path.parent).replace(os.sep, "/")}
        if files[role].suffix.lower() in (".tif", ".tiff"):
            with rasterio.open(files[role]) as ds:
                fields, used = _raster_asset(ds, role, pixels)
                if role == main:
                    grid, geometry_bbox = _projection(ds), footprint(ds)
            asset.update(fields)
            extensions |= used
        elif _media_type(final):
            asset["type"] = _media_type(final)
        asset["roles"] = ASSET_ROLES.get(role, ["data"])
        if role in TITLES:
            asset["title"] = TITLES[role]
        assets[role] = asset
    geometry, bbox = geometry_bbox if grid else (None, None)
    settings = tags.get("ISPRS_SEG_SETTINGS")
    properties = {
        "datetime": _utc(taken or now), "created": _utc(now),
        "isprs_seg:datetime_source": "TIFFTAG_DATETIME of the input" if taken else "time of the run",
        **grid,
        "isprs_seg:settings": json.loads(settings) if settings else None,
        "isprs_seg:model": tags.get("MODEL"),
    }
    feature = {"type": "Feature", "stac_version": STAC_VERSION, "stac_extensions": sorted(extensions),
               "id": stac_path(finals[main]).name[: -len(".stac.json")], "geometry": geometry}
    if bbox is not None:
        feature["bbox"] = bbox
    feature.update({"properties": properties, "links": [], "assets": assets})
    return feature


def write_item(path: Path, item: dict) -> None:
    """Write ``item`` to ``path`` (a temporary, committed with the outputs)."""
    path.write_text(json.dumps(item, indent=2) + "\n", encoding="utf-8")
