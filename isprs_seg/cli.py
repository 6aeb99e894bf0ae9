"""The ``isprs-seg`` command line: a thin shell over the Python API.

stdout carries only results (paths written, or ``model info``); progress, warnings
and errors go to stderr. Errors are one sentence, without a traceback unless
``--debug``. Exit codes: 0 success, 1 some inputs failed, 2 usage error or the model
could not be loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
import warnings
from enum import Enum
from pathlib import Path
from typing import Iterator, List, Optional

import typer

from . import __version__, contract
from .errors import InputError, IsprsSegError, ModelError

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


def _report_input_error(path: str, exc: Exception) -> None:
    """One line on stderr for an input that failed; the traceback only with --debug."""
    if _state["debug"]:
        traceback.print_exc()
    if isinstance(exc, IsprsSegError):
        message = str(exc) if path in str(exc) else f"{path}: {exc}"
    else:
        message = f"{path}: unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)"
    print(f"isprs-seg: error: {message}", file=sys.stderr)


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
    else:
        warnings.showwarning = _print_warning


MODEL_HELP = (
    "TF Hub handle or URL, https://.../*.tar.gz, local SavedModel directory or .tar.gz "
    f"[default: ${contract.MODEL_ENV_VAR} or {contract.DEFAULT_MODEL}]"
)


def _load(handle: Optional[str], batch_size: Optional[int] = None):
    from .model import load_model

    with _reported(EXIT_USAGE):
        if batch_size is None:
            return load_model(handle)
        return load_model(handle, batch_size=batch_size)


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
    print(
        f"isprs-seg: fetched {fetched.handle}; on an offline machine use --model {to}",
        file=sys.stderr,
    )


# --------------------------------------------------------------------------- predict


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


def _input_stem(path: str) -> str:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


def _plan_outputs(inputs: List[str], output: Optional[Path], out_dir: Optional[Path], suffix: str) -> List[Path]:
    """Output path of each input, or a usage error before any work is done."""
    if output and out_dir:
        _fail("give either -o/--output or --out-dir, not both", EXIT_USAGE)
    if not inputs:
        _fail("no input files given", EXIT_USAGE)
    if output:
        if len(inputs) > 1:
            _fail(f"-o/--output names one output but {len(inputs)} inputs were given: use --out-dir", EXIT_USAGE)
        return [output]
    if not out_dir:
        _fail("give -o OUT.tif for one input or --out-dir DIR", EXIT_USAGE)
    if not out_dir.is_dir():
        _fail(f"output directory {out_dir} does not exist", EXIT_USAGE)
    seen: dict[str, str] = {}
    for path in inputs:
        stem = _input_stem(path)
        if stem in seen:
            _fail(f"{seen[stem]} and {path} would both write {out_dir / (stem + suffix)}", EXIT_USAGE)
        seen[stem] = path
    return [out_dir / f"{_input_stem(p)}{suffix}" for p in inputs]


def _progress_bar(path: str, quiet: bool):
    """A factory for tqdm bars on stderr: patches done/total, rate, time left."""
    from tqdm import tqdm

    def make(total: int):
        return tqdm(total=total, desc=Path(path).name, unit="patch", file=sys.stderr, disable=quiet, dynamic_ncols=True)

    return make


@app.command()
def predict(
    inputs: List[str] = typer.Argument(..., metavar="INPUT...", help="Rasters to segment; - reads paths from stdin."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Class raster path (one input)."),
    out_dir: Optional[Path] = typer.Option(None, "--out-dir", help="Write DIR/<stem>.classes.tif per input."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    tile: int = typer.Option(contract.DEFAULT_TILE, help="Patch side in pixels (a multiple of 32)."),
    overlap: int = typer.Option(contract.DEFAULT_OVERLAP, help="Minimum overlap between neighbouring patches."),
    batch_size: int = typer.Option(contract.DEFAULT_BATCH_SIZE, "--batch-size", help="Patches per model call."),
    blend: Blend = typer.Option(Blend.taper, help="taper: smooth weights across overlaps; crop: only patch centres count."),
    probabilities: bool = typer.Option(False, "--probabilities", help="Also write per-class probabilities."),
    probabilities_dtype: ProbabilityDtype = typer.Option(
        ProbabilityDtype.float32, "--probabilities-dtype", help="float32, or uint8 scaled 0-255."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Segment rasters into georeferenced class rasters (and probabilities)."""
    from .pipeline import check_options, predict_raster, probabilities_path_for

    paths = _expand_inputs(inputs)
    outputs = _plan_outputs(paths, output, out_dir, ".classes.tif")
    with _reported(EXIT_USAGE):
        check_options(tile, overlap, batch_size, blend.value, probabilities_dtype.value)
    loaded = _load(model, batch_size)
    failed = 0
    for path, out in zip(paths, outputs):
        probs = None
        if probabilities:
            probs = out_dir / f"{_input_stem(path)}.probabilities.tif" if out_dir else probabilities_path_for(out)
        try:
            result = predict_raster(
                path, out, model=loaded, probabilities=probs, tile=tile, overlap=overlap,
                batch_size=batch_size, blend=blend.value,
                probabilities_dtype=probabilities_dtype.value, progress=_progress_bar(path, quiet),
            )
        except Exception as exc:  # noqa: BLE001 - one bad input must not end the batch
            failed += 1
            _report_input_error(path, exc)
            continue
        for written in result.outputs:
            print(written, flush=True)
    if failed:
        raise typer.Exit(EXIT_FAILED_INPUTS)


def main() -> None:
    app(prog_name="isprs-seg")
