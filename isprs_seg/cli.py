"""The ``isprs-seg`` command line: a thin shell over the Python API.

stdout carries only results (the paths written, JSON lines with ``--json``, or
``model info``); progress, notes, warnings and errors go to stderr. An error is one
sentence naming the input, without a traceback unless ``--debug``.

Exit codes: 0 every input succeeded or was skipped; 1 some inputs failed; 2 usage
error or the model could not be loaded; 128 + signal number when interrupted
(130 for Ctrl-C, 143 for SIGTERM), after removing partial outputs.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import os
import signal
import sys
import traceback
import warnings
from enum import Enum
from pathlib import Path
from typing import Iterator, List, Optional

import typer

from . import __version__, contract
from .blend import BLEND_MODES
from .errors import IsprsSegError
from .supervisor import Interrupted
from .options import FEATURE_DTYPES, PRECISIONS, PROBABILITY_DTYPES, FeatureOptions, InputOptions, RunOptions

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Semantic segmentation of large aerial orthophotos with the ISPRS HRNetV2-W48 model.",
)
model_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Inspect or download the model.")
app.add_typer(model_app, name="model")

EXIT_FAILED_INPUTS = 1
EXIT_USAGE = 2

_state = {"debug": False, "json": False}


def _choices(name: str, values) -> type[Enum]:
    """A command-line choice built from the library's own list of values."""
    return Enum(name, {value: value for value in values}, type=str)


Blend = _choices("Blend", BLEND_MODES)

ProbabilityDtype = _choices("ProbabilityDtype", PROBABILITY_DTYPES)
FeatureDtype = _choices("FeatureDtype", FEATURE_DTYPES)
OnError = _choices("OnError", ("continue", "stop"))


def _fail(message: str, code: int) -> None:
    _say_error(message)
    raise typer.Exit(code)


def _say_error(message: str) -> None:
    """An error that ends the command: a line on stderr and, with --json, one error record on stdout."""
    print(f"isprs-seg: error: {message}", file=sys.stderr)
    if _state["json"]:
        from .batch import ERROR, Record

        print(json.dumps(Record(None, ERROR, error=message).as_dict()), flush=True)


@contextlib.contextmanager
def _reported(code: int = EXIT_USAGE) -> Iterator[None]:
    """Turn our errors into one line on stderr and an exit code (traceback with --debug)."""
    try:
        yield
    except IsprsSegError as exc:
        if _state["debug"]:
            traceback.print_exc()
        _fail(str(exc), code)


@contextlib.contextmanager
def _notes(quiet: bool) -> Iterator[None]:
    """Notes (``isprs-seg: ...``) and warnings on stderr for the length of one command."""
    notes = logging.getLogger("isprs_seg")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("isprs-seg: %(message)s"))
    saved = notes.level, notes.propagate, warnings.showwarning
    notes.addHandler(handler)
    notes.propagate = False
    notes.setLevel(logging.WARNING if quiet else logging.INFO)
    if not _state["debug"]:
        warnings.showwarning = lambda message, *args, **kwargs: print(f"isprs-seg: warning: {message}",
                                                                      file=sys.stderr)
    try:
        yield
    finally:
        notes.removeHandler(handler)
        notes.level, notes.propagate, warnings.showwarning = saved


def _version(value: bool) -> None:
    if value:
        print(f"isprs-seg {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and TensorFlow's own log lines."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"], _state["json"] = debug, False
    if debug:
        os.environ["ISPRS_SEG_DEBUG"] = "1"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"  # TensorFlow is imported later, on first use


MODEL_HELP = (
    "TF Hub handle or URL, https://.../*.tar.gz, local SavedModel directory or .tar.gz.  "
    f"[default: ${contract.MODEL_ENV_VAR}, else {contract.DEFAULT_MODEL}]"
)


def _load(handle: Optional[str], batch_size: int = contract.DEFAULT_BATCH_SIZE, device: Optional[str] = None,
          precision: str = "float32", xla: bool = False):
    from .model import load_model

    with _reported(EXIT_USAGE):
        return load_model(handle, batch_size, device=device, precision=precision, xla=xla)


def _examples(*lines: str) -> str:
    """A help epilog of example commands, kept on their own lines."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


# --------------------------------------------------------------------------- model


@model_app.command("info", epilog=_examples("isprs-seg model info", "isprs-seg model info --model isprs-hrnet/ --json"))
def model_info(
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="HANDLE", show_default=False,
                                        help=MODEL_HELP),
    as_json: bool = typer.Option(False, "--json", show_default=False, help="Print one JSON object.  [default: off]"),
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


@model_app.command("fetch", epilog=_examples(
    "isprs-seg model fetch --to isprs-hrnet/",
    "isprs-seg predict ortho.tif -o ortho.classes.tif --model isprs-hrnet/   # on the offline machine",
))
def model_fetch(
    to: Path = typer.Option(..., "--to", metavar="DIR", show_default=False,
                            help="Directory to create: pass it as --model on an offline machine."),
    model: Optional[str] = typer.Option(None, "--model", "-m", metavar="HANDLE", show_default=False,
                                        help=MODEL_HELP),
) -> None:
    """Download and unpack the model into a directory usable offline with --model DIR."""
    from .model import fetch_model

    with _reported(EXIT_USAGE):
        fetched = fetch_model(model, to)
    print(to)
    print(f"isprs-seg: fetched {fetched.handle}; on an offline machine use --model {to}", file=sys.stderr)


# --------------------------------------------------------------------------- shared options

#: Options every processing command takes, by group: name -> (type, typer option).
MODEL_OPTIONS = {
    "model": (Optional[str], typer.Option(None, "--model", "-m", metavar="HANDLE", help=MODEL_HELP,
                                          show_default=False)),
    "device": (Optional[str], typer.Option(
        None, "--device", metavar="DEVICE", show_default=False,
        help="cpu, gpu, gpu:1 ...  [default: the first GPU if there is one, else the CPU]")),
    "precision": (str, typer.Option("float32", "--precision", metavar="|".join(PRECISIONS),
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
    "bands": (Optional[str], typer.Option(
        None, "--bands", metavar="R,G[,B]", show_default=False,
        help="1-based red and green (and blue) bands.  [default: from the colour interpretation, else 1,2,3]")),
    "recipe": (str, typer.Option(
        "pseudo-rgb", "--recipe", metavar="|".join(contract.RECIPES),
        help="pseudo-rgb: [R, G, (R+G)/2] as the model was trained; rgb: the three bands as they are.")),
    "scale": (str, typer.Option(
        "auto", "--scale", metavar="auto|MAX|MIN,MAX",
        help="Raw values mapped to [0, 1]; auto: 8-bit /255, 16-bit by the bit depth found, float as [0, 1].")),
    "normalize": (str, typer.Option(
        "unit", "--normalize", metavar="|".join(contract.NORMALIZATIONS), help="unit: [0, 1] (model card); isprs: minus the ISPRS mean, over its std.")),
    "gsd": (Optional[float], typer.Option(
        None, "--gsd", metavar="METRES", show_default=False,
        help="Run the model at this ground sampling distance (trained at 0.05-0.09 m); outputs stay on the "
             "input's grid.  [default: the input's own]")),
}
BATCH_OPTIONS = {
    "out_dir": (Optional[Path], typer.Option(
        None, "--out-dir", metavar="DIR", show_default=False,
        help="Write the outputs of each input into DIR, named after the input.  [default: none: give -o or "
             "--out-dir; DIR is created if missing]")),
    "quiet": (bool, typer.Option(False, "--quiet", "-q", show_default=False,
                                 help="No progress and no notes; warnings, errors and skips stay.  [default: off]")),
    "as_json": (bool, typer.Option(False, "--json", show_default=False,
                                   help="Print one JSON object per input instead of paths.  [default: off]")),
    "overwrite": (bool, typer.Option(
        False, "--overwrite", show_default=False,
        help="Redo every input.  [default: off: skip inputs whose outputs are complete and made with the same "
             "settings; refuse to replace outputs made with other settings]")),
    "on_error": (OnError, typer.Option(
        "continue", "--on-error", help="After a failed input: continue with the next, or stop.")),
}
#: Described in each command's own text (Typer would print its Python type beside it).
INPUTS = typer.Argument(..., metavar="INPUT", show_default=False, hidden=True)


def _with_options(*groups: dict):
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


# --------------------------------------------------------------------------- batches


def _expand_inputs(inputs: List[str]) -> List[str]:
    """Paths as given; ``-`` reads more paths from stdin (blank lines and # comments skipped)."""
    paths: List[str] = []
    for item in inputs:
        if item == "-":
            paths += [line.strip() for line in sys.stdin if line.strip() and not line.strip().startswith("#")]
        else:
            paths.append(item)
    return paths


def _run_command(command: str, paths: List[str], output: Optional[Path], main: str, extra: List[str],
                 given: dict, specific: dict, work, options: dict) -> None:
    """What ``predict`` and ``features`` share: check everything, load the model, run the batch, report.

    ``work(path, outputs, model, run, reading, progress)`` runs one input; ``specific``:
    the command's own options that change pixels (see :mod:`isprs_seg.provenance`).
    """
    from .batch import ERROR, SKIPPED, plan_outputs, run_batch
    from .progress import BatchProgress
    from .provenance import run_settings

    quiet = options["quiet"]
    _state["json"] = options["as_json"]
    with _notes(quiet):
        with _reported(EXIT_USAGE):
            run = RunOptions(options["tile"], options["overlap"], options["batch_size"], options["blend"].value).check()
            reading = InputOptions(options["bands"], options["recipe"], options["scale"], options["normalize"],
                                   options["gsd"]).check()
            planned = plan_outputs(paths, main, extra, output=output, out_dir=options["out_dir"], given=given)
        model = _load(options["model"], options["batch_size"], options["device"], options["precision"],
                      options["xla"])
        with _reported(EXIT_USAGE):
            if command == "features":
                model.check_features()
            else:
                model.check_classes()
            expected = run_settings(model, run, reading, planned[0], **specific)
        logging.getLogger("isprs_seg").info("running the model on %s (%s)", model.device_description, model.handle)
        progress = BatchProgress(paths, quiet)
        index = {path: i for i, path in enumerate(paths)}

        def one(path: str, outputs: dict):
            return work(path, outputs, model, run, reading, progress.bar(index[path]))

        failed = 0
        for record in run_batch(paths, planned, one, expected=expected, overwrite=options["overwrite"],
                                stop_on_error=options["on_error"].value == "stop",
                                fields={"tile": run.tile, "overlap": run.overlap, "batch_size": run.batch_size}):
            if record.status == ERROR:
                failed += 1
                if _state["debug"] and record.exception is not None:
                    traceback.print_exception(record.exception)
                print(f"isprs-seg: error: {record.error}", file=sys.stderr)
            elif record.status == SKIPPED:  # said even with -q and --json: nothing was written
                print(f"isprs-seg: {record.input}: skipped, its outputs are complete and were made with the same "
                      "settings (--overwrite to redo)", file=sys.stderr)
            progress.finished(index[record.input], record.seconds, ran=record.status != SKIPPED)
            if options["as_json"]:
                print(json.dumps(record.as_dict()), flush=True)
            elif record.status == "ok":
                for written in record.outputs:
                    print(written, flush=True)
    if failed:
        raise typer.Exit(EXIT_FAILED_INPUTS)


@app.command(epilog=_examples(
    "isprs-seg predict sample_data/colorado_springs_15cm.tif -o sample.classes.tif --probabilities",
    "isprs-seg predict tiles/*.tif --out-dir results/ --gsd 0.08",
    "find /data -name '*.tif' | isprs-seg predict - --out-dir results/ --json > runs.jsonl",
))
@_with_options(GRID_OPTIONS, INPUT_OPTIONS, MODEL_OPTIONS, BATCH_OPTIONS)
def predict(
    inputs: List[str] = INPUTS,
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="OUT.tif", show_default=False,
                                          help="Class raster path, for one input.  [default: none: give -o or --out-dir]"),
    probabilities: bool = typer.Option(False, "--probabilities", show_default=False,
                                       help="Also write per-class probabilities (OUT.probabilities.tif).  "
                                            "[default: off]"),
    probabilities_dtype: ProbabilityDtype = typer.Option(
        "float32", "--probabilities-dtype", help="float32, or uint8 scaled 0-255."),
    **options,
) -> None:
    """Segment rasters into georeferenced class rasters (OUT.tif, or DIR/<stem>.classes.tif).

    INPUT: rasters, or GDAL paths such as /vsicurl/...; - reads more paths from stdin, one per line.
    """
    from .pipeline import predict_raster

    def work(path, outputs, model, run, reading, progress):
        return predict_raster(
            path, outputs["classes"], model=model, probabilities=outputs.get("probabilities"), tile=run.tile,
            overlap=run.overlap, batch_size=run.batch_size, blend=run.blend,
            probabilities_dtype=probabilities_dtype.value, reading=reading, progress=progress,
        )

    _run_command("predict", _expand_inputs(inputs), output, "classes", ["probabilities"] if probabilities else [], {},
                 {"probabilities_dtype": probabilities_dtype.value}, work, options)


@app.command(epilog=_examples(
    "isprs-seg features sample_data/colorado_springs_15cm.tif -o sample.features.tif --preview sample.png",
    "isprs-seg features tiles/*.tif --out-dir feats/ --pool 10 --preview 'feats/{stem}.png'",
))
@_with_options(GRID_OPTIONS, INPUT_OPTIONS, MODEL_OPTIONS, BATCH_OPTIONS)
def features(
    inputs: List[str] = INPUTS,
    output: Optional[Path] = typer.Option(None, "--output", "-o", metavar="OUT.tif", show_default=False,
                                          help="Feature raster path, for one input.  [default: none: give -o or --out-dir]"),
    dtype: FeatureDtype = typer.Option("float16", "--dtype", help="float16 (half precision on disk) or float32."),
    pool: Optional[str] = typer.Option(
        None, "--pool", metavar="SIZE", show_default=False,
        help="Also write mean-pooled embeddings per grid cell of SIZE metres (10, 10m) or pixels (256px) to "
             "OUT.pooled.gpkg.  [default: none]",
    ),
    preview: Optional[str] = typer.Option(
        None, "--preview", metavar="PNG", show_default=False,
        help="Also write a PCA false-colour quick-look; with several inputs use a {stem} pattern.  "
             "[default: none]",
    ),
    **options,
) -> None:
    """Write dense 1/4-resolution features (OUT.tif, or DIR/<stem>.features.tif).

    INPUT: rasters, or GDAL paths such as /vsicurl/...; - reads more paths from stdin, one per line.
    """
    from .pipeline import extract_features

    from .embeddings import pool_text

    with _reported(EXIT_USAGE):
        FeatureOptions(dtype.value, pool).check()

    def work(path, outputs, model, run, reading, progress):
        return extract_features(
            path, outputs["features"], model=model, tile=run.tile, overlap=run.overlap, batch_size=run.batch_size,
            blend=run.blend, dtype=dtype.value, pool=pool, pooled=outputs.get("pooled"),
            preview=outputs.get("preview"), reading=reading, progress=progress,
        )

    given = {"preview": preview} if preview else {}
    specific = {"dtype": dtype.value, "pool": pool_text(pool) if pool else None}
    _run_command("features", _expand_inputs(inputs), output, "features", ["pooled"] if pool else [], given, specific,
                 work, options)


#: The command-line framework's usage error (unknown option, bad value), whichever click Typer uses.
_UsageError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def main() -> None:
    from . import supervisor

    try:
        code = supervisor.run(_dispatch)
    except BrokenPipeError:  # the reader of stdout went away (`| head`): stop quietly, as shell tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 128 + signal.SIGPIPE
    sys.exit(code)


def _dispatch() -> int:
    """Run the command line; usage errors are one line like every other error."""
    try:
        code = app(prog_name="isprs-seg", standalone_mode=False)
    except _UsageError as exc:
        if exc.ctx is not None and type(exc).__name__ == "NoArgsIsHelpError":
            print(exc.ctx.get_help())
            return 0
        where = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
        _state["json"] = "--json" in sys.argv[1:]  # the command line could not be parsed to say it
        _say_error(f"{exc.format_message().rstrip('.')}{where}")
        return EXIT_USAGE
    except Interrupted as exc:
        print(exc.message, file=sys.stderr)
        return 128 + exc.signum
    return code if isinstance(code, int) else 0
