"""The spool: a durable FIFO (SQLite, WAL) of MQTT publishes the broker has not acknowledged yet.

`append` commits before it returns (with `batch`, `commit()` does), so an entry survives a kill of
the process at any point after that; `peek` reads the oldest entries (after a given one) and
`ack(seq)` removes that entry and everything older, once the broker has acknowledged them.

Batches: `append(batch=True)` writes the entry into an open transaction instead, and `commit()`
commits all of them at once; an entry is not visible to `peek` (so never published) before it is
committed, and every call that writes (`ack`, a "published up to" mark, `write_held`, `close`) commits
it first. The link batches the durable publishes of a loop turn and commits them at its end (one
`call_soon`): what the bridge read from its engine was only in memory until then either way, so the
batch only widens, by the rest of the turn, the window in which a kill loses what it read (the dedup
ids are written only after the spool's batch: `before_write` in accounts/dedup.py). Measured (2 vCPU
VM, the send benchmark, 8,000 sends, ~12 durable publishes per commit; strace): per send, 14.6 WAL
writes (`pwrite`) and 21 file locks (`fcntl`) with one transaction per append, 10.9 and 10.7 with
batches, and 16.2 -> 9.1 KB written (the rest is the outbox's); docs/performance.md has the rest.

Redelivery: an entry that may have reached the broker already is returned with `redelivered` set.
The publisher calls `publishing(seq)` before each publish; `connection_lost()` then marks what was in
flight (published, not yet removed). Across a crash, the spool keeps a mark ahead of the newest entry
published (`PUBLISHED_LEASE` entries ahead, rewritten when passed), so after a kill every entry up to
it is marked: at most that many of them were never published. The spool stays under `max_bytes` (topic + payload bytes) by dropping
its oldest entries, counted in `dropped` and reported by one warning per overflow episode (an
episode ends at the next `ack`). An entry larger than `max_bytes` on its own is still kept (alone).

Sequence numbers are never reused, across restarts too (the "published up to" mark relies on it:
a new entry must never take a number at or below it). They are the spool's own (`_last_seq`), not
SQLite's AUTOINCREMENT (a sqlite_sequence write on every insert, ~7 us of ~23; removed by schema
upgrade 3): an "issued up to" mark (`spool_state`) runs `ISSUED_LEASE` numbers ahead and is
written in the same transaction as the append that passes it, so no number is ever committed
above it; a new process starts above the mark, the newest entry and the "published up to" mark.

The newest entries this process wrote are also kept in memory (the tail: up to `TAIL_ENTRIES` and
`TAIL_BYTES`), so the publisher's `peek` right behind the appends reads them without a query. Every
entry on disk above `_tail_floor` is in the tail (entries enter it once committed, leave it when
acknowledged, dropped for room or pushed out by newer ones, which raises the floor); a `peek` that
starts below the floor reads the file as before.

A full disk loses nothing: an entry that cannot be written is held in memory with its sequence number
(and every later one behind it, so the order stays), reported to `report` (disk_full.DiskFullWatch),
returned by `peek` after the entries on disk (so it is published from memory when the broker is
reachable) and written by `write_held` once there is space. An `ack` that cannot delete is kept in
memory and its rows are skipped until the delete succeeds.

Durability: WAL with `synchronous=NORMAL` by default. A committed append survives a process crash
or SIGKILL (the requirement); only a power loss can lose the last appends. `synchronous="FULL"`
fsyncs every append and is about 4x slower. Measured (2 vCPU VM, SQLite 3.40, 366-byte payloads):
NORMAL 25,000 appends/s, FULL 6,000/s; draining with peek(100)+ack ~160,000 entries/s either way.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import islice
from pathlib import Path

from ..disk_full import Report, is_disk_full, prove_writable, written
from ..durable import Synchronous, transaction
from ..schema import Schema, Upgrade, open_versioned

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
PUBLISHED_LEASE = 64  # entries the persisted "published up to" mark runs ahead: one write per 64 publishes
ISSUED_LEASE = 1024  # numbers the persisted "issued up to" mark runs ahead: one write per 1,024 appends
TAIL_ENTRIES = 512  # the newest entries written also kept in memory (`peek` reads them without a query) ...
TAIL_BYTES = 1 << 20  # ... up to this many topic + payload bytes

_INSERT = "INSERT INTO spool (seq, topic, payload, qos, retain, size) VALUES (?, ?, ?, ?, ?, ?)"
_WRITE_ISSUED = "INSERT OR REPLACE INTO spool_state (key, value) VALUES ('issued_upto', ?)"
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


def _without_autoincrement(conn: sqlite3.Connection) -> None:
    """Upgrade 3 (shipped: never edited): sequence numbers kept unique by the `issued_upto` mark, which
    `Spool` keeps ahead of every number it stores; the highest number issued so far (AUTOINCREMENT's
    sqlite_sequence) becomes it. The table itself loses AUTOINCREMENT (its sqlite_sequence write cost
    ~7 us of each append's ~25 us) only when it is empty (`_rebuild_if_empty`, here and at each open):
    a copy of a large spool (the broker away for days, the disk nearly full: when a spool matters)
    would need its size again in free space, and a failed upgrade keeps the bridge from starting.
    Numbers are always given explicitly, so either table works."""
    sequences = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone()
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'spool'").fetchone() if sequences else None
    (last,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM spool").fetchone()
    conn.execute("INSERT OR REPLACE INTO spool_state (key, value) VALUES ('issued_upto', ?)",
                 (max(last, row[0] if row else 0),))
    _rebuild_if_empty(conn)


def _autoincrement(conn: sqlite3.Connection) -> bool:
    """Whether the spool table still has AUTOINCREMENT (see upgrade 3)."""
    (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'spool'").fetchone()
    return "AUTOINCREMENT" in sql.upper()


def _rebuild_if_empty(conn: sqlite3.Connection) -> bool:
    """Make an empty spool table one without AUTOINCREMENT (see upgrade 3); True when it was rebuilt.
    Within the caller's transaction."""
    if not _autoincrement(conn) or conn.execute("SELECT 1 FROM spool LIMIT 1").fetchone() is not None:
        return False
    conn.execute("DROP TABLE spool")
    conn.execute("CREATE TABLE spool (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, payload BLOB NOT NULL,"
                 " qos INTEGER NOT NULL, retain INTEGER NOT NULL, size INTEGER NOT NULL)")
    return True


# Append-only (see schema.py): a change to the table is a new Upgrade at the end, never an edit above.
SCHEMA = Schema("spool", "MQTT messages not yet published", [
    Upgrade(1, "the spool table", _SCHEMA),
    Upgrade(2, "what was published, for redelivery marks after a crash",
            "CREATE TABLE spool_state (key TEXT PRIMARY KEY, value INTEGER NOT NULL)"),
    Upgrade(3, "sequence numbers kept unique by a mark, not AUTOINCREMENT", _without_autoincrement),
])


@dataclass(frozen=True)
class SpoolEntry:
    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    redelivered: bool = False  # it may have reached the broker before (a lost connection, a crash)


class Spool:
    """Durable FIFO of unacknowledged publishes. Sync and fast: call it straight from asyncio code."""

    name = "spool"

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES,
                 *, synchronous: Synchronous = "NORMAL", report: Report | None = None) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.dropped = 0
        self.lost = 0  # publishes held in memory when the file was closed on a full disk (never written)
        self._report = report
        self._overflowing = False
        self._lock = threading.Lock()
        self._conn = open_versioned(self.path, SCHEMA, synchronous)
        self._drop_autoincrement()
        count, total, last = self._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0), COALESCE(MAX(seq), 0) FROM spool").fetchone()
        state = dict(self._conn.execute("SELECT key, value FROM spool_state").fetchall())
        self._count: int = count
        self._bytes: int = total
        self._issued: int = state.get("issued_upto", 0)  # persisted: no number above it was ever stored
        self._last_seq: int = max(last, self._issued, state.get("published_upto", 0))  # numbers are never reused
        self._held: deque[SpoolEntry] = deque()  # could not be written (disk full), oldest first
        self._tail: deque[SpoolEntry] = deque()  # the newest entries on disk, oldest first: every one
        self._tail_floor = self._last_seq  # above this is in `_tail` (or held); none of this process yet
        self._tail_bytes = 0
        self._held_bytes = 0
        self._acked = 0  # everything up to here is acknowledged (its delete may still be pending)
        self._delete_pending = False
        self._lease: int = state.get("published_upto", 0)  # persisted: no entry above it was published
        self._redeliver_upto = self._lease  # entries up to it may have reached the broker
        self._published_upto = 0  # the newest entry published in this process
        self._lease_failed = False
        self._batch: list[SpoolEntry] = []  # appended with `batch`, in the open transaction, not yet committed
        self._batch_bytes = 0
        self._batch_issued: int | None = None  # the "issued up to" mark written in the open batch
        if count:
            log.info("spool %s: %d publishes (%d bytes) waiting from before", self.path, count, total)

    def _drop_autoincrement(self) -> None:
        """A spool upgraded to version 3 while it held entries keeps its AUTOINCREMENT table until it is
        found empty at an open (upgrade 3's docstring); a failure (a full disk) leaves it for the next."""
        if not _autoincrement(self._conn):  # the common case: no transaction at each start
            return
        try:
            with transaction(self._conn):
                rebuilt = _rebuild_if_empty(self._conn)
        except sqlite3.Error as exc:
            log.debug("spool %s: table kept as it is for now (%s)", self.path, exc)
            return
        if rebuilt:
            log.debug("spool %s: empty table rebuilt without AUTOINCREMENT", self.path)

    def append(self, topic: str, payload: bytes, qos: int, retain: bool, batch: bool = False) -> int:
        """Store one publish (committed when this returns; with `batch`, in the open batch, committed by
        `commit()`; held in memory while the disk is full); returns its sequence number."""
        size = len(topic.encode()) + len(payload)  # `_size(entry)`
        with self._lock:
            self._last_seq += 1
            entry = SpoolEntry(self._last_seq, topic, payload, qos, retain)
            error: BaseException | None = None
            if not self._held:
                try:
                    if batch and not self._overflows(size):
                        self._add_to_batch(entry, size)
                        return entry.seq
                    error = self._commit_batch()
                    if error is None:
                        self._store((entry,), size)
                        return entry.seq
                except sqlite3.Error as exc:
                    if not is_disk_full(exc, self.path):
                        raise
                    error = exc
            self._held.append(entry)  # behind the ones held already (a failed batch's too): the order stays
            self._held_bytes += size
        if self._report is not None:
            self._report(self.name, error)
        return entry.seq

    def commit(self) -> bool:
        """Commit the open batch (a failure on a full disk holds its entries in memory, in order, and
        reports it). True when every entry appended so far is on disk, none held in memory."""
        with self._lock:
            error = self._commit_batch()
            on_disk = not self._held
        if error is not None and self._report is not None:
            self._report(self.name, error)
        return on_disk

    def peek(self, limit: int, after: int = 0) -> list[SpoolEntry]:
        """The oldest `limit` entries newer than `after`, oldest first: on disk, then held in memory
        (nothing is removed)."""
        with self._lock:
            lower = max(self._acked, after)
            upto = self._redeliver_upto
            if lower >= self._tail_floor:  # all of it is in the tail: this process wrote it (committed)
                entries = [entry if entry.seq > upto else replace(entry, redelivered=True)
                           for entry in islice((e for e in self._tail if e.seq > lower), limit)]
            else:  # the file, up to the open batch (its rows are visible to this connection already)
                rows = self._conn.execute(
                    "SELECT seq, topic, payload, qos, retain FROM spool WHERE seq > ? AND seq < ? ORDER BY seq "
                    "LIMIT ?", (lower, self._batch[0].seq if self._batch else self._last_seq + 1, limit)).fetchall()
                entries = [SpoolEntry(seq, topic, bytes(payload), qos, bool(retain), seq <= upto)
                           for seq, topic, payload, qos, retain in rows]
            if len(entries) < limit:
                held = (replace(e, redelivered=e.seq <= upto) for e in self._held if e.seq > after)
                entries.extend(islice(held, limit - len(entries)))
        return entries

    def publishing(self, seq: int) -> None:
        """Entry `seq` is about to be published: after a crash it counts as maybe delivered."""
        if seq > self._lease:
            self.commit()  # the mark is due before this publish: it must not wait for the open batch
        with self._lock:
            self._published_upto = max(self._published_upto, seq)
            if seq > self._lease:
                self._write_mark(seq + PUBLISHED_LEASE)

    def connection_lost(self) -> None:
        """The connection is gone: entries published on it and not removed may have reached the broker."""
        with self._lock:
            self._redeliver_upto = max(self._redeliver_upto, self._published_upto)

    def ack(self, seq: int) -> None:
        """Remove the entry `seq` and every older one (the broker has them)."""
        self.commit()  # the open batch first (none of it is acknowledged: it was never published)
        error: BaseException | None = None
        with self._lock:
            while self._held and self._held[0].seq <= seq:
                self._held_bytes -= _size(self._held.popleft())
            known = self._acked >= self._tail_floor  # every row it removes is in the tail: sizes known
            removed = self._trim_tail(seq)
            self._overflowing = False
            if seq <= self._acked:
                return
            try:
                if known:
                    self._conn.execute("DELETE FROM spool WHERE seq <= ?", (seq,))
                    sizes = [(size,) for size in removed]
                else:
                    rows = self._conn.execute("DELETE FROM spool WHERE seq <= ? RETURNING seq, size",
                                              (seq,)).fetchall()
                    # rows up to `_acked` may be left from an acknowledgement whose delete was held:
                    # they were counted out then, and are deleted now
                    sizes = [(size,) for row_seq, size in rows if row_seq > self._acked]
                self._delete_pending = False
            except sqlite3.Error as exc:
                if not is_disk_full(exc, self.path):
                    raise
                # a delete needs space too: remember the acknowledgement, skip its rows, delete them later
                sizes = self._conn.execute("SELECT size FROM spool WHERE seq > ? AND seq <= ?",
                                           (self._acked, seq)).fetchall()
                self._delete_pending = True
                error = exc
            self._acked = seq
            self._count -= len(sizes)
            self._bytes -= sum(size for (size,) in sizes)
        if error is not None and self._report is not None:
            self._report(self.name, error)

    def __len__(self) -> int:
        return self._count + len(self._batch) + len(self._held)

    @property
    def size_bytes(self) -> int:
        """Topic + payload bytes waiting, on disk (what `max_bytes` bounds; the open batch counted) and
        held in memory."""
        return self._bytes + self._batch_bytes + self._held_bytes

    @property
    def held(self) -> int:
        """Entries held in memory because the disk was full (see the module's docstring)."""
        return len(self._held)

    @property
    def held_bytes(self) -> int:
        return self._held_bytes

    def write_held(self, limit: int) -> bool:
        """Write up to `limit` held entries (oldest first, one transaction) and any pending delete; holding
        nothing, prove the disk writable. True when nothing is held any more and every write succeeded;
        False while the disk is still full."""
        with self._lock:
            return written(self.path, lambda: self._write_held(limit)) and not self._held

    def close(self) -> None:
        """Close the file; what is still held (the disk full to the end) is written now or reported lost
        (counted in `lost`: the dedup ids of those messages must not be written then, app.py);
        the "maybe delivered" mark is written exact (what was published and is still here)."""
        with self._lock:
            try:  # not reported (the watch is closed by now): a failure holds the batch, written below or lost
                self._commit_batch()
            except sqlite3.Error as exc:
                log.error("spool %s: the last publishes could not be committed (%s)", self.path, exc)
        if self._held or self._delete_pending:
            self.write_held(len(self._held) or 1)
        with self._lock:
            if self._held:
                self.lost = len(self._held)
                log.error("spool %s: the disk is still full; %d publishes held in memory are lost", self.path,
                          len(self._held))
            exact = max(self._redeliver_upto, self._published_upto)
            if exact != self._lease:
                self._write_mark(exact)
            self._conn.close()

    # -- internals (called with the lock held) --------------------------------------------------
    def _overflows(self, size: int) -> bool:
        """Whether `size` more bytes would take the spool over `max_bytes` (then the oldest are dropped)."""
        return bool(self._count or self._batch) and self._bytes + self._batch_bytes + size > self.max_bytes

    def _add_to_batch(self, entry: SpoolEntry, size: int) -> None:
        """Insert `entry` in the open batch (opening it), with the "issued up to" mark when it passes it.
        A failure rolls the batch back and holds its entries (then raises)."""
        try:
            if not self._batch:
                self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute(_INSERT, (entry.seq, entry.topic, entry.payload, entry.qos, int(entry.retain), size))
            if entry.seq > (self._batch_issued or self._issued):
                self._batch_issued = entry.seq + ISSUED_LEASE
                self._conn.execute(_WRITE_ISSUED, (self._batch_issued,))
        except sqlite3.Error:
            self._hold_batch()
            raise
        self._batch.append(entry)
        self._batch_bytes += size

    def _commit_batch(self) -> BaseException | None:
        """Commit the open batch, if any. On a full disk its entries are held (in order) and the error
        returned for the caller to report; any other error holds them too, and is raised."""
        if not self._batch:
            return None
        try:
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._hold_batch()
            if not is_disk_full(exc, self.path):
                raise
            return exc
        batch, size = self._batch, self._batch_bytes
        if self._batch_issued is not None:
            self._issued = self._batch_issued
        self._batch, self._batch_bytes, self._batch_issued = [], 0, None
        self._stored(batch, size)
        return None

    def _hold_batch(self) -> None:
        """The open batch could not be written: rolled back, its entries held in memory (before any
        newer: none is held while a batch is open)."""
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")
        self._held.extendleft(reversed(self._batch))
        self._held_bytes += self._batch_bytes
        self._batch, self._batch_bytes, self._batch_issued = [], 0, None

    def _store(self, entries: Sequence[SpoolEntry], size: int | None = None) -> None:
        """Insert entries with their numbers (committed), dropping the oldest if over `max_bytes`
        (`size`: theirs together, when the caller has it). Raises the write's error with nothing changed."""
        if size is None:
            size = sum(_size(e) for e in entries)
        last = entries[-1]
        overflowing = self._overflows(size)  # (no batch is open here: its callers commit it first)
        if len(entries) == 1 and last.seq <= self._issued and not overflowing:
            # the common case (an append): one INSERT, autocommit: committed when it returns
            self._conn.execute(_INSERT, (last.seq, last.topic, last.payload, last.qos, int(last.retain), size))
            self._stored(entries, size)
            return
        issued = last.seq + ISSUED_LEASE if last.seq > self._issued else None
        if overflowing:
            with transaction(self._conn):
                freed, removed, dropped_upto = self._drop_oldest(self._bytes + size - self.max_bytes)
                self._insert_all(entries, issued)
            self._note_dropped(removed)
            self._bytes -= freed
            self._count -= removed
            self._trim_tail(dropped_upto)
        else:
            with transaction(self._conn):
                self._insert_all(entries, issued)
        if issued is not None:
            self._issued = issued
        self._stored(entries, size)

    def _stored(self, entries: Sequence[SpoolEntry], size: int) -> None:
        """Entries (of `size` bytes together) are committed: counted, and the newest in the tail."""
        self._bytes += size
        self._count += len(entries)
        self._tail.extend(entries)  # committed: now on disk, and the newest there
        self._tail_bytes += size
        while len(self._tail) > TAIL_ENTRIES or (self._tail_bytes > TAIL_BYTES and self._tail):
            oldest = self._tail.popleft()
            self._tail_bytes -= _size(oldest)
            self._tail_floor = oldest.seq  # from here on only on disk

    def _trim_tail(self, upto: int) -> list[int]:
        """Entries up to `upto` left the spool (acknowledged, or dropped for room): their sizes."""
        sizes = []
        while self._tail and self._tail[0].seq <= upto:
            size = _size(self._tail.popleft())
            self._tail_bytes -= size
            sizes.append(size)
        return sizes

    def _insert_all(self, entries: Sequence[SpoolEntry], issued: int | None) -> None:
        """Insert entries (in the caller's transaction) and, when they pass it, the new "issued up to"
        mark with them: a number is never stored unless the mark covers it."""
        for entry in entries:
            self._insert(entry)
        if issued is not None:
            self._conn.execute(_WRITE_ISSUED, (issued,))

    def _insert(self, entry: SpoolEntry) -> None:
        self._conn.execute(_INSERT, (entry.seq, entry.topic, entry.payload, entry.qos, int(entry.retain), _size(entry)))

    def _write_held(self, limit: int) -> None:
        self._commit_batch()  # (one may be open when nothing is held: this is also the disk's write probe)
        if self._delete_pending:
            self._conn.execute("DELETE FROM spool WHERE seq <= ?", (self._acked,))
            self._delete_pending = False
        if not self._held:
            prove_writable(self._conn)
            return
        batch = list(islice(self._held, limit))
        self._store(batch)
        for entry in batch:
            self._held.popleft()
            self._held_bytes -= _size(entry)

    def _write_mark(self, value: int) -> None:
        """Persist "no entry above `value` was published"; a failure (a full disk) is logged once and
        the mark kept in memory: entries published past it would not be marked after a crash."""
        try:
            self._conn.execute("INSERT OR REPLACE INTO spool_state (key, value) VALUES ('published_upto', ?)",
                               (value,))
        except sqlite3.Error as exc:
            if not self._lease_failed:
                log.warning("spool %s: cannot record what was published (%s): after a crash, copies "
                            "published again may lack \"redelivered\"", self.path, exc)
            self._lease_failed = True
        else:
            self._lease_failed = False
        self._lease = value

    def _drop_oldest(self, need: int) -> tuple[int, int, int]:
        """Delete the fewest oldest entries freeing at least `need` bytes (or all); (bytes, count, the
        newest deleted)."""
        freed = removed = 0
        last = self._acked
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
        return freed, removed, last

    def _note_dropped(self, removed: int) -> None:
        self.dropped += removed
        if removed and not self._overflowing:
            self._overflowing = True
            log.warning("spool %s is full (%d bytes): dropping the oldest unpublished messages (%d so far)",
                        self.path, self.max_bytes, self.dropped)


def _size(entry: SpoolEntry) -> int:
    return len(entry.topic.encode()) + len(entry.payload)
