"""The stages wired together: raster in -> patch grid -> model -> blend -> raster out.

:func:`predict_raster` (``isprs-seg predict``) and :func:`extract_features`
(``isprs-seg features``) process one raster each and share one streaming engine,
:func:`_stream`: rows of patches are read as full-width row bands, patches without a
valid pixel under a non-zero weight are never sent to the model, and the accumulator
releases finished rows as soon as no later patch can touch them, so memory depends on
the patch size and the image width but not on the image height.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np

from . import __version__, contract
from .blend import BLEND_MODES, StreamingAccumulator, patch_window
from .errors import InputError, OutputError
from .grid import Grid, make_grid
from .model import Model, load_model
from .recipe import NORMALIZATIONS, RECIPES, InputRecipe, parse_bands, parse_scale, resolve_recipe
from .raster import (
    BlockRowWriter,
    IsprsSegWarning,
    atomic_outputs,
    check_output_path,
    is_georeferenced,
    open_class_raster,
    open_feature_raster,
    open_input,
    open_probability_raster,
    read_validity,
    RowReader,
)
from .resample import Regridder, ResampledSource

PROBABILITY_DTYPES = ("float32", "uint8")
FEATURE_DTYPES = ("float16", "float32")


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


ProgressFactory = Callable[[int], Progress]


@dataclass
class RunResult:
    """What one run of :func:`predict_raster` or :func:`extract_features` did."""

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
    class_fractions: dict[str, float] = field(default_factory=dict)  # predict only


def probabilities_path_for(classes_path: str | os.PathLike) -> Path:
    """``OUT.tif`` -> ``OUT.probabilities.tif`` (the name ``-o OUT.tif`` implies)."""
    return _sibling(classes_path, "probabilities", None)


def pooled_path_for(features_path: str | os.PathLike) -> Path:
    """``OUT.tif`` -> ``OUT.pooled.gpkg``."""
    return _sibling(features_path, "pooled", ".gpkg")


def _sibling(path: str | os.PathLike, tag: str, suffix: str | None) -> Path:
    path = Path(path)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return path.with_name(f"{stem}.{tag}{suffix or path.suffix or '.tif'}")


def check_options(tile: int, overlap: int, batch_size: int | None, blend: str) -> None:
    """Reject geometry option values that cannot work, before any file is opened."""
    lattice = contract.NETWORK_STRIDE
    if tile < lattice or tile % lattice:
        raise InputError(f"--tile must be a positive multiple of {lattice}, got {tile}")
    if not 0 <= overlap <= tile - lattice:
        raise InputError(f"--overlap must be between 0 and {tile - lattice} for a {tile} px tile, got {overlap}")
    if batch_size is not None and batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if blend not in BLEND_MODES:
        raise InputError(f"--blend must be one of {', '.join(BLEND_MODES)}, got {blend!r}")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _check_outputs(input, finals: Sequence[Path]) -> None:
    if len({p.resolve() for p in finals}) < len(finals):
        raise OutputError(f"two outputs would be written to the same file: {', '.join(map(str, finals))}")
    for path in finals:
        check_output_path(path)
        if str(input) == str(path) or (Path(input).exists() and Path(input).resolve() == path.resolve()):
            raise OutputError(f"output {path} would overwrite the input")


# --------------------------------------------------------------------------- engine


@dataclass
class _Patch:
    y: int
    x: int
    raw: np.ndarray | None  # raw bands [bands, h, w]; None when skipped
    weights: np.ndarray | None  # blend weight x validity [h / stride, w / stride]


def _pool_valid(valid: np.ndarray, stride: int) -> np.ndarray:
    """An output pixel at ``stride`` is valid when any input pixel under it is."""
    if stride == 1:
        return valid
    h, w = valid.shape
    return valid.reshape(h // stride, stride, w // stride, stride).any(axis=(1, 3))


def _patches(source, grid: Grid, recipe: InputRecipe, blend: str, stride: int) -> Iterator[_Patch]:
    """Every patch of the grid in row order, cut from full-width row bands read once each."""
    th, tw = grid.patch_shape
    reader = RowReader(source, recipe.bands, recipe.mask, grid.cols.origins[-1] + tw)
    for i, y in enumerate(grid.rows.origins):
        raw, valid = reader.rows(y, th)
        for j, x in enumerate(grid.cols.origins):
            window = patch_window(grid, i, j, blend, stride)
            patch_valid = valid[:, x : x + tw]
            if patch_valid.all():
                yield _Patch(y, x, raw[:, :, x : x + tw], window)
                continue
            weights = window * _pool_valid(patch_valid, stride)
            if not weights.any():
                yield _Patch(y, x, None, None)
            else:
                yield _Patch(y, x, raw[:, :, x : x + tw], weights)


RowsConsumer = Callable[[int, np.ndarray, np.ndarray], None]


@dataclass
class _Batch:
    patches: list[_Patch]
    raw: np.ndarray | None  # [n, bands, h, w], None when only skipped patches are reported
    skipped: int  # patches skipped since the previous batch (for progress)
    outputs: np.ndarray | list = field(default_factory=list)


_DONE = object()


class _Stopped(Exception):
    """A stage gave up because another one failed or was interrupted."""


class _Stage(threading.Thread):
    """One pipeline stage in its own thread; the main thread re-raises its error."""

    def __init__(self, work: Callable[[], None], name: str):
        super().__init__(name=name, daemon=True)
        self.work, self.error = work, None

    def run(self) -> None:
        try:
            self.work()
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.error = exc


def _put(q: queue.Queue, item, stop: threading.Event, peer: _Stage | None = None) -> None:
    """Put ``item`` when there is room; give up when stopped or when the consumer died."""
    while True:
        if peer is not None and peer.error is not None:
            raise peer.error
        if stop.is_set():
            raise _Stopped()
        try:
            q.put(item, timeout=0.1)
            return
        except queue.Full:
            continue


def _get(q: queue.Queue, stop: threading.Event, peer: _Stage | None = None):
    """Take the next item; give up when stopped or when the producer died."""
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if peer is not None and peer.error is not None:
                raise peer.error
            if peer is not None and not peer.is_alive():
                try:  # it may have put its last item just after the timeout
                    return q.get_nowait()
                except queue.Empty:
                    raise RuntimeError(f"{peer.name} ended without finishing") from None
            if stop.is_set():
                raise _Stopped()


def _join(*stages: _Stage) -> None:
    """Wait for the stages to end, even through a second Ctrl-C: the datasets they use
    are closed only after this returns."""
    for stage in stages:
        while stage.is_alive():
            try:
                stage.join()
            except BaseException:  # noqa: BLE001 - the first interruption is already on its way
                continue


def _stream(
    source, grid: Grid, recipe: InputRecipe, blend: str, infer: Callable[[np.ndarray], np.ndarray],
    stride: int, channels: int, consume: RowsConsumer, bar: Progress, batch_size: int,
) -> tuple[int, int]:
    """Run every patch through ``infer`` and hand finished output rows to ``consume``.

    Three stages overlap through bounded queues: a reader thread cuts batches of raw
    patches, the calling thread runs the model on them, and a blend thread accumulates
    the outputs and hands finished rows to ``consume``; while the model runs batch k,
    batch k+1 is read and batch k-1 blended and written. ``infer`` maps raw patches
    ``[n, bands, h, w]`` to ``[n, h / stride, w / stride, channels]``; ``consume(first_row,
    values [rows, width, channels], valid [rows, width])`` receives rows in order at the
    output resolution. Returns (patches sent to the model, patches skipped).
    """
    stop = threading.Event()
    # one batch waiting between stages is enough to keep every stage busy
    to_model: queue.Queue = queue.Queue(maxsize=1)
    to_blend: queue.Queue = queue.Queue(maxsize=1)
    counts = {"tiles": 0, "skipped": 0}

    def read() -> None:
        batch: list[_Patch] = []
        skipped = 0
        for patch in _patches(source, grid, recipe, blend, stride):
            if patch.raw is None:
                skipped += 1
                counts["skipped"] += 1
                continue
            batch.append(patch)
            counts["tiles"] += 1
            if len(batch) == batch_size:
                _put(to_model, _batch_of(batch, skipped), stop)
                batch, skipped = [], 0
        if batch or skipped:
            _put(to_model, _batch_of(batch, skipped), stop)
        _put(to_model, _DONE, stop)

    def blend_and_write() -> None:
        height, width = -(-grid.height // stride), -(-grid.width // stride)
        acc = StreamingAccumulator(height, width, channels, grid.patch_shape[0] // stride)

        def release(until: int) -> None:
            for chunk in acc.release(until):
                if stop.is_set():
                    raise _Stopped()
                consume(*chunk)

        while (batch := _get(to_blend, stop)) is not _DONE:
            for patch, values in zip(batch.patches, batch.outputs):
                row = patch.y // stride
                release(row)
                acc.add(row, patch.x // stride, values, patch.weights)
            bar.update(len(batch.patches) + batch.skipped)
        release(height)

    reader = _Stage(read, "isprs-seg-reader")
    writer = _Stage(blend_and_write, "isprs-seg-blender")
    reader.start()
    writer.start()
    try:
        while (batch := _get(to_model, stop, reader)) is not _DONE:
            batch.outputs = infer(batch.raw) if batch.raw is not None else []
            _put(to_blend, batch, stop, writer)
        _put(to_blend, _DONE, stop, writer)
        writer.join()
        if writer.error is not None:
            raise writer.error
    except BaseException:
        stop.set()
        _join(reader, writer)
        raise
    _join(reader)
    return counts["tiles"], counts["skipped"]


def _batch_of(patches: list[_Patch], skipped: int) -> _Batch:
    """Stack the raw patches for the model and let go of the row bands they came from."""
    raw = np.stack([p.raw for p in patches]) if patches else None
    for patch in patches:
        patch.raw = None
    return _Batch(patches, raw, skipped)


@dataclass
class _Job:
    """What both commands set up before streaming: the input and the geometry.

    ``source`` is what the model sees: the input itself, or a :class:`ResampledSource`
    at another ground sampling distance; ``grid`` lies on ``source``.
    """

    src: object
    source: object
    recipe: InputRecipe
    grid: Grid
    batch_size: int
    tags: dict

    def blank_patch(self) -> np.ndarray:
        """One raw patch of zeros ``[1, bands, h, w]``, for the warm-up call."""
        dtype = self.src.dtypes[self.recipe.bands[0] - 1]
        return np.zeros((1, len(self.recipe.bands), *self.grid.patch_shape), dtype)

    @contextlib.contextmanager
    def sink(self, stride: int, consume: RowsConsumer) -> Iterator[RowsConsumer]:
        """Where the engine's rows go: straight to ``consume``, or regridded onto the input's grid.

        The regridder reads the input's validity from its own dataset handle, since it
        runs in the blend thread while the reader thread uses ``src``; the handle is
        closed however the block ends, and the last rows are flushed when it succeeds.
        """
        if self.source is self.src:
            yield consume
            return
        src, mask = open_input(self.src.name), self.recipe.mask
        try:
            def native_valid(row: int, rows: int) -> np.ndarray:
                first, last = row * stride, min(src.height, (row + rows) * stride)
                valid = np.zeros((rows * stride, -(-src.width // stride) * stride), bool)
                valid[: last - first, : src.width] = read_validity(src, mask, first, last - first)
                return _pool_valid(valid, stride)

            regridder = Regridder(
                (-(-src.height // stride), -(-src.width // stride)),
                (-(-self.source.height // stride), -(-self.source.width // stride)),
                (self.source.scale_y, self.source.scale_x), native_valid, consume,
            )
            yield regridder.add
            regridder.finish()
        finally:
            src.close()


@dataclass(frozen=True)
class InputOptions:
    """How to read the input (``--bands``, ``--recipe``, ``--scale``, ``--normalize``).

    ``bands``: ``"R,G[,B]"`` 1-based, or None to choose from the colour interpretation;
    ``scale``: ``"auto"``, ``"MAX"`` or ``"MIN,MAX"``. See :mod:`isprs_seg.recipe`.
    ``gsd``: ground sampling distance in metres to run the model at; outputs stay on
    the input's grid (:mod:`isprs_seg.resample`).
    """

    bands: str | None = None
    recipe: str = "pseudo-rgb"
    scale: str = "auto"
    normalize: str = "unit"
    gsd: float | None = None  # metres: run the model at this resolution (see isprs_seg.resample)

    def check(self) -> None:
        """Reject malformed values before any file is opened."""
        parse_bands(self.bands)
        parse_scale(self.scale)
        _check_choice("--recipe", self.recipe, RECIPES)
        _check_choice("--normalize", self.normalize, NORMALIZATIONS)
        if self.gsd is not None and not (self.gsd > 0 and np.isfinite(self.gsd)):
            raise InputError(f"--gsd must be a positive number of metres, got {self.gsd}")


def _start(input, model: Model, tile: int, overlap: int, batch_size: int | None, blend: str, src,
           reading: InputOptions) -> _Job:
    recipe = resolve_recipe(src, parse_bands(reading.bands), reading.recipe, parse_scale(reading.scale),
                            reading.normalize)
    if not is_georeferenced(src):
        warnings.warn(f"{input} has no georeferencing, so neither will the outputs", IsprsSegWarning)
    source = ResampledSource(src, reading.gsd) if reading.gsd else src
    grid = make_grid(source.height, source.width, tile, overlap, contract.NETWORK_STRIDE)
    tags = {
        "SOFTWARE": f"isprs-seg {__version__}",
        "MODEL": model.handle,
        "TILE": str(tile),
        "OVERLAP": str(overlap),
        "BLEND": blend,
        "INPUT_RECIPE": recipe.describe(),
    }
    if reading.gsd:
        tags["GSD"] = str(reading.gsd)
    return _Job(src, source, recipe, grid, batch_size or model.batch_size, tags)


def _resolve_model(model: Model | str | None) -> Model:
    return model if isinstance(model, Model) else load_model(model)


# --------------------------------------------------------------------------- predict


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
    reading: InputOptions = InputOptions(),
    progress: ProgressFactory | None = None,
) -> RunResult:
    """Segment one raster into a class raster at ``output``.

    ``probabilities``: a path for the per-class probability raster, ``True`` for the
    name next to ``output`` (:func:`probabilities_path_for`), or ``None``.
    ``model``: a loaded :class:`Model`, a handle, or ``None`` for the default model.
    ``reading``: band mapping, scaling and normalisation (:class:`InputOptions`).
    ``progress``: called with the number of patches, returns a :class:`Progress`
    (for example ``lambda total: tqdm(total=total)``), advanced once per patch.
    Outputs appear under their final names only when complete.
    """
    started = time.perf_counter()
    check_options(tile, overlap, batch_size, blend)
    reading.check()
    _check_choice("--probabilities-dtype", probabilities_dtype, PROBABILITY_DTYPES)
    classes_path = Path(output)
    prob_path = probabilities_path_for(classes_path) if probabilities is True else (
        Path(probabilities) if probabilities else None
    )
    finals = [p for p in (prob_path, classes_path) if p is not None]  # classes last: "done"
    _check_outputs(input, finals)
    model = _resolve_model(model)

    with open_input(input) as src:
        job = _start(input, model, tile, overlap, batch_size, blend, src, reading)
        names, colors = model.class_names, model.class_colors
        counts = np.zeros(model.num_classes, np.int64)
        with atomic_outputs(finals) as temps, \
                open_class_raster(temps[-1], src, names, colors, contract.CLASS_NODATA, job.tags) as cdst, \
                (open_probability_raster(temps[0], src, names, probabilities_dtype, job.tags)
                 if prob_path else contextlib.nullcontext()) as pdst:
            class_writer = BlockRowWriter(cdst)
            as_bytes = probabilities_dtype == "uint8"  # 0-255 with a mask; float32 with NaN
            prob_writer = BlockRowWriter(pdst, mask=as_bytes, fill=0 if as_bytes else np.nan) if pdst else None

            def consume(row: int, values: np.ndarray, valid: np.ndarray) -> None:
                classes = np.argmax(values, axis=-1).astype(np.uint8)
                classes[~valid] = contract.CLASS_NODATA
                counts[:] += np.bincount(classes[valid], minlength=model.num_classes)
                class_writer.write(row, classes, valid)
                if prob_writer:
                    prob_writer.write(row, np.rint(values * 255) if as_bytes else values, valid)

            model.warm_up(job.blank_patch(), job.batch_size, job.recipe)
            with job.sink(1, consume) as sink, (progress or _no_progress)(len(job.grid)) as bar:
                tiles, skipped = _stream(
                    job.source, job.grid, job.recipe, blend, lambda x: model.predict(x, job.batch_size, job.recipe),
                    1, model.num_classes, sink, bar, job.batch_size,
                )
            class_writer.close()
            if prob_writer:
                prob_writer.close()
        total = counts.sum()
        fractions = {n: float(c / total) if total else 0.0 for n, c in zip(names, counts)}
        return RunResult(
            str(input), [str(classes_path)] + ([str(prob_path)] if prob_path else []),
            src.width, src.height, tiles, skipped, tile, overlap, job.batch_size,
            time.perf_counter() - started, fractions,
        )


# --------------------------------------------------------------------------- features


def extract_features(
    input: str | os.PathLike,
    output: str | os.PathLike,
    *,
    model: Model | str | None = None,
    tile: int = contract.DEFAULT_TILE,
    overlap: int = contract.DEFAULT_OVERLAP,
    batch_size: int | None = None,
    blend: str = "taper",
    dtype: str = "float16",
    pool: str | float | None = None,
    pooled: str | os.PathLike | None = None,
    preview: str | os.PathLike | None = None,
    reading: InputOptions = InputOptions(),
    progress: ProgressFactory | None = None,
) -> RunResult:
    """Write the model's dense features of one raster to ``output``.

    The feature raster has ``ceil(H/4) x ceil(W/4)`` pixels and one band per feature
    channel; its transform is the input's times ``Affine.scale(4)``, so feature pixel
    (i, j) covers input pixels [4i, 4i+4) x [4j, 4j+4). ``dtype`` ``float16`` stores
    half precision (GDAL Float32 with NBITS=16), ``float32`` full precision.
    ``pool``: cell size of mean-pooled embeddings (metres, or pixels with a ``px``
    suffix), written as a GeoPackage to ``pooled`` (default :func:`pooled_path_for`).
    ``preview``: path of a PNG false-colour quick-look (first three principal
    components). Other arguments as in :func:`predict_raster`.
    """
    from .embeddings import CellPooler, PcaPreview, parse_pool_spec, pool_cell, require_pyogrio

    started = time.perf_counter()
    check_options(tile, overlap, batch_size, blend)
    reading.check()
    _check_choice("--dtype", dtype, FEATURE_DTYPES)
    if pool:
        parse_pool_spec(pool)
        require_pyogrio()
    features_path = Path(output)
    pooled_path = (Path(pooled) if pooled else pooled_path_for(features_path)) if pool else None
    preview_path = Path(preview) if preview else None
    finals = [p for p in (pooled_path, preview_path, features_path) if p is not None]
    _check_outputs(input, finals)
    model = _resolve_model(model)
    model.check_features()
    stride, channels = contract.FEATURE_STRIDE, model.feature_channels

    with open_input(input) as src:
        job = _start(input, model, tile, overlap, batch_size, blend, src, reading)
        cell = pool_cell(pool, src) if pool else None
        height, width = -(-src.height // stride), -(-src.width // stride)
        sampler = PcaPreview(height * width) if preview_path else None
        with atomic_outputs(finals) as temps:
            tmp_features = temps[-1]
            tmp_pooled = temps[0] if pooled_path else None
            with open_feature_raster(tmp_features, src, channels, stride, dtype, job.tags) as fdst:
                writer = BlockRowWriter(fdst, block_rows=fdst.block_shapes[0][0], fill=np.nan)
                pooler = CellPooler(tmp_pooled, src, cell, stride, height, width, channels) if cell else None

                def consume(row: int, values: np.ndarray, valid: np.ndarray) -> None:
                    writer.write(row, values, valid)
                    if pooler:
                        pooler.add(row, values, valid)
                    if sampler:
                        sampler.add(values, valid)

                model.warm_up(job.blank_patch(), job.batch_size, job.recipe, method="get_features")
                with job.sink(stride, consume) as sink, (progress or _no_progress)(len(job.grid)) as bar:
                    tiles, skipped = _stream(
                        job.source, job.grid, job.recipe, blend, lambda x: model.features(x, job.batch_size, job.recipe),
                        stride, channels, sink, bar, job.batch_size,
                    )
                writer.close()
                if pooler:
                    pooler.close()
            if sampler:
                sampler.write(tmp_features, temps[1] if pooled_path else temps[0])
        return RunResult(
            str(input), [str(p) for p in (features_path, pooled_path, preview_path) if p],
            src.width, src.height, tiles, skipped, tile, overlap, job.batch_size,
            time.perf_counter() - started,
        )


def _no_progress(total: int) -> Progress:
    return _NoProgress()
