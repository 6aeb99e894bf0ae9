"""What the tests share besides fixtures: the test rasters (core and extended), reference
inference on a whole image, and ways to run the command line and to make inputs.

Core rasters ship with the project (``tests/data``, ``sample_data``; sources and
licences in ``tests/data/SOURCES.md``). The extended set reads more rasters from
``../shared/data`` beside the checkout (``ISPRS_SEG_TEST_DATA`` elsewhere) and is
skipped, with the reason in the summary, when that folder is absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio

ROOT = Path(__file__).resolve().parents[1]

# core: shipped with the project
CORE = ROOT / "tests" / "data"
HRO_PLAIN = ROOT / "sample_data" / "colorado_springs_15cm.tif"  # USGS HRO 15 cm, 383 x 232
HRO_ALPHA = CORE / "201404_13SED190110_201404_0x1500m_CL_1_alpha.tif"
HRO_NODATA = CORE / "201404_13SED190110_201404_0x1500m_CL_1_nodata.tif"
HRO_MASK = CORE / "201404_13SED190110_201404_0x1500m_CL_1_mask.tif"
HRO_EXTMASK = CORE / "201404_13SED190110_201404_0x1500m_CL_1_extmask.tif"
HRO_COG = CORE / "cog_rgb.tif"
NAIP = CORE / "m_4208701_ne_16_060_20200902.tif"
ALPHA_MOSTLY_EMPTY = CORE / "rasterio_alpha.tif"  # 1223 x 1223, 98 % transparent
COGEO = CORE / "rasterio_cogeo.tif"  # 1024 x 1024, 0.6 m, JPEG tiles, internal mask

# extended: ../shared/data
DATA = Path(os.environ.get("ISPRS_SEG_TEST_DATA", ROOT.parent / "shared" / "data"))
ZANZIBAR = DATA / "orthophoto" / "drone_zanzibar_8cm" / "tanzania_sample.tif"  # 1000 x 1000, 7.7 cm
ISPRS = DATA / "isprs"

EXTENDED_REASON = (f"extended set: needs the test rasters of ../shared/data, not found at {DATA} "
                   "(put the shared folder beside the checkout, or set ISPRS_SEG_TEST_DATA)")

#: Marks a test that reads rasters from :data:`DATA` (the extended set).
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=EXTENDED_REASON)


def extended(path: Path):
    """``path`` as a test parameter of the extended set: skipped when :data:`DATA` is absent."""
    return pytest.param(path, marks=needs_data, id=path.stem)


def whole_image(model, path: Path, method: str = "predict") -> np.ndarray:
    """Whole-image inference, the reference for tiled runs: the entire raster in one call.

    The raw bands go through the same input recipe as in the pipeline (inside the model
    call), invalid pixels zeroed as the pipeline does, so any difference from a tiled
    run comes from tiling and stitching alone.
    """
    from isprs_seg.io.recipe import resolve_recipe

    with rasterio.open(path) as src:
        recipe = resolve_recipe(src)
        raw = src.read(list(recipe.bands))[None]
        raw[:, :, src.dataset_mask() == 0] = 0  # the model sees zeros where there is no valid data
    run = model.predict if method == "predict" else model.features
    return run(raw, 1, recipe)[0]


def valid_mask(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.dataset_mask() > 0


def half_precision(dataset) -> bool:
    """Whether a raster's bands are IEEE half floats on disk: GDAL 3.11 and later report them as
    Float16, earlier versions as Float32 with ``NBITS=16``."""
    return dataset.dtypes[0] == "float16" or dataset.tags(1, ns="IMAGE_STRUCTURE").get("NBITS") == "16"


@dataclass
class Ran:
    """How a command line run ended (the same fields in a subprocess and in-process)."""

    returncode: int
    stdout: str
    stderr: str


def cli(*args: str, stdin: str | None = None) -> Ran:
    """Run ``isprs-seg`` in this process (Typer's test runner): fast, for behaviour of the CLI."""
    from typer.testing import CliRunner

    from isprs_seg.cli import app

    result = CliRunner().invoke(app, list(args), input=stdin, catch_exceptions=False)
    return Ran(result.exit_code, result.stdout, result.stderr)


def run_cli(*args: str, stdin: str | None = None, env: dict | None = None, timeout: int = 600,
            **popen) -> subprocess.CompletedProcess:
    """Run ``isprs-seg`` in a subprocess, as a user's shell would: for signals, exit codes of the
    process itself and what native libraries print."""
    return subprocess.run(
        [sys.executable, "-m", "isprs_seg", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        **popen,
    )


def write_crop(src_path: Path, dst_path: Path, height: int, width: int, row: int = 0, col: int = 0) -> Path:
    """A georeferenced crop of a real raster (same CRS, shifted transform; losslessly stored)."""
    from rasterio.windows import Window

    with rasterio.open(src_path) as src:
        window = Window(col, row, width, height)
        profile = src.profile | {
            "width": width,
            "height": height,
            "transform": src.window_transform(window),
            "tiled": False,
            "compress": "deflate",
            "photometric": "rgb" if src.count == 3 else "minisblack",
        }
        profile.pop("blockxsize", None)
        profile.pop("blockysize", None)
        with rasterio.open(dst_path, "w", **profile) as dst:
            dst.write(src.read(window=window))
    return dst_path


def without_georeference(src_path: Path, dst_path: Path) -> Path:
    """A PNG copy of a real raster: the same pixels, no CRS and no transform."""
    with rasterio.open(src_path) as src:
        data = src.read()
    with rasterio.Env(GDAL_PAM_ENABLED=False):
        with rasterio.open(dst_path, "w", driver="PNG", width=data.shape[2], height=data.shape[1],
                           count=data.shape[0], dtype=data.dtype) as dst:
            dst.write(data)
    return dst_path


def tall_input(path: Path, height: int, width: int = 384) -> Path:
    """A tall, narrow orthophoto made by stacking crops of a real one."""
    with rasterio.open(COGEO) as src:
        block = src.read(window=((0, 512), (0, width)))
        profile = src.profile | {"height": height, "width": width, "tiled": True, "photometric": "rgb",
                                 "blockxsize": 128, "blockysize": 128, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, height, 512):
            n = min(512, height - row)
            dst.write(block[:, :n], window=((row, row + n), (0, width)))
    return path
