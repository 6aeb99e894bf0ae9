"""The pure stages: patch grid geometry, blend windows, streaming accumulator."""

import numpy as np
import pytest

from isprs_seg.tiling.blend import StreamingAccumulator, argmax_planes, patch_window, ramp
from isprs_seg.tiling.grid import make_grid

SIZES = [1, 31, 32, 100, 232, 383, 767, 768, 769, 1000, 1401, 2048, 5000]


@pytest.mark.parametrize("length", SIZES)
@pytest.mark.parametrize("tile,overlap", [(768, 128), (256, 64), (128, 32), (64, 0), (512, 480)])
def test_axis_covers_on_lattice_with_minimum_overlap(length, tile, overlap):
    grid = make_grid(length, 7, tile, overlap, 32)
    axis = grid.rows
    origins = np.array(axis.origins)
    assert origins[0] == 0 and np.all(origins % 32 == 0) and np.all(np.diff(origins) > 0)
    assert axis.size % 32 == 0 and axis.size <= max(tile, 32)
    end = origins[-1] + axis.size
    assert length <= end < length + 32, "the last patch covers the end and pads less than one lattice step"
    assert all(o >= overlap for o in axis.overlaps)
    if length <= tile:
        assert axis.origins == (0,) and axis.size == -(-length // 32) * 32


def test_bad_geometry_is_rejected():
    with pytest.raises(ValueError, match="multiple of 32"):
        make_grid(100, 100, 100, 0, 32)
    with pytest.raises(ValueError, match="overlap"):
        make_grid(1000, 1000, 256, 250, 32)


def test_ramps_are_partitions_of_unity():
    for mode in ("taper", "crop"):
        for n in (32, 64, 96, 128, 640):
            r = ramp(n, mode)
            assert np.allclose(r + r[::-1], 1.0)
    taper = ramp(128, "taper")
    assert np.all(taper[:32] == 0), "the outer quarter of an overlap gets no weight"
    assert np.all(np.diff(taper) >= 0)


@pytest.mark.parametrize("mode", ["taper", "crop"])
@pytest.mark.parametrize("shape", [(1000, 1401), (232, 383), (2048, 640), (769, 33)])
def test_weights_sum_to_one_everywhere_including_the_image_frame(mode, shape):
    """No pixel is attenuated or lost: the windows of all patches sum to exactly one."""
    h, w = shape
    grid = make_grid(h, w, 256, 64, 32)
    total = np.zeros((grid.rows.origins[-1] + grid.rows.size, grid.cols.origins[-1] + grid.cols.size))
    th, tw = grid.patch_shape
    for i, y in enumerate(grid.rows.origins):
        for j, x in enumerate(grid.cols.origins):
            total[y : y + th, x : x + tw] += patch_window(grid, i, j, mode)
    np.testing.assert_allclose(total[:h, :w], 1.0, atol=1e-6)


@pytest.mark.parametrize("normalise", [True, False])
def test_streaming_accumulator_matches_full_accumulation(normalise):
    rng = np.random.default_rng(1)
    h, w, c = 1100, 300, 3
    grid = make_grid(h, w, 128, 32, 32)
    th, tw = grid.patch_shape
    full_sum = np.zeros((c, h + th, w + tw))
    full_w = np.zeros((h + th, w + tw))
    acc = StreamingAccumulator(h, w, c, th)
    acc.chunk_rows = 50  # chunks that do not line up with the ring
    out = np.full((c, h, w), -1.0, np.float32)
    seen = np.zeros(h, int)

    def take(chunks):
        for row, values, valid in chunks:  # lent arrays: copied before the next chunk
            out[:, row : row + values.shape[1]] = values
            seen[row : row + values.shape[1]] += 1
            assert np.array_equal(valid, full_w[row : row + values.shape[1], :w] > 0)

    for i, y in enumerate(grid.rows.origins):
        take(acc.release(y, normalise))
        for j, x in enumerate(grid.cols.origins):
            if rng.random() < 0.2:  # a patch without a valid pixel: never sent, its pixels may stay empty
                acc.skip(y, x, th, tw)
                continue
            values = rng.random((c, th, tw), dtype=np.float32)
            weights = patch_window(grid, i, j, "taper") * (rng.random((th, tw)) > 0.1)
            acc.add(y, x, values * weights, weights)  # weighted where the model runs
            full_sum[:, y : y + th, x : x + tw] += weights * values
            full_w[y : y + th, x : x + tw] += weights
    take(acc.release(h, normalise))
    assert np.all(seen == 1), "every row is released exactly once"
    assert (full_w[:h, :w] == 0).any(), "some pixels got no weight at all (the ring must not keep old sums there)"
    sums = full_sum[:, :h, :w]
    expected = np.where(full_w[:h, :w] > 0, sums / np.maximum(full_w[:h, :w], 1e-30), 0) if normalise else sums
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert acc.sums.shape[1] == th, "the band never grows beyond one patch height"


def test_argmax_over_planes_is_numpys():
    rng = np.random.default_rng(2)
    values = rng.integers(0, 4, (7, 50, 60)).astype(np.float32)  # many ties
    np.testing.assert_array_equal(argmax_planes(values), np.argmax(values, axis=0))
