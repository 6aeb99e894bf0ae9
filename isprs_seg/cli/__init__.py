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
import dataclasses
import json
import logging
import os
import signal
import sys
import traceback
import warnings
from dataclasses import dataclass
from typing import Iterator, NoReturn, Optional

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

@dataclass
class Settings:
    """What the whole command line is told (``--debug``) and whether the command speaks JSON
    (``--json``). Kept on Typer's context by the main callback; each command enters them
    (:func:`entered`) and tells its notes and errors through them."""

    debug: bool = False
    json: bool = False

    def error(self, message: str, record: dict | None = None, exception: BaseException | None = None) -> None:
        """The one way an error is told: its traceback with --debug (when there is one), a
        line on stderr, and with --json the error ``record`` on stdout (by default the batch
        record of an error that ended the command)."""
        if self.debug and exception is not None:
            traceback.print_exception(exception)
        print(f"isprs-seg: error: {message}", file=sys.stderr)
        if self.json:
            if record is None:
                from ..runs.batch import ERROR, Record

                record = Record(None, ERROR, error=message).as_dict()
            print(json.dumps(record), flush=True)

    def fail(self, message: str, code: int) -> NoReturn:
        self.error(message)
        raise typer.Exit(code)

    @contextlib.contextmanager
    def reported(self, code: int = EXIT_USAGE) -> Iterator[None]:
        """Our errors as one line on stderr and an exit code (traceback with --debug)."""
        try:
            yield
        except IsprsSegError as exc:
            self.error(str(exc), exception=exc)
            raise typer.Exit(code) from None

    @contextlib.contextmanager
    def notes(self, quiet: bool) -> Iterator[None]:
        """Notes (``isprs-seg: ...``) and warnings on stderr for the length of one command."""
        notes = logging.getLogger("isprs_seg")
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("isprs-seg: %(message)s"))
        saved = notes.level, notes.propagate, warnings.showwarning
        notes.addHandler(handler)
        notes.propagate = False
        notes.setLevel(logging.WARNING if quiet else logging.INFO)
        if not self.debug:
            warnings.showwarning = lambda message, *args, **kwargs: print(f"isprs-seg: warning: {message}",
                                                                          file=sys.stderr)
        try:
            yield
        finally:
            notes.removeHandler(handler)
            notes.level, notes.propagate, warnings.showwarning = saved


def entered(ctx: typer.Context, as_json: bool = False) -> Settings:
    """The settings a command runs with: those of the main callback, with its ``--json``."""
    found = ctx.find_object(Settings)
    return dataclasses.replace(found or Settings(), json=as_json)


def _version(value: bool) -> None:
    if value:
        print(f"isprs-seg {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and TensorFlow's own log lines."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    ctx.obj = Settings(debug=debug)
    if debug:
        os.environ["ISPRS_SEG_DEBUG"] = "1"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"  # TensorFlow is imported later, on first use


def _load(settings: Settings, handle: Optional[str], batch_size: int = contract.DEFAULT_BATCH_SIZE,
          device: Optional[str] = None, precision: str = "float32", xla: bool = False):
    from ..model import load_model

    with settings.reported(EXIT_USAGE):
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
        message = f"{exc.format_message().rstrip('.')}{where}"
        # the command line could not be parsed to say whether --json was given: its words do
        Settings(json="--json" in sys.argv[1:]).error(message)
        return EXIT_USAGE
    except Interrupted as exc:
        print(exc.message, file=sys.stderr)
        return 128 + exc.signum
    return code if isinstance(code, int) else 0


from . import evaluate, model, process, vectorize  # noqa: E402,F401 - the commands register themselves on the app
