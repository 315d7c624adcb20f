"""A QR code from whatsmeow, through the real neonize callback path and the real bridge, to MQTT.

Offline, whatsmeow's dial fails before WhatsApp could send a QR. Here the account's `proxy` is a local
listener that accepts and stays silent, so the dial hangs as on a slow network: the account stays
`connecting`, and the QR is then delivered exactly as Go delivers it (the C callback neonize
registered, called from a foreign thread). The bridge runs in this process (engine in-process) so the
test can reach that callback; everything else is the product: App, bridge, supervisor, MQTT link.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import socket
import struct
import threading
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from wa_mqtt.app import App, make_engine
from wa_mqtt.config_loading import build_config
from wa_mqtt.engines.neonize_engine import NeonizeEngine

from harness import Broker, Probe

PHONE = "4915100000077"


class SilentProxy:
    """A TCP listener that accepts connections, records what arrives, and never answers."""

    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.received = b""
        self._connections: list[socket.socket] = []
        self._got_request = threading.Event()
        threading.Thread(target=self._serve, name="silent-proxy", daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            self._connections.append(connection)
            connection.settimeout(10)
            with contextlib.suppress(OSError):
                self.received += connection.recv(4096)
            self._got_request.set()

    def wait_request(self, timeout: float) -> bool:
        return self._got_request.wait(timeout)

    def close(self) -> None:
        """Hang up: the pending dial fails at once."""
        self._server.close()
        for connection in self._connections:
            connection.close()


@pytest.fixture
def proxy() -> Iterator[SilentProxy]:
    silent = SilentProxy()
    yield silent
    silent.close()


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG, after checking its signature and every chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, size = 8, (0, 0)
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        body = data[offset + 8:offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length:offset + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        offset += 12 + length
        if kind == b"IEND":
            break
    assert offset == len(data)
    return size


async def test_a_qr_from_whatsmeow_reaches_mqtt_as_text_and_png(tmp_path: Path, broker: Broker,
                                                                proxy: SilentProxy) -> None:
    base = f"t{uuid.uuid4().hex[:8]}"
    config = build_config({
        "mqtt": {"url": broker.url, "base_topic": base, "discovery": False},
        "engine": "neonize", "engine_process": {"in_process": True},
        "proxy": f"http://user:secret@127.0.0.1:{proxy.port}",
        "sessions_dir": str(tmp_path / "sessions"), "data_dir": str(tmp_path / "data"),
        "web": {"enabled": False},  # not on 8099, which another bridge on this machine may hold
    }, environ={})
    engine = make_engine(config)
    assert isinstance(engine, NeonizeEngine) and engine.proxy == config.proxy
    stop = asyncio.Event()
    app = asyncio.create_task(App(config, engine=engine).run(stop))
    try:
        async with Probe(broker, base) as probe:
            await probe.wait_online(timeout=30)
            info = await probe.wait_for(f"{base}/bridge/info", lambda r: bool(r.payload), timeout=10)
            assert "secret" not in info.payload.decode() and info.json()["config"]["proxy"].endswith(
                f":***@127.0.0.1:{proxy.port}")
            assert (await probe.request("bridge", "pair", {"phone": PHONE}))["status"] == "ok"
            await probe.wait_state(PHONE, "connecting", timeout=15)
            assert await asyncio.to_thread(proxy.wait_request, 15), "whatsmeow did not dial through the proxy"
            assert b"web.whatsapp.com" in proxy.received

            session = engine.session(PHONE)
            assert session is not None and session.client is not None and session.client.new_device
            code = "2@wa_mqtt-test,c2VjcmV0LWtleQ==,aWRlbnRpdHk=,YWR2"
            callback = session.client._NewAClient__onQr  # the function neonize handed to Go for QR codes
            client_uuid = ctypes.create_string_buffer(session.client.uuid)
            value = ctypes.create_string_buffer(code.encode())
            await asyncio.to_thread(callback, ctypes.addressof(client_uuid), ctypes.addressof(value))

            pairing = await probe.wait_state(PHONE, "pairing", timeout=10)
            assert pairing["error"] is None
            text = await probe.wait_for(f"{base}/{PHONE}/qr", lambda r: bool(r.payload), timeout=10)
            assert text.payload.decode() == code
            image = await probe.wait_for(f"{base}/{PHONE}/qr/image", lambda r: bool(r.payload), timeout=10)
            width, height = png_size(image.payload)
            assert width == height and width >= 150  # a square QR, big enough to scan from a screen
    finally:
        proxy.close()  # the pending dial fails at once, so the session stops without waiting for it
        stop.set()
        assert await asyncio.wait_for(app, 60) == 0
