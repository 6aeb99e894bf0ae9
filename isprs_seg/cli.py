"""The ``isprs-seg`` command line: a thin shell over the Python API.

stdout carries only results (the paths written, JSON lines with ``--json``, or
``model info``); progress, warnings and errors go to stderr. An error is one sentence
naming the input, without a traceback unless ``--debug``.

Exit codes: 0 every input succeeded or was skipped; 1 some inputs failed; 2 usage
error or the model could not be loaded; 128 + signal number when interrupted
(130 for Ctrl-C, 143 for SIGTERM), after removing partial outputs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import time
import traceback
import warnings
from dataclasses import asdict
from enum import Enum
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import typer

from . import __version__, contract
from .errors import IsprsSegError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Semantic segmentation of large aerial orthophotos with the ISPRS HRNetV2-W48 model.",
)
model_app = typer.Typer(no_args_is_help=True, help="Inspect or download the model.")
app.add_typer(model_app, name="model")

EXIT_FAILED_INPUTS = 1
EXIT_USAGE = 2

_state = {"debug": False}


class Blend(str, Enum):
    taper = "taper"
    crop = "crop"


class ProbabilityDtype(str, Enum):
    float32 = "float32"
    uint8 = "uint8"


class FeatureDtype(str, Enum):
    float16 = "float16"
    float32 = "float32"


class OnError(str, Enum):
    cont = "continue"
    stop = "stop"


class Interrupted(BaseException):
    """SIGINT or SIGTERM: unwinds like an exception so partial outputs are removed."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _on_signal(signum, frame) -> None:
    raise Interrupted(signum)


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"isprs-seg: warning: {message}", file=sys.stderr)


def _fail(message: str, code: int) -> None:
    print(f"isprs-seg: error: {message}", file=sys.stderr)
    raise typer.Exit(code)


@contextlib.contextmanager
def _reported(code: int = EXIT_USAGE) -> Iterator[None]:
    """Turn our errors into one line on stderr and an exit code (traceback with --debug)."""
    try:
        yield
    except IsprsSegError as exc:
        if _state["debug"]:
            traceback.print_exc()
        _fail(str(exc), code)


def _error_message(path: str, exc: Exception) -> str:
    """One sentence naming the input: ours as they are, the libraries' first line."""
    if isinstance(exc, IsprsSegError):
        text = str(exc)
    else:
        from rasterio.errors import RasterioError

        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if isinstance(exc, OSError) and exc.strerror:
            detail = exc.strerror + (f": {exc.filename}" if exc.filename else "")
        if isinstance(exc, (RasterioError, OSError)):
            text = detail
        else:
            text = f"unexpected {type(exc).__name__}: {detail} (run with --debug for the traceback)"
    return text if path in text else f"{path}: {text}"


def _version(value: bool) -> None:
    if value:
        print(f"isprs-seg {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and TensorFlow's own log lines."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"] = debug
    if debug:
        os.environ["ISPRS_SEG_DEBUG"] = "1"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"  # TensorFlow is imported later, on first use
    else:
        warnings.showwarning = _print_warning
        # GDAL's own error printer would add raw lines next to our one-sentence errors;
        # failures still raise (and are checked) through rasterio.
        os.environ.setdefault("CPL_LOG", os.devnull)


MODEL_HELP = (
    "TF Hub handle or URL, https://.../*.tar.gz, local SavedModel directory or .tar.gz "
    f"[default: ${contract.MODEL_ENV_VAR} or {contract.DEFAULT_MODEL}]"
)


def _load(handle: Optional[str], batch_size: int = contract.DEFAULT_BATCH_SIZE, device: Optional[str] = None,
          precision: str = "float32", xla: bool = False):
    from .model import load_model

    with _reported(EXIT_USAGE):
        return load_model(handle, batch_size, device=device, precision=precision, xla=xla)


# --------------------------------------------------------------------------- model


@model_app.command("info")
def model_info(
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Load the model and describe it: source, calling convention, classes, features."""
    info = _load(model).info()
    if as_json:
        print(json.dumps(info, indent=2))
        return
    features = (
        f"{info['feature_channels']} channels at 1/{info['feature_stride']} resolution"
        if info["feature_channels"] else "not available (no get_features)"
    )
    lines = [
        f"model:        {info['handle']}",
        f"loaded from:  {info['loaded_from']}",
        f"input:        {info['input']}",
        f"recipe:       {info['input_recipe']}",
        "methods:      " + ", ".join(f"{k} ({v})" for k, v in info["methods"].items()),
        f"output:       {info['output']}",
        f"features:     {features}",
        f"defaults:     tile {info['default_tile']}, overlap {info['default_overlap']}, "
        f"network stride {info['network_stride']}",
        "classes:",
    ]
    lines += [f"  {c['index']}  {c['color']}  {c['name']}" for c in info["classes"]]
    print("\n".join(lines))


@model_app.command("fetch")
def model_fetch(
    to: Path = typer.Option(..., "--to", help="Directory to create: pass it as --model on an offline machine."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
) -> None:
    """Download and unpack the model into a directory usable offline with --model DIR."""
    from .model import fetch_model

    with _reported(EXIT_USAGE):
        fetched = fetch_model(model, to)
    print(to)
    print(f"isprs-seg: fetched {fetched.handle}; on an offline machine use --model {to}", file=sys.stderr)


# --------------------------------------------------------------------------- batches


def _expand_inputs(inputs: List[str]) -> List[str]:
    """Paths as given; ``-`` reads more paths from stdin (blank lines and # comments skipped)."""
    paths: List[str] = []
    for item in inputs:
        if item == "-":
            for line in sys.stdin:
                line = line.strip()
                if line and not line.startswith("#"):
                    paths.append(line)
        else:
            paths.append(item)
    return paths


def input_stem(path: str) -> str:
    """``/data/a/ortho.tif`` and ``/vsizip/x.zip/ortho.tif`` -> ``ortho``."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


def _plan(inputs: List[str], output: Optional[Path], out_dir: Optional[Path], suffix: str) -> List[Path]:
    """The main output path of each input, or a usage error before any work is done."""
    if output and out_dir:
        _fail("give either -o/--output or --out-dir, not both", EXIT_USAGE)
    if not inputs:
        _fail("no input files given", EXIT_USAGE)
    if output:
        if len(inputs) > 1:
            _fail(f"-o/--output names one output but {len(inputs)} inputs were given: use --out-dir", EXIT_USAGE)
        from .raster import check_output_path

        with _reported(EXIT_USAGE):
            check_output_path(output)
        return [output]
    if not out_dir:
        _fail("give -o OUT.tif for one input or --out-dir DIR", EXIT_USAGE)
    if not out_dir.is_dir():
        _fail(f"output directory {out_dir} does not exist", EXIT_USAGE)
    seen: dict[str, str] = {}
    for path in inputs:
        stem = input_stem(path)
        if stem in seen:
            _fail(
                f"{seen[stem]} and {path} would both write {out_dir / (stem + suffix)}: "
                "give inputs with distinct file names, or run them into different --out-dir",
                EXIT_USAGE,
            )
        seen[stem] = path
    return [out_dir / f"{input_stem(p)}{suffix}" for p in inputs]


def _progress(path: str, quiet: bool):
    """A factory for tqdm bars on stderr: patches done/total, rate, time left."""
    from tqdm import tqdm

    def make(total: int):
        return tqdm(total=total, desc=Path(path).name, unit="patch", file=sys.stderr, disable=quiet,
                    dynamic_ncols=True)

    return make


def _run_batch(
    paths: List[str],
    planned: List[List[Optional[Path]]],
    work: Callable[[str, List[Optional[Path]], Callable], object],
    *,
    quiet: bool,
    as_json: bool,
    overwrite: bool,
    on_error: OnError,
    settings: dict,
) -> None:
    """Run ``work(input, outputs, progress)`` for each input; report and set the exit code.

    ``planned[i]`` holds the outputs of input ``i`` (None for an optional output not
    asked for); when they all exist already the input is skipped unless ``overwrite``.
    """
    failed = 0
    for path, outputs in zip(paths, planned):
        # every key in every record, null where it does not apply, for tools that read them
        record = {"input": path, "status": "ok", "outputs": [], "error": None, "width": None, "height": None,
                  "tiles": None, "skipped_tiles": None, **settings, "seconds": None, "class_fractions": None}
        started = time.perf_counter()
        expected = [p for p in outputs if p is not None]
        if not overwrite and all(p.is_file() for p in expected):
            record.update(status="skipped", outputs=[str(p) for p in expected], seconds=0.0)
            if not as_json and not quiet:
                print(f"isprs-seg: {path}: skipped, its outputs exist (--overwrite to redo)", file=sys.stderr)
        else:
            try:
                result = work(path, outputs, _progress(path, quiet))
            except Exception as exc:  # noqa: BLE001 - one bad input must not end the batch
                failed += 1
                if _state["debug"]:
                    traceback.print_exc()
                message = _error_message(path, exc)
                print(f"isprs-seg: error: {message}", file=sys.stderr)
                record.update(status="error", error=message, seconds=round(time.perf_counter() - started, 3))
            else:
                record.update({k: v for k, v in asdict(result).items() if k != "input"})
                record["seconds"] = round(record["seconds"], 3)
                record["class_fractions"] = record["class_fractions"] or None  # features: none
                if not as_json:
                    for written in result.outputs:
                        print(written, flush=True)
        if as_json:
            print(json.dumps(record), flush=True)
        if failed and on_error is OnError.stop:
            break
    if failed:
        raise typer.Exit(EXIT_FAILED_INPUTS)


def _check_common(tile: int, overlap: int, batch_size: int, blend: Blend, bands: Optional[str], recipe: str,
                  scale: str, normalize: str, gsd: Optional[float], quiet: bool):
    """Validate the options predict and features share; set up notes on stderr."""
    from .pipeline import InputOptions, check_options

    reading = InputOptions(bands=bands, recipe=recipe, scale=scale, normalize=normalize, gsd=gsd)
    with _reported(EXIT_USAGE):
        check_options(tile, overlap, batch_size, blend.value)
        reading.check()
    notes = logging.getLogger("isprs_seg")
    if not notes.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("isprs-seg: %(message)s"))
        notes.addHandler(handler)
        notes.propagate = False
    notes.setLevel(logging.WARNING if quiet else logging.INFO)
    return reading


INPUTS = typer.Argument(..., metavar="INPUT...", help="Rasters (or GDAL paths); - reads paths from stdin.")
OUT_DIR = typer.Option(None, "--out-dir", help="Write the outputs of each input into DIR, named after it.")
MODEL = typer.Option(None, "--model", "-m", help=MODEL_HELP)
TILE = typer.Option(contract.DEFAULT_TILE, help="Patch side in pixels (a multiple of 32).")
OVERLAP = typer.Option(contract.DEFAULT_OVERLAP, help="Minimum overlap between neighbouring patches.")
BATCH = typer.Option(contract.DEFAULT_BATCH_SIZE, "--batch-size", help="Patches per model call.")
BLEND = typer.Option(Blend.taper, help="taper: smooth weights across overlaps; crop: only patch centres count.")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bar.")
JSON = typer.Option(False, "--json", help="Print one JSON object per input instead of paths.")
OVERWRITE = typer.Option(False, "--overwrite", help="Redo inputs whose outputs exist (default: skip them).")
ON_ERROR = typer.Option(OnError.cont, "--on-error", help="After a failed input: continue with the next, or stop.")
BANDS = typer.Option(None, "--bands", metavar="R,G[,B]",
                     help="1-based red and green (and blue) bands [default: from the colour interpretation, else 1,2,3].")
RECIPE = typer.Option("pseudo-rgb", "--recipe", metavar="pseudo-rgb|rgb",
                      help="pseudo-rgb: [R, G, (R+G)/2] as the model was trained; rgb: the three bands as they are.")
SCALE = typer.Option("auto", "--scale", metavar="auto|MAX|MIN,MAX",
                     help="Raw values mapped to [0, 1]; auto: 8-bit /255, 16-bit by the bit depth found, float as [0, 1].")
NORMALIZE = typer.Option("unit", "--normalize", metavar="unit|isprs",
                         help="unit: [0, 1] (model card); isprs: minus the ISPRS mean, over its std.")
DEVICE = typer.Option(None, "--device", metavar="DEVICE",
                      help="cpu, gpu, gpu:1 ... [default: the first GPU if there is one, else the CPU].")
PRECISION = typer.Option("float32", "--precision", metavar="float32|mixed",
                         help="mixed: automatic mixed precision (float16 on GPUs with tensor cores).")
XLA = typer.Option(False, "--xla", help="Compile the model call with XLA.")
GSD = typer.Option(None, "--gsd", metavar="METRES",
                   help="Run the model at this ground sampling distance (trained at 0.05-0.09 m); "
                        "outputs stay on the input's grid.")


@app.command()
def predict(
    inputs: List[str] = INPUTS,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Class raster path (one input)."),
    out_dir: Optional[Path] = OUT_DIR,
    model: Optional[str] = MODEL,
    tile: int = TILE,
    overlap: int = OVERLAP,
    batch_size: int = BATCH,
    blend: Blend = BLEND,
    probabilities: bool = typer.Option(False, "--probabilities", help="Also write per-class probabilities."),
    probabilities_dtype: ProbabilityDtype = typer.Option(
        ProbabilityDtype.float32, "--probabilities-dtype", help="float32, or uint8 scaled 0-255."
    ),
    bands: Optional[str] = BANDS,
    recipe: str = RECIPE,
    scale: str = SCALE,
    normalize: str = NORMALIZE,
    gsd: Optional[float] = GSD,
    device: Optional[str] = DEVICE,
    precision: str = PRECISION,
    xla: bool = XLA,
    quiet: bool = QUIET,
    as_json: bool = JSON,
    overwrite: bool = OVERWRITE,
    on_error: OnError = ON_ERROR,
) -> None:
    """Segment rasters into georeferenced class rasters (OUT.tif, DIR/<stem>.classes.tif)."""
    from .pipeline import predict_raster, probabilities_path_for

    paths = _expand_inputs(inputs)
    mains = _plan(paths, output, out_dir, ".classes.tif")
    reading = _check_common(tile, overlap, batch_size, blend, bands, recipe, scale, normalize, gsd, quiet)
    planned = [
        [main, (out_dir / f"{input_stem(path)}.probabilities.tif" if out_dir else probabilities_path_for(main))
         if probabilities else None]
        for path, main in zip(paths, mains)
    ]
    loaded = _load(model, batch_size, device, precision, xla)

    def work(path: str, outputs: List[Path], progress):
        return predict_raster(
            path, outputs[0], model=loaded, probabilities=outputs[1],
            tile=tile, overlap=overlap, batch_size=batch_size, blend=blend.value,
            probabilities_dtype=probabilities_dtype.value, reading=reading, progress=progress,
        )

    _run_batch(paths, planned, work, quiet=quiet, as_json=as_json, overwrite=overwrite, on_error=on_error,
               settings={"tile": tile, "overlap": overlap, "batch_size": batch_size})


@app.command()
def features(
    inputs: List[str] = INPUTS,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Feature raster path (one input)."),
    out_dir: Optional[Path] = OUT_DIR,
    model: Optional[str] = MODEL,
    tile: int = TILE,
    overlap: int = OVERLAP,
    batch_size: int = BATCH,
    blend: Blend = BLEND,
    dtype: FeatureDtype = typer.Option(FeatureDtype.float16, "--dtype", help="float16 (half precision on disk) or float32."),
    pool: Optional[str] = typer.Option(
        None, "--pool", metavar="SIZE",
        help="Also write mean-pooled embeddings per grid cell of SIZE metres (or 256px) to <name>.pooled.gpkg.",
    ),
    preview: Optional[str] = typer.Option(
        None, "--preview", metavar="PNG",
        help="Also write a PCA false-colour quick-look; with several inputs use a {stem} pattern.",
    ),
    bands: Optional[str] = BANDS,
    recipe: str = RECIPE,
    scale: str = SCALE,
    normalize: str = NORMALIZE,
    gsd: Optional[float] = GSD,
    device: Optional[str] = DEVICE,
    precision: str = PRECISION,
    xla: bool = XLA,
    quiet: bool = QUIET,
    as_json: bool = JSON,
    overwrite: bool = OVERWRITE,
    on_error: OnError = ON_ERROR,
) -> None:
    """Write dense 1/4-resolution features (OUT.tif, DIR/<stem>.features.tif)."""
    from .pipeline import extract_features, pooled_path_for

    paths = _expand_inputs(inputs)
    mains = _plan(paths, output, out_dir, ".features.tif")
    reading = _check_common(tile, overlap, batch_size, blend, bands, recipe, scale, normalize, gsd, quiet)
    if preview and len(paths) > 1 and "{stem}" not in preview:
        _fail("--preview names one file but several inputs were given: use a pattern such as "
              "'previews/{stem}.png'", EXIT_USAGE)
    planned = [
        [main, (out_dir / f"{input_stem(path)}.pooled.gpkg" if out_dir else pooled_path_for(main)) if pool else None,
         Path(preview.replace("{stem}", input_stem(path))) if preview else None]
        for path, main in zip(paths, mains)
    ]
    with _reported(EXIT_USAGE):
        if pool:
            from .embeddings import parse_pool_spec, require_pyogrio

            parse_pool_spec(pool)
            require_pyogrio()
    loaded = _load(model, batch_size, device, precision, xla)
    with _reported(EXIT_USAGE):
        loaded.check_features()

    def work(path: str, outputs: List[Optional[Path]], progress):
        return extract_features(
            path, outputs[0], model=loaded, tile=tile, overlap=overlap, batch_size=batch_size,
            blend=blend.value, dtype=dtype.value, pool=pool, pooled=outputs[1], preview=outputs[2],
            reading=reading, progress=progress,
        )

    _run_batch(paths, planned, work, quiet=quiet, as_json=as_json, overwrite=overwrite, on_error=on_error,
               settings={"tile": tile, "overlap": overlap, "batch_size": batch_size})


def main() -> None:
    # Every block is read once and written once: GDAL's default cache (5 % of RAM) would
    # only hold blocks that are never used again and grow with the image.
    os.environ.setdefault("GDAL_CACHEMAX", "64")
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        app(prog_name="isprs-seg")
    except Interrupted as exc:
        name = signal.Signals(exc.signum).name
        print(f"isprs-seg: interrupted ({name}); partial outputs were removed", file=sys.stderr)
        sys.exit(128 + exc.signum)
