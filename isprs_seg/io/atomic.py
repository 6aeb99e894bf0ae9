"""Outputs that appear under their final names only when complete.

Each output is written to a temporary file beside it, named
``.<stem>.<host>-<pid>-<token>.partial<suffix>``: hidden, unmistakably partial, with the
final suffix so that drivers recognise the format, and with the host and process that
write it. The temporary is created exclusively (never through an existing file or a
symbolic link), checked (every block of a GeoTIFF inside the file) and renamed.

A temporary can only outlive its run when the process is killed outright (SIGKILL,
the out-of-memory killer, a crash in a native library). The next run that writes the
same output removes the temporaries of processes of this host that no longer live,
and says so. Temporaries in use are listed in :data:`LIVE`, so that a process that must
exit at once can remove them (:func:`remove_live_temporaries`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import socket
import threading
from pathlib import Path
from typing import Iterator, Mapping

import rasterio
from rasterio.errors import RasterioIOError

from ..errors import OutputError, first_line

log = logging.getLogger("isprs_seg")

#: Temporaries of this process that exist now.
LIVE: set[Path] = set()
_LIVE_LOCK = threading.Lock()

_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname().split(".")[0])[:32] or "host"


def _temporary_name(final: Path) -> Path:
    token = secrets.token_hex(8)
    return final.with_name(f".{final.stem}.{_HOST}-{os.getpid()}-{token}.partial{final.suffix}")


def _pattern(final: Path) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(final.stem)}\.(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-[0-9a-f]{{16}}"
                      rf"\.partial{re.escape(final.suffix)}$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user
        return True
    return True


def remove_stale_temporaries(final: Path) -> None:
    """Remove the temporaries of ``final`` left by processes of this host that no longer run."""
    pattern = _pattern(final)
    try:
        names = os.listdir(final.parent if str(final.parent) else ".")
    except OSError:
        return
    for name in names:
        match = pattern.match(name)
        if not match or match["host"] != _HOST or _alive(int(match["pid"])):
            continue
        stale = final.with_name(name)
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
            log.warning("removed %s, a temporary file left by process %s, which no longer runs", stale, match["pid"])


def _create_exclusively(path: Path) -> None:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:
        raise OutputError(f"cannot create the temporary file {path} ({first_line(exc)})") from exc
    os.close(fd)


def commit_target(final: Path) -> Path:
    """Where ``final`` is written: the file a symbolic link points to, else ``final`` itself."""
    return Path(os.path.realpath(final)) if final.is_symlink() else final


@contextlib.contextmanager
def atomic_outputs(finals: Mapping[str, Path]) -> Iterator[dict[str, Path]]:
    """Temporary paths for ``finals`` (by role); renamed to the final names only on success.

    On any exception (including KeyboardInterrupt) the temporaries are removed and no
    file appears under a final name. GeoTIFFs are checked block by block before any
    rename (:func:`verify_complete`). The renames go in order: put the file whose
    presence means "done" last. A final name that is a symbolic link to a file is
    written through: the file it points to is replaced.
    """
    targets = {role: commit_target(final) for role, final in finals.items()}
    temps: dict[str, Path] = {}
    try:
        for role, target in targets.items():
            remove_stale_temporaries(target)
            temps[role] = _temporary_name(target)
            _create_exclusively(temps[role])
            with _LIVE_LOCK:
                LIVE.add(temps[role])
        yield temps
        for role, tmp in temps.items():
            if not tmp.is_file() or tmp.is_symlink():
                raise OutputError(f"the temporary file {tmp} was replaced while {finals[role]} was written")
            if _is_tiff(tmp):
                verify_complete(tmp, finals[role])
        for role, tmp in temps.items():
            os.replace(tmp, targets[role])
    except BaseException:
        for tmp in temps.values():
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    finally:
        with _LIVE_LOCK:
            LIVE.difference_update(temps.values())


@contextlib.contextmanager
def scratch(near: Path) -> Iterator[Path]:
    """One more temporary file beside ``near`` (created exclusively), removed when the block ends."""
    path = _temporary_name(near)
    _create_exclusively(path)
    with _LIVE_LOCK:
        LIVE.add(path)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        with _LIVE_LOCK:
            LIVE.discard(path)


def remove_live_temporaries() -> None:
    """Remove this process's temporaries now (for a process that must exit at once)."""
    with _LIVE_LOCK:
        for tmp in list(LIVE):
            with contextlib.suppress(OSError):
                tmp.unlink()
        LIVE.clear()


def _is_tiff(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def verify_complete(path: Path, final: Path) -> None:
    """Check that every block of a GeoTIFF just written lies inside the file.

    GDAL compresses and writes cached blocks when a dataset is closed and only logs a
    failure there (a full disk, a file size limit): without this check a truncated
    file would be renamed as if complete.
    """
    size = path.stat().st_size
    try:
        with rasterio.open(path) as ds:
            bands = [1] if ds.interleaving and ds.interleaving.value == "PIXEL" else ds.indexes
            rows, cols = (-(-ds.height // ds.block_shapes[0][0]), -(-ds.width // ds.block_shapes[0][1]))
            for band in bands:
                for j in range(rows):
                    for i in range(cols):
                        offset = ds.get_tag_item(f"BLOCK_OFFSET_{i}_{j}", "TIFF", bidx=band)
                        length = ds.get_tag_item(f"BLOCK_SIZE_{i}_{j}", "TIFF", bidx=band)
                        if not offset or not length or int(offset) + int(length) > size:
                            raise OutputError(f"writing {final} failed part way (is the disk full?)")
    except RasterioIOError as exc:
        raise OutputError(f"writing {final} failed ({first_line(exc)})") from exc
