"""The link's durable publishes of one loop turn go to the spool in one commit at the end of the turn,
and only then to a real Mosquitto: in order, each once, and removed from the spool once acknowledged."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import aiomqtt

from wa_mqtt.config import MqttConfig
from wa_mqtt.mqtt.link import MqttLink
from wa_mqtt.mqtt.packets import Incoming
from wa_mqtt.mqtt.spool import Spool

from harness import Broker


async def _ignore(_message: Incoming) -> None:
    return None


async def test_a_turns_durable_publishes_are_committed_together_then_published(broker: Broker,
                                                                               tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    reader = sqlite3.connect(tmp_path / "spool.db")  # what is in the file (committed)
    link = MqttLink(MqttConfig(client_id="batch-test"), broker.url, "batch-test/bridge/state", spool,
                    _ignore, lambda: None)
    task = asyncio.create_task(link.run())
    try:
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="batch-test-sub") as sub:
            await sub.subscribe("batch-test/receipt", qos=1)
            await asyncio.wait_for(link.wait_connected(), timeout=15)
            for i in range(50):  # one loop turn, as the events of one read from an engine
                link.publish("batch-test/receipt", f"r{i}".encode(), qos=1, durable=True)
            assert len(spool) == 50 and reader.execute("SELECT COUNT(*) FROM spool").fetchone()[0] == 0
            got: list[bytes] = []
            async with asyncio.timeout(15):
                async for message in sub.messages:
                    assert isinstance(message.payload, bytes)
                    got.append(message.payload)
                    if len(got) == 50:
                        break
            assert got == [f"r{i}".encode() for i in range(50)]
            async with asyncio.timeout(15):
                while len(spool):  # each removed once its PUBACK is back
                    await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        reader.close()
        spool.close()
