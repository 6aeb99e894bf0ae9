"""The plan and the engine, without files or TensorFlow: batches never depend on timing."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import pytest

from isprs_seg.tiling.blend import patch_window, pool_valid
from isprs_seg.tiling.grid import make_grid
from isprs_seg.tiling.plan import plan_batches, plan_patches, plan_strips, strip_batches
from isprs_seg.tiling.stream import stream


@pytest.mark.parametrize("shape", [(100, 150), (1000, 1401), (2048, 640), (31, 5000)])
@pytest.mark.parametrize("batch_size", [1, 3, 4, 64])
def test_the_plan_is_every_patch_once_in_row_major_order_cut_into_consecutive_batches(shape, batch_size):
    grid = make_grid(*shape, 256, 64, 32)
    patches = plan_patches(grid)
    assert [(p.y, p.x) for p in patches] == [(y, x) for y in grid.rows.origins for x in grid.cols.origins]
    assert [p.index for p in patches] == list(range(len(grid)))
    assert all((grid.rows.origins[p.row], grid.cols.origins[p.col]) == (p.y, p.x) for p in patches)
    batches = plan_batches(grid, batch_size)
    assert tuple(p for batch in batches for p in batch) == patches
    assert all(len(b) == batch_size for b in batches[:-1]) and 1 <= len(batches[-1]) <= batch_size
    assert plan_batches(grid, batch_size) == batches, "a pure function of the geometry"


class _Image:
    """A row source over an in-memory image whose bands hold each pixel's row and column plus one."""

    def __init__(self, valid: np.ndarray, delays: random.Random | None = None):
        h, w = valid.shape
        yy, xx = np.mgrid[0:h, 0:w]
        self.bands = np.stack([yy + 1, xx + 1, (yy * 7 + xx * 3) % 251]).astype(np.int32)
        self.valid, self.delays = valid, delays

    def rows(self, row: int, count: int):
        if self.delays:
            time.sleep(self.delays.random() * 0.003)
        h, w = self.valid.shape
        width = w + 64  # the engine asks for the padded width
        raw = np.zeros((3, count, width), np.int32)
        valid = np.zeros((count, width), bool)
        have = max(0, min(count, h - row))
        raw[:, :have, :w] = self.bands[:, row : row + have]
        valid[:have, :w] = self.valid[row : row + have]
        raw[:, ~valid] = 0
        return raw, valid


def _run(valid, grid, batch_size, stride, seed=None, strip=None):
    """Stream the plan (or one strip of it); return (batches as the model saw them, output
    values, output validity, counts); rows not written stay NaN and invalid."""
    delays = random.Random(seed) if seed is not None else None
    image = _Image(valid, delays)
    seen, lock = [], threading.Lock()

    def origin(patch):  # invalid pixels read as 0: find a valid one
        r, c = np.argwhere(patch[0] > 0)[0]
        return int(patch[0, r, c] - 1 - r), int(patch[1, r, c] - 1 - c)

    def infer(raw, weights):  # a pointwise "model"; the patch origin is read back from the pixels
        if delays:
            time.sleep(delays.random() * 0.005)
        with lock:
            seen.append(tuple(origin(p) for p in raw))
        out = raw[:, 2, ::stride, ::stride].astype(np.float32) / 251
        return np.stack([out, 1 - out], axis=1) * weights[:, None]  # weighted, channel-first

    h, w = -(-grid.height // stride), -(-grid.width // stride)
    values, written = np.full((2, h, w), np.nan, np.float32), np.zeros((h, w), bool)

    class Sink:
        def write(self, row, v, ok):
            if delays:
                time.sleep(delays.random() * 0.003)
            values[:, row : row + v.shape[1]], written[row : row + v.shape[1]] = v, ok

        def finish(self):
            pass

    batches = plan_batches(grid, batch_size)
    if strip is not None:
        batches = strip_batches(batches, strip, grid.patch_shape[0])
    counts = stream(grid, batches, image, infer, Sink(), blend="taper", stride=stride, channels=2, strip=strip)
    return seen, values, written, counts


@pytest.mark.parametrize("stride", [1, 4])
def test_batches_are_the_plans_whatever_the_timing_of_the_threads(stride):
    h, w = 700, 900
    valid = np.ones((h, w), bool)
    valid[:, :300] = False  # whole patches without a valid pixel: dropped from their batches
    valid[450:520, 600:] = False
    grid = make_grid(h, w, 128, 32, 32)
    th, tw = grid.patch_shape

    expected = []  # the plan's batches without the patches that have no valid pixel under a weight
    for batch in plan_batches(grid, 5):
        kept = []
        for p in batch:
            window = np.zeros((th, tw), bool)
            window[: max(0, min(th, h - p.y)), : max(0, min(tw, w - p.x))] = valid[p.y : p.y + th, p.x : p.x + tw]
            if (patch_window(grid, p.row, p.col, "taper", stride) * pool_valid(window, stride)).any():
                kept.append((p.y, p.x))
        if kept:
            expected.append(tuple(kept))
    assert 0 < sum(map(len, expected)) < len(grid)

    reference = _run(valid, grid, 5, stride)
    assert reference[0] == expected
    assert reference[3].sent == sum(map(len, expected)) and reference[3].sent + reference[3].skipped == len(grid)
    for seed in range(3):  # random waits in the reader, the model and the writer
        seen, values, written, _ = _run(valid, grid, 5, stride, seed)
        assert seen == expected
        np.testing.assert_array_equal(written, reference[2])
        np.testing.assert_array_equal(values, reference[1])
    cells = pool_valid(np.pad(valid, ((0, -h % stride), (0, -w % stride))), stride)
    np.testing.assert_array_equal(reference[2], cells)
    truth = (np.stack([(np.mgrid[0:h, 0:w][0] * 7 + np.mgrid[0:h, 0:w][1] * 3) % 251]) / 251)[0, ::stride, ::stride]
    np.testing.assert_allclose(reference[1][0][cells], truth[cells], atol=1e-6)


@pytest.mark.parametrize("stride", [1, 4])
@pytest.mark.parametrize("strip_rows", [128, 256, 512])
def test_strips_give_the_whole_runs_rows_bit_for_bit_and_its_counts(stride, strip_rows):
    h, w = 701, 530  # odd sizes; patch rows overlap strip borders in every way
    valid = np.ones((h, w), bool)
    valid[200:420, 100:400] = False  # patches without a valid pixel, some at strip borders
    grid = make_grid(h, w, 128, 32, 32)
    whole_seen, whole, whole_written, whole_counts = _run(valid, grid, 3, stride)
    strips = plan_strips(h, strip_rows)
    assert [(s.start, s.stop) for s in strips] == [(a, min(a + strip_rows, h)) for a in range(0, h, strip_rows)]
    for p in plan_patches(grid):
        owners = [s for s in strips if s.owns(p)]
        assert len(owners) == 1 and owners[0].touches(p, grid.patch_shape[0])
    sent = skipped = 0
    joined = np.full_like(whole, np.nan)
    for strip in strips:
        seen, values, written, counts = _run(valid, grid, 3, stride, strip=strip)
        rows = slice(strip.start // stride, -(-strip.stop // stride))
        assert set(seen) <= set(whole_seen), "only whole batches of the plan reach the model"
        assert np.isnan(np.delete(values, np.r_[rows], axis=1)).all(), "nothing outside the strip is written"
        np.testing.assert_array_equal(written[rows], whole_written[rows])
        joined[:, rows] = values[:, rows]
        sent, skipped = sent + counts.sent, skipped + counts.skipped
    assert np.array_equal(joined, whole, equal_nan=True)  # bit for bit: the same patches summed in the same order
    assert (sent, skipped) == (whole_counts.sent, whole_counts.skipped) and skipped > 0
