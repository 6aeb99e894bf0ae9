"""The model: where a handle leads (:mod:`.hub`), how it is called (:mod:`.probe`), and the
loaded model with its checked, fixed-shape calls (:mod:`.inference`).

TensorFlow is imported on first use, not when this package is.
"""

from .inference import TTA, Model, describe_device, fetch_model, load_model, resolve_device

__all__ = ["Model", "load_model", "fetch_model", "describe_device", "resolve_device", "TTA"]
