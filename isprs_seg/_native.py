"""Keep native libraries' direct writes to stderr off the user's terminal.

TensorFlow's start-up logging and libtiff's write errors bypass every setting and
write to file descriptor 2. :func:`native_stderr_captured` points the descriptor at a
temporary file for the duration and replays what was written when the block raises.
With ``ISPRS_SEG_DEBUG`` set nothing is captured.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Iterator


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[None]:
    if os.environ.get("ISPRS_SEG_DEBUG"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    failed = False
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                log.seek(0)
                sys.stderr.write(log.read().decode(errors="replace"))
