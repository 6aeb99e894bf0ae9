"""The stages wired together: raster in -> patch grid -> model -> blend -> raster out.

:func:`predict_raster` is the Python API behind ``isprs-seg predict`` for one raster.
Rows of patches are read as full-width row bands, patches without a valid pixel under
a non-zero weight are never sent to the model, and the streaming accumulator releases
finished rows as soon as no later patch can touch them, so memory depends on the patch
size and the image width but not on the image height.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np

from . import __version__, contract
from .blend import BLEND_MODES, StreamingAccumulator, patch_window
from .errors import InputError, OutputError
from .grid import Grid, make_grid
from .model import Model, load_model
from .raster import (
    BlockRowWriter,
    InputRecipe,
    IsprsSegWarning,
    atomic_outputs,
    check_output_path,
    is_georeferenced,
    open_class_raster,
    open_input,
    open_probability_raster,
    read_rows,
)

PROBABILITY_DTYPES = ("float32", "uint8")


class Progress(Protocol):
    """A progress display (a tqdm bar fits): a context manager with ``update(n)``."""

    def __enter__(self) -> "Progress": ...
    def __exit__(self, *exc) -> object: ...
    def update(self, n: int = 1) -> object: ...


class _NoProgress:
    def __enter__(self) -> "_NoProgress":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass


@dataclass
class PredictResult:
    """What one run of :func:`predict_raster` did."""

    input: str
    outputs: list[str]
    width: int
    height: int
    tiles: int  # patches sent to the model
    skipped_tiles: int  # patches without a valid pixel, never sent
    tile: int
    overlap: int
    batch_size: int
    seconds: float
    class_fractions: dict[str, float] = field(default_factory=dict)


def probabilities_path_for(classes_path: str | os.PathLike) -> Path:
    """``OUT.tif`` -> ``OUT.probabilities.tif`` (the name ``-o OUT.tif`` implies)."""
    path = Path(classes_path)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return path.with_name(f"{stem}.probabilities{path.suffix or '.tif'}")


def check_options(tile: int, overlap: int, batch_size: int | None, blend: str, probabilities_dtype: str) -> None:
    """Reject option values that cannot work, before any file is opened."""
    lattice = contract.NETWORK_STRIDE
    if tile < lattice or tile % lattice:
        raise InputError(f"--tile must be a positive multiple of {lattice}, got {tile}")
    if not 0 <= overlap <= tile - lattice:
        raise InputError(f"--overlap must be between 0 and {tile - lattice} for a {tile} px tile, got {overlap}")
    if batch_size is not None and batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if blend not in BLEND_MODES:
        raise InputError(f"--blend must be one of {', '.join(BLEND_MODES)}, got {blend!r}")
    if probabilities_dtype not in PROBABILITY_DTYPES:
        raise InputError(
            f"--probabilities-dtype must be one of {', '.join(PROBABILITY_DTYPES)}, got {probabilities_dtype!r}"
        )


@dataclass
class _Patch:
    y: int
    x: int
    image: np.ndarray | None  # model input [h, w, 3]; None when skipped
    weights: np.ndarray | None  # blend weight x validity [h, w]


def _patches(src, grid: Grid, recipe: InputRecipe, blend: str) -> Iterator[_Patch]:
    """Every patch of the grid in row order, read one full-width row band at a time."""
    th, tw = grid.patch_shape
    padded_width = grid.cols.origins[-1] + tw
    for i, y in enumerate(grid.rows.origins):
        raw, valid = read_rows(src, recipe, y, th, padded_width)
        for j, x in enumerate(grid.cols.origins):
            weights = patch_window(grid, i, j, blend) * valid[:, x : x + tw]
            if not weights.any():
                yield _Patch(y, x, None, None)
            else:
                yield _Patch(y, x, recipe.to_model(raw[:, :, x : x + tw]), weights)


def predict_raster(
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    model: Model | str | None = None,
    probabilities: str | os.PathLike | bool | None = None,
    tile: int = contract.DEFAULT_TILE,
    overlap: int = contract.DEFAULT_OVERLAP,
    batch_size: int | None = None,
    blend: str = "taper",
    probabilities_dtype: str = "float32",
    progress: Callable[[int], Progress] | None = None,
) -> PredictResult:
    """Segment one raster into a class raster at ``output``.

    ``probabilities``: a path for the per-class probability raster, ``True`` for the
    name next to ``output`` (:func:`probabilities_path_for`), or ``None``.
    ``model``: a loaded :class:`Model`, a handle, or ``None`` for the default model.
    ``progress``: called with the number of patches, returns a :class:`Progress`
    (for example ``lambda total: tqdm(total=total)``), advanced once per patch.
    Outputs appear under their final names only when complete.
    """
    started = time.perf_counter()
    check_options(tile, overlap, batch_size, blend, probabilities_dtype)
    classes_path = Path(output)
    prob_path = None
    if probabilities is True:
        prob_path = probabilities_path_for(classes_path)
    elif probabilities:
        prob_path = Path(probabilities)
    finals = [p for p in (prob_path, classes_path) if p is not None]  # classes last: "done"
    for path in finals:
        check_output_path(path)
        if str(input) == str(path) or (Path(input).exists() and Path(input).resolve() == path.resolve()):
            raise OutputError(f"output {path} would overwrite the input")
    if not isinstance(model, Model):
        model = load_model(model)
    batch_size = batch_size or model.batch_size

    with open_input(input) as src:
        recipe = InputRecipe.for_dataset(src)
        if not is_georeferenced(src):
            warnings.warn(f"{input} has no georeferencing, so neither will the outputs", IsprsSegWarning)
        grid = make_grid(src.height, src.width, tile, overlap, contract.NETWORK_STRIDE)
        names, colors = model.class_names, model.class_colors
        tags = {
            "SOFTWARE": f"isprs-seg {__version__}",
            "MODEL": model.handle,
            "TILE": str(tile),
            "OVERLAP": str(overlap),
            "BLEND": blend,
        }
        counts = np.zeros(model.num_classes, np.int64)
        tiles = skipped = 0
        with atomic_outputs(finals) as temps:
            tmp_classes = temps[-1]
            tmp_probs = temps[0] if prob_path else None
            with open_class_raster(tmp_classes, src, names, colors, contract.CLASS_NODATA, tags) as cdst:
                class_writer = BlockRowWriter(cdst)
                pdst = (
                    open_probability_raster(tmp_probs, src, names, probabilities_dtype, tags)
                    if tmp_probs else None
                )
                try:
                    prob_writer = BlockRowWriter(pdst, mask=probabilities_dtype == "uint8") if pdst else None
                    acc = StreamingAccumulator(src.height, src.width, model.num_classes, grid.patch_shape[0])

                    def emit(until: int) -> None:
                        for row, values, valid in acc.release(until):
                            classes = np.argmax(values, axis=-1).astype(np.uint8)
                            classes[~valid] = contract.CLASS_NODATA
                            counts[:] += np.bincount(classes[valid], minlength=model.num_classes)
                            class_writer.write(row, classes[None], valid)
                            if prob_writer:
                                prob_writer.write(row, _probability_bands(values, valid, probabilities_dtype), valid)

                    def run(batch: list[_Patch], bar: Progress) -> None:
                        probs = model.predict(np.stack([p.image for p in batch]), batch_size)
                        for patch, p in zip(batch, probs):
                            if patch.y > acc.top:
                                emit(patch.y)
                            acc.add(patch.y, patch.x, p, patch.weights)
                        bar.update(len(batch))

                    model.warm_up(*grid.patch_shape, batch_size)
                    with (progress or (lambda total: _NoProgress()))(len(grid)) as bar:
                        batch: list[_Patch] = []
                        for patch in _patches(src, grid, recipe, blend):
                            if patch.image is None:
                                skipped += 1
                                bar.update(1)
                                continue
                            batch.append(patch)
                            tiles += 1
                            if len(batch) == batch_size:
                                run(batch, bar)
                                batch = []
                        if batch:
                            run(batch, bar)
                    emit(src.height)
                    class_writer.close()
                    if prob_writer:
                        prob_writer.close()
                finally:
                    if pdst:
                        pdst.close()
        valid_total = counts.sum()
        fractions = {n: float(c / valid_total) if valid_total else 0.0 for n, c in zip(names, counts)}
        return PredictResult(
            input=str(input),
            outputs=[str(classes_path)] + ([str(prob_path)] if prob_path else []),
            width=src.width,
            height=src.height,
            tiles=tiles,
            skipped_tiles=skipped,
            tile=tile,
            overlap=overlap,
            batch_size=batch_size,
            seconds=time.perf_counter() - started,
            class_fractions=fractions,
        )


def _probability_bands(values: np.ndarray, valid: np.ndarray, dtype: str) -> np.ndarray:
    """``[rows, width, classes]`` probabilities to output bands ``[classes, rows, width]``."""
    bands = np.moveaxis(values, -1, 0)
    if dtype == "float32":
        return np.where(valid[None], bands, np.float32("nan")).astype(np.float32)
    return np.where(valid[None], np.rint(bands * 255), 0).astype(np.uint8)
