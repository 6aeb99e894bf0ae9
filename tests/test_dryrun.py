"""--dry-run: the forecast agrees with what a run then does, and it touches nothing."""

from __future__ import annotations

import json

import pytest
from helpers import ALPHA_MOSTLY_EMPTY, HRO_NODATA, HRO_PLAIN, cli

from isprs_seg import contract
from isprs_seg.api import extract_features, predict_raster
from isprs_seg.io.outputs import output_paths
from isprs_seg.options import InputOptions, RunOptions
from isprs_seg.products import Features as FeatureOptions
from isprs_seg.runs import dryrun


@pytest.mark.parametrize("path, method, blend, tile, overlap", [
    (ALPHA_MOSTLY_EMPTY, "predict", "taper", 128, 32),
    (ALPHA_MOSTLY_EMPTY, "features", "crop", 128, 64),
    (HRO_NODATA, "predict", "crop", 64, 32),
])
def test_the_forecast_counts_the_patches_a_run_sends_and_skips(tmp_path, small_model, path, method, blend, tile,
                                                               overlap):
    options = RunOptions(tile, overlap, 4, blend)
    if method == "predict":
        finals = output_paths(path, "classes", output=tmp_path / "c.tif")
        planned = dryrun.forecast_predict(path, finals, options, InputOptions(), "CPU")
        run = predict_raster(path, tmp_path / "c.tif", model=small_model, tile=tile, overlap=overlap, blend=blend)
    else:
        finals = output_paths(path, "features", output=tmp_path / "f.tif")
        planned = dryrun.forecast_features(path, finals, options, InputOptions(), "CPU", FeatureOptions())
        run = extract_features(path, tmp_path / "f.tif", model=small_model, tile=tile, overlap=overlap, blend=blend)
    assert planned.skipped_exact
    assert (planned.patches, planned.skipped) == (run.tiles + run.skipped_tiles, run.skipped_tiles)
    assert 0 < planned.skipped < planned.patches or path == HRO_NODATA


def test_sampled_validity_gives_about_the_same_count(tmp_path, monkeypatch):
    options = RunOptions(128, 32, 4)
    finals = output_paths(ALPHA_MOSTLY_EMPTY, "classes", output=tmp_path / "c.tif")
    exact = dryrun.forecast_predict(ALPHA_MOSTLY_EMPTY, finals, options, InputOptions(), "CPU")
    monkeypatch.setattr(dryrun, "EXACT_PIXELS", 300 * 300)
    sampled = dryrun.forecast_predict(ALPHA_MOSTLY_EMPTY, finals, options, InputOptions(), "CPU")
    assert not sampled.skipped_exact
    assert abs(sampled.skipped - exact.skipped) <= 0.05 * exact.patches


def test_dry_run_reports_every_input_and_creates_nothing(tmp_path):
    out = tmp_path / "not" / "yet"
    missing = tmp_path / "missing.tif"
    ran = cli("predict", str(HRO_PLAIN), str(missing), str(ALPHA_MOSTLY_EMPTY), "--out-dir", str(out),
              "--probabilities", "--probabilities-dtype", "uint8", "--tta", "flips", "--dry-run", "--json",
              "--device", "cpu")
    assert ran.returncode == 1
    assert not out.exists() and not (tmp_path / "not").exists()
    records = [json.loads(line) for line in ran.stdout.splitlines()]
    assert [r["input"] for r in records] == [str(HRO_PLAIN), str(missing), str(ALPHA_MOSTLY_EMPTY)]
    assert records[1]["status"] == "error" and str(missing) in ran.stderr and "Traceback" not in ran.stderr
    plain = records[0]
    assert plain["status"] == "ok" and (plain["width"], plain["height"]) == (383, 232)
    roles = {o["role"]: o for o in plain["outputs"]}
    assert roles["classes"]["path"] == str(out / f"{HRO_PLAIN.stem}.classes.tif")
    pixels = 383 * 232
    assert roles["probabilities"]["bytes"] == round(pixels * (len(contract.CLASSES) + 1) * 4 / 3)
    assert plain["device"] == "CPU" and plain["device_memory"] is None
    single = records[2]["seconds"]
    alone = cli("predict", str(ALPHA_MOSTLY_EMPTY), "-o", str(tmp_path / "a.tif"), "--dry-run", "--json")
    assert json.loads(alone.stdout)["seconds"] == pytest.approx(single / 4)  # four flips, four passes
    assert not (tmp_path / "a.tif").exists()


def test_dry_run_refuses_what_the_run_would_refuse(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    ran = cli("features", str(HRO_PLAIN), "--out-dir", str(blocker / "sub"), "--dry-run")
    assert ran.returncode == 2 and "cannot create the output directory" in ran.stderr
    ran = cli("features", str(HRO_PLAIN), "-o", str(tmp_path / "f.tif"), "--pool", "10", "--dry-run")
    assert ran.returncode == 0, ran.stderr
    assert "pooled" in ran.stdout and "features" in ran.stdout
