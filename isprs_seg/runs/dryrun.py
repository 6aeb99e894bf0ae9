"""Plan a run without running it: what ``--dry-run`` says about each input.

A forecast opens the input and decides everything a run decides before its first
model call (the input recipe, the view the model sees, the grid, the batches), counts
the patches that would be skipped as nodata, and from those works out the peak host
memory (and device memory on a GPU), the size of each output on disk and, where the
speed of the device is known, the time. It loads no model and creates no file.

The model is not loaded, so the forecast is for the published HRNetV2-W48
(:mod:`isprs_seg.contract`: its classes, feature channels, memory and speed), whatever
``--model`` says. Where a figure is approximate the forecast says so:

- skipped patches are counted exactly from the input's validity when the image has at
  most :data:`EXACT_PIXELS` pixels and no ``--gsd``; above, from the validity sampled
  down to that many pixels (the file's overviews when it has them);
- output sizes are uncompressed, an upper bound (DEFLATE usually does much better),
  with a third more for the overviews of Cloud Optimized GeoTIFFs;
- the host memory is :func:`isprs_seg.runs.memory.estimate` from what a process uses with
  the model loaded on the CPU (:data:`isprs_seg.contract.MODEL_LOADED_RESIDENT`);
- the time counts only the model (the host side keeps up on a CPU; see the README on
  GPU servers) and assumes CPU speed grows linearly with the cores.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import contract
from ..io.outputs import listed
from ..io.raster import RasterView, gdal_env, open_input, validity_overview
from ..model.inference import TTA
from ..options import InputOptions, RunOptions
from ..products import Classes, Features, Product
from ..products.embeddings import pool_cell
from ..tiling.blend import weighted_extent
from ..tiling.grid import Grid
from ..tiling.plan import plan_patches
from .job import prepare_job
from .memory import Estimate, Layout, estimate, patch_shape

#: Images up to this many pixels have their skipped patches counted exactly.
EXACT_PIXELS = 4096 * 4096

#: Share of a Cloud Optimized GeoTIFF's size taken by its overviews (each level a quarter of the one above).
_OVERVIEWS = 1 / 3


@dataclass(frozen=True)
class OutputForecast:
    role: str
    path: str
    bytes: int | None  # uncompressed upper bound; None where it depends on the map (polygons)


@dataclass
class Forecast:
    """What a run of one input would do (see the module docstring for what is approximate)."""

    input: str
    width: int
    height: int
    model_width: int  # the image the model sees (other than the input with --gsd)
    model_height: int
    patch: tuple[int, int]
    patches: int
    batches: int
    batch_size: int
    skipped: int  # patches without a valid pixel under a non-zero weight, never sent
    skipped_exact: bool
    host_memory: int  # bytes resident at the peak
    address_space: int  # bytes of virtual memory at the peak (what ulimit -v limits)
    device: str
    device_memory: int | None  # on a GPU
    outputs: list[OutputForecast] = field(default_factory=list)
    disk_peak: int | None = None  # bytes on disk at the peak of the run (COG conversion)
    seconds: float | None = None
    speed: str | None = None  # where the speed figure comes from

    def as_dict(self) -> dict:
        record = asdict(self)
        record["patch"] = list(self.patch)
        return record


def count_skipped(grid: Grid, blend: str, stride: int, valid: np.ndarray | None, height: int, width: int) -> int:
    """Patches of ``grid`` with no valid pixel where their blend weight is non-zero.

    ``valid``: the validity of the ``height x width`` image the grid lies on, or of that
    image sampled down (each patch is looked up over the same share of it), or None when
    every pixel is valid. At full resolution this is the engine's rule exactly: a patch
    is dropped when its weights times its pooled validity are all zero.
    """
    if valid is None:
        return 0
    sy, sx = valid.shape[0] / height, valid.shape[1] / width
    skipped = 0
    for patch in plan_patches(grid):
        rows, cols = weighted_extent(grid, patch.row, patch.col, blend, stride)
        top, bottom = int((patch.y + rows.start) * sy), math.ceil((patch.y + rows.stop) * sy)
        left, right = int((patch.x + cols.start) * sx), math.ceil((patch.x + cols.stop) * sx)
        if not valid[top : max(bottom, top + 1), left : max(right, left + 1)].any():
            skipped += 1
    return skipped


def _sampled_shape(height: int, width: int) -> tuple[int, int]:
    factor = max(1.0, math.sqrt(height * width / EXACT_PIXELS))
    return max(1, round(height / factor)), max(1, round(width / factor))


def output_bytes(role: str, height: int, width: int, settings: dict, src) -> int | None:
    """Uncompressed size of output ``role`` of a ``height x width`` input (upper bound)."""
    pixels = height * width
    cog = 1 + _OVERVIEWS if settings.get("cog") else 1
    classes = len(contract.CLASSES)
    if role == "classes":
        return round(pixels * cog)
    if role == "probabilities":
        uint8 = settings.get("probabilities_dtype") == "uint8"
        return round(pixels * (classes + 1 if uint8 else classes * 4) * cog)  # uint8: + its mask
    if role == "confidence":
        return 2 * pixels  # + its mask
    stride = contract.FEATURE_STRIDE
    small = -(-height // stride) * -(-width // stride)
    if role == "features":
        return round(small * contract.FEATURE_CHANNELS * (2 if settings.get("dtype") == "float16" else 4) * cog)
    if role == "preview":
        return small * 3
    if role == "pooled":
        rows, cols = pool_cell(settings["pool"], src)
        cells = -(-height // rows) * -(-width // cols)
        return cells * (contract.FEATURE_CHANNELS * 9 + 200)  # a REAL column per channel, the cell polygon
    if role == "stac":  # features: a raster band object per channel
        return 16 * 1024 + (contract.FEATURE_CHANNELS * 160 if "dtype" in settings else 0)
    if role in ("categories", "legend"):
        return 16 * 1024
    return None  # polygons: as many as the map has


def _main_first(finals: dict[str, Path]) -> list[tuple[str, Path]]:
    """The outputs in the order a run reports them, then the companion files."""
    by_path = {path: role for role, path in finals.items()}
    reported = listed(finals)
    return [(by_path[p], p) for p in reported] + [(r, p) for r, p in finals.items() if p not in reported]


def _speed(device: str) -> tuple[float, str] | None:
    """Model-input pixels per second of HRNetV2-W48 on ``device``, and where the figure comes from."""
    known = contract.MODEL_PIXELS_PER_SECOND
    if device == "CPU":
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return known["CPU core"] * cores, f"{known['CPU core'] / 1e6:.3f} Mpx/s per CPU core x {cores} cores"
    for name, rate in known.items():
        if name != "CPU core" and name.lower() in device.lower():
            return rate, f"{rate / 1e6:g} Mpx/s published for the {name}"
    return None


def forecast(input: str | os.PathLike, finals: dict[str, Path], product: Product, options: RunOptions,
             reading: InputOptions, device: str) -> Forecast:
    """The forecast of one run making ``product`` into ``finals`` (outputs by role, as the
    run would name them) on ``device`` (``CPU`` or a GPU as
    :func:`isprs_seg.model.inference.describe_device` names it), for HRNetV2-W48."""
    kind = product.kind(finals)
    settings = {**product.size_settings(), "tta": options.tta}
    channels = len(contract.CLASSES) if kind.method == "predict" else contract.FEATURE_CHANNELS
    on_gpu = device.startswith("GPU")
    with gdal_env(), open_input(input) as src:
        job = prepare_job(src, options, reading, options.batch_size or contract.DEFAULT_BATCH_SIZE)
        view: RasterView = job.view
        exact = view is src and view.height * view.width <= EXACT_PIXELS
        shape = (view.height, view.width) if exact else _sampled_shape(src.height, src.width)
        valid = validity_overview(src, job.recipe.mask, shape)
        skipped = count_skipped(job.grid, options.blend, kind.stride, valid, view.height, view.width)
        layout: Layout = job.layout(channels, kind, on_gpu)
        peak = estimate(layout, options.tile, job.batch_size,
                        Estimate(contract.MODEL_LOADED_RESIDENT, contract.MODEL_LOADED_ADDRESS))
        outputs = [OutputForecast(role, str(path), output_bytes(role, src.height, src.width, settings, src))
                   for role, path in _main_first(finals)]
    ph, pw = patch_shape(layout, options.tile)
    device_memory = None
    if on_gpu:
        pixels = job.batch_size * ph * pw
        device_memory = contract.MODEL_WEIGHT_BYTES + pixels * contract.MODEL_CALL_RESIDENT_PER_PIXEL
    sizes = [o.bytes for o in outputs if o.bytes is not None]
    # A Cloud Optimized GeoTIFF is copied from the streamed file, one output at a time.
    streamed = [round(o.bytes / (1 + _OVERVIEWS)) for o in outputs
                if o.bytes is not None and settings.get("cog") and o.role in ("classes", "probabilities", "features")]
    seconds, source = None, None
    speed = _speed(device)
    if speed:
        passes = len(TTA[settings.get("tta") or "none"]) if kind.method == "predict" else 1
        seconds = (len(job.grid) - skipped) * ph * pw * passes / speed[0]
        source = speed[1]
    return Forecast(
        str(input), src.width, src.height, view.width, view.height, (ph, pw), len(job.grid), len(job.batches),
        job.batch_size, skipped, exact, peak.resident, peak.address_space, device, device_memory, outputs,
        sum(sizes) + max(streamed, default=0), seconds, source,
    )


def forecast_predict(input, finals: dict[str, Path], options: RunOptions, reading: InputOptions, device: str, *,
                     probabilities_dtype: str = "float32", cog: bool = True) -> Forecast:
    """:func:`forecast` of :func:`isprs_seg.api.predict_raster` with these settings."""
    product = Classes("probabilities" in finals, probabilities_dtype, cog=cog)
    return forecast(input, finals, product, options, reading, device)


def forecast_features(input, finals: dict[str, Path], options: RunOptions, reading: InputOptions, device: str,
                      features: Features) -> Forecast:
    """:func:`forecast` of :func:`isprs_seg.api.extract_features` with these settings."""
    return forecast(input, finals, features, options, reading, device)


def size_text(n: int | None) -> str:
    if n is None:
        return "depends on the map"
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def describe(f: Forecast) -> str:
    """The forecast for people, a few indented lines under the input's name."""
    lines = [f"{f.input}: {f.width} x {f.height} px"]
    if (f.model_width, f.model_height) != (f.width, f.height):
        lines[0] += f", seen by the model at {f.model_width} x {f.model_height} px (--gsd)"
    about = "" if f.skipped_exact else "about "
    lines.append(f"  {_count(f.patches, 'patch', 'patches')} of {f.patch[1]} x {f.patch[0]} px in "
                 f"{_count(f.batches, 'batch', 'batches')} of {f.batch_size}; {about}{f.skipped} skipped as nodata")
    lines.append(f"  peak host memory: about {size_text(f.host_memory)} ({size_text(f.address_space)} of address space)"
                 + (" plus the GPU runtime's own" if f.device_memory is not None else ""))
    if f.device_memory is not None:
        lines.append(f"  device memory on {f.device}: about {size_text(f.device_memory)}")
    for o in f.outputs:
        lines.append(f"  {o.role}: {o.path} (up to {size_text(o.bytes)})" if o.bytes is not None
                     else f"  {o.role}: {o.path} ({size_text(None)})")
    if f.disk_peak:
        lines.append(f"  disk: up to {size_text(f.disk_peak)} at the peak of the run")
    if f.seconds is not None:
        lines.append(f"  time on {f.device}: {_duration(f.seconds)} of model time ({f.speed})")
    else:
        lines.append(f"  time: no speed figure is known for {f.device}")
    return "\n".join(lines)


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _duration(seconds: float) -> str:
    if seconds < 1:
        return "under a second"
    if seconds < 120:
        return f"about {seconds:.0f} s"
    if seconds < 7200:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"
