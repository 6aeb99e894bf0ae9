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
from ..blend import BLEND_MODES
from ..options import FEATURE_DTYPES, PRECISIONS, PROBABILITY_DTYPES

MODEL_HELP = (
    "TF Hub handle or URL, https://.../*.tar.gz, local SavedModel directory or .tar.gz.  "
    f"[default: ${contract.MODEL_ENV_VAR}, else {contract.DEFAULT_MODEL}]"
)


def _choices(name: str, values) -> type[Enum]:
    """A command-line choice built from the library's own list of values."""
    return Enum(name, {value: value for value in values}, type=str)


Blend = _choices("Blend", BLEND_MODES)

ProbabilityDtype = _choices("ProbabilityDtype", PROBABILITY_DTYPES)
FeatureDtype = _choices("FeatureDtype", FEATURE_DTYPES)
OnError = _choices("OnError", ("continue", "stop"))


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


