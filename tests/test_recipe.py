"""The input contract: band mapping, pseudo-RGB, bit-depth scaling, normalisation, alpha."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from helpers import COGEO, HRO_ALPHA, HRO_NODATA, HRO_PLAIN, NAIP, cli, valid_mask, without_georeference
from rasterio.enums import ColorInterp

from isprs_seg.api import InputOptions, extract_features, predict_raster
from isprs_seg.io.recipe import InputRecipe, resolve_recipe

GEOMETRY = dict(tile=128, overlap=64)


def _variant(path, bands: np.ndarray, dtype: str, colorinterp=None, nodata=None):
    with rasterio.open(HRO_PLAIN) as src:
        profile = src.profile | {"count": len(bands), "dtype": dtype, "nodata": nodata}
    profile.pop("photometric", None)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(bands.astype(dtype))
        dst.colorinterp = colorinterp or [ColorInterp.undefined] * len(bands)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_model):
    out = tmp_path_factory.mktemp("ref") / "ref.tif"
    result = predict_raster(HRO_PLAIN, out, model=small_model, probabilities=True, **GEOMETRY)
    with rasterio.open(result.outputs[0]) as c, rasterio.open(result.outputs[1]) as p:
        return c.read(1), p.read()


@pytest.fixture(scope="module")
def rgb():
    with rasterio.open(HRO_PLAIN) as src:
        return src.read().astype(np.float64)


def _run(tmp_path, model, path, **reading):
    result = predict_raster(path, tmp_path / "out.tif", model=model, probabilities=True,
                            reading=InputOptions(**reading), **GEOMETRY)
    with rasterio.open(result.outputs[0]) as c, rasterio.open(result.outputs[1]) as p:
        return c.read(1), p.read()


@pytest.mark.parametrize(
    "name,make,options,exact",
    [
        ("16-bit full range", lambda v: (v * 257, "uint16"), {}, True),
        ("12-bit in 16-bit", lambda v: (np.rint(v * 4095 / 255), "uint16"), {}, False),
        ("float [0, 1]", lambda v: (v / 255, "float32"), {}, True),
        ("no colour interpretation", lambda v: (v, "uint8"), {}, True),
        ("NIR-R-G order", lambda v: (np.stack([v[2], v[0], v[1]]), "uint8"), {"bands": "2,3"}, True),
        ("16-bit, explicit scale", lambda v: (v * 16 + 100, "uint16"), {"scale": "100,4180"}, True),
    ],
)
def test_the_same_picture_gives_the_same_classes(tmp_path, small_model, reference, rgb, name, make, options, exact):
    data, dtype = make(rgb)
    path = _variant(tmp_path / "variant.tif", data, dtype)
    classes, probs = _run(tmp_path, small_model, path, **options)
    ref_classes, ref_probs = reference
    if exact:
        np.testing.assert_allclose(probs, ref_probs, atol=1e-5)
        assert (classes == ref_classes).mean() > 0.9999
    else:  # 12-bit quantisation differs from 8-bit by up to half a 12-bit step
        np.testing.assert_allclose(probs, ref_probs, atol=0.02)
        assert (classes == ref_classes).mean() > 0.99


def test_bands_follow_the_colour_interpretation(tmp_path, small_model, reference, rgb):
    nirrg = np.stack([rgb[2], rgb[0], rgb[1]])
    path = _variant(tmp_path / "irrg.tif", nirrg, "uint8",
                    colorinterp=[ColorInterp.undefined, ColorInterp.red, ColorInterp.green])
    with rasterio.open(path) as src:
        assert resolve_recipe(src).bands == (2, 3)
    classes, _ = _run(tmp_path, small_model, path)
    np.testing.assert_array_equal(classes, reference[0])


def test_bit_depth_is_found_from_whole_image_statistics(tmp_path, rgb):
    for scale, expected in ((257, 65535), (4095 / 255, 4095), (1023 / 255, 1023)):
        path = _variant(tmp_path / f"d{expected}.tif", np.rint(rgb * scale), "uint16")
        with rasterio.open(path) as src:
            recipe = resolve_recipe(src)
        assert (recipe.low, recipe.high) == (0, expected)


def test_recipes_and_normalisation():
    raw = np.array([[[[0, 255]], [[255, 51]], [[10, 20]]]], np.uint8)  # 1 patch, 3 bands, 1 x 2 pixels
    pseudo = InputRecipe(bands=(1, 2)).to_model(raw[:, :2]).numpy()[0]
    np.testing.assert_allclose(pseudo[0, 0], [0, 1, 0.5])
    np.testing.assert_allclose(pseudo[0, 1], [1, 0.2, 0.6], rtol=1e-6)
    rgb = InputRecipe(bands=(1, 2, 3), recipe="rgb").to_model(raw).numpy()[0]
    np.testing.assert_allclose(rgb[0, 0], [0, 1, 10 / 255], rtol=1e-6)
    twelve = InputRecipe(bands=(1, 2), low=100, high=4196).to_model(np.array([[[[100, 5000]], [[2148, 0]]]], np.uint16))
    np.testing.assert_allclose(twelve.numpy()[0, 0], [[0, 0.5, 0.25], [1, 0, 0.5]], rtol=1e-6)
    isprs = InputRecipe(bands=(1, 2), normalize="isprs").to_model(raw[:, :2]).numpy()[0]
    from isprs_seg import contract

    expected = (np.array([0, 1, 0.5]) - contract.ISPRS_MEAN) / contract.ISPRS_STD
    np.testing.assert_allclose(isprs[0, 0], expected, rtol=1e-5)


def test_naip_near_infrared_flagged_as_alpha_is_not_a_mask(tmp_path, small_model):
    """NAIP flags band 4 (near-infrared) as alpha; zeros in it are dark water, not nodata."""
    with rasterio.open(NAIP) as src:
        profile, data, interp = src.profile, src.read(), src.colorinterp
    assert interp[3] == ColorInterp.alpha
    data[3, :40, :60] = 0  # very dark near-infrared
    path = tmp_path / "naip.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.colorinterp = interp
    with rasterio.open(path) as src:
        assert (src.dataset_mask() == 0).sum() >= 40 * 60, "GDAL alone would mask these pixels"
    with pytest.warns(UserWarning, match="flagged as alpha"):
        result = predict_raster(path, tmp_path / "naip.classes.tif", model=small_model, **GEOMETRY)
    with rasterio.open(result.outputs[0]) as out:
        assert (out.read(1) != 255).all()


def test_single_band_is_read_as_grey(tmp_path, small_model, rgb):
    """A 12-bit panchromatic band with nodata, made from the real picture."""
    with rasterio.open(HRO_NODATA) as src:
        missing = src.dataset_mask() == 0
    grey = np.rint(rgb.mean(0) * 16)[None]
    grey[0][missing] = 0
    pan = _variant(tmp_path / "pan.tif", grey, "uint16", nodata=0)
    with pytest.warns(UserWarning, match="single band"):
        result = predict_raster(pan, tmp_path / "pan.classes.tif", model=small_model, **GEOMETRY)
    with rasterio.open(result.outputs[0]) as out:
        np.testing.assert_array_equal(out.read(1) == 255, missing)


@pytest.mark.parametrize(
    "args,code,message",
    [
        (["--bands", "5,1"], 1, "has 3 band(s), no band 5"),
        (["--bands", "1"], 2, "two or three"),
        (["--bands", "a,b"], 2, "1-based band numbers"),
        (["--scale", "0"], 2, "MAX above MIN"),
        (["--recipe", "bgr"], 2, "--recipe must be one of"),
        (["--normalize", "zscore"], 2, "--normalize must be one of"),
    ],
)
def test_bad_input_options(tmp_path, small_dir, args, code, message):
    result = cli("predict", str(HRO_PLAIN), "-o", str(tmp_path / "o.tif"), "--model", str(small_dir), "-q", *args)
    assert result.returncode == code, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "o.tif").exists()


def test_gsd_equal_to_the_native_resolution_changes_nothing(tmp_path, small_model):
    with rasterio.open(COGEO) as src:
        res = src.res[0]
    plain = predict_raster(COGEO, tmp_path / "a.tif", model=small_model, probabilities=True, **GEOMETRY)
    same = predict_raster(COGEO, tmp_path / "b.tif", model=small_model, probabilities=True,
                          reading=InputOptions(gsd=res), **GEOMETRY)
    with rasterio.open(plain.outputs[1]) as a, rasterio.open(same.outputs[1]) as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_gsd_runs_the_model_coarser_and_returns_to_the_native_grid(tmp_path, small_model):
    """Against an independent reference: average-downsample, whole-image inference, linear upsampling."""
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    factor = 2.5
    with rasterio.open(COGEO) as src:
        gsd, native = src.res[0] * factor, src.profile
        side = int(src.width // factor)
        rg = src.read([1, 2], window=Window(0, 0, side * factor, side * factor), out_shape=(2, side, side),
                      resampling=Resampling.average).astype(np.float32) / 255
    coarse = small_model.predict(np.stack([rg[0], rg[1], (rg[0] + rg[1]) / 2], -1)[None])[0]
    centres = (np.arange(native["width"]) + 0.5) / factor - 0.5
    along_x = np.stack([[np.interp(centres, np.arange(side), coarse[r, :, k]) for k in range(7)] for r in range(side)])
    expected = np.stack([[np.interp(centres, np.arange(side), along_x[:, k, c]) for k in range(7)]
                         for c in range(native["width"])], axis=-1)  # [classes, rows, cols]

    result = predict_raster(COGEO, tmp_path / "g.tif", model=small_model, probabilities=True,
                            reading=InputOptions(gsd=gsd), **GEOMETRY)
    with rasterio.open(result.outputs[1]) as out:
        assert (out.width, out.height, out.crs, out.transform) == (
            native["width"], native["height"], native["crs"], native["transform"])
        got = out.read()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_gsd_keeps_nodata_and_feature_grids_native(tmp_path, small_model):
    reading = InputOptions(gsd=0.3)
    result = predict_raster(HRO_ALPHA, tmp_path / "c.tif", model=small_model, reading=reading, **GEOMETRY)
    with rasterio.open(result.outputs[0]) as out:
        np.testing.assert_array_equal(out.read(1) == 255, ~valid_mask(HRO_ALPHA))
    feats = extract_features(HRO_ALPHA, tmp_path / "f.tif", model=small_model, reading=reading, **GEOMETRY)
    with rasterio.open(HRO_ALPHA) as src, rasterio.open(feats.outputs[0]) as out:
        assert (out.height, out.width) == (58, 96)
        assert out.transform == src.transform @ rasterio.Affine.scale(4)


def test_gsd_needs_a_projected_crs(tmp_path, small_dir):
    png = without_georeference(HRO_PLAIN, tmp_path / "p.png")
    result = cli("predict", str(png), "-o", str(tmp_path / "p.tif"), "--model", str(small_dir), "--gsd", "0.1", "-q")
    assert result.returncode == 1 and "--gsd needs a projected CRS" in result.stderr
    assert not (tmp_path / "p.tif").exists()
