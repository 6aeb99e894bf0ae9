"""The options ``predict`` and ``features`` share, declared once with their help and defaults.

The choices come from the library's own constants; the checks are the library's
(:mod:`isprs_seg.options`), so the command line and the Python API refuse the same
values with the same sentence.
"""

from __future__ import annotations

import functools
import inspect
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from .. import contract
from ..options import BLEND_MODES, ENGINES, FEATURE_DTYPES, ON_ERROR, PRECISIONS, PROBABILITY_DTYPES, TTA_MODES
from ..tiling.plan import DEFAULT_STRIP_ROWS

MODEL_HELP = (
    "TF Hub handle or URL, https://.../*.tar.gz, local SavedModel directory or .tar.gz.  "
    f"[default: ${contract.MODEL_ENV_VAR}, else {contract.DEFAULT_MODEL}]"
)


def _unset(kind: type, flag: str, metavar: str, help: str) -> tuple:
    """An option that is off unless given: its type and its declaration (no default shown:
    the help says what happens without it)."""
    return Optional[kind], typer.Option(None, flag, metavar=metavar, show_default=False, help=help)


def _choices(name: str, values) -> type[Enum]:
    """A command-line choice built from the library's own list of values."""
    return Enum(name, {value: value for value in values}, type=str)


Blend = _choices("Blend", BLEND_MODES)

ProbabilityDtype = _choices("ProbabilityDtype", PROBABILITY_DTYPES)
FeatureDtype = _choices("FeatureDtype", FEATURE_DTYPES)
OnError = _choices("OnError", ON_ERROR)


#: Options every processing command takes, by group: name -> (type, typer option).
MODEL_OPTIONS = {
    "model": (Optional[str], typer.Option(None, "--model", "-m", metavar="HANDLE", help=MODEL_HELP,
                                          show_default=False)),
    "device": _unset(str, "--device", "DEVICE",
        "cpu, gpu, gpu:1 ...  [default: the first GPU if there is one, else the CPU]"),
    "precision": (str, typer.Option(
        "float32", "--precision", metavar="|".join(PRECISIONS),
        help="mixed: automatic mixed precision (float16 on GPUs with tensor cores).")),
    "xla": (bool, typer.Option(False, "--xla", help="Compile the model call with XLA.  [default: off]",
                               show_default=False)),
}
GRID_OPTIONS = {
    "tile": (int, typer.Option(contract.DEFAULT_TILE, metavar="PX", help="Patch side in pixels (a multiple of 32).")),
    "overlap": (int, typer.Option(contract.DEFAULT_OVERLAP, metavar="PX",
                                  help="Minimum overlap between neighbouring patches, in pixels.")),
    "batch_size": (int, typer.Option(contract.DEFAULT_BATCH_SIZE, "--batch-size", metavar="N",
                                     help="Patches per model call.")),
    "blend": (Blend, typer.Option(
        "taper", help="taper: smooth weights across overlaps; crop: only patch centres count.")),
}
INPUT_OPTIONS = {
    "bands": _unset(str, "--bands", "R,G[,B]",
        "1-based red and green (and blue) bands.  [default: from the colour interpretation, else 1,2,3]"),
    "recipe": (str, typer.Option(
        "pseudo-rgb", "--recipe", metavar="|".join(contract.RECIPES),
        help="pseudo-rgb: [R, G, (R+G)/2] as the model was trained; rgb: the three bands as they are.")),
    "scale": (str, typer.Option(
        "auto", "--scale", metavar="auto|MAX|MIN,MAX",
        help="Raw values mapped to [0, 1]; auto: 8-bit /255, 16-bit by the bit depth found, float as [0, 1].")),
    "normalize": (str, typer.Option(
        "unit", "--normalize", metavar="|".join(contract.NORMALIZATIONS),
        help="unit: [0, 1] (model card); isprs: minus the ISPRS mean, over its std.")),
    "gsd": _unset(float, "--gsd", "METRES",
        "Run the model at this ground sampling distance (trained at 0.05-0.09 m); outputs stay on the "
             "input's grid.  [default: the input's own]"),
}
BATCH_OPTIONS = {
    "out_dir": _unset(Path, "--out-dir", "DIR",
        "Write the outputs of each input into DIR, named after the input.  [default: none: give -o or "
             "--out-dir; DIR is created if missing]"),
    "quiet": (bool, typer.Option(False, "--quiet", "-q", show_default=False,
                                 help="No progress and no notes; warnings, errors and skips stay.  [default: off]")),
    "as_json": (bool, typer.Option(False, "--json", show_default=False,
                                   help="Print one JSON object per input instead of paths.  [default: off]")),
    "overwrite": (bool, typer.Option(
        False, "--overwrite", show_default=False,
        help="Redo every input.  [default: off: skip inputs whose outputs are complete and made with the same "
             "settings; refuse to replace outputs made with other settings]")),
    "dry_run": (bool, typer.Option(
        False, "--dry-run", show_default=False,
        help="Only say what each input would take (patches, nodata skipped, peak memory, output sizes, time), "
             "without loading the model or writing anything.  [default: off]")),
    "on_error": (OnError, typer.Option(
        "continue", "--on-error", help="After a failed input: continue with the next, or stop.")),
}
#: Described in each command's own text (Typer would print its Python type beside it).
Engine = _choices("Engine", ENGINES)

#: Where the work runs: this process, or workers on Ray (the engines of :mod:`isprs_seg.runs`).
ENGINE_OPTIONS = {
    "engine": (Engine, typer.Option(
        "local", "--engine", help="local: this process; ray: Ray workers (every GPU of a server or a cluster), "
                                  "one raster in strips, the same outputs.")),
    "ray_address": _unset(str, "--ray-address", "ADDR|auto",
        "With --engine ray: attach to this Ray cluster (auto: the one this job runs in, as with ray job "
             "submit).  [default: a private Ray cluster on this machine]"),
    "workers": _unset(int, "--workers", "N",
        "With --engine ray: workers, each loading the model once.  [default: one per GPU, else one]"),
    "gpus_per_worker": _unset(float, "--gpus-per-worker", "G",
        "With --engine ray: GPUs each worker takes.  [default: 1 where there are GPUs, else 0]"),
    "cpus_per_worker": _unset(float, "--cpus-per-worker", "C",
        "With --engine ray: CPUs each worker takes (and TensorFlow's threads on a CPU worker).  "
             "[default: 1 with a GPU, else the CPUs shared among the workers]"),
    "strip_rows": (int, typer.Option(
        DEFAULT_STRIP_ROWS, "--strip-rows", metavar="R",
        help="With --engine ray: rows per unit of work (a multiple of 512); the rows at each strip border cost "
             "about 640 / R extra.")),
}

PREDICT_OPTIONS = {
    "probabilities": (bool, typer.Option(False, "--probabilities", show_default=False,
                                         help="Also write per-class probabilities (OUT.probabilities.tif).  "
                                              "[default: off]")),
    "probabilities_dtype": (ProbabilityDtype, typer.Option("float32", "--probabilities-dtype",
                                                           help="float32, or uint8 scaled 0-255.")),
    "confidence": _unset(str, "--confidence", "max|margin",
        "Also write OUT.confidence.tif: the highest class probability (max) or its margin over the second "
             "(margin), x 255.  [default: none]"),
    "tta": (str, typer.Option("none", "--tta", metavar="|".join(TTA_MODES),
                              help="Test-time augmentation: average the probabilities over the 4 flips or the 8 "
                                   "rotations and reflections of each patch (4 or 8 times the cost).")),
    "cog": (bool, typer.Option(True, "--cog/--no-cog", show_default=False,
                               help="Cloud Optimized GeoTIFFs with overviews, or plain tiled GeoTIFFs.  "
                                    "[default: --cog]")),
    "stac": (bool, typer.Option(False, "--stac", show_default=False,
                                help="Also write a STAC Item describing the outputs (OUT.stac.json).  [default: off]")),
    "vector": _unset(str, "--vector", "CLASSES",
        "Also write polygons of these classes (building,car or all) to "
                                                "OUT.polygons.gpkg, as vectorize does.  [default: none]"),
}
FEATURE_OPTIONS = {
    "dtype": (FeatureDtype, typer.Option("float16", "--dtype", help="float16 (half precision on disk) or float32.")),
    "pool": _unset(str, "--pool", "SIZE",
        "Also write mean-pooled embeddings per grid cell of SIZE metres (10, 10m) or pixels (256px) to "
             "OUT.pooled.gpkg.  [default: none]"),
    "pool_format": (str, typer.Option(
        "gpkg", "--pool-format", metavar="gpkg|parquet",
        help="The pooled table as a GeoPackage (OUT.pooled.gpkg) or a GeoParquet 1.1 file (OUT.pooled.parquet).")),
    "preview": _unset(str, "--preview", "PNG",
        "Also write a PCA false-colour quick-look; with several inputs use a {stem} pattern.  [default: none]"),
    "stac": (bool, typer.Option(False, "--stac", show_default=False,
                                help="Also write a STAC Item describing the outputs (OUT.stac.json).  [default: off]")),
    "cog": (bool, typer.Option(False, "--cog/--no-cog", show_default=False,
                               help="A Cloud Optimized GeoTIFF with overviews, or a plain tiled GeoTIFF.  "
                                    "[default: --no-cog]")),
}
VECTOR_OPTIONS = {
    "classes": _unset(str, "--classes", "NAMES",
        "Classes to keep, by name or number: building,car.  [default: all]"),
    "min_area": _unset(float, "--min-area", "M2",
        "Drop polygons smaller than this, in square metres.  "
                                                    "[default: keep all]"),
    "simplify": _unset(float, "--simplify", "METRES",
        "Simplify each polygon with this tolerance, keeping it valid.  "
                                                    "[default: none: pixel edges]"),
    "format": _unset(str, "--format", "gpkg|parquet",
        "gpkg: a GeoPackage; parquet: a GeoParquet 1.1 file (DIR/<stem>.polygons.parquet), the same rows.  "
        "[default: from -o's extension (.parquet), else gpkg]"),
}
INPUTS = typer.Argument(..., metavar="INPUT", show_default=False, hidden=True)


def with_options(*groups: dict):
    """Append the options of ``groups`` to a command's own parameters (Typer reads the signature)."""

    def decorate(command):
        signature = inspect.signature(command)
        own = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
                  for group in groups for name, (kind, option) in group.items()]

        @functools.wraps(command)
        def run(**kwargs):
            return command(**kwargs)

        run.__signature__ = signature.replace(parameters=own + shared)
        return run

    return decorate


def output_option(what: str, metavar: str = "OUT.tif"):
    """``-o``: where the one input's main output goes."""
    return typer.Option(None, "--output", "-o", metavar=metavar, show_default=False,
                        help=f"{what} path, for one input.  [default: none: give -o or --out-dir]")


#: What INPUT is, for the help of every command that takes rasters.
INPUTS_HELP = "INPUT: rasters, or GDAL paths such as /vsicurl/...; - reads more paths from stdin, one per line."


def command(app, examples, *groups: dict, inputs: str = INPUTS_HELP):
    """Register a command on ``app`` with its examples (help epilog), the shared option
    ``groups`` and a sentence on what its INPUT arguments are (after its own help)."""

    def decorate(function):
        function.__doc__ = f"{inspect.cleandoc(function.__doc__)}\n\n{inputs}\n"
        return app.command(epilog=examples)(with_options(*groups)(function))

    return decorate
