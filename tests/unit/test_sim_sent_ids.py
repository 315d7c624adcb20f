"""The sim's memory of the message ids WhatsApp already took (a repeat is dropped, `already_sent`):
kept in the store, pruned after two days without a scan per send, and always that of the store
file in place when the session went online (a logout and a new link, a restored backup)."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from wa_mqtt.accounts.backups import backup_store, restore_from_backup
from wa_mqtt.engines.base import EngineError
from wa_mqtt.engines.sim import SENT_IDS_KEPT, SimEngine, SimSession
from wa_mqtt.engines.sim_store import write_device
from wa_mqtt.model import OutgoingMessage

PHONE = "5511900000001"
TO = "5511988887777"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


async def linked_session(store: Path, clock: FakeClock) -> SimSession:
    write_device(store, PHONE, "Sim", clock())
    session = SimEngine(clock=clock).open_session(PHONE, store, lambda _event: None)
    await session.start()
    return session


async def already_sent(session: SimSession, message_id: str) -> bool:
    result = await session.send(OutgoingMessage(to=TO, text="hi"), message_id)
    assert result.id == message_id
    return result.already_sent


def stored_ids(store: Path) -> set[str]:
    with sqlite3.connect(store) as db:
        return {row[0] for row in db.execute("SELECT id FROM sim_sent")}


async def test_ids_are_pruned_after_two_days_with_one_delete_a_minute(tmp_path: Path) -> None:
    store, clock = tmp_path / "store.db", FakeClock()
    with sqlite3.connect(store) as old:  # a store made before the index: it gets it
        old.execute("CREATE TABLE sim_sent (id TEXT PRIMARY KEY, sent_at TEXT NOT NULL)")
    session = await linked_session(store, clock)
    statements: list[str] = []
    session._sent_ids().set_trace_callback(statements.append)  # the statements run on the sent ids
    assert not await already_sent(session, "OLD")
    for n in range(50):  # a burst within a minute: pruned once
        clock.advance(timedelta(seconds=1))
        assert not await already_sent(session, f"B{n}")
    assert sum(s.startswith("DELETE") for s in statements) == 1
    assert await already_sent(session, "OLD")
    clock.advance(SENT_IDS_KEPT - timedelta(seconds=10))
    assert await already_sent(session, "B49")  # within two days: still known, and nothing pruned yet
    clock.advance(timedelta(seconds=60))
    assert not await already_sent(session, "NEW")  # past two days of OLD and the B burst: pruned now
    assert not await already_sent(session, "OLD")  # forgotten: it goes out again
    assert stored_ids(store) == {"NEW", "OLD"}
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND name = 'sim_sent_at'").fetchone()
    await session.close()


async def test_a_clock_set_back_is_pruned_from_then_on(tmp_path: Path) -> None:
    store, clock = tmp_path / "store.db", FakeClock()
    session = await linked_session(store, clock)
    assert not await already_sent(session, "ONE")
    clock.advance(-timedelta(days=3))  # the clock went back: the next prune is a minute from now, not from T0
    assert not await already_sent(session, "TWO")
    clock.advance(SENT_IDS_KEPT + timedelta(minutes=1))  # still before T0
    assert not await already_sent(session, "THREE")
    assert stored_ids(store) == {"ONE", "THREE"}
    await session.close()


async def test_a_store_replaced_while_offline_is_the_one_used_after(tmp_path: Path) -> None:
    """A logout removes the store and a new link writes another; a restore puts a backup in its
    place: the session's sent ids are those of the file in place when it went online again."""
    store, clock = tmp_path / "store.db", FakeClock()
    session = await linked_session(store, clock)
    backup_store(store, tmp_path / "backups", keep=3, now=clock())  # knows no sent id
    assert not await already_sent(session, "X1")
    assert await already_sent(session, "X1")

    await session.logout()  # as the bridge's logout: the store goes, a new link writes a new one
    store.unlink()
    Path(f"{store}-journal").unlink(missing_ok=True)
    write_device(store, PHONE, "Sim", clock())
    await session.start()
    assert not await already_sent(session, "X1")  # the new store never had it
    assert stored_ids(store) == {"X1"}

    assert not await already_sent(session, "X2")
    await session.stop()
    assert restore_from_backup(store, tmp_path / "backups", now=clock()) is not None
    await session.start()
    assert not await already_sent(session, "X2")  # the restored store never had it
    assert not await already_sent(session, "X1")
    assert await already_sent(session, "X2")
    assert stored_ids(store) == {"X1", "X2"}
    await session.close()


async def test_a_batched_turn_holds_the_store_only_until_its_ids_are_committed(tmp_path: Path) -> None:
    """In an engine child a turn's sent ids are committed at once (`batch_sent_ids`), and a text send's
    look-up begins that transaction: a repeat or a refused send, which write nothing, end it too, so
    the store's other writers (its groups, contacts, LID map, a backup's reader) are never held."""
    store, clock = tmp_path / "store.db", FakeClock()
    session = await linked_session(store, clock)
    session.batch_sent_ids()
    await session.sim_control("contacts", json.dumps({"not_on_whatsapp": ["5511977776666"]}).encode())
    assert not await already_sent(session, "B1")
    session.commit_sent_ids()
    assert stored_ids(store) == {"B1"}
    assert await already_sent(session, "B1")  # a repeat: a look-up only
    with pytest.raises(EngineError):
        await session.send(OutgoingMessage(to="5511977776666", text="hi"), "B2")  # no account: refused
    session.commit_sent_ids()
    writer = sqlite3.connect(store, timeout=0)  # no wait: the store is free at once
    with writer:
        writer.execute("CREATE TABLE probe (x)")
    writer.close()
    assert stored_ids(store) == {"B1"}
    await session.close()
