"""The neonize (whatsmeow) store as the bridge reads it without Go: the DSN neonize is given, and the
linked devices' JIDs (read-only; the parent process asks it without loading the engine).

Where one account's store is: without `store.url` the SQLite file `sessions/<phone>/store.db`; with it,
the account's schema in PostgreSQL (store/pg_sessions.py). `store_for` gives either as a
`NeonizeStore`: neonize's store name (`dsn`) and the few reads the engine does beside whatsmeow (the
linked devices' JIDs, the device's noise key that keys `messageSecret` in neonize_calls.py, the
secrets of sends for a retry's "already sent?" and a failed send's record dropped). A failure of
either raises `sqlite3.Error` (the PostgreSQL one as `StoreError`, a subclass), so the engine's
handlers treat an unreadable store alike whichever it is.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Protocol

from . import neonize_calls as calls
from .base import EngineError
from .neonize_convert import jid_user


def store_dsn(store_path: Path) -> str:
    """The store name neonize passes to Go (`file:<name>?_foreign_keys=on` is built there)."""
    path = str(Path(store_path).absolute())
    if "?" in path or "#" in path:
        raise EngineError(f"store path may not contain '?' or '#': {path}")
    # Go appends `?_foreign_keys=on`; the trailing `&` turns that into an ignored key.
    return f"{path}?_busy_timeout=15000&_foreign_keys=on&"


def stored_device_jids(store_path: Path) -> list[str]:
    """The linked devices' JIDs (`4915…:7@s.whatsapp.net`) in a store, read-only; [] when none or no store."""
    path = Path(store_path)
    if not path.is_file():
        return []
    with sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True) as db:
        has_table = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='whatsmeow_device'").fetchone()
        if not has_table:
            return []
        return [row[0] for row in db.execute("SELECT jid FROM whatsmeow_device ORDER BY rowid")]


class StoreError(sqlite3.DatabaseError):
    """The account's store in PostgreSQL could not be read or written (the server's message)."""


class NeonizeStore(Protocol):
    def dsn(self) -> str:
        """The name neonize opens (creating what whatsmeow needs first)."""
        ...

    def device_jids(self) -> list[str]: ...

    def device_key(self) -> bytes | None: ...

    def sent_with_secret(self, secret: bytes) -> str | None: ...

    def forget_secret(self, secret: bytes) -> None: ...


class SqliteNeonizeStore:
    """The account's `store.db`."""

    def __init__(self, phone: str, store_path: Path) -> None:
        self.phone = phone
        self.path = Path(store_path)

    def dsn(self) -> str:
        return store_dsn(self.path)

    def device_jids(self) -> list[str]:
        return stored_device_jids(self.path)

    def device_key(self) -> bytes | None:
        return calls.device_key(self.path, self.phone)

    def sent_with_secret(self, secret: bytes) -> str | None:
        return calls.sent_with_secret(self.path, secret)

    def forget_secret(self, secret: bytes) -> None:
        calls.forget_secret(self.path, secret)


class PgNeonizeStore:
    """The account's schema `wa_<phone>` in PostgreSQL."""

    def __init__(self, phone: str, url: str) -> None:
        self.phone = phone
        self._url = url

    def dsn(self) -> str:
        from ..store import pg_sessions

        with _errors():
            return pg_sessions.prepare_whatsmeow(self._url, self.phone)

    def device_jids(self) -> list[str]:
        from ..store import pg_sessions

        with _errors():
            return pg_sessions.device_jids(self._url, self.phone)

    def device_key(self) -> bytes | None:
        from ..store import pg_sessions

        with _errors():
            rows = pg_sessions.device_keys(self._url, self.phone)
        mine = [key for jid, key in rows if jid_user(jid) == self.phone] or [key for _jid, key in rows]
        return mine[0] if mine else None

    def sent_with_secret(self, secret: bytes) -> str | None:
        from ..store import pg_sessions

        with _errors():
            return pg_sessions.sent_with_secret(self._url, self.phone, secret)

    def forget_secret(self, secret: bytes) -> None:
        from ..store import pg_sessions

        with _errors():
            pg_sessions.forget_secret(self._url, self.phone, secret)


class _errors:
    """psycopg's errors (and an unreachable server) as StoreError."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        import psycopg

        from ..store.pg import PgUnavailable

        if exc is not None and isinstance(exc, psycopg.Error | PgUnavailable):
            raise StoreError(str(exc).strip()) from exc


def store_for(store_url: str | None, phone: str, store_path: Path) -> NeonizeStore:
    """The account's store: in PostgreSQL with `store.url`, else its SQLite file."""
    if store_url is not None:
        return PgNeonizeStore(phone, store_url)
    return SqliteNeonizeStore(phone, store_path)


def account_of(store_path: Path) -> str:
    """The phone whose store this is: `sessions/<phone>/store.db` (accounts/store.py's layout)."""
    return Path(store_path).parent.name
