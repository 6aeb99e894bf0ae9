"""The local engine: runs computed in this process, on one loaded model.

:func:`run` is the one run skeleton: check the outputs, open the input, plan it
(:mod:`isprs_seg.runs.job`), warm the model up, create the outputs under temporary
names, stream the plan through the streaming engine (:mod:`isprs_seg.tiling.stream`)
into the product's sink, and commit the outputs. With a strip it computes only the
strip's rows into part files, which :func:`assemble` joins into the outputs of a whole
run: what the Ray engine (:mod:`isprs_seg.runs.cluster`) does on its workers and its
driver. :class:`LocalEngine` is the :class:`isprs_seg.runs.engine.Engine` over them.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..io.atomic import atomic_outputs
from ..io.outputs import check_outputs, copy_rows, listed
from ..io.raster import RowReader, RowsOf, gdal_env, open_input
from ..io.resample import RegriddedSink
from ..io.stac import item, write_item
from ..model.inference import Model, load_model
from ..products import Product
from ..tiling.plan import Strip, strip_batches
from ..tiling.stream import NoProgress, stream
from .engine import ModelFacts, ProgressFactory, RunResult, RunSpec
from .job import Job, prepare_job
from .memory import check as check_memory


class _RowsFrom:
    """A sink that numbers the rows of a strip from its first (the rows of its part
    files), where the streaming engine numbers them as in the whole output."""

    def __init__(self, sink, first: int):
        self.sink, self.first = sink, first

    def write(self, row: int, values: np.ndarray, valid: np.ndarray) -> None:
        self.sink.write(row - self.first, values, valid)

    def finish(self) -> None:
        self.sink.finish()


@contextlib.contextmanager
def _opened(spec: RunSpec, model, finals: dict[str, Path]) -> Iterator[tuple[Job, dict[str, Path]]]:
    """The prologue every run shares: outputs checked, the input opened and planned, the
    settings recorded in its tags, the outputs' temporaries (renamed over ``finals`` when
    the block ends without an error)."""
    check_outputs(spec.input, finals)
    with gdal_env(), contextlib.ExitStack() as stack:
        src = stack.enter_context(open_input(spec.input))
        job = prepare_job(src, spec.options, spec.reading, model.batch_size)
        job.tags.update(spec.record(model))
        yield job, stack.enter_context(atomic_outputs(finals))


def _describe(spec: RunSpec, job: Job, temps: dict[str, Path], finals: dict[str, Path], summary: dict) -> None:
    """The STAC Item of the finished outputs, when asked (:mod:`isprs_seg.io.stac`): read from
    them after the product's finishing work, committed with them."""
    if "stac" in temps:
        write_item(temps["stac"], item(finals["stac"], finals, temps, spec.product.main, job.dataset, job.tags,
                                       summary.get("class_pixels")))


def _result(spec: RunSpec, job: Job, finals, tiles: int, skipped: int, seconds: float, summary: dict) -> RunResult:
    return RunResult(str(spec.input), [str(p) for p in listed(finals)], job.dataset.width, job.dataset.height,
                     tiles, skipped, spec.options.tile, spec.options.overlap, job.batch_size, seconds, **summary)


def run(spec: RunSpec, model: Model, progress: ProgressFactory | None = None, strip: Strip | None = None,
        parts: dict[str, Path] | None = None) -> RunResult:
    """Run ``spec`` on ``model``: the whole input into its outputs; or, with ``strip``,
    only the strip's rows into ``parts`` (its raster outputs by role, GeoTIFFs of those
    rows, without the work done on finished outputs: COG, legend, polygons), which
    :func:`assemble` joins. A strip's counts are those of the patches it owns."""
    started = time.perf_counter()
    product = spec.product
    kind, finals = product.kind(spec.finals), spec.finals if strip is None else parts
    product.check_model(model)
    channels = product.channels(model)
    tta = spec.options.tta if kind.method == "predict" and spec.options.tta != "none" else None
    with _opened(spec, model, finals) as (job, temps):
        src = job.dataset
        layout = job.layout(channels, kind, on_gpu=model.device_description.startswith("GPU"))
        check_memory(str(spec.input), layout, spec.options.tile, spec.options.overlap, job.batch_size)
        model.warm_up(job.blank_patch(), job.batch_size, job.recipe, method=kind.method, tta=tta, weighted=True)
        with contextlib.ExitStack() as datasets:  # closed before the outputs are committed
            batches = job.batches
            if strip is None:
                outputs = product.open_sink(datasets, temps, src, job.tags, model)
                sink = outputs
            else:
                outputs = product.open_sink(datasets, temps, RowsOf(src, strip.start, strip.stop), job.tags, model)
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
            _describe(spec, job, temps, finals, outputs.summary())
    return _result(spec, job, finals, counts.sent, counts.skipped, time.perf_counter() - started,
                   outputs.summary())


def assemble(spec: RunSpec, model: ModelFacts, strips: Sequence[tuple[Strip, dict[str, Path], RunResult]],
             seconds: float) -> RunResult:
    """Join the parts of every strip of ``spec`` (as :func:`run` wrote them, given in
    strip order) into the outputs a whole run writes: the same datasets, tags, blocks
    and finishing work, with the strips' counts added up. ``seconds``: the run's time."""
    kind = spec.product.kind(spec.finals)
    with _opened(spec, model, spec.finals) as (job, temps):
        src = job.dataset
        with contextlib.ExitStack() as datasets:
            outputs = spec.product.open_sink(datasets, temps, src, job.tags, model)
            for strip, parts, result in strips:
                first, stop = strip.start // kind.stride, -(-min(strip.stop, src.height) // kind.stride)
                for role, writer in outputs.writers().items():
                    copy_rows(parts[role], writer, first, stop - first)
                outputs.add_counts(result.class_pixels)
            outputs.finish()
        outputs.closed(temps, spec.finals)
        _describe(spec, job, temps, spec.finals, outputs.summary())
    return _result(spec, job, spec.finals, sum(r.tiles for _, _, r in strips),
                   sum(r.skipped_tiles for _, _, r in strips), seconds, outputs.summary())


class LocalEngine:
    """The :class:`isprs_seg.runs.engine.Engine` of this process: every run on one model.

    ``model``: a loaded :class:`isprs_seg.model.Model` (or an object with its methods), a
    handle, or None for the default model (a handle is loaded on first use, with
    ``load``: the keyword arguments of :func:`isprs_seg.model.load_model`).
    """

    def __init__(self, model: Model | str | os.PathLike | None = None, **load):
        handle = model is None or isinstance(model, (str, os.PathLike))
        self._model = None if handle else model  # a loaded model, or anything that answers as one
        self._handle, self._load = (model if handle else None), load

    @property
    def model(self) -> Model:
        if self._model is None:
            self._model = load_model(self._handle, **self._load)
        return self._model

    def describe(self, product: Product) -> Model:
        """The model, checked for ``product`` (a loaded model answers every field of
        :class:`isprs_seg.runs.engine.ModelFacts`)."""
        product.check_model(self.model)
        return self.model

    def run(self, spec: RunSpec, progress: ProgressFactory | None = None) -> RunResult:
        return run(spec, self.model, progress)

    def close(self) -> None:
        """Nothing to release: the model stays the caller's."""

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def with_model(engine, model: Model | str | None):
    """The engine a call was given, else a :class:`LocalEngine` over ``model``."""
    return engine if engine is not None else LocalEngine(model)

