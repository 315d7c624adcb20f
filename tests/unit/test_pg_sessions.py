"""Sessions in PostgreSQL (store/pg_sessions.py, engines/sim_pg.py) against the real server: the name
neonize gets, and the sim's store kept in the account's schema (loaded over a stale working copy and
its sent-id log, a pre-existing linked file taken in, a leftover without a device dropped, saved after
calls)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from wa_mqtt.engines.sim import SimEngine
from wa_mqtt.engines.sim_pg import PgSimEngine, SimStoreMirror
from wa_mqtt.engines.sim_sent import SentIds, log_path
from wa_mqtt.engines.sim_store import read_device, write_device
from wa_mqtt.store import pg_sessions
from wa_mqtt.store.pg import Locked

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'psycopg[binary]'")

A, B = "5511900000501", "5511900000502"
NOW = datetime(2026, 12, 4, tzinfo=UTC)


def test_the_name_neonize_gets_names_the_accounts_schema_and_an_sslmode() -> None:
    name = pg_sessions.whatsmeow_dsn("postgres://wa:pw@db:5432/wa_mqtt", A, tls=False)
    assert name == f"postgres://wa:pw@db:5432/wa_mqtt?sslmode=disable&search_path=wa_{A}"
    assert "sslmode=require" in pg_sessions.whatsmeow_dsn("postgres://db/x", A, tls=True)
    kept = pg_sessions.whatsmeow_dsn("postgres://db/x?sslmode=verify-full&search_path=other", A, tls=False)
    assert kept == f"postgres://db/x?sslmode=verify-full&search_path=wa_{A}"  # the user's TLS; our schema
    with pytest.raises(ValueError):
        pg_sessions.account_schema("1; DROP TABLE x")


async def test_the_sims_store_lives_in_the_accounts_schema(pg_url: str, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"  # two bridges' sessions folders
    write_device(one / A / "store.db", A, "Ana", NOW)  # linked before store.url: taken in on open
    (two / B).mkdir(parents=True)
    (two / B / "store.db").write_bytes(b"")  # a leftover without a device, unknown to PostgreSQL
    engine = PgSimEngine(SimEngine(), pg_url)
    try:
        assert engine.has_device(one / A / "store.db") is True
        assert engine.has_device(two / B / "store.db") is False
        session = engine.open_session(A, one / A / "store.db", lambda _event: None)
        await session.start()
        assert pg_sessions.has_device(pg_url, A) is True and pg_sessions.session_schemas(pg_url) == [A]
        before = pg_sessions.load_sim(pg_url, A)
        await session.logout()  # unlinks the device in the store: saved when the call returns
        assert pg_sessions.has_device(pg_url, A) is False and pg_sessions.load_sim(pg_url, A) != before
        await session.close()

        # another bridge opens it: PostgreSQL's copy replaces its stale working file
        write_device(two / A / "store.db", A, "Stale", NOW)
        assert engine.has_device(two / A / "store.db") is False  # PostgreSQL knows it: unlinked
        other = engine.open_session(A, two / A / "store.db", lambda _event: None)
        assert read_device(two / A / "store.db") is None
        await other.close()
        engine.open_session(B, two / B / "store.db", lambda _event: None)
        assert not (two / B / "store.db").exists()  # the leftover is not the account's: dropped
        assert pg_sessions.drop_account(pg_url, A) is True and pg_sessions.has_device(pg_url, A) is None
    finally:
        await engine.aclose()


def test_loading_postgresqls_copy_drops_the_local_sent_id_log(pg_url: str, tmp_path: Path) -> None:
    """A sent-id log next to the working copy (an engine child killed on another bridge's copy) belongs
    to the file PostgreSQL's replaces: it goes with it, so its ids are not moved into the account's store."""
    store = tmp_path / A / "store.db"
    write_device(store, A, "Ana", NOW)
    db = Locked(pg_url)
    try:
        SimStoreMirror(db, A, store).load()  # PostgreSQL has none: the linked file is taken in
        assert pg_sessions.load_sim(pg_url, A) is not None
        log_path(store).write_text(f"{NOW.isoformat()} STALE\n")
        SimStoreMirror(db, A, store).load()
        assert not log_path(store).exists()
        assert read_device(store) is not None
        sent = SentIds(store)
        assert sent.delivered_at("STALE") is None
        sent.close()
    finally:
        db.close()
