"""`Paho.publish_acked` writes, byte for byte, the PUBLISH paho's own `publish` writes (MQTT 3.1.1 and
v5, retained or not, with correlation data short and long, payloads whose length takes 1 to 3 bytes),
and refuses what paho refuses. Checked against a real paho client on a socket pair. `incoming`
decodes a received PUBLISH into the `Incoming` that paho's decoder, aiomqtt's Message and
`incoming_of` made of it, and leaves to paho what it does not decode."""

from __future__ import annotations

import logging
import socket

import aiomqtt
import paho.mqtt._packet as paho_packet
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from wa_mqtt.mqtt.packets import Incoming, incoming
from wa_mqtt.mqtt.paho_client import Paho, ReadAhead, incoming_of


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


class _Huge(bytes):
    """A payload that says it is over MQTT's packet limit (no 256 MB buffer in a unit test)."""

    def __len__(self) -> int:
        return 268_435_456


def test_publish_acked_refuses_a_payload_over_the_packet_limit() -> None:
    """Found in review: paho's publish refuses it (the link logs and drops it); framed anyway, it was a
    malformed packet: the broker hangs up, and a spooled one would go out again on every reconnect."""
    one, two = socket.socketpair()
    try:
        ours = _client(two, mqtt.MQTTv5, True)
        with pytest.raises(ValueError):
            ours.publish_acked("a/b", _Huge(b"x"), False, None, lambda: None)  # type: ignore[attr-defined]  # adopted
        assert not ours._out_packet
        assert ours.publish_acked("a/b", b"x", False, None, lambda: None)  # type: ignore[attr-defined]  # adopted
        with pytest.raises(ValueError):  # a topic published to before (its checks kept): the payload still is checked
            ours.publish_acked("a/b", _Huge(b"x"), False, None, lambda: None)  # type: ignore[attr-defined]  # adopted
        assert len(ours._out_packet) == 1
    finally:
        one.close()
        two.close()


def test_publish_acked_without_a_connection_sends_nothing() -> None:
    client = Paho.adopt(mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv5))
    assert client.publish_acked("a/b", b"x", False, None, lambda: None) is False
    assert not client._out_packet and not client._acked


def _publish_body(topic: bytes, qos: int, properties: Properties | None, payload: bytes) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic + (b"\x00\x07" if qos else b"")
    if properties is not None:
        body += properties.pack()  # type: ignore[no-untyped-call]  # paho: no annotations
    return body + payload


def _paho_incoming(header: int, body: bytes, v5: bool) -> Incoming:
    """What the link made of a publish before: paho's decoder, aiomqtt's Message, `incoming_of`."""
    protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
    decoded = paho_packet.decode_publish(header, body, protocol)
    message = mqtt.MQTTMessage(decoded.mid, decoded.topic)
    message.qos, message.payload, message.properties = decoded.qos, decoded.payload, decoded.properties
    return incoming_of(aiomqtt.Message._from_paho_message(message))  # private: as aiomqtt's on_message does


def _properties(**values: object) -> Properties:
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho: no annotations
    for name, value in values.items():
        setattr(properties, name, value)
    return properties


DECODED = [
    (b"wa/bridge/request/send", 1, {}, b'{"to":"x"}'),
    (b"wa/r", 0, {}, b""),
    ("wa/réponse/ü".encode(), 1, {"ResponseTopic": "reply/ü", "CorrelationData": b"\x00c" * 40}, b"p" * 300),
    (b"c/x", 1, {"SubscriptionIdentifier": 7}, b"{}"),
    (b"c/x", 1, {"SubscriptionIdentifier": 200_000, "ResponseTopic": "r"}, b"y" * 70_000),
    (b"c/x", 0, {"CorrelationData": b""}, b"z"),
]


@pytest.mark.parametrize(("topic", "qos", "values", "payload"), DECODED)
def test_incoming_decodes_what_paho_and_aiomqtt_made_of_a_publish(
        topic: bytes, qos: int, values: dict[str, object], payload: bytes) -> None:
    header = 0x30 | qos << 1
    body = _publish_body(topic, qos, _properties(**values), payload)
    decoded = incoming(header, body, True)
    assert decoded is not None
    assert decoded == (_paho_incoming(header, body, True), qos, 7 if qos else 0)
    plain = _publish_body(topic, qos, None, payload)  # MQTT 3.1.1: no properties
    assert incoming(header, plain, False) == (_paho_incoming(header, plain, False), qos, 7 if qos else 0)


def test_incoming_with_several_subscription_identifiers() -> None:
    props = bytes([4, 0x0B, 3, 0x0B, 9])  # two identifiers: 3 and 9
    body = (3).to_bytes(2, "big") + b"c/x" + b"\x00\x07" + props + b"pl"
    assert incoming(0x32, body, True) == (Incoming("c/x", b"pl", None, None, (3, 9)), 1, 7)
    assert _paho_incoming(0x32, body, True) == Incoming("c/x", b"pl", None, None, (3, 9))


@pytest.mark.parametrize(("header", "body"), [
    (0x34, _publish_body(b"a", 2, _properties(), b"x")),  # QoS 2: paho's
    (0x32, _publish_body(b"a", 1, _properties(UserProperty=[("k", "v")]), b"x")),  # other properties: paho's
    (0x32, _publish_body(b"a", 1, _properties(ContentType="text/plain"), b"x")),
    (0x32, _publish_body(b"a", 1, _properties(MessageExpiryInterval=5), b"x")),
    (0x32, _publish_body(b"\xff\xfe", 1, _properties(), b"x")),  # not UTF-8
    (0x32, _publish_body(b"a", 1, _properties(ResponseTopic="r"), b"")[:-1]),  # properties cut short
    (0x32, b"\x00"),
    (0x32, b"\x00\x05ab"),
])
def test_incoming_leaves_to_paho_what_it_does_not_decode(header: int, body: bytes) -> None:
    assert incoming(header, body, True) is None


def test_incoming_never_raises_on_a_truncated_packet() -> None:
    body = _publish_body("t/ü".encode(), 1, _properties(ResponseTopic="rt", CorrelationData=b"cd",
                                                        SubscriptionIdentifier=300), b"payload")
    for cut in range(len(body)):
        result = incoming(0x32, body[:cut], True)
        assert result is None or result[0].payload == body[len(body) - 7:cut]


def test_packets_read_ahead_are_handled_whole_or_by_paho_wherever_the_reads_split_them() -> None:
    """A stream of publishes (with and without properties, one paho must decode, one whose length
    takes 3 bytes), PUBACKs and a PINGRESP, arriving in random pieces: `Paho` handles each once, in
    order, taking the whole ones read ahead itself and leaving split ones to paho."""
    import random

    big = b"B" * 20_000
    stream = [
        (0x32, _publish_body(b"wa/req", 1, _properties(ResponseTopic="r", CorrelationData=b"c"), b"one")),
        (0x30, _publish_body(b"wa/q0", 0, _properties(), b"two")),
        (0x32, _publish_body(b"wa/ud", 1, _properties(UserProperty=[("k", "v")]), b"three")),  # paho's decoder
        (0x40, b"\x00\x01"), (0x40, b"\x00\x02\x10"),  # PUBACKs of our publishes 1 and 2
        (0x40, b"\x00\x09"), (0x40, b"\x00\x03\x87"),  # one of nobody's (ignored); 3: an error reason (paho's decoder)
        (0xD0, b""),  # PINGRESP
        (0x32, _publish_body(b"wa/big", 1, _properties(SubscriptionIdentifier=5), big)),
    ]
    data = b"".join(bytes([header]) + _varint_bytes(len(body)) + body for header, body in stream)
    for seed in range(30):
        rng = random.Random(seed)
        ours, theirs = socket.socketpair()
        try:
            client, got = _reading_client(ours)
            client.on_message = lambda _c, _u, message: got.append(("paho", message.topic, message.payload))
            at = 0
            while at < len(data):
                step = rng.choice([1, 2, 3, 7, 50, 4_000, 30_000])
                theirs.sendall(data[at:at + step])
                at += step
                client.loop_read()
                while client.socket().pending():  # type: ignore[union-attr]  # as aiomqtt's reader does
                    client.loop_read()
            assert got == [
                Incoming("wa/req", b"one", "r", b"c"), Incoming("wa/q0", b"two"), ("paho", "wa/ud", b"three"),
                ("acked", 1), ("acked", 2), ("acked", 3), Incoming("wa/big", big, None, None, (5,))], seed
            assert client._acked == {}
            assert client._in_packet["command"] == 0 and client._ping_t == 0
            # a PUBACK (packet id 7) for each QoS 1 publish (ours or paho's decoder), none for the QoS 0 one
            assert _packets(client._out_packet) == [b"\x40\x02\x00\x07"] * 3, seed
        finally:
            ours.close()
            theirs.close()


def _reading_client(ours: socket.socket) -> tuple[Paho, list[object]]:
    """A client reading `ours` ahead as the link installs it, awaiting the PUBACKs of publishes 1 to 3;
    what it hands on (received publishes, acknowledgements) goes into the list."""
    client = _client(ours, mqtt.MQTTv5, True)
    assert isinstance(client, Paho)
    ours.setblocking(False)
    client._sock = ReadAhead(ours)  # type: ignore[assignment]  # as the link installs it
    got: list[object] = []
    client.receive = got.append
    client._in_messages = {}  # private: no session state in a unit test
    for mid in (1, 2, 3):
        client._mid_generate()
        client._acked[mid] = lambda mid=mid: got.append(("acked", mid))  # type: ignore[misc]  # default binds mid
    return client, got


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        value, byte = divmod(value, 128)
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def test_whole_packets_read_with_the_end_of_the_connection_are_all_handled_before_it_ends() -> None:
    """The broker's last packets (the last one cut short) and the end of the connection arrive together:
    every whole packet read ahead is handled, in order, then the connection is reported lost, and
    what our PUBACK left unacknowledged stays so (the link publishes it again)."""
    ours, theirs = socket.socketpair()
    try:
        client, got = _reading_client(ours)
        client.on_disconnect = lambda *_args: got.append("lost")
        body = _publish_body(b"wa/req", 1, _properties(), b"one")
        theirs.sendall(b"\x40\x02\x00\x02" + bytes([0x32, len(body)]) + body + b"\x40\x02\x00\x01" + b"\x40\x02")
        theirs.close()
        for _ in range(5):  # as aiomqtt's reader: called while the socket is readable
            if client.socket() is None:
                break
            client.loop_read()
            while client.socket() is not None and client.socket().pending():  # type: ignore[union-attr]  # checked
                client.loop_read()
        assert got == [("acked", 2), Incoming("wa/req", b"one"), ("acked", 1), "lost"]
        assert list(client._acked) == [3] and client.socket() is None
    finally:
        ours.close()


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311])
def test_puback_sent_is_what_paho_sends(protocol: mqtt.MQTTProtocolVersion) -> None:
    """`Paho._send_puback` queues the PUBACK paho's own queues (the packet id), in order with publishes."""
    one, two = socket.socketpair()
    try:
        theirs, ours = _client(one, protocol, False), _client(two, protocol, True)
        for mid in (1, 255, 256, 65535):
            assert theirs._send_puback(mid) == ours._send_puback(mid) == mqtt.MQTT_ERR_SUCCESS
        assert _packets(ours._out_packet) == _packets(theirs._out_packet)
        assert [p["command"] for p in ours._out_packet] == [p["command"] for p in theirs._out_packet]
    finally:
        one.close()
        two.close()


@pytest.mark.parametrize("level", [logging.INFO, logging.DEBUG])
def test_read_ahead_path_logs_paho_debug_lines_only_at_debug(level: int) -> None:
    """A PUBLISH and a PUBACK of ours read through `ReadAhead`: the lines paho logs for them (and the
    PUBACK we send) at debug, nothing below it."""
    logger = logging.getLogger("wa_mqtt.test.read_ahead_debug")
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Keep()
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(level)
    one, two = socket.socketpair()
    try:
        client = _client(two, mqtt.MQTTv5, True)
        assert isinstance(client, Paho)
        client.enable_logger(logger)
        client._sock = ReadAhead(two)  # type: ignore[assignment]  # as the link installs it
        two.setblocking(False)
        got: list[Incoming] = []
        client.receive = got.append
        acked: list[int] = []
        client._acked[7] = lambda: acked.append(7)
        body = _publish_body(b"a/b", 1, _properties(), b"x")
        one.sendall(bytes((0x32, len(body))) + body + bytes((0x40, 2, 0, 7)))
        client._packet_read()
        assert [m.topic for m in got] == ["a/b"] and acked == [7] and len(client._out_packet) == 1
        debug_lines = ["Received PUBLISH", "Sending PUBACK", "Received PUBACK (Mid: 7)"]
        logged = [line for line in debug_lines if any(record.startswith(line) for record in records)]
        assert logged == (debug_lines if level == logging.DEBUG else [])
    finally:
        logger.removeHandler(handler)
        one.close()
        two.close()
