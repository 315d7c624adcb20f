"""Incoming message ids already handled, per account, across restarts (SQLite, WAL): each id is published once.

Bounded: keeps the newest `window` ids per account (the engine only re-delivers recent messages),
trimmed back to `window` once it holds `window // 256` more (up to 0.4 % more: one DELETE per 79 new
ids at the default window instead of a transaction with a DELETE for every message once it is full;
an id kept a little longer is only ever dropped as a duplicate, as it was published).
Ask `seen` first, hand the message on, then `remember` it, so a crash in between repeats a message
rather than losing it. Inside a running event loop `remember` keeps the id in memory for the rest of
the loop turn (`seen` counts it at once) and the turn's ids are written together at its end (one
`call_soon` scheduled by the turn's first id): a burst of incoming messages arrives many per turn,
so one transaction for tens of ids, ~5 us CPU per id instead of ~19 us for an autocommit INSERT
each. A process kill within the turn can lose the turn's ids, never a message: the spool batches a
turn's publishes too (mqtt/spool.py), and the turn's ids are written only after `before_write` (the
spool's `commit`) says every message spooled so far is on disk (when it says some are held in memory,
the disk full, the ids are held as well); a lost id only makes a message delivered again be
published again, the direction above. Outside a loop (scripts, tools) each id is committed before
`remember` returns (after `before_write`; held when it says messages are held); `commit` writes the
turn's ids at once, `close` does too.

A full disk: an id that cannot be written is held in memory (still counted as seen) and reported to
`report`; `write_held` writes the held ids once there is space (disk_full.DiskFullWatch calls it).
A turn's write that fails on a full disk (it changes nothing) holds all the turn's ids the same way,
oldest first.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable
from contextlib import nullcontext
from itertools import islice
from pathlib import Path
from typing import Protocol

from ..disk_full import Holder, Report, is_disk_full, prove_writable, written
from ..durable import Synchronous, transaction
from ..schema import Schema, Upgrade, open_versioned

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 20000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS seen (
    n          INTEGER PRIMARY KEY,
    account    TEXT NOT NULL,
    message_id TEXT NOT NULL,
    UNIQUE (account, message_id)
);
CREATE INDEX IF NOT EXISTS seen_by_age ON seen (account, n);
"""
# Version 2: the ids are the table's key (WITHOUT ROWID), so remembering one writes two b-trees (the
# table, the age index), not three (rowid table, unique index, age index): ~5 us less per message
# (measured: seen + remember of a new id 33.7 -> 29.0 us CPU). `n` (insertion order) is now given by
# SeenIds, one past the largest on open.
_KEYED = """
CREATE TABLE seen_keyed (
    account    TEXT NOT NULL,
    message_id TEXT NOT NULL,
    n          INTEGER NOT NULL,
    PRIMARY KEY (account, message_id)
) WITHOUT ROWID;
INSERT INTO seen_keyed (account, message_id, n) SELECT account, message_id, n FROM seen;
DROP TABLE seen;
ALTER TABLE seen_keyed RENAME TO seen;
CREATE INDEX seen_by_age ON seen (account, n);
"""
# A new file's pages: each id's commit writes the pages it changed whole to the WAL (a leaf of the
# table, one of the age index), 10.5 KiB with 4 KiB pages, 3.7 KiB with these; seen + remember of a new
# id in a full 20,000-id window 27.5 -> 24.2 us CPU, measured, and less for the checkpointer to copy.
PAGE_SIZE = 1024

# Append-only (see schema.py): a change to the table is a new Upgrade at the end, never an edit above.
SCHEMA = Schema("dedup", "message ids already handled", [
    Upgrade(1, "the seen table", _SCHEMA),
    Upgrade(2, "the seen table keyed by account and id (one index less to write per id)", _KEYED),
])


class _Batched(Holder, Protocol):
    def commit(self) -> None: ...


BeforeWrite = Callable[[], bool]
"""Called before dedup ids are written: commits what their messages were spooled in, and says whether
every message spooled so far is on disk (the spool's `commit`)."""


def messages_on_disk(before_write: BeforeWrite | None) -> bool:
    """`before_write()` (True without one): here and in store/pg_dedup.py."""
    return before_write is None or before_write()


def settle(ids: _Batched, write_held: bool) -> None:
    """What `close` does before letting go, here and in store/pg_dedup.py: the loop turn's ids written,
    then the held ones, or (`write_held` False: the spool lost their messages) dropped, logged."""
    ids.commit()
    if ids.held and write_held:
        ids.write_held(ids.held)
    elif ids.held:
        log.warning("%d dedup ids held in memory not written: the spool could not keep their messages", ids.held)


class SeenIds:
    """Which message ids each account has already seen. Sync and fast: call it from the event loop's
    thread (a turn's ids are written there, at its end); the lock keeps a call from another thread safe."""

    name = "dedup ids"

    def __init__(self, path: Path, window: int = DEFAULT_WINDOW, *, synchronous: Synchronous = "NORMAL",
                 report: Report | None = None, before_write: BeforeWrite | None = None) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.path = Path(path)
        self.window = window
        self._trim_at = window + window // 256  # an account holding more is trimmed back to `window`
        self._report = report
        self._before_write = before_write
        self._lock = threading.Lock()
        self._conn = open_versioned(self.path, SCHEMA, synchronous, PAGE_SIZE)
        rows = self._conn.execute("SELECT account, COUNT(*), MAX(n) FROM seen GROUP BY account").fetchall()
        self._counts: dict[str, int] = {account: count for account, count, _ in rows}
        self._next_n = max((last for _, _, last in rows), default=0) + 1  # the insertion order of the next id
        self._held: dict[tuple[str, str], None] = {}  # (account, id) not written yet (disk full), oldest first
        self._turn: dict[tuple[str, str], None] | None = None  # the loop turn's ids, written at its end
        self.duplicates = 0  # how often `seen` said yes since start: messages delivered again, dropped

    def seen(self, account: str, message_id: str, also: str | None = None) -> bool:
        """True when `message_id` (or `also`, when given: one query for both) was already remembered
        for `account` (counted once in `duplicates`)."""
        with self._lock:
            found = self._seen(account, message_id, also)
        if found:
            self.duplicates += 1
        return found

    def remember(self, account: str, message_id: str, hold: bool = False) -> None:
        """Record `message_id` for `account` (written at the end of the loop turn, or at once outside a
        loop; held in memory while the disk is full). `hold`: keep it in memory anyway (its message is
        only in memory: its id must not reach the disk first)."""
        error: BaseException | None = None
        key = (account, message_id)
        with self._lock:
            if key in self._held or (self._turn is not None and key in self._turn):
                return
            if not self._held and not hold:
                if self._turn is not None:
                    self._turn[key] = None
                    return
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:  # no loop: written now (after the spool's)
                    if not messages_on_disk(self._before_write):
                        self._held[key] = None
                        return
                    try:
                        self._write([key])
                        return
                    except sqlite3.Error as exc:
                        if not is_disk_full(exc, self.path):
                            raise
                        error = exc
                else:
                    self._turn = {key: None}
                    loop.call_soon(self.commit)
                    return
            self._held[key] = None
        if self._report is not None:
            self._report(self.name, error)

    def commit(self) -> None:
        """Write the loop turn's ids now, in one transaction (it happens by itself at the end of the
        turn); on a full disk they are held (before any held since) and reported."""
        spooled = self._turn is None or messages_on_disk(self._before_write)  # their messages first
        with self._lock:
            turn, self._turn = self._turn, None
            if not turn:
                return
            if not spooled:  # some are only in memory (the disk full): their ids must not reach the disk first
                self._held = {**turn, **self._held}
                return
            try:
                self._write(list(turn))
                return
            except sqlite3.Error as exc:
                if not is_disk_full(exc, self.path):
                    log.error("%d dedup ids not recorded (their messages would be published again if "
                              "delivered again): %s", len(turn), exc)
                    return
                self._held = {**turn, **self._held}
                error = exc
        if self._report is not None:
            self._report(self.name, error)

    @property
    def held(self) -> int:
        """Ids held in memory because the disk was full."""
        return len(self._held)

    @property
    def held_bytes(self) -> int:
        return sum(len(account) + len(message_id) for account, message_id in self._held)

    def write_held(self, limit: int) -> bool:
        """Write up to `limit` held ids (one transaction); holding none, prove the disk writable. True when
        nothing is held any more; False while the disk is still full."""
        self.commit()  # first the turn's ids (held too if that fails)
        with self._lock:
            return written(self.path, lambda: self._write_held(limit)) and not self._held

    def close(self, write_held: bool = True) -> None:
        """Write the turn's ids and the held ones, then close. `write_held=False`: the held ids are
        dropped, not written: the spool lost messages held in memory (a disk full to the end), and an
        id written for one of those would drop its redelivery after a restart (app.py)."""
        settle(self, write_held)
        with self._lock:
            self._conn.close()

    # -- internals (called with the lock held) --------------------------------------------------
    def _write_held(self, limit: int) -> None:
        batch = list(islice(self._held, limit))
        if not batch:
            prove_writable(self._conn)
            return
        self._write(batch)
        for key in batch:
            del self._held[key]

    def _seen(self, account: str, message_id: str, also: str | None = None) -> bool:
        turn = self._turn
        if turn is not None and ((account, message_id) in turn or (account, also) in turn):
            return True
        if also is None:
            return (account, message_id) in self._held or self._conn.execute(
                "SELECT 1 FROM seen WHERE account = ? AND message_id = ?", (account, message_id)).fetchone() is not None
        return (account, message_id) in self._held or (account, also) in self._held or self._conn.execute(
            "SELECT 1 FROM seen WHERE account = ? AND message_id IN (?, ?)",
            (account, message_id, also)).fetchone() is not None

    def _write(self, ids: list[tuple[str, str]]) -> None:
        """Insert ids (known ones are skipped) and trim an account that went past `_trim_at` back to the
        window, in one commit; raises with nothing changed."""
        single = len(ids) == 1 and self._counts.get(ids[0][0], 0) < self._trim_at  # the common case: one commit
        added: dict[str, int] = {}
        with nullcontext() if single else transaction(self._conn):
            for account, message_id in ids:
                if self._conn.execute("INSERT OR IGNORE INTO seen (account, message_id, n) VALUES (?, ?, ?)",
                                      (account, message_id, self._next_n)).rowcount:
                    self._next_n += 1  # (a batch rolled back leaves a gap: only the order counts)
                    added[account] = added.get(account, 0) + 1
            self._trim(added)
        self._count(added)

    def _trim(self, added: dict[str, int]) -> None:
        """Delete the oldest ids of an account that `added` takes past `_trim_at`, back to the window."""
        for account, n in added.items():
            total = self._counts.get(account, 0) + n
            if total > self._trim_at:
                self._conn.execute(
                    "DELETE FROM seen WHERE account = ? AND n IN "
                    "(SELECT n FROM seen WHERE account = ? ORDER BY n LIMIT ?)",
                    (account, account, total - self.window))

    def _count(self, added: dict[str, int]) -> None:
        """The counts once `added` (and its trim) is committed."""
        for account, n in added.items():
            total = self._counts.get(account, 0) + n
            self._counts[account] = self.window if total > self._trim_at else total
