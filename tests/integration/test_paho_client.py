"""The link's paho client (`Paho`) against a real Mosquitto: the common PUBACK takes the short path and
ends exactly as paho's own handling would (callback, reason, in-flight count, queued publishes
released); a PUBACK with an error reason still goes through paho's decoder; paho's debug lines are
there when the logger is at debug."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt._packet as paho_packet
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from wa_mqtt.mqtt.paho_client import Paho

from harness import TEST_BROKER_OPTIONS, Broker

WAIT = 10.0


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A Mosquitto that refuses publishes outside `ok/` (a PUBACK with reason 0x87, Not authorized)."""
    workdir = tmp_path_factory.mktemp("acl-broker")
    acl = Path(workdir) / "acl"
    acl.write_text("topic readwrite ok/#\n")
    instance = Broker(workdir, options=f"{TEST_BROKER_OPTIONS}acl_file {acl}\n")
    if instance.kind != "mosquitto":
        pytest.skip("needs Mosquitto (MQTT v5 reason codes)")
    instance.start()
    yield instance
    instance.stop()


class _Recorder:
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.calls: list[tuple[int, str, str]] = []
        self.done = threading.Event()

    def on_publish(self, _client: Any, _userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        self.calls.append((mid, str(reason), str(properties)))
        if len(self.calls) >= self.expected:
            self.done.set()


def _connected(broker: Broker, protocol: mqtt.MQTTProtocolVersion, in_flight: int = 20) -> Paho:
    client = Paho.adopt(mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"fast-puback-{protocol.name}",
                                    protocol=protocol))
    client.max_inflight_messages_set(in_flight)
    ready = threading.Event()
    client.on_connect = lambda *_args: ready.set()
    client.on_subscribe = lambda *_args: ready.set()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    assert ready.wait(WAIT)
    ready.clear()
    client.subscribe("ok/subscribed", qos=1)
    assert ready.wait(WAIT)
    return client


def _stop(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def test_pubacks_success_and_no_subscribers_skip_the_decoder_an_error_reason_does_not(
        acl_broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[bytes] = []
    decode = paho_packet.decode_puback

    def counting(header: int, packet: bytes, protocol: Any) -> Any:
        decoded.append(bytes(packet))
        return decode(header, packet, protocol)

    monkeypatch.setattr(paho_packet, "decode_puback", counting)
    client = _connected(acl_broker, mqtt.MQTTv5, in_flight=1)  # the rest queued: each PUBACK releases the next
    try:
        recorder = _Recorder(6)
        client.on_publish = recorder.on_publish
        infos = [client.publish(topic, b"x", qos=1) for topic in
                 ("ok/subscribed", "ok/nobody", "denied/x", "ok/subscribed", "ok/nobody", "ok/subscribed")]
        assert recorder.done.wait(WAIT), recorder.calls
        assert [(mid, reason) for mid, reason, _ in recorder.calls] == [
            (infos[0].mid, "Success"), (infos[1].mid, "No matching subscribers"), (infos[2].mid, "Not authorized"),
            (infos[3].mid, "Success"), (infos[4].mid, "No matching subscribers"), (infos[5].mid, "Success")]
        assert all(properties == "[]" for _, _, properties in recorder.calls)  # no properties, as paho gives them
        assert all(info.is_published() for info in infos)
        assert client._out_messages == {} and client._inflight_messages == 0  # paho's bookkeeping, as its own path
        assert [packet[2:] for packet in decoded] == [b"\x87"]  # only the error reason went through paho's decoder
    finally:
        _stop(client)


def test_publish_acked_is_acknowledged_whatever_the_reason_and_arrives_intact(
        acl_broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    """The link's own QoS 1 publishes (`publish_acked`, not in paho's table): each callback runs once
    its PUBACK is back, also one with an error reason (as paho's on_publish reports it); the message
    arrives with its correlation data."""
    decoded: list[bytes] = []
    decode = paho_packet.decode_puback
    monkeypatch.setattr(paho_packet, "decode_puback",
                        lambda header, packet, protocol: decoded.append(bytes(packet)) or decode(header, packet, protocol))
    client = _connected(acl_broker, mqtt.MQTTv5)
    try:
        received: list[tuple[str, bytes, Any]] = []
        arrived = threading.Event()

        def on_message(_client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
            received.append((message.topic, message.payload, getattr(message.properties, "CorrelationData", None)))
            arrived.set()

        client.on_message = on_message
        acked: list[str] = []
        all_acked = threading.Event()

        def note(topic: str) -> None:
            acked.append(topic)
            if len(acked) == 3:
                all_acked.set()

        for topic in ("ok/subscribed", "ok/nobody", "denied/x"):
            assert client.publish_acked(topic, b'{"n":1}', False, b"corr-1", lambda topic=topic: note(topic))  # type: ignore[misc]  # default binds topic
        assert all_acked.wait(WAIT) and arrived.wait(WAIT)
        assert sorted(acked) == ["denied/x", "ok/nobody", "ok/subscribed"]
        assert received == [("ok/subscribed", b'{"n":1}', b"corr-1")]
        assert client._acked == {} and client._out_messages == {}
        assert [packet[2:] for packet in decoded] == [b"\x87"]
    finally:
        _stop(client)


def test_mqtt_311_pubacks_take_the_short_path(acl_broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[bytes] = []
    decode = paho_packet.decode_puback
    monkeypatch.setattr(paho_packet, "decode_puback",
                        lambda header, packet, protocol: decoded.append(packet) or decode(header, packet, protocol))
    client = _connected(acl_broker, mqtt.MQTTv311)
    try:
        recorder = _Recorder(2)
        client.on_publish = recorder.on_publish
        infos = [client.publish("ok/subscribed", b"x", qos=1), client.publish("ok/nobody", b"y", qos=1)]
        assert recorder.done.wait(WAIT), recorder.calls
        assert sorted(mid for mid, _, _ in recorder.calls) == sorted(info.mid for info in infos)
        assert decoded == [] and client._out_messages == {}
    finally:
        _stop(client)


def test_paho_debug_lines_are_logged_only_when_the_logger_is_at_debug(acl_broker: Broker) -> None:
    logger = logging.getLogger("wa_mqtt.test.paho_debug")
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger.addHandler(Keep())
    logger.propagate = False
    client = _connected(acl_broker, mqtt.MQTTv5)
    client.enable_logger(logger)
    try:
        for level in (logging.INFO, logging.DEBUG):
            logger.setLevel(level)
            recorder = _Recorder(1)
            client.on_publish = recorder.on_publish
            info = client.publish("ok/subscribed", b"x", qos=1)
            assert recorder.done.wait(WAIT)
            if level == logging.INFO:
                assert records == []
            else:
                assert f"Received PUBACK (Mid: {info.mid})" in records
                assert any(line.startswith("Sending PUBLISH") for line in records)
    finally:
        _stop(client)
