"""Model sources: turn a handle into a local SavedModel directory, downloading or unpacking once.

A handle is one of
- a TF Hub handle or any ``http(s)://`` URL (a ``.tar.gz`` or a hub model page),
  downloaded once into the cache (see :func:`cache_dir`) the way ``tensorflow_hub``
  does it, so that either finds the other's downloads (see :func:`cache_entry`);
- a local SavedModel directory;
- a local ``.tar.gz`` / ``.tgz`` / ``.tar`` archive of a SavedModel, unpacked once
  into the cache.

Knows nothing of how the model is called (:mod:`isprs_seg.model.inference`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import socket
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .. import __version__, contract
from .._tf import tensorflow
from ..errors import ModelError, first_line

log = logging.getLogger("isprs_seg")

_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_OFFLINE_HINT = (
    "on a machine without internet, run `isprs-seg model fetch --to DIR` where there "
    "is internet, copy DIR over and pass `--model DIR`"
)
#: Seconds without data before a download is abandoned.
_DOWNLOAD_TIMEOUT = 120
#: Seconds to wait before each new try of a download answered with an HTTP status that
#: may pass (403 from an expired signed redirect, 429, 5xx): at most 15 s in all per URL.
RETRY_DELAYS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
#: The name of the file a download is written to inside its temporary cache entry.
_DOWNLOADED = ".isprs-seg-download"


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


def _normalized(handle: str | os.PathLike | None) -> str:
    handle = str(handle) if handle is not None else default_handle()
    return "https://" + handle if handle.startswith("tfhub.dev/") else handle


def recorded_digest(handle: str | os.PathLike | None) -> str | None:
    """The digest on record for ``handle`` (see :func:`saved_model_digest`): that of the
    official model (:data:`contract.DEFAULT_MODEL_DIGEST`) for its handle, else None."""
    return contract.DEFAULT_MODEL_DIGEST if _normalized(handle) == contract.DEFAULT_MODEL else None


def resolve(handle: str | os.PathLike | None = None) -> ModelSource:
    """Turn a handle into a local SavedModel directory, downloading or unpacking once."""
    handle = _normalized(handle)
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


class DamagedCache(ModelError):
    """A cache entry that does not hold a loadable SavedModel (an interrupted copy, a bad disk)."""

    def __init__(self, message: str, entry: Path):
        super().__init__(message)
        self.entry = entry


def forget(entry: Path) -> None:
    """Remove a cache entry, so that the next :func:`resolve` downloads or unpacks it again."""
    shutil.rmtree(entry, ignore_errors=True)
    with contextlib.suppress(OSError):
        _descriptor(entry).unlink()


def _cached_root(entry: Path, handle: str) -> Path:
    try:
        return _saved_model_root(entry, handle)
    except ModelError as exc:
        raise DamagedCache(str(exc), entry) from exc


#: Errors of the file system (not of the network) while writing the cache.
_CACHE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EEXIST}


def _is_network_error(exc: BaseException) -> bool:
    import http.client

    while exc is not None:
        if isinstance(exc, (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout,
                            http.client.HTTPException)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def cache_entry(handle: str) -> Path:
    """The cache entry of a downloaded handle, as ``tensorflow_hub`` names it: the sha1 of the
    handle string, in :func:`cache_dir`, with a ``.descriptor.txt`` note beside it."""
    return cache_dir() / hashlib.sha1(handle.encode("utf8")).hexdigest()


def _descriptor(entry: Path) -> Path:
    return entry.with_name(entry.name + ".descriptor.txt")


def download_urls(handle: str) -> tuple[str, ...]:
    """The URLs a URL handle is downloaded from, in order: the handle itself, a page asked
    for TF Hub's compressed format (``?tf-hub-format=compressed``: a ``.tar.gz``) unless it
    names an archive already, then the mirrors :data:`contract.MODEL_MIRRORS` knows."""
    url, parts = handle, urllib.parse.urlsplit(handle)
    if parts.scheme in ("http", "https") and not parts.path.lower().endswith(_ARCHIVE_SUFFIXES):
        query = urllib.parse.parse_qsl(parts.query) + [("tf-hub-format", "compressed")]
        url = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
    return (url, *contract.MODEL_MIRRORS.get(handle, ()))


class _Unavailable(Exception):
    """One URL did not give a model archive: ``reason`` is the phrase for the user's sentence."""

    def __init__(self, reason: str, network: bool = False):
        super().__init__(reason)
        self.reason, self.network = reason, network


def _retried(status: int) -> bool:
    return status in (403, 408, 429) or status >= 500


def _http_reason(url: str, exc: urllib.error.HTTPError, tries: int) -> str:
    """What an HTTP error status means for the user, with the address that gave it."""
    answered = urllib.parse.urlsplit(exc.geturl() or url)
    where = url if answered.netloc == urllib.parse.urlsplit(url).netloc else \
        f"{url} (redirected to {answered.scheme}://{answered.netloc}{answered.path})"
    status = f"HTTP {exc.code} {exc.reason}".rstrip()
    times = f" {tries} times" if tries > 1 else ""
    if exc.code in (404, 410):
        return f"{where} answered {status}: there is no model at that address, check the handle"
    if exc.code == 403:
        return (f"{where} answered {status}{times}: access was refused (a signed download link may have expired "
                "on the way); try again later")
    if exc.code == 429 or exc.code >= 500:
        return f"{where} answered {status}{times}: the server is busy or failing; try again later"
    return f"{where} answered {status}"


def _fetch(url: str, destination: Path, delays: tuple[float, ...], sleep: Callable[[float], None]) -> None:
    """Write what ``url`` serves to ``destination``; statuses that may pass (:func:`_retried`)
    are tried again after each of ``delays``. Raises :class:`_Unavailable` for what the
    network or the server did; errors of the local disk propagate."""
    for tries, delay in enumerate((*delays, None), start=1):
        try:
            if url.startswith("gs://"):
                with tensorflow().io.gfile.GFile(url, "rb") as source, open(destination, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                return
            request = urllib.request.Request(url, headers={"User-Agent": f"isprs-seg/{__version__}"})
            with urllib.request.urlopen(request, timeout=_DOWNLOAD_TIMEOUT) as response, \
                    open(destination, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
            return
        except urllib.error.HTTPError as exc:
            if delay is None or not _retried(exc.code):
                raise _Unavailable(_http_reason(url, exc, tries)) from exc
            log.info("%s answered HTTP %d; trying again in %g s", url, exc.code, delay)
        except Exception as exc:  # noqa: BLE001 - urllib, http.client, sockets, tf.errors for gs://
            if isinstance(exc, OSError) and not _is_network_error(exc) and exc.errno in _CACHE_ERRNOS:
                raise
            raise _Unavailable(f"{url} could not be reached ({first_line(exc)})", _is_network_error(exc)) from exc
        sleep(delay)


def _download(url: str) -> Path:
    """Download a URL handle once into its cache entry (see :func:`cache_entry`), atomically:
    the first of :func:`download_urls` that serves a model archive fills it."""
    entry = cache_entry(url)
    if entry.is_dir():
        return entry
    failures: list[_Unavailable] = []
    served: list[str] = []

    def fill(tmp: Path) -> None:
        for source in download_urls(url):
            try:
                _fetch(source, tmp / _DOWNLOADED, RETRY_DELAYS, time.sleep)
                try:
                    with tarfile.open(tmp / _DOWNLOADED) as tar:
                        _extract(tar, tmp)
                except tarfile.TarError as exc:
                    raise _Unavailable(f"{source} did not serve a model archive ({first_line(exc)})") from exc
            except _Unavailable as exc:
                failures.append(exc)
                continue
            finally:
                with contextlib.suppress(OSError):
                    (tmp / _DOWNLOADED).unlink()
            served.append(source)
            return
        reasons = "; then ".join(f.reason for f in failures)
        hint = f"; {_OFFLINE_HINT}" if any(f.network for f in failures) else ""
        raise ModelError(f"could not download the model from {url}: {reasons}{hint}")

    try:
        _filled(entry, fill)
        if served:  # this process downloaded it: the note tensorflow_hub also leaves beside an entry
            _descriptor(entry).write_text(
                f"Module: {url}\nDownloaded from: {served[0]}\n"
                f"Download time: {datetime.now(timezone.utc).isoformat(timespec='seconds')}\n"
                f"Downloader: isprs-seg {__version__} on {socket.gethostname()} (PID {os.getpid()})\n")
        return entry
    except OSError as exc:
        if exc.errno in _CACHE_ERRNOS:
            raise ModelError(f"cannot write the model cache {cache_dir()} ({first_line(exc)}); set TFHUB_CACHE_DIR "
                             "to a writable directory") from exc
        raise ModelError(f"could not download the model from {url} ({first_line(exc)})") from exc


def _filled(target: Path, fill: Callable[[Path], None]) -> Path:
    """``target``, a directory made by ``fill`` in a temporary directory beside it and renamed
    when complete: never seen half-made. When another process made it first, theirs is kept."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        fill(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not target.is_dir():  # not a lost race with another process
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _unpack(archive: Path) -> Path:
    """Unpack a local archive once into the cache, atomically."""
    stat = archive.stat()
    key = hashlib.sha1(
        f"{archive.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    ).hexdigest()
    target = cache_dir() / f"archive-{key}"
    if target.is_dir():
        return target

    def fill(tmp: Path) -> None:
        with tarfile.open(archive) as tar:
            _extract(tar, tmp)

    try:
        return _filled(target, fill)
    except (OSError, tarfile.TarError) as exc:
        raise ModelError(f"could not unpack the model archive {archive} into {cache_dir()} ({first_line(exc)})") \
            from exc


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
