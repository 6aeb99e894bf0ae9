"""How a SavedModel is called: its methods, the calling convention, classes and features.

Probe calls on a small textured image find out whether ``predict`` takes a 4-D tensor or
a list of images (one or several per call), whether it returns probabilities or logits,
how many classes it has and how many feature channels ``get_features`` gives. Every
later batch is still checked by :class:`isprs_seg.model.inference.Model` (the probe is small).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import contract
from .._tf import tensorflow
from ..errors import ModelError, first_line
from .hub import ModelSource

#: Side of the probe image used to detect the calling convention (a multiple of 32).
_PROBE_SIZE = 64


@dataclass
class _Method:
    """One model method (``predict`` or ``get_features``) and how it is reached."""

    name: str
    fn: Callable
    via: str  # "attribute" or "signature"


def find_method(obj, name: str) -> _Method | None:
    fn = getattr(obj, name, None)
    if fn is not None and callable(fn):
        return _Method(name, fn, "attribute")
    signatures = getattr(obj, "signatures", None) or {}
    if name in signatures:
        sig = signatures[name]
        keys = list(sig.structured_input_signature[1])
        if len(keys) != 1:
            return None

        def call(x, _sig=sig, _key=keys[0]):
            outputs = _sig(**{_key: x})
            return next(iter(outputs.values())) if isinstance(outputs, dict) else outputs

        return _Method(name, call, "signature")
    return None


#: Calling conventions tried in order: (input form, images per call in the probe).
_CONVENTIONS = (("tensor", 2), ("list", 2), ("list", 1), ("tensor", 1))


def invoke(fn: Callable, convention: str, x):
    """Call a model method on a 4-D batch in the given convention; returns a 4-D tensor."""
    tf = tensorflow()

    if convention == "tensor":
        y = fn(x)
    else:
        y = fn([x[i] for i in range(x.shape[0])])
        if isinstance(y, (list, tuple)):
            y = tf.stack(list(y))
    if isinstance(y, dict):
        y = next(iter(y.values()))
    return tf.convert_to_tensor(y)


def _probe_images(n: int, size: int = _PROBE_SIZE) -> np.ndarray:
    """A deterministic, textured probe batch in [0, 1]."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = np.stack([0.5 + 0.4 * np.sin(7 * xx), 0.5 + 0.4 * np.cos(5 * yy), 0.5 + 0.3 * np.sin(3 * (xx + yy))], -1)
    return np.stack([np.roll(base, 7 * i, axis=1) for i in range(n)]).astype(np.float32)


def detect(obj, source: ModelSource) -> dict:
    """Find the methods, the calling convention and the output layout with probe calls."""
    predict = find_method(obj, "predict")
    if predict is None:
        raise ModelError(
            f"model {source.handle} does not have the expected interface: it needs a "
            "`predict` method or signature taking RGB images [batch, height, width, 3] "
            "and returning class probabilities [batch, height, width, classes]"
        )
    errors = []
    for convention, n in _CONVENTIONS:
        probe = _probe_images(n)
        try:
            tf = tensorflow()
            out = invoke(predict.fn, convention, tf.constant(probe)).numpy()
        except Exception as exc:  # noqa: BLE001 - any failure means "not this convention"
            errors.append(f"{convention}: {first_line(exc)}")
            continue
        if out.ndim == 4 and out.shape[:3] == probe.shape[:3] and out.shape[3] >= 2:
            break
        errors.append(f"{convention}: output shape {out.shape} for input {probe.shape}")
    else:
        raise ModelError(
            f"model {source.handle} does not have the expected interface: predict must take "
            "a float32 tensor [batch, height, width, 3] or a list of [height, width, 3] "
            "images and return [batch, height, width, classes] at the input resolution "
            f"(tried: {'; '.join(errors)})"
        )
    sums = out.sum(axis=-1)
    probabilities = bool(
        np.all(np.isfinite(out))
        and out.min() >= -1e-4
        and out.max() <= 1 + 1e-4
        and np.abs(sums - 1).max() < 1e-3
    )
    detected = {
        "convention": convention,
        "max_batch": None if n > 1 else 1,
        "num_classes": int(out.shape[-1]),
        "outputs_probabilities": probabilities,
        "methods": {"predict": predict.via},
        "feature_channels": None,
    }
    features = find_method(obj, "get_features")
    if features is not None:
        tf = tensorflow()

        try:
            fout = invoke(features.fn, convention, tf.constant(probe)).numpy()
        except Exception as exc:  # noqa: BLE001
            raise ModelError(
                f"model {source.handle}: get_features failed on a {_PROBE_SIZE}x{_PROBE_SIZE} "
                f"probe ({first_line(exc)})"
            ) from exc
        side = -(-_PROBE_SIZE // contract.FEATURE_STRIDE)
        if fout.ndim != 4 or fout.shape[:3] != (n, side, side):
            raise ModelError(
                f"model {source.handle}: get_features returned shape {fout.shape} for input "
                f"{probe.shape}; expected [batch, ceil(height/4), ceil(width/4), channels]"
            )
        detected["feature_channels"] = int(fout.shape[-1])
        detected["methods"]["get_features"] = features.via
    return detected
