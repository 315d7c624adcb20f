"""Incoming media to disk: one folder per account under `media.dir`, within the `media` config's limits.

Every engine uses it the same way: it hands over the message and a `fetch` that returns the media's
bytes (neonize: `download_any`; the sim: the bytes its control gave), and gets back the message with
`media.path`, `size`, `sha256`, `mimetype` or with `media.error` (`too_large`, `download_failed`,
`expired`). The message is published once, after this, never with bytes in it.

Rules, each tested with hostile media (tests/integration/test_media_e2e.py):
- names come from the message id and type only, reduced to `[A-Za-z0-9_-]`; a sender's file name is
  metadata, never part of a path, so nothing escapes the account's folder;
- a declared size over `max_bytes` is not fetched; fetched bytes over it (a lying size) are not kept;
  zero bytes are a failed download;
- a file is written as a hidden `.<name>.*.part` beside its final name, flushed, then renamed: a
  half-written file is never visible under its final name, and a failed download leaves nothing;
- after each file the account's folder is pruned: files older than `keep_days`, then the oldest until
  the folder is within `max_total_mb` (the file just written is kept), and `.part` leftovers of a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import mimetypes
import os
import re
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from ..model import IncomingMessage, Media, MediaError
from .options import DownloadOptions

log = logging.getLogger(__name__)

FetchFn = Callable[[], Awaitable[bytes]]
MEDIA_TYPES = frozenset({"image", "video", "audio", "document", "sticker"})
PART_SUFFIX = ".part"
PARALLEL_DOWNLOADS = 3  # per account: a burst of media does not hold dozens of files in memory at once
STALE_PART_SECONDS = 3600.0  # a `.part` this old is a crash's leftover, not a download in progress
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_EXTENSIONS = {  # the usual WhatsApp types, where mimetypes' first guess is odd (.jpe, .oga)
    "image/jpeg": ".jpg", "image/png": ".png", "image/webp": ".webp", "image/gif": ".gif",
    "video/mp4": ".mp4", "video/3gpp": ".3gp", "audio/ogg": ".ogg", "audio/mpeg": ".mp3",
    "audio/mp4": ".m4a", "audio/aac": ".aac", "application/pdf": ".pdf",
}


class DownloadFailed(Exception):
    """The media was not kept; `code` is what `media.error` says."""

    def __init__(self, code: MediaError, detail: str) -> None:
        super().__init__(detail)
        self.code: MediaError = code


def extension(mimetype: str | None, filename: str | None) -> str:
    """The file extension for a media type (`image/jpeg` → `.jpg`), else the sender's file name's
    (letters and digits only), else `.bin`."""
    base = (mimetype or "").split(";", 1)[0].strip().lower()
    if ext := _EXTENSIONS.get(base) or (mimetypes.guess_extension(base) if base else None):
        return ext
    suffix = Path(filename or "").suffix
    if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", suffix):
        return suffix.lower()
    return ".bin"


def file_name(message_id: str, kind: str, mimetype: str | None, filename: str | None = None) -> str:
    """`<id>-<type><ext>`, reduced to safe characters: never a path, never hidden, never empty."""
    safe_id = _UNSAFE.sub("_", message_id)[:100] or "message"
    return f"{safe_id}-{_UNSAFE.sub('_', kind)[:16]}{extension(mimetype, filename)}"


def failure_code(text: str) -> MediaError:
    """What a fetch's error means: WhatsApp answers 404 / 410 for media it no longer holds."""
    lowered = text.lower()
    if "404" in lowered or "410" in lowered or "expired" in lowered:
        return "expired"
    return "download_failed"


def write_atomically(folder: Path, name: str, data: bytes) -> Path:
    """`data` as `folder/name`, visible only once complete; nothing left behind on failure."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    final = folder / name
    if final.parent != folder or name.startswith("."):
        raise ValueError(f"unsafe media file name {name!r}")  # file_name never makes one; a second lock
    fd, part = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=PART_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(part, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(part)
        raise
    return final


def prune(folder: Path, now: float, keep_days: float, max_total_bytes: int, keep: Path | None = None) -> list[Path]:
    """Remove files older than `keep_days` (0: none), then the oldest until the rest fit in
    `max_total_bytes` (0: no limit), never `keep`; `.part` leftovers older than an hour too. Returns
    what was removed."""
    files: list[tuple[float, int, Path]] = []
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not entry.is_file(follow_symlinks=False):
            continue
        stat = entry.stat(follow_symlinks=False)
        path = Path(entry.path)
        if entry.name.startswith("."):
            if entry.name.endswith(PART_SUFFIX) and now - stat.st_mtime > STALE_PART_SECONDS:
                removed.append(path)
            continue
        if path == keep:
            continue
        if keep_days and now - stat.st_mtime > keep_days * 86400:
            removed.append(path)
        else:
            files.append((stat.st_mtime, stat.st_size, path))
    if max_total_bytes:
        total = sum(size for _, size, _ in files)
        if keep is not None and keep.exists():
            total += keep.stat().st_size
        for _, size, path in sorted(files):
            if total <= max_total_bytes:
                break
            removed.append(path)
            total -= size
    for path in removed:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return removed


class MediaSaver:
    """Downloads one account's incoming media into `<media.dir>/<account>/`."""

    def __init__(self, options: DownloadOptions, account: str, clock: Callable[[], float] = time.time) -> None:
        self._options = options
        self._account = account
        self._clock = clock
        self._slots = asyncio.Semaphore(PARALLEL_DOWNLOADS)

    @property
    def folder(self) -> Path:
        return self._options.dir.absolute() / _UNSAFE.sub("_", self._account)

    def wants(self, message: IncomingMessage) -> bool:
        """True when the message has media to download (and downloads are on)."""
        return self._options.download and message.type in MEDIA_TYPES and message.media is not None

    async def save(self, message: IncomingMessage, fetch: FetchFn) -> IncomingMessage:
        """The message with its media downloaded (`path`, `size`, `sha256`) or its `media.error`."""
        media = message.media or Media()
        try:
            async with self._slots:  # `download_timeout` counts from here, not from the wait for a slot
                data = await self._fetch(media, fetch)
                name = file_name(message.id, message.type, media.mimetype, media.filename)
                path = await asyncio.to_thread(self._store, name, data)
        except DownloadFailed as exc:
            log.warning("%s: media of message %s not kept: %s (%s)", self._account, message.id, exc.code, exc)
            return message.model_copy(update={"media": media.model_copy(update={"error": exc.code, "path": None})})
        log.info("%s: media of message %s saved (%d bytes)", self._account, message.id, len(data))
        saved = media.model_copy(update={
            "path": str(path), "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "mimetype": media.mimetype or "application/octet-stream", "error": None})
        return message.model_copy(update={"media": saved})

    async def _fetch(self, media: Media, fetch: FetchFn) -> bytes:
        limit = self._options.max_bytes
        if media.size is not None and media.size > limit:
            raise DownloadFailed("too_large", f"declared {media.size} bytes, media.max_bytes is {limit}")
        try:
            data = await asyncio.wait_for(fetch(), self._options.timeout)
        except TimeoutError:
            raise DownloadFailed("download_failed", f"no media within {self._options.timeout:g} s") from None
        except DownloadFailed:
            raise
        except Exception as exc:  # noqa: BLE001 (any failure of the engine's download is reported, never raised)
            raise DownloadFailed(failure_code(str(exc)), str(exc) or type(exc).__name__) from None
        if len(data) > limit:
            raise DownloadFailed("too_large", f"{len(data)} bytes (declared {media.size}), media.max_bytes is {limit}")
        if not data:
            raise DownloadFailed("download_failed", "the media is empty")
        return data

    def _store(self, name: str, data: bytes) -> Path:
        try:
            path = write_atomically(self.folder, name, data)
        except OSError as exc:
            raise DownloadFailed("download_failed", f"cannot write {self.folder}: {exc.strerror or exc}") from None
        removed = prune(self.folder, self._clock(), self._options.keep_days,
                        self._options.max_total_mb * 1024 * 1024, keep=path)
        if removed:
            log.info("%s: removed %d old media file(s)", self._account, len(removed))
        return path
