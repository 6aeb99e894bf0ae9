"""Reruns never lie: skip only what is complete and made the same way; refuse what would destroy."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import rasterio
from helpers import HRO_NODATA, HRO_PLAIN, cli

from isprs_seg.io.atomic import verify_complete
from isprs_seg.io.provenance import SETTINGS_TAG

FAST = ["--tile", "128", "--overlap", "64", "-q"]


@pytest.fixture
def made(tmp_path, small_dir):
    """A first run: its output directory, its class raster and a function that runs predict again."""
    out = tmp_path / "out"

    def run(*extra, inputs=(HRO_PLAIN,)):
        return cli("predict", *map(str, inputs), "--out-dir", str(out), "--model", str(small_dir), *FAST, *extra)

    first = run()
    assert first.returncode == 0, first.stderr
    return out, out / f"{HRO_PLAIN.stem}.classes.tif", run


def test_same_settings_are_skipped_and_said_even_when_quiet(made):
    out, classes, run = made
    before = classes.read_bytes(), classes.stat().st_mtime_ns
    again = run("--json")
    assert again.returncode == 0
    record = json.loads(again.stdout)
    assert record["status"] == "skipped" and record["outputs"] == [str(classes)]
    assert again.stderr.count("skipped") == 1 and str(HRO_PLAIN) in again.stderr
    assert (classes.read_bytes(), classes.stat().st_mtime_ns) == before
    with rasterio.open(classes) as ds:
        settings = json.loads(ds.tags()[SETTINGS_TAG])["classes"]
    assert settings["model"].startswith("sha256:") and settings["normalize"] == "unit" and settings["tile"] == 128
    assert settings["software"].startswith("isprs-seg ")


@pytest.mark.parametrize("extra,said", [
    (["--normalize", "isprs"], "was made with --normalize unit"),
    (["--gsd", "0.3"], "was made without --gsd"),
    (["--tile", "256"], "was made with --tile 128"),
])
def test_other_settings_are_an_error_and_the_output_stays(made, extra, said):
    out, classes, run = made
    before = classes.read_bytes()
    again = run(*extra)
    assert again.returncode == 1
    line = again.stderr.strip()
    assert line == f"isprs-seg: error: {classes} {said}; use --overwrite to replace it", again.stderr
    assert classes.read_bytes() == before
    replaced = run(*extra, "--overwrite")
    assert replaced.returncode == 0 and classes.read_bytes() != before


def test_an_extra_output_made_with_other_settings_is_named(made):
    out, classes, run = made
    assert run("--probabilities").returncode == 0, "the missing probabilities are made, the class raster again"
    again = run("--probabilities", "--probabilities-dtype", "uint8")
    assert again.returncode == 1
    assert f"{out / (HRO_PLAIN.stem + '.probabilities.tif')} was made with --probabilities-dtype float32" in again.stderr


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_an_incomplete_output_is_made_again_with_a_note(made, damage):
    out, classes, run = made
    with rasterio.open(classes) as ds:
        expected = ds.read(1)
    data = classes.read_bytes()
    classes.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    again = run()
    assert again.returncode == 0, again.stderr
    assert f"{classes} is incomplete" in again.stderr and "made again" in again.stderr
    verify_complete(classes, classes)
    with rasterio.open(classes) as ds:
        np.testing.assert_array_equal(ds.read(1), expected)


def test_a_file_not_made_by_this_tool_is_not_replaced_silently(made):
    out, classes, run = made
    shutil.copy(HRO_PLAIN, classes)
    again = run()
    assert again.returncode == 1 and "has no record of isprs-seg classes settings" in again.stderr
    assert classes.read_bytes() == HRO_PLAIN.read_bytes()


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_an_output_equal_to_an_input_is_refused_before_any_work(tmp_path, small_dir, overwrite):
    source = tmp_path / "ortho.tif"
    shutil.copy(HRO_PLAIN, source)
    refused = cli("predict", str(source), "-o", str(source), "--model", str(small_dir), *FAST, *overwrite)
    assert refused.returncode == 2
    assert "would overwrite the input" in refused.stderr and refused.stdout == ""
    assert source.read_bytes() == HRO_PLAIN.read_bytes() and list(tmp_path.iterdir()) == [source]

    # with --out-dir: the output of the first input is the second input
    second = tmp_path / "ortho.classes.tif"
    shutil.copy(HRO_NODATA, second)
    refused = cli("predict", str(source), str(second), "--out-dir", str(tmp_path), "--model", str(small_dir), *FAST,
                  *overwrite)
    assert refused.returncode == 2 and f"would overwrite the input {second}" in refused.stderr
    assert second.read_bytes() == HRO_NODATA.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ortho.classes.tif", "ortho.tif"]


def test_features_pool_size_is_part_of_the_settings(tmp_path, small_dir):
    out = tmp_path / "feat"
    args = ["features", str(HRO_PLAIN), "--out-dir", str(out), "--model", str(small_dir), *FAST]
    assert cli(*args, "--pool", "6").returncode == 0
    assert cli(*args, "--pool", "6m").returncode == 0, "the same size spelt otherwise is the same setting"
    again = cli(*args, "--pool", "12")
    assert again.returncode == 1 and "was made with --pool 6m" in again.stderr
    assert str(out / f"{HRO_PLAIN.stem}.pooled.gpkg") in again.stderr


def test_out_dir_is_created_with_its_parents(tmp_path, small_dir):
    out = tmp_path / "a" / "b" / "c"
    result = cli("predict", str(HRO_PLAIN), "--out-dir", str(out), "--model", str(small_dir), *FAST)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(out / f"{HRO_PLAIN.stem}.classes.tif")]
