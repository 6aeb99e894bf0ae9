"""`isprs-seg predict` end to end on real orthophotos with the bounded-receptive-field stand-in."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import rasterio
from helpers import (
    ALPHA_MOSTLY_EMPTY,
    COGEO,
    HRO_ALPHA,
    HRO_EXTMASK,
    HRO_MASK,
    HRO_NODATA,
    HRO_PLAIN,
    ZANZIBAR,
    cli,
    extended,
    tall_input,
    valid_mask,
    whole_image,
    without_georeference,
    write_crop,
)

from isprs_seg import contract
from isprs_seg.api import predict_raster
from isprs_seg.tiling.grid import make_grid

#: Real orthophotos at least 1000 px a side: shipped (0.6 m) and, in the extended set, 7.7 cm drone imagery.
LARGE = [COGEO, extended(ZANZIBAR)]

def _read_probabilities(path):
    with rasterio.open(path) as src:
        return np.moveaxis(src.read(), 0, -1)


# (height, width): smaller than a tile, not multiples of 32, taller than wide, the full image
CROPS = [(100, 150), (333, 517), (1000, 1000), (745, 261)]


@pytest.mark.parametrize("blend,tolerance", [("crop", 0.0), ("taper", 1e-6)])
@pytest.mark.parametrize("shape", CROPS)
@pytest.mark.parametrize("ortho", LARGE)
def test_tiled_equals_whole_image_inference(tmp_path, small_model, ortho, shape, blend, tolerance):
    """With a bounded receptive field, stitching must reproduce whole-image inference."""
    src = write_crop(ortho, tmp_path / "in.tif", *shape, row=0, col=1000 - shape[1])
    expected = whole_image(small_model, src)
    result = predict_raster(
        src, tmp_path / "out.tif", model=small_model, probabilities=True,
        tile=128, overlap=64, batch_size=3, blend=blend,
    )
    probs = _read_probabilities(result.outputs[1])
    assert probs.shape == expected.shape
    diff = np.abs(probs - expected).max()
    assert diff <= tolerance, f"max abs difference {diff}"
    with rasterio.open(result.outputs[0]) as cls:
        np.testing.assert_array_equal(cls.read(1), expected.argmax(-1))


@pytest.mark.parametrize("ortho", LARGE)
def test_default_geometry_on_a_full_orthophoto(tmp_path, small_model, ortho):
    expected = whole_image(small_model, ortho)
    result = predict_raster(ortho, tmp_path / "z.tif", model=small_model, probabilities=True)
    assert result.tile == contract.DEFAULT_TILE and result.tiles == 4
    diff = np.abs(_read_probabilities(result.outputs[1]) - expected).max()
    assert diff <= 1e-6, diff


def test_outputs_keep_the_grid_and_carry_colours_and_class_names(tmp_path, small_model):
    result = predict_raster(HRO_PLAIN, tmp_path / "c.tif", model=small_model, probabilities=True,
                            probabilities_dtype="uint8")
    with rasterio.open(HRO_PLAIN) as src, rasterio.open(result.outputs[0]) as cls, \
            rasterio.open(result.outputs[1]) as prob:
        for out in (cls, prob):
            assert out.crs == src.crs and out.transform == src.transform
            assert (out.width, out.height) == (src.width, src.height)
            assert out.profile["tiled"] and out.block_shapes[0] == (512, 512)
            assert out.compression is not None
        assert cls.dtypes[0] == "uint8" and cls.nodata == 255
        colormap = cls.colormap(1)
        for c in contract.CLASSES:
            assert colormap[c.index][:3] == c.color
        assert colormap[255][3] == 0
        tags = cls.tags(1)
        assert [tags[f"CLASS_{i}"] for i in range(7)] == list(contract.CLASS_NAMES)
        assert prob.count == 7 and prob.dtypes[0] == "uint8"
        assert list(prob.descriptions) == list(contract.CLASS_NAMES)
        p8 = prob.read().astype(np.float32) / 255
    np.testing.assert_allclose(p8.sum(0), 1.0, atol=7 * 0.5 / 255 + 1e-6)


@pytest.mark.parametrize("path", [HRO_ALPHA, HRO_NODATA, HRO_MASK, HRO_EXTMASK], ids=["alpha", "nodata", "mask", "msk"])
@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_nodata_is_carried_through(tmp_path, small_model, path, dtype):
    valid = valid_mask(path)
    assert 0 < (~valid).sum() < valid.size
    result = predict_raster(path, tmp_path / "n.tif", model=small_model, probabilities=True,
                            probabilities_dtype=dtype, tile=128, overlap=64)
    with rasterio.open(result.outputs[0]) as cls:
        classes = cls.read(1)
        np.testing.assert_array_equal(classes == 255, ~valid)
        np.testing.assert_array_equal(cls.dataset_mask() > 0, valid)
    with rasterio.open(result.outputs[1]) as prob:
        np.testing.assert_array_equal(prob.dataset_mask() > 0, valid)
        values = prob.read()
    if dtype == "float32":
        np.testing.assert_array_equal(np.isnan(values).all(0), ~valid)
        np.testing.assert_allclose(values[:, valid].sum(0), 1.0, atol=1e-5)


def test_invalid_pixels_get_no_weight_but_valid_neighbours_are_exact(tmp_path, small_model):
    """Masked pixels do not leak into the result: valid pixels equal whole-image inference."""
    expected = whole_image(small_model, HRO_ALPHA)
    valid = valid_mask(HRO_ALPHA)
    result = predict_raster(HRO_ALPHA, tmp_path / "a.tif", model=small_model, probabilities=True,
                            tile=128, overlap=64, blend="crop")
    probs = _read_probabilities(result.outputs[1])
    np.testing.assert_array_equal(probs[valid], expected[valid])


class _CountingModel:
    """Wraps a model and records every patch it is asked to run."""

    def __init__(self, model):
        self._model = model
        self.patches = 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def weighted(self, method, raw, *args, **kwargs):  # what the pipeline calls
        self.patches += len(raw)
        return self._model.weighted(method, raw, *args, **kwargs)


def test_patches_without_valid_pixels_are_never_sent_to_the_model(tmp_path, small_model, monkeypatch):
    import isprs_seg.runs.local as pipeline

    counting = _CountingModel(small_model)
    monkeypatch.setattr(pipeline, "Model", _CountingModel)  # accepted as a loaded model
    result = predict_raster(ALPHA_MOSTLY_EMPTY, tmp_path / "e.tif", model=counting, tile=256, overlap=64)
    assert result.skipped_tiles > 0 and result.tiles + result.skipped_tiles == len(make_grid(1223, 1223, 256, 64, 32))
    assert counting.patches == result.tiles
    with rasterio.open(result.outputs[0]) as cls:
        np.testing.assert_array_equal(cls.read(1) == 255, ~valid_mask(ALPHA_MOSTLY_EMPTY))
    assert sum(result.class_fractions.values()) == pytest.approx(1.0)


def test_input_without_georeferencing_warns_and_writes_none(tmp_path, small_model):
    with pytest.warns(UserWarning, match="no georeferencing"):
        result = predict_raster(without_georeference(HRO_PLAIN, tmp_path / "p.png"), tmp_path / "p.tif",
                                model=small_model, tile=256, overlap=64)
    with rasterio.open(result.outputs[0]) as cls:
        assert cls.crs is None and cls.transform.is_identity


@pytest.mark.slow
def test_memory_does_not_grow_with_image_height(tmp_path, small_model):
    """numpy memory (tracemalloc sees every array) on 2048 and 16384 rows of the same width."""
    inputs = {h: tall_input(tmp_path / f"tall{h}.tif", h) for h in (2048, 16384)}
    predict_raster(inputs[2048], tmp_path / "warm.tif", model=small_model, tile=256, overlap=64)
    peaks = {}
    for height, src in inputs.items():
        tracemalloc.start()
        # one patch per batch: the batches in flight between the threads weigh little
        predict_raster(src, tmp_path / f"t{height}.tif", model=small_model, probabilities=True,
                       tile=256, overlap=64, batch_size=1)
        peaks[height] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    # Eight times the height, the same band of rows in memory (about 20 MB here); memory that grew
    # with the height would be eight times larger. The margin covers how many row bands and batches
    # the threads happen to hold at the peak: 1.09 was seen in a loaded full run.
    assert peaks[16384] < 1.25 * peaks[2048], peaks


def test_cli_writes_paths_to_stdout_and_continues_after_a_bad_input(tmp_path, small_dir):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00 truncated")
    out = tmp_path / "out"
    out.mkdir()
    result = cli("predict", str(HRO_PLAIN), str(bad), str(HRO_NODATA), "--out-dir", str(out),
                 "--model", str(small_dir), "--probabilities", "--tile", "128", "--overlap", "64")
    assert result.returncode == 1
    stem, nodata_stem = HRO_PLAIN.stem, HRO_NODATA.stem
    assert result.stdout.splitlines() == [
        str(out / f"{stem}.classes.tif"), str(out / f"{stem}.probabilities.tif"),
        str(out / f"{nodata_stem}.classes.tif"), str(out / f"{nodata_stem}.probabilities.tif"),
    ]
    errors = [l for l in result.stderr.splitlines() if "error" in l]
    assert len(errors) == 1 and str(bad) in errors[0] and "Traceback" not in result.stderr
    legends = [f"{s}.classes{suffix}" for s in (stem, nodata_stem) for suffix in (".tif.aux.xml", ".qml")]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [p.rsplit("/", 1)[1] for p in result.stdout.split()] + legends), "stdout lists the rasters written"


def test_failed_write_leaves_no_file_under_the_final_name(tmp_path, small_model, monkeypatch):
    from isprs_seg.errors import OutputError
    from isprs_seg.io import outputs

    def fail(self):
        raise OutputError("No space left on device")

    monkeypatch.setattr(outputs.BlockRowWriter, "_flush", fail)
    with pytest.raises(OutputError):
        predict_raster(HRO_PLAIN, tmp_path / "x.tif", model=small_model, probabilities=True, tile=128, overlap=64)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args,message",
    [
        (["--tile", "100"], "multiple of 32"),
        (["--overlap", "768"], "--overlap"),
        (["--batch-size", "0"], "--batch-size"),
    ],
)
def test_bad_options_are_usage_errors(tmp_path, small_dir, args, message):
    result = cli("predict", str(HRO_PLAIN), "-o", str(tmp_path / "o.tif"), "--model", str(small_dir), *args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []
