"""Reading row bands, writing whole block rows, and committing outputs atomically."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from affine import Affine
from helpers import HRO_PLAIN, cli

from isprs_seg.errors import OutputError
from isprs_seg.io import atomic
from isprs_seg.io.atomic import atomic_outputs
from isprs_seg.io.outputs import BlockRowWriter, output_paths
from isprs_seg.io.raster import RowReader


def _raster(path, data: np.ndarray, **profile):
    bands, height, width = data.shape
    profile = {"driver": "GTiff", "height": height, "width": width, "count": bands, "dtype": data.dtype.name,
               "crs": "EPSG:32633", "transform": Affine(0.1, 0, 500000, 0, -0.1, 5800000)} | profile
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


class _CountingDataset:
    """A dataset that counts how often each row is decoded."""

    def __init__(self, ds):
        self.ds, self.reads = ds, np.zeros(ds.height, int)

    def __getattr__(self, name):
        return getattr(self.ds, name)

    def read(self, *args, window=None, **kwargs):
        self.reads[int(window.row_off) : int(window.row_off + window.height)] += 1
        return self.ds.read(*args, window=window, **kwargs)


@pytest.mark.parametrize("layout", [{"tiled": True, "blockxsize": 64, "blockysize": 64}, {"blockysize": 3}])
def test_row_reader_reads_every_row_once_and_pads_with_invalid_zeros(tmp_path, layout):
    rng = np.random.default_rng(0)
    data = rng.integers(1, 255, (3, 301, 150), dtype=np.uint8)
    data[:, 100:120, 10:40] = 0  # nodata in every band
    path = _raster(tmp_path / "in.tif", data, nodata=0, **layout)
    with rasterio.open(path) as ds:
        counting = _CountingDataset(ds)
        reader = RowReader(counting, [1, 2], "dataset", width=192, min_rows=16)
        requests = (0, 0, 32, 90, 91, 200, 288, 320)  # repeats, overlaps, a gap, and past the end
        for row in requests:
            raw, valid = reader.rows(row, 64)
            expected = np.zeros((2, 64, 192), np.uint8)
            have = max(0, min(64, 301 - row))
            expected[:, :have, :150] = data[:2, row : row + have]
            np.testing.assert_array_equal(raw, expected)
            np.testing.assert_array_equal(valid, expected[0] > 0)
        assert counting.reads.max() == 1, "no row decoded twice"
        asked = np.zeros(301, bool)
        for row in requests:
            asked[row : row + 64] = True
        assert (counting.reads[asked] == 1).all()
        with pytest.raises(ValueError, match="dropped"):
            reader.rows(100, 8)


def test_block_row_writer_writes_any_chunking_with_mask_and_fill(tmp_path):
    rng = np.random.default_rng(1)
    values = rng.random((2, 700, 300), dtype=np.float32)
    valid = rng.random((700, 300)) > 0.2
    profile = {"tiled": True, "blockxsize": 128, "blockysize": 128, "compress": "deflate"}
    for name, kwargs in (("float", {"fill": np.nan}), ("masked", {"mask": True, "fill": 0})):
        path = _raster(tmp_path / f"{name}.tif", np.zeros((2, 700, 300), np.float32), **profile)
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "r+") as ds:
            writer = BlockRowWriter(ds, **kwargs)
            assert writer.block_rows == 128
            row = 0
            for n in (1, 127, 200, 5, 300, 67):  # chunks that straddle block rows
                writer.write(row, values[:, row : row + n], valid[row : row + n])
                row += n
            with pytest.raises(ValueError, match="in order"):
                writer.write(0, values[:, :1], valid[:1])
            writer.finish()
        with rasterio.open(path) as ds:
            got = ds.read()
            np.testing.assert_array_equal(got[:, valid], values[:, valid])
            if name == "float":
                assert np.isnan(got[:, ~valid]).all()
            else:
                assert (got[:, ~valid] == 0).all()
                np.testing.assert_array_equal(ds.dataset_mask() > 0, valid)


def test_block_row_writer_refuses_to_finish_with_rows_missing(tmp_path):
    path = _raster(tmp_path / "c.tif", np.zeros((1, 100, 50), np.uint8))
    with rasterio.open(path, "r+") as ds:
        writer = BlockRowWriter(ds, block_rows=32)
        writer.write(0, np.ones((40, 50), np.uint8), np.ones((40, 50), bool))
        with pytest.raises(ValueError, match="40 of 100 rows"):
            writer.finish()


def _finals(tmp_path):
    return output_paths("in.tif", "classes", ["probabilities"], out_dir=tmp_path)


def test_atomic_outputs_appear_only_complete(tmp_path):
    finals = _finals(tmp_path)
    assert list(finals) == ["probabilities", "classes"] and finals["classes"].name == "in.classes.tif"
    with atomic_outputs(finals) as temps:
        for role, tmp in temps.items():
            assert tmp.parent == tmp_path and ".partial" in tmp.name and tmp.suffix == ".tif"
            _raster(tmp, np.full((1, 64, 64), 3, np.uint8), tiled=True, blockxsize=32, blockysize=32)
        assert not any(p.exists() for p in finals.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.classes.tif", "in.probabilities.tif"]


@pytest.mark.parametrize("failure", [RuntimeError, KeyboardInterrupt])
def test_atomic_outputs_leave_nothing_after_a_failure(tmp_path, failure):
    with pytest.raises(failure):
        with atomic_outputs(_finals(tmp_path)) as temps:
            _raster(temps["classes"], np.zeros((1, 8, 8), np.uint8))
            raise failure()
    assert list(tmp_path.iterdir()) == []


def test_atomic_outputs_refuse_a_geotiff_whose_blocks_lie_past_its_end(tmp_path):
    """What a full disk leaves when GDAL only logs the failed write of its last blocks."""
    finals = _finals(tmp_path)
    with pytest.raises(OutputError, match="failed part way"):
        with atomic_outputs(finals) as temps:
            for tmp in temps.values():
                rng = np.random.default_rng(2)
                _raster(tmp, rng.integers(0, 255, (1, 256, 256), dtype=np.uint8), tiled=True, blockxsize=64,
                        blockysize=64)
            data = temps["classes"].read_bytes()
            # the directory is written first by GDAL's GTiff driver when a file is created
            # in one go: cut the last block's bytes off the end
            with rasterio.open(temps["classes"]) as ds:
                last = int(ds.get_tag_item("BLOCK_OFFSET_3_3", "TIFF", bidx=1))
            temps["classes"].write_bytes(data[: last + 10])
    assert list(tmp_path.iterdir()) == []


def _fifo(path):
    os.mkfifo(path)
    return path


def _char_device(path):  # a second /dev/null
    if os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    return path


@pytest.mark.parametrize("make,kind", [(_fifo, "a FIFO"), (_char_device, "a character device")])
@pytest.mark.parametrize("through_link", [False, True])
def test_an_output_that_is_not_a_regular_file_is_refused_and_left_alone(tmp_path, small_dir, make, kind,
                                                                         through_link):
    special = make(tmp_path / "special")
    target = tmp_path / "out.tif"
    if through_link:
        target.symlink_to(special)
    else:
        target = special
    result = cli("predict", str(HRO_PLAIN), "-o", str(target), "--model", str(small_dir), "-q")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip() == f"isprs-seg: error: output {target} is {kind}, not a regular file; refusing to " \
                                    "replace it"
    mode = os.stat(special).st_mode
    assert stat.S_ISFIFO(mode) if make is _fifo else stat.S_ISCHR(mode)
    assert not through_link or target.is_symlink()


def test_a_link_to_a_regular_file_is_written_through(tmp_path):
    real = tmp_path / "elsewhere" / "classes.tif"
    real.parent.mkdir()
    real.write_bytes(b"old")
    link = tmp_path / "classes.tif"
    link.symlink_to(real)
    with atomic_outputs({"classes": link}) as temps:
        assert temps["classes"].parent == real.parent
        _raster(temps["classes"], np.zeros((1, 8, 8), np.uint8))
    assert link.is_symlink() and rasterio.open(real).width == 8


def test_temporaries_are_exclusive_and_stale_ones_of_dead_processes_are_removed(tmp_path, caplog):
    final = tmp_path / "ortho.classes.tif"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    host = atomic._HOST
    stale = tmp_path / f".ortho.classes.{host}-{dead}-{'ab' * 8}.partial.tif"
    alive = tmp_path / f".ortho.classes.{host}-{os.getppid()}-{'cd' * 8}.partial.tif"
    other_host = tmp_path / f".ortho.classes.elsewhere-{dead}-{'ef' * 8}.partial.tif"
    for path in (stale, alive, other_host):
        path.write_bytes(b"partial")
    with caplog.at_level(logging.WARNING, logger="isprs_seg"):
        with atomic_outputs({"classes": final}) as temps:
            tmp = temps["classes"]
            assert tmp.name.startswith(f".ortho.classes.{host}-{os.getpid()}-") and tmp.exists()
            assert tmp in atomic.LIVE
            _raster(tmp, np.zeros((1, 8, 8), np.uint8))
    assert tmp not in atomic.LIVE
    assert not stale.exists() and alive.exists() and other_host.exists()
    assert f"removed {stale}, a temporary file left by process {dead}, which no longer runs" in caplog.text

    # a file (or a link) already under the temporary's name is never written through
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    real_name = atomic._temporary_name
    atomic._temporary_name = lambda final: final.with_name("taken")
    try:
        (tmp_path / "taken").symlink_to(victim)
        with pytest.raises(OutputError, match="cannot create the temporary file"):
            with atomic_outputs({"classes": final}):
                pass
    finally:
        atomic._temporary_name = real_name
    assert victim.read_bytes() == b"keep"
