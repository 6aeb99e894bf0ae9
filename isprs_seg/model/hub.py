"""Model sources: turn a handle into a local SavedModel directory, downloading or unpacking once.

A handle is one of
- a TF Hub handle or any ``http(s)://`` URL (a ``.tar.gz`` or a hub model page),
  downloaded once by ``tensorflow_hub`` into the cache (see :func:`cache_dir`);
- a local SavedModel directory;
- a local ``.tar.gz`` / ``.tgz`` / ``.tar`` archive of a SavedModel, unpacked once
  into the cache.

Knows nothing of how the model is called (:mod:`isprs_seg.model.inference`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import socket
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .. import contract
from .._tf import tensorflow
from ..errors import ModelError, first_line

_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_OFFLINE_HINT = (
    "on a machine without internet, run `isprs-seg model fetch --to DIR` where there "
    "is internet, copy DIR over and pass `--model DIR`"
)
#: Seconds without data before a download is abandoned.
_DOWNLOAD_TIMEOUT = 120


def default_handle() -> str:
    """The model used when none is given: ``$ISPRS_SEG_MODEL`` or the TF Hub handle."""
    return os.environ.get(contract.MODEL_ENV_VAR) or contract.DEFAULT_MODEL


def cache_dir() -> Path:
    """Where downloads and unpacked archives are kept.

    ``$TFHUB_CACHE_DIR`` when set (shared with tensorflow_hub), else a per-user cache
    directory that survives reboots (tensorflow_hub's own default is under /tmp).
    """
    env = os.environ.get("TFHUB_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "isprs-seg" / "tfhub"


@dataclass(frozen=True)
class ModelSource:
    """Where a handle led: the user's handle and the local SavedModel directory."""

    handle: str
    path: Path
    kind: str  # "directory", "archive" or "url"
    entry: Path | None = None  # the cache entry it was downloaded or unpacked into (url, archive)

    def describe(self) -> str:
        how = {
            "directory": "local SavedModel directory",
            "archive": "unpacked from a local archive into the cache",
            "url": "downloaded into the cache",
        }[self.kind]
        return f"{self.path} ({how})"


def _is_url(handle: str) -> bool:
    return handle.startswith(("http://", "https://", "gs://"))


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(_ARCHIVE_SUFFIXES)


def resolve(handle: str | os.PathLike | None = None) -> ModelSource:
    """Turn a handle into a local SavedModel directory, downloading or unpacking once."""
    handle = str(handle) if handle is not None else default_handle()
    if handle.startswith("tfhub.dev/"):
        handle = "https://" + handle
    if _is_url(handle):
        entry = _download(handle)
        return ModelSource(handle, _cached_root(entry, handle), "url", entry)
    path = Path(handle).expanduser()
    if path.is_dir():
        return ModelSource(handle, _saved_model_root(path, handle), "directory")
    if path.is_file() and _is_archive(path):
        entry = _unpack(path)
        return ModelSource(handle, _cached_root(entry, handle), "archive", entry)
    if path.exists():
        raise ModelError(
            f"model {handle} is neither a SavedModel directory nor a .tar.gz archive of one"
        )
    raise ModelError(
        f"model {handle} not found: expected a SavedModel directory, a .tar.gz archive "
        "or an http(s) URL / TF Hub handle"
    )


@contextlib.contextmanager
def _hub_environment() -> Iterator[None]:
    """Point tensorflow_hub at our cache and bound network waits, then restore."""
    saved_env = os.environ.get("TFHUB_CACHE_DIR")
    saved_timeout = socket.getdefaulttimeout()
    os.environ["TFHUB_CACHE_DIR"] = str(cache_dir())
    socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT)
    try:
        yield
    finally:
        socket.setdefaulttimeout(saved_timeout)
        if saved_env is None:
            os.environ.pop("TFHUB_CACHE_DIR", None)
        else:
            os.environ["TFHUB_CACHE_DIR"] = saved_env


class DamagedCache(ModelError):
    """A cache entry that does not hold a loadable SavedModel (an interrupted copy, a bad disk)."""

    def __init__(self, message: str, entry: Path):
        super().__init__(message)
        self.entry = entry


def forget(entry: Path) -> None:
    """Remove a cache entry, so that the next :func:`resolve` downloads or unpacks it again."""
    shutil.rmtree(entry, ignore_errors=True)
    with contextlib.suppress(OSError):
        entry.with_name(entry.name + ".descriptor.txt").unlink()  # tensorflow_hub's note beside it


def _cached_root(entry: Path, handle: str) -> Path:
    try:
        return _saved_model_root(entry, handle)
    except ModelError as exc:
        raise DamagedCache(str(exc), entry) from exc


#: Errors of the file system (not of the network) while writing the cache.
_CACHE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EEXIST}


def _is_network_error(exc: BaseException) -> bool:
    import http.client
    import urllib.error

    while exc is not None:
        if isinstance(exc, (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout,
                            http.client.HTTPException)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _download(url: str) -> Path:
    tensorflow()
    import tensorflow_hub as hub

    try:
        cache_dir().mkdir(parents=True, exist_ok=True)
        with _hub_environment():
            return Path(hub.resolve(url))
    except Exception as exc:  # urllib, tarfile, tf.errors, OSError
        if _is_network_error(exc):
            raise ModelError(f"could not download the model from {url} ({first_line(exc)}); {_OFFLINE_HINT}") from exc
        if isinstance(exc, OSError) and exc.errno in _CACHE_ERRNOS:
            raise ModelError(f"cannot write the model cache {cache_dir()} ({first_line(exc)}); set TFHUB_CACHE_DIR "
                             "to a writable directory") from exc
        raise ModelError(f"could not download the model from {url} ({first_line(exc)})") from exc


def _unpack(archive: Path) -> Path:
    """Unpack a local archive once into the cache, atomically."""
    stat = archive.stat()
    key = hashlib.sha1(
        f"{archive.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    ).hexdigest()
    root = cache_dir()
    target = root / f"archive-{key}"
    if target.is_dir():
        return target
    tmp = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root))
        with tarfile.open(archive) as tar:
            _extract(tar, tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():  # not a lost race with another process
                raise
    except (OSError, tarfile.TarError) as exc:
        raise ModelError(f"could not unpack the model archive {archive} into {root} ({first_line(exc)})") from exc
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _extract(tar: tarfile.TarFile, destination: Path) -> None:
    """Extract safely: no absolute paths, no ``..``, no links leaving the destination."""
    if hasattr(tarfile, "data_filter"):  # Python 3.10.12+, 3.11.4+
        tar.extractall(destination, filter="data")
        return
    root = destination.resolve()
    for member in tar.getmembers():
        target = (destination / member.name).resolve()
        if root not in (target, *target.parents) or member.issym() or member.islnk():
            raise tarfile.TarError(f"unsafe member {member.name!r}")
    tar.extractall(destination)


def _saved_model_root(path: Path, handle: str) -> Path:
    """The directory holding ``saved_model.pb``: ``path`` itself or one level or two below."""
    for depth in range(3):
        pattern = "/".join(["*"] * depth + ["saved_model.pb*"])
        found = sorted(path.glob(pattern))
        if found:
            return found[0].parent
    raise ModelError(f"model {handle} holds no TensorFlow SavedModel (no saved_model.pb in {path})")


def saved_model_digest(path: Path) -> str:
    """``sha256:...`` over the relative names and contents of every file of a SavedModel directory."""
    digest = hashlib.sha256()
    for file in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path)}\0{file.stat().st_size}\0".encode())
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def check_destination(destination: str | os.PathLike) -> Path:
    """A directory to copy a model to: it must not exist yet, or be empty."""
    dest = Path(destination).expanduser()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ModelError(f"{dest} already exists and is not an empty directory")
    return dest


def copy_saved_model(source: ModelSource, destination: str | os.PathLike) -> Path:
    """Copy a resolved model to ``destination`` (see :func:`check_destination`), atomically."""
    dest = check_destination(destination)
    tmp = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        shutil.copytree(source.path, tmp, dirs_exist_ok=True)
        if dest.exists():
            dest.rmdir()
        tmp.rename(dest)
    except OSError as exc:
        raise ModelError(f"could not write the model to {dest} ({first_line(exc)})") from exc
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
