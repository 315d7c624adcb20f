"""The send pipeline's group commit: no send reaches the engine before the outbox fsync'd its begun
try (its WhatsApp id), and the sends begun meanwhile share one fsync. The engine is the one thing
stood in for here (an in-order session answering at once); the outbox and its fsyncs are real."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import pytest

from wa_mqtt import events as ev
from wa_mqtt.accounts.outbox import Outbox
from wa_mqtt.accounts.send_pipeline import SendPipeline
from wa_mqtt.bus import EventBus
from wa_mqtt.engines.base import EngineSession
from wa_mqtt.model import AccountState, OutgoingMessage, SendResult

A, ANA = "5511900000081", "5511988887777"
N = 40


class InOrderEngine:
    """An engine session that `SendsInOrder`: records each WhatsApp id it is handed."""

    def __init__(self, synced: set[str]) -> None:
        self.synced = synced
        self.handed: list[str] = []
        self.unsynced: list[str] = []

    async def send_in_order(self, message: OutgoingMessage, message_id: str, retry: bool,
                            chained: bool, message_json: bytes | None = None) -> SendResult:
        self.handed.append(message_id)
        if message_id not in self.synced:
            self.unsynced.append(message_id)
        await asyncio.sleep(0)
        return SendResult(id=message_id)


@pytest.mark.parametrize("in_order", [True, False])
async def test_no_send_reaches_the_engine_before_its_try_is_fsyncd(tmp_path: Path, in_order: bool,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "outbox.db"
    outbox = Outbox(path, lambda: datetime.now(UTC))
    synced: set[str] = set()  # WhatsApp ids of the begun tries on the file at an fsync of its WAL
    fsyncs = 0
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        nonlocal fsyncs
        reader = sqlite3.connect(path)
        begun = {row[0] for row in reader.execute("SELECT wa_id FROM outbox WHERE tries > 0")}
        reader.close()
        real_fsync(fd)
        synced.update(begun)
        fsyncs += 1

    monkeypatch.setattr(os, "fsync", fsync)
    engine = InOrderEngine(synced)

    async def send(message: OutgoingMessage, wa_id: str | None, retry: bool) -> SendResult:
        assert wa_id is not None
        return await engine.send_in_order(message, wa_id, retry, False)

    session = cast(EngineSession, engine)  # a stand-in: the pipeline calls only its `send_in_order`
    pipeline = SendPipeline(A, outbox, EventBus(), state=lambda: AccountState.CONNECTED,
                            session=lambda: session if in_order else None, send=send, ttl=lambda: 3600.0,
                            show_depth=lambda depth: None)
    try:
        outcomes = [await pipeline.accept(OutgoingMessage(to=ANA, text=f"m{i}"), {"transaction": f"t{i}"})
                    for i in range(N)]
        results = await asyncio.wait_for(asyncio.gather(*outcomes), 10)
    finally:
        await pipeline.close()
        outbox.close()
    assert [r.queued for r in results] == [False] * N and len(engine.handed) == N
    assert [r.id for r in results] == engine.handed  # in order, each with its own id
    assert engine.unsynced == []  # none before its try was on disk
    assert 1 <= fsyncs < N  # a group commit: the sends accepted together share an fsync


class GatedEngine:
    """An in-order engine session whose answers wait for `gate`."""

    def __init__(self) -> None:
        self.gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.handed: list[str] = []

    async def send_in_order(self, message: OutgoingMessage, message_id: str, retry: bool,
                            chained: bool, message_json: bytes | None = None) -> SendResult:
        self.handed.append(message_id)
        await self.gate
        return SendResult(id=message_id)


async def test_a_send_with_the_engine_is_not_expired_by_outgoing_ttl(tmp_path: Path) -> None:
    """`outgoing.ttl` fails sends still queued; one the engine has may be out already: it is answered
    with its result, once, not also `expired` (it was not "still queued")."""
    now = [datetime(2026, 1, 1, tzinfo=UTC)]
    outbox = Outbox(tmp_path / "outbox.db", lambda: now[0])
    engine = GatedEngine()
    bus = EventBus()
    failed: list[ev.SendFailed] = []
    bus.subscribe(ev.SendFailed, failed.append, "test")

    async def send(message: OutgoingMessage, wa_id: str | None, retry: bool) -> SendResult:
        raise AssertionError("an in-order session gets its sends by send_in_order")

    session = cast(EngineSession, engine)
    pipeline = SendPipeline(A, outbox, bus, state=lambda: AccountState.CONNECTED, session=lambda: session,
                            send=send, ttl=lambda: 60.0, show_depth=lambda depth: None)
    try:
        outcome = await pipeline.accept(OutgoingMessage(to=ANA, text="slow"), {"transaction": "t1"})
        for _ in range(100):  # until the engine has it
            if engine.handed:
                break
            await asyncio.sleep(0.01)
        assert engine.handed
        now[0] += timedelta(seconds=120)  # older than outgoing.ttl while WhatsApp takes it
        pipeline.expire_queued()  # a heartbeat
        engine.gate.set_result(None)
        result = await asyncio.wait_for(outcome, 10)
    finally:
        await pipeline.close()
    assert not result.queued and result.id == engine.handed[0]
    assert failed == [] and outbox.depth(A) == 0 and outbox.pending(A) == []
    outbox.close()
