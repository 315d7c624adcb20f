"""What neonize 0.5.2 does with a PostgreSQL URL as its store name, against a real server (the
review's finding, checked): goneonize's `getDB` opens a SQLite container on `file:<name>?...` first
and then, for a name starting with "postgres", a PostgreSQL one (lib/pq), keeping only the second.
Measured here: the whatsmeow tables are created in PostgreSQL; the SQLite attempt leaves no file in
the working folder (its path, `postgresql:/...`, does not exist, so SQLite cannot create it); lib/pq
wants `sslmode=disable` for a server without TLS. See docs/scaling.md."""

from __future__ import annotations

import asyncio
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


# -- the bridge's sessions in PostgreSQL (store.url): one schema per account, store/pg_sessions.py ------
def _write_device(url: str, phone: str) -> tuple[str, bytes]:
    """A synthetic linked device (random keys) in the account's schema, as neonize_factories does in SQLite."""
    device_jid, noise = f"{phone}:7@s.whatsapp.net", os.urandom(32)
    r = os.urandom
    with psycopg.connect(url) as conn:
        conn.execute(
            f"INSERT INTO wa_{phone}.whatsmeow_device (jid, lid, registration_id, noise_key, identity_key,"
            " signed_pre_key, signed_pre_key_id, signed_pre_key_sig, adv_key, adv_details, adv_account_sig,"
            " adv_account_sig_key, adv_device_sig, platform, business_name, push_name)"
            " VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)",
            (device_jid, f"1{phone}:7@lid", 1234, noise, r(32), r(32), 1, r(64), r(32), b"", r(64), r(32),
             r(64), "", "", "Ana"))
    return device_jid, noise


async def test_the_engine_keeps_each_accounts_whatsmeow_store_in_a_schema_of_its_own_and_restores_it(
        pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Real neonize, offline (the dial fails): pairing creates the account's schema and whatsmeow's
    tables in it (a second account's too: whatsmeow's version check alone would take it for upgraded),
    a restored client loads its own account's device, and the engine's own reads (device key, the
    secrets of sends) find them there. Nothing is written to the sessions folder's store."""
    from neonize.aioze.client import ClientFactory

    from wa_mqtt.engines.neonize_engine import NeonizeEngine
    from wa_mqtt.engines.neonize_store import PgNeonizeStore
    from wa_mqtt.model import ErrorCode
    from wa_mqtt.store import pg_sessions

    monkeypatch.chdir(tmp_path)
    phones = ["4915100000291", "4915100000292"]  # Go keys clients by JID user: phones of their own
    engine = NeonizeEngine(stop_timeout=5, store_url=pg_url)
    events: list[object] = []
    try:
        for phone in phones:  # pairing a new device: the schema and the tables, no device yet
            store = tmp_path / "sessions" / phone / "store.db"
            assert engine.has_device(store) is False
            session = engine.open_session(phone, store, events.append)
            await session.start("qr")
            assert session.client is not None and session.client.new_device is True
            await session.close()
        with psycopg.connect(pg_url) as conn:
            tables = conn.execute("SELECT schemaname, tablename FROM pg_tables WHERE tablename = 'whatsmeow_device'"
                                  ).fetchall()
        assert sorted(tables) == [(f"wa_{p}", "whatsmeow_device") for p in phones]
        assert not list((tmp_path / "sessions").rglob("store.db"))

        devices = {phone: _write_device(pg_url, phone) for phone in phones}
        for phone in phones:  # each restored client loads its own account's device, found by JID
            store = tmp_path / "sessions" / phone / "store.db"
            assert engine.has_device(store) is True
            got: asyncio.Queue[object] = asyncio.Queue()
            session = engine.open_session(phone, store, got.put_nowait)
            await session.start()
            assert session.client is not None and session.client.new_device is False
            assert session.client.jid.User == f"{phone}:7"
            assert session.store.device_jids() == [devices[phone][0]]
            assert session.store.device_key() == devices[phone][1]
            assert getattr(await asyncio.wait_for(got.get(), 15), "code", None) == ErrorCode.DIAL_FAILED  # offline
            await session.close()
        # ClientFactory on the same name lists only that account's device
        name = PgNeonizeStore(phones[0], pg_url).dsn()
        assert "search_path=wa_4915100000291" in name and "sslmode=disable" in name
        assert [d.JID.User for d in ClientFactory.get_all_devices_from_db(name)] == [f"{phones[0]}:7"]

        # the secrets of sends (a retry's "already sent?"), newest first, and a failed send's dropped
        store = PgNeonizeStore(phones[0], pg_url)
        secret = os.urandom(32)
        with psycopg.connect(pg_url, autocommit=True) as conn:  # one transaction each: the older, the newer
            for message_id in ("3EB0OLD", "3EB0NEW"):
                conn.execute(f"INSERT INTO wa_{phones[0]}.whatsmeow_message_secrets (our_jid, chat_jid, sender_jid,"
                             " message_id, key) VALUES (%s, %s, %s, %s, %s)",
                             (devices[phones[0]][0], "5511999999999@s.whatsapp.net", devices[phones[0]][0],
                              message_id, secret))
        assert store.sent_with_secret(secret) == "3EB0NEW"
        store.forget_secret(secret)
        assert store.sent_with_secret(secret) is None

        assert pg_sessions.drop_account(pg_url, phones[0]) is True  # `remove`: the account's data goes
        assert engine.has_device(tmp_path / "sessions" / phones[0] / "store.db") is False
        assert pg_sessions.session_schemas(pg_url) == [phones[1]]
    finally:
        await engine.aclose()
