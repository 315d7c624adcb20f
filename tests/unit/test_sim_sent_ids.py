"""The sim's memory of the message ids WhatsApp already took (a repeat is dropped, `already_sent`):
kept in the store (an engine child's through its sent-id log), pruned after two days without a scan
per send, and always that of the store file in place when the session went online (a logout and a
new link, a restored backup)."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from wa_mqtt.accounts.backups import backup_store, restore_from_backup
from wa_mqtt.accounts.store import store_files
from wa_mqtt.engines import sim_sent
from wa_mqtt.engines.base import EngineError
from wa_mqtt.engines.sim import SENT_IDS_KEPT, SimEngine, SimSession
from wa_mqtt.engines.sim_sent import log_path
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
    session._sent.db().set_trace_callback(statements.append)  # the statements run on the sent ids
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
    log_path(store).write_text(f"{clock().isoformat()} X3\n")  # logged by a killed engine process: the old store's
    assert restore_from_backup(store, tmp_path / "backups", now=clock()) is not None
    assert not log_path(store).exists()
    await session.start()
    assert not await already_sent(session, "X3")  # set aside with the store it belonged to
    assert not await already_sent(session, "X2")  # the restored store never had it
    assert not await already_sent(session, "X1")
    assert await already_sent(session, "X2")
    assert stored_ids(store) == {"X1", "X2", "X3"}
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


async def batched_past_first(tmp_path: Path) -> tuple[Path, FakeClock, SimSession]:
    """A linked session batching its sent ids, past its first record (which prunes, so it is stored at
    once) and a second later."""
    store, clock = tmp_path / "store.db", FakeClock()
    session = await linked_session(store, clock)
    session.batch_sent_ids()
    assert not await already_sent(session, "FIRST")
    clock.advance(timedelta(seconds=1))
    return store, clock, session


async def test_batched_ids_outlive_a_killed_process_through_the_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batched turn's ids are written to the sent-id log by `commit_sent_ids`, not to the store: a
    process killed then (the session never closed) has them all the same; the next session moves them
    into the store. Ids recorded but not committed were never answered: they are not remembered."""
    monkeypatch.setattr(sim_sent, "FOLD_AFTER", 3600.0)  # the killed process never gets there
    store, clock, session = await batched_past_first(tmp_path)
    assert not await already_sent(session, "L1")
    assert not await already_sent(session, "L2")
    session.commit_sent_ids()
    assert not await already_sent(session, "UNANSWERED")  # recorded, never committed: the process dies first
    assert await already_sent(session, "L1")  # this process knows them (logged, in memory)
    assert stored_ids(store) == {"FIRST"}
    assert log_path(store).read_text().split() == [clock().isoformat(), "L1", clock().isoformat(), "L2"]

    again = await linked_session(store, clock)  # the next engine process (the killed one never closed)
    assert await already_sent(again, "L2")
    assert await already_sent(again, "L1")
    assert not await already_sent(again, "UNANSWERED")  # it goes out: the bridge never heard of it
    assert stored_ids(store) >= {"FIRST", "L1", "L2"}
    assert log_path(store).read_bytes() == b""
    await again.close()


async def test_logged_ids_go_into_the_store_in_one_transaction(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FOLD_AT logged ids are moved into the store together (the log emptied), the rest when the
    session closes; an id stored before the session opened is found (the filter says "maybe")."""
    monkeypatch.setattr(sim_sent, "FOLD_AT", 3)
    monkeypatch.setattr(sim_sent, "FOLD_AFTER", 3600.0)
    store, clock = tmp_path / "store.db", FakeClock()
    write_device(store, PHONE, "Sim", clock())
    with sqlite3.connect(store) as db:
        db.execute("CREATE TABLE sim_sent (id TEXT PRIMARY KEY, sent_at TEXT NOT NULL)")
        db.execute("INSERT INTO sim_sent VALUES ('BEFORE', ?)", (clock().isoformat(),))
    db.close()
    session = await linked_session(store, clock)
    session.batch_sent_ids()
    assert await already_sent(session, "BEFORE")
    assert not await already_sent(session, "A0")  # the first record prunes: stored at once
    clock.advance(timedelta(seconds=1))
    for n in range(1, 4):
        assert not await already_sent(session, f"A{n}")
        session.commit_sent_ids()
    assert stored_ids(store) == {"BEFORE", "A0", "A1", "A2", "A3"}
    assert log_path(store).read_bytes() == b""
    assert not await already_sent(session, "A4")
    session.commit_sent_ids()
    assert "A4" not in stored_ids(store)
    await session.close()
    assert "A4" in stored_ids(store)
    assert log_path(store).read_bytes() == b""


async def test_logged_ids_go_into_the_store_when_no_send_follows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At rest the store holds every id (a backup of it, a copy of the folder, misses none)."""
    monkeypatch.setattr(sim_sent, "FOLD_AFTER", 0.05)
    store, _, session = await batched_past_first(tmp_path)
    assert not await already_sent(session, "IDLE")
    session.commit_sent_ids()
    assert "IDLE" not in stored_ids(store)
    async with asyncio.timeout(5):
        while "IDLE" not in stored_ids(store):
            await asyncio.sleep(0.01)
    assert log_path(store).read_bytes() == b""
    await session.close()


async def test_a_torn_log_line_is_ignored(tmp_path: Path) -> None:
    """A write the disk took only in part (full) was never answered: its torn line is skipped (and an
    id no log line can hold goes into the store at once)."""
    store, clock = tmp_path / "store.db", FakeClock()
    write_device(store, PHONE, "Sim", clock())
    log_path(store).write_text(f"{clock().isoformat()} GOOD ID\n2026-13-01 BAD\n{clock().isoformat()} TOR")
    session = await linked_session(store, clock)
    assert await already_sent(session, "GOOD ID")
    assert not await already_sent(session, "TOR")
    session.batch_sent_ids()
    clock.advance(timedelta(seconds=1))
    assert not await already_sent(session, "TWO\nLINES")  # no log line holds it: stored at once
    assert "TWO\nLINES" in stored_ids(store)
    assert not await already_sent(session, "BAD")
    await session.close()


async def test_a_log_write_the_disk_took_in_part_is_cut_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk takes the first line of a turn's write and part of the next: `commit` raises (the
    turn is not answered, the process ends) and the log is as before, so the next process does not
    find those ids either (the bridge's retry goes out, not `already_sent`)."""
    monkeypatch.setattr(sim_sent, "FOLD_AFTER", 3600.0)
    store, clock, session = await batched_past_first(tmp_path)
    assert not await already_sent(session, "L0")
    session.commit_sent_ids()
    before = log_path(store).read_bytes()
    assert not await already_sent(session, "L1")
    assert not await already_sent(session, "L2")
    real_write = os.write

    def full_disk(fd: int, data: bytes) -> int:
        return real_write(fd, data[: data.index(b"\n") + 5])

    with monkeypatch.context() as disk:
        disk.setattr(sim_sent.os, "write", full_disk)
        with pytest.raises(OSError, match="took only"):
            session.commit_sent_ids()
    assert log_path(store).read_bytes() == before
    assert not await already_sent(session, "L1")  # not known to this process either

    again = await linked_session(store, clock)  # the next engine process (the failed one exits)
    assert await already_sent(again, "L0")
    assert not await already_sent(again, "L2")
    await again.close()


async def test_a_turn_closed_while_the_store_cannot_be_written_stays_logged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The session closes before the turn's answers leave (the child's last flush comes after): the
    turn's ids are logged first, so a store that cannot take them leaves them in the log for the next
    process. If the log cannot take them either, the last `commit` raises: nothing is answered."""
    monkeypatch.setattr(sim_sent, "FOLD_AFTER", 3600.0)
    store, clock, session = await batched_past_first(tmp_path)
    assert not await already_sent(session, "X")  # this turn's; its answer goes out after the close
    session._sent.db().execute("PRAGMA query_only=1")  # the store cannot be written (a full disk, say)
    with caplog.at_level(logging.WARNING, logger=sim_sent.__name__):
        await session.close()
    assert "1 sent ids stay in" in caplog.text and "until the store is opened again" in caplog.text
    session.commit_sent_ids()  # the child's last flush: X is answered
    again = await linked_session(store, clock)
    assert await already_sent(again, "X")
    assert stored_ids(store) >= {"FIRST", "X"}
    await again.close()

    session = await linked_session(store, clock)
    session.batch_sent_ids()
    assert not await already_sent(session, "SECOND")
    clock.advance(timedelta(seconds=1))
    assert not await already_sent(session, "Y")
    session._sent.db().execute("PRAGMA query_only=1")

    def no_space(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as disk:
        disk.setattr(sim_sent.os, "write", no_space)
        await session.close()
    with pytest.raises(sqlite3.OperationalError, match="No space"):
        session.commit_sent_ids()  # Y is recorded nowhere: it must not be answered
    again = await linked_session(store, clock)
    assert not await already_sent(again, "Y")
    await again.close()


def store_holding(tmp_path: Path, clock: FakeClock, ids: list[str], age: timedelta) -> Path:
    """A linked sim store whose `sim_sent` holds `ids`, sent `age` ago."""
    store = tmp_path / "store.db"
    write_device(store, PHONE, "Sim", clock())
    with sqlite3.connect(store) as db:
        db.execute("CREATE TABLE sim_sent (id TEXT PRIMARY KEY, sent_at TEXT NOT NULL)")
        db.executemany("INSERT INTO sim_sent VALUES (?, ?)", ((i, (clock() - age).isoformat()) for i in ids))
    db.close()
    return store


async def test_the_filter_is_filled_anew_only_when_that_is_worth_a_scan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store holding more ids than the filter is of use for has none (each look-up reads the store)
    and is not scanned again on a prune that leaves it as full; a prune that leaves few ids brings the
    filter back (a new id then reads nothing)."""
    monkeypatch.setattr(sim_sent, "REFILL_AFTER", 4)
    fills: list[int] = []
    fill = sim_sent.SentIds._fill

    def counted(self: sim_sent.SentIds, db: sqlite3.Connection, folding: bool = False) -> None:
        fills.append(1)
        fill(self, db, folding)

    monkeypatch.setattr(sim_sent.SentIds, "_fill", counted)
    clock = FakeClock()
    store = store_holding(tmp_path, clock, [f"S{n}" for n in range(6)], timedelta(days=1))
    session = await linked_session(store, clock)
    assert await already_sent(session, "S5")  # no filter: read from the store
    for n in range(5):  # a prune each (a minute apart): no scan
        clock.advance(timedelta(minutes=1))
        assert not await already_sent(session, f"N{n}")
    assert len(fills) == 1  # the one when the store was opened
    clock.advance(SENT_IDS_KEPT + timedelta(minutes=1))
    assert not await already_sent(session, "LATE")  # this prune leaves LATE alone: the filter is back
    assert len(fills) == 2
    assert stored_ids(store) == {"LATE"}
    statements: list[str] = []
    session._sent.db().set_trace_callback(statements.append)
    assert not await already_sent(session, "NEWER")
    assert not [s for s in statements if s.startswith("SELECT")]  # the filter knows it is new
    assert await already_sent(session, "LATE")
    assert await already_sent(session, "NEWER")
    await session.close()


async def test_a_prune_that_leaves_few_ids_brings_the_filter_back_however_few_were_added(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ids a prune removes are counted off the store's: a store too full for a filter gets it back
    with the first prune leaving at most REFILL_AFTER ids, not only once as many were added as it held
    (an engine child's batched sends: each later look-up of a new id reads nothing)."""
    monkeypatch.setattr(sim_sent, "REFILL_AFTER", 4)
    monkeypatch.setattr(sim_sent, "FOLD_AFTER", 3600.0)
    clock = FakeClock()
    store = store_holding(tmp_path, clock, [f"OLD{n}" for n in range(6)], timedelta(days=3))
    session = await linked_session(store, clock)
    session.batch_sent_ids()
    statements: list[str] = []
    session._sent.db().set_trace_callback(statements.append)
    assert session._sent._filter is None  # 6 ids stored: more than REFILL_AFTER
    for n in range(4):  # a prune each (a minute apart); the first removes the 6 old ids
        statements.clear()
        assert not await already_sent(session, f"N{n}")
        session.commit_sent_ids()
        assert session._sent._filter is not None
        assert bool([s for s in statements if "WHERE id" in s]) == (n == 0)  # only N0's look-up read the store
        clock.advance(timedelta(minutes=1))
    assert stored_ids(store) == {"N0", "N1", "N2", "N3"}
    await session.close()


async def test_a_logout_lets_go_of_the_store_before_its_files_are_removed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A logout within FOLD_AFTER of a send moves the logged ids into the store while it is there and
    lets go of it (no fold timer, connection or log handle left for the files the manager removes next:
    no "stay in ...-sent" warning); a new link of the same session opens the new store."""
    monkeypatch.setattr(sim_sent, "FOLD_AFTER", 3600.0)
    store, clock = tmp_path / "store.db", FakeClock()
    session = await linked_session(store, clock)
    session.batch_sent_ids()
    assert not await already_sent(session, "FIRST")  # (its prune stores it at once)
    clock.advance(timedelta(seconds=1))
    assert not await already_sent(session, "BEFORE")
    session.commit_sent_ids()  # logged; the fold timer armed
    assert "BEFORE" not in stored_ids(store)
    with caplog.at_level(logging.WARNING, logger=sim_sent.__name__):
        await session.logout()
        assert "BEFORE" in stored_ids(store) and log_path(store).read_bytes() == b""
        sent = session._sent
        assert (sent._open, sent._fold_timer, sent._log_fd) == (None, None, None)
        for path in store_files(store):  # as the manager does after a logout
            path.unlink(missing_ok=True)
        write_device(store, PHONE, "Sim", clock())  # linked anew
        await session.start()
        assert not await already_sent(session, "BEFORE")  # the new store's ids: none yet
        session.commit_sent_ids()
        clock.advance(timedelta(seconds=1))
        assert not await already_sent(session, "AFTER")
        session.commit_sent_ids()
        assert log_path(store).read_bytes().endswith(b" AFTER\n")  # the new store's log
        await session.close()
    assert stored_ids(store) == {"BEFORE", "AFTER"}
    assert not caplog.records
