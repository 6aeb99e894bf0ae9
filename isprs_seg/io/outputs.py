"""Raster output: where outputs go, and writing them safely.

Outputs are referred to by role (``classes``, ``probabilities``, ``features``,
``pooled``, ``preview``). They are written in whole blocks of rows
(:class:`BlockRowWriter`) so that compressed tiles are written once, under a temporary
name that is renamed only when the output is complete (:mod:`isprs_seg.io.atomic`).
Knows nothing of the model.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
import warnings
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import rasterio
import rasterio.control
import rasterio.shutil
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.windows import Window

from .._native import native_stderr_captured
from ..errors import OutputError, first_line
from .atomic import scratch, verify_complete
from .legend import pam_path, style_path
from .stac import stac_path

#: Block side of every output GeoTIFF but feature rasters.
OUTPUT_BLOCK = 512

#: Block side of feature rasters: a block holds every channel of 64 x 64 pixels (pixel
#: interleaved), so one read gives whole feature vectors; the writer buffers one block
#: row, 64 x width/4 x 720 float32 values.
FEATURE_BLOCK = 64

#: File name suffix of each output role after the input's stem (``--out-dir``) or after
#: the main output's name without its extension (``-o OUT.tif``).
SUFFIXES = {
    "classes": ".classes.tif",
    "probabilities": ".probabilities.tif",
    "features": ".features.tif",
    "pooled": ".pooled.gpkg",
    "polygons": ".polygons.gpkg",
    "confidence": ".confidence.tif",
}

#: Files that go with the class raster, named after it (see :mod:`isprs_seg.io.legend`):
#: they are written and committed with it, but not listed among the outputs.
COMPANIONS = {"categories": pam_path, "legend": style_path}

#: Outputs named after the main output that are listed with the others: the STAC Item
#: of the output set (``NAME.stac.json``, see :mod:`isprs_seg.io.stac`).
DESCRIPTIONS = {"stac": stac_path}

#: Overview resampling of each output role written as a Cloud Optimized GeoTIFF: class
#: values must stay class values (or nodata), scores are averaged.
OVERVIEW_RESAMPLING = {"classes": "MODE", "probabilities": "AVERAGE", "confidence": "AVERAGE", "features": "AVERAGE"}

#: Overviews are made down to about this many pixels along the longer side.
OVERVIEW_SMALLEST = 256


# --------------------------------------------------------------------------- naming


def input_stem(path: str | os.PathLike) -> str:
    """``/data/a/ortho.tif`` and ``/vsizip/x.zip/ortho.tif`` -> ``ortho``."""
    name = str(path).rstrip("/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


def output_paths(
    input: str | os.PathLike, main: str, extra: Sequence[str] = (), *,
    output: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None,
    given: Mapping[str, str | os.PathLike] | None = None, suffixes: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """The paths of the outputs of one input, by role, the ``main`` role last.

    With ``output`` (``-o OUT.tif``) the main output is ``OUT.tif`` and the ``extra``
    ones ``OUT<suffix>``; with ``out_dir`` they are all ``DIR/<input stem><suffix>``
    (:data:`SUFFIXES`). ``given`` names other outputs explicitly, ``{stem}`` in them
    standing for the input's stem. ``suffixes``: suffixes that replace those of
    :data:`SUFFIXES` for some roles (``{"polygons": ".polygons.parquet"}``).
    """
    if (output is None) == (out_dir is None):
        raise ValueError("give exactly one of output and out_dir")
    stem = input_stem(input)
    if output is not None:
        output = Path(output)
        base = output.parent / (output.name[: -len(output.suffix)] if output.suffix else output.name)
    else:
        base = Path(out_dir) / stem
    given = given or {}
    suffix = {**SUFFIXES, **(suffixes or {})}
    main_path = output if output is not None else base.with_name(base.name + suffix[main])
    after_main = COMPANIONS | DESCRIPTIONS
    paths = {role: base.with_name(base.name + suffix[role]) for role in extra if role not in given | after_main}
    paths.update({role: Path(str(path).replace("{stem}", stem)) for role, path in given.items()})
    paths.update({role: name(main_path) for role, name in after_main.items() if role in extra})
    paths[main] = main_path
    return paths


def listed(outputs: Mapping[str, object]) -> list:
    """The outputs a user is told about: the main one first, without the companion files."""
    roles = [role for role in outputs if role not in COMPANIONS]
    return [outputs[role] for role in roles[-1:] + roles[:-1]]


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def check_output_path(path: Path) -> None:
    """Fail early, before any work, when ``path`` cannot be written.

    An existing output may be replaced only when it is a regular file, or a symbolic
    link to one (the file it points to is then replaced): a directory, a device, a FIFO,
    a socket or a broken link is refused and left untouched.
    """
    if os.path.lexists(path):
        try:
            mode = os.stat(path).st_mode
        except OSError:
            raise OutputError(f"output {path} is a broken symbolic link; refusing to replace it") from None
        if stat.S_ISDIR(mode):
            raise OutputError(f"output {path} is a directory")
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
            raise OutputError(f"output {path} is {kind}, not a regular file; refusing to replace it")
        path = Path(os.path.realpath(path))
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output directory {parent} is not writable")


def check_outputs(input: str | os.PathLike, finals: Mapping[str, Path]) -> None:
    """Every output writable, no two the same file, none the input."""
    paths = list(finals.values())
    if len({p.resolve() for p in paths}) < len(paths):
        raise OutputError(f"two outputs would be written to the same file: {', '.join(map(str, paths))}")
    for path in paths:
        check_output_path(path)
        if str(input) == str(path) or (Path(input).exists() and Path(input).resolve() == path.resolve()):
            raise OutputError(f"output {path} would overwrite the input")


# --------------------------------------------------------------------------- creating rasters


def _base_profile(src, count: int, dtype: str) -> dict:
    profile = {
        "driver": "GTiff",
        "width": src.width,
        "height": src.height,
        "count": count,
        "dtype": dtype,
        "tiled": True,
        "blockxsize": OUTPUT_BLOCK,
        "blockysize": OUTPUT_BLOCK,
        "compress": "deflate",
        "predictor": 3 if dtype.startswith("float") else 2,
        "num_threads": "all_cpus",  # GDAL compresses blocks in worker threads
        "bigtiff": "if_safer",
        "interleave": "pixel" if count == 1 else "band",
    }
    if src.crs is not None or not src.transform.is_identity:
        profile["crs"] = src.crs
        profile["transform"] = src.transform
    return profile


def _copy_gcps(src, dst, stride: int = 1) -> None:
    """Carry ground control points over to an output at 1/``stride`` of the input grid."""
    gcps, crs = src.gcps
    if gcps:
        scaled = [rasterio.control.GroundControlPoint(g.row / stride, g.col / stride, g.x, g.y, g.z, g.id, g.info)
                  for g in gcps]
        dst.gcps = (scaled, crs)


@contextlib.contextmanager
def _created(path: Path, profile: dict, src, stride: int = 1) -> Iterator[rasterio.io.DatasetWriter]:
    """A new dataset, closed when the block ends (the only place outputs are closed).

    GDAL compresses and writes its cached blocks at close; a failure there is only
    logged (libtiff also prints it), so it is detected afterwards by
    :func:`verify_complete` when the outputs are committed.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
                dst = rasterio.open(path, "w", **profile)
    except (RasterioIOError, OSError) as exc:
        raise OutputError(f"cannot create {path} ({first_line(exc)})") from exc
    try:
        _copy_gcps(src, dst, stride)
        yield dst
    finally:
        with native_stderr_captured():
            dst.close()


@contextlib.contextmanager
def class_raster(
    path: Path, src, class_names: Sequence[str], colors: Sequence[tuple[int, int, int]], nodata: int, tags: dict,
) -> Iterator[rasterio.io.DatasetWriter]:
    """A uint8 class raster with the input's grid, a colour table and class names."""
    profile = _base_profile(src, 1, "uint8") | {"nodata": nodata}
    with _created(path, profile, src) as dst:
        colormap = {i: (*c, 255) for i, c in enumerate(colors)}
        colormap[nodata] = (0, 0, 0, 0)
        dst.write_colormap(1, colormap)
        dst.set_band_description(1, "class")
        dst.update_tags(**tags, CLASS_NAMES=",".join(class_names), NODATA_CLASS=str(nodata))
        dst.update_tags(1, **{f"CLASS_{i}": name for i, name in enumerate(class_names)})
        yield dst


@contextlib.contextmanager
def probability_raster(path: Path, src, class_names: Sequence[str], dtype: str, tags: dict
                       ) -> Iterator[rasterio.io.DatasetWriter]:
    """One band per class: float32 (nodata NaN) or uint8 0-255 (internal mask)."""
    profile = _base_profile(src, len(class_names), dtype)
    if dtype == "float32":
        profile["nodata"] = float("nan")
    with _created(path, profile, src) as dst:
        for i, name in enumerate(class_names, start=1):
            dst.set_band_description(i, name)
        scale = "probability" if dtype == "float32" else "probability * 255"
        dst.update_tags(**tags, CLASS_NAMES=",".join(class_names), VALUES=scale)
        yield dst


@contextlib.contextmanager
def confidence_raster(path: Path, src, kind: str, tags: dict) -> Iterator[rasterio.io.DatasetWriter]:
    """uint8: the highest class probability (``max``) or its margin over the second, x 255; internal mask."""
    with _created(path, _base_profile(src, 1, "uint8"), src) as dst:
        what = "highest class probability" if kind == "max" else "highest class probability minus the second"
        dst.set_band_description(1, f"confidence: {what}, x 255")
        dst.update_tags(**tags, CONFIDENCE=kind, VALUES=f"{what} * 255")
        yield dst


@contextlib.contextmanager
def feature_raster(path: Path, src, channels: int, stride: int, dtype: str, tags: dict
                   ) -> Iterator[rasterio.io.DatasetWriter]:
    """Features at 1/``stride`` of the input grid: ``ceil(H/stride) x ceil(W/stride)``.

    The transform is the input's times ``Affine.scale(stride)``. ``float16`` is stored
    as GDAL Float32 with NBITS=16 (IEEE half precision on disk, float32 when read);
    invalid pixels are NaN, the declared nodata value.
    """
    profile = _base_profile(src, channels, "float32")
    profile.update(
        width=-(-src.width // stride),
        height=-(-src.height // stride),
        blockxsize=FEATURE_BLOCK,
        blockysize=FEATURE_BLOCK,
        interleave="pixel",
        nodata=float("nan"),
        # a lighter codec than the DEFLATE of the class rasters: features are large and
        # read by data tools; ZSTD level 1 is about 3x faster at the same size here
        compress="zstd",
        zstd_level=1,
    )
    if "transform" in profile:
        profile["transform"] = src.transform @ Affine.scale(stride)
    if dtype == "float16":
        profile["nbits"] = 16
    with _created(path, profile, src, stride) as dst:
        dst.update_tags(**tags, FEATURE_STRIDE=str(stride), PRECISION=dtype)
        for band in range(1, channels + 1):
            dst.set_band_description(band, f"f{band - 1:03d}")
        yield dst


def to_cog(path: Path, role: str, final: Path) -> None:
    """Rewrite the finished GeoTIFF ``path`` as a Cloud Optimized GeoTIFF, in place.

    GDAL's COG driver copies it with internal overviews (halving down to about
    :data:`OVERVIEW_SMALLEST` px, resampled as :data:`OVERVIEW_RESAMPLING` says for the
    role), reading it in blocks: memory stays bounded; the disk needs room for a second
    copy and GDAL's temporary overviews while it works. ``final``: the name in messages.
    """
    verify_complete(path, final)  # a write that failed at close must not be read back
    with rasterio.open(path) as src:
        side, block, compress = max(src.width, src.height), src.block_shapes[0][0], src.compression
        nbits = src.tags(1, ns="IMAGE_STRUCTURE").get("NBITS")
        # GDAL 3.11+ reads Float32 NBITS=16 as its own Float16, for which the floating-point
        # predictor (3) is refused; horizontal differencing (2) takes it
        predictor = "2" if src.dtypes[0] == "float16" else "YES"
    levels = max(0, math.ceil(math.log2(side / OVERVIEW_SMALLEST))) if side > OVERVIEW_SMALLEST else 0
    options = {
        "BLOCKSIZE": block, "COMPRESS": compress.value if compress else "DEFLATE", "PREDICTOR": predictor,
        "BIGTIFF": "IF_SAFER", "NUM_THREADS": "ALL_CPUS", "OVERVIEW_RESAMPLING": OVERVIEW_RESAMPLING[role],
        "OVERVIEW_COUNT": levels, "OVERVIEWS": "IGNORE_EXISTING" if levels else "NONE",
    }
    if nbits:
        options["NBITS"] = nbits
    with scratch(path.with_name(final.name)) as cog:
        try:
            with native_stderr_captured(), warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                rasterio.shutil.copy(path, cog, driver="COG", **options)
        except Exception as exc:  # noqa: BLE001 - GDAL's own errors come in many classes
            raise OutputError(f"cannot write {final} as a Cloud Optimized GeoTIFF ({first_line(exc)})") from exc
        os.replace(cog, path)


# --------------------------------------------------------------------------- writing rows


class BlockRowWriter:
    """Writes rows that arrive in order, in whole blocks of rows, with an optional mask.

    Rows are copied into one preallocated block-row buffer ``[bands, block_rows, width]``
    and written when it is full, so compressed tiles are written exactly once, without GDAL re-reading or
    rewriting partial blocks. Memory: one block of rows of the output. The dataset
    stays open: whoever opened it closes it.
    """

    def __init__(self, dataset: rasterio.io.DatasetWriter, block_rows: int | None = None, mask: bool = False,
                 fill: float | None = None):
        self.dataset = dataset
        self.block_rows = min(block_rows or dataset.block_shapes[0][0], dataset.height)
        self.fill = fill
        self.buffer = np.empty((dataset.count, self.block_rows, dataset.width), dataset.dtypes[0])
        self.valid = np.empty((self.block_rows, dataset.width), bool) if mask else None
        self.next_row = 0  # image row held in buffer row 0
        self.filled = 0

    def write(self, row: int, values: np.ndarray, valid: np.ndarray) -> None:
        """Rows ``[row, row + n)``: ``values [bands, n, width]`` (or ``[n, width]`` for one
        band) and validity ``[n, width]``; invalid pixels get ``fill`` when one is set."""
        if row != self.next_row + self.filled:
            raise ValueError(f"rows must arrive in order: got {row}, expected {self.next_row + self.filled}")
        if values.ndim == 2:
            values = values[None]
        done, rows = 0, values.shape[1]
        while done < rows:
            n = min(rows - done, self.block_rows - self.filled)
            target = self.buffer[:, self.filled : self.filled + n]
            np.copyto(target, values[:, done : done + n], casting="unsafe")
            part = valid[done : done + n]
            if self.fill is not None:
                np.copyto(target, np.asarray(self.fill, target.dtype), where=~part)
            if self.valid is not None:
                self.valid[self.filled : self.filled + n] = part
            self.filled += n
            done += n
            if self.filled == self.block_rows or self.next_row + self.filled == self.dataset.height:
                self._flush()

    def finish(self) -> None:
        """Write the rows still buffered; every row of the dataset must have arrived."""
        if self.filled:
            self._flush()
        if self.next_row != self.dataset.height:
            raise ValueError(f"{self.dataset.name}: {self.next_row} of {self.dataset.height} rows were written")

    def _flush(self) -> None:
        rows = self.filled
        window = Window(0, self.next_row, self.dataset.width, rows)
        try:
            with native_stderr_captured():  # libtiff prints write failures itself
                self.dataset.write(self.buffer[:, :rows], window=window)
                if self.valid is not None:
                    self.dataset.write_mask(np.where(self.valid[:rows], 255, 0).astype(np.uint8), window=window)
        except (RasterioIOError, OSError) as exc:
            raise OutputError(f"cannot write {self.dataset.name} ({first_line(exc)})") from exc
        self.next_row += rows
        self.filled = 0


def copy_rows(path: Path, writer: BlockRowWriter, row: int, rows: int) -> None:
    """Write the ``rows`` rows of the GeoTIFF ``path`` (a strip of the output, written with
    the same kind of writer) into ``writer`` from output row ``row`` on, a block row at a
    time, with its mask: the values as they are, so the output is the one a single
    writer would have made."""
    with rasterio.open(path) as part:
        target = writer.dataset
        expected = (target.count, rows, target.width, target.dtypes[0])
        if (part.count, part.height, part.width, part.dtypes[0]) != expected:
            raise OutputError(f"{path} does not fit {target.name}: {part.count} bands of {part.width} x "
                              f"{part.height} px {part.dtypes[0]}, expected {expected[0]} of {expected[2]} x {rows} px "
                              f"{expected[3]}")
        for top in range(0, part.height, writer.block_rows):
            window = Window(0, top, part.width, min(writer.block_rows, part.height - top))
            values = part.read(window=window)
            if writer.valid is not None:
                valid = part.read_masks(1, window=window) > 0
            else:  # no mask: invalid pixels already hold the fill value
                valid = np.ones((window.height, window.width), bool)
            writer.write(row + top, values, valid)
