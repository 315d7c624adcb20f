"""The supervisor's inbox order with events handled at once (accounts/supervisor.py, `_emit`): a
message, receipt or sim `sent` emitted while the inbox is empty and idle is handled before `_emit`
returns; one emitted while an item is being handled, or behind one queued, waits for it; a subscriber's
failure is logged and the account goes on."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from wa_mqtt import events as ev
from wa_mqtt.accounts import machine as m
from wa_mqtt.accounts.outbox import Outbox
from wa_mqtt.accounts.supervisor import Supervisor
from wa_mqtt.bus import EventBus
from wa_mqtt.config import Config
from wa_mqtt.engines.base import Connected, EmitFn, MessageReceived, PairMethod, ReceiptReceived, SimSent
from wa_mqtt.model import IncomingMessage, Receipt

PHONE = "5511900000001"


class _GatedSession:
    """An engine session whose `start` waits for `gate`: the supervisor is then in the middle of an item."""

    def __init__(self, emit: EmitFn) -> None:
        self.emit = emit
        self.gate = asyncio.Event()
        self.starting = asyncio.Event()

    async def start(self, method: PairMethod = "qr") -> None:
        self.starting.set()
        await self.gate.wait()

    async def close(self) -> None:
        pass


class _Engine:
    name = "sim"

    def __init__(self) -> None:
        self.session: _GatedSession | None = None

    def has_device(self, store_path: Path) -> bool:
        return True

    def open_session(self, phone: str, store_path: Path, emit: EmitFn) -> _GatedSession:
        self.session = _GatedSession(emit)
        return self.session


def _now() -> datetime:
    return datetime.now(UTC)


def _message(msg_id: str) -> MessageReceived:
    return MessageReceived(message=IncomingMessage(
        id=msg_id, account=PHONE, chat="5511988887777@s.whatsapp.net", sender="5511988887777",
        sender_jid="5511988887777@s.whatsapp.net", timestamp=_now(), text="hi"))


def _receipt(msg_id: str) -> ReceiptReceived:
    return ReceiptReceived(receipt=Receipt(ids=[msg_id], chat="5511988887777@s.whatsapp.net", type="delivered",
                                           timestamp=_now()))


async def test_events_keep_the_inbox_order_and_are_handled_at_once_when_it_is_idle(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()
    seen: list[str] = []

    def record(event: Any) -> None:
        match event:
            case ev.StatusChanged(status=status):
                seen.append(f"status {status.state}")
            case ev.MessageReceived(message=message):
                seen.append(f"message {message.id}")
                if message.id == "BAD":
                    raise RuntimeError("a subscriber's bug")
            case ev.ReceiptReceived(receipt=receipt):
                seen.append(f"receipt {receipt.ids[0]}")
            case ev.SimSent(payload=payload):
                seen.append(f"sent {payload['id']}")

    for kind in (ev.StatusChanged, ev.MessageReceived, ev.ReceiptReceived, ev.SimSent):
        bus.subscribe(kind, record, "test")
    engine = _Engine()
    outbox = Outbox(tmp_path / "outbox.db", _now)
    supervisor = Supervisor(PHONE, engine, tmp_path / PHONE / "store.db", Config(), bus, outbox, _now)
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(supervisor.run())
            supervisor.apply(m.Start())
            session = engine.session
            while session is None:
                await asyncio.sleep(0)
                session = engine.session
            await asyncio.wait_for(session.starting.wait(), 5)
            seen.clear()

            # in the middle of an item (the start awaits the engine): queued, handled after it, in order
            session.emit(_message("M1"))
            session.emit(Connected())
            session.emit(_receipt("M1"))
            assert seen == []
            session.gate.set()
            while "receipt M1" not in seen:
                await asyncio.sleep(0)
            assert seen == ["message M1", "status connected", "receipt M1"]

            # idle, nothing queued: handled before `emit` returns
            seen.clear()
            session.emit(_receipt("M2"))
            assert seen == ["receipt M2"]
            session.emit(SimSent(payload={"id": "M3"}))
            assert seen == ["receipt M2", "sent M3"]

            # behind a queued item: after it, although nothing is being handled yet
            seen.clear()
            supervisor.heartbeat()
            session.emit(_message("M4"))
            assert seen == []
            while "message M4" not in seen:
                await asyncio.sleep(0)
            assert seen == ["status connected", "message M4"]

            # a subscriber's failure neither reaches the engine's emit nor stops the account
            seen.clear()
            with caplog.at_level(logging.ERROR):
                session.emit(_message("BAD"))
                session.emit(_message("M5"))
            assert seen == ["message BAD", "message M5"]
            assert "a subscriber's bug" in caplog.text
            assert supervisor.messages_in == 4

            await supervisor.close()
    finally:
        outbox.close()
