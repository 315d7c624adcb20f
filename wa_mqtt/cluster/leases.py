"""The cluster's tables in PostgreSQL and the statements on them (psycopg, asyncio).

- `wa_mqtt_instances`: each live bridge (`instance_id`, its process token, `expires_at`); a bridge
  whose row expired is dead to the others.
- `wa_mqtt_accounts`: the account records: every account the cluster knows (registered when a
  bridge finds its session or pairs it).
- `wa_mqtt_leases`: who runs which account until when. A lease is taken only when it is free or
  expired (one statement: two bridges cannot both take it) and renewed by its holder every round.
  A released lease stays as a row with no holder, expired at the moment its engine stopped.

Times are PostgreSQL's `now()`: the bridges' clocks never meet. A holder also takes a session-level
advisory lock per account on a connection of its own before it starts the engine (coordinator.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ..store.pg import PgSchema, PgUpgrade

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

SCHEMA = PgSchema("cluster", [
    PgUpgrade(1, "instances, account records and leases", """
CREATE TABLE IF NOT EXISTS wa_mqtt_instances (
    instance_id TEXT PRIMARY KEY,
    token       TEXT NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS wa_mqtt_accounts (
    account    TEXT PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS wa_mqtt_leases (
    account     TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    token       TEXT NOT NULL,
    since       TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS wa_mqtt_leases_by_token ON wa_mqtt_leases (token);
"""),
])

# A released lease: no holder, expired when its engine stopped (`stopped_ago` seconds ago); (stopped_ago, token)
_RELEASE = ("UPDATE wa_mqtt_leases SET instance_id = '', token = '', expires_at = now() - make_interval(secs => %s) "
            "WHERE token = %s")


class InstanceIdInUse(RuntimeError):
    """Another live bridge runs under this instance_id."""


@dataclass
class ClusterView:
    """The cluster as one round saw it."""

    live: list[str] = field(default_factory=list)  # live instance ids, sorted
    accounts: set[str] = field(default_factory=set)  # every account record
    owners: dict[str, str] = field(default_factory=dict)  # account -> instance id, unexpired leases only


@dataclass(frozen=True)
class Claimed:
    """A lease just taken: from whom (None: it was free or already this instance's), and how many
    seconds ago that one may last have served the account (its release, or its last renewal)."""

    previous: str | None
    unserved_for: float | None


class LeaseTable:
    """One instance's statements on the cluster's tables."""

    def __init__(self, conn: psycopg.AsyncConnection[tuple[Any, ...]], instance_id: str, token: str,
                 ttl: float) -> None:
        self._conn = conn
        self.instance_id = instance_id
        self.token = token
        self._ttl = timedelta(seconds=ttl)

    async def join(self) -> None:
        """Register this instance; InstanceIdInUse when a live bridge already has its id."""
        cursor = await self._conn.execute(
            "INSERT INTO wa_mqtt_instances (instance_id, token, expires_at) VALUES (%s, %s, now() + %s) "
            "ON CONFLICT (instance_id) DO UPDATE SET token = EXCLUDED.token, started_at = now(), "
            "expires_at = EXCLUDED.expires_at WHERE wa_mqtt_instances.expires_at < now() "
            "OR wa_mqtt_instances.token = EXCLUDED.token RETURNING 1",
            (self.instance_id, self.token, self._ttl))
        if await cursor.fetchone() is None:
            raise InstanceIdInUse(
                f"instance_id {self.instance_id!r} is in use by a live bridge (its lease has not expired): "
                "give each bridge of a cluster its own instance_id, or wait for the old one's to expire")

    async def renew(self) -> set[str] | None:
        """Extend this instance's row and its leases; the accounts it still holds. None when its
        row was taken over (it was considered dead): it must stop everything."""
        async with self._conn.transaction():
            cursor = await self._conn.execute(
                "UPDATE wa_mqtt_instances SET expires_at = now() + %s WHERE instance_id = %s AND token = %s "
                "RETURNING 1", (self._ttl, self.instance_id, self.token))
            if await cursor.fetchone() is None:
                return None
            cursor = await self._conn.execute(
                "UPDATE wa_mqtt_leases SET expires_at = now() + %s WHERE token = %s AND expires_at > now() "
                "RETURNING account", (self._ttl, self.token))
            return {str(row[0]) for row in await cursor.fetchall()}

    async def view(self) -> ClusterView:
        live = await (await self._conn.execute(
            "SELECT instance_id FROM wa_mqtt_instances WHERE expires_at > now() ORDER BY instance_id")).fetchall()
        accounts = await (await self._conn.execute("SELECT account FROM wa_mqtt_accounts")).fetchall()
        owners = await (await self._conn.execute(
            "SELECT account, instance_id FROM wa_mqtt_leases WHERE expires_at > now()")).fetchall()
        return ClusterView([str(r[0]) for r in live], {str(r[0]) for r in accounts},
                           {str(a): str(i) for a, i in owners})

    async def register(self, accounts: list[str]) -> None:
        """Record accounts (known ones are kept)."""
        if accounts:
            async with self._conn.cursor() as cursor:
                await cursor.executemany(
                    "INSERT INTO wa_mqtt_accounts (account) VALUES (%s) ON CONFLICT DO NOTHING",
                    [(a,) for a in accounts])

    async def forget(self, account: str) -> None:
        """The account was removed: its record and lease go."""
        async with self._conn.transaction():
            await self._conn.execute("DELETE FROM wa_mqtt_leases WHERE account = %s", (account,))
            await self._conn.execute("DELETE FROM wa_mqtt_accounts WHERE account = %s", (account,))

    async def claim(self, account: str) -> Claimed | None:
        """Take the account's lease if it is free, expired or already this instance's; None when
        another live instance holds it."""
        cursor = await self._conn.execute(
            "WITH before AS (SELECT instance_id, expires_at FROM wa_mqtt_leases WHERE account = %s) "
            "INSERT INTO wa_mqtt_leases (account, instance_id, token, expires_at) VALUES (%s, %s, %s, now() + %s) "
            "ON CONFLICT (account) DO UPDATE SET instance_id = EXCLUDED.instance_id, token = EXCLUDED.token, "
            "since = now(), expires_at = EXCLUDED.expires_at "
            "WHERE wa_mqtt_leases.expires_at <= now() OR wa_mqtt_leases.token = EXCLUDED.token "
            "RETURNING (SELECT instance_id FROM before), "
            "(SELECT EXTRACT(EPOCH FROM now() - CASE WHEN instance_id = '' THEN expires_at "
            "ELSE expires_at - %s END) FROM before)",
            (account, account, self.instance_id, self.token, self._ttl, self._ttl))
        row = await cursor.fetchone()
        if row is None:
            return None
        before, ago = row
        if before is None or before == self.instance_id:
            return Claimed(None, None)
        return Claimed(str(before) or None, max(0.0, float(ago)))

    async def release(self, account: str, stopped_ago: float = 0.0) -> None:
        """Give the lease up (its engine is stopped; it served nothing for `stopped_ago` seconds): another
        instance may take it at once, and serves the requests it kept from that moment on."""
        await self._conn.execute(_RELEASE + " AND account = %s", (stopped_ago, self.token, account))

    async def leave(self, stopped_ago: float = 0.0) -> None:
        """A clean shutdown: every lease is released and this instance's row goes (the others take over at once)."""
        async with self._conn.transaction():
            await self._conn.execute(_RELEASE, (stopped_ago, self.token))
            await self._conn.execute("DELETE FROM wa_mqtt_instances WHERE token = %s", (self.token,))
