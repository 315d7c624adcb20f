"""A full data disk: noticed when a write fails, shown, retried on a timer, and never a lost message.

The bridge's own files (spool, dedup ids, outbox) live in `data_dir`. When one of their writes fails
for lack of space (ENOSPC, EDQUOT, SQLite's SQLITE_FULL) the store keeps what it could not write in
memory (it is a `Holder`) and reports it to the `DiskFullWatch`, which:
- logs one line when the condition starts and one when it clears;
- tells the accounts (`on_change`): their status shows `error_code: disk_full` meanwhile;
- asks the holders, in the order they were added, to write what they hold every `retry_every`
  seconds until all of them can (a holder that holds nothing proves the disk writable with a write
  of its own); the spool comes before the dedup ids, so an id never reaches the disk before its
  message does;
- pauses the engines (`Intake`, back-pressure) while more than `hold_max_bytes` are held, and lets
  them go on once the held bytes are below half of that.
Nothing held is dropped; only a process kill while the disk is still full loses what memory held.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .durable import transaction
from .engines.base import Intake
from .errors import MESSAGES, BridgeError, ErrorCode

log = logging.getLogger(__name__)

RETRY_EVERY = 1.0  # seconds between two attempts to write what is held
DEFAULT_HOLD_MB = 64
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_LOW_SPACE = 1 << 20  # an SQLite I/O error with less free space than this counts as a full disk

# What a store calls when it holds something: (which store, the write error or None when the item
# only queued behind earlier held ones).
Report = Callable[[str, BaseException | None], None]


class DiskFull(BridgeError):
    """A write that cannot be held (e.g. a new queued send) was refused for lack of space (`disk_full`)."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(ErrorCode.DISK_FULL, message)


def is_disk_full(exc: BaseException, path: Path | None = None) -> bool:
    """True for an error that means "no space left": ENOSPC / EDQUOT, SQLITE_FULL, or an SQLite I/O
    error while the filesystem of `path` is (nearly) out of space."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc):
            return True
        if path is not None and code is not None and code & 0xFF == sqlite3.SQLITE_IOERR:
            return _free_bytes(path) < _LOW_SPACE
        return False
    return isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS


def written(path: Path, write: Callable[[], None]) -> bool:
    """Run `write` (on the SQLite file at `path`); False when it failed for lack of space, which leaves
    nothing changed. Other errors are raised."""
    try:
        write()
    except sqlite3.Error as exc:
        if not is_disk_full(exc, path):
            raise
        return False
    return True


def prove_writable(conn: sqlite3.Connection) -> None:
    """A committed transaction that leaves nothing behind; it fails as a real write would on a full disk."""
    with transaction(conn):
        conn.execute("CREATE TABLE space_probe (x)")
        conn.execute("DROP TABLE space_probe")


def _free_bytes(path: Path) -> int:
    try:
        stats = os.statvfs(path if path.is_dir() else path.parent)
    except OSError:
        return 1 << 62
    return stats.f_bavail * stats.f_frsize


class Holder(Protocol):
    """A store that keeps in memory what it could not write."""

    name: str

    @property
    def held(self) -> int:
        """Items held in memory."""
        ...

    @property
    def held_bytes(self) -> int: ...

    def write_held(self, limit: int) -> bool:
        """Write up to `limit` held items (or, holding nothing, prove the disk writable with a write);
        True when nothing is held any more and the writes succeeded. Never raises for a full disk."""
        ...


class DiskFullWatch:
    """The data disk's condition, shared by every store of the bridge. Used from the event loop."""

    def __init__(self, intake: Intake, hold_max_bytes: int = DEFAULT_HOLD_MB << 20,
                 retry_every: float = RETRY_EVERY, batch: int = 500,
                 on_change: Callable[[str | None], None] | None = None) -> None:
        self.intake = intake
        self.hold_max_bytes = hold_max_bytes
        self._retry_every = retry_every
        self._batch = batch
        self._holders: list[Holder] = []
        self.on_change = on_change  # the condition started (its status text) or ended (None)
        self.error: str | None = None  # the status text while the disk is full, else None
        self._task: asyncio.Task[None] | None = None
        self._written = 0

    def add(self, holder: Holder) -> None:
        self._holders.append(holder)

    @property
    def held(self) -> int:
        return sum(h.held for h in self._holders)

    @property
    def held_bytes(self) -> int:
        return sum(h.held_bytes for h in self._holders)

    def report(self, where: str, exc: BaseException | None) -> None:
        """A store holds something: start the condition if it is new, and push back when over the bound."""
        if self.error is None:
            self.error = MESSAGES[ErrorCode.DISK_FULL]
            log.warning("data disk full (%s: %s): holding what cannot be written in memory, retrying every %g s",
                        where, exc, self._retry_every)
            self._written = 0
            if self.on_change is not None:
                self.on_change(self.error)
            self._task = asyncio.get_running_loop().create_task(self._recover(), name="disk-full-retry")
        if self.intake.is_open and self.held_bytes >= self.hold_max_bytes:
            self.intake.pause()
            log.warning("%.1f MB held in memory while the data disk is full: engines paused until there is space",
                        self.held_bytes / (1 << 20))

    async def _recover(self) -> None:
        """Write what is held until every holder can; then end the condition."""
        while True:
            await asyncio.sleep(self._retry_every)
            while True:
                before = self.held
                try:
                    done = self._write_in_order()
                except Exception:  # not a full disk: a bug or a broken file; keep the condition, try again
                    log.exception("writing what is held in memory failed")
                    break
                self._written += max(0, before - self.held)
                self._maybe_resume()
                if done:
                    self._clear()
                    return
                if self.held >= before:
                    break  # no progress: wait for the next round
                await asyncio.sleep(0)  # progress: write the next batch soon, without starving the loop

    def _write_in_order(self) -> bool:
        """Each holder in the order they were added (the spool before the dedup ids of the messages it
        holds), stopping at the first that cannot finish: True when all are written."""
        return all(holder.write_held(self._batch) for holder in self._holders)

    def _maybe_resume(self) -> None:
        if not self.intake.is_open and self.held_bytes < self.hold_max_bytes // 2:
            self.intake.resume()
            log.info("engines resumed: %.1f MB still held in memory", self.held_bytes / (1 << 20))

    def _clear(self) -> None:
        self.error = None
        self._task = None
        if not self.intake.is_open:
            self.intake.resume()
        log.info("data disk writable again: %d held items written", self._written)
        if self.on_change is not None:
            self.on_change(None)

    async def close(self) -> None:
        """Stop retrying (the stores try one last time when they close)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
