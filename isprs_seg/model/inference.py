"""Model layer: load a SavedModel, detect how to call it, and call it in fixed-shape batches.

Knows nothing of rasters: it takes batches of float32 images ``[n, h, w, 3]`` in the
model's input space (or raw patches with an input recipe applied inside the call) and
returns class probabilities or feature maps as numpy arrays. Where a handle leads is
:mod:`isprs_seg.model.hub`'s business, and how to call it is found by :mod:`isprs_seg.model.probe`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import dataclass, field

import numpy as np

from .. import contract
from .._tf import tensorflow
from ..errors import ModelError, first_line
from ..options import PRECISIONS
from .hub import DamagedCache, ModelSource, check_destination, copy_saved_model, forget, resolve, saved_model_digest
from .probe import detect, find_method, invoke

log = logging.getLogger("isprs_seg")


@dataclass
class Model:
    """A loaded model with its detected calling convention and output layout.

    Call :meth:`predict` and :meth:`features` with float32 images ``[n, h, w, 3]``;
    batches are padded to ``batch_size`` so every model call has the same shape.
    """

    source: ModelSource
    num_classes: int
    feature_channels: int | None
    convention: str  # "tensor": one [B, H, W, 3] tensor; "list": a list of [H, W, 3] images
    max_batch: int | None  # None: any batch size; 1: one image per call
    outputs_probabilities: bool
    methods: dict[str, str]  # method name -> "attribute" / "signature"
    batch_size: int = contract.DEFAULT_BATCH_SIZE
    device: str | None = None  # TensorFlow device name, e.g. "/GPU:0"; None: TensorFlow's choice
    precision: str = "float32"  # or "mixed"
    xla: bool = False  # compile each model call with XLA
    _obj: object = field(default=None, repr=False)
    _calls: dict = field(default_factory=dict, repr=False)
    _fits: int | None = field(default=None, repr=False)  # patches per call after running out of memory

    # -- description -------------------------------------------------------------
    @property
    def handle(self) -> str:
        return self.source.handle

    @functools.cached_property
    def digest(self) -> str:
        """``sha256:...`` of the SavedModel's files (names and contents): the model's identity."""
        return saved_model_digest(self.source.path)

    @property
    def class_names(self) -> tuple[str, ...]:
        if self.num_classes == len(contract.CLASSES):
            return contract.CLASS_NAMES
        return tuple(f"class {i}" for i in range(self.num_classes))

    @property
    def class_colors(self) -> tuple[tuple[int, int, int], ...]:
        if self.num_classes == len(contract.CLASSES):
            return tuple(c.color for c in contract.CLASSES)
        rng = np.random.default_rng(0)
        return tuple(tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(self.num_classes))

    @property
    def input_description(self) -> str:
        if self.convention == "tensor":
            return "float32 tensor [batch, height, width, 3]"
        per_call = "one image per call" if self.max_batch == 1 else "batched"
        return f"list of float32 [height, width, 3] images ({per_call})"

    @property
    def device_description(self) -> str:
        """The device that runs the model, for people: ``GPU:0 (NVIDIA H100 80GB HBM3)`` or ``CPU``."""
        return describe_device(self.device)

    def info(self) -> dict:
        """Everything `isprs-seg model info` reports, as plain data."""
        return {
            "handle": self.source.handle,
            "path": str(self.source.path),
            "loaded_from": self.source.describe(),
            "input": self.input_description,
            "input_recipe": contract.INPUT_RECIPE,
            "methods": dict(self.methods),
            "output": "probabilities" if self.outputs_probabilities else "logits (softmax applied)",
            "classes": [
                {"index": i, "name": n, "color": "#{:02x}{:02x}{:02x}".format(*c)}
                for i, (n, c) in enumerate(zip(self.class_names, self.class_colors))
            ],
            "digest": self.digest,
            "device": self.device_description,
            "feature_channels": self.feature_channels,
            "feature_stride": contract.FEATURE_STRIDE,
            "network_stride": contract.NETWORK_STRIDE,
            "default_tile": contract.DEFAULT_TILE,
            "default_overlap": contract.DEFAULT_OVERLAP,
        }

    # -- inference ---------------------------------------------------------------
    def predict(self, images: np.ndarray, batch_size: int | None = None, prepare=None,
                tta: str | None = None) -> np.ndarray:
        """Class probabilities ``[n, h, w, classes]``.

        ``images``: float32 model input ``[n, h, w, 3]``; or, with ``prepare`` (an
        :class:`isprs_seg.io.recipe.InputRecipe`), raw patches ``[n, bands, h, w]`` of any
        dtype that ``prepare.to_model`` turns into model input inside the TensorFlow
        call (the host hands over compact integers and does no per-pixel work).
        ``tta``: test-time augmentation, ``flips`` (the four flips) or ``d4`` (the eight
        rotations and reflections): each patch is transformed, run, transformed back and
        the probabilities averaged, inside the call (4 or 8 times the cost).
        """
        return self._run("predict", images, batch_size, prepare, tta)

    def features(self, images: np.ndarray, batch_size: int | None = None, prepare=None) -> np.ndarray:
        """Feature maps ``[n, ceil(h/4), ceil(w/4), channels]``; arguments as :meth:`predict`."""
        self.check_features()
        return self._run("get_features", images, batch_size, prepare)

    def check_features(self) -> None:
        """Raise the clear error for a model without ``get_features``."""
        require_features(self)

    def weighted(self, method: str, raw: np.ndarray, weights: np.ndarray, batch_size: int | None = None,
                 prepare=None, tta: str | None = None) -> np.ndarray:
        """What the streaming pipeline asks: the outputs of ``method`` (``predict`` or
        ``get_features``) times ``weights`` ``[n, h, w]`` (at the outputs' resolution),
        channel-first ``[n, channels, h, w]``; the multiplication and the transposition run
        inside the TensorFlow call, on the GPU where there is one."""
        if method == "get_features":
            self.check_features()
        return self._run(method, raw, batch_size, prepare, tta, np.asarray(weights, np.float32))

    def warm_up(self, sample: np.ndarray, batch_size: int | None = None, prepare=None,
                method: str = "predict", tta: str | None = None, weighted: bool = False) -> None:
        """Trace and run the model once at the batch shape the pipeline will use (``weighted``:
        the call of :meth:`weighted`)."""
        if not weighted:
            self._run(method, sample[:1], batch_size, prepare, tta)
            return
        side = contract.FEATURE_STRIDE if method == "get_features" else 1
        height, width = (sample.shape[2:4] if prepare is not None else sample.shape[1:3])
        self._run(method, sample[:1], batch_size, prepare, tta, np.ones((1, -(-height // side), -(-width // side)),
                                                                        np.float32))

    def _run(self, method: str, images: np.ndarray, batch_size: int | None, prepare, tta: str | None = None,
             weights: np.ndarray | None = None) -> np.ndarray:
        images = np.asarray(images) if prepare is not None else np.asarray(images, dtype=np.float32)
        if images.ndim != 4 or (prepare is None and images.shape[-1] != 3):
            raise ValueError(f"expected images [n, h, w, 3], got {images.shape}")
        n = images.shape[0]
        size = images.shape[2:4] if prepare is not None else images.shape[1:3]  # raw [n, bands, h, w]
        step = batch_size or self.batch_size  # every call has this many patches, padded if need be
        for limit in (self.max_batch, self._fits):
            step = min(step, limit) if limit else step
        call = self._call(method, prepare, tta, weights is not None)
        tf = tensorflow()
        out = []
        start = 0
        with tf.device(self.device) if self.device else contextlib.nullcontext():
            while start < n:
                chunk = _padded(images[start : start + step], step)  # one shape, one trace
                inputs = [tf.constant(chunk)]
                if weights is not None:
                    inputs.append(tf.constant(_padded(weights[start : start + step], step)))
                try:
                    result, finite, shape = call(*inputs)
                except tf.errors.ResourceExhaustedError as exc:
                    if step == 1:
                        raise ModelError(f"the model ran out of memory even on one patch ({first_line(exc)}); "
                                         "use a smaller --tile") from exc
                    step = self._fits = step // 2
                    log.warning("the model ran out of memory on %d patches per call; going on with %d (this "
                                "size is kept for the rest of the run)", step * 2, step)
                    continue
                self._check_output(method, size, tuple(int(d) for d in shape.numpy()), bool(finite))
                out.append(result.numpy()[: min(step, n - start)])
                start += step
        if len(out) == 1:
            return out[0]
        return np.concatenate(out) if out else np.zeros((0,), np.float32)

    def _check_output(self, method: str, size: tuple[int, int], shape: tuple[int, ...], finite: bool) -> None:
        """Refuse what a misbehaving model returns: another shape, NaN or infinity."""
        height, width = size
        if method == "predict":
            expected = (shape[0], height, width, self.num_classes)
        else:
            side = contract.FEATURE_STRIDE
            expected = (shape[0], -(-height // side), -(-width // side), self.feature_channels)
        what = "class scores" if method == "predict" else "features"
        if shape != expected:
            raise ModelError(f"model {self.handle} returned {what} of shape {list(shape)} for patches of "
                             f"{height} x {width} px; expected {list(expected)}")
        if not finite:
            raise ModelError(
                f"model {self.handle} returned NaN or infinite {what} for patches of {height} x {width} px")

    def _call(self, method: str, prepare=None, tta: str | None = None, weighted: bool = False):
        key = (method, prepare.graph_key if prepare is not None else None, tta, weighted)
        if key not in self._calls:
            tf = tensorflow()

            fn = find_method(self._obj, method).fn
            convention = self.convention
            softmax = method == "predict" and not self.outputs_probabilities
            transforms = TTA[tta or "none"]

            def once(x):
                y = invoke(fn, convention, x)
                y = tf.cast(y, tf.float32)  # mixed precision may hand back float16
                return tf.nn.softmax(y, axis=-1) if softmax else y

            @tf.function(reduce_retracing=True, jit_compile=self.xla or None)
            def call(x, w=None):
                if prepare is not None:
                    x = prepare.to_model(x)
                y = tf.add_n([_untransform(once(_transform(x, *t)), *t) for t in transforms]) / len(transforms)
                shape, finite = tf.shape(y), tf.reduce_all(tf.math.is_finite(y))  # checked where the model runs
                if w is not None:  # weighted and channel-first, when the shape allows (else refused by the host)
                    y = _weighted_channels_first(y, w)
                return y, finite, shape

            self._calls[key] = call
        return self._calls[key]


def _weighted_channels_first(y, w):
    """``y * w`` channel-first; ``y`` channel-first as it is where its shape is not ``w``'s."""
    tf = tensorflow()

    def weighted():
        return tf.transpose(y * w[..., None], [0, 3, 1, 2])

    def plain():
        return tf.transpose(y, [0, 3, 1, 2])

    known, expected = y.shape[1:3], w.shape[1:3]
    if known.is_fully_defined() and expected.is_fully_defined():  # decided when the call is traced
        return weighted() if known == expected else plain()
    return tf.cond(tf.reduce_all(tf.equal(tf.shape(y)[1:3], tf.shape(w)[1:3])), weighted, plain)


def _padded(array: np.ndarray, rows: int) -> np.ndarray:
    """``array`` with zeros appended along its first axis up to ``rows``."""
    if array.shape[0] >= rows:
        return array
    return np.concatenate([array, np.zeros((rows - array.shape[0], *array.shape[1:]), array.dtype)])


#: Test-time augmentations as elements (reflect, quarter turns) of the dihedral group D4:
#: a patch is reflected left-right if ``reflect``, then turned ``k`` quarter turns.
TTA = {
    "none": ((False, 0),),
    "flips": ((False, 0), (True, 0), (True, 2), (False, 2)),  # none, left-right, up-down, both
    "d4": tuple((reflect, k) for reflect in (False, True) for k in range(4)),
}


def _transform(x, reflect: bool, k: int):
    """``x`` [n, h, w, c] reflected left-right (if ``reflect``), then turned ``k`` quarter turns."""
    tf = tensorflow()
    x = tf.reverse(x, [2]) if reflect else x
    return tf.image.rot90(x, k) if k else x


def _untransform(y, reflect: bool, k: int):
    tf = tensorflow()
    y = tf.image.rot90(y, 4 - k) if k else y
    return tf.reverse(y, [2]) if reflect else y


def require_features(model) -> None:
    """Raise the clear error when ``model`` (a :class:`Model` or a description of one with
    the same attributes) has no ``get_features``."""
    if model.feature_channels is None:
        raise ModelError(f"model {model.handle} has no get_features method, so it cannot produce features")


def require_class_raster(model) -> None:
    """Raise the clear error when ``model`` has more classes than a class raster holds."""
    if model.num_classes > contract.CLASS_NODATA:
        raise ModelError(
            f"model {model.handle} has {model.num_classes} classes, more than the {contract.CLASS_NODATA} a class "
            f"raster holds (values 0-{contract.CLASS_NODATA - 1}; {contract.CLASS_NODATA} marks nodata)")


def describe_device(device: str | None) -> str:
    """``device`` as :func:`resolve_device` gives it (None: TensorFlow's own choice, the
    first GPU when there is one), for people: ``GPU:0 (NVIDIA H100 80GB HBM3)`` or ``CPU``."""
    tf = tensorflow()
    name = (device or "").lstrip("/").upper()
    gpus = tf.config.list_physical_devices("GPU")
    if not name:
        name = "GPU:0" if gpus else "CPU:0"
    if name.startswith("GPU"):
        index = int(name.partition(":")[2] or 0)
        details = tf.config.experimental.get_device_details(gpus[index]) if index < len(gpus) else {}
        return f"{name} ({details.get('device_name', 'GPU')})"
    return "CPU"


def resolve_device(name: str | None) -> str | None:
    """``cpu``, ``gpu``, ``gpu:1`` or a TensorFlow device name -> ``/CPU:0`` style; None stays None."""
    if name is None or name.lower() == "auto":
        return None
    text = name.strip().lstrip("/").upper().replace("DEVICE:", "")
    kind, _, index = text.partition(":")
    device = f"/{kind}:{index or 0}"
    available = [d.name.replace("/device:", "") for d in tensorflow().config.list_logical_devices()]
    if device.lstrip("/") not in available:
        raise ModelError(f"device {name} is not available here (available: {', '.join(available)})")
    return device


def _load_saved_model(handle) -> tuple[ModelSource, object]:
    source = resolve(handle)
    try:
        return source, tensorflow().saved_model.load(str(source.path))
    except Exception as exc:  # noqa: BLE001 - corrupt files raise many kinds of errors
        message = f"could not load the SavedModel in {source.path} ({first_line(exc)})"
        if source.entry is not None:
            raise DamagedCache(message, source.entry) from exc
        raise ModelError(f"{message}; fetch it again with `isprs-seg model fetch` or pass another `--model DIR`") \
            from exc


def load_model(
    handle: str | os.PathLike | None = None,
    batch_size: int = contract.DEFAULT_BATCH_SIZE,
    *,
    device: str | None = None,
    precision: str = "float32",
    xla: bool = False,
) -> Model:
    """Resolve, load and probe a model. Raises :class:`ModelError` with a clear message.

    ``device``: where the model runs (``cpu``, ``gpu``, ``gpu:1``; default: TensorFlow's
    choice, the first GPU when there is one). ``precision`` ``mixed`` turns on
    TensorFlow's automatic mixed precision (float16 on GPUs with tensor cores; no effect
    on a CPU). ``xla`` compiles each model call with XLA.
    """
    if precision not in PRECISIONS:
        raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = resolve_device(device)
    tf = tensorflow()
    if precision == "mixed":
        tf.config.optimizer.set_experimental_options({"auto_mixed_precision": True})
    try:
        source, obj = _load_saved_model(handle)
    except DamagedCache as exc:  # a copy in the cache: fetch it again, once
        log.warning("the cached copy of the model in %s cannot be used (%s); fetching it again", exc.entry, exc)
        forget(exc.entry)
        try:
            source, obj = _load_saved_model(handle)
        except DamagedCache as again:
            raise ModelError(f"{again}; fetching it again did not help: check the source, or delete {again.entry} "
                             "and try later") from again
    detected = detect(obj, source)
    return Model(source=source, batch_size=batch_size, device=device, precision=precision, xla=xla, _obj=obj,
                 **detected)


def fetch_model(handle: str | None, destination: str | os.PathLike) -> Model:
    """Download (or unpack) a model, check it loads, and copy it to ``destination``.

    The destination is a plain SavedModel directory: copy it to an offline machine and
    pass it as ``--model``. It must not exist yet or be empty.
    """
    dest = check_destination(destination)  # before a download that would be wasted
    model = load_model(handle)
    copy_saved_model(model.source, dest)
    return model
