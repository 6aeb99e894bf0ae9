"""GeoParquet 1.1 beside the GeoPackage: the same rows, valid ``geo`` metadata, read back by pyarrow
and geopandas, with the batch rules (names, skips, refusals) of the GeoPackage outputs."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import rasterio
from helpers import COGEO, HRO_ALPHA, cli

from isprs_seg.analysis.vectorize import vectorize_raster
from isprs_seg.api import extract_features, predict_raster

shapely = pytest.importorskip("shapely")
pyogrio = pytest.importorskip("pyogrio")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def class_raster(tmp_path_factory, small_model):
    out = tmp_path_factory.mktemp("classes")
    return predict_raster(COGEO, out / "square.tif", model=small_model, tile=256, overlap=64).outputs[0]


def _gpkg_rows(path):
    meta, _, geometry, fields = pyogrio.raw.read(path, return_fids=False)
    return list(meta["fields"]), [shapely.from_wkb(g) for g in geometry], fields


def _parquet_rows(path):
    table = pq.read_table(path)
    names = [n for n in table.column_names if n != "geometry"]
    return names, list(shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))), \
        [table.column(n).to_numpy(zero_copy_only=False) for n in names]


def _assert_same_rows(gpkg, parquet):
    """Row for row: the same attribute columns and values (NaN where NaN) and equal geometries."""
    names, geoms, fields = _gpkg_rows(gpkg)
    p_names, p_geoms, p_fields = _parquet_rows(parquet)
    assert p_names == names and len(p_geoms) == len(geoms) > 0
    for name, a, b in zip(names, fields, p_fields):
        assert a.dtype == b.dtype or (a.dtype == object and b.dtype == object), name
        if a.dtype.kind == "f":
            np.testing.assert_array_equal(a, b, err_msg=name)  # NaN equals NaN here
        else:
            assert list(a) == list(b), name
    assert all(g.equals_exact(h, 0) for g, h in zip(geoms, p_geoms))


def _check_geo_metadata(path, crs, geoms):
    """The ``geo`` metadata against the GeoParquet 1.1 specification's required fields and what it says."""
    meta = pq.read_metadata(path).metadata
    geo = json.loads(meta[b"geo"])
    assert geo["version"] == "1.1.0"
    assert isinstance(geo["primary_column"], str) and geo["primary_column"] in geo["columns"]
    column = geo["columns"][geo["primary_column"]]
    assert column["encoding"] == "WKB"  # required: WKB, or a native (GeoArrow) encoding
    assert column["geometry_types"] == ["Polygon"]  # required: a list, each of the spec's type names
    assert {g.geom_type for g in geoms} == {"Polygon"}
    bounds = np.array([g.bounds for g in geoms])
    np.testing.assert_allclose(column["bbox"], [*bounds[:, :2].min(0), *bounds[:, 2:].max(0)])
    pyproj = pytest.importorskip("pyproj")
    assert pyproj.CRS.from_json_dict(column["crs"]) == pyproj.CRS.from_wkt(crs.to_wkt())
    assert column["crs"]["type"].endswith("CRS")  # PROJJSON, not WKT text
    schema = pq.read_schema(path)
    assert schema.field(geo["primary_column"]).type == "binary"
    return meta


def _read_with_geopandas(path, crs, rows):
    try:
        import geopandas
    except ImportError:
        pytest.skip("geopandas is not installed: the GeoParquet files were checked with pyarrow only")
    frame = geopandas.read_parquet(path)
    assert len(frame) == rows and frame.geometry.name == "geometry"
    assert frame.crs == geopandas.GeoSeries([], crs=crs.to_wkt()).crs
    assert frame.geometry.is_valid.all()


def test_vectorize_parquet_has_the_rows_of_the_geopackage(tmp_path, class_raster, monkeypatch):
    monkeypatch.setattr("isprs_seg.analysis.vectorize._WRITE_EVERY", 1000)  # chunks, as in a city-wide raster
    gpkg = vectorize_raster(class_raster, tmp_path / "p.gpkg", band_rows=300, min_area=1.0)
    parquet = vectorize_raster(class_raster, tmp_path / "p.parquet", band_rows=300, min_area=1.0)
    assert parquet.outputs == [str(tmp_path / "p.parquet")] and parquet.polygons == gpkg.polygons > 3000
    _assert_same_rows(gpkg.outputs[0], parquet.outputs[0])
    with rasterio.open(class_raster) as src:
        crs = src.crs
    _, geoms, _ = _parquet_rows(parquet.outputs[0])
    meta = _check_geo_metadata(parquet.outputs[0], crs, geoms)
    # the settings record and the area units, as in the GeoPackage's layer metadata
    layer = pyogrio.read_info(gpkg.outputs[0])["layer_metadata"]
    assert meta[b"ISPRS_SEG_SETTINGS"].decode() == layer["ISPRS_SEG_SETTINGS"]
    assert meta[b"AREA_UNITS"] == b"square metres"
    # written a chunk at a time: several row groups, not one table held whole
    assert pq.ParquetFile(parquet.outputs[0]).num_row_groups >= 2
    _read_with_geopandas(parquet.outputs[0], crs, gpkg.polygons)


def test_pooled_parquet_has_the_rows_of_the_geopackage(tmp_path, small_model, small_dir):
    result = extract_features(HRO_ALPHA, tmp_path / "f.tif", model=small_model, tile=128, overlap=64, pool="6m")
    ran = cli("features", str(HRO_ALPHA), "--out-dir", str(tmp_path / "pq"), "--model", str(small_dir), "-q",
              "--tile", "128", "--overlap", "64", "--pool", "6m", "--pool-format", "parquet")
    assert ran.returncode == 0, ran.stderr
    stem = HRO_ALPHA.stem
    parquet = tmp_path / "pq" / f"{stem}.pooled.parquet"
    assert ran.stdout.split() == [str(tmp_path / "pq" / f"{stem}.features.tif"), str(parquet)]
    _assert_same_rows(result.outputs[1], parquet)
    _, geoms, fields = _parquet_rows(parquet)
    assert np.isnan(fields[3]).any() and np.isfinite(fields[3]).any()  # cells without a valid pixel stay NaN
    with rasterio.open(HRO_ALPHA) as src:
        crs = src.crs
    _check_geo_metadata(parquet, crs, geoms)
    again = cli("features", str(HRO_ALPHA), "--out-dir", str(tmp_path / "pq"), "--model", str(small_dir), "-q",
                "--tile", "128", "--overlap", "64", "--pool", "6m", "--pool-format", "parquet")
    assert again.returncode == 0 and "skipped" in again.stderr
    _read_with_geopandas(parquet, crs, len(geoms))


def test_parquet_follows_the_batch_rules_of_the_geopackage(tmp_path, class_raster, monkeypatch):
    out = tmp_path / "poly"
    first = cli("vectorize", class_raster, "--out-dir", str(out), "--format", "parquet", "--classes", "clutter")
    assert first.returncode == 0, first.stderr
    assert first.stdout.split() == [str(out / "square.polygons.parquet")]
    again = cli("vectorize", class_raster, "--out-dir", str(out), "--format", "parquet", "--classes", "clutter")
    assert again.returncode == 0 and "skipped" in again.stderr
    other = cli("vectorize", class_raster, "--out-dir", str(out), "--format", "parquet", "--classes", "low vegetation")
    assert other.returncode == 1 and "was made with --classes 6" in other.stderr
    redo = cli("vectorize", class_raster, "--out-dir", str(out), "--format", "parquet", "--classes", "low vegetation",
               "--overwrite")
    assert redo.returncode == 0, redo.stderr
    assert set(pq.read_table(out / "square.polygons.parquet").column("class_name").to_pylist()) == {"low vegetation"}
    # a truncated file is not complete: it is made again
    data = (out / "square.polygons.parquet").read_bytes()
    (out / "square.polygons.parquet").write_bytes(data[: len(data) // 2])
    remade = cli("vectorize", class_raster, "--out-dir", str(out), "--format", "parquet", "--classes", "low vegetation")
    assert remade.returncode == 0 and "is incomplete" in remade.stderr
    assert pq.read_metadata(out / "square.polygons.parquet").num_rows > 0
    assert not [p for p in out.iterdir() if ".partial" in p.name]
    # a format that contradicts -o's name, and a missing pyarrow: one sentence, exit 2, nothing written
    wrong = cli("vectorize", class_raster, "-o", str(tmp_path / "x.gpkg"), "--format", "parquet")
    assert wrong.returncode == 2 and "--format is parquet" in wrong.stderr and not (tmp_path / "x.gpkg").exists()
    for name in [m for m in sys.modules if m == "pyarrow" or m.startswith("pyarrow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    missing = cli("vectorize", class_raster, "-o", str(tmp_path / "x.parquet"))
    assert missing.returncode == 2 and "pip install 'isprs-seg[parquet]'" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.parquet").exists()
