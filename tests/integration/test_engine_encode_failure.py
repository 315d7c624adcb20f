"""A request that cannot be encoded (a lone surrogate in a send's text: the MQTT API refuses it, but a
config text read by PyYAML can hold one) fails its future with an engine error and leaves nothing
pending (found in review: it raised out of `send_in_order` and left the request with a live timer)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from wa_mqtt.config import EngineProcessConfig
from wa_mqtt.engines.options import EngineOptions
from wa_mqtt.engines.process import ProcessEngine, SimProcessSession
from wa_mqtt.engines.sim_store import write_device
from wa_mqtt.model import OutgoingMessage

A = "5511900000001"
ANA = "5511988887777"


@pytest.fixture
async def session(tmp_path: Path) -> AsyncIterator[SimProcessSession]:
    write_device(tmp_path / A / "store.db", A, "Sim", datetime.now(UTC))
    engine = ProcessEngine("sim", EngineOptions(), EngineProcessConfig(fork_server=False))
    opened = engine.open_session(A, tmp_path / A / "store.db", lambda _event: None)
    assert isinstance(opened, SimProcessSession)
    await opened.start()
    yield opened
    await engine.aclose()


async def test_an_unencodable_send_fails_its_future_and_leaves_nothing_pending(session: SimProcessSession) -> None:
    bad = OutgoingMessage(to=ANA, text="a\ud800b")
    try:
        reply = session.send_in_order(bad, "3EB0" + "F" * 18, False, False)
    except Exception as exc:
        raised: BaseException | None = exc
    else:
        raised = None
        await asyncio.gather(reply, return_exceptions=True)
    await asyncio.sleep(0)
    assert session._pending == {}, "the request stays pending with its 120 s timer"
    assert raised is None, f"send_in_order raised synchronously: {raised!r}"
