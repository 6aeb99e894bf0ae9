"""Running on Ray: every GPU of a server or a cluster on one raster, strip by strip.

The unit of work is a strip of image rows (:func:`isprs_seg.tiling.plan.plan_strips`). A
worker is a Ray actor that loads the model once and computes strips with
:func:`isprs_seg.runs.local.run`: each strip replays exactly the planned batches that
touch its rows, so its pixels are bit-identical to those of a run on one machine, and
writes them as part files in a directory beside the main output, ``.<name>.parts``
(on storage every node reads, on a cluster). The driver, this process, never imports
TensorFlow: it plans, hands strips to the workers, records each finished strip in the
directory's manifest, and joins the parts into the outputs a local run writes
(:func:`isprs_seg.runs.local.assemble`); the parts are removed after a success.

Failures: a worker that dies is restarted by Ray and its strip computed again (strips
are written under temporary names and renamed, so a retry is harmless). An error in
the data comes back as the input's error, as locally. If the driver dies, the same
command keeps the strips the manifest lists whose files still have their checksums,
as long as its header (plan, model digest, settings, versions) matches this run; a
header that does not match is refused unless ``overwrite``.

Ray is an optional dependency, imported only here (``pip install 'isprs-seg[ray]'``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import pickle
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import rasterio

from .. import __version__
from ..errors import EngineError, InputError, IsprsSegError, ModelError, first_line
from ..io.outputs import check_outputs
from ..io.raster import gdal_env, open_input
from ..products import Product
from ..tiling.plan import DEFAULT_STRIP_ROWS, STRIP_MULTIPLE, Strip, plan_strips
from ..tiling.stream import NoProgress
from .engine import ModelFacts, ProgressFactory, RunResult, RunSpec
from .job import prepare_job
from .local import assemble
from .manifest import Manifest, absolute, identity, parts_dir, synced_digest

log = logging.getLogger("isprs_seg")

#: Raster outputs a strip writes as parts; the other outputs are made from the joined rasters.
PART_ROLES = ("classes", "probabilities", "confidence", "features")

#: Environment variables passed to the workers (settings of this tool: cache, fault injection for tests).
_FORWARDED_PREFIX = "ISPRS_SEG_"

def import_ray():
    try:
        import ray
    except ImportError:
        raise EngineError("--engine ray needs Ray, an optional dependency: pip install 'isprs-seg[ray]'") from None
    return ray


@dataclass(frozen=True)
class ModelLoad:
    """How each worker loads the model (the arguments of :func:`isprs_seg.model.inference.load_model`)."""

    handle: str | None = None
    batch_size: int | None = None
    device: str | None = None
    precision: str = "float32"
    xla: bool = False
    threads: int | None = None  # TensorFlow's threads per worker (CPU workers)


class StripWorker:
    """One worker: the model loaded once, strips computed on demand (a Ray actor)."""

    def __init__(self, load: ModelLoad):
        from .. import contract
        from .._tf import tensorflow
        from ..model.inference import load_model

        tf = tensorflow()
        if load.threads:
            tf.config.threading.set_intra_op_parallelism_threads(load.threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        self.tensorflow, self.model, self.error = tf.__version__, None, None
        try:
            self.model = load_model(load.handle, load.batch_size or contract.DEFAULT_BATCH_SIZE, device=load.device,
                                    precision=load.precision, xla=load.xla)
        except IsprsSegError as exc:  # said by describe: a worker that cannot load is not a dead worker
            self.error = exc

    def describe(self, product: Product) -> tuple[ModelFacts, dict]:
        """The model's description for the driver, after the check a local run makes."""
        if self.error is not None:
            raise self.error
        product.check_model(self.model)
        return ModelFacts.of(self.model), {"tensorflow": self.tensorflow}

    def strip(self, spec: RunSpec, strip: Strip, parts: dict[str, Path]):
        """Compute ``strip`` into ``parts``: ("ok", result, sha256 by role) or ("error", exception)."""
        from ..testing.faults import progress_for_strips
        from .local import run

        try:
            result = run(spec, self.model, progress_for_strips(), strip=strip, parts=parts)
            return "ok", result, {role: synced_digest(path) for role, path in parts.items()}
        except Exception as exc:  # noqa: BLE001 - handed to the driver, which reports it as a local run would
            try:
                pickle.dumps(exc)
            except Exception:  # noqa: BLE001 - whatever cannot travel goes as its message
                exc = IsprsSegError(str(exc))
            return "error", exc


def check_supported(gsd: bool, pool: bool, preview: bool) -> None:
    """Refuse what ``--engine ray`` does not do yet."""
    missing = [name for name, asked in (("--gsd", gsd), ("--pool", pool), ("--preview", preview)) if asked]
    if missing:
        raise InputError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not available with "
                         "--engine ray yet; use --engine local")


class RayEngine:
    """The :class:`isprs_seg.runs.engine.Engine` of Ray: each run on Ray's workers, strip by strip.

    ``address``: None starts a private Ray cluster on this machine; ``"auto"`` or
    ``host:port`` attach to a running one (a Python caller that already called
    ``ray.init`` keeps its connection). ``workers``: one per GPU of the cluster by
    default (one CPU worker with every core where there is no GPU); ``gpus_per_worker``
    (default 1 where there are GPUs) and ``cpus_per_worker`` (on CPU workers also
    TensorFlow's threads) size each worker. ``strip_rows``: a multiple of 512.
    ``overwrite``: discard the parts of an earlier run with other settings instead of
    refusing. Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, load: ModelLoad = ModelLoad(), *, address: str | None = None, workers: int | None = None,
                 gpus_per_worker: float | None = None, cpus_per_worker: float | None = None,
                 strip_rows: int = DEFAULT_STRIP_ROWS, overwrite: bool = False):
        if strip_rows < STRIP_MULTIPLE or strip_rows % STRIP_MULTIPLE:
            raise InputError(f"--strip-rows must be a positive multiple of {STRIP_MULTIPLE}, got {strip_rows}")
        if workers is not None and workers < 1:
            raise InputError(f"--workers must be at least 1, got {workers}")
        for name, value in (("--gpus-per-worker", gpus_per_worker), ("--cpus-per-worker", cpus_per_worker)):
            if value is not None and value <= 0:
                raise InputError(f"{name} must be positive, got {value}")
        self.load, self.address, self.workers = load, address, workers
        self.gpus_per_worker, self.cpus_per_worker = gpus_per_worker, cpus_per_worker
        self.strip_rows, self.overwrite = strip_rows, overwrite
        self.ray = None
        self.owned = False  # the Ray connection is this engine's to close
        self.actors: list = []
        self.facts: dict[str, tuple[ModelFacts, dict]] = {}
        self.started_in = 0.0
        self._answers: list = []

    # -- the cluster -----------------------------------------------------------------
    def start(self) -> RayEngine:
        """Connect (or start the private cluster) and start the workers, each loading the model."""
        if self.ray is not None:
            return self
        ray = import_ray()
        started = time.perf_counter()
        env = {k: v for k, v in os.environ.items() if k.startswith(_FORWARDED_PREFIX)}
        debug = bool(os.environ.get("ISPRS_SEG_DEBUG"))
        self.owned = not ray.is_initialized()  # a Python caller may have connected already
        if self.owned:
            kwargs = dict(include_dashboard=False, logging_level=logging.INFO if debug else logging.ERROR,
                          log_to_driver=debug)
            try:
                if self.address is None:
                    ray.init(address="local", object_store_memory=100 * 2**20, **kwargs)
                else:
                    ray.init(address=self.address, **kwargs)
            except Exception as exc:  # noqa: BLE001 - Ray's connection errors come in many classes
                where = ("start a local Ray cluster" if self.address is None
                         else f"connect to the Ray cluster at {self.address}")
                raise EngineError(f"cannot {where} ({first_line(exc)})") from exc
        self.ray = ray
        try:
            self._start_workers(ray, started, env)
        except BaseException:
            self.close()
            raise
        return self

    def _start_workers(self, ray, started: float, env: dict) -> None:
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
        node_cpus = max((int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")), default=cpus)
        per_gpu = self.gpus_per_worker if self.gpus_per_worker is not None else (1 if gpus else 0)
        workers = self.workers or (max(1, int(gpus // per_gpu)) if per_gpu else 1)
        per_cpu = self.cpus_per_worker or (1 if per_gpu else max(1, min(node_cpus, cpus // workers)))
        if per_gpu * workers > gpus or per_cpu * workers > cpus:
            raise EngineError(f"{workers} worker{'s' if workers > 1 else ''} of {per_cpu:g} CPUs and {per_gpu:g} "
                              f"GPUs each do not fit the cluster's {cpus} CPUs and {gpus} GPUs; give fewer --workers "
                              "or smaller --cpus-per-worker / --gpus-per-worker")
        threads = self.load.threads or max(1, int(per_cpu))
        load = self.load if per_gpu else dataclasses.replace(self.load, threads=threads)
        actor = ray.remote(StripWorker).options(num_cpus=per_cpu, num_gpus=per_gpu, max_restarts=-1,
                                                max_task_retries=3,
                                                runtime_env={"env_vars": env} if env else None)
        self.actors = [actor.remote(load) for _ in range(workers)]
        self._started, self._shape = started, (workers, per_cpu, per_gpu)


    def describe(self, product: Product) -> ModelFacts:
        """The workers' model, checked for ``product`` as a local run checks it (the first
        call waits for every worker to have loaded it)."""
        command = product.command
        if command not in self.facts:
            self.start()
            ray = self.ray
            try:
                answers = ray.get([actor.describe.remote(product) for actor in self.actors])
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, IsprsSegError):
                    raise cause from None
                raise ModelError(f"the workers could not load the model ({first_line(exc)})") from exc
            except ray.exceptions.RayActorError as exc:
                raise ModelError(f"the workers could not load the model ({first_line(exc)})") from exc
            if len({facts.digest for facts, _ in answers}) > 1:
                raise ModelError("the workers loaded different models (the same handle gives different files on "
                                 "different nodes); give a path every node reads the same")
            if not self.facts:
                self.started_in = time.perf_counter() - self._started
                log.info("Ray: %d worker(s) of %g CPU(s) and %g GPU(s), ready in %.1f s", *self._shape,
                         self.started_in)
            self.facts[command], self._answers = answers[0], answers
        return self.facts[command][0]

    def devices(self) -> list[str]:
        """The workers' devices (strips from other devices are not kept: GPU and CPU results
        differ in the last bits)."""
        return sorted({facts.device_description for facts, _ in self._answers})

    def close(self) -> None:
        if self.ray is None:
            return
        try:
            for actor in self.actors:
                with contextlib.suppress(Exception):
                    self.ray.kill(actor)
        finally:
            if self.owned:
                self.ray.shutdown()
            self.ray, self.actors = None, []

    def __enter__(self) -> RayEngine:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one run -----------------------------------------------------------------------
    def run(self, spec: RunSpec, progress: ProgressFactory | None = None) -> RunResult:
        """Run ``spec`` on the workers; the same outputs and result as a local run."""
        started = time.perf_counter()
        check_supported(bool(spec.reading.gsd), "pooled" in spec.finals, "preview" in spec.finals)
        check_outputs(spec.input, spec.finals)
        facts = self.describe(spec.product)
        with gdal_env(), open_input(spec.input) as src:
            job = prepare_job(src, spec.options, spec.reading, facts.batch_size)
            patches = len(job.grid)
        strips = plan_strips(job.grid.height, self.strip_rows)
        directory = parts_dir(spec).absolute()
        # the workers' view: absolute paths (their working directory is not this one)
        worker_spec = dataclasses.replace(spec, input=absolute(spec.input),
                                          finals={role: path.absolute() for role, path in spec.finals.items()})
        header = {
            "input": spec.input, "input_file": identity(spec.input), "devices": self.devices(),
            "width": job.grid.width, "height": job.grid.height,
            "tile": spec.options.tile, "overlap": spec.options.overlap, "blend": spec.options.blend,
            "batch_size": job.batch_size, "strip_rows": self.strip_rows, "patches": patches,
            "model": facts.digest, "settings": spec.record(facts), "recipe": job.recipe.describe(),
            "versions": {"isprs-seg": __version__, "gdal": rasterio.__gdal_version__,
                         **self.facts[spec.product.command][1]},
        }
        manifest = Manifest(directory, header)
        kept = manifest.kept(self.overwrite, spec.input)
        if kept:
            log.info("%s: %d of %d strips kept from an earlier run (%s)", spec.input, len(kept), len(strips), directory)
        done = {i: (strips[i], parts, RunResult(**result)) for i, (parts, result) in kept.items()}
        roles = [role for role in PART_ROLES if role in spec.finals]
        todo = [s for s in strips if s.index not in done]
        with (progress or NoProgress)(patches) as bar:
            for _, _, result in done.values():
                bar.update(result.tiles + result.skipped_tiles)
            try:
                for strip, parts, result, digests in self._compute(worker_spec, todo, roles, directory):
                    manifest.add(strip, parts, digests, result)
                    done[strip.index] = (strip, parts, result)
                    bar.update(result.tiles + result.skipped_tiles)
            except InputFailed as failed:  # its data: the strips are of no use (anything else keeps them)
                shutil.rmtree(directory, ignore_errors=True)
                raise failed.error from None
        log.info("%s: %d strip(s) computed, %d kept", spec.input, len(todo), len(kept))
        with _quiet():  # the input was described above
            result = assemble(spec, facts, [done[i] for i in sorted(done)], time.perf_counter() - started)
        shutil.rmtree(directory, ignore_errors=True)
        return result

    def _compute(self, spec, strips, roles, directory):
        """Hand ``strips`` to the workers; yield (strip, parts, result, digests) as each one is
        done. The input's own error (from its data) is raised as :class:`InputFailed`; a
        worker lost for good, or Ray failing, as :class:`EngineError`."""
        ray = self.ray
        free, pending, failure = list(self.actors), {}, None
        queue = list(strips)
        try:
            while queue or pending:
                while queue and free and failure is None:
                    strip, actor = queue.pop(0), free.pop()
                    parts = {role: directory / f"strip{strip.index:06d}.{role}.tif" for role in roles}
                    pending[actor.strip.remote(spec, strip, parts)] = (actor, strip, parts)
                if not pending:
                    break
                ready, _ = ray.wait(list(pending), num_returns=1)
                actor, strip, parts = pending.pop(ready[0])
                free.append(actor)
                try:
                    answer = ray.get(ready[0])
                except ray.exceptions.RayError as exc:  # a worker gone for good after its restarts, or Ray itself
                    failure = failure or EngineError(f"{spec.input}: Ray failed computing rows {strip.start}-"
                                                     f"{strip.stop} ({first_line(exc)})")
                    continue
                if answer[0] == "error":
                    failure = failure or InputFailed(answer[1])
                    continue
                _, result, digests = answer
                yield strip, parts, result, digests  # recorded even after a failure: a rerun keeps it
        finally:
            for ref in pending:  # leaving early (Ctrl-C, an error above): stop what still runs
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
        if failure is not None:
            raise failure


class InputFailed(Exception):
    """The input's own error, from a worker: the input fails as it would locally."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


@contextlib.contextmanager
def _quiet():
    """Without this tool's notes (warnings still show)."""
    level = log.level
    log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        log.setLevel(level)
