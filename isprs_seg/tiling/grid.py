"""Where patches go: a patch grid over an image, aligned to the network stride.

Pure geometry, no TensorFlow and no files. Along each axis the patch origins lie on
the ``lattice`` (the network stride, 32 px for HRNet) so that every patch sees the same
sampling phase. Neighbouring patches overlap by at least ``overlap`` pixels. The last
patch is pulled back to the last lattice point that still covers the image end, so it
extends past the image by less than one lattice step; the reader pads that part.
An image shorter than a patch gets one patch, shrunk to the smallest lattice multiple
that covers it.
"""

from __future__ import annotations

from dataclasses import dataclass


def _ceil_to(value: int, step: int) -> int:
    return -(-value // step) * step


@dataclass(frozen=True)
class Axis:
    """Patch origins along one axis of an image and the overlaps between neighbours."""

    length: int  # image pixels along this axis
    size: int  # patch size along this axis (a multiple of the lattice)
    origins: tuple[int, ...]

    @property
    def overlaps(self) -> tuple[int, ...]:
        """Overlap between patch ``i`` and ``i + 1`` for each neighbouring pair."""
        return tuple(a + self.size - b for a, b in zip(self.origins, self.origins[1:]))

    def ramps(self, i: int) -> tuple[int, int]:
        """(before, after): overlap of patch ``i`` with its previous and next neighbour.

        Zero towards the image border, where no neighbour shares the pixels.
        """
        overlaps = self.overlaps
        return (overlaps[i - 1] if i > 0 else 0, overlaps[i] if i < len(overlaps) else 0)


def axis(length: int, tile: int, overlap: int, lattice: int) -> Axis:
    """Lay patches of side ``tile`` over ``length`` pixels (see the module docstring)."""
    if length < 1:
        raise ValueError("the image must have at least one pixel along each axis")
    if tile < lattice or tile % lattice:
        raise ValueError(f"the tile size must be a positive multiple of {lattice}, got {tile}")
    if overlap < 0:
        raise ValueError(f"the overlap must not be negative, got {overlap}")
    if length <= tile:
        return Axis(length, min(tile, _ceil_to(length, lattice)), (0,))
    step = (tile - overlap) // lattice * lattice
    if step < lattice:
        raise ValueError(
            f"the overlap ({overlap}) leaves no room to advance a {tile} px tile along the "
            f"{lattice} px lattice: use an overlap of at most {tile - lattice}"
        )
    origins = list(range(0, length - tile, step))
    origins.append(_ceil_to(length - tile, lattice))
    return Axis(length, tile, tuple(origins))


@dataclass(frozen=True)
class Grid:
    """The patch grid of an image: rows of patches, each row one origin along y."""

    rows: Axis
    cols: Axis

    @property
    def height(self) -> int:
        return self.rows.length

    @property
    def width(self) -> int:
        return self.cols.length

    @property
    def patch_shape(self) -> tuple[int, int]:
        return self.rows.size, self.cols.size

    def __len__(self) -> int:
        return len(self.rows.origins) * len(self.cols.origins)


def make_grid(height: int, width: int, tile: int, overlap: int, lattice: int) -> Grid:
    """The patch grid for an image of ``height x width`` pixels."""
    return Grid(axis(height, tile, overlap, lattice), axis(width, tile, overlap, lattice))

