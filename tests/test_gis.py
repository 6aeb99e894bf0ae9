"""GIS-ready outputs: Cloud Optimized GeoTIFFs with overviews, legends, band names."""

from __future__ import annotations

import ctypes
import glob
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import rasterio
from helpers import COGEO, HRO_ALPHA, cli, half_precision, valid_mask

from isprs_seg import contract
from isprs_seg.api import extract_features, predict_raster


def gdalinfo(path) -> str:
    """What ``gdalinfo`` prints, from the GDAL library rasterio runs on (no GDAL programs needed)."""
    libs = glob.glob(os.path.join(os.path.dirname(rasterio.__file__), os.pardir, "rasterio.libs", "libgdal*"))
    if not libs:
        pytest.skip("rasterio's own GDAL library is not where a wheel puts it")
    lib = ctypes.CDLL(libs[0])
    lib.GDALAllRegister()
    lib.GDALOpen.restype, lib.GDALOpen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_int]
    lib.GDALInfo.restype, lib.GDALInfo.argtypes = ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_void_p]
    lib.GDALClose.argtypes = [ctypes.c_void_p]
    ds = lib.GDALOpen(str(path).encode(), 0)
    try:
        return lib.GDALInfo(ds, None).decode()
    finally:
        lib.GDALClose(ds)


@pytest.fixture(scope="module")
def cog_outputs(tmp_path_factory, small_model):
    out = tmp_path_factory.mktemp("cog")
    classes = predict_raster(COGEO, out / "c.tif", model=small_model, probabilities=True, tile=256, overlap=64)
    masked = predict_raster(HRO_ALPHA, out / "a.tif", model=small_model, probabilities=True,
                            probabilities_dtype="uint8", tile=128, overlap=64)
    return classes, masked


def test_class_and_probability_rasters_are_valid_cogs_with_overviews(cog_outputs):
    from rio_cogeo.cogeo import cog_validate

    classes, masked = cog_outputs
    for path in (*classes.outputs, *masked.outputs):
        valid, errors, warnings = cog_validate(path, strict=True)
        assert valid and not errors and not warnings, (path, errors, warnings)
    with rasterio.open(classes.outputs[0]) as ds:
        assert ds.overviews(1) == [2, 4], "1024 px halved down to 256"
        assert ds.block_shapes[0] == (512, 512) and ds.nodata == 255 and ds.colormap(1)[2][:3] == (0, 0, 255)
        full = ds.read(1)
        small = ds.read(1, out_shape=(256, 256))  # from the smallest overview
    assert set(np.unique(small)) <= set(np.unique(full)) | {255}, "overview pixels stay class values"
    # MODE: a 4 x 4 block that is all one class keeps that class
    blocks = full.reshape(256, 4, 256, 4)
    uniform = (blocks == blocks[:, :1, :, :1]).all(axis=(1, 3))
    np.testing.assert_array_equal(small[uniform], blocks[:, 0, :, 0][uniform])
    with rasterio.open(classes.outputs[1]) as ds:
        assert ds.overviews(1) == [2, 4]
        mean = ds.read(out_shape=(7, 512, 512))  # AVERAGE of 2 x 2 blocks
        expected = ds.read().reshape(7, 512, 2, 512, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(mean, expected, atol=1e-5)
    with rasterio.open(masked.outputs[1]) as ds:
        np.testing.assert_array_equal(ds.dataset_mask() > 0, valid_mask(HRO_ALPHA))


def test_no_cog_writes_plain_tiled_geotiffs(tmp_path, small_model):
    from rio_cogeo.cogeo import cog_validate

    result = predict_raster(COGEO, tmp_path / "c.tif", model=small_model, tile=256, overlap=64, cog=False)
    with rasterio.open(result.outputs[0]) as ds:
        assert ds.overviews(1) == [] and ds.block_shapes[0] == (512, 512)
    assert not cog_validate(result.outputs[0], strict=True)[0]


def test_gdalinfo_lists_the_class_names_and_the_attribute_table(cog_outputs):
    classes, _ = cog_outputs
    info = gdalinfo(classes.outputs[0])
    listed = info.split("Categories:\n")[1].split("\n  Metadata:")[0].strip().splitlines()
    assert [line.strip() for line in listed] == [f"{c.index}: {c.name}" for c in contract.CLASSES]
    table = ET.fromstring(info[info.index("<GDALRasterAttributeTable"):info.index("</GDALRasterAttributeTable>") + 27])
    assert table.get("tableType") == "thematic"
    assert [f.findtext("Name") for f in table.findall("FieldDefn")] == ["value", "class", "red", "green", "blue",
                                                                        "alpha"]
    rows = [[f.text for f in row.findall("F")] for row in table.findall("Row")]
    assert rows == [[str(c.index), c.name, *map(str, c.color), "255"] for c in contract.CLASSES]


def test_the_qgis_style_beside_the_class_raster(cog_outputs):
    classes, _ = cog_outputs
    style = classes.outputs[0].replace(".tif", ".qml")
    root = ET.parse(style).getroot()
    assert root.tag == "qgis"
    renderer = root.find("pipe/rasterrenderer")
    assert renderer.get("type") == "paletted" and renderer.get("band") == "1" and renderer.get("nodataColor") == ""
    entries = [(e.get("value"), e.get("color"), e.get("alpha"), e.get("label"))
               for e in renderer.findall("colorPalette/paletteEntry")]
    assert entries == [(str(c.index), "#%02x%02x%02x" % c.color, "255", c.name) for c in contract.CLASSES]
    assert "255" not in [e[0] for e in entries], "nodata has no colour: QGIS leaves it transparent"


def test_feature_bands_are_named_and_features_can_be_a_cog(tmp_path, small_model):
    from rio_cogeo.cogeo import cog_validate

    result = extract_features(COGEO, tmp_path / "f.tif", model=small_model, tile=256, overlap=64, cog=True)
    with rasterio.open(result.outputs[0]) as ds:
        assert ds.descriptions[:3] == ("f000", "f001", "f002") and ds.descriptions[-1] == "f719"
        assert ds.overviews(1) == [], "256 px of features: no overview needed"
        assert half_precision(ds)
    assert cog_validate(result.outputs[0], strict=True)[0]


def test_the_command_line_writes_cogs_by_default_and_lists_only_rasters(tmp_path, small_dir):
    result = cli("predict", str(COGEO), "-o", str(tmp_path / "c.tif"), "--model", str(small_dir), "-q",
                 "--tile", "256", "--overlap", "64")
    assert result.returncode == 0 and result.stdout.split() == [str(tmp_path / "c.tif")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.qml", "c.tif", "c.tif.aux.xml"]
    with rasterio.open(tmp_path / "c.tif") as ds:
        assert ds.overviews(1) == [2, 4]
