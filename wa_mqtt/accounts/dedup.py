"""Incoming message ids already handled, per account, across restarts (SQLite, WAL): each id is published once.

Bounded: keeps the newest `window` ids per account (the engine only re-delivers recent messages).
`first_time` records the id in the same call, committed before it returns (a process kill
afterwards keeps it). Call it once the message is safe elsewhere (e.g. after the spool append), or
`forget` the id when handing the message on failed, so a crash in between cannot lose a message.
"""

from __future__ import annotations

import threading
from pathlib import Path

from ..durable import Synchronous, transaction
from ..schema import Schema, Upgrade, open_versioned

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
# Append-only (see schema.py): a change to the table is a new Upgrade at the end, never an edit above.
SCHEMA = Schema("dedup", "message ids already handled", [
    Upgrade(1, "the seen table", _SCHEMA),
])


class SeenIds:
    """Which message ids each account has already seen. Sync and fast: call it from asyncio code."""

    def __init__(self, path: Path, window: int = DEFAULT_WINDOW, *, synchronous: Synchronous = "NORMAL") -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.path = Path(path)
        self.window = window
        self._lock = threading.Lock()
        self._conn = open_versioned(self.path, SCHEMA, synchronous)
        self._counts: dict[str, int] = dict(
            self._conn.execute("SELECT account, COUNT(*) FROM seen GROUP BY account").fetchall())

    def first_time(self, account: str, message_id: str) -> bool:
        """True the first time `message_id` is seen for `account` (and remember it), else False."""
        with self._lock:
            if self._conn.execute("SELECT 1 FROM seen WHERE account = ? AND message_id = ?",
                                  (account, message_id)).fetchone():
                return False
            count = self._counts.get(account, 0) + 1
            if count <= self.window:
                self._insert(account, message_id)
            else:
                with transaction(self._conn):
                    self._insert(account, message_id)
                    self._conn.execute(
                        "DELETE FROM seen WHERE n IN (SELECT n FROM seen WHERE account = ? ORDER BY n LIMIT ?)",
                        (account, count - self.window))
                count = self.window
            self._counts[account] = count
            return True

    def forget(self, account: str, message_id: str) -> None:
        """Un-see an id (handing the message on failed), so its redelivery is handled."""
        with self._lock:
            removed = self._conn.execute("DELETE FROM seen WHERE account = ? AND message_id = ?",
                                         (account, message_id)).rowcount
            if removed:
                self._counts[account] -= removed

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _insert(self, account: str, message_id: str) -> None:
        self._conn.execute("INSERT INTO seen (account, message_id) VALUES (?, ?)", (account, message_id))
