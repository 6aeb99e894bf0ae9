"""How much memory a run needs, and whether the limits in force allow it.

TensorFlow does not fail cleanly when it runs out of memory on the host: under an
address-space limit (``ulimit -v``) it crashes. So before the model is warmed up for an
input, :func:`check` estimates what the run will need and, when a limit in force is
lower, stops with a sentence that says which ``--tile`` and ``--batch-size`` would fit.

The estimate (:func:`estimate`) is what the process uses now (TensorFlow, the model's
weights) plus one model call (:data:`isprs_seg.contract.MODEL_CALL_RESIDENT_PER_PIXEL`
and its neighbours, on the CPU) plus the pipeline's own buffers, which depend on the
patch size, the batch size and the width of the image but not on its height.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass
from pathlib import Path

from .. import contract
from ..errors import InputError

#: Values per chunk the accumulator releases at most (see :class:`isprs_seg.tiling.blend.StreamingAccumulator`).
_CHUNK_VALUES = 8_000_000
#: GDAL's block cache in a run (see :data:`isprs_seg.io.raster.GDAL_SETTINGS`).
_GDAL_CACHE = 64 * 2**20
_MB = 2**20


@dataclass(frozen=True)
class Layout:
    """What decides the pipeline's buffers: the view's size and what is written."""

    height: int  # pixels of the image the model sees
    width: int
    bands: int  # raw bands read
    itemsize: int  # bytes per raw value
    channels: int  # values per output pixel (classes, or feature channels)
    stride: int  # input pixels per output pixel
    output_bytes: int  # bytes per output pixel and channel written (1 classes, 4 float32 probabilities ...)
    written_channels: int  # channels written besides the class raster (0, classes, or features)
    on_gpu: bool = False  # the model's activations live on the device, not on the host


@dataclass(frozen=True)
class Estimate:
    resident: int  # bytes of RAM at the peak
    address_space: int  # bytes of virtual memory at the peak


def patch_shape(layout: Layout, tile: int) -> tuple[int, int]:
    """The patch of ``--tile`` ``tile`` on this image (smaller images get smaller patches, see grid.py)."""
    lattice = contract.NETWORK_STRIDE
    return tuple(min(tile, -(-side // lattice) * lattice) for side in (layout.height, layout.width))


def pipeline_bytes(layout: Layout, tile: int, batch: int) -> int:
    """Peak bytes of the pipeline's own buffers for ``--tile`` ``tile`` in batches of ``batch``."""
    (ph, pw), s, c = patch_shape(layout, tile), layout.stride, layout.channels
    w = layout.width + pw
    out_area, out_rows, out_width = (ph // s) * (pw // s), ph // s, -(-w // s)
    rows = 2 * layout.bands * (ph + 512) * w * layout.itemsize  # row band buffer and its copy
    raw_batches = 3 * batch * layout.bands * ph * pw * layout.itemsize  # read, queued, in the model
    outputs = 2 * batch * out_area * c * 4  # queued, being blended (the one from the model: model_bytes)
    accumulator = out_rows * out_width * (c + 1) * 4 + out_area * c * 4  # band, weights, scratch
    released = 2 * min(_CHUNK_VALUES, out_rows * out_width * c) * 4  # a chunk and what a sink makes of it
    block_rows = 512 if s == 1 else 64
    writers = block_rows * out_width * (1 + layout.written_channels * layout.output_bytes)
    return rows + raw_batches + outputs + accumulator + released + writers + _GDAL_CACHE


def model_bytes(layout: Layout, tile: int, batch: int) -> tuple[int, int]:
    """(resident, address space) bytes one model call adds on the host."""
    ph, pw = patch_shape(layout, tile)
    outputs = batch * (ph // layout.stride) * (pw // layout.stride) * layout.channels * 4
    if layout.on_gpu:
        return outputs, outputs
    pixels = batch * ph * pw
    beyond = max(0, pixels - contract.MODEL_CALL_ADDRESS_KNEE)
    return (pixels * contract.MODEL_CALL_RESIDENT_PER_PIXEL + outputs,
            contract.MODEL_CALL_ADDRESS_FIXED + beyond * contract.MODEL_CALL_ADDRESS_PER_PIXEL + outputs)


def estimate(layout: Layout, tile: int, batch: int, now: Estimate | None = None) -> Estimate:
    """The peak of a run from now on (``now``: what the process uses, by default read from the system)."""
    now = now or in_use()
    pipeline = pipeline_bytes(layout, tile, batch)
    resident, address = model_bytes(layout, tile, batch)
    return Estimate(now.resident + pipeline + resident, now.address_space + pipeline + address)


def in_use() -> Estimate:
    """What this process uses now (Linux; zero where the system does not say)."""
    values = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmSize"):
                values[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return Estimate(values.get("VmRSS", 0), values.get("VmSize", 0))


def limits() -> dict[str, tuple[int, str]]:
    """The memory limits in force: ``{"address_space" | "resident": (bytes, where it is set)}``."""
    found = {}
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        found["address_space"] = (soft, "ulimit -v")
    cgroup = _cgroup_limit()
    if cgroup:
        found["resident"] = (cgroup, "the container's or job's memory limit (cgroup)")
    return found


def _cgroup_limit() -> int | None:
    """The smallest memory limit of this process's cgroup and its parents, if any."""
    root = Path("/sys/fs/cgroup")
    candidates = []
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "":  # cgroup v2
                base, name = root, "memory.max"
            elif "memory" in controllers.split(","):  # cgroup v1
                base, name = root / "memory", "memory.limit_in_bytes"
            else:
                continue
            here = base / path.lstrip("/")
            candidates += [d / name for d in (here, *here.parents) if base in (d, *d.parents)]
    except (OSError, ValueError):
        return None
    values = []
    for file in candidates:
        try:
            text = file.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            values.append(int(text))
    return min(values) if values else None


def _gb(n: int) -> str:
    return f"{n / 2**30:.1f} GB"


def check(name: str, layout: Layout, tile: int, overlap: int, batch: int) -> None:
    """Raise :class:`InputError` when the run would need more memory than a limit in force."""
    found = limits()
    if not found:
        return
    now = in_use()

    def over(t: int, b: int) -> tuple[str, int, int, str] | None:
        need = estimate(layout, t, b, now)
        for kind, value in (("address_space", need.address_space), ("resident", need.resident)):
            if kind in found and value > found[kind][0]:
                return kind, value, found[kind][0], found[kind][1]
        return None

    problem = over(tile, batch)
    if problem is None:
        return
    kind, need, limit, where = problem
    what = "address space" if kind == "address_space" else "memory"
    tiles = [t for t in sorted({tile, 512, 384, 256}, reverse=True)
             if t <= tile and t - contract.NETWORK_STRIDE >= overlap]
    options = [(t, b) for t in tiles for b in sorted({batch, max(1, batch // 2), 1}, reverse=True)]
    fits = next(((t, b) for t, b in options if (t, b) != (tile, batch) and over(t, b) is None), None)
    if fits:
        change = " ".join(f"--{o} {v}" for o, v, old in (("tile", fits[0], tile), ("batch-size", fits[1], batch))
                          if v != old)
        advice = f"use {change}"
    else:
        advice = "raise the limit or use a machine with more memory: even --tile 256 --batch-size 1 does not fit"
    raise InputError(f"{name}: this run needs about {_gb(need)} of {what} but the limit in force ({where}) is "
                     f"{_gb(limit)}; {advice}")
