"""`Paho.publish_acked` writes, byte for byte, the PUBLISH paho's own `publish` writes (MQTT 3.1.1 and
v5, retained or not, with correlation data short and long, payloads whose length takes 1 to 3 bytes),
and refuses what paho refuses. Checked against a real paho client on a socket pair."""

from __future__ import annotations

import socket

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from wa_mqtt.mqtt.paho_client import Paho


def _client(sock: socket.socket, protocol: mqtt.MQTTProtocolVersion, ours: bool) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t", protocol=protocol)
    if ours:
        Paho.adopt(client)
    client.on_socket_register_write = lambda *_args: None  # queue only: nothing written
    client._sock = sock  # type: ignore[assignment]  # private: no broker in a unit test
    client._state = mqtt._ConnectionState.MQTT_CS_CONNECTED  # type: ignore[attr-defined]  # private, as above
    return client


def _packets(queue: object) -> list[bytes]:
    return [bytes(packet["packet"]) for packet in queue]  # type: ignore[attr-defined]  # paho's packet dicts


CASES = [
    ("wa/1/receipt", b'{"id":"x"}', False, None),
    ("wa/1/r", b"", True, None),
    ("réponse/ü", b"x" * 200, False, b"c" * 16),
    ("wa/bridge/response", b"y" * 20_000, False, b"k" * 124),
    ("wa/bridge/response", b"y" * 20_000, True, b"k" * 125),
    ("t", b"z" * 2_100_000, False, b"long" * 100),
]


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311])
def test_publish_acked_writes_what_paho_writes(protocol: mqtt.MQTTProtocolVersion) -> None:
    one, two = socket.socketpair()
    try:
        theirs, ours = _client(one, protocol, False), _client(two, protocol, True)
        assert isinstance(ours, Paho)
        acked: list[int] = []
        for n, (topic, payload, retain, correlation) in enumerate(CASES):
            properties = None
            if correlation is not None:
                properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho: no annotations
                properties.CorrelationData = correlation
            theirs.publish(topic, payload, 1, retain, properties)
            assert ours.publish_acked(topic, payload, retain, correlation, lambda n=n: acked.append(n))  # type: ignore[misc]  # default binds n
        assert _packets(ours._out_packet) == _packets(theirs._out_packet)
        assert ours._out_messages == {} and ours._inflight_messages == 0  # paho's table: not used
        assert sorted(ours._acked) == list(range(1, len(CASES) + 1))  # paho's packet ids, one each
    finally:
        one.close()
        two.close()


@pytest.mark.parametrize("topic", ["a/+/b", "a/#", "x" * 65536])
def test_publish_acked_refuses_what_paho_refuses(topic: str) -> None:
    one, two = socket.socketpair()
    try:
        theirs, ours = _client(one, mqtt.MQTTv5, False), _client(two, mqtt.MQTTv5, True)
        with pytest.raises(ValueError):
            theirs.publish(topic, b"x", 1)
        with pytest.raises(ValueError):
            ours.publish_acked(topic, b"x", False, None, lambda: None)  # type: ignore[attr-defined]  # adopted
        assert not ours._out_packet
    finally:
        one.close()
        two.close()


def test_publish_acked_without_a_connection_sends_nothing() -> None:
    client = Paho.adopt(mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv5))
    assert client.publish_acked("a/b", b"x", False, None, lambda: None) is False
    assert not client._out_packet and not client._acked
