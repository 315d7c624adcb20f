"""The spool: a durable FIFO (SQLite, WAL) of MQTT publishes the broker has not acknowledged yet.

`append` commits before it returns, so an entry survives a kill of the process at any point after
it; `peek` reads the oldest entries and `ack(seq)` removes that entry and everything older, once the
broker has acknowledged them. The spool stays under `max_bytes` (topic + payload bytes) by dropping
its oldest entries, counted in `dropped` and reported by one warning per overflow episode (an
episode ends at the next `ack`). An entry larger than `max_bytes` on its own is still kept (alone).

Durability: WAL with `synchronous=NORMAL` by default. A committed append survives a process crash
or SIGKILL (the requirement); only a power loss can lose the last appends. `synchronous="FULL"`
fsyncs every append and is about 4x slower. Measured (2 vCPU VM, SQLite 3.40, 366-byte payloads):
NORMAL 25,000 appends/s, FULL 6,000/s; draining with peek(100)+ack ~160,000 entries/s either way.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from ..durable import Synchronous, transaction
from ..schema import Schema, Upgrade, open_versioned

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 256 * 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    topic   TEXT    NOT NULL,
    payload BLOB    NOT NULL,
    qos     INTEGER NOT NULL,
    retain  INTEGER NOT NULL,
    size    INTEGER NOT NULL
)
"""
# Append-only (see schema.py): a change to the table is a new Upgrade at the end, never an edit above.
SCHEMA = Schema("spool", "MQTT messages not yet published", [
    Upgrade(1, "the spool table", _SCHEMA),
])


@dataclass(frozen=True)
class SpoolEntry:
    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Spool:
    """Durable FIFO of unacknowledged publishes. Sync and fast: call it straight from asyncio code."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES,
                 *, synchronous: Synchronous = "NORMAL") -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.dropped = 0
        self._overflowing = False
        self._lock = threading.Lock()
        self._conn = open_versioned(self.path, SCHEMA, synchronous)
        count, total = self._conn.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM spool").fetchone()
        self._count: int = count
        self._bytes: int = total
        if count:
            log.info("spool %s: %d publishes (%d bytes) waiting from before", self.path, count, total)

    def append(self, topic: str, payload: bytes, qos: int, retain: bool) -> int:
        """Store one publish (committed when this returns); returns its sequence number."""
        size = len(topic.encode()) + len(payload)
        with self._lock:
            if self._count and self._bytes + size > self.max_bytes:
                with transaction(self._conn):
                    freed, removed = self._drop_oldest(self._bytes + size - self.max_bytes)
                    seq = self._insert(topic, payload, qos, retain, size)
                self._note_dropped(removed)
                self._bytes -= freed
                self._count -= removed
            else:
                seq = self._insert(topic, payload, qos, retain, size)
            self._bytes += size
            self._count += 1
            return seq

    def peek(self, limit: int) -> list[SpoolEntry]:
        """The oldest `limit` entries, oldest first (nothing is removed)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, topic, payload, qos, retain FROM spool ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [SpoolEntry(seq, topic, bytes(payload), qos, bool(retain)) for seq, topic, payload, qos, retain in rows]

    def ack(self, seq: int) -> None:
        """Remove the entry `seq` and every older one (the broker has them)."""
        with self._lock:
            sizes = self._conn.execute("DELETE FROM spool WHERE seq <= ? RETURNING size", (seq,)).fetchall()
            self._count -= len(sizes)
            self._bytes -= sum(size for (size,) in sizes)
            self._overflowing = False

    def __len__(self) -> int:
        return self._count

    @property
    def size_bytes(self) -> int:
        """Topic + payload bytes waiting (what `max_bytes` bounds)."""
        return self._bytes

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- internals (called with the lock held) --------------------------------------------------
    def _insert(self, topic: str, payload: bytes, qos: int, retain: bool, size: int) -> int:
        cursor = self._conn.execute(
            "INSERT INTO spool (topic, payload, qos, retain, size) VALUES (?, ?, ?, ?, ?)",
            (topic, payload, qos, int(retain), size))
        seq = cursor.lastrowid
        assert seq is not None
        return seq

    def _drop_oldest(self, need: int) -> tuple[int, int]:
        """Delete the fewest oldest entries freeing at least `need` bytes (or all); (bytes, count)."""
        freed = removed = 0
        last = 0
        while freed < need:
            rows = self._conn.execute(
                "SELECT seq, size FROM spool WHERE seq > ? ORDER BY seq LIMIT 256", (last,)).fetchall()
            if not rows:
                break
            for seq, size in rows:
                freed += size
                removed += 1
                last = seq
                if freed >= need:
                    break
        if removed:
            self._conn.execute("DELETE FROM spool WHERE seq <= ?", (last,))
        return freed, removed

    def _note_dropped(self, removed: int) -> None:
        self.dropped += removed
        if removed and not self._overflowing:
            self._overflowing = True
            log.warning("spool %s is full (%d bytes): dropping the oldest unpublished messages (%d so far)",
                        self.path, self.max_bytes, self.dropped)
