"""The two runs: ``predict`` (class and probability rasters) and ``features`` (embeddings).

Both are described by a :class:`RunSpec` (plain data) and go through one run
function, :func:`run`: check the outputs, open the input, decide the input recipe and
the view the model sees, plan the patches, warm the model up, create the outputs under
temporary names, stream the plan through the engine (:mod:`isprs_seg.engine`) into the
run's sink, and commit the outputs. They differ only in what the model is asked for,
the output stride and the sink. :func:`run` also computes one strip of the plan into
part files, and :func:`assemble` joins them into the outputs of a whole run: what a
distributed run (:mod:`isprs_seg.cluster`) does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from . import __version__, contract
from .embeddings import CellPooler, PcaPreview, pool_cell, pool_text
from .blend import argmax_planes
from .engine import NoProgress, Progress, stream
from .errors import IsprsSegWarning
from .grid import Grid, make_grid
from .memory import Layout
from .memory import check as check_memory
from .model import Model, load_model
from .options import CONFIDENCE_KINDS, PROBABILITY_DTYPES, FeatureOptions, InputOptions, RunOptions, check_choice, parse_bands, \
    parse_scale
from .atomic import atomic_outputs
from .legend import write_legend
from .outputs import (
    COMPANIONS,
    BlockRowWriter,
    check_outputs,
    class_raster,
    copy_rows,
    confidence_raster,
    feature_raster,
    listed,
    output_paths,
    probability_raster,
    to_cog,
)
from .plan import Batch, Strip, plan_batches, strip_batches
from .provenance import run_settings, settings_tags
from .raster import RasterView, RowReader, RowsOf, gdal_env, is_georeferenced, open_input
from .recipe import InputRecipe, resolve_recipe
from .resample import RegriddedSink, ResampledView

if TYPE_CHECKING:
    from rasterio.io import DatasetReader

    from .cluster import RayEngine

__all__ = ["InputOptions", "RunOptions", "FeatureOptions", "RunResult", "predict_raster", "extract_features"]

#: Called with the number of planned patches; returns a :class:`Progress` display.
ProgressFactory = Callable[[int], Progress]


@dataclass
class RunResult:
    """What one run of :func:`predict_raster` or :func:`extract_features` did."""

    input: str
    outputs: list[str]  # the main output first
    width: int
    height: int
    tiles: int  # patches sent to the model
    skipped_tiles: int  # patches without a valid pixel, never sent
    tile: int
    overlap: int
    batch_size: int
    seconds: float
    class_fractions: dict[str, float] = field(default_factory=dict)  # predict only
    class_pixels: dict[str, int] = field(default_factory=dict, repr=False)  # predict: valid pixels per class


@dataclass
class Job:
    """What a run knows about its input before streaming.

    ``dataset`` is the input; ``view`` is what the model sees: the dataset itself, or a
    :class:`ResampledView` of it at another ground sampling distance (``--gsd``). The
    grid and the batches lie on the view.
    """

    dataset: "DatasetReader"
    view: RasterView
    recipe: InputRecipe
    grid: Grid
    batches: tuple[Batch, ...]
    batch_size: int
    tags: dict

    def layout(self, channels: int, kind: "RunKind", on_gpu: bool) -> Layout:
        """What decides the run's buffers (:mod:`isprs_seg.memory`)."""
        bands, dtype = self.recipe.raw_layout(self.dataset.dtypes[self.recipe.bands[0] - 1])
        return Layout(self.view.height, self.view.width, bands, dtype.itemsize, channels, kind.stride,
                      kind.output_bytes, channels if kind.written else 0, on_gpu=on_gpu)

    def blank_patch(self) -> np.ndarray:
        """One raw patch of zeros ``[1, bands, h, w]``, for the warm-up call."""
        bands, dtype = self.recipe.raw_layout(self.dataset.dtypes[self.recipe.bands[0] - 1])
        return np.zeros((1, bands, *self.grid.patch_shape), dtype)


def prepare_job(dataset: "DatasetReader", options: RunOptions, reading: InputOptions, batch_size: int) -> Job:
    """Decide the recipe, the view, the grid and the batches of one input (``batch_size``:
    ``options.batch_size``, else the model's)."""
    recipe = resolve_recipe(dataset, parse_bands(reading.bands), reading.recipe, parse_scale(reading.scale),
                            reading.normalize)
    if not is_georeferenced(dataset):
        warnings.warn(f"{dataset.name} has no georeferencing, so neither will the outputs", IsprsSegWarning)
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


class _OutputSink:
    """A run's sink (see :class:`isprs_seg.engine.Sink`) and what it reports."""

    #: The sink needs the weighted means, not only the weighted sums (see :func:`isprs_seg.engine.stream`).
    needs_means = True

    def write(self, row: int, values: np.ndarray, valid: np.ndarray) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """Flush the last rows; the outputs are still open."""

    def closed(self, temps: dict[str, Path], finals: dict[str, Path]) -> None:
        """Work on the finished outputs, after they are closed and before they are committed."""

    def summary(self) -> dict:
        return {}

    def writers(self) -> dict[str, BlockRowWriter]:
        """The writer of each raster output, by role."""
        raise NotImplementedError

    def add_counts(self, pixels: dict[str, int]) -> None:
        """Count pixels written elsewhere (another strip) as if written here."""


@dataclass(frozen=True)
class RunKind:
    """What a run asks of the model and what it writes."""

    method: str  # model method: "predict" or "get_features"
    stride: int  # input pixels per output pixel, along each axis
    written: bool  # every channel is written (probabilities, features), not only the classes
    output_bytes: int  # bytes per written channel value in the writers' buffers


def predict_kind(probabilities: bool, probabilities_dtype: str) -> RunKind:
    return RunKind("predict", 1, probabilities, 4 if probabilities_dtype == "float32" else 1)


def features_kind() -> RunKind:
    return RunKind("get_features", contract.FEATURE_STRIDE, True, 4)


@dataclass(frozen=True)
class RunSpec:
    """One run of one input, as plain data: what a worker of a distributed run needs,
    besides the model, to compute any strip of it (:mod:`isprs_seg.cluster`).

    ``settings``: the command's own options: for ``predict`` ``probabilities_dtype``,
    ``cog``, ``vector``, ``confidence``; for ``features`` those of :class:`FeatureOptions`.
    """

    command: str  # "predict" or "features"
    input: str
    finals: dict[str, Path]  # outputs by role
    options: RunOptions
    reading: InputOptions
    settings: dict

    @property
    def kind(self) -> RunKind:
        if self.command == "predict":
            return predict_kind("probabilities" in self.finals, self.settings["probabilities_dtype"])
        return features_kind()

    def specific(self) -> dict:
        """The command's options that change pixels (see :mod:`isprs_seg.provenance`)."""
        if self.command == "predict":
            return {key: self.settings[key] for key in ("probabilities_dtype", "vector", "confidence")}
        pool = self.settings["pool"]
        return {"dtype": self.settings["dtype"], "pool": pool_text(pool) if pool else None}

    def open_sink(self, stack: contextlib.ExitStack, temps: dict[str, Path], job: Job, model) -> "_OutputSink":
        """The run's sink on new datasets at ``temps`` (closed by ``stack``); ``model``: a
        :class:`Model`, or its description (:class:`ModelFacts`)."""
        s = self.settings
        if self.command == "predict":
            return _ClassSink(stack, temps, job, model, s["probabilities_dtype"], s["cog"], s["vector"], s["confidence"])
        return _FeatureSink(stack, temps, job, model, FeatureOptions(s["dtype"], s["pool"], s["cog"]))

    def record(self, model) -> dict[str, str]:
        """The tags that record what made the outputs (:mod:`isprs_seg.provenance`)."""
        return settings_tags(run_settings(model, self.options, self.reading, self.finals, **self.specific()),
                             model.handle)


@dataclass(frozen=True)
class ModelFacts:
    """What the outputs need to know of a model, without TensorFlow: the driver of a
    distributed run gets it from a worker (:meth:`of`)."""

    handle: str
    digest: str
    precision: str
    batch_size: int
    num_classes: int
    feature_channels: int | None
    class_names: tuple[str, ...]
    class_colors: tuple[tuple[int, int, int], ...]
    device_description: str

    @classmethod
    def of(cls, model: Model) -> "ModelFacts":
        return cls(model.handle, model.digest, model.precision, model.batch_size, model.num_classes,
                   model.feature_channels, tuple(model.class_names), tuple(model.class_colors),
                   model.device_description)


def _resolve_model(model: Model | str | None) -> Model:
    return model if isinstance(model, Model) else load_model(model)


class _RowsFrom:
    """A sink that numbers the rows of a strip from its first (the rows of its part
    files), where the engine numbers them as in the whole output."""

    def __init__(self, sink, first: int):
        self.sink, self.first = sink, first

    def write(self, row: int, values: np.ndarray, valid: np.ndarray) -> None:
        self.sink.write(row - self.first, values, valid)

    def finish(self) -> None:
        self.sink.finish()


def run(spec: RunSpec, model: Model | str | None = None, progress: ProgressFactory | None = None,
        strip: Strip | None = None, parts: dict[str, Path] | None = None) -> RunResult:
    """Run ``spec``: the whole input into its outputs; or, with ``strip``, only the
    strip's rows into ``parts`` (its raster outputs by role, GeoTIFFs of those rows,
    without the work done on finished outputs: COG, legend, polygons), which
    :func:`assemble` joins. A strip's counts are those of the patches it owns."""
    started = time.perf_counter()
    kind, finals = spec.kind, spec.finals if strip is None else parts
    check_outputs(spec.input, finals)
    model = _resolve_model(model)
    record = spec.record(model)
    model.check_for(spec.command)
    channels = model.num_classes if kind.method == "predict" else model.feature_channels
    tta = spec.options.tta if kind.method == "predict" and spec.options.tta != "none" else None
    with gdal_env(), contextlib.ExitStack() as stack:
        src = stack.enter_context(open_input(spec.input))
        job = prepare_job(src, spec.options, spec.reading, model.batch_size)
        job.tags.update(record)
        layout = job.layout(channels, kind, on_gpu=model.device_description.startswith("GPU"))
        check_memory(str(spec.input), layout, spec.options.tile, spec.options.overlap, job.batch_size)
        model.warm_up(job.blank_patch(), job.batch_size, job.recipe, method=kind.method, tta=tta, weighted=True)
        temps = stack.enter_context(atomic_outputs(finals))
        with contextlib.ExitStack() as datasets:  # closed before the outputs are committed
            batches = job.batches
            if strip is None:
                outputs = spec.open_sink(datasets, temps, job, model)
                sink = outputs
            else:
                rows = RowsOf(src, strip.start, strip.stop)
                outputs = spec.open_sink(datasets, temps, dataclasses.replace(job, dataset=rows), model)
                sink = _RowsFrom(outputs, strip.start // kind.stride)
                batches = strip_batches(batches, strip, job.grid.patch_shape[0])
            normalise = outputs.needs_means or job.view is not src
            if job.view is not src:
                sink = datasets.enter_context(RegriddedSink.opened(job.view, job.recipe.mask, kind.stride, sink))
            bar = datasets.enter_context((progress or NoProgress)(len(job.grid)))
            reader = RowReader(job.view, job.recipe.bands, job.recipe.mask,
                               job.grid.cols.origins[-1] + job.grid.patch_shape[1], palette=job.recipe.colours)

            def infer(raw: np.ndarray, weights: np.ndarray) -> np.ndarray:
                return model.weighted(kind.method, raw, weights, job.batch_size, job.recipe, tta)

            counts = stream(job.grid, batches, reader, infer, sink, blend=spec.options.blend, stride=kind.stride,
                            channels=channels, progress=bar, normalise=normalise, strip=strip)
            sink.finish()
        if strip is None:
            outputs.closed(temps, finals)
    return RunResult(
        str(spec.input), [str(p) for p in listed(finals)],
        src.width, src.height, counts.sent, counts.skipped, spec.options.tile, spec.options.overlap, job.batch_size,
        time.perf_counter() - started, **outputs.summary(),
    )


def assemble(spec: RunSpec, model: ModelFacts, strips: Sequence[tuple[Strip, dict[str, Path], RunResult]],
             seconds: float) -> RunResult:
    """Join the parts of every strip of ``spec`` (as :func:`run` wrote them, given in
    strip order) into the outputs a whole run writes: the same datasets, tags, blocks
    and finishing work, with the strips' counts added up. ``seconds``: the run's time."""
    kind, finals = spec.kind, spec.finals
    check_outputs(spec.input, finals)
    with gdal_env(), contextlib.ExitStack() as stack:
        src = stack.enter_context(open_input(spec.input))
        job = prepare_job(src, spec.options, spec.reading, model.batch_size)
        job.tags.update(spec.record(model))
        temps = stack.enter_context(atomic_outputs(finals))
        with contextlib.ExitStack() as datasets:
            outputs = spec.open_sink(datasets, temps, job, model)
            for strip, parts, result in strips:
                first, stop = strip.start // kind.stride, -(-min(strip.stop, src.height) // kind.stride)
                for role, writer in outputs.writers().items():
                    copy_rows(parts[role], writer, first, stop - first)
                outputs.add_counts(result.class_pixels)
            outputs.finish()
        outputs.closed(temps, finals)
    return RunResult(
        str(spec.input), [str(p) for p in listed(finals)], src.width, src.height,
        sum(r.tiles for _, _, r in strips), sum(r.skipped_tiles for _, _, r in strips), spec.options.tile,
        spec.options.overlap, job.batch_size, seconds, **outputs.summary(),
    )


# --------------------------------------------------------------------------- predict


class _ClassSink(_OutputSink):
    """The class raster (argmax of the probabilities) and, when asked, the probabilities."""

    def __init__(self, stack: contextlib.ExitStack, temps: dict[str, Path], job: Job, model: Model, dtype: str,
                 cog: bool, vector: str | None, confidence: str | None):
        src, names = job.dataset, model.class_names
        self.colors, self.cog, self.vector = model.class_colors, cog, vector
        classes = stack.enter_context(
            class_raster(temps["classes"], src, names, model.class_colors, contract.CLASS_NODATA, job.tags))
        self.classes = BlockRowWriter(classes)
        self.probabilities = None
        self.as_bytes = dtype == "uint8"  # 0-255 with a mask; float32 with NaN
        if "probabilities" in temps:
            probabilities = stack.enter_context(probability_raster(temps["probabilities"], src, names, dtype, job.tags))
            self.probabilities = BlockRowWriter(probabilities, mask=self.as_bytes, fill=0 if self.as_bytes else np.nan)
        self.confidence = None
        if "confidence" in temps:
            self.confidence_kind = confidence
            raster = stack.enter_context(confidence_raster(temps["confidence"], src, confidence, job.tags))
            self.confidence = BlockRowWriter(raster, mask=True, fill=0)
        self.names = names
        self.counts = np.zeros(len(names), np.int64)
        # the class alone is the argmax of the weighted sums: no division needed
        self.needs_means = bool(self.probabilities or self.confidence)

    def write(self, row: int, values: np.ndarray, valid: np.ndarray) -> None:
        classes = argmax_planes(values)
        classes[~valid] = contract.CLASS_NODATA
        self.counts += np.bincount(classes.ravel(), minlength=256)[: len(self.names)]  # 255 (nodata) left out
        self.classes.write(row, classes, valid)
        if self.probabilities:
            self.probabilities.write(row, np.rint(values * 255) if self.as_bytes else values, valid)
        if self.confidence:
            if self.confidence_kind == "max":
                score = values.max(axis=0)
            else:  # the margin of the highest probability over the second
                top = np.partition(values, -2, axis=0)
                score = top[-1] - top[-2]
            self.confidence.write(row, np.rint(score * 255), valid)

    def finish(self) -> None:
        self.classes.finish()
        for writer in (self.probabilities, self.confidence):
            if writer:
                writer.finish()

    def closed(self, temps: dict[str, Path], finals: dict[str, Path]) -> None:
        for role in ("probabilities", "confidence", "classes"):
            if self.cog and role in temps:
                to_cog(temps[role], role, finals[role])
        write_legend(temps["categories"], temps["legend"], self.names, self.colors)
        if "polygons" in temps:
            from .vectorize import vectorize_raster

            vectorize_raster(temps["classes"], temps["polygons"], classes=None if self.vector == "all" else self.vector)

    def writers(self) -> dict[str, BlockRowWriter]:
        return {role: writer for role, writer in (("classes", self.classes), ("probabilities", self.probabilities),
                                                  ("confidence", self.confidence)) if writer}

    def add_counts(self, pixels: dict[str, int]) -> None:
        self.counts += np.array([pixels[name] for name in self.names], np.int64)

    def summary(self) -> dict:
        total = self.counts.sum()
        return {"class_fractions": {n: float(c / total) if total else 0.0 for n, c in zip(self.names, self.counts)},
                "class_pixels": {n: int(c) for n, c in zip(self.names, self.counts)}}


def predict_raster(
    input: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    model: Model | str | None = None,
    probabilities: str | os.PathLike | bool | None = None,
    tile: int = contract.DEFAULT_TILE,
    overlap: int = contract.DEFAULT_OVERLAP,
    batch_size: int | None = None,
    blend: str = "taper",
    probabilities_dtype: str = "float32",
    cog: bool = True,
    vector: str | None = None,
    confidence: str | None = None,
    tta: str = "none",
    reading: InputOptions = InputOptions(),
    progress: ProgressFactory | None = None,
    engine: "RayEngine | None" = None,
) -> RunResult:
    """Segment one raster into a class raster at ``output`` (or ``out_dir/<stem>.classes.tif``).

    ``probabilities``: a path for the per-class probability raster, ``True`` for the
    name beside the class raster (``OUT.probabilities.tif``), or ``None``.
    ``model``: a loaded :class:`Model`, a handle, or ``None`` for the default model.
    ``reading``: band mapping, scaling and normalisation (:class:`InputOptions`).
    ``progress``: called with the number of patches, returns a :class:`Progress`
    (for example ``lambda total: tqdm(total=total)``), advanced once per patch.
    ``cog``: the class and probability rasters are Cloud Optimized GeoTIFFs with
    overviews (else tiled GeoTIFFs without). Beside the class raster go its category
    names (``OUT.tif.aux.xml``) and a QGIS style (``OUT.qml``), see :mod:`isprs_seg.legend`.
    ``vector``: also polygonise these classes (``"building,car"``, or ``"all"``) into
    ``OUT.polygons.gpkg`` (see :func:`isprs_seg.vectorize.vectorize_raster`).
    ``confidence``: also write ``OUT.confidence.tif``, uint8: the highest class
    probability (``"max"``) or its margin over the second (``"margin"``), times 255.
    ``tta``: test-time augmentation, ``"flips"`` or ``"d4"`` (see :meth:`Model.predict`).
    ``engine``: a :class:`isprs_seg.cluster.RayEngine` to run on Ray's workers,
    which hold their own model (``model`` is then not used); the outputs are
    identical. Outputs appear under their final names only when complete.
    """
    options = RunOptions(tile, overlap, batch_size, blend, tta).check()
    reading.check()
    check_choice("--probabilities-dtype", probabilities_dtype, PROBABILITY_DTYPES)
    if confidence is not None:
        check_choice("--confidence", confidence, CONFIDENCE_KINDS)
    given = {"probabilities": probabilities} if probabilities and probabilities is not True else {}
    if vector:
        from .vectorize import require_vector

        require_vector()
    extra = ((["probabilities"] if probabilities else []) + (["confidence"] if confidence else [])
             + (["polygons"] if vector else []))
    finals = output_paths(input, "classes", [*extra, *COMPANIONS], output=output, out_dir=out_dir, given=given)

    spec = RunSpec("predict", str(input), finals, options, reading, {
        "probabilities_dtype": probabilities_dtype, "cog": cog, "vector": vector, "confidence": confidence})
    return engine.run(spec, progress) if engine is not None else run(spec, model, progress)


# --------------------------------------------------------------------------- features


class _FeatureSink(_OutputSink):
    """The feature raster and, when asked, the pooled table and the PCA preview."""

    def __init__(self, stack: contextlib.ExitStack, temps: dict[str, Path], job: Job, model: Model,
                 features: FeatureOptions):
        src, stride, channels = job.dataset, contract.FEATURE_STRIDE, model.feature_channels
        height, width = -(-src.height // stride), -(-src.width // stride)
        dataset = stack.enter_context(
            feature_raster(temps["features"], src, channels, stride, features.dtype, job.tags))
        self.writer = BlockRowWriter(dataset, fill=np.nan)
        self.pooler = None
        if "pooled" in temps:
            cell = pool_cell(features.pool, src)
            self.pooler = CellPooler(temps["pooled"], src, cell, stride, height, width, channels)
        self.sampler = PcaPreview(height * width) if "preview" in temps else None
        self.cog = features.cog

    def write(self, row: int, values: np.ndarray, valid: np.ndarray) -> None:
        self.writer.write(row, values, valid)
        if self.pooler:
            self.pooler.add(row, values, valid)
        if self.sampler:
            self.sampler.add(values, valid)

    def finish(self) -> None:
        self.writer.finish()
        if self.pooler:
            self.pooler.close()

    def writers(self) -> dict[str, BlockRowWriter]:
        return {"features": self.writer}

    def closed(self, temps: dict[str, Path], finals: dict[str, Path]) -> None:
        if self.sampler:
            self.sampler.write(temps["features"], temps["preview"])
        if self.cog:
            to_cog(temps["features"], "features", finals["features"])


def extract_features(
    input: str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    model: Model | str | None = None,
    tile: int = contract.DEFAULT_TILE,
    overlap: int = contract.DEFAULT_OVERLAP,
    batch_size: int | None = None,
    blend: str = "taper",
    dtype: str = "float16",
    pool: str | float | None = None,
    pooled: str | os.PathLike | None = None,
    preview: str | os.PathLike | None = None,
    cog: bool = False,
    reading: InputOptions = InputOptions(),
    progress: ProgressFactory | None = None,
    engine: "RayEngine | None" = None,
) -> RunResult:
    """Write the model's dense features of one raster to ``output`` (or ``out_dir/<stem>.features.tif``).

    The feature raster has ``ceil(H/4) x ceil(W/4)`` pixels and one band per feature
    channel; its transform is the input's times ``Affine.scale(4)``, so feature pixel
    (i, j) covers input pixels [4i, 4i+4) x [4j, 4j+4). ``dtype`` ``float16`` stores
    half precision (GDAL Float32 with NBITS=16), ``float32`` full precision.
    ``pool``: cell size of mean-pooled embeddings (metres, or pixels with a ``px``
    suffix), written as a GeoPackage to ``pooled`` (default ``OUT.pooled.gpkg``).
    ``preview``: path of a PNG false-colour quick-look (first three principal
    components). ``cog``: write the feature raster as a Cloud Optimized GeoTIFF with
    overviews. Other arguments as in :func:`predict_raster`.
    """
    options = RunOptions(tile, overlap, batch_size, blend).check()
    reading.check()
    features = FeatureOptions(dtype, str(pool) if pool else None, cog).check()
    given = {role: path for role, path in (("pooled", pooled if pool else None), ("preview", preview)) if path}
    finals = output_paths(input, "features", ["pooled"] if pool else [], output=output, out_dir=out_dir,
                          given=given)

    spec = RunSpec("features", str(input), finals, options, reading, dataclasses.asdict(features))
    return engine.run(spec, progress) if engine is not None else run(spec, model, progress)
