"""The outbox in PostgreSQL (`store.url`): accounts/outbox.py's queue of sends and record of client ids
already sent, with the same methods and meaning, in tables shared by every bridge of a cluster.

Differences from the SQLite file: a commit is durable when it returns (so `sync` is a no-op); there is
no full disk to hold records for (`held` is 0: a failing server raises, the caller's error path
answers the request); entry ids come from one sequence, so "oldest first" is still per account.
Several bridges may share the tables: an account's entries are only touched by the instance whose
lease owns it (cluster/), the unique index keeps a client id queued once across all of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import Any

from ..accounts.outbox import IDEMPOTENCY_WINDOW, OutboxEntry, request_text
from .pg import Locked, PgSchema, PgUpgrade, masked

log = logging.getLogger(__name__)

SCHEMA = PgSchema("outbox", [
    PgUpgrade(1, "the outbox and sent tables", """
CREATE TABLE IF NOT EXISTS wa_mqtt_outbox (
    id         BIGSERIAL PRIMARY KEY,
    account    TEXT NOT NULL,
    request    TEXT NOT NULL,
    client_id  TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    wa_id      TEXT,
    tries      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS wa_mqtt_outbox_by_account ON wa_mqtt_outbox (account, id);
CREATE UNIQUE INDEX IF NOT EXISTS wa_mqtt_outbox_by_client ON wa_mqtt_outbox (account, client_id)
    WHERE client_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS wa_mqtt_sent (
    account   TEXT NOT NULL,
    client_id TEXT NOT NULL,
    wa_id     TEXT NOT NULL,
    sent_at   DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (account, client_id)
);
CREATE INDEX IF NOT EXISTS wa_mqtt_sent_by_time ON wa_mqtt_sent (sent_at);
"""),
])

_COLUMNS = "id, account, request, client_id, created_at, wa_id, tries"
_BEGIN = ("UPDATE wa_mqtt_outbox SET wa_id = COALESCE(wa_id, %s), tries = tries + 1 WHERE id = %s "
          f"RETURNING {_COLUMNS}")  # a try begins: (wa_id, entry id)


class PgOutbox:
    """accounts.outbox.Outbox's interface on PostgreSQL. Sync: call it from asyncio code like that one."""

    name = "outbox"

    def __init__(self, url: str, clock: Callable[[], datetime], *,
                 idempotency_window: float = IDEMPOTENCY_WINDOW) -> None:
        self.path = masked(url)  # what messages name it by
        self._clock = clock
        self._window = idempotency_window
        self._db = Locked.upgraded(url, SCHEMA)

    # -- the queue -------------------------------------------------------------------------------
    def enqueue(self, account: str, request: dict[str, Any] | str, client_id: str | None,
                wa_id: str | None = None) -> tuple[OutboxEntry, bool]:
        """Queue a send; (entry, False). If `client_id` is already waiting: (that entry, True), nothing added.
        `wa_id`: its first try begins at once, in the same statement (as `begin_attempt`)."""
        data = request_text(request)
        created = self._now()
        while True:  # the lock is not reentrant: a second try happens outside it
            with self._db.lock:
                row = self._db.conn.execute(
                    "INSERT INTO wa_mqtt_outbox (account, request, client_id, created_at, wa_id, tries) "
                    "VALUES (%s, %s, %s, %s, %s, %s) "
                    f"ON CONFLICT (account, client_id) WHERE client_id IS NOT NULL DO NOTHING RETURNING {_COLUMNS}",
                    (account, data, client_id, created, wa_id, 0 if wa_id is None else 1)).fetchone()
                if row is not None:
                    return _entry(row), False
                row = self._db.conn.execute(  # that client id is waiting already
                    f"SELECT {_COLUMNS} FROM wa_mqtt_outbox WHERE account = %s AND client_id = %s",
                    (account, client_id)).fetchone()
                if row is not None:
                    return _entry(row), True
            # sent and removed by another bridge between the two statements: try again

    def pending(self, account: str) -> list[OutboxEntry]:
        """The account's waiting sends, oldest first."""
        rows = self._db.read(lambda conn: conn.execute(
            f"SELECT {_COLUMNS} FROM wa_mqtt_outbox WHERE account = %s ORDER BY id", (account,)).fetchall())
        return [_entry(row) for row in rows]

    def next_pending(self, account: str, after: int = 0) -> OutboxEntry | None:
        """The account's oldest waiting send with an id above `after`."""
        row = self._db.read(lambda conn: conn.execute(
            f"SELECT {_COLUMNS} FROM wa_mqtt_outbox WHERE account = %s AND id > %s ORDER BY id LIMIT 1",
            (account, after)).fetchone())
        return _entry(row) if row else None

    def begin_attempt(self, entry_id: int, wa_id: str) -> OutboxEntry | None:
        """Keep the entry's WhatsApp id (`wa_id` if it has none yet) and count the try, durably."""
        with self._db.lock:
            row = self._db.conn.execute(_BEGIN, (wa_id, entry_id)).fetchone()
        return _entry(row) if row else None

    def sync(self) -> None:
        """Nothing to do: every commit was durable when it returned."""

    def end_attempt(self, entry_id: int) -> None:
        """The engine answered that the try failed: it does not count."""
        with self._db.lock:
            self._db.conn.execute("UPDATE wa_mqtt_outbox SET tries = GREATEST(tries - 1, 0) WHERE id = %s",
                                  (entry_id,))

    def complete(self, entry: OutboxEntry, wa_id: str) -> None:
        """The entry went out as WhatsApp message `wa_id`: remove it and remember its client id, atomically."""
        self.complete_and_begin(entry, wa_id, None)

    def complete_and_begin(self, entry: OutboxEntry, wa_id: str,
                           next_attempt: tuple[int, str] | None) -> OutboxEntry | None:
        """`complete(entry, wa_id)` and `begin_attempt(*next_attempt)` in one transaction."""
        now = self._now()
        begun = None
        with self._db.lock, self._db.conn.transaction():
            self._db.conn.execute("DELETE FROM wa_mqtt_outbox WHERE id = %s", (entry.id,))
            if entry.client_id is not None:
                self._write_sent([(entry.account, entry.client_id, wa_id, now)], now)
            if next_attempt is not None:
                begun = self._db.conn.execute(_BEGIN, (next_attempt[1], next_attempt[0])).fetchone()
        return _entry(begun) if begun else None

    def complete_all(self, done: Sequence[tuple[OutboxEntry, str]]) -> None:
        """`complete(entry, wa_id)` of each pair, in one transaction."""
        now = self._now()
        sent = [(entry.account, entry.client_id, wa_id, now) for entry, wa_id in done if entry.client_id is not None]
        with self._db.lock, self._db.conn.transaction():
            self._db.conn.execute("DELETE FROM wa_mqtt_outbox WHERE id = ANY(%s)", ([entry.id for entry, _ in done],))
            if sent:
                self._write_sent(sent, now)

    def remove(self, entry_id: int) -> None:
        """Forget one entry (sent, or answered with an error). Unknown ids are ignored."""
        with self._db.lock:
            self._db.conn.execute("DELETE FROM wa_mqtt_outbox WHERE id = %s", (entry_id,))

    def take_expired(self, account: str, ttl_seconds: float, keep: Collection[int] = ()) -> list[OutboxEntry]:
        """Remove and return the account's entries older than `ttl_seconds`, oldest first; not those of
        `keep` (sends with the engine now)."""
        taken = self._take("account = %s AND created_at < %s AND NOT (id = ANY(%s))",
                           (account, self._now() - ttl_seconds, list(keep)))
        if taken:
            log.info("outbox: %d queued sends of %s expired (older than %g s)", len(taken), account, ttl_seconds)
        return taken

    def clear(self, account: str) -> list[OutboxEntry]:
        """Remove and return every waiting entry of an account (it was removed), oldest first."""
        return self._take("account = %s", (account,))

    def depth(self, account: str) -> int:
        row = self._db.read(lambda conn: conn.execute(
            "SELECT COUNT(*) FROM wa_mqtt_outbox WHERE account = %s", (account,)).fetchone())
        return int(row[0]) if row else 0

    def accounts(self) -> list[str]:
        """Accounts with waiting entries, sorted."""
        rows = self._db.read(lambda conn: conn.execute(
            "SELECT DISTINCT account FROM wa_mqtt_outbox ORDER BY account").fetchall())
        return [str(row[0]) for row in rows]

    # -- idempotency -----------------------------------------------------------------------------
    def sent_id(self, account: str, client_id: str) -> str | None:
        """The WhatsApp id `client_id` was sent as within the window, else None."""
        cutoff = self._now() - self._window
        row = self._db.read(lambda conn: conn.execute(
            "SELECT wa_id FROM wa_mqtt_sent WHERE account = %s AND client_id = %s AND sent_at >= %s",
            (account, client_id, cutoff)).fetchone())
        return str(row[0]) if row else None

    # -- what a full disk holds on SQLite (nothing here) --------------------------------------------
    @property
    def held(self) -> int:
        return 0

    @property
    def held_bytes(self) -> int:
        return 0

    def write_held(self, limit: int) -> bool:
        return True

    def close(self) -> None:
        self._db.close()

    def _take(self, where: str, args: tuple[Any, ...]) -> list[OutboxEntry]:
        with self._db.lock:
            rows = self._db.conn.execute(f"DELETE FROM wa_mqtt_outbox WHERE {where} RETURNING {_COLUMNS}",
                                         args).fetchall()
        return sorted((_entry(row) for row in rows), key=lambda e: e.id)

    def _write_sent(self, records: list[tuple[str, str, str, float]], now: float) -> None:
        """Within a transaction: record sends and prune records past the window."""
        with self._db.conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO wa_mqtt_sent (account, client_id, wa_id, sent_at) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (account, client_id) DO UPDATE SET wa_id = EXCLUDED.wa_id, sent_at = EXCLUDED.sent_at",
                records)
        self._db.conn.execute("DELETE FROM wa_mqtt_sent WHERE sent_at < %s", (now - self._window,))

    def _now(self) -> float:
        moment = self._clock()
        if moment.tzinfo is None:
            raise ValueError("the outbox clock must return timezone-aware datetimes")
        return moment.timestamp()


def _entry(row: tuple[Any, ...]) -> OutboxEntry:
    entry_id, account, request, client_id, created_at, wa_id, tries = row
    return OutboxEntry(int(entry_id), account, request, client_id,
                       datetime.fromtimestamp(created_at, UTC), wa_id, int(tries))
