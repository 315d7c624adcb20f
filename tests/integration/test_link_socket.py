"""The link's connection to a real Mosquitto has Nagle's algorithm off on the socket paho writes to, and a
write the socket cannot take at once is finished by aiomqtt's writer, taken off the loop after.

aiomqtt sets its `socket_options` only on a `socket.socket`, after connecting; the link hands paho a
`ReadAhead` in its place, so TCP_NODELAY was silently never set and each small write (a response
after a PUBACK) waited for the broker's delayed ACK: a send one at a time took ~44 ms, not ~3 ms."""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import signal
import socket
from pathlib import Path

import aiomqtt
import pytest

from wa_mqtt.config import MqttConfig
from wa_mqtt.mqtt.link import MqttLink, ReadAhead
from wa_mqtt.mqtt.packets import Incoming
from wa_mqtt.mqtt.paho_client import PahoClient
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


async def test_a_publish_the_socket_cannot_take_is_finished_by_aiomqtts_writer_which_is_then_removed(
        tmp_path: Path) -> None:
    """The broker stopped (SIGSTOP) while a large publish is written: the socket fills, the rest waits
    for aiomqtt's writer; once the broker reads again it is all written, acknowledged, and the writer
    is off the loop (left on, the loop would call it at every turn the socket is writable)."""
    own = Broker(tmp_path)
    if own.kind != "mosquitto":
        pytest.skip("needs Mosquitto (a process to stop)")
    own.start()
    try:
        async with PahoClient("127.0.0.1", own.port, identifier="full-socket-test",
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
            selector = asyncio.get_running_loop()._selector  # type: ignore[attr-defined]  # private: the loop's callbacks
            fd = client._client.socket().fileno()  # type: ignore[union-attr]  # connected: a socket

            def writing() -> bool:
                return bool(selector.get_key(fd).events & selectors.EVENT_WRITE)

            own._proc.send_signal(signal.SIGSTOP)  # private: the broker's process
            try:
                acked = asyncio.Event()
                client.publish_then("full/socket", b"x" * 20_000_000, 1, False, None, acked.set)
                async with asyncio.timeout(10):
                    while not writing():
                        await asyncio.sleep(0.01)
            finally:
                own._proc.send_signal(signal.SIGCONT)
            await asyncio.wait_for(acked.wait(), timeout=20)
            assert not writing() and not client._client.want_write()
            small = asyncio.Event()
            client.publish_then("full/socket", b"y", 1, False, None, small.set)
            await asyncio.wait_for(small.wait(), timeout=10)
            assert not writing()
    finally:
        own.stop()
