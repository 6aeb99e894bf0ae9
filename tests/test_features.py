"""`isprs-seg features`: stride-4 embeddings, pooled table and preview on real orthophotos."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
import rasterio
from affine import Affine
from helpers import (
    COGEO,
    HRO_ALPHA,
    HRO_PLAIN,
    ZANZIBAR,
    cli,
    extended,
    half_precision,
    tall_input,
    valid_mask,
    whole_image,
    without_georeference,
    write_crop,
)

from isprs_seg.api import extract_features


def _read_features(path):
    with rasterio.open(path) as src:
        return np.moveaxis(src.read(), 0, -1)


def _relative_error(got, expected, valid):
    return np.abs(got[valid] - expected[valid]).max() / np.abs(expected[valid]).max()


@pytest.mark.parametrize("dtype,tolerance", [("float16", 0.01), ("float32", 1e-5)])
@pytest.mark.parametrize("shape", [(333, 517), (100, 150), (1000, 1000)])
@pytest.mark.parametrize("ortho", [COGEO, extended(ZANZIBAR)])
def test_features_match_whole_image_inference_on_the_stride_4_grid(tmp_path, small_model, ortho, shape, dtype,
                                                                    tolerance):
    src = write_crop(ortho, tmp_path / "in.tif", *shape, row=1000 - shape[0], col=0)
    expected = whole_image(small_model, src, "features")
    result = extract_features(src, tmp_path / "f.tif", model=small_model, tile=128, overlap=64, dtype=dtype)
    with rasterio.open(src) as inp, rasterio.open(result.outputs[0]) as out:
        assert (out.height, out.width) == (-(-shape[0] // 4), -(-shape[1] // 4)) == expected.shape[:2]
        assert out.count == 720 and out.crs == inp.crs
        assert out.transform == inp.transform @ Affine.scale(4)
        # feature pixel (i, j) covers input pixels [4i, 4i+4) x [4j, 4j+4)
        assert out.xy(3, 5, offset="ul") == inp.xy(12, 20, offset="ul")
        if dtype == "float16":
            assert half_precision(out)
    got = _read_features(result.outputs[0])
    assert np.isfinite(got).all()
    error = _relative_error(got, expected, np.ones(expected.shape[:2], bool))
    assert error <= tolerance, error


def test_invalid_feature_pixels_are_nan_and_valid_ones_exact(tmp_path, small_model):
    expected = whole_image(small_model, HRO_ALPHA, "features")
    valid = valid_mask(HRO_ALPHA)
    h, w = expected.shape[:2]
    padded = np.zeros((h * 4, w * 4), bool)
    padded[: valid.shape[0], : valid.shape[1]] = valid
    cell_valid = padded.reshape(h, 4, w, 4).any(axis=(1, 3))
    assert 0 < (~cell_valid).sum()
    result = extract_features(HRO_ALPHA, tmp_path / "f.tif", model=small_model, tile=128, overlap=64,
                              dtype="float32", blend="crop")
    got = _read_features(result.outputs[0])
    np.testing.assert_array_equal(np.isnan(got).all(-1), ~cell_valid)
    np.testing.assert_array_equal(got[cell_valid], expected[cell_valid])
    with rasterio.open(result.outputs[0]) as out:
        assert np.isnan(out.nodata)


@pytest.mark.slow
def test_feature_memory_does_not_grow_with_image_height(tmp_path, small_model):
    # the shorter one is tall enough for every buffer to reach its steady size
    inputs = {h: tall_input(tmp_path / f"tall{h}.tif", h) for h in (2048, 6144)}
    extract_features(inputs[2048], tmp_path / "warm.tif", model=small_model, tile=256, overlap=64, batch_size=1)
    peaks = {}
    for height, src in inputs.items():
        tracemalloc.start()
        # one patch per batch: the batches in flight between the threads weigh little
        extract_features(src, tmp_path / f"f{height}.tif", model=small_model, tile=256, overlap=64, batch_size=1)
        peaks[height] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[6144] < 1.05 * peaks[2048], peaks


def test_pooled_table_has_one_row_per_cell_with_its_geometry(tmp_path, small_model):
    import pyogrio.raw

    # 0.1498 x 0.15 m pixels: 6 m is 40 px, exactly 10 feature pixels
    result = extract_features(HRO_ALPHA, tmp_path / "f.tif", model=small_model, tile=128, overlap=64,
                              dtype="float32", pool="6m")
    features_path, pooled_path = result.outputs
    assert pooled_path == str(tmp_path / "f.pooled.gpkg")
    meta, _, geometry, fields = pyogrio.raw.read(pooled_path, return_fids=False)
    names = list(meta["fields"])
    with rasterio.open(HRO_ALPHA) as src:
        transform, crs, width, height = src.transform, src.crs, src.width, src.height
    cells_x, cells_y = -(-width // 40), -(-height // 40)
    assert len(geometry) == cells_x * cells_y
    assert pyogrio.read_info(pooled_path)["crs"] == crs.to_string()
    row, col = fields[names.index("cell_row")], fields[names.index("cell_col")]
    assert sorted(zip(row, col)) == [(r, c) for r in range(cells_y) for c in range(cells_x)]
    feats = _read_features(features_path)
    for k in (0, 7, len(geometry) - 1):
        r, c = int(row[k]), int(col[k])
        x0, y0 = transform @ (c * 40, r * 40)
        x1, y1 = transform @ (min((c + 1) * 40, width), min((r + 1) * 40, height))
        ring = np.frombuffer(geometry[k], dtype="<f8", offset=13).reshape(5, 2)  # WKB polygon, one ring
        bounds = (*ring.min(0), *ring.max(0))
        np.testing.assert_allclose(bounds, (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
        cell = feats[r * 10 : (r + 1) * 10, c * 10 : (c + 1) * 10].reshape(-1, 720)
        cell = cell[np.isfinite(cell).all(-1)]
        pooled = np.array([fields[names.index(f"f{i:03d}")][k] for i in range(720)])
        if len(cell):
            np.testing.assert_allclose(pooled, cell.mean(0), rtol=1e-5, atol=1e-6)
        else:  # a cell without a valid pixel
            assert np.isnan(pooled).all()


def test_cli_features_out_dir_preview_and_json(tmp_path, small_dir):
    out = tmp_path / "feat"
    out.mkdir()
    result = cli("features", str(HRO_PLAIN), str(HRO_ALPHA), "--out-dir", str(out), "--model", str(small_dir),
                 "--tile", "128", "--overlap", "64", "--preview", str(out / "{stem}.png"), "--json", "-q")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["status"] for r in records] == ["ok", "ok"]
    for record, path in zip(records, (HRO_PLAIN, HRO_ALPHA)):
        features_path = out / f"{path.stem}.features.tif"
        preview_path = out / f"{path.stem}.png"
        assert record["outputs"] == [str(features_path), str(preview_path)]
        assert record["width"] == 383 and record["tiles"] > 0
        with rasterio.open(features_path) as f, rasterio.open(preview_path) as p:
            assert (p.width, p.height) == (f.width, f.height) == (96, 58)
            assert p.count == 4
            alpha = p.read(4)
        if path == HRO_ALPHA:
            assert (alpha == 0).any() and (alpha == 255).any()


def test_pool_in_metres_needs_a_projected_crs(tmp_path, small_dir):
    png = without_georeference(HRO_PLAIN, tmp_path / "p.png")
    out = tmp_path / "out"
    out.mkdir()
    result = cli("features", str(png), "-o", str(out / "f.tif"), "--model", str(small_dir), "--pool", "10")
    assert result.returncode == 1
    assert "projected CRS" in result.stderr and "256px" in result.stderr and "Traceback" not in result.stderr
    assert list(out.iterdir()) == []


def test_bad_pool_size_is_a_usage_error_before_any_work(tmp_path, small_dir):
    out = tmp_path / "out"
    out.mkdir()
    result = cli("features", str(HRO_PLAIN), str(HRO_ALPHA), "--out-dir", str(out), "--model", str(small_dir),
                 "--pool", "10x")
    assert result.returncode == 2 and result.stderr.count("--pool must be") == 1
    assert list(out.iterdir()) == []
