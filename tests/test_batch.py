"""Batch operation: bad inputs, stdin lists, JSON lines, exit codes, skip/overwrite, interrupts.

Most run the command line in-process; the subprocess tests are those about the process
itself: signals, a file size limit, and what native libraries print.
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import time

import pytest
from helpers import COGEO, HRO_COG, HRO_MASK, HRO_NODATA, HRO_PLAIN, cli, run_cli

from isprs_seg.tiling.grid import make_grid

FAST = ["--tile", "128", "--overlap", "64", "-q"]


def _only_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    (root / "empty.tif").write_bytes(b"")
    (root / "notes.tif").write_text("this is not a raster\n")
    data = HRO_PLAIN.read_bytes()  # its directory is at the end: it cannot even be opened
    (root / "truncated.tif").write_bytes(data[: len(data) // 2])
    cog = HRO_COG.read_bytes()  # header first: opens, then fails to read
    (root / "cut.tif").write_bytes(cog[:3000])
    (root / "adir.tif").mkdir()
    return {
        "missing": (str(root / "missing.tif"), "does not exist"),
        "directory": (str(root / "adir.tif"), "is a directory"),
        "empty": (str(root / "empty.tif"), "cannot be read as a raster"),
        "text": (str(root / "notes.tif"), "cannot be read as a raster"),
        "truncated": (str(root / "truncated.tif"), "cannot be read as a raster"),
        "cut": (str(root / "cut.tif"), "the file may be truncated or damaged"),
    }


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "text", "truncated", "cut"])
def test_bad_input_gives_one_sentence_naming_it(tmp_path, small_dir, bad_inputs, kind):
    path, expected = bad_inputs[kind]
    out = tmp_path / "out"
    out.mkdir()
    result = cli("predict", path, "--out-dir", str(out), "--model", str(small_dir), *FAST)
    assert result.returncode == 1
    line = _only_error_line(result.stderr)
    assert line.startswith("isprs-seg: error: ") and path in line and expected in line
    assert list(out.iterdir()) == [], "nothing under a final name, no temporaries"


@pytest.mark.parametrize(
    "target,expected",
    [("nodir/x.tif", "does not exist"), ("existing_dir", "is a directory")],
)
def test_bad_output_path_is_a_usage_error(tmp_path, small_dir, target, expected):
    (tmp_path / "existing_dir").mkdir()
    result = cli("predict", str(HRO_PLAIN), "-o", str(tmp_path / target), "--model", str(small_dir), *FAST)
    assert result.returncode == 2
    assert expected in _only_error_line(result.stderr)


def test_a_bad_file_in_the_middle_of_a_batch(tmp_path, small_dir, bad_inputs):
    out = tmp_path / "out"
    out.mkdir()
    bad = bad_inputs["text"][0]
    result = run_cli("predict", str(HRO_PLAIN), bad, str(HRO_NODATA), "--out-dir", str(out),
                     "--model", str(small_dir), "--json", *FAST)
    assert result.returncode == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["status"] for r in records] == ["ok", "error", "ok"]
    assert records[1]["input"] == bad and "cannot be read" in records[1]["error"] and records[1]["outputs"] == []
    assert all(list(r) == list(records[0]) for r in records), "every record has every key"
    good = records[0]
    assert (good["width"], good["height"], good["tile"], good["overlap"], good["batch_size"]) == (383, 232, 128, 64, 4)
    assert good["tiles"] == len(make_grid(232, 383, 128, 64, 32)) and good["skipped_tiles"] == 0
    assert good["error"] is None and 0 < good["seconds"] < 600
    assert sum(good["class_fractions"].values()) == pytest.approx(1.0)
    failed = records[1]
    assert [failed[k] for k in ("width", "tiles", "class_fractions")] == [None, None, None]
    assert failed["tile"] == 128 and failed["seconds"] >= 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{path.stem}.classes{suffix}" for path in (HRO_PLAIN, HRO_NODATA) for suffix in (".tif", ".tif.aux.xml", ".qml")
    ), "the class rasters with their legends, nothing of the bad input"
    stop = cli("predict", bad, str(HRO_MASK), "--out-dir", str(out), "--model", str(small_dir),
               "--on-error", "stop", *FAST)
    assert stop.returncode == 1 and not (out / f"{HRO_MASK.stem}.classes.tif").exists()


def test_paths_from_stdin_skip_and_overwrite(tmp_path, small_dir):
    out = tmp_path / "out"
    out.mkdir()
    listing = f"# orthophotos\n{HRO_PLAIN}\n\n   {HRO_NODATA}  \n"
    first = cli("predict", "-", "--out-dir", str(out), "--model", str(small_dir), *FAST, stdin=listing)
    assert first.returncode == 0, first.stderr
    written = [out / f"{HRO_PLAIN.stem}.classes.tif", out / f"{HRO_NODATA.stem}.classes.tif"]
    assert first.stdout.splitlines() == [str(p) for p in written]
    mtimes = [p.stat().st_mtime_ns for p in written]

    again = cli("predict", "-", "--out-dir", str(out), "--model", str(small_dir), "--json", *FAST, stdin=listing)
    assert again.returncode == 0
    assert [json.loads(l)["status"] for l in again.stdout.splitlines()] == ["skipped", "skipped"]
    assert [p.stat().st_mtime_ns for p in written] == mtimes

    redo = cli("predict", "-", "--out-dir", str(out), "--model", str(small_dir), "--overwrite", *FAST,
               stdin=listing)
    assert redo.returncode == 0 and all(p.stat().st_mtime_ns != m for p, m in zip(written, mtimes))


def test_same_stem_twice_is_refused_before_any_work(tmp_path, small_dir):
    other = tmp_path / "elsewhere"
    other.mkdir()
    twin = other / HRO_PLAIN.name
    twin.write_bytes(HRO_PLAIN.read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    result = cli("predict", str(HRO_PLAIN), str(twin), "--out-dir", str(out), "--model", str(small_dir))
    assert result.returncode == 2 and "both write" in result.stderr
    assert list(out.iterdir()) == []


def test_a_write_failure_midway_leaves_no_output(tmp_path, small_dir):
    """A file size limit makes GDAL's writes fail part way, as a full disk would."""
    out = tmp_path / "out"
    out.mkdir()
    limit = 2_000_000

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = run_cli("predict", str(COGEO), "--out-dir", str(out), "--model", str(small_dir), "--probabilities",
                     *FAST, preexec_fn=limit_file_size)
    assert result.returncode == 1
    line = _only_error_line(result.stderr)
    assert str(COGEO) in line and "failed part way" in line
    assert list(out.iterdir()) == []


@pytest.mark.slow
def test_interrupted_run_leaves_neither_final_files_nor_temporaries(tmp_path, w48_dir):
    """Ctrl-C (130) and SIGTERM (143) in the middle of a run, in two processes at once."""
    runs = {}
    for signum, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        out = tmp_path / signal.Signals(signum).name
        out.mkdir()
        process = subprocess.Popen(
            [sys.executable, "-m", "isprs_seg", "predict", str(COGEO), "--out-dir", str(out), "--model",
             str(w48_dir), "--probabilities", "--tile", "256", "--overlap", "64", "--batch-size", "1", "-q"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        runs[signum] = (process, out, code)
    deadline = time.time() + 300
    for signum, (process, out, code) in runs.items():
        while not any(".partial" in p.name for p in out.iterdir()):
            assert process.poll() is None and time.time() < deadline, "the run ended before it could be interrupted"
            time.sleep(0.2)
        time.sleep(1.0)
        process.send_signal(signum)
    for signum, (process, out, code) in runs.items():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == code, stderr
        assert "interrupted" in stderr and "Traceback" not in stderr and stdout == ""
        assert list(out.iterdir()) == []
