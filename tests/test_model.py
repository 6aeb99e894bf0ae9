"""The model layer: sources (directory, archive, URL with cache), calling conventions, errors."""

from __future__ import annotations

import functools
import http.server
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import HRO_PLAIN, cli, run_cli

from isprs_seg import contract
from isprs_seg.errors import ModelError
from isprs_seg.model import hub, load_model
from isprs_seg.model.hub import cache_dir, default_handle
from isprs_seg.testing.standins import make_archive


def _images(n=3, h=96, w=160, seed=0):
    return np.random.default_rng(seed).random((n, h, w, 3), dtype=np.float32)


@pytest.mark.parametrize("variant", ["list", "signatures", "logits"])
def test_every_calling_convention_gives_the_same_probabilities(variant, variant_dirs, small_model):
    model = load_model(variant_dirs[variant], batch_size=2)
    expected = {
        "list": ("list", 1, True, "attribute"),
        "signatures": ("tensor", None, True, "signature"),
        "logits": ("tensor", None, False, "attribute"),
    }[variant]
    assert (model.convention, model.max_batch, model.outputs_probabilities, model.methods["predict"]) == expected
    assert model.num_classes == 7 and model.feature_channels == 720
    images = _images()  # 3 images at batch size 2: the last batch is padded
    probs = model.predict(images)
    np.testing.assert_allclose(probs, small_model.predict(images), atol=2e-6)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert model.features(images).shape == (3, 24, 40, 720)


def test_small_standin_detection(small_model):
    assert small_model.convention == "tensor" and small_model.max_batch is None
    assert small_model.outputs_probabilities
    assert small_model.class_names == contract.CLASS_NAMES
    # sizes that are not multiples of anything: features are ceil(h/4) x ceil(w/4)
    assert small_model.features(_images(1, 33, 47)).shape == (1, 9, 12, 720)
    assert small_model.predict(_images(1, 33, 47)).shape == (1, 33, 47, 7)


@pytest.mark.slow
def test_hrnet_w48_standin_has_the_real_interface_and_size(w48_dir):
    from isprs_seg.testing.hrnet import HRNetV2

    params = HRNetV2(width=48, num_classes=7).count_params()
    assert abs(params - 65.8e6) / 65.8e6 < 0.01, params
    model = load_model(w48_dir, batch_size=2)
    assert model.num_classes == 7 and model.feature_channels == 720 and model.outputs_probabilities
    images = _images(2, 64, 96)
    probs = model.predict(images)
    assert probs.shape == (2, 64, 96, 7)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert model.features(images).shape == (2, 16, 24, 720)


def test_local_archive_is_unpacked_once_into_the_cache(small_dir, tmp_path, monkeypatch, small_model):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    archive = make_archive(small_dir, tmp_path / "model.tar.gz")
    model = load_model(archive)
    assert model.source.kind == "archive"
    assert model.source.path.parent == tmp_path / "cache"
    np.testing.assert_array_equal(model.predict(_images(1)), small_model.predict(_images(1)))
    marker = model.source.path / "marker"
    marker.write_text("unpacked once")
    assert load_model(archive).source.path == model.source.path and marker.exists()


@pytest.fixture
def http_server(tmp_path):
    """A static file server on 127.0.0.1 serving ``tmp_path / 'www'``; yields (base URL, stop)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()

    yield root, f"http://127.0.0.1:{server.server_port}", stop
    if thread.is_alive():
        stop()


def test_url_download_is_cached_and_reused_offline(http_server, small_dir, tmp_path, monkeypatch, small_model):
    root, base, stop = http_server
    make_archive(small_dir, root / "isprs-standin.tar.gz")
    url = f"{base}/isprs-standin.tar.gz"
    cache = tmp_path / "hub-cache"
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(cache))
    model = load_model(url)
    assert model.source.kind == "url" and cache in model.source.path.parents
    stop()  # offline from here on
    again = load_model(url)
    assert again.source.path == model.source.path
    np.testing.assert_array_equal(again.predict(_images(1)), small_model.predict(_images(1)))
    # and the command line finds it too, without a server
    result = cli("model", "info", "--model", url)
    assert result.returncode == 0, result.stderr
    assert "downloaded into the cache" in result.stdout


@pytest.fixture
def scripted_server(small_dir, tmp_path):
    """A server on 127.0.0.1 whose paths misbehave as download servers do: ``/flaky.tar.gz``
    answers 403 twice then serves the small stand-in's archive, ``/missing`` 404, ``/failing``
    500 always, and ``/hub/isprs/1`` serves the archive only when asked for TF Hub's compressed
    format. Yields (base URL, the paths asked for, in order)."""
    archive = make_archive(small_dir, tmp_path / "served.tar.gz").read_bytes()
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            path, _, query = self.path.partition("?")
            asked.append(path)
            if path == "/flaky.tar.gz" and asked.count(path) > 2 or \
                    path == "/hub/isprs/1" and query == "tf-hub-format=compressed":
                self.send_response(200)
                self.send_header("Content-Length", str(len(archive)))
                self.end_headers()
                self.wfile.write(archive)
                return
            self.send_error({"/flaky.tar.gz": 403, "/failing": 500}.get(path, 404))

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", asked
    server.shutdown()
    server.server_close()


def test_downloads_retry_what_may_pass_and_say_what_went_wrong(scripted_server, tmp_path, monkeypatch):
    base, asked = scripted_server
    monkeypatch.setattr(hub, "RETRY_DELAYS", (0.01, 0.02, 0.04))
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))

    fetched = cli("model", "fetch", "--model", f"{base}/flaky.tar.gz", "--to", str(tmp_path / "flaky"))
    assert fetched.returncode == 0, fetched.stderr
    assert asked == ["/flaky.tar.gz"] * 3 and (tmp_path / "flaky" / "saved_model.pb").exists()
    assert fetched.stderr.count("answered HTTP 403; trying again") == 2

    for path, tries, said in [
        ("/missing", 1, f"{base}/missing?tf-hub-format=compressed answered HTTP 404 Not Found: there is no model at "
                        "that address, check the handle"),
        ("/failing", 4, f"{base}/failing?tf-hub-format=compressed answered HTTP 500 Internal Server Error 4 times: "
                        "the server is busy or failing; try again later"),
    ]:
        asked.clear()
        for args in (["model", "fetch", "--to", str(tmp_path / "never")], ["predict", str(HRO_PLAIN), "-o",
                                                                            str(tmp_path / "never.tif")]):
            result = cli(*args, "--model", f"{base}{path}")
            assert result.returncode == 2 and result.stdout == ""
            last = result.stderr.strip().splitlines()[-1]
            assert last == f"isprs-seg: error: could not download the model from {base}{path}: {said}", last
            assert "Traceback" not in result.stderr and "without internet" not in last
        assert asked == [path] * tries * 2
    assert not (tmp_path / "never").exists() and not (tmp_path / "never.tif").exists()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [hub.cache_entry(f"{base}/flaky.tar.gz").name,
                                                                      hub.cache_entry(f"{base}/flaky.tar.gz").name
                                                                      + ".descriptor.txt"]


def test_a_hub_handle_is_cached_as_tensorflow_hub_does_and_falls_back_to_its_mirror(scripted_server, tmp_path,
                                                                                   monkeypatch, small_dir):
    import hashlib

    base, asked = scripted_server
    cache = tmp_path / "cache"
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(cache))
    handle = f"{base}/hub/isprs/1"
    model = load_model(handle)
    entry = cache / hashlib.sha1(handle.encode()).hexdigest()
    assert model.source.path == entry and asked == ["/hub/isprs/1"]
    assert (cache / f"{entry.name}.descriptor.txt").read_text().startswith(f"Module: {handle}\n")

    # a handle that is gone, with a mirror: the mirror fills the handle's own entry
    gone = f"{base}/missing"
    monkeypatch.setitem(contract.MODEL_MIRRORS, gone, (f"{base}/hub/isprs/1?tf-hub-format=compressed",))
    mirrored = load_model(gone)
    assert mirrored.source.path == hub.cache_entry(gone) and mirrored.digest == model.digest
    assert asked[1:] == ["/missing", "/hub/isprs/1"]
    assert f"Downloaded from: {base}/hub/isprs/1?" in (cache / f"{hub.cache_entry(gone).name}.descriptor.txt").read_text()

    assert hub.download_urls(contract.DEFAULT_MODEL) == (
        "https://tfhub.dev/google/HRNet/isprs-hrnetv2-w48/1?tf-hub-format=compressed",
        "https://www.kaggle.com/api/v1/models/google/hrnet/tensorFlow2/isprs-hrnetv2-w48/1/download")


def test_fetch_verify_reports_the_digest_and_warns_when_it_is_not_the_recorded_one(tmp_path, monkeypatch, small_dir):
    archive = make_archive(small_dir, tmp_path / "model.tar.gz")
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(contract, "DEFAULT_MODEL", str(archive))  # the stand-in plays the official model
    digest = hub.saved_model_digest(small_dir)
    for recorded, said in [(None, f"digest {digest}: no digest is recorded"),
                           (digest, f"digest {digest}: the one recorded for the official model"),
                           ("sha256:" + "0" * 64, "warning: the digest of")]:
        monkeypatch.setattr(contract, "DEFAULT_MODEL_DIGEST", recorded)
        dest = tmp_path / f"fetched-{recorded}"
        result = cli("model", "fetch", "--to", str(dest), "--verify")
        assert result.returncode == 0 and result.stdout.strip() == str(dest), result.stderr
        assert said in result.stderr and ("warning" in result.stderr) == (recorded not in (None, digest))
    assert "differs from the one recorded for the official model, sha256:000" in result.stderr


def test_default_cache_is_per_user_not_tmp(monkeypatch, tmp_path):
    monkeypatch.delenv("TFHUB_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "isprs-seg" / "tfhub"
    monkeypatch.setenv("TFHUB_CACHE_DIR", "/somewhere/shared")
    assert cache_dir() == Path("/somewhere/shared")


def test_environment_variable_overrides_the_default_model(monkeypatch):
    monkeypatch.delenv(contract.MODEL_ENV_VAR, raising=False)
    assert default_handle() == contract.DEFAULT_MODEL
    monkeypatch.setenv(contract.MODEL_ENV_VAR, "/models/isprs")
    assert default_handle() == "/models/isprs"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_model_gives_one_clear_line(tmp_path, monkeypatch):
    """In a subprocess too: nothing of TensorFlow's own start-up logging reaches stderr."""
    url = f"http://127.0.0.1:{_closed_port()}/isprs.tar.gz"
    out = tmp_path / "out.tif"
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    for run, args in ((cli, ["model", "info", "--model", url]),
                      (run_cli, ["predict", str(tmp_path / "x.tif"), "-o", str(out), "--model", url])):
        result = run(*args)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "could not download the model" in lines[0] and "model fetch" in lines[0] and "--model DIR" in lines[0]
        assert "Traceback" not in result.stderr and result.stdout == ""
    assert not out.exists()


def test_broken_models_are_reported(tmp_path, small_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="no saved_model.pb"):
        load_model(empty)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(small_dir, corrupt)
    (corrupt / "saved_model.pb").write_bytes(b"not a protobuf at all")
    with pytest.raises(ModelError, match="could not load the SavedModel"):
        load_model(corrupt)
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "missing")
    not_archive = tmp_path / "model.tar.gz"
    not_archive.write_text("truncated")
    with pytest.raises(ModelError, match="could not unpack"):
        load_model(not_archive)


def test_model_without_the_interface_names_what_was_expected(tmp_path):
    import tensorflow as tf

    module = tf.Module()
    module.v = tf.Variable(1.0)
    module.serve = tf.function(lambda x: x * module.v, input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "other"))
    with pytest.raises(ModelError, match="expected interface.*predict"):
        load_model(tmp_path / "other")


def test_fetch_then_use_offline(tmp_path, small_dir, monkeypatch):
    archive = make_archive(small_dir, tmp_path / "model.tar.gz")
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    dest = tmp_path / "offline" / "isprs-model"
    result = cli("model", "fetch", "--model", str(archive), "--to", str(dest))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(dest) and (dest / "saved_model.pb").exists()
    info = cli("model", "info", "--model", str(dest), "--json")
    assert info.returncode == 0, info.stderr
    import json

    data = json.loads(info.stdout)
    assert data["feature_channels"] == 720 and [c["name"] for c in data["classes"]] == list(contract.CLASS_NAMES)
    assert data["classes"][2]["color"] == "#0000ff"
    again = cli("model", "fetch", "--model", str(archive), "--to", str(dest))
    assert again.returncode == 2 and "already exists" in again.stderr


def test_device_precision_and_xla_options_give_the_same_results_on_the_cpu(small_dir, small_model):
    import tensorflow as tf

    images = _images(2, 64, 96)
    expected = small_model.predict(images)
    on_cpu = load_model(small_dir, device="cpu")
    assert on_cpu.device == "/CPU:0"
    np.testing.assert_array_equal(on_cpu.predict(images), expected)
    compiled = load_model(small_dir, xla=True)
    np.testing.assert_allclose(compiled.predict(images), expected, atol=1e-5)
    np.testing.assert_allclose(compiled.features(images), small_model.features(images), atol=1e-4)
    try:
        mixed = load_model(small_dir, precision="mixed")
        np.testing.assert_allclose(mixed.predict(images), expected, atol=1e-5)
    finally:
        tf.config.optimizer.set_experimental_options({"auto_mixed_precision": False})
    with pytest.raises(ModelError, match="not available here"):
        load_model(small_dir, device="gpu:3")
    with pytest.raises(ModelError, match="precision"):
        load_model(small_dir, precision="half")
