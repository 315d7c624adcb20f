"""The link's connection to a real Mosquitto has Nagle's algorithm off on the socket paho writes to.

aiomqtt sets its `socket_options` only on a `socket.socket`, after connecting; the link hands paho a
`ReadAhead` in its place, so TCP_NODELAY was silently never set and each small write (a response
after a PUBACK) waited for the broker's delayed ACK: a send one at a time took ~44 ms, not ~3 ms."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

from wa_mqtt.config import MqttConfig
from wa_mqtt.mqtt.link import MqttLink, ReadAhead
from wa_mqtt.mqtt.packets import Incoming
from wa_mqtt.mqtt.spool import Spool

from harness import Broker


async def _ignore(_message: Incoming) -> None:
    return None


async def test_the_links_socket_has_nagle_off(broker: Broker, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    link = MqttLink(MqttConfig(client_id="nodelay-test"), broker.url, "nodelay-test/bridge/state", spool,
                    _ignore, lambda: None)
    task = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(link.wait_connected(), timeout=15)
        client = link._client  # private: the socket is no part of the link's interface
        assert client is not None
        sock = client._client.socket()  # paho's socket (private), the one it reads and writes through
        assert isinstance(sock, ReadAhead)  # the case aiomqtt skips
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        spool.close()
