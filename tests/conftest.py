"""Shared fixtures (stand-in models built once per session) and the report of skipped tests.

The helpers and the test rasters are in ``tests/helpers.py``. The pure tests need
neither data nor TensorFlow models.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import CORE, DATA


def pytest_report_header(config):
    found = "found" if DATA.is_dir() else "not found: the extended set is skipped"
    return f"test rasters: core in {CORE}; extended in {DATA} ({found})"


def pytest_terminal_summary(terminalreporter):
    """One line per reason for skipped tests, with how many (instead of one line per test)."""
    reasons: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    for reason, count in reasons.items():
        terminalreporter.write_line(f"{count} test{'s' if count > 1 else ''} skipped, {reason}", yellow=True)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


def _build(models_dir: Path, name: str, kind: str = "small", **options) -> Path:
    from isprs_seg.testing.standins import build_standin

    path = models_dir / name
    if not path.exists():
        build_standin(path, kind, **options)
    return path


@pytest.fixture(scope="session")
def small_dir(models_dir) -> Path:
    """The bounded-receptive-field stand-in (tensor convention, attributes, probabilities)."""
    return _build(models_dir, "small")


@pytest.fixture(scope="session")
def small_model(small_dir):
    from isprs_seg.model import load_model

    return load_model(small_dir)


@pytest.fixture(scope="session")
def variant_dirs(models_dir) -> dict[str, Path]:
    """The same small network exported in every calling convention the model layer handles."""
    return {
        "list": _build(models_dir, "small-list", convention="list"),
        "signatures": _build(models_dir, "small-signatures", methods="signatures"),
        "logits": _build(models_dir, "small-logits", logits=True),
    }


@pytest.fixture(scope="session")
def w48_dir(models_dir) -> Path:
    """HRNetV2-W48 with random weights: the real architecture and cost."""
    return _build(models_dir, "hrnet-w48", kind="hrnet-w48")
