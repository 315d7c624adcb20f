"""Each account's engine session in PostgreSQL (`store.url`): one schema per account, `wa_<phone>`.

whatsmeow keeps one device per row of its tables and neonize restores by JID, but a store shared by
all accounts would mix every account's keys, pre-keys and Signal sessions in one set of tables, and a
removed account's data could not be dropped in one statement. So each account gets a schema of its
own, and the URL handed to neonize (lib/pq in Go) names it: `?search_path=wa_<phone>` (lib/pq passes
parameters it does not know as run-time parameters, checked against a real server).

Two facts measured with neonize 0.5.2 (tests/engine/test_neonize_postgres.py, docs/neonize.md):
- whatsmeow's upgrade asks `information_schema.tables` whether `whatsmeow_version` exists without
  naming a schema: once one account's schema has it, a second account's fresh schema would be taken
  for an upgraded one (`relation "whatsmeow_version" does not exist`). `prepare_whatsmeow` creates
  the (empty) version table in the new schema first; whatsmeow then upgrades it from version 0.
- lib/pq wants `sslmode` spelled out (`require` by default, which a server without TLS refuses):
  the URL's own `sslmode` is kept; without one, what psycopg negotiated decides (`require` when the
  connection is encrypted, else `disable`).

The sim engine keeps its whole store (a small SQLite file) as one row of `sim_store` in the same
schema (engines/sim_pg.py). Removing an account drops its schema: every byte of its session goes.
Every function here opens a connection of its own (sync; call them off the event loop).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .pg import connect

if TYPE_CHECKING:
    from .pg import PgConnection

SCHEMA_PREFIX = "wa_"
_VERSION_TABLE = "CREATE TABLE IF NOT EXISTS {schema}.whatsmeow_version (version INTEGER, compat INTEGER)"
_SIM_TABLE = ("CREATE TABLE IF NOT EXISTS {schema}.sim_store (id INTEGER PRIMARY KEY CHECK (id = 1), "
              "data BYTEA NOT NULL, device TEXT, saved_at TIMESTAMPTZ NOT NULL DEFAULT now())")


def account_schema(phone: str) -> str:
    """The schema of an account's session: `wa_<phone>` (digits only, so it needs no quoting)."""
    if not phone.isdigit():
        raise ValueError(f"not a phone number: {phone!r}")
    return SCHEMA_PREFIX + phone


def _has_table(conn: PgConnection, schema: str, table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s)", (f"{schema}.{table}",)).fetchone()
    return row is not None and row[0] is not None


def whatsmeow_dsn(url: str, phone: str, tls: bool) -> str:
    """The name neonize opens for the account: `url` with `search_path` and `sslmode` for lib/pq."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "search_path"]
    if not any(k == "sslmode" for k, _ in query):
        query.append(("sslmode", "require" if tls else "disable"))
    query.append(("search_path", account_schema(phone)))
    return urlunsplit(parts._replace(query=urlencode(query)))


def prepare_whatsmeow(url: str, phone: str) -> str:
    """Create the account's schema (and whatsmeow's version table in it, see above); its neonize name."""
    schema = account_schema(phone)
    with connect(url) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        conn.execute(_VERSION_TABLE.format(schema=schema))
        tls = bool(conn.pgconn.ssl_in_use)
    return whatsmeow_dsn(url, phone, tls)


def device_jids(url: str, phone: str) -> list[str]:
    """The linked devices' JIDs in the account's whatsmeow tables; [] when none or no schema."""
    schema = account_schema(phone)
    with connect(url) as conn:
        if not _has_table(conn, schema, "whatsmeow_device"):
            return []
        return [str(row[0]) for row in conn.execute(f"SELECT jid FROM {schema}.whatsmeow_device ORDER BY jid")]


def device_keys(url: str, phone: str) -> list[tuple[str, bytes]]:
    """(jid, noise key) of each linked device of the account (engines/neonize_calls.py keys secrets with it)."""
    schema = account_schema(phone)
    with connect(url) as conn:
        if not _has_table(conn, schema, "whatsmeow_device"):
            return []
        rows = conn.execute(f"SELECT jid, noise_key FROM {schema}.whatsmeow_device ORDER BY jid").fetchall()
    return [(str(jid), bytes(key)) for jid, key in rows]


def sent_with_secret(url: str, phone: str, secret: bytes) -> str | None:
    """whatsmeow's id of the newest outgoing message that carried `secret` (newest: the row's
    inserting transaction, PostgreSQL's `xmin`, stands for SQLite's rowid)."""
    schema = account_schema(phone)
    with connect(url) as conn:
        if not _has_table(conn, schema, "whatsmeow_message_secrets"):
            return None
        row = conn.execute(f"SELECT message_id FROM {schema}.whatsmeow_message_secrets WHERE key = %s "
                           "ORDER BY xmin::text::bigint DESC LIMIT 1", (secret,)).fetchone()
    return str(row[0]) if row else None


def forget_secret(url: str, phone: str, secret: bytes) -> None:
    """Drop the record of a secret whose send failed (see engines/neonize_calls.py forget_secret)."""
    schema = account_schema(phone)
    with connect(url) as conn:
        if _has_table(conn, schema, "whatsmeow_message_secrets"):
            conn.execute(f"DELETE FROM {schema}.whatsmeow_message_secrets WHERE key = %s", (secret,))


def load_sim(url: str, phone: str) -> bytes | None:
    """The account's sim store (a SQLite file's bytes), or None when PostgreSQL has none."""
    with connect(url) as conn:
        return load_sim_on(conn, phone)


def load_sim_on(conn: PgConnection, phone: str) -> bytes | None:
    schema = account_schema(phone)
    if not _has_table(conn, schema, "sim_store"):
        return None
    row = conn.execute(f"SELECT data FROM {schema}.sim_store WHERE id = 1").fetchone()
    return bytes(row[0]) if row else None


def save_sim_on(conn: PgConnection, phone: str, data: bytes, device: str | None) -> None:
    """Keep the account's sim store (`device`: the linked phone, or None) durably."""
    schema = account_schema(phone)
    if not _has_table(conn, schema, "sim_store"):
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        conn.execute(_SIM_TABLE.format(schema=schema))
    conn.execute(f"INSERT INTO {schema}.sim_store (id, data, device) VALUES (1, %s, %s) ON CONFLICT (id) "
                 "DO UPDATE SET data = EXCLUDED.data, device = EXCLUDED.device, saved_at = now()",
                 (data, device))


def has_device(url: str, phone: str) -> bool | None:
    """Whether the account has a linked device in PostgreSQL (whatsmeow's or the sim's); None when
    PostgreSQL holds no session of it at all."""
    with connect(url) as conn:
        return has_device_on(conn, phone)


def has_device_on(conn: PgConnection, phone: str) -> bool | None:
    schema = account_schema(phone)
    known: bool | None = None
    if _has_table(conn, schema, "whatsmeow_device"):
        if conn.execute(f"SELECT 1 FROM {schema}.whatsmeow_device LIMIT 1").fetchone() is not None:
            return True
        known = False
    if _has_table(conn, schema, "sim_store"):
        found = conn.execute(f"SELECT device FROM {schema}.sim_store WHERE id = 1").fetchone()
        if found is not None:
            return found[0] is not None
    return known


def drop_account(url: str, phone: str) -> bool:
    """Drop the account's schema and everything in it; True when there was one."""
    schema = account_schema(phone)
    with connect(url) as conn:
        row = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    return row is not None


def session_schemas(url: str) -> list[str]:
    """The phones with a session schema, sorted (for the `sessions` CLI)."""
    with connect(url) as conn:
        rows: list[Any] = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s ORDER BY nspname",
            (SCHEMA_PREFIX.replace("_", r"\_") + "%",)).fetchall()
    return [str(row[0])[len(SCHEMA_PREFIX):] for row in rows if str(row[0])[len(SCHEMA_PREFIX):].isdigit()]
