"""Polygons from class rasters: banded, equal to polygonising the whole raster, memory flat in height."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import rasterio.features
from helpers import COGEO, HRO_ALPHA, cli

from isprs_seg.analysis.vectorize import vectorize_raster
from isprs_seg.api import predict_raster

shapely = pytest.importorskip("shapely")
pyogrio = pytest.importorskip("pyogrio")


@pytest.fixture(scope="module")
def class_rasters(tmp_path_factory, small_model):
    """Real class rasters: a 1024 px orthophoto's, one with nodata, and a tall stack of the first."""
    out = tmp_path_factory.mktemp("classes")
    square = predict_raster(COGEO, out / "square.tif", model=small_model, tile=256, overlap=64).outputs[0]
    masked = predict_raster(HRO_ALPHA, out / "masked.tif", model=small_model, tile=128, overlap=64).outputs[0]
    with rasterio.open(square) as src:
        data, profile = src.read(1), src.profile
        colormap = src.colormap(1)
    tall = out / "tall.tif"
    profile.update(height=2 * 1024, driver="GTiff", tiled=True, blockxsize=256, blockysize=256)
    with rasterio.open(tall, "w", **profile) as dst:
        dst.write(np.concatenate([data, data[::-1]])[None])  # mirrored: polygons cross the join
        dst.write_colormap(1, colormap)
        dst.update_tags(CLASS_NAMES=",".join(str(i) for i in range(7)))
    return {"square": square, "masked": masked, "tall": str(tall)}


def _read(path):
    _, _, geometry, fields = pyogrio.raw.read(path)
    return [(shapely.from_wkb(g), int(c)) for g, c in zip(geometry, fields[0])], fields


def _whole(path, classes=None):
    """The reference: the whole raster polygonised at once (GDAL, 4-connected), nodata left out."""
    with rasterio.open(path) as src:
        data, valid, transform = src.read(1), src.dataset_mask() > 0, src.transform
    if classes is not None:
        valid &= np.isin(data, classes)
    return [(shapely.geometry.shape(g), int(v))
            for g, v in rasterio.features.shapes(data, mask=valid, connectivity=4, transform=transform)]


def _assert_same_polygons(got, expected):
    assert len(got) == len(expected)
    tree = shapely.STRtree([g for g, _ in got])
    for geom, value in expected:
        candidates = tree.query(geom.representative_point(), predicate="intersects")
        same = [i for i in candidates if got[i][1] == value and got[i][0].equals(geom)]
        assert len(same) == 1, (value, geom.wkt[:200])


@pytest.mark.parametrize("name,band_rows", [("square", 100), ("masked", 7), ("tall", 300)])
def test_banded_polygons_equal_whole_raster_polygonisation(tmp_path, class_rasters, name, band_rows):
    result = vectorize_raster(class_rasters[name], tmp_path / "p.gpkg", band_rows=band_rows)
    got, fields = _read(result.outputs[0])
    expected = _whole(class_rasters[name])
    _assert_same_polygons(got, expected)
    assert result.polygons == len(expected)
    assert all(g.is_valid and g.geom_type == "Polygon" for g, _ in got)
    crossing = [g for g, _ in got if g.bounds[1] // (band_rows * 0.6) != g.bounds[3] // (band_rows * 0.6)]
    assert crossing, "some polygons cross band borders"
    if name == "tall":
        assert max(g.bounds[3] - g.bounds[1] for g, _ in got) > 1024 * 0.6, "some span the joins of the stack"
    with rasterio.open(class_rasters[name]) as src:
        pixel_area = abs(src.transform.a * src.transform.e)
        counts = np.bincount(src.read(1)[src.dataset_mask() > 0], minlength=7)
    areas = np.bincount(fields[0], weights=fields[2], minlength=7)
    # areas per class are those of the pixels (nodata never polygonised), to float rounding in UTM coordinates
    np.testing.assert_allclose(areas[:7], counts[:7] * pixel_area, rtol=1e-6, atol=1e-3 * pixel_area)


def test_classes_min_area_and_simplify(tmp_path, class_rasters):
    with rasterio.open(class_rasters["square"]) as src:
        names = src.tags()["CLASS_NAMES"].split(",")
        pixel_area = abs(src.transform.a * src.transform.e)
    result = vectorize_raster(class_rasters["square"], tmp_path / "p.gpkg", classes="clutter,low vegetation",
                              min_area=10 * pixel_area, simplify=0.6)
    got, fields = _read(result.outputs[0])
    expected = [(g, v) for g, v in _whole(class_rasters["square"], [3, 6]) if g.area >= 10 * pixel_area]
    assert len(got) == len(expected) and set(fields[0]) == {3, 6}
    assert list(fields[1][:3]) == [names[v] for v in fields[0][:3]]
    assert all(g.is_valid for g, _ in got)
    assert sum(len(g.exterior.coords) for g, _ in got) < sum(len(g.exterior.coords) for g, _ in expected)
    info = pyogrio.read_info(result.outputs[0])
    assert info["crs"] is not None and info["geometry_type"] == "Polygon"
    assert info["layer_metadata"]["AREA_UNITS"] == "square metres"


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".gpkg", ".parquet"])
def test_memory_does_not_grow_with_the_height_of_the_raster(tmp_path, class_rasters, suffix):
    """Peak RSS of a fresh process, GEOS's own memory included, on 2,048 and 8,192 rows.

    VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent (this test
    process, far larger), which would hide any growth. GeoParquet is written a row group
    at a time, as the GeoPackage is in chunks.
    """
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    with rasterio.open(class_rasters["square"]) as src:
        data, profile = src.read(1), src.profile
    data = data.copy()
    data[::512] = 255  # a nodata row every 512 rows: no polygon grows with the height
    peaks = {}
    for height in (2048, 8192):
        path = tmp_path / f"tall{height}.tif"
        profile.update(height=height, driver="GTiff", tiled=True, blockxsize=256, blockysize=256)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(np.tile(data, (height // 1024, 1))[None])
        script = ("from isprs_seg.analysis.vectorize import vectorize_raster; "
                  f"vectorize_raster({str(path)!r}, {str(tmp_path / f'p{height}{suffix}')!r}, band_rows=256); "
                  "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])")
        peaks[height] = int(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                           check=True).stdout)
    assert peaks[8192] < 1.1 * peaks[2048], peaks


def test_the_command_line_follows_the_batch_rules(tmp_path, class_rasters):
    out = tmp_path / "poly"
    listing = f"{class_rasters['square']}\n{class_rasters['masked']}\n"
    first = cli("vectorize", "-", "--out-dir", str(out), "--classes", "building,tree,clutter", "--json", "-q",
                stdin=listing)
    assert first.returncode == 0, first.stderr
    records = [json.loads(line) for line in first.stdout.splitlines()]
    assert [r["status"] for r in records] == ["ok", "ok"] and records[0]["polygons"] > 0
    assert records[0]["outputs"] == [str(out / "square.polygons.gpkg")]
    again = cli("vectorize", "-", "--out-dir", str(out), "--classes", "building,tree,clutter", "-q", stdin=listing)
    assert again.returncode == 0 and again.stderr.count("skipped") == 2
    other = cli("vectorize", class_rasters["square"], "--out-dir", str(out), "--classes", "tree")
    assert other.returncode == 1 and "was made with --classes 2,4,6" in other.stderr
    bad = cli("vectorize", class_rasters["square"], "-o", str(tmp_path / "x.gpkg"), "--classes", "roofs")
    assert bad.returncode == 1 and "no class 'roofs'" in bad.stderr and not (tmp_path / "x.gpkg").exists()


def test_predict_can_write_polygons_too(tmp_path, small_dir):
    result = cli("predict", str(HRO_ALPHA), "--out-dir", str(tmp_path), "--model", str(small_dir), "-q",
                 "--tile", "128", "--overlap", "64", "--vector", "all")
    assert result.returncode == 0, result.stderr
    stem = HRO_ALPHA.stem
    assert result.stdout.split() == [str(tmp_path / f"{stem}.classes.tif"), str(tmp_path / f"{stem}.polygons.gpkg")]
    got, _ = _read(tmp_path / f"{stem}.polygons.gpkg")
    _assert_same_polygons(got, _whole(tmp_path / f"{stem}.classes.tif"))
