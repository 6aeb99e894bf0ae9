"""How good is the map: evaluate, test-time augmentation and the confidence raster."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from helpers import COGEO, HRO_ALPHA, ISPRS, cli, needs_data, whole_image, write_crop

from isprs_seg import contract
from isprs_seg.analysis.evaluate import evaluate, near_other_class
from isprs_seg.api import predict_raster

ISPRS_PAIRS = [ISPRS / "vaihingen" / "ann_dir" / "area1_0_0_512_512.png",
               ISPRS / "potsdam" / "ann_dir" / "2_10_0_0_512_512.png"]


def _write(path, data, like=None, **profile):
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    base = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0],
            "dtype": data.dtype.name, "crs": "EPSG:32633", "transform": Affine(0.1, 0, 500000, 0, -0.1, 5800000)}
    with rasterio.open(path, "w", **(base | profile)) as dst:
        dst.write(data)
        if data.shape[0] == 1:
            dst.update_tags(CLASS_NAMES=",".join(contract.CLASS_NAMES))
    return path


@pytest.fixture(scope="module")
def labels(tmp_path_factory, small_model):
    """Label-like rasters: the classes of a real orthophoto (all seven classes made to occur)."""
    out = tmp_path_factory.mktemp("labels")
    result = predict_raster(COGEO, out / "p.tif", model=small_model, tile=256, overlap=64, cog=False)
    with rasterio.open(result.outputs[0]) as src:
        classes = src.read(1)
    classes[100:140, 100:300] = 2
    classes[300:310, 500:900] = 5
    classes[600:700, 0:50] = 4
    return _write(out / "labels.tif", classes.astype(np.uint8)), classes


def _matrix(label, predicted, keep):
    return np.bincount(label[keep].astype(int) * 7 + predicted[keep], minlength=49).reshape(7, 7)


@needs_data
@pytest.mark.parametrize("path", ISPRS_PAIRS, ids=["vaihingen", "potsdam"])
def test_isprs_labels_against_themselves_score_one_everywhere(path):
    result = evaluate(path, path)
    for scores in (result.all, result.eroded):
        metrics = scores.metrics()
        assert metrics["overall_accuracy"] == metrics["mean_f1"] == metrics["mean_iou"] == 1.0
        for values in metrics["classes"].values():
            assert values["support"] == 0 or values["f1"] == values["iou"] == values["precision"] == 1.0
    with rasterio.open(path) as src:
        data = src.read(1)
    assert result.all.metrics()["pixels"] == int((data > 0).sum()), "label 0 (boundary, background) is not scored"


def test_known_changes_give_the_confusion_counts(tmp_path, labels):
    path, classes = labels
    predicted = classes.copy()
    predicted[100:140, 100:150] = 3  # 2000 building pixels called low vegetation
    predicted[0:10, 0:20] = 0  # 200 pixels called background
    predicted[500:505, :] = 255  # 5 rows left without a prediction
    pred = _write(tmp_path / "pred.tif", predicted, nodata=255)
    result = evaluate(pred, path, erode=0)
    scored = (classes != 0) & (predicted != 255)
    expected = _matrix(classes, np.where(predicted == 255, 0, predicted), scored)
    np.testing.assert_array_equal(result.all.matrix, expected)
    assert result.all.matrix[2, 3] >= 2000 and result.unpredicted == int(((classes != 0) & (predicted == 255)).sum())
    m = expected.astype(float)
    building = result.all.metrics()["classes"]["building"]
    assert building["recall"] == pytest.approx(m[2, 2] / m[2].sum())
    assert building["precision"] == pytest.approx(m[2, 2] / m[1:, 2].sum())
    assert building["iou"] == pytest.approx(m[2, 2] / (m[2].sum() + m[1:, 2].sum() - m[2, 2]))
    overall = result.all.metrics()
    assert overall["overall_accuracy"] == pytest.approx(np.trace(m[1:, 1:]) / m[1:].sum())


def test_colour_coded_labels_give_the_same_scores(tmp_path, labels):
    path, classes = labels
    colours = np.array([c.color for c in contract.CLASSES], np.uint8)
    rgb = _write(tmp_path / "rgb.tif", np.moveaxis(colours[classes], -1, 0))
    pred = _write(tmp_path / "pred.tif", np.roll(classes, 3, axis=1))
    by_index, by_colour = evaluate(pred, path), evaluate(pred, rgb)
    np.testing.assert_array_equal(by_index.all.matrix, by_colour.all.matrix)
    np.testing.assert_array_equal(by_index.eroded.matrix, by_colour.eroded.matrix)
    assert evaluate(pred, rgb, labels_format="rgb").all.matrix.sum() == by_colour.all.matrix.sum()


@pytest.mark.parametrize("radius", [1, 3, 5])
def test_the_eroded_boundary_band_matches_a_distance_transform(tmp_path, labels, radius):
    from scipy.ndimage import distance_transform_edt

    path, classes = labels
    pred = _write(tmp_path / "pred.tif", np.roll(classes, 2, axis=0))
    result = evaluate(pred, path, erode=radius, band_rows=97)  # bands whose borders the band crosses
    near = np.zeros(classes.shape, bool)
    for value in np.unique(classes):
        distance = distance_transform_edt(classes == value)  # to the nearest pixel of another class
        near |= (classes == value) & (distance <= radius)
    assert near.any() and not near.all()
    with rasterio.open(pred) as src:
        predicted = src.read(1)
    np.testing.assert_array_equal(result.eroded.matrix, _matrix(classes, predicted, (classes != 0) & ~near))
    np.testing.assert_array_equal(near_other_class(classes.astype(np.int64), radius), near)


def test_streaming_equals_the_whole_raster_on_a_tall_one(tmp_path, labels):
    path, classes = labels
    tall = np.concatenate([classes] * 4)
    labels_path = _write(tmp_path / "tall_labels.tif", tall, tiled=True, blockxsize=256, blockysize=256)
    pred = _write(tmp_path / "tall_pred.tif", np.roll(tall, 5, axis=1))
    banded = evaluate(pred, labels_path, band_rows=113)
    whole = evaluate(pred, labels_path, band_rows=tall.shape[0])
    np.testing.assert_array_equal(banded.all.matrix, whole.all.matrix)
    np.testing.assert_array_equal(banded.eroded.matrix, whole.eroded.matrix)


def test_labels_on_another_grid_are_resampled_with_a_note(tmp_path, labels, caplog):
    path, classes = labels
    coarse = classes[::2, ::2]
    with rasterio.open(path) as src:
        transform = src.transform @ Affine.scale(2)
    moved = _write(tmp_path / "coarse.tif", coarse, transform=transform)
    result = evaluate(path, moved, erode=0)
    assert any("does not lie on the grid" in note and "nearest neighbour" in note for note in result.notes)
    assert result.all.matrix.sum() == int((np.kron(coarse, np.ones((2, 2), np.uint8)) != 0).sum())


def test_the_command_line_gives_a_table_json_pooled_scores_and_a_figure(tmp_path, labels):
    path, classes = labels
    pred = _write(tmp_path / "pred.tif", np.roll(classes, 3, axis=1))
    table = cli("evaluate", str(pred), str(path))
    assert table.returncode == 0, table.stderr
    assert "eroded boundaries (3 px)" in table.stdout and "overall accuracy" in table.stdout
    figure = tmp_path / "confusion.png"
    result = cli("evaluate", f"{pred}={path}", f"{path}={path}", "--json", "--figure", str(figure))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["status"] for r in records] == ["ok", "ok", "pooled"]
    pooled = np.array(records[2]["confusion_matrix"])
    np.testing.assert_array_equal(pooled, np.array(records[0]["confusion_matrix"]) + records[1]["confusion_matrix"])
    assert records[1]["all"]["mean_f1"] == 1.0 and records[0]["ignored"] == ["background"]
    with rasterio.open(figure) as png:
        assert png.width > 200 and png.count >= 3
    bad = cli("evaluate", str(pred), str(tmp_path / "missing.tif"))
    assert bad.returncode == 1 and "does not exist" in bad.stderr


def test_tta_flips_equals_the_average_over_flipped_images(tmp_path, small_model):
    """Away from the image border (the small stand-in zero-pads there), whatever the flips."""
    src = write_crop(COGEO, tmp_path / "in.tif", 384, 512, row=100, col=200)  # sides multiple of 32
    with rasterio.open(src) as ds:
        raw = ds.read([1, 2])[None]
    from isprs_seg.io.recipe import resolve_recipe

    with rasterio.open(src) as ds:
        recipe = resolve_recipe(ds)
    views = [(slice(None), slice(None)), (slice(None), slice(None, None, -1)),
             (slice(None, None, -1), slice(None)), (slice(None, None, -1), slice(None, None, -1))]
    expected = np.mean([small_model.predict(np.ascontiguousarray(raw[:, :, ys, xs]), 1, recipe)[0][ys, xs]
                        for ys, xs in views], axis=0)
    result = predict_raster(src, tmp_path / "t.tif", model=small_model, probabilities=True, tile=128, overlap=64,
                            blend="crop", tta="flips")
    with rasterio.open(result.outputs[1]) as out:
        got = np.moveaxis(out.read(), 0, -1)
    plain = whole_image(small_model, src)
    assert np.abs(plain - expected).max() > 1e-3, "the flips change the probabilities"
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("kind", ["max", "margin"])
def test_the_confidence_raster_is_the_highest_probability(tmp_path, small_model, kind):
    result = predict_raster(HRO_ALPHA, tmp_path / "c.tif", model=small_model, probabilities=True, probabilities_dtype="uint8", confidence=kind,
                            tile=128, overlap=64)
    confidence, probabilities = result.outputs[2], result.outputs[1]
    with rasterio.open(probabilities) as p, rasterio.open(confidence) as c:
        values = p.read().astype(int)
        got = c.read(1).astype(int)
        valid = c.dataset_mask() > 0
        np.testing.assert_array_equal(valid, p.dataset_mask() > 0)
        assert c.dtypes[0] == "uint8" and c.crs == p.crs and c.transform == p.transform
        assert c.overviews(1) == [2], "a Cloud Optimized GeoTIFF, like the class raster"
    ranked = np.sort(values, axis=0)
    expected = ranked[-1] if kind == "max" else ranked[-1] - ranked[-2]
    # uint8 probabilities are rounded one by one: the margin may differ from the rounded margin by one
    assert np.abs(got[valid] - expected[valid]).max() <= (0 if kind == "max" else 1)
    assert (got[~valid] == 0).all() and valid.sum() < valid.size
