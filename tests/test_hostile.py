"""Hostile conditions: stalled servers, memory limits, misbehaving models, odd inputs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import HRO_PLAIN, run_cli


@pytest.fixture
def silent_server():
    """A socket on 127.0.0.1 that accepts every connection and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held = []

    def accept():
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"/vsicurl/http://127.0.0.1:{server.getsockname()[1]}/ortho.tif"
    server.close()
    for conn in held:
        conn.close()


def test_ctrl_c_ends_a_run_stuck_on_a_server_that_never_answers(tmp_path, small_dir, silent_server):
    process = subprocess.Popen(
        [sys.executable, "-m", "isprs_seg", "predict", silent_server, "--out-dir", str(tmp_path / "out"),
         "--model", str(small_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    first = process.stderr.readline()  # the model is loaded; next the input is opened
    assert first.startswith("isprs-seg: running the model on "), first
    time.sleep(1.5)  # GDAL waits for the server
    assert process.poll() is None
    process.send_signal(signal.SIGINT)
    started = time.monotonic()
    stdout, stderr = process.communicate(timeout=60)
    stderr = first + stderr
    assert time.monotonic() - started < 6, "stopped within a few seconds"
    assert process.returncode == 130 and "interrupted (SIGINT)" in stderr and "Traceback" not in stderr
    assert stdout == "" and not any((tmp_path / "out").iterdir())


def test_a_server_that_never_answers_fails_the_input_after_a_timeout(tmp_path, small_dir, silent_server):
    out = tmp_path / "out"
    started = time.monotonic()
    # the user's environment overrides the default of 30 s without data
    result = run_cli("predict", silent_server, str(HRO_PLAIN), "--out-dir", str(out), "--model", str(small_dir), "-q",
                     env={"GDAL_HTTP_LOW_SPEED_TIME": "2"}, timeout=120)
    assert time.monotonic() - started < 60
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("isprs-seg: error: ")]
    assert len(errors) == 1 and silent_server in errors[0] and "cannot be read as a raster" in errors[0]
    assert "Less than 1 bytes/sec" in errors[0] or "timed out" in errors[0]
    assert result.stdout.splitlines() == [str(out / f"{HRO_PLAIN.stem}.classes.tif")], "the next input is done"
