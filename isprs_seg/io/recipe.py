"""The input contract: which bands are red and green, how raw values become [0, 1],
and how the model input is composed from them.

The ISPRS model was trained on pseudo-RGB ``[R, G, (R + G) / 2]`` in [0, 1]. Users
bring RGB, RGBA, RGB+NIR and NIR-R-G files, 8-bit, 12-bit data in 16-bit containers
and floats. :func:`resolve_recipe` decides once per image (never per patch) from the
file's colour interpretation and whole-image statistics, with user overrides.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np
from rasterio.enums import ColorInterp, Resampling

from .. import contract
from .._tf import tensorflow
from ..errors import InputError, InputWarning

log = logging.getLogger("isprs_seg")

#: Side of the decimated read used for whole-image statistics.
_STATS_SIDE = 1024
#: Bit depths recognised in integer data, by the largest value found.
_BIT_DEPTHS = (8, 10, 12, 14, 16)


@dataclass(frozen=True)
class InputRecipe:
    """How raw bands become model input ``[h, w, 3]`` float32.

    ``bands``: 1-based band indexes read, (R, G) or (R, G, B) for ``rgb``.
    Values are mapped by ``(v - low) / (high - low)`` and clipped to [0, 1], composed
    as pseudo-RGB or RGB, then normalised (``unit``: as they are; ``isprs``: minus the
    ISPRS mean, divided by its standard deviation).
    ``mask``: validity from GDAL's ``dataset`` mask, from the ``nodata`` value only, or
    ``none`` (all pixels valid).
    ``palette``: for a colour-mapped image, its colour table (3 bytes per index): the one
    band read holds indices, which the reader expands to R, G, B (:attr:`colours`) before
    anything else, so that padding and invalid pixels are black as in an RGB image.
    """

    bands: tuple[int, ...] = (1, 2)
    recipe: str = "pseudo-rgb"
    low: float = 0.0
    high: float = 255.0
    normalize: str = "unit"
    mask: str = "dataset"
    palette: bytes | None = None

    def to_model(self, raw):
        """Raw patches ``[n, len(bands), h, w]`` to model input ``[n, h, w, 3]`` float32.

        TensorFlow operations: this runs inside the model call, so the host hands over
        the raw integers and does no per-pixel work.
        """
        tf = tensorflow()
        x = (tf.cast(raw, tf.float32) - np.float32(self.low)) / np.float32(self.high - self.low)
        x = tf.clip_by_value(x, 0.0, 1.0)
        red, green = x[:, 0], x[:, 1]
        third = (red + green) * 0.5 if self.recipe == "pseudo-rgb" else x[:, 2]
        image = tf.stack([red, green, third], axis=-1)
        if self.normalize == "isprs":
            image = (image - np.float32(contract.ISPRS_MEAN)) / np.float32(contract.ISPRS_STD)
        return image

    @property
    def graph_key(self) -> tuple:
        """What :meth:`to_model` depends on: recipes with equal keys share one traced graph."""
        return (self.recipe, self.low, self.high, self.normalize)

    @property
    def colours(self) -> np.ndarray | None:
        """The colour table ``[indices, 3]`` uint8 of a colour-mapped image, else None."""
        return None if self.palette is None else np.frombuffer(self.palette, np.uint8).reshape(-1, 3)

    def raw_layout(self, source_dtype) -> tuple[int, np.dtype]:
        """Bands and data type of the raw patches :meth:`to_model` takes from an image whose
        bands are ``source_dtype``: a colour-mapped image's come expanded to R, G, B bytes."""
        if self.palette is not None:
            return 3, np.dtype(np.uint8)
        return len(self.bands), np.dtype(source_dtype)

    def describe(self) -> str:
        names = "R,G" if self.recipe == "pseudo-rgb" else "R,G,B"
        composed = "pseudo-RGB [R, G, (R+G)/2]" if self.recipe == "pseudo-rgb" else "RGB"
        read = ("band 1 through its colour table" if self.palette is not None
                else f"bands {','.join(map(str, self.bands))}")
        text = (f"{read} as {names}, {composed}, "
                f"values {_number(self.low)}-{_number(self.high)} -> [0, 1]")
        if self.normalize == "isprs":
            text += ", normalised with the ISPRS mean and std"
        return text


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _alpha_band(src) -> int | None:
    for index, interp in zip(src.indexes, src.colorinterp):
        if interp == ColorInterp.alpha:
            return index
    return None


def _sample(src, bands: list[int]) -> np.ndarray:
    """The bands read decimated to about :data:`_STATS_SIDE` pixels a side (overviews when present)."""
    step = max(1, math.ceil(max(src.height, src.width) / _STATS_SIDE))
    shape = (len(bands), math.ceil(src.height / step), math.ceil(src.width / step))
    return src.read(bands, out_shape=shape, resampling=Resampling.nearest)


#: Share of alpha values that must be 0 or the maximum for the band to be a mask
#: (feathered edges and lossy compression leave a few values in between).
_MASK_LIKE = 0.99


def _alpha_is_a_mask(src, band: int) -> bool:
    values = _sample(src, [band])
    top = np.iinfo(values.dtype).max if np.issubdtype(values.dtype, np.integer) else 1.0
    return np.mean((values == 0) | (values == top)) >= _MASK_LIKE


def _default_bands(src, recipe: str, alpha: int | None) -> tuple[int, ...]:
    interps = dict(zip(src.colorinterp, src.indexes))
    if ColorInterp.red in interps and ColorInterp.green in interps:
        picked = (interps[ColorInterp.red], interps[ColorInterp.green], interps.get(ColorInterp.blue))
    else:
        colour = [i for i in src.indexes if i != alpha]
        picked = (colour + [None, None, None])[:3] if len(colour) >= 2 else (colour[0], colour[0], colour[0])
    if recipe == "pseudo-rgb":
        return tuple(picked[:2])
    if picked[2] is None:
        raise InputError(f"{src.name}: --recipe rgb needs a blue band; name it with --bands R,G,B")
    return tuple(picked)


def _auto_scale(src, bands: tuple[int, ...]) -> tuple[float, float, str]:
    dtype = np.dtype(src.dtypes[bands[0] - 1])
    if dtype == np.uint8:
        return 0.0, 255.0, "8-bit"
    nbits = src.tags(bands[0], ns="IMAGE_STRUCTURE").get("NBITS")
    if nbits and np.issubdtype(dtype, np.integer):
        return 0.0, float(2 ** int(nbits) - 1), f"{nbits}-bit (NBITS)"
    sample = _sample(src, sorted(set(bands)))
    if src.nodata is not None and not np.isnan(src.nodata):
        sample = sample[sample != np.asarray(src.nodata, sample.dtype)]
    top = float(np.nanmax(sample)) if sample.size else 0.0
    if np.issubdtype(dtype, np.floating):
        if top > 1.0:
            warnings.warn(
                f"{src.name}: float values reach {top:g}, above the [0, 1] assumed for float data; "
                "pass --scale MAX or MIN,MAX",
                InputWarning,
            )
        return 0.0, 1.0, "float data taken as [0, 1]"
    bits = next((b for b in _BIT_DEPTHS if top <= 2**b - 1), np.iinfo(dtype).bits)
    return 0.0, float(2**bits - 1), f"{bits}-bit (largest value {top:g})"


def resolve_recipe(
    src,
    bands: tuple[int, ...] | None = None,
    recipe: str = "pseudo-rgb",
    scale: tuple[float, float] | None = None,
    normalize: str = "unit",
) -> InputRecipe:
    """Decide how to read ``src`` once for the whole image (see the module docstring).

    ``bands``, ``scale`` as parsed by :mod:`isprs_seg.options`; ``recipe`` and
    ``normalize`` one of :data:`contract.RECIPES` and :data:`contract.NORMALIZATIONS`.
    """
    if src.colorinterp[0] == ColorInterp.palette:
        return _palette_recipe(src, bands, recipe, normalize)
    alpha = _alpha_band(src)
    mask = "dataset"
    if alpha is not None and not _alpha_is_a_mask(src, alpha):
        warnings.warn(
            f"{src.name}: band {alpha} is flagged as alpha but most of its values lie between 0 and "
            "the maximum (near-infrared, as in NAIP files?): it is not used as a mask",
            InputWarning,
        )
        mask = "nodata" if src.nodata is not None else "none"
        alpha = None
    if bands is None:
        if len([i for i in src.indexes if i != alpha]) == 1:
            warnings.warn(
                f"{src.name} has a single band: it is read as grey (R = G = B); the model was "
                "trained on colour and will do worse",
                InputWarning,
            )
        bands = _default_bands(src, recipe, alpha)
    else:
        missing = [b for b in bands if b > src.count]
        if missing:
            raise InputError(
                f"--bands {','.join(map(str, bands))}: {src.name} has {src.count} band(s), "
                f"no band {missing[0]}"
            )
        if recipe == "rgb" and len(bands) != 3:
            raise InputError("--recipe rgb needs three bands: --bands R,G,B")
        bands = bands[:2] if recipe == "pseudo-rgb" else bands
    dtypes = {src.dtypes[b - 1] for b in bands}
    if len(dtypes) > 1:
        raise InputError(f"{src.name}: bands {bands} have different data types {sorted(dtypes)}")
    if scale is None:
        low, high, how = _auto_scale(src, bands)
    else:
        (low, high), how = scale, "as given"
    chosen = InputRecipe(bands, recipe, low, high, normalize, mask)
    log.info("%s: %s (%s)", src.name, chosen.describe(), how)
    return chosen


def _palette_recipe(src, bands: tuple[int, ...] | None, recipe: str, normalize: str) -> InputRecipe:
    """A colour-mapped image: its indices are read and expanded through the colour table."""
    if bands is not None:
        raise InputError(f"{src.name} is a colour-mapped (palette) image: --bands does not apply to it")
    colormap = src.colormap(1)
    table = np.zeros((256 if src.dtypes[0] == "uint8" else 65536, 3), np.uint8)
    for index, colour in colormap.items():
        if index < len(table):
            table[index] = colour[:3]
    warnings.warn(f"{src.name} is a colour-mapped (palette) image: its indices are read as the RGB colours of its "
                  "colour table", InputWarning)
    chosen = InputRecipe((1,), recipe, 0.0, 255.0, normalize, "dataset", table.tobytes())
    log.info("%s: %s (colour table)", src.name, chosen.describe())
    return chosen
