"""Import TensorFlow once, keeping its C++ start-up log lines off the user's terminal.

TensorFlow's native logging writes to file descriptor 2 before any setting can reach
it (``TF_CPP_MIN_LOG_LEVEL`` no longer silences it), so during the import and the
device discovery the descriptor is pointed at a temporary file. The lines are replayed
when the import fails or when ``ISPRS_SEG_DEBUG`` is set.
"""

from __future__ import annotations

import os
import sys
import tempfile

_tf = None


def tensorflow():
    """The ``tensorflow`` module, imported quietly on first use."""
    global _tf
    if _tf is not None:
        return _tf
    if os.environ.get("ISPRS_SEG_DEBUG"):
        import tensorflow as tf

        tf.config.list_physical_devices()
        _tf = tf
        return tf
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()  # device discovery logs here too
        except BaseException:
            os.dup2(saved, 2)
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    tf.get_logger().setLevel("ERROR")
    _tf = tf
    return tf
