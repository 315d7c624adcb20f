"""MQTT packets the link's client writes and reads itself (pure: bytes in, bytes or values out).

`publish_packet` builds a QoS 1 PUBLISH byte for byte as paho builds it (`check_topic` and
`check_payload` refuse what paho's `publish` refuses); `incoming` decodes a received QoS 0/1 PUBLISH into an `Incoming`, the
bridge's small form of a message, or returns None for what it leaves to paho (QoS 2, properties the
bridge does not read, a topic that is not UTF-8, anything malformed). paho_client.py puts them in
paho's packet queue and takes them out of its reads.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .topics import is_topic_name

MAX_PACKET = 268_435_455  # the largest remaining length MQTT can frame (four length bytes)


@dataclass(frozen=True)
class Incoming:
    """A message from the broker, reduced to what the bridge needs."""

    topic: str
    payload: bytes
    response_topic: str | None = None
    correlation_data: bytes | None = None
    subscription_ids: tuple[int, ...] = ()  # MQTT v5: the identifiers of the subscriptions it matched


def check_topic(topic: str, v5: bool) -> bytes:
    """The topic's bytes, or ValueError for a topic paho's `publish` refuses (a wildcard, one too
    long for a packet, an empty one before MQTT v5) or that the broker would hang up on (a character
    `topics.has_unfit_character` refuses): `topics.is_topic_name`."""
    if not (is_topic_name(topic) or (v5 and not topic)):  # the one rule (topics.py); v5 allows an empty one
        raise ValueError(f"invalid topic name for a publish: {topic[:200]!r}")
    return topic.encode()


def check_payload(topic: bytes, payload: bytes, correlation_data: bytes | None) -> None:
    """ValueError for a payload that paho's `publish` refuses: too long for a packet on `topic`."""
    if len(payload) > MAX_PACKET - 6 - len(topic) - (0 if correlation_data is None else len(correlation_data)):
        raise ValueError("payload too large for an MQTT packet")


PAYLOAD_FITS = MAX_PACKET - 6 - 2 * 65535  # a payload up to this fits whatever the topic and correlation data


def framed_topic(topic: bytes) -> bytes:
    """A topic as a PUBLISH carries it: its length (two bytes), then its bytes."""
    return len(topic).to_bytes(2, "big") + topic


def publish_packet(topic: bytes, payload: bytes, retain: bool, mid: int, correlation_data: bytes | None,
                   v5: bool) -> bytes:
    """A QoS 1 PUBLISH (its topic `framed_topic`, topic and payload checked), with `correlation_data` as
    its only MQTT v5 property."""
    if not v5:
        properties = b""
    elif correlation_data is None:
        properties = b"\x00"
    elif len(correlation_data) < 125:  # the properties' length fits one byte
        properties = _CORRELATION.pack(len(correlation_data) + 3, 9, len(correlation_data)) + correlation_data
    else:
        properties = _properties(correlation_data)
    header = _fixed_header(0x32 | retain, 2 + len(topic) + len(properties) + len(payload))
    return b"".join((header, topic, _MID.pack(mid), properties, payload))


RESPONSE_TOPIC, CORRELATION_DATA, SUBSCRIPTION_IDENTIFIER = 0x08, 0x09, 0x0B  # MQTT v5 property ids


def incoming(header: int, body: bytes | bytearray, v5: bool) -> tuple[Incoming, int, int] | None:
    """A received PUBLISH (its first byte and what follows the remaining length) as (`Incoming`, QoS,
    packet id), as `incoming_of` makes it of paho's and aiomqtt's objects; None for what is left to
    paho: QoS 2, a property other than ResponseTopic, CorrelationData and SubscriptionIdentifier,
    a topic that is not UTF-8, anything malformed."""
    qos = (header & 0x06) >> 1
    if qos > 1 or len(body) < 2:
        return None
    end = 2 + ((body[0] << 8) | body[1])
    mid = 0
    at = end + 2 if qos else end
    if at > len(body) or (end == 2 and not v5):
        return None
    if qos:
        mid = (body[end] << 8) | body[end + 1]
    response_topic = correlation = None
    ids: list[int] = []
    if v5:
        length, at = _varint(body, at)
        stop = at + length
        if length < 0 or stop > len(body):
            return None
        while at < stop:
            kind = body[at]
            at += 1
            if kind == SUBSCRIPTION_IDENTIFIER:
                value, at = _varint(body, at)
                if value <= 0:
                    return None
                ids.append(value)
                continue
            if kind not in (RESPONSE_TOPIC, CORRELATION_DATA) or at + 2 > stop:
                return None
            size = (body[at] << 8) | body[at + 1]
            value_bytes, at = body[at + 2:at + 2 + size], at + 2 + size
            if at > stop:
                return None
            if kind == CORRELATION_DATA:
                correlation = bytes(value_bytes)
            else:
                try:
                    response_topic = value_bytes.decode()
                except UnicodeDecodeError:
                    return None
        if at != stop:
            return None
    try:
        topic = body[2:end].decode()
    except UnicodeDecodeError:
        return None
    return Incoming(topic, bytes(body[at:]), response_topic, correlation, tuple(ids)), qos, mid


def _varint(data: bytes | bytearray, at: int) -> tuple[int, int]:
    """An MQTT variable byte integer at `at`: (value, where it ends); (-1, at) when malformed."""
    value = shift = 0
    for index in range(at, min(at + 4, len(data))):
        byte = data[index]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, index + 1
        shift += 7
    return -1, at


_MID = struct.Struct("!H")  # a packet id
_CORRELATION = struct.Struct("!BBH")  # properties length (< 128), CorrelationData (9), its length


def _properties(correlation_data: bytes) -> bytes:
    """A PUBLISH's MQTT v5 properties holding only `correlation_data`, packed as paho packs them."""
    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho: no annotations
    properties.CorrelationData = correlation_data
    packed: bytes = properties.pack()  # type: ignore[no-untyped-call]  # paho: no annotations
    return packed


def _fixed_header(command: int, length: int) -> bytes:
    """An MQTT fixed header: the command byte and the remaining length (variable byte integer)."""
    if length < 128:
        return bytes((command, length))
    if length < 16384:  # two length bytes: most of a bridge's publishes
        return bytes((command, (length & 0x7F) | 0x80, length >> 7))
    header = bytearray((command,))
    while True:
        length, byte = divmod(length, 128)
        header.append(byte | 0x80 if length else byte)
        if not length:
            return bytes(header)
