"""Incoming message ids already handled, in PostgreSQL (`store.url`): accounts/dedup.py's SeenIds
interface and meaning, in a table every bridge of a cluster shares (an account taken over by another
instance keeps its ids, so a message WhatsApp delivers again after the takeover is still dropped).

Bounded like the SQLite file: each account keeps about its newest `window` ids (trimmed every
`window // 100` new ids, so up to 1 % more). `hold=True` keeps an id in memory until `write_held`,
as there (its message is only in memory); there is no full disk to hold ids for otherwise.

Batched per loop turn like the SQLite file: inside a running loop `remember` keeps the id in memory
(`seen` counts it at once) and the turn's ids are written in one transaction at the end of the turn
(one round trip for a burst, not one each); outside a loop each id is written before `remember`
returns. A write that fails (the server gone) loses the turn's ids, logged: a message delivered
again would then be published again, never lost. As there, the turn's ids are written only after
`before_write` (the spool's `commit`): held in memory while it says some messages are.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from ..accounts.dedup import DEFAULT_WINDOW, BeforeWrite, messages_on_disk, settle
from .pg import Locked, PgSchema, PgUnavailable, PgUpgrade, masked

log = logging.getLogger(__name__)

SCHEMA = PgSchema("dedup", [
    PgUpgrade(1, "the seen table", """
CREATE TABLE IF NOT EXISTS wa_mqtt_seen (
    n          BIGSERIAL PRIMARY KEY,
    account    TEXT NOT NULL,
    message_id TEXT NOT NULL,
    UNIQUE (account, message_id)
);
CREATE INDEX IF NOT EXISTS wa_mqtt_seen_by_age ON wa_mqtt_seen (account, n);
"""),
])

_SEEN = "SELECT 1 FROM wa_mqtt_seen WHERE account = %s AND message_id = %s"
_SEEN_EITHER = "SELECT 1 FROM wa_mqtt_seen WHERE account = %s AND message_id IN (%s, %s)"


class PgSeenIds:
    """accounts.dedup.SeenIds on PostgreSQL. Sync: call it from asyncio code like that one."""

    name = "dedup ids"

    def __init__(self, url: str, window: int = DEFAULT_WINDOW, *, before_write: BeforeWrite | None = None) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self.path = masked(url)
        self.window = window
        self._trim_every = max(1, window // 100)
        self._added: dict[str, int] = {}  # new ids per account since its last trim
        self._held: dict[tuple[str, str], None] = {}  # ids kept in memory (`hold`), oldest first
        self._turn: dict[tuple[str, str], None] | None = None  # the loop turn's ids, written at its end
        self._held_lock = threading.Lock()
        self._before_write = before_write
        self._db = Locked.upgraded(url, SCHEMA)
        self.duplicates = 0

    def seen(self, account: str, message_id: str, also: str | None = None) -> bool:
        """True when `message_id` (or `also`, when given: one round trip for both) was already
        remembered for `account` (counted once in `duplicates`)."""
        ids = (message_id,) if also is None else (message_id, also)
        turn = self._turn or {}
        found = any((account, id_) in self._held or (account, id_) in turn for id_ in ids)
        if not found:
            query = _SEEN if also is None else _SEEN_EITHER
            found = self._db.read(lambda conn: conn.execute(query, (account, *ids)).fetchone()) is not None
        if found:
            self.duplicates += 1
        return found

    def remember(self, account: str, message_id: str, hold: bool = False) -> None:
        """Record `message_id` for `account` (committed at the end of the loop turn, or at once outside a
        loop), or keep it in memory with `hold`."""
        if hold:
            with self._held_lock:
                self._held[(account, message_id)] = None
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            if messages_on_disk(self._before_write):
                self._write([(account, message_id)])
            else:
                with self._held_lock:
                    self._held[(account, message_id)] = None
            return
        with self._held_lock:
            if self._turn is None:
                self._turn = {}
                loop.call_soon(self.commit)
            self._turn[(account, message_id)] = None

    def commit(self) -> None:
        """Write the loop turn's ids now, in one transaction (it happens by itself at the end of the turn)."""
        spooled = self._turn is None or messages_on_disk(self._before_write)  # their messages first
        with self._held_lock:
            turn, self._turn = self._turn, None
            if turn and not spooled:  # some are only in memory (the disk full): their ids must not be written first
                self._held.update(turn)
                return
        if not turn:
            return
        import psycopg  # (as store/pg.py: imported only where PostgreSQL is used)

        try:
            self._write(list(turn))
        except (psycopg.Error, PgUnavailable) as exc:  # the server gone (mid-write, or no reconnect): the ids
            # are lost, their messages were published
            log.error("%d dedup ids not recorded (their messages would be published again if delivered "
                      "again): %s", len(turn), exc)

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def held_bytes(self) -> int:
        return sum(len(account) + len(message_id) for account, message_id in self._held)

    def write_held(self, limit: int) -> bool:
        """Write up to `limit` held ids; True when nothing is held any more."""
        with self._held_lock:
            batch = list(self._held)[:limit]
        if batch:
            self._write(batch)
            with self._held_lock:
                for key in batch:
                    self._held.pop(key, None)
        return not self._held

    def close(self, write_held: bool = True) -> None:
        """As accounts/dedup.py's `SeenIds.close`."""
        settle(self, write_held)
        self._db.close()

    def _write(self, ids: list[tuple[str, str]]) -> None:
        """Insert ids (known ones are skipped); trim an account once `window // 100` ids were added."""
        with self._db.lock, self._db.conn.transaction():
            for account, message_id in ids:
                cursor = self._db.conn.execute(
                    "INSERT INTO wa_mqtt_seen (account, message_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                    (account, message_id))
                if cursor.rowcount:
                    self._added[account] = self._added.get(account, 0) + 1
            for account in {account for account, _ in ids}:
                if self._added.get(account, 0) >= self._trim_every:
                    self._added[account] = 0
                    self._db.conn.execute(
                        "DELETE FROM wa_mqtt_seen WHERE account = %s AND n <= (SELECT n FROM wa_mqtt_seen "
                        "WHERE account = %s ORDER BY n DESC OFFSET %s LIMIT 1)", (account, account, self.window))
