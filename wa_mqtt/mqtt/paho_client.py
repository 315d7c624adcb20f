"""The link's MQTT client: aiomqtt's, extended where it reaches into paho's internals.

`PahoClient` keeps the CONNACK properties, publishes with a PUBACK callback each (`publish_then`:
no task, event or timer per publish), reads the socket ahead and acknowledges what it read at once
(`ReadAhead`), and writes the packets queued in one loop turn with one send (`coalesce`). Its paho
client is a `Paho`: the common packets of a send (QoS 1 publishes out, PUBACKs and publishes in, a
packet read ahead) handled without the objects paho builds for each (the packets: packets.py);
anything else goes to paho.
`Intake` is aiomqtt's queue of received messages, holding each as a small `Incoming`. aiomqtt's and
paho's own log lines go to `CLIENT_LOG`, its "pending publish calls" warning folded to one line a
minute.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import LogLevel, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from .packets import PAYLOAD_FITS, Incoming, check_payload, check_topic, framed_topic, incoming, publish_packet

if TYPE_CHECKING:
    from paho.mqtt.client import _OutPacket  # paho's queued packet (a TypedDict it defines for type checkers only)

log = logging.getLogger(__name__)

# Acknowledge what we read at once, not ~40 ms later (Linux's delayed ACK). A broker with Nagle's
# algorithm on (Mosquitto's default) holds its next small packet to us until the last is acknowledged:
# after a send's three publishes its third PUBACK, and the next request behind it, waited for our
# delayed ACK (one send at a time: ~44 ms each). Linux only; elsewhere the delayed ACK stays.
QUICKACK = (socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1) if hasattr(socket, "TCP_QUICKACK") else None
WARNING_EVERY = 60.0  # seconds: aiomqtt's "pending publish calls" warning at most once per this


class Intake(asyncio.Queue[Incoming]):
    """aiomqtt's queue of received messages holding each as an `Incoming`: its payload and ~0.3 KB, not
    the ~7 KB of paho's objects, so messages waiting to be handled cost little."""

    def put_nowait(self, item: Any) -> None:
        super().put_nowait(item if isinstance(item, Incoming) else incoming_of(item))


def incoming_of(message: aiomqtt.Message, subscription_ids: tuple[int, ...] | None = None) -> Incoming:
    """What the bridge needs of a received message; `subscription_ids` when the caller knows them,
    else those the message carries (MQTT v5)."""
    payload = message.payload if isinstance(message.payload, bytes) else str(message.payload or "").encode()
    props = message.properties
    response_topic = getattr(props, "ResponseTopic", None) if props else None
    correlation = getattr(props, "CorrelationData", None) if props else None
    if subscription_ids is None:
        ids = getattr(props, "SubscriptionIdentifier", None) if props else None
        subscription_ids = tuple(ids) if isinstance(ids, list) else (ids,) if ids else ()
    return Incoming(str(message.topic), payload, response_topic, correlation, subscription_ids)


class PahoClient(aiomqtt.Client):
    """aiomqtt's client, keeping the CONNACK properties (the broker's receive maximum), which aiomqtt
    does not expose, reading ahead (`ReadAhead`), and writing the packets paho queued in one loop turn
    with one send.

    aiomqtt has paho write each packet with a send() of its own, once the socket is reported writable:
    per loop turn a wake-up of the loop, two epoll changes and a send per packet. A send goes out as a
    response, a PUBACK and two or three publishes; on loopback each send() also runs the broker's
    side of TCP, and that was a fifth of the bridge's time in the send benchmark. Here the packets
    queued in a turn are joined (`coalesce`) and written at its end; only when the socket cannot take
    them all is the rest left to aiomqtt's writer."""

    connack: Any = None
    _write_due = False
    _writer_added = False  # aiomqtt's writer is on the loop (the socket was full): paho's unregister removes it

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._paho = Paho.adopt(self._client)
        queue: Any = self._queue  # aiomqtt types it as holding its Messages
        if isinstance(queue, Intake):  # what the link gives aiomqtt: it holds `Incoming`s
            self._paho.receive = self._receive
        self._acked: dict[int, Callable[[], None]] = {}  # QoS 2 publishes through paho awaiting theirs (`publish_then`)

    def _receive(self, message: Incoming) -> None:
        """A received publish decoded by `Paho`, queued as aiomqtt's `_on_message` queues its own."""
        try:
            self._queue.put_nowait(message)  # type: ignore[arg-type]  # our queue (Intake) holds Incoming
        except asyncio.QueueFull:
            self._logger.warning("Message queue is full. Discarding message.")

    def _on_connect(self, *args: Any, **kwargs: Any) -> None:
        properties = args[4] if len(args) > 4 else kwargs.get("properties")
        self.connack = properties
        super()._on_connect(*args, **kwargs)

    def publish_then(self, topic: str, payload: bytes, qos: int, retain: bool, correlation_data: bytes | None,
                     acked: Callable[[], None]) -> None:
        """Publish without a task or an event each (aiomqtt's `publish` makes both, and a timer):
        `acked()` runs once the broker acknowledged it (QoS 0: once queued). A publish paho refuses
        (a malformed topic) is logged and dropped; one it cannot make because the connection is gone
        is left unacknowledged: the session ends, and the link publishes it again on the next one.
        QoS 1 (every publish of the bridge) is `Paho.publish_acked`; other levels go through paho."""
        try:
            if qos == 1:
                self._paho.publish_acked(topic, payload, retain, correlation_data, acked)
                return
            properties = None
            if correlation_data is not None:
                properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho: no annotations
                properties.CorrelationData = correlation_data
            info = self._client.publish(topic, payload, qos, retain, properties)
        except Exception:  # must not take the link down
            log.exception("publish to %r refused; dropped", topic)
            acked()
            return
        if info.rc != 0:  # not connected: the receiver sees the connection end
            return
        if qos == 0 or info.is_published():
            acked()
        else:
            self._acked[info.mid] = acked

    def _on_publish(self, client: Any, userdata: Any, mid: int, *args: Any) -> None:
        super()._on_publish(client, userdata, mid, *args)
        acked = self._acked.pop(mid, None)
        if acked is not None:
            acked()

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        # aiomqtt sets `socket_options` (TCP_NODELAY) after connecting, and only on a `socket.socket`:
        # not on the `ReadAhead` it would find then. So they are set here, on paho's socket itself;
        # without, Nagle held each small write ~40 ms for the broker's delayed ACK (a send: 44 ms, not 3).
        for option in self._socket_options:
            sock.setsockopt(*option)
        client._sock = ReadAhead(sock)  # paho's own socket attribute: it reads and writes only through it
        super()._on_socket_open(client, userdata, sock)

    def _on_socket_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        if self._write_due:
            return
        self._write_due = True
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:  # paho's connect runs in an executor thread
            on_loop = False
        (self._loop.call_soon if on_loop else self._loop.call_soon_threadsafe)(
            self._write_queued, client, userdata, sock)

    def _write_queued(self, client: Any, userdata: Any, sock: Any) -> None:
        self._write_due = False
        try:
            if write_joined(client):  # the common case: all of it, with one send
                return
            coalesce(client._out_packet)  # paho's queue of packets to write (see `coalesce`)
            client.loop_write()
        except Exception as exc:  # noqa: BLE001 (as aiomqtt's writer: a broken connection ends the session, on its own error)
            if not self._disconnected.done():
                self._disconnected.set_exception(exc)
            return
        if client.want_write() and client.socket() is not None:  # the socket is full: the rest once it is
            self._writer_added = True
            super()._on_socket_register_write(client, userdata, sock)  # writable, the aiomqtt way

    def _on_socket_unregister_write(self, client: Any, userdata: Any, sock: Any) -> None:
        # paho calls this after every write that emptied its queue: aiomqtt's remove_writer (a selector
        # look-up, ~0.7 a send) is needed only when its writer was added
        if self._writer_added:
            self._writer_added = False
            super()._on_socket_unregister_write(client, userdata, sock)


PUBACK = PacketTypes.PUBACK << 4
PUBLISH = PacketTypes.PUBLISH << 4
DISCONNECT = PacketTypes.DISCONNECT << 4
_PUBACK_PACKET = struct.Struct("!BBH")  # a PUBACK: its command, remaining length 2, the packet id
TOPICS_KEPT = 4096  # topics checked and encoded, kept by `publish_acked` (a bridge publishes to a few per account)
SIMPLE_PUBACK_REASONS = (0x00, 0x10)  # Success, No matching subscribers: no properties follow


class Paho(mqtt.Client):
    """paho's client, handling the common PUBACK without building what it never needs.

    paho decodes every PUBACK into a `ReasonCode` and a `Properties` (~20 us; a send gets three
    back). A PUBACK that is just the packet id (MQTT 3.1.1, or v5's success), or the id and a
    success reason (`SIMPLE_PUBACK_REASONS`) with no properties, is handled here as paho would:
    the same `_do_on_publish` (its in-flight count, its queued publishes, the `on_publish` callback)
    with the same reason and an empty `Properties`, made once per client. Anything else (an error
    reason, properties, a malformed packet) goes to paho's own path. aiomqtt makes the client; the
    link's `PahoClient` turns it into this class (`adopt`), which adds no state of its own but two
    objects."""

    _reasons: dict[int, ReasonCode]
    _no_properties: Properties
    _acked: dict[int, Callable[[], None]]  # our QoS 1 publishes (`publish_acked`) by packet id
    _topics: dict[str, bytes]  # topics `publish_acked` checked, encoded and framed (`framed_topic`)
    receive: Callable[[Incoming], None] | None  # takes received publishes, decoded here (`_handle_publish`)

    @classmethod
    def adopt(cls, client: mqtt.Client) -> Paho:
        client.__class__ = cls
        assert isinstance(client, cls)
        client._reasons = {code: ReasonCode(PacketTypes.PUBACK, identifier=code)
                           for code in SIMPLE_PUBACK_REASONS}
        client._no_properties = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]  # paho: no annotations
        client._acked = {}
        client._topics = {}
        client.receive = None
        return client

    def publish_acked(self, topic: str, payload: bytes, retain: bool, correlation_data: bytes | None,
                      acked: Callable[[], None]) -> bool:
        """Publish at QoS 1 and call `acked()` when its PUBACK comes back; False (nothing sent) when
        not connected. Raises ValueError for what paho's `publish` refuses (a wildcard, a topic or
        payload too long; an empty topic before MQTT v5).

        paho's `publish` makes an `MQTTMessage` and an `MQTTMessageInfo` (with a threading
        `Condition`) per publish, keeps it in its in-flight table and logs it. The link keeps its
        own record (the `acked` callback, by packet id) and its own limit (the publish window, at
        most the broker's receive maximum and `MAX_WINDOW`), so this writes the same bytes paho
        would (packet ids from paho's counter, so never one of its own in flight) straight into
        paho's queue of packets; the PUBACK comes back to `_packet_handle`. A lost connection
        drops this client with everything in flight: the link publishes it again on the next."""
        v5 = self._protocol == MQTTProtocolVersion.MQTTv5
        framed = self._topics.get(topic)
        if framed is None:
            framed = framed_topic(check_topic(topic, v5))  # raises for what paho refuses
            if len(self._topics) >= TOPICS_KEPT:
                self._topics.clear()
            self._topics[topic] = framed
        if len(payload) > PAYLOAD_FITS:
            check_payload(framed[2:], payload, correlation_data)
        if self._sock is None:
            return False
        mid = self._mid_generate()
        packet = publish_packet(framed, payload, retain, mid, correlation_data, v5)
        self._acked[mid] = acked
        if self._logs_debug():
            self._easy_log(LogLevel.MQTT_LOG_DEBUG, "Sending PUBLISH (d0, q1, r%d, m%d), '%s', ... (%d bytes)",
                           retain, mid, framed[2:], len(payload))
        self._queue(PUBLISH, packet, mid)
        return True

    def _queue(self, command: int, packet: bytes, mid: int) -> MQTTErrorCode:
        """Queue a QoS 1 packet of ours (a publish, a PUBACK) for writing: under aiomqtt, what paho's
        `_packet_queue` does then, without its checks for a threaded or no loop (and its
        `_call_socket_register_write` returns at once while a write is registered)."""
        if self._sockpairW is None and self._on_socket_register_write is not None:  # always, under aiomqtt
            self._out_packet.append({"command": command, "mid": mid, "qos": 1, "pos": 0, "to_process": len(packet),
                                     "packet": packet, "info": None})
            if not self._registered_write:
                self._call_socket_register_write()
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return self._packet_queue(command, packet, mid, 1)

    def _packet_handle(self) -> MQTTErrorCode:
        packet = self._in_packet
        if packet["command"] & 0xF0 != PUBACK or len(packet["packet"]) < 2:
            return super()._packet_handle()
        body = packet["packet"]
        size = len(body)
        mid = (body[0] << 8) | body[1]
        acked = self._acked.get(mid)
        if not self._simple_puback(body, self._protocol == MQTTProtocolVersion.MQTTv5):
            rc = super()._packet_handle()  # paho decodes it (a malformed one raises: the connection ends)
            if acked is not None and rc == MQTTErrorCode.MQTT_ERR_SUCCESS:  # ours, even with an error
                del self._acked[mid]  # reason: acknowledged, as paho's on_publish reports it too
                acked()
            return rc
        self._easy_log(LogLevel.MQTT_LOG_DEBUG, "Received PUBACK (Mid: %d)", mid)
        if acked is not None:  # ours (`publish_acked`): unknown to paho's in-flight table
            del self._acked[mid]
            acked()
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        with self._out_message_mutex:
            if mid in self._out_messages:
                return self._do_on_publish(mid, self._reasons[body[2] if size == 3 else 0], self._no_properties)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _simple_puback(self, body: bytes | bytearray, v5: bool) -> bool:
        """A PUBACK's body (after its remaining length) that is just the packet id, or (MQTT v5) the id
        and a `SIMPLE_PUBACK_REASONS` reason with no properties: handled here, not decoded by paho."""
        size = len(body)
        return size == 2 or (size == 3 and v5 and body[2] in self._reasons)

    def _packet_read(self) -> MQTTErrorCode:
        """The packets read ahead (`ReadAhead.fill`, then `ReadAhead.packet`) are taken whole, every
        whole one held in one call: paho reads a packet in three or more `recv` calls and a loop per
        length byte, and aiomqtt's reader calls `loop_read` once per packet. The PUBACK of one of our
        publishes (`publish_acked`) with no reason or a simple one is matched to its callback here,
        without the packet state paho keeps for the others (as `_packet_handle` would, debug line
        included). What is not all there (a packet split between reads) or a read that fails or
        ends (paho reads again, and handles it as before) goes paho's own way."""
        sock = self._sock
        if self._in_packet["command"] != 0 or not isinstance(sock, ReadAhead) or not sock.fill():
            return super()._packet_read()
        next_packet = sock.packet
        taken = next_packet()
        if taken is None:
            return super()._packet_read()
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        acks = self._acked
        receive = self.receive
        v5 = self._protocol == MQTTProtocolVersion.MQTTv5
        debug = self._logs_debug()  # once for all the packets of this read
        while taken is not None:
            command, body = taken
            kind = command & 0xF0
            if kind == PUBACK and self._simple_puback(body, v5):
                mid = (body[0] << 8) | body[1]
                acked = acks.pop(mid, None)
                if acked is not None:  # ours: unknown to paho's in-flight table
                    if debug:
                        self._easy_log(LogLevel.MQTT_LOG_DEBUG, "Received PUBACK (Mid: %d)", mid)
                    acked()
                    taken = next_packet() if self._sock is sock else None
                    continue
            decoded = incoming(command, body, v5) if kind == PUBLISH and receive is not None else None
            if decoded is not None:  # what `_handle_publish` does, without paho's packet state and dispatch
                rc = self._received(receive, *decoded, debug)  # type: ignore[arg-type]  # not None: decoded is
            else:
                rc = self._handle_taken(command, body)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or self._sock is not sock:
                break
            taken = next_packet()
        with self._msgtime_mutex:
            self._last_bytes_received = mqtt.time_func()
        return rc

    def _handle_taken(self, command: int, body: bytes) -> MQTTErrorCode:
        """One whole packet taken from `ReadAhead`, handled as paho would once it has read it."""
        self._in_packet = {"command": command, "have_remaining": 1, "remaining_count": [],
                           "remaining_mult": 1, "remaining_length": len(body), "packet": body,  # type: ignore[typeddict-item]  # bytes: as paho's decoders take
                           "to_process": 0, "pos": 0}
        try:
            rc = self._packet_handle()
        except MalformedPacket as exc:
            self._easy_log(LogLevel.MQTT_LOG_DEBUG, "Received malformed packet: %s", exc)
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        self._in_packet = {"command": 0, "have_remaining": 0, "remaining_count": [], "remaining_mult": 1,
                           "remaining_length": 0, "packet": bytearray(b""), "to_process": 0, "pos": 0}
        return rc

    def _handle_publish(self) -> MQTTErrorCode:
        """A received QoS 0 or 1 PUBLISH goes to `receive` as an `Incoming`, decoded here: paho makes a
        `Properties` (~25 us), an `MQTTMessage` and aiomqtt a `Message` of it, and the bridge keeps
        four fields. The PUBACK follows, as paho sends it. Anything `incoming` does not decode
        (QoS 2, a property other than those the bridge reads, a topic not UTF-8, a malformed packet)
        goes to paho's path, and from there to aiomqtt's callback, as before."""
        receive = self.receive
        packet = self._in_packet
        decoded = None if receive is None else incoming(
            packet["command"], packet["packet"], self._protocol == MQTTProtocolVersion.MQTTv5)
        if decoded is None:
            return super()._handle_publish()
        assert receive is not None
        return self._received(receive, *decoded, self._logs_debug())

    def _received(self, receive: Callable[[Incoming], None], message: Incoming, qos: int, mid: int,
                  debug: bool) -> MQTTErrorCode:
        """A received publish, decoded: to `receive`, then its PUBACK, as paho's `_handle_publish` does
        (its debug lines when `debug`)."""
        if debug:
            self._easy_log(LogLevel.MQTT_LOG_DEBUG, "Received PUBLISH (q%d, m%d), '%s', ...  (%d bytes)",
                           qos, mid, message.topic, len(message.payload))
        with self._in_callback_mutex:
            receive(message)
        if qos == 0 or self._manual_ack:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        if debug:
            self._easy_log(LogLevel.MQTT_LOG_DEBUG, "Sending PUBACK (Mid: %d)", mid)
        return self._queue_puback(mid)

    def _send_puback(self, mid: int) -> MQTTErrorCode:
        self._easy_log(LogLevel.MQTT_LOG_DEBUG, "Sending PUBACK (Mid: %d)", mid)
        return self._queue_puback(mid)

    def _queue_puback(self, mid: int) -> MQTTErrorCode:
        """The PUBACK paho sends (the packet id: success, MQTT 3.1.1 and 5), queued as `publish_acked`
        queues a publish (`_queue`) rather than through paho's generic `_send_command_with_mid`."""
        return self._queue(PUBACK, _PUBACK_PACKET.pack(PUBACK, 2, mid), mid)

    def _logs_debug(self) -> bool:
        """Whether paho's debug lines go anywhere: the logger (aiomqtt hands it ours, CLIENT_LOG) or an
        on_log takes them. The hot paths ask once and skip `_easy_log`'s call when not."""
        return self._on_log is not None or (self._logger is not None and self._logger.isEnabledFor(logging.DEBUG))

    def _easy_log(self, level: LogLevel, fmt: str, *args: Any) -> None:
        # paho logs every packet at debug (a send: 8 lines), the logger filtering them out; skipped here
        # before its call unless the logger or an on_log takes debug (`_logs_debug`)
        if level is LogLevel.MQTT_LOG_DEBUG and not self._logs_debug():
            return
        super()._easy_log(level, fmt, *args)


class ReadAhead:
    """paho's socket, read in large chunks. paho reads a packet in ~3 recv() calls (its first byte,
    the length bytes one at a time, the rest): 13 a send. This takes in what has arrived with one and
    hands it out as paho asks, and acknowledges what it read at once (`QUICKACK`). `pending()` says
    how much is held, as an SSL socket's does: aiomqtt's reader reads on while it is not zero
    (nothing would wake it for data already read)."""

    READ = 65536

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._held = b""
        self._at = 0
        self._quickack = quickack(sock)
        self._failed: OSError | None = None  # what `fill`'s read met, raised to paho's next recv

    def recv(self, size: int) -> bytes:
        if self._failed is not None:
            failed, self._failed = self._failed, None
            raise failed
        if self._at >= len(self._held):
            data = self._take_in(max(size, self.READ))
            if len(data) <= size:
                return data
            self._held, self._at = data, 0
        chunk = self._held[self._at:self._at + size]
        self._at += len(chunk)
        return chunk

    def fill(self) -> bool:
        """Holding nothing, read what has arrived (one recv); True when something is held. A read
        that fails or finds the connection closed holds nothing: paho reads again and sees it too (a
        failure other than "nothing yet" is kept for that read: the kernel reports a reset only once,
        and the link's log must name it rather than a plain close)."""
        if self._at < len(self._held):
            return True
        try:
            data = self._take_in(self.READ)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):  # nothing yet: paho's recv meets it again
            return False
        except OSError as exc:  # a reset, a timeout: paho's recv raises it
            self._failed = exc
            return False
        if not data:
            return False
        self._held, self._at = data, 0
        return True

    def _take_in(self, size: int) -> bytes:
        """One recv from the socket, acknowledged at once when it brought data."""
        data: bytes = self._sock.recv(size)
        if data and self._quickack:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)  # Linux clears it: again each read
        return data

    def packet(self) -> tuple[int, bytes] | None:
        """The next whole MQTT packet among the bytes held, taken: (its first byte, what follows its
        remaining length); None, taking nothing, when they do not hold a whole packet."""
        held, at = self._held, self._at
        end = len(held)
        index, length, shift = at + 1, 0, 0
        while True:
            if index >= end or index > at + 4:  # not all here (or a length over 4 bytes: paho's error)
                return None
            byte = held[index]
            index += 1
            length |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
        if index + length > end:
            return None
        self._at = index + length
        return held[at], held[index:self._at]

    def pending(self) -> int:
        inner = getattr(self._sock, "pending", None)
        return len(self._held) - self._at + (inner() if inner is not None else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def quickack(sock: Any) -> bool:
    """Whether `sock` takes TCP_QUICKACK (a TCP socket on Linux; not a Unix or websocket one): set once."""
    if QUICKACK is None:
        return False
    try:
        sock.setsockopt(*QUICKACK)
    except (OSError, AttributeError):
        return False
    return True


def write_joined(client: mqtt.Client) -> bool:
    """Write paho's queued packets with one send, as paho's `loop_write` would write them one by one,
    when every one is a packet paho does nothing with once written (see `coalesce`): True when all
    went. Otherwise (one of the others queued, no socket, a send that took part of them or found the
    socket full) False, and what is left is in paho's queue as one packet for paho's own write, which
    meets the same full socket and handles it as it always has. A send that fails otherwise (a reset)
    leaves the data there too and raises: the kernel reports a reset once (paho's send after it would
    meet a broken pipe), so the session ends on the error the connection met. Skips, per write,
    paho's per-packet loop with its locks and callbacks (`loop_write`, `_packet_write`, `_sock_send`)."""
    packets = client._out_packet
    sock = client._sock
    if not packets or sock is None:
        return False
    parts = []
    for packet in packets:
        if _acts_once_written(packet):
            return False
        parts.append(packet["packet"][packet["pos"]:] if packet["pos"] else packet["packet"])
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    packets.clear()
    failed: OSError | None = None
    try:
        sent: int = sock.send(data)
    except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):  # not yet: paho's write meets it again
        sent = 0
    except OSError as exc:  # a reset: reported once (paho's send after it would meet EPIPE), so raised as met
        sent, failed = 0, exc
    except Exception:  # noqa: BLE001 (not a socket error, e.g. a closed one's ValueError: paho's write handles it)
        sent = 0
    if sent < len(data):
        packets.append(_joined(data, sent))
        if failed is not None:
            raise failed
        return False
    with client._msgtime_mutex:
        client._last_msg_out = mqtt.time_func()  # as paho's write: the keepalive counts from here
    client._call_socket_unregister_write()
    return True


def coalesce(packets: deque[_OutPacket]) -> None:
    """Join paho's queued packets into as few as possible, in order: every run of packets paho does
    nothing with once written becomes one. QoS 0 publishes (their `on_publish` fires once written)
    and DISCONNECT (paho closes the socket) stay as they are. Relies on paho 2's packet dicts
    (`command`, `qos`, `pos`, `to_process`, `packet`, `mid`, `info`): checked by tests/unit/test_link_write.py."""
    if len(packets) < 2:
        return
    merged: deque[_OutPacket] = deque()
    run: list[_OutPacket] = []

    def flush() -> None:
        if len(run) > 1:
            merged.append(_joined(b"".join(packet["packet"][packet["pos"]:] for packet in run)))
        else:
            merged.extend(run)
        run.clear()

    for packet in packets:
        if _acts_once_written(packet):
            flush()
            merged.append(packet)
        else:
            run.append(packet)
    flush()
    packets.clear()
    packets.extend(merged)


def _acts_once_written(packet: _OutPacket) -> bool:
    """A queued packet paho acts on once it is written: a QoS 0 publish (its `on_publish`) or DISCONNECT
    (paho closes the socket). Any other is only bytes to paho: those can be written joined."""
    command = packet["command"] & 0xF0
    return (command == PUBLISH and packet["qos"] == 0) or command == DISCONNECT


def _joined(data: bytes | bytearray, sent: int = 0) -> _OutPacket:
    """Packets joined into one, as paho's queue holds a packet (a QoS 1 PUBACK's kind: nothing is done
    once it is written), `sent` bytes of it written already."""
    return {"command": PUBACK, "mid": 0, "qos": 1, "pos": sent, "to_process": len(data) - sent, "packet": data,
            "info": None}


class _PendingCallsNote(logging.Filter):
    """aiomqtt warns "There are N pending publish calls." for every publish over its threshold (a
    backlog of 2,000 wrote ~570 lines). The window keeps us under it; should it happen anyway, one
    line per minute says how many were folded into it."""

    def __init__(self) -> None:
        super().__init__()
        self._last = float("-inf")
        self._folded = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if "pending publish calls" not in str(record.msg):
            return True
        now = time.monotonic()
        if now - self._last < WARNING_EVERY:
            self._folded += 1
            return False
        if self._folded:
            record.msg = f"{record.msg} ({self._folded} such warnings in the last minute not shown)"
        self._last, self._folded = now, 0
        return True


CLIENT_LOG = logging.getLogger("wa_mqtt.mqtt.link.client")  # aiomqtt's and paho's own lines (the name they always had)
CLIENT_LOG.addFilter(_PendingCallsNote())
