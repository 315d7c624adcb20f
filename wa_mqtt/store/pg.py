"""PostgreSQL for the bridge's own state (`store.url: postgres://...`): one connection per store, its
schema versions, and what a URL looks like.

psycopg 3, synchronous: the stores it backs (outbox, dedup ids) have the SQLite stores' synchronous
interface, called inline on the event loop like them (a query on a local server costs ~0.1 - 0.3 ms,
a SQLite fsync 0.2 - 0.6 ms). The cluster leases use its asyncio connection (cluster/lease.py).
Every statement autocommits unless it runs in `conn.transaction()`; a commit is durable when it
returns (PostgreSQL's `synchronous_commit=on`, its default), so `sync()` has nothing left to do.

Schema versions: the table `wa_mqtt_schema` holds (name, version) per kind of table set; upgrades are
the same append-only numbered list as the SQLite files' (schema.py), applied one transaction each
under an advisory lock, so several bridges starting at once upgrade once.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    import psycopg

    PgConnection = psycopg.Connection[tuple[Any, ...]]

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMES = ("postgres", "postgresql")


def is_postgres_url(url: str | None) -> bool:
    """True for a `postgres://` or `postgresql://` URL."""
    return url is not None and urlsplit(url).scheme in SCHEMES


def masked(url: str) -> str:
    """The URL with its password replaced by `***` (for logs and bridge/info)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


class PgUnavailable(RuntimeError):
    """store.url names PostgreSQL but psycopg is not installed, or the server cannot be reached."""


def connect(url: str) -> PgConnection:
    """An autocommit connection to `url`; PgUnavailable when there is no psycopg or no server."""
    try:
        import psycopg
    except ImportError:
        raise PgUnavailable("store.url names PostgreSQL but psycopg is not installed: "
                            "pip install 'wa_mqtt[postgres]' (or 'psycopg[binary]')") from None
    try:
        return psycopg.connect(url, autocommit=True)
    except psycopg.OperationalError as exc:
        raise PgUnavailable(f"cannot reach PostgreSQL at {masked(url)}: {str(exc).strip()}") from None


@dataclass(frozen=True)
class PgUpgrade:
    """Turns version `version - 1` of a table set into `version` (SQL, several statements allowed)."""

    version: int
    description: str
    sql: str


@dataclass(frozen=True)
class PgSchema:
    name: str
    upgrades: Sequence[PgUpgrade]

    @property
    def version(self) -> int:
        return len(self.upgrades)


class PgSchemaTooNew(RuntimeError):
    """The database was written by a newer wa_mqtt."""


_VERSIONS = "CREATE TABLE IF NOT EXISTS wa_mqtt_schema (name TEXT PRIMARY KEY, version INTEGER NOT NULL)"


def upgrade(conn: PgConnection, schema: PgSchema) -> int:
    """Bring `schema`'s tables to the code's version, one transaction per upgrade; the version found."""
    lock_key = zlib.crc32(f"wa_mqtt schema {schema.name}".encode())
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key,))
        conn.execute(_VERSIONS)
    found = -1
    for step in schema.upgrades:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key,))
            row = conn.execute("SELECT version FROM wa_mqtt_schema WHERE name = %s", (schema.name,)).fetchone()
            at = int(row[0]) if row else 0
            if found < 0:
                found = at
            if at > schema.version:
                raise PgSchemaTooNew(
                    f"PostgreSQL: {schema.name} schema version {at} is newer than this wa_mqtt supports "
                    f"(version {schema.version}); run the newer wa_mqtt")
            if at != step.version - 1:
                continue
            conn.execute(step.sql.encode())  # several statements: no parameters, so the simple query protocol
            conn.execute("INSERT INTO wa_mqtt_schema (name, version) VALUES (%s, %s) ON CONFLICT (name) "
                         "DO UPDATE SET version = EXCLUDED.version", (schema.name, step.version))
            log.debug("PostgreSQL: %s schema upgraded to version %d: %s", schema.name, step.version,
                      step.description)
    return max(found, 0)


class Locked:
    """A connection and the lock that serialises its use (the loop and worker threads share it).
    A connection the server dropped (a restart, a failover) is replaced on the next use: the call
    that met the drop raised, the ones after it work again once the server is back."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.lock = threading.Lock()
        self._conn = connect(url)
        self._closed = False

    @classmethod
    def upgraded(cls, url: str, schema: PgSchema) -> Locked:
        """A connection whose tables `upgrade` brought to `schema` (closed again when that fails)."""
        db = cls(url)
        try:
            upgrade(db.conn, schema)
        except BaseException:
            db.close()
            raise
        return db

    @property
    def conn(self) -> PgConnection:
        if not self._closed and (self._conn.broken or self._conn.closed):
            log.warning("PostgreSQL connection to %s was lost; connecting again", masked(self.url))
            self._conn = connect(self.url)
        return self._conn

    def read(self, query: Callable[[PgConnection], T]) -> T:
        """Run a read-only `query` under the lock; once more on a new connection when the server
        had dropped this one (a read is safe to repeat; a write that met a drop is not repeated)."""
        import psycopg

        with self.lock:
            try:
                return query(self.conn)
            except psycopg.OperationalError:
                if not self._conn.broken:
                    raise
                return query(self.conn)

    def close(self) -> None:
        with self.lock:
            self._closed = True
            self._conn.close()
