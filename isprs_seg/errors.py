"""Errors and warnings whose message is meant for the user: one clear sentence, no traceback."""

from __future__ import annotations


class IsprsSegError(Exception):
    """Base class: the message says what failed and, where there is one, the fix."""


class ModelError(IsprsSegError):
    """The model could not be found, downloaded, loaded or called as expected."""


class InputError(IsprsSegError):
    """An input raster or an option value cannot be used."""


class OutputError(IsprsSegError):
    """An output could not be written."""


class EngineError(IsprsSegError):
    """The distributed engine could not be started or reached (see :mod:`isprs_seg.runs.cluster`)."""


class IsprsSegWarning(UserWarning):
    """Something the user should know about an input or output; processing goes on."""


class InputWarning(IsprsSegWarning):
    """An input is read in a way the user may not expect (an assumed value range, a band
    that is not used as a mask, no georeferencing): the outputs may not be what was meant."""


class OutputWarning(IsprsSegWarning):
    """An output differs from what was asked in a way the user should know (cells rounded to
    whole feature pixels, an empty preview)."""


def first_line(exc: BaseException) -> str:
    """The most specific one-line reason an exception gives, without a final full stop.

    rasterio wraps GDAL's own error as the cause of a generic one ("... see previous
    exception"), and urllib puts the reason in ``exc.reason``: both are unwrapped.
    """
    while exc.__cause__ is not None and "previous exception" in str(exc):
        exc = exc.__cause__
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror + (f": {exc.filename}" if exc.filename else "")
    else:
        text = str(getattr(exc, "reason", None) or exc)
    lines = text.strip().splitlines()
    return lines[0].rstrip(".") if lines else type(exc).__name__
