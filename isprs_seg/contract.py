"""The inference contract of the ISPRS HRNetV2-W48 model, in one place.

Everything the rest of the package needs to know about what the model expects and
what its outputs mean lives here: the default handle, class names and colours, the
input recipe, the strides and the default patch geometry.
"""

from __future__ import annotations

from dataclasses import dataclass

#: TF Hub handle of the model this tool is built for (tfhub.dev now redirects to
#: Kaggle Models, ``google/hrnet/tensorFlow2/isprs-hrnetv2-w48/1``).
DEFAULT_MODEL = "https://tfhub.dev/google/HRNet/isprs-hrnetv2-w48/1"

#: Other addresses serving a handle's SavedModel as a ``.tar.gz``, tried in order when the
#: handle's own download fails: Kaggle Models' public download of the same model version
#: (``/api/v1/models/<owner>/<model>/<framework>/<variation>/<version>/download``).
MODEL_MIRRORS: dict[str, tuple[str, ...]] = {
    DEFAULT_MODEL: ("https://www.kaggle.com/api/v1/models/google/hrnet/tensorFlow2/isprs-hrnetv2-w48/1/download",),
}

#: ``sha256:...`` of the official model's SavedModel files (see ``isprs_seg.model.hub.saved_model_digest``),
#: None while no copy has been verified. ``isprs-seg model fetch --verify`` reports the digest of
#: what it fetched and warns when it differs from this one.
DEFAULT_MODEL_DIGEST: str | None = None

#: Environment variable that replaces :data:`DEFAULT_MODEL`.
MODEL_ENV_VAR = "ISPRS_SEG_MODEL"


@dataclass(frozen=True)
class ClassInfo:
    index: int
    name: str
    color: tuple[int, int, int]


#: Output channels of ``predict`` in order, with the ISPRS benchmark colours.
#: Channel 0 is the extra "background" (unlabelled) class of the model card.
CLASSES: tuple[ClassInfo, ...] = (
    ClassInfo(0, "background", (0, 0, 0)),
    ClassInfo(1, "impervious surfaces", (255, 255, 255)),
    ClassInfo(2, "building", (0, 0, 255)),
    ClassInfo(3, "low vegetation", (0, 255, 255)),
    ClassInfo(4, "tree", (0, 255, 0)),
    ClassInfo(5, "car", (255, 255, 0)),
    ClassInfo(6, "clutter", (255, 0, 0)),
)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)

#: Class raster value for pixels without a valid input pixel.
CLASS_NODATA = 255

#: The deepest HRNet branch runs at 1/32 of the input resolution: patch origins on
#: this lattice see the same sampling phase everywhere.
NETWORK_STRIDE = 32

#: ``get_features`` returns ``ceil(H / 4) x ceil(W / 4)`` pixels.
FEATURE_STRIDE = 4

#: Default patch side and minimum overlap between neighbouring patches, in pixels.
DEFAULT_TILE = 768
DEFAULT_OVERLAP = 128

#: Default number of patches per model call.
DEFAULT_BATCH_SIZE = 4

#: Host memory one call of HRNetV2-W48 adds on a CPU in float32: resident bytes per input
#: pixel of the batch; address space: a fixed reserve (TensorFlow's thread pools and
#: allocator arenas) plus bytes per pixel beyond a batch of ``MODEL_CALL_ADDRESS_KNEE``
#: pixels. Measured with the W48 stand-in, which has the real architecture, under
#: TensorFlow 2.21 with batches of 1 to 4 patches of 256 to 768 px (memory.py uses them).
MODEL_CALL_RESIDENT_PER_PIXEL = 520
MODEL_CALL_ADDRESS_FIXED = 370 * 2**20
MODEL_CALL_ADDRESS_KNEE = 500_000
MODEL_CALL_ADDRESS_PER_PIXEL = 1000

#: ``get_features`` channels: the four HRNetV2 branches (48 + 96 + 192 + 384) concatenated.
FEATURE_CHANNELS = 720

#: HRNetV2-W48's weights: 65.8 M float32 parameters (on the device when it runs on a GPU).
MODEL_WEIGHT_BYTES = 65_807_239 * 4

#: What a process uses once TensorFlow is imported and HRNetV2-W48 loaded on the CPU,
#: before its first call: resident and address space (measured with the W48 stand-in
#: under TensorFlow 2.21). A dry run, which loads no model, starts its forecast here.
MODEL_LOADED_RESIDENT = 1030 * 2**20
MODEL_LOADED_ADDRESS = 2280 * 2**20

#: Where HRNetV2-W48's speed is known, in model-input pixels per second (patch pixels,
#: overlaps counted) in float32: per CPU core, from this project's benchmark on 2 cores
#: (0.29 Mpx/s; more cores are assumed to scale linearly, an upper bound), and on GPUs
#: by the name TensorFlow reports (mmsegmentation's published 13.5 Mpx/s on a V100).
MODEL_PIXELS_PER_SECOND = {"CPU core": 0.143e6, "V100": 13.5e6}

#: Input recipe the model was trained with: pseudo-RGB ``[R, G, (R + G) / 2]``
#: (the blue channel replaced by the mean of red and green), values in [0, 1].
INPUT_RECIPE = "pseudo-RGB [R, G, (R+G)/2], values in [0, 1]"

#: How the input bands are composed: ``pseudo-rgb`` as above, or ``rgb`` (three bands
#: as they are, a domain shift for this model).
RECIPES = ("pseudo-rgb", "rgb")

#: How [0, 1] values are normalised: ``unit`` as they are (the model card), ``isprs``
#: with the ISPRS mean and standard deviation below (the authors' benchmark code).
NORMALIZATIONS = ("unit", "isprs")

#: ISPRS statistics of [0, 1] pseudo-RGB (the authors' benchmark code normalised
#: with them; the model card feeds plain [0, 1]).
ISPRS_MEAN = (0.33909638, 0.36251904, 0.34982737)
ISPRS_STD = (0.14050266, 0.13874620, 0.13703808)
