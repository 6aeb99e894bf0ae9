"""Import TensorFlow once, keeping its C++ start-up log lines off the user's terminal.

TensorFlow's native logging writes to file descriptor 2 before any setting can reach
it (``TF_CPP_MIN_LOG_LEVEL`` no longer silences it), so the import and the device
discovery run with that descriptor captured (:mod:`isprs_seg._native`).
"""

from __future__ import annotations

import os

from ._native import native_stderr_captured

_tf = None


def tensorflow():
    """The ``tensorflow`` module, imported quietly on first use."""
    global _tf
    if _tf is None:
        with native_stderr_captured():
            import tensorflow as tf

            tf.config.list_physical_devices()  # device discovery logs here too
            for gpu in tf.config.list_physical_devices("GPU"):
                # take GPU memory as needed, not all of it up front (shared servers)
                tf.config.experimental.set_memory_growth(gpu, True)
        if not os.environ.get("ISPRS_SEG_DEBUG"):
            tf.get_logger().setLevel("ERROR")
        _tf = tf
    return _tf
