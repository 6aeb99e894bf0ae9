"""--engine ray: a real orthophoto in strips on Ray workers gives a local run's outputs,
byte for byte, through a worker crash and a killed driver.

One local Ray cluster (CPU workers) serves the session; the command-line tests attach
to it with --ray-address, except the one that starts a private cluster of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from helpers import HRO_NODATA, run_cli

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'isprs-seg[ray]')")

GRID = ["--tile", "256", "--overlap", "64"]
STRIPS = 512  # 1,700 rows: four strips, the last one short


@pytest.fixture(scope="session")
def ray_address():
    ray.init(address="local", num_cpus=4, num_gpus=0, object_store_memory=100 * 2**20, include_dashboard=False,
             logging_level="ERROR")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def odd_ortho(tmp_path_factory) -> Path:
    """A real 15 cm orthophoto mirrored out to 2,900 x 1,700 px, with its nodata value
    and a hole of nodata wider than a patch (patches there are never sent)."""
    path = tmp_path_factory.mktemp("odd") / "odd.tif"
    with rasterio.open(HRO_NODATA) as src:
        data, profile = src.read(), src.profile
    h, w = 1700, 2900
    column = np.concatenate([data if i % 2 == 0 else data[:, ::-1] for i in range(-(-h // data.shape[1]))], axis=1)
    image = np.concatenate([column if j % 2 == 0 else column[:, :, ::-1] for j in range(-(-w // data.shape[2]))],
                           axis=2)[:, :h, :w].copy()
    image[:, 500:1000, 100:1300] = 0
    profile.update(width=w, height=h, tiled=True, blockxsize=256, blockysize=256, compress="deflate", nodata=0)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image)
    return path


PREDICT = ["--probabilities", "--confidence", "margin"]


@pytest.fixture(scope="session")
def local_outputs(tmp_path_factory, odd_ortho, small_dir) -> Path:
    """predict and features of the odd orthophoto by the local engine."""
    out = tmp_path_factory.mktemp("local")
    for command, extra in (("predict", PREDICT), ("features", [])):
        ran = run_cli(command, str(odd_ortho), "--out-dir", str(out), "--model", str(small_dir), *GRID, *extra,
                      "--json")
        assert ran.returncode == 0, ran.stderr
        (out / f"{command}.json").write_text(ran.stdout)
    return out


def _same_files(a: Path, b: Path, names) -> None:
    """Byte for byte; feature rasters bit for bit in every pixel, with the same profile and
    tags: a block row of features (here 141 MB) is larger than GDAL's block cache, so the
    order its tiles land in the file follows the cache's evictions (the assembly reads the
    parts through the same cache), not the data."""
    for name in names:
        if not name.endswith("features.tif"):
            assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs between the engines"
            continue
        with rasterio.open(a / name) as x, rasterio.open(b / name) as y:
            assert (str(x.profile), x.tags(), x.descriptions) == (str(y.profile), y.tags(), y.descriptions)
            for _, window in x.block_windows(1):
                assert np.array_equal(x.read(window=window).view(np.uint32), y.read(window=window).view(np.uint32))


PREDICT_FILES = ["odd.classes.tif", "odd.probabilities.tif", "odd.confidence.tif", "odd.classes.tif.aux.xml",
                 "odd.classes.qml"]


def _record(text: str) -> dict:
    record = json.loads(text.splitlines()[-1])
    record.pop("seconds")
    record["outputs"] = [Path(p).name for p in record["outputs"]]
    return record


@pytest.mark.slow
def test_strips_on_two_workers_give_the_local_outputs_byte_for_byte(ray_address, odd_ortho, small_dir, local_outputs,
                                                                     tmp_path):
    from isprs_seg import InputOptions, extract_features, predict_raster
    from isprs_seg.runs.cluster import ModelLoad, RayEngine

    with RayEngine(ModelLoad(str(small_dir)), workers=2, strip_rows=STRIPS) as engine:
        result = predict_raster(odd_ortho, out_dir=tmp_path, engine=engine, probabilities=True, confidence="margin",
                                tile=256, overlap=64, reading=InputOptions())
        features = extract_features(odd_ortho, out_dir=tmp_path, engine=engine, tile=256, overlap=64)
    _same_files(local_outputs, tmp_path, PREDICT_FILES + ["odd.features.tif"])
    local = _record((local_outputs / "predict.json").read_text())
    assert (result.tiles, result.skipped_tiles, result.class_fractions) == \
        (local["tiles"], local["skipped_tiles"], local["class_fractions"])
    assert local["skipped_tiles"] > 0, "the nodata hole must drop patches"
    assert features.tiles == _record((local_outputs / "features.json").read_text())["tiles"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(PREDICT_FILES + ["odd.features.tif"]), \
        "the parts are removed after a success"


@pytest.mark.slow
def test_a_worker_that_dies_in_the_middle_of_a_strip_changes_nothing(ray_address, odd_ortho, small_dir,
                                                                    local_outputs, tmp_path, monkeypatch):
    from isprs_seg import predict_raster
    from isprs_seg.runs.cluster import ModelLoad, RayEngine
    from isprs_seg.testing.faults import FAULT_EXIT_ONCE

    marker = tmp_path / "crashed"
    monkeypatch.setenv(FAULT_EXIT_ONCE, str(marker))  # the workers inherit it: the first one exits once
    out = tmp_path / "out"
    out.mkdir()
    with RayEngine(ModelLoad(str(small_dir)), workers=2, strip_rows=STRIPS) as engine:
        predict_raster(odd_ortho, out_dir=out, engine=engine, probabilities=True, confidence="margin", tile=256,
                       overlap=64)
    assert marker.exists(), "a worker must have died"
    _same_files(local_outputs, out, PREDICT_FILES)


@pytest.mark.slow
def test_a_killed_driver_resumes_with_the_strips_it_finished(ray_address, odd_ortho, small_dir, local_outputs,
                                                             tmp_path):
    args = ["predict", str(odd_ortho), "--out-dir", str(tmp_path), "--model", str(small_dir), *GRID, *PREDICT,
            "--engine", "ray", "--ray-address", ray_address, "--strip-rows", str(STRIPS)]
    manifest = tmp_path / ".odd.classes.tif.parts" / "manifest.jsonl"
    driver = subprocess.Popen([sys.executable, "-m", "isprs_seg", *args, "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and driver.poll() is None:
        if manifest.exists() and len(manifest.read_text().splitlines()) >= 3:  # the header and two strips
            break
        time.sleep(0.02)
    if driver.poll() is None:
        os.kill(driver.pid, signal.SIGKILL)
    _, stderr = driver.communicate()
    assert driver.returncode == -signal.SIGKILL, stderr
    finished = len(manifest.read_text().splitlines()) - 1
    assert 2 <= finished < 4, "the driver must die with strips left to compute"
    assert not (tmp_path / "odd.classes.tif").exists()

    other = run_cli(*[a if a != "64" else "96" for a in args])  # another --overlap: other strips
    assert other.returncode == 1
    assert "made by another run (different " in other.stderr and "use --overwrite" in other.stderr
    assert "Traceback" not in other.stderr

    again = run_cli(*args, "--workers", "2")
    assert again.returncode == 0, again.stderr
    assert f"{4 - finished} strip(s) computed, {finished} kept" in again.stderr
    _same_files(local_outputs, tmp_path, PREDICT_FILES)
    assert not manifest.parent.exists()


@pytest.mark.slow
def test_the_command_line_on_a_private_cluster_reports_as_a_local_run(odd_ortho, small_dir, local_outputs, tmp_path):
    damaged = tmp_path / "damaged.tif"
    damaged.write_bytes(odd_ortho.read_bytes()[: odd_ortho.stat().st_size // 2])
    ran = run_cli("features", str(odd_ortho), str(damaged), "--out-dir", str(tmp_path / "out"), "--model",
                  str(small_dir), *GRID, "--engine", "ray", "--workers", "2", "--strip-rows", str(STRIPS), "--json")
    assert ran.returncode == 1, ran.stderr  # one input failed, as locally
    records = [json.loads(line) for line in ran.stdout.splitlines()]
    assert [r["status"] for r in records] == ["ok", "error"]
    assert "damaged.tif" in records[1]["error"] and "Traceback" not in ran.stderr
    assert _record(ran.stdout.splitlines()[0]) == _record((local_outputs / "features.json").read_text())
    _same_files(local_outputs, tmp_path / "out", ["odd.features.tif"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["odd.features.tif"]


@pytest.mark.parametrize("args, message", [
    (["--strip-rows", "1000"], "--strip-rows must be a positive multiple of 512, got 1000"),
    (["--workers", "0"], "--workers must be at least 1, got 0"),
    (["--gsd", "0.3"], "--gsd is not available with --engine ray yet; use --engine local"),
])
def test_bad_engine_options_are_one_sentence(args, message, small_dir, tmp_path):
    ran = run_cli("predict", str(HRO_NODATA), "-o", str(tmp_path / "a.tif"), "--model", str(small_dir),
                  "--engine", "ray", *args)
    assert ran.returncode == 2 and message in ran.stderr and "Traceback" not in ran.stderr
    assert list(tmp_path.iterdir()) == []


def test_without_ray_one_sentence_says_how_to_install_it(small_dir, tmp_path):
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "ray.py").write_text("raise ImportError('No module named ray')\n")
    ran = run_cli("predict", str(HRO_NODATA), "-o", str(tmp_path / "a.tif"), "--model", str(small_dir),
                  "--engine", "ray", env={"PYTHONPATH": str(blocker)})
    assert ran.returncode == 2, ran.stderr
    assert "pip install 'isprs-seg[ray]'" in ran.stderr and "Traceback" not in ran.stderr
