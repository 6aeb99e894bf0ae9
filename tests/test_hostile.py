"""Hostile conditions: stalled servers, memory limits, misbehaving models, odd inputs."""

from __future__ import annotations

import logging
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import rasterio
from helpers import COGEO, HRO_PLAIN, cli, run_cli, write_crop

from isprs_seg.api import predict_raster


@pytest.fixture
def silent_server():
    """A socket on 127.0.0.1 that accepts every connection and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held = []

    def accept():
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"/vsicurl/http://127.0.0.1:{server.getsockname()[1]}/ortho.tif"
    server.close()
    for conn in held:
        conn.close()


@pytest.mark.slow
def test_ctrl_c_ends_a_run_stuck_on_a_server_that_never_answers(tmp_path, small_dir, silent_server):
    process = subprocess.Popen(
        [sys.executable, "-m", "isprs_seg", "predict", silent_server, "--out-dir", str(tmp_path / "out"),
         "--model", str(small_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    first = process.stderr.readline()  # the model is loaded; next the input is opened
    assert first.startswith("isprs-seg: running the model on "), first
    time.sleep(1.5)  # GDAL waits for the server
    assert process.poll() is None
    process.send_signal(signal.SIGINT)
    started = time.monotonic()
    stdout, stderr = process.communicate(timeout=60)
    stderr = first + stderr
    assert time.monotonic() - started < 6, "stopped within a few seconds"
    assert process.returncode == 130 and "interrupted (SIGINT)" in stderr and "Traceback" not in stderr
    assert stdout == "" and not any((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_a_server_that_never_answers_fails_the_input_after_a_timeout(tmp_path, small_dir, silent_server):
    out = tmp_path / "out"
    started = time.monotonic()
    # the user's environment overrides the default of 30 s without data
    result = run_cli("predict", silent_server, str(HRO_PLAIN), "--out-dir", str(out), "--model", str(small_dir), "-q",
                     env={"GDAL_HTTP_LOW_SPEED_TIME": "2"}, timeout=120)
    assert time.monotonic() - started < 60
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("isprs-seg: error: ")]
    assert len(errors) == 1 and silent_server in errors[0] and "cannot be read as a raster" in errors[0]
    assert "Less than 1 bytes/sec" in errors[0] or "timed out" in errors[0]
    assert result.stdout.splitlines() == [str(out / f"{HRO_PLAIN.stem}.classes.tif")], "the next input is done"


def _model(path, predict):
    """A SavedModel whose ``predict`` is ``predict`` (a function of float32 [B, H, W, 3])."""
    import tensorflow as tf

    module = tf.Module()
    module.predict = tf.function(predict, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    tf.saved_model.save(module, str(path))
    return path


@pytest.fixture(scope="module")
def misbehaving(tmp_path_factory):
    import tensorflow as tf

    root = tmp_path_factory.mktemp("misbehaving")

    def scores(x, classes=7):
        return tf.nn.softmax(tf.tile(x[..., :1], [1, 1, 1, classes]) * tf.range(classes, dtype=tf.float32), -1)

    return {
        # right for the 64 px probe, 64 px at most at any size
        "small output": _model(root / "small-output", lambda x: scores(x[:, :64, :64])),
        # NaN where the picture is bright: not in the probe or the warm-up, but in real patches
        "nan": _model(root / "nan", lambda x: scores(x) + tf.where(x[..., :1] > 0.95, float("nan"), 0.0)),
        "300 classes": _model(root / "300-classes", lambda x: scores(x, 300)),
    }


@pytest.mark.parametrize("kind,said", [
    ("small output", "returned class scores of shape [3, 64, 64, 7] for patches of 128 x 128 px; expected "
                     "[3, 128, 128, 7]"),
    ("nan", "returned NaN or infinite class scores for patches of 128 x 128 px"),
])
def test_a_model_that_misbehaves_at_tile_size_fails_the_input_without_output(tmp_path, misbehaving, kind, said):
    out = tmp_path / "out"
    result = cli("predict", str(HRO_PLAIN), "--out-dir", str(out), "--model", str(misbehaving[kind]),
                 "--tile", "128", "--overlap", "64", "--batch-size", "3", "-q")
    assert result.returncode == 1
    assert result.stderr.strip() == f"isprs-seg: error: {HRO_PLAIN}: model {misbehaving[kind]} {said}"
    assert list(out.iterdir()) == []


def test_a_model_with_more_classes_than_a_class_raster_holds_is_refused(tmp_path, misbehaving):
    result = cli("predict", str(HRO_PLAIN), "-o", str(tmp_path / "c.tif"), "--model", str(misbehaving["300 classes"]))
    assert result.returncode == 2
    assert "has 300 classes, more than the 255 a class raster holds" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_running_out_of_memory_halves_the_batch_and_keeps_the_smaller_size(tmp_path, small_dir, small_model,
                                                                            monkeypatch, caplog):
    import tensorflow as tf

    from isprs_seg.model import Model, load_model

    expected = predict_raster(COGEO, tmp_path / "ref.tif", model=small_model, probabilities=True, tile=256,
                              overlap=64, batch_size=4)
    real_call = Model._call

    def failing(self, *args):
        call = real_call(self, *args)

        def run(x, *weights):  # as a GPU would: more than two patches do not fit
            if x.shape[0] > 2:
                raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
            return call(x, *weights)

        return run

    monkeypatch.setattr(Model, "_call", failing)
    model = load_model(small_dir)
    with caplog.at_level(logging.WARNING, logger="isprs_seg"):
        first = predict_raster(COGEO, tmp_path / "a.tif", model=model, probabilities=True, tile=256, overlap=64,
                               batch_size=4)
        predict_raster(HRO_PLAIN, tmp_path / "b.tif", model=model, tile=128, overlap=64, batch_size=4)
    notes = [r.getMessage() for r in caplog.records]
    assert notes == ["the model ran out of memory on 4 patches per call; going on with 2 (this size is kept for the "
                     "rest of the run)"], "one note, and the second input starts at 2"
    with rasterio.open(first.outputs[1]) as got, rasterio.open(expected.outputs[1]) as want:
        np.testing.assert_allclose(got.read(), want.read(), atol=1e-6)


@pytest.mark.slow
def test_a_run_that_needs_more_memory_than_the_limit_stops_first_and_says_what_fits(tmp_path, w48_dir):
    """Under ulimit -v TensorFlow crashes when it runs out: the run is refused before that."""
    import re

    ortho = write_crop(COGEO, tmp_path / "ortho.tif", 512, 512)
    out = tmp_path / "out"

    def limited():
        resource.setrlimit(resource.RLIMIT_AS, (3_000_000_000, 3_000_000_000))

    refused = run_cli("predict", str(ortho), "--out-dir", str(out), "--model", str(w48_dir), "-q",
                      preexec_fn=limited)
    assert refused.returncode == 1, refused.stderr
    line = refused.stderr.strip()
    assert re.fullmatch(rf"isprs-seg: error: {ortho}: this run needs about [\d.]+ GB of address space but the limit "
                        r"in force \(ulimit -v\) is 2\.8 GB; use (--tile \d+ ?)?(--batch-size \d+)?", line), line
    assert list(out.iterdir()) == []
    advice = line.split("; use ")[1].split()
    fits = run_cli("predict", str(ortho), "--out-dir", str(out), "--model", str(w48_dir), "-q", *advice,
                   preexec_fn=limited)
    assert fits.returncode == 0, fits.stderr
    assert sorted(p.name for p in out.iterdir()) == ["ortho.classes.qml", "ortho.classes.tif", "ortho.classes.tif.aux.xml"]


def test_a_file_with_only_subdatasets_names_them(tmp_path, small_dir):
    path = tmp_path / "two.gpkg"
    with rasterio.open(HRO_PLAIN) as src:
        data, profile = src.read(), src.profile
    for i, table in enumerate(("north", "south")):
        with rasterio.open(path, "w", driver="GPKG", width=profile["width"], height=profile["height"], count=3,
                           dtype="uint8", crs=profile["crs"], transform=profile["transform"], RASTER_TABLE=table,
                           APPEND_SUBDATASET="YES" if i else "NO") as dst:
            dst.write(data)
    result = cli("predict", str(path), "--out-dir", str(tmp_path / "out"), "--model", str(small_dir), "-q")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"isprs-seg: error: {path} has no raster bands of its own but 2 subdatasets: give one of them as the input "
        f"(GPKG:{path}:north, GPKG:{path}:south)")


def test_a_colour_mapped_input_gives_the_outputs_of_its_rgb_expansion_in_every_pixel(tmp_path, small_model):
    """Also where patches reach past the image (383 x 232 px is not on the 32 px lattice) and
    where the colour of index 0, here white, is not the black padding of an RGB image."""
    with rasterio.open(HRO_PLAIN) as src:
        rgb, profile = src.read().astype(int), src.profile
    assert src.width % 32 and src.height % 32
    levels = np.array([0, 51, 102, 153, 204, 255])  # a 6 x 6 x 6 colour cube, its last colour (white) first
    cube = (np.abs(rgb[..., None] - levels).argmin(-1) * np.array([36, 6, 1])[:, None, None]).sum(0)
    index = ((cube + 1) % 216).astype(np.uint8)
    table = {i: (int(levels[(i - 1) % 216 // 36]), int(levels[(i - 1) % 216 // 6 % 6]), int(levels[(i - 1) % 6]), 255)
             for i in range(216)}
    assert table[0][:3] == (255, 255, 255)
    profile.pop("photometric", None)
    indexed = tmp_path / "indexed.tif"
    with rasterio.open(indexed, "w", **(profile | {"count": 1})) as dst:
        dst.write(index, 1)
        dst.write_colormap(1, table)
    expanded = tmp_path / "expanded.tif"
    colours = np.array([table[i][:3] for i in range(216)], np.uint8)
    with rasterio.open(expanded, "w", **profile) as dst:
        dst.write(np.moveaxis(colours[index], -1, 0))
    with pytest.warns(UserWarning, match="colour-mapped"):
        got = predict_raster(indexed, tmp_path / "a.tif", model=small_model, probabilities=True, tile=128, overlap=64)
    want = predict_raster(expanded, tmp_path / "b.tif", model=small_model, probabilities=True, tile=128, overlap=64)
    for a_path, b_path in zip(got.outputs, want.outputs):  # class raster, probabilities
        with rasterio.open(a_path) as a, rasterio.open(b_path) as b:
            np.testing.assert_array_equal(a.read(), b.read())


@pytest.mark.parametrize("args,said", [
    (["--model", "/no/such/model"], "model /no/such/model not found"),
    (["--tile", "100"], "--tile must be a positive multiple of 32"),
])
def test_with_json_an_error_that_ends_the_command_is_one_json_record(tmp_path, small_dir, args, said):
    import json

    result = cli("predict", str(HRO_PLAIN), "-o", str(tmp_path / "c.tif"), "--json", *(["--model", str(small_dir)]
                 if "--model" not in args else []), *args)
    assert result.returncode == 2
    record = json.loads(result.stdout)
    assert record["status"] == "error" and record["input"] is None and said in record["error"]
    assert set(record) >= {"outputs", "width", "tiles", "seconds"}


def test_a_damaged_cached_model_is_fetched_again_by_itself(tmp_path, small_dir, monkeypatch, caplog):
    from isprs_seg.errors import ModelError
    from isprs_seg.model import load_model
    from isprs_seg.testing.standins import make_archive

    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    archive = make_archive(small_dir, tmp_path / "model.tar.gz")
    first = load_model(archive)
    (first.source.path / "saved_model.pb").write_bytes(b"damaged")
    with caplog.at_level(logging.WARNING, logger="isprs_seg"):
        again = load_model(archive)
    assert again.source.path == first.source.path and "fetching it again" in caplog.text
    assert again.digest == first.digest

    # a source that is itself damaged: the message names the cache entry to delete
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "saved_model.pb").write_bytes(b"not a model")
    with pytest.raises(ModelError, match=r"fetching it again did not help: check the source, or delete .*archive-"):
        load_model(make_archive(bad, tmp_path / "bad.tar.gz"))


def test_an_unwritable_cache_is_not_called_a_network_problem(tmp_path, monkeypatch):
    from isprs_seg.errors import ModelError
    from isprs_seg.model import load_model

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(ModelError) as caught:
        load_model("http://127.0.0.1:9/isprs.tar.gz")
    message = str(caught.value)
    assert message.startswith(f"cannot write the model cache {blocker / 'cache'}") and "TFHUB_CACHE_DIR" in message
    assert "without internet" not in message
