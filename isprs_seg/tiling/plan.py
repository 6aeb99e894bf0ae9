"""The plan of a run: every patch of the grid in a fixed order, and the batches they form.

Pure, no TensorFlow and no files. The plan is the row-major list of the grid's patches
(left to right, then top to bottom); a batch is a run of ``batch_size`` consecutive
patches of that list (the last one may be shorter). Both depend only on the geometry,
never on the data or on timing, so any engine that runs the same batches gets the
same numbers: the model's output for a patch may depend on the batch it is in, but
the batches never change. Patches without a valid pixel are dropped from their batch
when it is read (:mod:`isprs_seg.tiling.stream`); the other patches of that batch stay
together.

Invariants (tested): every patch appears once, in row-major order; the batches,
joined, are exactly that list; every batch but the last holds ``batch_size`` patches.

A *strip* is a band of image rows ``[start, stop)`` that one worker of a distributed
run computes (:mod:`isprs_seg.runs.cluster`). It replays, in plan order, exactly the planned
batches that hold a patch touching its rows (:func:`strip_batches`), so every pixel of
the strip receives the same patches, from the same batches, summed in the same order
as in a run of the whole image: the strip's pixels are bit-identical to that run's.
Each patch is *owned* by the strip holding its top row, so the strips' counts add up
to the whole run's. Invariants (tested): the strips tile the image's rows; each
patch is owned by exactly one strip and touches it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .grid import Grid


@dataclass(frozen=True)
class PlannedPatch:
    """One patch of the grid: its place in the plan, its grid cell and its top-left pixel."""

    index: int  # position in the row-major plan
    row: int  # grid row (index into ``grid.rows.origins``)
    col: int  # grid column
    y: int  # top image row of the patch
    x: int  # left image column


Batch = tuple[PlannedPatch, ...]


@dataclass(frozen=True)
class Strip:
    """Image rows ``[start, stop)`` computed as one unit of a distributed run."""

    index: int
    start: int
    stop: int

    def touches(self, patch: PlannedPatch, patch_height: int) -> bool:
        """Whether ``patch`` covers any of the strip's rows."""
        return patch.y < self.stop and patch.y + patch_height > self.start

    def owns(self, patch: PlannedPatch) -> bool:
        """Whether ``patch`` is counted with this strip: its top row is in it."""
        return self.start <= patch.y < self.stop


def plan_patches(grid: Grid) -> tuple[PlannedPatch, ...]:
    """Every patch of ``grid`` in row-major order."""
    cols = grid.cols.origins
    return tuple(
        PlannedPatch(i * len(cols) + j, i, j, y, x)
        for i, y in enumerate(grid.rows.origins)
        for j, x in enumerate(cols)
    )


def plan_batches(grid: Grid, batch_size: int) -> tuple[Batch, ...]:
    """Consecutive runs of ``batch_size`` patches of :func:`plan_patches`."""
    if batch_size < 1:
        raise ValueError(f"the batch size must be at least 1, got {batch_size}")
    patches = plan_patches(grid)
    return tuple(patches[start : start + batch_size] for start in range(0, len(patches), batch_size))


#: Rows per strip of a distributed run by default: a multiple of every output's block rows (512, and 64
#: feature rows of 4 px), large enough that the patch rows recomputed at each strip
#: border cost a few per cent (about 640 / rows with the default tile).
DEFAULT_STRIP_ROWS = 10240

#: Strips are a whole number of these rows, so that no output block straddles two strips.
STRIP_MULTIPLE = 512

def plan_strips(height: int, strip_rows: int) -> tuple[Strip, ...]:
    """Image rows ``[0, height)`` in strips of ``strip_rows`` (the last may be shorter)."""
    if strip_rows < 1:
        raise ValueError(f"strips must hold at least one row, got {strip_rows}")
    return tuple(Strip(i, start, min(start + strip_rows, height))
                 for i, start in enumerate(range(0, height, strip_rows)))


def strip_batches(batches: tuple[Batch, ...], strip: Strip, patch_height: int) -> tuple[Batch, ...]:
    """The planned batches, whole and in order, that hold a patch touching ``strip``."""
    return tuple(batch for batch in batches if any(strip.touches(p, patch_height) for p in batch))
