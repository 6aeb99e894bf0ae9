"""Many inputs in one go: plan every output before any work, skip what is done, keep
going after a failure, and describe each input's outcome in one record.

The command line prints the records (paths, or JSON lines with ``--json``); the
Python API can use the same functions.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from ..errors import InputError, IsprsSegError, OutputError, first_line
from ..io.outputs import check_output_path, listed, output_paths
from ..io.provenance import existing_outputs

log = logging.getLogger("isprs_seg")

#: Statuses of a record.
OK, SKIPPED, ERROR = "ok", "skipped", "error"


def plan_outputs(
    inputs: Sequence[str], main: str, extra: Sequence[str] = (), *,
    output: str | Path | None = None, out_dir: str | Path | None = None, given: dict | None = None,
    suffixes: dict | None = None, create: bool = True,
) -> list[dict[str, Path]]:
    """The outputs of each input by role (see :func:`isprs_seg.io.outputs.output_paths`).

    ``given`` and ``suffixes`` as there, the same for every input (use ``{stem}`` to tell them apart).
    Everything that would make the batch go wrong is refused here, before any work:
    no input, both or neither of ``output`` and ``out_dir``, ``output`` with several
    inputs, two outputs that are the same file, an output that is one of the inputs.
    ``out_dir`` is created (with its parents) when it does not exist; with ``create``
    False (a dry run) it is only checked that it could be.
    """
    if output is not None and out_dir is not None:
        raise InputError("give either -o/--output or --out-dir, not both")
    if not inputs:
        raise InputError("no input files given")
    if output is None and out_dir is None:
        raise InputError("give -o OUT.tif for one input or --out-dir DIR")
    if output is not None and len(inputs) > 1:
        flags = [p for p in inputs if p.lower() in ("true", "false", "yes", "no")]
        hint = f" ({flags[0]!r} is not a file: flags such as --probabilities take no value)" if flags else ""
        raise InputError(f"-o/--output names one output but {len(inputs)} inputs were given: use --out-dir{hint}")
    planned = [output_paths(path, main, extra, output=output, out_dir=out_dir, given=given, suffixes=suffixes)
               for path in inputs]
    sources = {_identity(path): path for path in inputs}
    writer: dict[str, str] = {}
    for path, outputs in zip(inputs, planned):
        for role, target in outputs.items():
            key = _identity(target)
            if key in sources:
                raise InputError(f"the {role} output of {path} would overwrite the input {sources[key]}")
            if key in writer:
                hint = (f"make the {role} path a pattern with {{stem}}" if role in (given or {}) else
                        "give inputs with distinct file names, or run them into different --out-dir")
                raise InputError(f"{writer[key]} and {path} would both write {target}: {hint}")
            writer[key] = path
    if out_dir is not None and create:
        try:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the output directory {out_dir} ({first_line(exc)})") from exc
    for outputs in planned:
        for target in outputs.values():
            if create or target.parent.is_dir():
                check_output_path(target)
            else:  # a dry run: the directory would be created
                _check_creatable(target.parent)
    return planned


def _check_creatable(directory: Path) -> None:
    """Refuse a directory that could not be created: its nearest existing ancestor must be a writable directory."""
    ancestor = directory.absolute()
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if ancestor == directory.absolute() and ancestor.is_dir():
        return
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK):
        raise OutputError(f"cannot create the output directory {directory} ({ancestor} is not a writable directory)")


def _identity(path: str | Path) -> str:
    """The same string for two spellings of the same local file; GDAL paths as they are."""
    text = str(path)
    return text if text.startswith("/vsi") else os.path.realpath(text)


@dataclass
class Record:
    """The outcome of one input. Every key is always present, None where it does not apply."""

    input: str | None  # None in the record of an error that ended the whole command
    status: str = OK
    outputs: list[str] = field(default_factory=list)
    error: str | None = None
    width: int | None = None
    height: int | None = None
    tiles: int | None = None
    skipped_tiles: int | None = None
    tile: int | None = None
    overlap: int | None = None
    batch_size: int | None = None
    seconds: float | None = None
    class_fractions: dict[str, float] | None = None
    polygons: int | None = None  # vectorize only
    exception: BaseException | None = field(default=None, repr=False)  # for --debug, never serialised

    def as_dict(self) -> dict:
        data = asdict(self)
        del data["exception"]
        return data


_RECORD_FIELDS = {f.name for f in fields(Record)}


def error_message(path: str, exc: BaseException) -> str:
    """One sentence naming the input: ours as they are, the libraries' first line."""
    if isinstance(exc, IsprsSegError):
        text = str(exc)
    else:
        from rasterio.errors import RasterioError

        text = first_line(exc)
        if not isinstance(exc, (RasterioError, OSError)):
            text = f"unexpected {type(exc).__name__}: {text} (run with --debug for the traceback)"
    return text if path in text else f"{path}: {text}"


#: Runs one input: (input, its outputs by role) -> a result with the fields of a :class:`Record`.
Work = Callable[[str, dict], object]


def run_batch(
    inputs: Sequence[str], planned: Sequence[dict[str, Path]], work: Work, *,
    expected: Mapping[str, dict] | Callable[[str], Mapping[str, dict]],
    overwrite: bool = False, stop_on_error: bool = False, fields: dict | None = None,
) -> Iterator[Record]:
    """Run ``work`` for each input and yield its record as soon as it is known.

    ``expected``: the settings of this run by output role
    (:func:`isprs_seg.io.provenance.run_settings`), or a function of the input that gives
    them. Unless ``overwrite``, an input whose
    outputs all exist, are complete and were made with these settings is skipped, and
    one with an output made with other settings fails with a sentence saying which
    (:func:`isprs_seg.io.provenance.existing_outputs`); incomplete outputs are made again
    with a note. A failure is recorded and the batch goes on (unless
    ``stop_on_error``); KeyboardInterrupt and other BaseExceptions end it. ``fields``:
    values every record starts with.
    """
    for path, outputs in zip(inputs, planned):
        record = Record(path, **(fields or {}))
        started = time.perf_counter()
        try:
            settings = expected(path) if callable(expected) else expected
            existing = None if overwrite else existing_outputs(outputs, settings)
        except Exception as exc:  # noqa: BLE001 - an input whose settings cannot even be worked out
            record.status, record.error, record.exception = ERROR, error_message(path, exc), exc
            yield record
            if stop_on_error:
                return
            continue
        if existing is not None and existing.complete:
            record.status, record.seconds = SKIPPED, 0.0
            record.outputs = [str(p) for p in listed(outputs)]
        elif existing is not None and existing.conflict:
            record.status, record.seconds = ERROR, 0.0
            record.error = f"{existing.conflict}; use --overwrite to replace it"
        else:
            for note in existing.notes if existing else ():
                log.warning("%s", note)
            try:
                result = work(path, outputs)
            except Exception as exc:  # noqa: BLE001 - one bad input must not end the batch
                record.status, record.error, record.exception = ERROR, error_message(path, exc), exc
                record.seconds = round(time.perf_counter() - started, 3)
            else:
                for key, value in asdict(result).items():
                    if key != "input" and key in _RECORD_FIELDS:
                        setattr(record, key, value)
                record.seconds = round(record.seconds, 3)
                record.class_fractions = record.class_fractions or None  # features: none
        yield record
        if record.status == ERROR and stop_on_error:
            return
