"""Errors whose message is meant for the user: one clear sentence, no traceback."""


class IsprsSegError(Exception):
    """Base class: the message says what failed and, where there is one, the fix."""


class ModelError(IsprsSegError):
    """The model could not be found, downloaded, loaded or called as expected."""


class InputError(IsprsSegError):
    """An input raster or an option value cannot be used."""


class OutputError(IsprsSegError):
    """An output could not be written."""
