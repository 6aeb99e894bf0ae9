"""What a run knows of its input before streaming: the recipe, the view the model sees,
the grid and the planned batches (:class:`Job`), decided in one place for a local run,
a strip, the assembly of strips and the dry run."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .. import __version__, contract
from ..errors import InputWarning
from ..io.raster import RasterView, is_georeferenced
from ..io.recipe import InputRecipe, resolve_recipe
from ..io.resample import ResampledView
from ..options import InputOptions, RunOptions, parse_bands, parse_scale
from ..products.base import RunKind
from ..tiling.grid import Grid, make_grid
from ..tiling.plan import Batch, plan_batches
from .memory import Layout

if TYPE_CHECKING:
    from rasterio.io import DatasetReader


@dataclass
class Job:
    """What a run knows about its input before streaming.

    ``dataset`` is the input; ``view`` is what the model sees: the dataset itself, or a
    :class:`ResampledView` of it at another ground sampling distance (``--gsd``). The
    grid and the batches lie on the view.
    """

    dataset: DatasetReader
    view: RasterView
    recipe: InputRecipe
    grid: Grid
    batches: tuple[Batch, ...]
    batch_size: int
    tags: dict

    def layout(self, channels: int, kind: RunKind, on_gpu: bool) -> Layout:
        """What decides the run's buffers (:mod:`isprs_seg.runs.memory`)."""
        bands, dtype = self.recipe.raw_layout(self.dataset.dtypes[self.recipe.bands[0] - 1])
        return Layout(self.view.height, self.view.width, bands, dtype.itemsize, channels, kind.stride,
                      kind.output_bytes, channels if kind.written else 0, on_gpu=on_gpu)

    def blank_patch(self) -> np.ndarray:
        """One raw patch of zeros ``[1, bands, h, w]``, for the warm-up call."""
        bands, dtype = self.recipe.raw_layout(self.dataset.dtypes[self.recipe.bands[0] - 1])
        return np.zeros((1, bands, *self.grid.patch_shape), dtype)


def prepare_job(dataset: DatasetReader, options: RunOptions, reading: InputOptions, batch_size: int) -> Job:
    """Decide the recipe, the view, the grid and the batches of one input (``batch_size``:
    ``options.batch_size``, else the model's)."""
    recipe = resolve_recipe(dataset, parse_bands(reading.bands), reading.recipe, parse_scale(reading.scale),
                            reading.normalize)
    if not is_georeferenced(dataset):
        warnings.warn(f"{dataset.name} has no georeferencing, so neither will the outputs", InputWarning)
    view = ResampledView(dataset, reading.gsd, nearest=recipe.palette is not None) if reading.gsd else dataset
    grid = make_grid(view.height, view.width, options.tile, options.overlap, contract.NETWORK_STRIDE)
    batch_size = options.batch_size or batch_size
    tags = {
        "SOFTWARE": f"isprs-seg {__version__}",
        "TILE": str(options.tile),
        "OVERLAP": str(options.overlap),
        "BLEND": options.blend,
        "INPUT_RECIPE": recipe.describe(),
    }
    if reading.gsd:
        tags["GSD"] = str(reading.gsd)
    return Job(dataset, view, recipe, grid, plan_batches(grid, batch_size), batch_size, tags)
