"""What neonize 0.5.2 does with a PostgreSQL URL as its store name, against a real server (the
review's finding, checked): goneonize's `getDB` opens a SQLite container on `file:<name>?...` first
and then, for a name starting with "postgres", a PostgreSQL one (lib/pq), keeping only the second.
Measured here: the whatsmeow tables are created in PostgreSQL; the SQLite attempt leaves no file in
the working folder (its path, `postgresql:/...`, does not exist, so SQLite cannot create it); lib/pq
wants `sslmode=disable` for a server without TLS. See docs/scaling.md."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'psycopg[binary]'")


def _devices(url: str) -> str:
    """GetAllDevices' raw answer ('' when there are none; an error text otherwise)."""
    from neonize._binder import gocode
    from neonize.client import func_callback_bytes2, log_whatsmeow

    callback = func_callback_bytes2(log_whatsmeow)
    return str(gocode.GetAllDevices(url.encode(), callback).decode())


def test_neonize_keeps_whatsmeows_store_in_postgresql_and_leaves_no_sqlite_file(
        pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert "SSL is not enabled" in _devices(pg_url)  # lib/pq: TLS unless told otherwise
    assert _devices(pg_url + "?sslmode=disable") == ""  # no device yet, no error
    with psycopg.connect(pg_url) as conn:
        tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"whatsmeow_device", "whatsmeow_sessions", "whatsmeow_pre_keys", "whatsmeow_version"} <= tables
    assert os.listdir(tmp_path) == []  # the SQLite container opened first left nothing behind
