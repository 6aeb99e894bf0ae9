"""Ctrl-C and SIGTERM stop a run within seconds, whatever a library call is doing.

The command runs in a worker thread; the main thread only waits and handles signals.
On SIGINT or SIGTERM the worker is interrupted (:class:`Interrupted` is raised in it as
soon as it runs Python code again), unwinds and removes its temporaries. A worker
stuck in a native call (a network read that does not answer, a long model call) is not
waited for beyond :data:`GRACE` seconds, nor after a second signal: the temporaries it
has open are removed and the process exits at once. Exit status 128 + the signal
number: 130 for Ctrl-C, 143 for SIGTERM.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from typing import Callable

#: Seconds the worker gets to unwind after a signal before the process exits without it.
GRACE = 3.0

_received: dict[str, int] = {}


class Interrupted(BaseException):
    """SIGINT or SIGTERM: unwinds like an exception so partial outputs are removed."""

    def __init__(self, signum: int | None = None):
        signum = signum if signum is not None else _received.get("signum", signal.SIGINT)
        super().__init__(signum)
        self.signum = signum

    @property
    def message(self) -> str:
        return f"isprs-seg: interrupted ({signal.Signals(self.signum).name}); partial outputs were removed"


def _on_signal(signum, frame) -> None:
    _received.setdefault("signum", signum)
    raise Interrupted(signum)


def _raise_in(thread: threading.Thread) -> None:
    """Raise :class:`Interrupted` in ``thread`` when it next runs Python code."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(Interrupted))


def run(command: Callable[[], int]) -> int:
    """Run ``command`` in a worker thread and return its exit status (see the module docstring)."""
    stderr = os.dup(2)  # the terminal, even while a native library's output is captured
    outcome: dict = {}
    # Waiting on an event, not with Thread.join: a signal that interrupts join() can leave
    # the thread marked as finished while it still runs.
    done = threading.Event()

    def work() -> None:
        try:
            outcome["code"] = command()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = exc
        finally:
            done.set()

    worker = threading.Thread(target=work, name="isprs-seg-command", daemon=True)
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    worker.start()
    try:
        try:
            while not done.wait(0.25):
                pass
        except Interrupted as first:
            _raise_in(worker)
            try:
                done.wait(GRACE)
            except Interrupted:  # a second signal: do not wait any longer
                pass
            if not done.is_set():
                _exit_now(first, stderr)
            if "code" not in outcome and not isinstance(outcome.get("error"), Interrupted):
                outcome["error"] = first
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(stderr)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["code"]


def _exit_now(interrupted: Interrupted, stderr: int) -> None:
    """Remove the temporaries in use and end the process without waiting for the worker."""
    from ..io.atomic import remove_live_temporaries

    remove_live_temporaries()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - nothing more can be done about a stream here
            pass
    os.write(stderr, (interrupted.message + "\n").encode())
    os._exit(128 + interrupted.signum)
