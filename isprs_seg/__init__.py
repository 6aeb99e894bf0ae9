"""isprs-seg: batch semantic segmentation of large aerial orthophotos.

The Python API mirrors the command line::

    from isprs_seg import load_model, predict_raster

    model = load_model()                      # or load_model("/models/isprs-hrnet")
    result = predict_raster("ortho.tif", "ortho.classes.tif", model=model)
"""

from __future__ import annotations

import os

# Keep TensorFlow's C++ start-up chatter off the user's terminal unless asked for.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"

_LAZY = {
    "load_model": ("isprs_seg.model", "load_model"),
    "Model": ("isprs_seg.model", "Model"),
    "fetch_model": ("isprs_seg.model", "fetch_model"),
    "predict_raster": ("isprs_seg.api", "predict_raster"),
    "extract_features": ("isprs_seg.api", "extract_features"),
    "run_product": ("isprs_seg.api", "run_product"),
    "RunResult": ("isprs_seg.runs.engine", "RunResult"),
    "Classes": ("isprs_seg.products", "Classes"),
    "Features": ("isprs_seg.products", "Features"),
    "LocalEngine": ("isprs_seg.runs.local", "LocalEngine"),
    "RayEngine": ("isprs_seg.runs.cluster", "RayEngine"),
    "InputOptions": ("isprs_seg.options", "InputOptions"),
    "plan_outputs": ("isprs_seg.runs.batch", "plan_outputs"),
    "run_batch": ("isprs_seg.runs.batch", "run_batch"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    # TensorFlow takes seconds to import: load it only when the API is used, so
    # that `isprs-seg --help` stays instant.
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'isprs_seg' has no attribute {name!r}")
