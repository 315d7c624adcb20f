"""The bridge's side of an engine process, against a real sim child: pipelined sends are answered in
order without a task each; a call that gets no answer in time fails as `engine_error` (maybe done);
a call given up (cancelled, timed out) is forgotten, its late answer dropped; a child that dies fails
what it holds as `not_connected`."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from wa_mqtt.config import EngineProcessConfig
from wa_mqtt.engines import process
from wa_mqtt.engines import protocol as p
from wa_mqtt.engines.base import Connected, EngineError, EngineEvent
from wa_mqtt.engines.options import EngineOptions
from wa_mqtt.engines.process import ProcessEngine, SimProcessSession
from wa_mqtt.engines.sim_store import write_device
from wa_mqtt.model import OutgoingMessage

A = "5511900000001"
ANA = "5511988887777"


def message(text: str) -> OutgoingMessage:
    return OutgoingMessage(to=ANA, text=text)


@pytest.fixture
async def session(tmp_path: Path) -> AsyncIterator[SimProcessSession]:
    write_device(tmp_path / A / "store.db", A, "Sim", datetime.now(UTC))
    engine = ProcessEngine("sim", EngineOptions(), EngineProcessConfig(fork_server=False))
    events: list[EngineEvent] = []
    opened = engine.open_session(A, tmp_path / A / "store.db", events.append)
    assert isinstance(opened, SimProcessSession)
    await opened.start()
    assert any(isinstance(event, Connected) for event in events)
    yield opened
    await engine.aclose()


async def test_pipelined_sends_are_answered_in_order_without_a_task_each(session: SimProcessSession) -> None:
    tasks = len(asyncio.all_tasks())
    replies = [session.send_in_order(message(str(n)), f"3EB0{n:018X}", False, n > 0) for n in range(5)]
    assert len(asyncio.all_tasks()) == tasks
    assert [(await reply).id for reply in replies] == [f"3EB0{n:018X}" for n in range(5)]
    again = await session.send_in_order(message("again"), "3EB0" + "0" * 18, True, False)
    assert again.already_sent
    assert session._pending == {}  # nothing is left waiting


async def test_an_unanswered_call_times_out_and_its_late_answer_is_dropped(
        session: SimProcessSession, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process, "CALL_TIMEOUT", 0.3)
    await session.sim_control("stall", b'{"seconds": 0.8}')
    with pytest.raises(EngineError) as late:
        await session.send_in_order(message("held"), "3EB0" + "A" * 18, False, False)
    assert (late.value.code, late.value.maybe_done) == ("engine_error", True)
    assert str(late.value) == "the engine did not answer send within 0.3 s"
    await session.sim_control("stall", b'{"seconds": 0.8}')
    with pytest.raises(EngineError, match=r"did not answer send within 0\.2 s") as late:
        await session._call("send", p.SendArgs(message=message("held too"), message_id="3EB0" + "B" * 18),
                            timeout=0.2)
    assert late.value.maybe_done
    await asyncio.sleep(0)
    assert session._pending == {}  # forgotten: their answers, when they come, are dropped
    monkeypatch.setattr(process, "CALL_TIMEOUT", 10.0)
    after = await session.send_in_order(message("next"), "3EB0" + "C" * 18, False, False)  # served after both
    assert after.id == "3EB0" + "C" * 18 and not after.already_sent


async def test_a_cancelled_call_is_forgotten(session: SimProcessSession) -> None:
    await session.sim_control("stall", b'{"seconds": 0.5}')
    handed = session.send_in_order(message("given up"), "3EB0" + "D" * 18, False, False)
    called = asyncio.create_task(session.send(message("given up too"), "3EB0" + "E" * 18))
    await asyncio.sleep(0.1)
    handed.cancel()
    called.cancel()
    with pytest.raises(asyncio.CancelledError):
        await called
    await asyncio.sleep(0)
    assert session._pending == {}
    assert (await session.send(message("after"), "3EB0" + "E" * 18)).already_sent  # it went out all the same


async def test_a_dying_child_fails_the_sends_it_holds_as_not_connected(session: SimProcessSession) -> None:
    await session.sim_control("stall", b'{"seconds": 30}')
    held = [session.send_in_order(message(str(n)), f"3EB1{n:018X}", False, n > 0) for n in range(2)]
    await asyncio.sleep(0.2)
    assert session.pid is not None
    os.kill(session.pid, signal.SIGKILL)
    for reply in held:
        with pytest.raises(EngineError) as gone:
            await reply
        assert (gone.value.code, gone.value.maybe_done) == ("not_connected", True)
    with pytest.raises(EngineError, match="not running"):
        await session.send_in_order(message("no child"), "3EB1" + "F" * 18, False, False)


async def test_every_answered_send_is_recorded_when_the_child_is_killed_at_once(
        session: SimProcessSession, tmp_path: Path) -> None:
    """The sim child records the sent ids of a turn's sends together (one write of its sent-id log),
    before any of their answers and events leave it: killed right after the answers came, it has every
    one on disk (a repeat is dropped), though it never got to close its store. The next engine process
    reads them (and moves them into the store)."""
    import sqlite3

    from wa_mqtt.engines.sim_sent import SentIds

    await session.send_in_order(message("first"), "3EB1" + "F" * 18, False, False)  # the first prune is behind
    ids = [f"3EB1{n:018X}" for n in range(12)]
    replies = [session.send_in_order(message(str(n)), wa_id, False, n > 0) for n, wa_id in enumerate(ids)]
    assert [(await reply).id for reply in replies] == ids
    assert session.pid is not None
    os.kill(session.pid, signal.SIGKILL)
    known = SentIds(tmp_path / A / "store.db")  # as the next engine process opens the store
    try:
        assert [wa_id for wa_id in ids if known.delivered_at(wa_id) is None] == []
    finally:
        known.close()
    store = sqlite3.connect(tmp_path / A / "store.db")
    try:
        recorded = {row[0] for row in store.execute("SELECT id FROM sim_sent")}
    finally:
        store.close()
    assert recorded >= set(ids)
