"""The parts of a distributed run on disk: where they go, and the manifest that lets a
rerun keep the strips an interrupted run finished.

The manifest (``manifest.jsonl`` in the parts directory) is a header line, what the
strips are of (plan, model digest, settings, versions, input size and time), then one
line per finished strip with the checksums of its files, appended and synced as each
strip arrives. A rerun keeps a strip only when the header is the same and its files
still have their checksums; a line cut short by a crash ends what is trusted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import OutputError
from ..tiling.plan import Strip

if TYPE_CHECKING:
    from .engine import RunResult, RunSpec


def file_digest(path: Path, sync: bool = False) -> str | None:
    """``sha256:`` of a file (None when it cannot be read); ``sync``: make sure it is on disk first."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            if sync:
                os.fsync(f.fileno())
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return "sha256:" + digest.hexdigest()


def synced_digest(path: Path) -> str:
    return file_digest(path, sync=True)


def absolute(path: str) -> str:
    """A local file as an absolute path; GDAL paths (/vsi..., URLs) as they are."""
    return str(Path(path).absolute()) if Path(path).exists() else path


def identity(path: str) -> list | None:
    """Size and modification time of a local input: strips of a changed file are not kept."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns]


def parts_dir(spec: RunSpec) -> Path:
    """Where the strips of ``spec`` are written: beside its main output."""
    main = next(reversed(spec.finals.values()))
    return main.with_name(f".{main.name}.parts")


class Manifest:
    """The parts directory's record: a header line (what the strips are of), then one
    line per finished strip, appended and synced as each one arrives."""

    NAME = "manifest.jsonl"

    def __init__(self, directory: Path, header: dict):
        self.directory, self.header = directory, header
        self.path = directory / self.NAME

    def kept(self, overwrite: bool, input: str) -> dict[int, tuple[dict[str, Path], dict]]:
        """The strips of an earlier run to keep: by strip index, their parts and result fields.

        A directory without a readable manifest, or one whose header differs with
        ``overwrite``, is emptied; a header that differs without ``overwrite`` is refused.
        """
        lines = []
        try:
            text = self.path.read_text() if self.path.exists() else ""
        except OSError:
            text = ""
        for line in text.splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:  # a line cut short by a crash: what follows it cannot be trusted
                break
        if lines and lines[0] != self.header:
            if not overwrite:
                keys = self.header.keys() | lines[0].keys()
                differ = sorted(k for k in keys if self.header.get(k) != lines[0].get(k))
                raise OutputError(
                    f"{self.directory} holds strips of {input} made by another run (different {', '.join(differ)}); "
                    "use --overwrite to discard them")
            lines = []
        if not lines:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory.mkdir(parents=True)
            self._append(self.header)
            return {}
        kept = {}
        for entry in lines[1:]:
            parts = {role: self.directory / name for role, name in entry["files"].items()}
            if all(file_digest(path) == entry["sha256"][role] for role, path in parts.items()):
                kept[entry["strip"]] = (parts, entry["result"])
        return kept

    def add(self, strip: Strip, parts: dict[str, Path], digests: dict[str, str], result: RunResult) -> None:
        self._append({"strip": strip.index, "rows": [strip.start, strip.stop],
                      "files": {role: path.name for role, path in parts.items()}, "sha256": digests,
                      "result": dataclasses.asdict(result)})

    def _append(self, entry: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
