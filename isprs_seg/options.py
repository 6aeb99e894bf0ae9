"""The options of a run, each checked in one place, before any file is opened.

The command line builds its choices from the constants here and calls the same
``check`` methods as the Python API, so both refuse the same values with the same
sentence. Options are named as on the command line in messages (``--tile``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence, get_args

from . import contract
from .errors import InputError

# Each choice has one typed source: a Literal type for annotations, whose values are
# the checks' and the command line's choices.

#: How patches are stitched: smooth weights across overlaps, or only patch centres.
Blend = Literal["taper", "crop"]
#: Storage of probability rasters: float32 (NaN where invalid) or uint8 (x 255, masked).
ProbabilityDtype = Literal["float32", "uint8"]
#: How the model computes: float32, or TensorFlow's automatic mixed precision.
Precision = Literal["float32", "mixed"]
#: Test-time augmentation of predict: none, the four flips, or the eight rotations and reflections.
Tta = Literal["none", "flips", "d4"]
#: What a confidence raster holds: the highest class probability, or its margin over the second.
ConfidenceKind = Literal["max", "margin"]
#: Storage of feature rasters: half precision on disk (NBITS=16) or float32.
FeatureDtype = Literal["float16", "float32"]
#: Where runs are computed: this process, or Ray's workers (:mod:`isprs_seg.runs`).
EngineName = Literal["local", "ray"]
#: What a batch does after a failed input: go on with the next, or stop.
OnError = Literal["continue", "stop"]

(BLEND_MODES, PROBABILITY_DTYPES, PRECISIONS, TTA_MODES, CONFIDENCE_KINDS, FEATURE_DTYPES, ENGINES,
 ON_ERROR) = map(get_args, (Blend, ProbabilityDtype, Precision, Tta, ConfidenceKind, FeatureDtype, EngineName, OnError))

def parse_bands(text: str | None) -> tuple[int, ...] | None:
    """``"2,3"`` -> (2, 3); None stays None (choose from the file)."""
    if text is None:
        return None
    try:
        bands = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InputError(f"--bands takes 1-based band numbers such as 1,2,3, got {text!r}") from None
    if not 2 <= len(bands) <= 3 or min(bands) < 1:
        raise InputError(f"--bands takes two or three 1-based band numbers (R,G[,B]), got {text!r}")
    return bands


def parse_scale(text: str | None) -> tuple[float, float] | None:
    """``"auto"``/None -> None; ``"4095"`` -> (0, 4095); ``"100,3000"`` -> (100, 3000)."""
    if text is None or str(text).strip().lower() == "auto":
        return None
    try:
        parts = [float(p) for p in str(text).split(",")]
    except ValueError:
        raise InputError(f"--scale takes auto, MAX or MIN,MAX, got {text!r}") from None
    low, high = (0.0, parts[0]) if len(parts) == 1 else tuple(parts) if len(parts) == 2 else (0.0, 0.0)
    if len(parts) > 2 or not high > low or not (math.isfinite(low) and math.isfinite(high)):
        raise InputError(f"--scale takes auto, MAX or MIN,MAX with MAX above MIN, got {text!r}")
    return low, high


def check_choice(option: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise InputError(f"{option} must be one of {', '.join(choices)}, got {value!r}")


@dataclass(frozen=True)
class RunOptions:
    """How the image is cut, run and stitched: ``--tile``, ``--overlap``, ``--batch-size``,
    ``--blend``, ``--tta``.

    ``batch_size`` None means the model's own batch size.
    """

    tile: int = contract.DEFAULT_TILE
    overlap: int = contract.DEFAULT_OVERLAP
    batch_size: int | None = None
    blend: str = "taper"
    tta: str = "none"  # predict only

    def check(self) -> RunOptions:
        lattice = contract.NETWORK_STRIDE
        if self.tile < lattice or self.tile % lattice:
            raise InputError(f"--tile must be a positive multiple of {lattice}, got {self.tile}")
        if not 0 <= self.overlap <= self.tile - lattice:
            raise InputError(
                f"--overlap must be between 0 and {self.tile - lattice} for a {self.tile} px tile, got {self.overlap}"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {self.batch_size}")
        check_choice("--blend", self.blend, BLEND_MODES)
        check_choice("--tta", self.tta, TTA_MODES)
        return self


@dataclass(frozen=True)
class InputOptions:
    """How to read the input (``--bands``, ``--recipe``, ``--scale``, ``--normalize``, ``--gsd``).

    ``bands``: ``"R,G[,B]"`` 1-based, or None to choose from the colour interpretation;
    ``scale``: ``"auto"``, ``"MAX"`` or ``"MIN,MAX"`` (see :mod:`isprs_seg.io.recipe`).
    ``gsd``: ground sampling distance in metres to run the model at; outputs stay on
    the input's grid (:mod:`isprs_seg.io.resample`).
    """

    bands: str | None = None
    recipe: str = "pseudo-rgb"
    scale: str = "auto"
    normalize: str = "unit"
    gsd: float | None = None

    def check(self) -> InputOptions:
        parse_bands(self.bands)
        parse_scale(self.scale)
        check_choice("--recipe", self.recipe, contract.RECIPES)
        check_choice("--normalize", self.normalize, contract.NORMALIZATIONS)
        if self.gsd is not None and not (self.gsd > 0 and math.isfinite(self.gsd)):
            raise InputError(f"--gsd must be a positive number of metres, got {self.gsd}")
        return self
