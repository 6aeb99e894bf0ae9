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
import json
import logging
import os
import signal
import sys
import traceback
import warnings
from typing import Iterator, Optional

import typer

from .. import __version__, contract
from ..errors import IsprsSegError
from .supervisor import Interrupted

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


def _fail(message: str, code: int) -> None:
    _say_error(message)
    raise typer.Exit(code)


def _say_error(message: str) -> None:
    """An error that ends the command: a line on stderr and, with --json, one error record on stdout."""
    print(f"isprs-seg: error: {message}", file=sys.stderr)
    if _state["json"]:
        from ..batch import ERROR, Record

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
    from ..model import load_model

    with _reported(EXIT_USAGE):
        return load_model(handle, batch_size, device=device, precision=precision, xla=xla)


def _examples(*lines: str) -> str:
    """A help epilog of example commands, kept on their own lines."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)


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


from . import evaluate, model, process, vectorize  # noqa: E402,F401 - the commands register themselves on the app
