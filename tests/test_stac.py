"""--stac: a STAC Item beside each output set, describing the files as written (assets, classes,
grid, footprint, time, settings), read by pystac, and handled by reruns like the other outputs."""

from __future__ import annotations

import copy
import datetime as dt
import json
import math

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import rasterio.warp
from helpers import HRO_ALPHA, cli

from isprs_seg import contract
from isprs_seg.io.stac import COG_TYPE

pystac = pytest.importorskip("pystac")
validation = pytest.importorskip("pystac.validation")
from pystac.extensions.classification import ClassificationExtension  # noqa: E402
from pystac.extensions.projection import ProjectionExtension  # noqa: E402
from pystac.extensions.raster import RasterExtension  # noqa: E402

COMMON = ("--tile", "128", "--overlap", "64", "-q")


def _item(path):
    data = json.loads(path.read_text())
    # the core STAC 1.1 schema ships with pystac: validated offline; the extensions' schemas are
    # fetched from the web (see test_extension_schemas)
    validation.validate_dict(copy.deepcopy(data), extensions=[])
    return data, pystac.Item.from_dict(data)


def _dated_input(tmp_path):
    path = tmp_path / "dated.tif"
    rasterio.shutil.copy(HRO_ALPHA, path, driver="GTiff")
    with rasterio.open(path, "r+") as ds:
        ds.update_tags(TIFFTAG_DATETIME="2014:04:21 10:30:00")
    return path


@pytest.fixture(scope="module")
def predicted(tmp_path_factory, small_dir):
    tmp = tmp_path_factory.mktemp("stac")
    out = tmp / "out"
    started = dt.datetime.now(dt.timezone.utc)
    ran = cli("predict", str(HRO_ALPHA), str(_dated_input(tmp)), "--out-dir", str(out), "--model", str(small_dir),
              *COMMON, "--probabilities", "--probabilities-dtype", "uint8", "--confidence", "max", "--vector", "all",
              "--stac")
    assert ran.returncode == 0, ran.stderr
    return out, ran, started, dt.datetime.now(dt.timezone.utc)


def test_item_describes_the_files_written(predicted, small_dir):
    out, ran, started, ended = predicted
    stem = HRO_ALPHA.stem
    item_path = out / f"{stem}.classes.stac.json"
    assert str(item_path) in ran.stdout.split()
    data, item = _item(item_path)
    assert item.id == f"{stem}.classes"
    # every file of the output set is an asset (the Item itself aside), its href resolving to it
    files = {p.name for p in out.iterdir() if p.name.startswith(stem + ".") and p != item_path}
    assert {a.href.removeprefix("./") for a in item.assets.values()} == files
    assets = item.assets
    for key in ("classes", "probabilities", "confidence"):
        with rasterio.open(out / assets[key].href) as ds:
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert assets[key].media_type == COG_TYPE and "data" in assets[key].roles
    assert assets["categories"].roles == ["metadata"] and assets["legend"].roles == ["metadata"]
    assert assets["polygons"].media_type == "application/geopackage+sqlite3"

    # classes: values, names and colours of the legend, counts of the raster's pixels, nodata
    with rasterio.open(out / f"{stem}.classes.tif") as ds:
        classes, transform, crs, shape, bounds = ds.read(1), ds.transform, ds.crs, ds.shape, ds.bounds
        settings = json.loads(ds.tags()["ISPRS_SEG_SETTINGS"])
    described = ClassificationExtension.ext(assets["classes"]).classes
    counts = np.bincount(classes.ravel(), minlength=256)
    assert [c.value for c in described] == [c.index for c in contract.CLASSES] + [255]
    for c, info in zip(described, contract.CLASSES):
        assert c.title == info.name and c.color_hint == "%02X%02X%02X" % info.color
        assert c.count == counts[c.value]
    assert sum(c.percentage for c in described[:-1]) == pytest.approx(100)
    assert described[-1].nodata is True and counts[255] > 0

    # the grid (projection), per asset and for the Item
    proj = ProjectionExtension.ext(item)
    assert proj.code == f"EPSG:{crs.to_epsg()}" and tuple(proj.shape) == shape
    assert proj.transform == list(transform[:6])
    assert proj.bbox == pytest.approx([bounds.left, bounds.bottom, bounds.right, bounds.top])
    assert ProjectionExtension.ext(assets["probabilities"]).transform == list(transform[:6])
    bands = RasterExtension.ext(assets["probabilities"]).bands
    assert len(bands) == 7 and bands[0].data_type == "uint8" and bands[0].scale == pytest.approx(1 / 255)
    assert RasterExtension.ext(assets["classes"]).bands[0].nodata == 255

    # the footprint in WGS 84: back in the raster's CRS it is the raster's outline
    back = rasterio.warp.transform_geom("EPSG:4326", crs, data["geometry"])
    ring = np.array(back["coordinates"][0])
    np.testing.assert_allclose([*ring.min(0), *ring.max(0)], list(bounds), atol=1e-3)
    lon, lat = np.array(data["geometry"]["coordinates"][0]).T
    assert data["bbox"] == pytest.approx([lon.min(), lat.min(), lon.max(), lat.max()])
    assert -105 < lon.min() < -104 and 38 < lat.min() < 39  # Colorado Springs

    # time: this input has no TIFFTAG_DATETIME, so the run's time; the settings record as written
    assert started <= item.datetime <= ended and item.properties["isprs_seg:datetime_source"] == "time of the run"
    assert item.properties["isprs_seg:settings"] == settings
    assert item.properties["isprs_seg:model"] == str(small_dir)


def test_item_datetime_is_the_inputs_tiff_datetime(predicted):
    out, _, started, ended = predicted
    _, item = _item(out / "dated.classes.stac.json")
    assert item.datetime == dt.datetime(2014, 4, 21, 10, 30, tzinfo=dt.timezone.utc)
    assert item.properties["isprs_seg:datetime_source"] == "TIFFTAG_DATETIME of the input"
    created = dt.datetime.fromisoformat(item.properties["created"].replace("Z", "+00:00"))
    assert started <= created <= ended


def test_reruns_consider_the_item(predicted, small_dir):
    out = predicted[0]
    stem = HRO_ALPHA.stem
    args = ("predict", str(HRO_ALPHA), "--out-dir", str(out), "--model", str(small_dir), *COMMON, "--probabilities",
            "--probabilities-dtype", "uint8", "--confidence", "max", "--vector", "all", "--stac")
    again = cli(*args)
    assert again.returncode == 0 and "skipped" in again.stderr
    item_path = out / f"{stem}.classes.stac.json"
    item_path.write_text(item_path.read_text()[:100])  # cut short
    remade = cli(*args)
    assert remade.returncode == 0 and "is incomplete" in remade.stderr, remade.stderr
    _item(item_path)
    item_path.unlink()
    remade = cli(*args)
    assert remade.returncode == 0 and "skipped" not in remade.stderr and item_path.exists()
    assert not [p for p in out.iterdir() if ".partial" in p.name]


def test_features_item_has_its_own_grid_and_assets(tmp_path, small_dir):
    pytest.importorskip("pyarrow")
    out = tmp_path / "feat"
    out.mkdir()
    ran = cli("features", str(HRO_ALPHA), "-o", str(out / "f.tif"), "--model", str(small_dir), *COMMON,
              "--pool", "6m", "--pool-format", "parquet", "--preview", str(out / "f.png"), "--stac", "--cog")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split()[0] == str(out / "f.tif") and str(out / "f.stac.json") in ran.stdout.split()
    data, item = _item(out / "f.stac.json")
    with rasterio.open(HRO_ALPHA) as src:
        height, width = src.height, src.width
    assert tuple(ProjectionExtension.ext(item).shape) == (math.ceil(height / 4), math.ceil(width / 4))
    assert item.assets["features"].media_type == COG_TYPE
    assert len(RasterExtension.ext(item.assets["features"]).bands) == contract.FEATURE_CHANNELS
    assert item.assets["pooled"].media_type == "application/vnd.apache.parquet"
    assert item.assets["preview"].roles == ["overview"] and item.assets["preview"].media_type == "image/png"
    assert not any("classification" in e for e in data["stac_extensions"])


def test_extension_schemas(predicted):
    """The Item against the classification, projection and raster extensions' JSON schemas.

    No installed package ships those schemas; pystac fetches them from the extensions'
    web pages, so on a machine without internet this check is skipped, saying so."""
    from pystac.validation.stac_validator import GetSchemaError

    _, item = _item(predicted[0] / f"{HRO_ALPHA.stem}.classes.stac.json")
    try:
        item.validate()
    except GetSchemaError as exc:
        pytest.skip(f"the STAC extensions' JSON schemas could not be fetched (no internet?): {str(exc)[:80]}")
