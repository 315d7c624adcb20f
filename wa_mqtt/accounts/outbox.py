"""The outbox: a durable queue (SQLite, WAL) of sends, and the record of client ids already sent
(idempotency). Every send is written here before it is handed to WhatsApp and leaves once WhatsApp
took it: a connected account's only for the call, a disconnected one's until it connects.

Each entry holds the validated send request as an opaque JSON-able dict (the message, its
`transaction`, the MQTT v5 response topic / correlation data) so the response can be sent when the
message is finally delivered or expires. Order is per account, oldest first. A client id that is
already waiting is not queued twice (`enqueue` returns the waiting entry); a client id sent within
`idempotency_window` seconds (24 h) is remembered with its WhatsApp id (`sent_id`), so it is never
sent twice. Times come from the injected clock (timezone-aware datetimes).

Retries are idempotent end to end: before each engine call `begin_attempt` stores (durably) the
WhatsApp message id the send goes out with (`wa_id`, chosen once and then kept) and counts the try
(`end_attempt` uncounts one the engine refused). A bridge killed after handing a message to WhatsApp
finds the entry again on restart and sends it with the same `wa_id`, which WhatsApp deduplicates;
`tries > 1` tells the engine an earlier try may have gone out.
`complete` removes the entry and records its client id in one transaction. An enqueue is one INSERT
(with a client id not waiting yet, `ON CONFLICT DO NOTHING`), a completion without a client id one
DELETE: each a transaction of its own. Sent records past
the window are pruned at most once a minute (`PRUNE_EVERY`); `sent_id` ignores them meanwhile.

Durability: every call commits before it returns, so every change survives a process kill (WAL).
Against a power loss (`synchronous=FULL`, the default) the fsyncs are placed where a loss would
double a send or lose an accepted one, not one per change (each cost 0.2 - 0.6 ms on the loop, three
per send). The connection always runs at SQLite's synchronous=NORMAL (no fsync on commit) and the
outbox fsyncs the WAL file itself where one is due, after the commit: what a synchronous=FULL commit
does, and it covers every commit before it too (no PRAGMA is switched per call):
- `enqueue` (with its first try begun, or not), `begin_attempt`, `end_attempt` (a lost one only
  flags the next try a retry, harmless), `complete` / `complete_and_begin` / `complete_all` commit
  without an fsync;
- before an engine call the caller runs `sync()` (one fsync of the WAL, which makes every commit
  before it durable, in order): the entry, its `wa_id` and its counted try are on disk before
  WhatsApp may have the message, so after a power loss it is retried under that id and flagged a
  retry (no double send). Every send begun before it rides on the same fsync: the send pipeline
  runs it on a thread for all the sends begun meanwhile (a group commit, send_pipeline.py);
- before a send is answered `queued: true`, `sync()` again: the queued send that was promised
  survives a power loss;
- a completion left unsynced can be lost with power: the entry comes back with its `wa_id` and
  `tries`, and its retry is recognised as sent (sim, WhatsApp by id; neonize by the messageSecret),
  so it is answered again but not sent again; the client id comes back with it (still deduplicated);
- `remove` (a refused send), expiry, `clear` and the writing of held records fsync
  right after their commit, before they return: a refused send must not come back and go out.
With `synchronous="NORMAL"` nothing is fsync'd by the outbox (a power loss may lose the last commits).

A full disk: a send that cannot be queued is refused (`DiskFull`, nothing was sent). What records a
send already made (`complete`, `remove`, expiry) cannot be refused: it is held in memory, honoured
by every read (a removed entry is never sent again, a sent id stays known), reported to `report`, and
written by `write_held` once there is space (disk_full.DiskFullWatch calls it).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from ..disk_full import DiskFull, Report, is_disk_full, prove_writable, written
from ..durable import Synchronous, transaction
from ..schema import Schema, Upgrade, open_versioned

log = logging.getLogger(__name__)

IDEMPOTENCY_WINDOW = 24 * 3600.0
PRUNE_EVERY = 60.0  # seconds (by the clock) between prunes of the sent records past the window
# A commit writes each page it changed whole to the WAL (and a checkpoint copies it back): a send's
# INSERT changes three (its row, the account index, the id sequence), its DELETE two. Small pages
# write a quarter of the bytes: ~35 instead of ~52 us CPU per send for the pair, measured.
PAGE_SIZE = 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    account    TEXT NOT NULL,
    request    TEXT NOT NULL,
    client_id  TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_account ON outbox (account, id);
CREATE UNIQUE INDEX IF NOT EXISTS outbox_by_client ON outbox (account, client_id) WHERE client_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS sent (
    account   TEXT NOT NULL,
    client_id TEXT NOT NULL,
    wa_id     TEXT NOT NULL,
    sent_at   REAL NOT NULL,
    PRIMARY KEY (account, client_id)
);
CREATE INDEX IF NOT EXISTS sent_by_time ON sent (sent_at);
"""
# Append-only (see schema.py): a change to the tables is a new Upgrade at the end, never an edit above.
SCHEMA = Schema("outbox", "queued sends", [
    Upgrade(1, "the outbox and sent tables", _SCHEMA),
    Upgrade(2, "the WhatsApp id chosen before a send, and the tries made",
            "ALTER TABLE outbox ADD COLUMN wa_id TEXT; ALTER TABLE outbox ADD COLUMN tries INTEGER NOT NULL DEFAULT 0;"),
])

_COLUMNS = "id, account, request, client_id, created_at, wa_id, tries"
# A send request as both outboxes store it (this file and store/pg_outbox.py); one encoder, stateless:
# json.dumps would build one per call.
request_json = json.JSONEncoder(separators=(",", ":")).encode
_INSERT = "INSERT INTO outbox (account, request, client_id, created_at, wa_id, tries) VALUES (?, ?, ?, ?, ?, ?)"
_INSERT_NEW = f"{_INSERT} ON CONFLICT (account, client_id) WHERE client_id IS NOT NULL DO NOTHING RETURNING id"


def request_text(request: dict[str, Any] | str) -> str:
    """A send request as both outboxes store it: a dict written by `request_json`, or (a str) the
    request written as JSON already (the send pipeline writes each message once, send_pipeline.py)."""
    return request if isinstance(request, str) else request_json(request)


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    account: str
    stored: str = field(hash=False, repr=False)  # the send request as stored: JSON, read by `request`
    client_id: str | None
    created_at: datetime
    wa_id: str | None = None  # the WhatsApp message id it goes out with, stored before the first try
    tries: int = 0  # tries that may have reached WhatsApp (begun, and not refused by the engine)

    @cached_property
    def request(self) -> dict[str, Any]:
        """The send request, decoded when first read (a send sent at once never is)."""
        request: dict[str, Any] = json.loads(self.stored)
        return request


class Outbox:
    """Durable per-account send queue plus sent client ids. Sync and fast: call it from asyncio code."""

    name = "outbox"

    def __init__(self, path: Path, clock: Callable[[], datetime], *,
                 idempotency_window: float = IDEMPOTENCY_WINDOW, synchronous: Synchronous = "FULL",
                 report: Report | None = None) -> None:
        self.path = Path(path)
        self._clock = clock
        self._window = idempotency_window
        self._report = report
        self._removed: dict[int, str] = {}  # entry id -> account: removed, its delete held (disk full)
        self._sent: dict[tuple[str, str], tuple[str, float]] = {}  # held sent records: (account, client_id) -> (wa_id, at)
        self._pruned_at = float("-inf")  # when the sent records were last pruned (clock seconds)
        self._lock = threading.Lock()
        if synchronous not in ("NORMAL", "FULL"):
            raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        self._full = synchronous == "FULL"  # fsync where the module's docstring says (else never)
        self._wal = f"{self.path}-wal"
        self._commits = 0  # commits made without an fsync, and how many of them are synced
        self._synced = 0
        self._conn = open_versioned(self.path, SCHEMA, "NORMAL", PAGE_SIZE)  # fsyncs are made here, not by SQLite
        self._rows: dict[str, int] = {}  # account -> its rows in the table (held removals included)
        self._recount()
        waiting = sum(self._rows.values())
        if waiting:
            log.info("outbox %s: %d sends waiting from before", self.path, waiting)

    # -- the queue -------------------------------------------------------------------------------
    def enqueue(self, account: str, request: dict[str, Any] | str, client_id: str | None,
                wa_id: str | None = None) -> tuple[OutboxEntry, bool]:
        """Queue a send; (entry, False). If `client_id` is already waiting: (that entry, True), nothing added.
        `wa_id`: its first try begins at once, in the same commit (as `begin_attempt(entry.id, wa_id)`):
        a send that goes to the engine now. Like `begin_attempt`, durable only with the next `sync()`.
        `request` is a dict, or that written as JSON already (`request_text`)."""
        data = request_text(request)
        created = self._now()
        tries = 0 if wa_id is None else 1
        replaced: int | None = None  # a removed entry of the same client id whose delete was held
        try:
            with self._lock:
                if client_id is None:  # one INSERT: a transaction of its own
                    entry_id = self._conn.execute(_INSERT, (account, data, None, created, wa_id, tries)).lastrowid
                elif added := self._conn.execute(_INSERT_NEW, (account, data, client_id, created, wa_id, tries)).fetchall():
                    entry_id = added[0][0]  # one INSERT too, when the client id was not waiting
                else:  # it is: that entry, unless its removal is held
                    with transaction(self._conn):
                        row = self._conn.execute(
                            f"SELECT {_COLUMNS} FROM outbox WHERE account = ? AND client_id = ?",
                            (account, client_id)).fetchone()
                        if row is not None and row[0] not in self._removed:
                            return _entry(row), True
                        if row is not None:  # removed, its delete still held: that delete goes first
                            replaced = row[0]
                            self._conn.execute("DELETE FROM outbox WHERE id = ?", (replaced,))
                        entry_id = self._conn.execute(_INSERT, (account, data, client_id, created, wa_id, tries)).lastrowid
                    if replaced is not None:  # only once committed: a rolled-back delete must stay held
                        self._removed.pop(replaced, None)
                        self._rows[account] -= 1
                self._commits += 1
                self._rows[account] = self._rows.get(account, 0) + 1
        except sqlite3.Error as exc:
            if not is_disk_full(exc, self.path):
                raise
            if self._report is not None:
                self._report(self.name, exc)
            raise DiskFull("the data disk is full: the send could not be queued, and nothing was sent") from None
        assert entry_id is not None
        return OutboxEntry(entry_id, account, data, client_id, _datetime(created), wa_id, tries), False

    def pending(self, account: str) -> list[OutboxEntry]:
        """The account's waiting sends, oldest first."""
        with self._lock:
            rows = self._conn.execute(f"SELECT {_COLUMNS} FROM outbox WHERE account = ? ORDER BY id",
                                      (account,)).fetchall()
        return [_entry(row) for row in rows if row[0] not in self._removed]

    def next_pending(self, account: str, after: int = 0) -> OutboxEntry | None:
        """The account's oldest waiting send with an id above `after` (entries queued meanwhile included)."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE account = ? AND id > ? ORDER BY id",
                (account, after))
            row = next((row for row in rows if row[0] not in self._removed), None)
        return _entry(row) if row else None

    def begin_attempt(self, entry_id: int, wa_id: str) -> OutboxEntry | None:
        """Before an engine call: keep the entry's WhatsApp id (`wa_id` if it has none yet) and count the
        try, durably. Returns the updated entry (its `wa_id` is the one to send with), None if it is gone.
        Raises DiskFull when that cannot be written: the try must not begin unrecorded."""
        try:
            with self._lock:
                if entry_id in self._removed:
                    return None
                row = self._conn.execute(
                    f"UPDATE outbox SET wa_id = COALESCE(wa_id, ?), tries = tries + 1 WHERE id = ? RETURNING {_COLUMNS}",
                    (wa_id, entry_id)).fetchone()
                self._commits += 1
        except sqlite3.Error as exc:
            if not is_disk_full(exc, self.path):
                raise
            self._held_one(exc)
            raise DiskFull("the data disk is full: the send stays queued until there is space") from None
        return _entry(row) if row else None

    def sync(self) -> None:
        """Make the relaxed commits so far survive a power loss too: one fsync of the WAL, what a
        synchronous=FULL commit does (~0.2 ms on an idle disk, milliseconds on a busy one). Safe on
        any thread: the send pipeline runs it on one, for every send begun meanwhile (a group commit).
        A failing fsync is logged: the commits still survive a process kill."""
        made = self._commits
        if made != self._synced and self._full:
            self._fsync(made)

    def _durable(self) -> None:
        """After a commit that must survive a power loss before the call returns: fsync the WAL now
        (what a synchronous=FULL commit does; it covers every commit before it too)."""
        if self._full:
            self._fsync(self._commits)

    def _fsync(self, made: int) -> None:
        """fsync the WAL, covering the first `made` commits. A failing fsync is logged: the commits
        still survive a process kill."""
        try:
            fd = os.open(self._wal, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except FileNotFoundError:  # no WAL: a checkpoint moved everything into the file and synced it
            pass
        except OSError as exc:
            log.warning("outbox %s: cannot sync its WAL (%s); its last changes survive a crash, not a power loss",
                        self.path, exc.strerror or exc)
            return
        # no lock: `sync` runs on a thread too (send_pipeline.py), and a lost race only costs an extra fsync
        self._synced = max(self._synced, made)

    def end_attempt(self, entry_id: int) -> None:
        """The engine answered that the try failed: it did not reach WhatsApp, so it does not count.
        On a full disk the count stays (a later retry is then flagged as one, which is harmless)."""
        try:
            with self._lock:
                self._conn.execute("UPDATE outbox SET tries = MAX(tries - 1, 0) WHERE id = ?", (entry_id,))
                self._commits += 1
        except sqlite3.Error as exc:
            if not is_disk_full(exc, self.path):
                raise
            log.debug("outbox: try count of entry %d kept (disk full)", entry_id)

    def complete(self, entry: OutboxEntry, wa_id: str) -> None:
        """The entry went out as WhatsApp message `wa_id`: remove it and remember its client id, atomically.
        On a full disk both are held in memory (honoured by every read) and written once there is space."""
        self.complete_and_begin(entry, wa_id, None)

    def complete_and_begin(self, entry: OutboxEntry, wa_id: str,
                           next_attempt: tuple[int, str] | None) -> OutboxEntry | None:
        """`complete(entry, wa_id)` and, in the same transaction (one fsync, a group commit),
        `begin_attempt(*next_attempt)` of the send that goes next. Returns that begun entry; None when
        there was none to begin (gone, or not asked). On a full disk the completion is held as in
        `complete` and nothing is begun (the next send's own `begin_attempt` then says DiskFull)."""
        now = self._now()
        begun = None
        with self._lock:
            try:
                if entry.client_id is None and next_attempt is None:  # one DELETE: a transaction of its own
                    gone = self._conn.execute("DELETE FROM outbox WHERE id = ?", (entry.id,)).rowcount
                else:
                    with transaction(self._conn):
                        gone = self._conn.execute("DELETE FROM outbox WHERE id = ?", (entry.id,)).rowcount
                        if entry.client_id is not None:
                            self._write_sent([(entry.account, entry.client_id, wa_id, now)], now)
                        if next_attempt is not None and next_attempt[0] not in self._removed:
                            begun = self._conn.execute(
                                f"UPDATE outbox SET wa_id = COALESCE(wa_id, ?), tries = tries + 1 WHERE id = ? "
                                f"RETURNING {_COLUMNS}", (next_attempt[1], next_attempt[0])).fetchone()
                self._commits += 1
                self._removed.pop(entry.id, None)
                if gone:
                    self._rows[entry.account] -= 1
                return _entry(begun) if begun else None
            except sqlite3.Error as exc:
                if not is_disk_full(exc, self.path):
                    raise
                error = exc
                self._hold_completion(entry, wa_id, now)
        self._held_one(error)
        return None

    def complete_all(self, done: Sequence[tuple[OutboxEntry, str]]) -> None:
        """`complete(entry, wa_id)` of each pair in one transaction: the sends the engine answered
        together (one commit for all, not one each; committed before any of them is answered, as
        `complete`). Entries gone already (expired meanwhile) are skipped. On a full disk every
        completion is held as in `complete`."""
        if len(done) == 1:
            self.complete_and_begin(done[0][0], done[0][1], None)
            return
        now = self._now()
        ids = [entry.id for entry, _ in done]
        sent = [(entry.account, entry.client_id, wa_id, now) for entry, wa_id in done if entry.client_id is not None]
        delete = f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(ids))}) RETURNING account"
        with self._lock:
            try:
                if not sent:  # one DELETE: a transaction of its own
                    gone = self._conn.execute(delete, ids).fetchall()
                else:
                    with transaction(self._conn):
                        gone = self._conn.execute(delete, ids).fetchall()
                        self._write_sent(sent, now)
                self._commits += 1
                for entry_id in ids:
                    self._removed.pop(entry_id, None)
                for (account,) in gone:
                    self._rows[account] -= 1
                return
            except sqlite3.Error as exc:
                if not is_disk_full(exc, self.path):
                    raise
                error = exc
                for entry, wa_id in done:
                    self._hold_completion(entry, wa_id, now)
        self._held_one(error)

    def _hold_completion(self, entry: OutboxEntry, wa_id: str, now: float) -> None:
        """A completion the full disk refused, held in memory (with the lock held): the entry's removal,
        unless it is gone already (expired meanwhile), and its client id's sent record."""
        if self._conn.execute("SELECT 1 FROM outbox WHERE id = ?", (entry.id,)).fetchone() is not None:
            self._removed[entry.id] = entry.account
        if entry.client_id is not None:
            self._sent[(entry.account, entry.client_id)] = (wa_id, now)

    def remove(self, entry_id: int) -> None:
        """Forget one entry (sent, or answered with an error). Unknown ids are ignored."""
        error: sqlite3.Error | None = None
        with self._lock:
            try:
                rows = self._conn.execute("DELETE FROM outbox WHERE id = ? RETURNING account", (entry_id,)).fetchall()
                self._removed.pop(entry_id, None)  # a delete held before is done now
                for (account,) in rows:
                    self._rows[account] -= 1
            except sqlite3.Error as exc:
                if not is_disk_full(exc, self.path):
                    raise
                error = exc
                row = self._conn.execute("SELECT account FROM outbox WHERE id = ?", (entry_id,)).fetchone()
                if row is None:
                    return
                self._removed[entry_id] = row[0]
        if error is None:
            if rows:
                self._durable()  # a refused send must not come back and go out
            return
        self._held_one(error)

    def take_expired(self, account: str, ttl_seconds: float, keep: Collection[int] = ()) -> list[OutboxEntry]:
        """Remove and return the account's entries older than `ttl_seconds`, oldest first; not those of
        `keep` (sends with the engine now: they are answered with its result, not `expired`)."""
        cutoff = self._now() - ttl_seconds
        where = "account = ? AND created_at < ?"
        args: tuple[Any, ...] = (account, cutoff)
        if keep:
            where += f" AND id NOT IN ({','.join('?' * len(keep))})"
            args += tuple(keep)
        rows = self._take(where, args)
        if rows:
            log.info("outbox: %d queued sends of %s expired (older than %g s)", len(rows), account, ttl_seconds)
        return rows

    def clear(self, account: str) -> list[OutboxEntry]:
        """Remove and return every waiting entry of an account (it was removed), oldest first."""
        return self._take("account = ?", (account,))

    def depth(self, account: str) -> int:
        """How many sends of the account wait: counted in memory (this instance is the file's only
        writer), no query."""
        count = self._rows.get(account, 0)
        if self._removed:
            count -= sum(1 for owner in self._removed.values() if owner == account)
        return count

    def accounts(self) -> list[str]:
        """Accounts with waiting entries, sorted."""
        return sorted(account for account in self._rows if self.depth(account) > 0)

    # -- idempotency -----------------------------------------------------------------------------
    def sent_id(self, account: str, client_id: str) -> str | None:
        """The WhatsApp id `client_id` was sent as within the window, else None."""
        cutoff = self._now() - self._window
        held = self._sent.get((account, client_id))
        if held is not None and held[1] >= cutoff:
            return held[0]
        with self._lock:
            row = self._conn.execute("SELECT wa_id FROM sent WHERE account = ? AND client_id = ? AND sent_at >= ?",
                                     (account, client_id, cutoff)).fetchone()
        return row[0] if row else None

    # -- a full disk -----------------------------------------------------------------------------
    @property
    def held(self) -> int:
        """Removals and sent records held in memory because the disk was full."""
        return len(self._removed) + len(self._sent)

    @property
    def held_bytes(self) -> int:
        return sum(64 + len(a) + len(c) + len(w) for (a, c), (w, _) in self._sent.items()) + 64 * len(self._removed)

    def write_held(self, limit: int) -> bool:
        """Write what is held (one transaction); holding nothing, prove the disk writable. True when
        nothing is held any more; False while the disk is still full."""
        with self._lock:
            return written(self.path, lambda: self._write_held(limit)) and not self.held

    def close(self) -> None:
        if self.held:
            self.write_held(self.held)
        with self._lock:
            if self.held:
                log.error("outbox %s: the disk is still full; %d records held in memory are lost (a queued send "
                          "may go out again, a sent id may be accepted again)", self.path, self.held)
            self._conn.close()

    def _write_held(self, limit: int) -> None:
        if not self.held:
            prove_writable(self._conn)
            return
        removed = list(self._removed)[:limit]
        sent = list(self._sent.items())[:limit]
        with transaction(self._conn):
            self._conn.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in removed])
            if sent:
                self._write_sent([(a, c, w, at) for (a, c), (w, at) in sent], self._now())
        for entry_id in removed:
            del self._removed[entry_id]
        for key, _ in sent:
            del self._sent[key]
        if removed:
            self._recount()
        self._durable()

    def _take(self, where: str, args: tuple[Any, ...]) -> list[OutboxEntry]:
        """Delete and return the entries matching `where`, oldest first; the delete is held if the disk is full."""
        error: BaseException | None = None
        with self._lock:
            try:
                rows = self._conn.execute(f"DELETE FROM outbox WHERE {where} RETURNING {_COLUMNS}", args).fetchall()
            except sqlite3.Error as exc:
                if not is_disk_full(exc, self.path):
                    raise
                rows = self._conn.execute(f"SELECT {_COLUMNS} FROM outbox WHERE {where}", args).fetchall()
                error = exc
            taken = [row for row in rows if row[0] not in self._removed]  # not those removed before
            if error is None:
                for row in rows:
                    self._removed.pop(row[0], None)
                    self._rows[row[1]] -= 1
            else:
                self._removed.update((row[0], row[1]) for row in taken)
        if error is None and rows:
            self._durable()  # an expired or cleared send must not come back and go out
        if error is not None and taken:
            self._held_one(error)
        return sorted((_entry(row) for row in taken), key=lambda e: e.id)

    def _recount(self) -> None:
        """Count the rows of each account again (at open, and after held removals were written)."""
        self._rows = dict(self._conn.execute("SELECT account, COUNT(*) FROM outbox GROUP BY account").fetchall())

    def _write_sent(self, records: list[tuple[str, str, str, float]], now: float) -> None:
        """Within a transaction: record sends and prune records past the window, at most once every
        `PRUNE_EVERY` seconds (`sent_id` ignores records past the window in between)."""
        self._conn.executemany(
            "INSERT OR REPLACE INTO sent (account, client_id, wa_id, sent_at) VALUES (?, ?, ?, ?)", records)
        if not 0 <= now - self._pruned_at < PRUNE_EVERY:
            self._conn.execute("DELETE FROM sent WHERE sent_at < ?", (now - self._window,))
            self._pruned_at = now

    def _held_one(self, exc: BaseException) -> None:
        if self._report is not None:
            self._report(self.name, exc)

    def _now(self) -> float:
        moment = self._clock()
        if moment.tzinfo is None:
            raise ValueError("the outbox clock must return timezone-aware datetimes")
        return moment.timestamp()


def _datetime(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def _entry(row: tuple[Any, ...]) -> OutboxEntry:
    entry_id, account, request, client_id, created_at, wa_id, tries = row
    return OutboxEntry(entry_id, account, request, client_id, _datetime(created_at), wa_id, tries)
