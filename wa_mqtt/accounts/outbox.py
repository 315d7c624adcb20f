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
`complete` removes the entry and records its client id in one transaction.

Durability: every call commits before it returns; `synchronous=FULL` by default (an fsync per
change: sends are human-rate and a queued send was promised to the user), so entries survive a
process kill and a power loss.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..durable import Synchronous, transaction
from ..schema import Schema, Upgrade, open_versioned

log = logging.getLogger(__name__)

IDEMPOTENCY_WINDOW = 24 * 3600.0

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


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    account: str
    request: dict[str, Any] = field(hash=False)
    client_id: str | None
    created_at: datetime
    wa_id: str | None = None  # the WhatsApp message id it goes out with, stored before the first try
    tries: int = 0  # tries that may have reached WhatsApp (begun, and not refused by the engine)


class Outbox:
    """Durable per-account send queue plus sent client ids. Sync and fast: call it from asyncio code."""

    def __init__(self, path: Path, clock: Callable[[], datetime], *,
                 idempotency_window: float = IDEMPOTENCY_WINDOW, synchronous: Synchronous = "FULL") -> None:
        self.path = Path(path)
        self._clock = clock
        self._window = idempotency_window
        self._lock = threading.Lock()
        self._conn = open_versioned(self.path, SCHEMA, synchronous)
        waiting = self._conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        if waiting:
            log.info("outbox %s: %d sends waiting from before", self.path, waiting)

    # -- the queue -------------------------------------------------------------------------------
    def enqueue(self, account: str, request: dict[str, Any], client_id: str | None) -> tuple[OutboxEntry, bool]:
        """Queue a send; (entry, False). If `client_id` is already waiting: (that entry, True), nothing added."""
        data = json.dumps(request, separators=(",", ":"))
        created = self._now()
        with self._lock, transaction(self._conn):
            if client_id is not None:
                row = self._conn.execute(f"SELECT {_COLUMNS} FROM outbox WHERE account = ? AND client_id = ?",
                                         (account, client_id)).fetchone()
                if row is not None:
                    return _entry(row), True
            cursor = self._conn.execute(
                "INSERT INTO outbox (account, request, client_id, created_at) VALUES (?, ?, ?, ?)",
                (account, data, client_id, created))
            entry_id = cursor.lastrowid
        assert entry_id is not None
        return OutboxEntry(entry_id, account, json.loads(data), client_id, _datetime(created)), False

    def pending(self, account: str) -> list[OutboxEntry]:
        """The account's waiting sends, oldest first."""
        with self._lock:
            rows = self._conn.execute(f"SELECT {_COLUMNS} FROM outbox WHERE account = ? ORDER BY id",
                                      (account,)).fetchall()
        return [_entry(row) for row in rows]

    def next_pending(self, account: str, after: int = 0) -> OutboxEntry | None:
        """The account's oldest waiting send with an id above `after` (entries queued meanwhile included)."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE account = ? AND id > ? ORDER BY id LIMIT 1",
                (account, after)).fetchone()
        return _entry(row) if row else None

    def begin_attempt(self, entry_id: int, wa_id: str) -> OutboxEntry | None:
        """Before an engine call: keep the entry's WhatsApp id (`wa_id` if it has none yet) and count the
        try, durably. Returns the updated entry (its `wa_id` is the one to send with), None if it is gone."""
        with self._lock:
            row = self._conn.execute(
                f"UPDATE outbox SET wa_id = COALESCE(wa_id, ?), tries = tries + 1 WHERE id = ? RETURNING {_COLUMNS}",
                (wa_id, entry_id)).fetchone()
        return _entry(row) if row else None

    def end_attempt(self, entry_id: int) -> None:
        """The engine answered that the try failed: it did not reach WhatsApp, so it does not count."""
        with self._lock:
            self._conn.execute("UPDATE outbox SET tries = MAX(tries - 1, 0) WHERE id = ?", (entry_id,))

    def complete(self, entry: OutboxEntry, wa_id: str) -> None:
        """The entry went out as WhatsApp message `wa_id`: remove it and remember its client id, atomically."""
        now = self._now()
        with self._lock, transaction(self._conn):
            self._conn.execute("DELETE FROM outbox WHERE id = ?", (entry.id,))
            if entry.client_id is not None:
                self._record_sent(entry.account, entry.client_id, wa_id, now)

    def remove(self, entry_id: int) -> None:
        """Forget one entry (sent, or answered with an error). Unknown ids are ignored."""
        with self._lock:
            self._conn.execute("DELETE FROM outbox WHERE id = ?", (entry_id,))

    def take_expired(self, account: str, ttl_seconds: float) -> list[OutboxEntry]:
        """Remove and return the account's entries older than `ttl_seconds`, oldest first."""
        cutoff = self._now() - ttl_seconds
        with self._lock:
            rows = self._conn.execute(f"DELETE FROM outbox WHERE account = ? AND created_at < ? RETURNING {_COLUMNS}",
                                      (account, cutoff)).fetchall()
        if rows:
            log.info("outbox: %d queued sends of %s expired (older than %g s)", len(rows), account, ttl_seconds)
        return sorted((_entry(row) for row in rows), key=lambda e: e.id)

    def clear(self, account: str) -> list[OutboxEntry]:
        """Remove and return every waiting entry of an account (it was removed), oldest first."""
        with self._lock:
            rows = self._conn.execute(f"DELETE FROM outbox WHERE account = ? RETURNING {_COLUMNS}",
                                      (account,)).fetchall()
        return sorted((_entry(row) for row in rows), key=lambda e: e.id)

    def depth(self, account: str) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM outbox WHERE account = ?", (account,)).fetchone()[0]

    def accounts(self) -> list[str]:
        """Accounts with waiting entries, sorted."""
        with self._lock:
            rows = self._conn.execute("SELECT DISTINCT account FROM outbox ORDER BY account").fetchall()
        return [account for (account,) in rows]

    # -- idempotency -----------------------------------------------------------------------------
    def remember_sent(self, account: str, client_id: str, wa_id: str) -> None:
        """Record that `client_id` went out as WhatsApp message `wa_id`; prune records past the window."""
        now = self._now()
        with self._lock, transaction(self._conn):
            self._record_sent(account, client_id, wa_id, now)

    def _record_sent(self, account: str, client_id: str, wa_id: str, now: float) -> None:
        self._conn.execute("INSERT OR REPLACE INTO sent (account, client_id, wa_id, sent_at) VALUES (?, ?, ?, ?)",
                           (account, client_id, wa_id, now))
        self._conn.execute("DELETE FROM sent WHERE sent_at < ?", (now - self._window,))

    def sent_id(self, account: str, client_id: str) -> str | None:
        """The WhatsApp id `client_id` was sent as within the window, else None."""
        cutoff = self._now() - self._window
        with self._lock:
            row = self._conn.execute("SELECT wa_id FROM sent WHERE account = ? AND client_id = ? AND sent_at >= ?",
                                     (account, client_id, cutoff)).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _now(self) -> float:
        moment = self._clock()
        if moment.tzinfo is None:
            raise ValueError("the outbox clock must return timezone-aware datetimes")
        return moment.timestamp()


def _datetime(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, timezone.utc)


def _entry(row: tuple[Any, ...]) -> OutboxEntry:
    entry_id, account, request, client_id, created_at, wa_id, tries = row
    return OutboxEntry(entry_id, account, json.loads(request), client_id, _datetime(created_at), wa_id, tries)
