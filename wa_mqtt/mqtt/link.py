"""The broker connection: the only module that touches aiomqtt.

It reconnects forever with backoff; on every (re)connect it publishes `bridge/state` = online (with
`offline` as the will), republishes every retained topic it holds (info, accounts, statuses, ...) and
resubscribes. Publishes are of three kinds:
- retained state (`set_retained`): latest value per topic, kept in memory, republished on reconnect;
- durable (`publish(durable=True)`: messages, receipts): appended to the on-disk spool first and
  removed only after the broker acknowledged them (QoS 1), so an outage or a crash loses none; one
  acknowledged is not published again, and a copy that may have reached the broker before (in
  flight when the connection or the process was lost) goes out with `"redelivered": true` added to
  its JSON object;
- transient (responses, events): an in-memory queue, sent when connected.
All of them go out through one publish window (`window.py`): as many in flight as the broker's
receive maximum, a new one as soon as a PUBACK comes back, the spool never holding the slots kept for
the others.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import socket
import sqlite3
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ..config import MqttConfig, mask_url
from .spool import Spool, SpoolEntry
from .topics import is_topic_name
from .window import Lane, PublishWindow

log = logging.getLogger(__name__)

TRANSIENT_LIMIT = 10_000
RETAINED_HISTORY = 10_000
DEFAULT_WINDOW = 20  # publishes in flight when the broker announces no receive maximum (MQTT 3.1.1)
MAX_WINDOW = 100  # and never more, whatever it announces (MQTT v5 allows up to 65,535)
SPOOL_READ = 64  # spool entries read per query
WARNING_EVERY = 60.0  # seconds: aiomqtt's "pending publish calls" warning at most once per this


def login_refused(exc: aiomqtt.MqttError) -> bool:
    """A CONNACK saying "bad user name or password" or "not authorized" (MQTT 3.1.1 codes 4, 5; MQTT 5:
    134, 135): a credentials problem, not an unreachable broker."""
    rc = getattr(exc, "rc", None)
    return isinstance(exc, MqttConnectError) and getattr(rc, "value", rc) in (4, 5, 134, 135)


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False


def broker_address(url: str) -> BrokerAddress:
    parts = urlsplit(url)
    tls = parts.scheme in ("mqtts", "ssl")
    return BrokerAddress(
        host=parts.hostname or "localhost",
        port=parts.port or (8883 if tls else 1883),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls,
    )


def tls_context_for(config: MqttConfig) -> ssl.SSLContext:
    """TLS for mqtts://: the configured CA (else the system's), an optional client certificate."""
    context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    if config.cert_file and config.key_file:
        context.load_cert_chain(str(config.cert_file), str(config.key_file))
    if config.tls_insecure:
        context.check_hostname = False
    return context


@dataclass(frozen=True)
class Incoming:
    """A message from the broker, reduced to what the bridge needs."""

    topic: str
    payload: bytes
    response_topic: str | None = None
    correlation_data: bytes | None = None
    subscription_ids: tuple[int, ...] = ()  # MQTT v5: the identifiers of the subscriptions it matched


class _Intake(asyncio.Queue[Incoming]):
    """aiomqtt's queue of received messages holding each as an `Incoming`: its payload and ~0.3 KB, not
    the ~7 KB of paho's objects, so messages waiting to be handled cost little."""

    def put_nowait(self, item: Any) -> None:
        message: aiomqtt.Message = item
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload or "").encode()
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        ids = getattr(props, "SubscriptionIdentifier", None) if props else None
        super().put_nowait(Incoming(str(message.topic), payload, response_topic, correlation,
                                    tuple(ids) if isinstance(ids, list) else (ids,) if ids else ()))


@dataclass(frozen=True)
class _Transient:
    topic: str
    payload: bytes
    qos: int
    correlation_data: bytes | None


@dataclass(frozen=True)
class _Retained:
    topic: str
    payload: bytes


def redelivered_copy(payload: bytes) -> bytes:
    """A spooled payload that may have reached the broker before: a JSON object gets `"redelivered":
    true` (compact, as the bridge writes it); anything else goes out unchanged."""
    try:
        data = json.loads(payload)
    except ValueError:
        return payload
    if not isinstance(data, dict):
        return payload
    data["redelivered"] = True
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


class SpoolAcks:
    """Which prefix of the spool the broker has acknowledged. PUBACKs come back in any order, but the
    spool removes a prefix (`ack(seq)`: that entry and every older one), so an entry leaves only once
    all older ones are acknowledged too; the ones acknowledged past the prefix are remembered, and
    not published again after a reconnect, until the prefix reaches them."""

    def __init__(self) -> None:
        self._order: deque[int] = deque()  # entries read on this connection, oldest first, not yet acked
        self._done: set[int] = set()  # acknowledged, past the prefix

    def new_connection(self) -> None:
        self._order.clear()

    def read(self, seq: int) -> bool:
        """The publisher reads entry `seq` (in spool order): True to publish it, False when the broker
        acknowledged it on an earlier connection (then report it `acked` again to move the prefix)."""
        self._order.append(seq)
        return seq not in self._done

    def acked(self, seq: int) -> int | None:
        """The broker acknowledged `seq`: the newest entry the spool may now remove up to, or None."""
        self._done.add(seq)
        upto = None
        while self._order and self._order[0] in self._done:
            upto = self._order.popleft()
            self._done.discard(upto)
        return upto


def window_size(connack: Any) -> int:
    """Publishes in flight at most: the broker's receive maximum (CONNACK, MQTT v5), else 20."""
    announced = getattr(connack, "ReceiveMaximum", None) if connack is not None else None
    return max(1, min(MAX_WINDOW, announced or DEFAULT_WINDOW))


class _Client(aiomqtt.Client):
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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acked: dict[int, Callable[[], None]] = {}  # QoS 1 publishes waiting for their PUBACK (`publish_then`)

    def _on_connect(self, *args: Any, **kwargs: Any) -> None:
        properties = args[4] if len(args) > 4 else kwargs.get("properties")
        self.connack = properties
        super()._on_connect(*args, **kwargs)

    def publish_then(self, topic: str, payload: bytes, qos: int, retain: bool, properties: Properties | None,
                     acked: Callable[[], None]) -> None:
        """Publish without a task or an event each (aiomqtt's `publish` makes both, and a timer):
        `acked()` runs once the broker acknowledged it (QoS 0: once written). A publish paho refuses
        (a malformed topic) is logged and dropped; one it cannot make because the connection is gone
        is left unacknowledged: the session ends, and the link publishes it again on the next one."""
        try:
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
        coalesce(client._out_packet)  # paho's queue of packets to write (see `coalesce`)
        try:
            client.loop_write()
        except Exception as exc:  # noqa: BLE001 (as aiomqtt's writer: a broken connection ends the session)
            if not self._disconnected.done():
                self._disconnected.set_exception(exc)
            return
        if client.want_write() and client.socket() is not None:  # the socket is full: the rest once it is
            super()._on_socket_register_write(client, userdata, sock)  # writable, the aiomqtt way


class ReadAhead:
    """paho's socket, read in large chunks. paho reads a packet in ~3 recv() calls (its first byte,
    the length bytes one at a time, the rest): 13 a send. This takes in what has arrived with one and
    hands it out as paho asks. `pending()` says how much is held, as an SSL socket's does: aiomqtt's
    reader reads on while it is not zero (nothing would wake it for data already read)."""

    READ = 65536

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._held = b""
        self._at = 0

    def recv(self, size: int) -> bytes:
        if self._at >= len(self._held):
            data: bytes = self._sock.recv(max(size, self.READ))
            if len(data) <= size:
                return data
            self._held, self._at = data, 0
        chunk = self._held[self._at:self._at + size]
        self._at += len(chunk)
        return chunk

    def pending(self) -> int:
        inner = getattr(self._sock, "pending", None)
        return len(self._held) - self._at + (inner() if inner is not None else 0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def coalesce(packets: deque[dict[str, Any]]) -> None:
    """Join paho's queued packets into as few as possible, in order: every run of packets paho does
    nothing with once written becomes one. QoS 0 publishes (their `on_publish` fires once written)
    and DISCONNECT (paho closes the socket) stay as they are. Relies on paho 2's packet dicts
    (`command`, `qos`, `pos`, `to_process`, `packet`, `mid`, `info`): checked by tests/unit/test_link_write.py."""
    if len(packets) < 2:
        return
    merged: deque[dict[str, Any]] = deque()
    run: list[dict[str, Any]] = []

    def flush() -> None:
        if len(run) > 1:
            data = b"".join(packet["packet"][packet["pos"]:] for packet in run)
            merged.append({"command": PacketTypes.PUBACK << 4, "mid": 0, "qos": 1, "pos": 0,
                           "to_process": len(data), "packet": data, "info": None})
        else:
            merged.extend(run)
        run.clear()

    for packet in packets:
        command = packet["command"] & 0xF0
        if (command == PacketTypes.PUBLISH << 4 and packet["qos"] == 0) or command == PacketTypes.DISCONNECT << 4:
            flush()
            merged.append(packet)
        else:
            run.append(packet)
    flush()
    packets.clear()
    packets.extend(merged)


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


_CLIENT_LOG = log.getChild("client")  # aiomqtt's and paho's own lines
_CLIENT_LOG.addFilter(_PendingCallsNote())


class MqttLink:
    """Owns the broker connection. `run()` until cancelled; `shutdown()` publishes offline first."""

    def __init__(self, config: MqttConfig, url: str, state_topic: str, spool: Spool,
                 on_message: Callable[[Incoming], Awaitable[None]],
                 on_connect: Callable[[], None], v5: bool = True) -> None:
        self._config = config
        self._address = broker_address(url)
        self._url_for_logs = mask_url(url)
        self._state_topic = state_topic
        self._spool = spool
        self._on_message = on_message
        self._on_connect = on_connect
        self._v5 = v5
        self._subscriptions: list[str] = []
        self._subscription_ids: dict[str, int] = {}  # MQTT v5 subscription identifiers asked for (cluster/)
        self._retained: dict[str, bytes] = {}
        self._retained_queue: deque[tuple[str, bytes]] = deque()  # every change, in order, while connected
        self._transient: deque[_Transient] = deque()
        self._wake = asyncio.Event()  # retained and transient publishes waiting
        self._spool_wake = asyncio.Event()  # durable publishes waiting
        self._in_flight: dict[int, _Retained | _Transient] = {}  # published, PUBACK not yet back
        self._dispatch_ids = itertools.count()
        self._spool_acks = SpoolAcks()
        self._ack_upto = 0  # the spool may remove up to here (one DELETE per loop iteration)
        self._acked_upto = 0  # ... and has
        self._removal_due = False
        self._client: aiomqtt.Client | None = None
        self._intake: _Intake | None = None
        self._connected = asyncio.Event()
        self.dropped_transient = 0
        self.connects = 0

    # -- publishing (safe to call at any time, connected or not) --------------------------------
    def subscribe(self, topic_filter: str, subscription_id: int | None = None) -> None:
        """Subscribe (now and on every reconnect); with MQTT v5 a `subscription_id` comes back in
        `Incoming.subscription_ids` of each message it matched."""
        self._subscriptions.append(topic_filter)
        if subscription_id is not None:
            self._subscription_ids[topic_filter] = subscription_id

    def set_retained(self, topic: str, payload: bytes | str, force: bool = False) -> None:
        """Publish retained now (in order) and again on every reconnect; unchanged values are skipped
        unless `force` (Home Assistant's birth message asks for everything again)."""
        data = payload.encode() if isinstance(payload, str) else payload
        if self._retained.get(topic) == data and not force:
            return
        self._retained[topic] = data
        if len(self._retained_queue) >= RETAINED_HISTORY:
            self._retained_queue.popleft()  # the reconnect still republishes the latest of each
        self._retained_queue.append((topic, data))  # every change in order: connecting, then connected
        self._wake.set()

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, durable: bool = False,
                correlation_data: bytes | None = None) -> None:
        data = payload.encode() if isinstance(payload, str) else payload
        if durable:
            self._spool.append(topic, data, qos, False)
            self._spool_wake.set()
            return
        if len(self._transient) >= TRANSIENT_LIMIT:
            self._transient.popleft()
            self.dropped_transient += 1
            if self.dropped_transient in (1, 100, 10_000):
                log.warning("broker unreachable: dropped %d transient publishes (responses/events)",
                            self.dropped_transient)
        self._transient.append(_Transient(topic, data, qos, correlation_data))
        self._wake.set()

    @property
    def spool_dropped(self) -> int:
        return self._spool.dropped

    @property
    def is_connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    def pending(self) -> int:
        return len(self._retained_queue) + len(self._transient) + len(self._in_flight) + len(self._spool)

    async def drain(self, timeout: float) -> bool:
        """Wait until everything queued is published (or the timeout); True when drained."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.pending() and self.is_connected and loop.time() < deadline:
            self._wake.set()
            self._spool_wake.set()
            await asyncio.sleep(0.01)
        return self.pending() == 0

    # -- the connection loop -------------------------------------------------------------------
    async def run(self) -> None:
        delay = 0.5
        while True:
            try:
                await self._session()
                delay = 0.5
            except aiomqtt.MqttError as exc:
                self._mark_disconnected()
                if self.connects == 0 and self._v5 and "protocol" in str(exc).lower():
                    log.warning("broker refused MQTT v5 (%s); using MQTT 3.1.1", exc)
                    self._v5 = False
                    continue
                if login_refused(exc):
                    log.error("MQTT broker %s refused the login (%s): check the user name and password in mqtt.url "
                              "and the broker's access rules; retrying in %.1f s", self._url_for_logs, exc, delay)
                else:
                    log.warning("MQTT broker %s unreachable (%s); retrying in %.1f s", self._url_for_logs, exc, delay)
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, 30.0)

    async def shutdown(self, drain_timeout: float = 5.0) -> None:
        """Publish what is queued (bounded), then `offline` (retained), then disconnect."""
        client = self._client
        if client is None:
            return
        await self.drain(drain_timeout)
        try:
            await client.publish(self._state_topic, b"offline", qos=1, retain=True, timeout=2)
        except aiomqtt.MqttError as exc:
            log.warning("could not publish offline state: %s", exc)

    def _mark_disconnected(self) -> None:
        self._client = None
        self._connected.clear()

    def _make_client(self) -> _Client:
        tls_context = tls_context_for(self._config) if self._address.tls else None
        props = None
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho: no annotations
            props.SessionExpiryInterval = 86400  # requests sent while we restart are still delivered
        return _Client(
            self._address.host, self._address.port,
            username=self._address.username, password=self._address.password,
            identifier=self._config.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if self._v5 else aiomqtt.ProtocolVersion.V311,
            will=aiomqtt.Will(self._state_topic, b"offline", qos=1, retain=True),
            clean_session=None if self._v5 else False,
            clean_start=False if self._v5 else 3,  # 3 = paho's MQTT_CLEAN_START_FIRST_ONLY default
            keepalive=self._config.keepalive,
            properties=props,
            tls_context=tls_context,
            max_queued_outgoing_messages=None,
            max_inflight_messages=MAX_WINDOW,  # the window (window_size) is the limit that counts
            logger=_CLIENT_LOG,
            queue_type=self._new_intake,  # a factory is all aiomqtt needs
            # MQTT is many small packets (a PUBACK, then a response): with Nagle on, each second write
            # waits for the peer's delayed ACK, ~40 ms a hop (measured: 88 ms request -> response).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )

    async def _session(self) -> None:
        async with self._make_client() as client:
            self._client = client
            self.connects += 1
            window = PublishWindow(window_size(client.connack))
            client.pending_calls_threshold = window.size + len(self._subscriptions) + 1  # + `offline`
            for topic_filter in self._subscriptions:  # subscribed before `online`: online means ready
                if self._v5:  # never our own publishes back (the sim's `sent`: a third of a send's reads)
                    props = None
                    if topic_filter in self._subscription_ids:
                        props = Properties(PacketTypes.SUBSCRIBE)  # type: ignore[no-untyped-call]  # paho: no annotations
                        props.SubscriptionIdentifier = self._subscription_ids[topic_filter]
                    shared = topic_filter.startswith("$share/")  # no noLocal there (a protocol error)
                    await client.subscribe(topic_filter, options=SubscribeOptions(qos=1, noLocal=not shared),
                                           properties=props)
                else:
                    await client.subscribe(topic_filter, qos=1)
            await client.publish(self._state_topic, b"online", qos=1, retain=True)
            self._on_connect()
            last_queued = {topic: data for topic, data in self._retained_queue}
            self._retained_queue.extend(
                (topic, data) for topic, data in self._retained.items() if last_queued.get(topic) != data)
            self._connected.set()
            self._wake.set()
            self._spool_wake.set()
            log.info("connected to MQTT broker %s (MQTT %s, up to %d publishes in flight)",
                     self._url_for_logs, "5" if self._v5 else "3.1.1", window.size)
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._publisher(client, window))
                    group.create_task(self._spool_publisher(client, window))
                    group.create_task(self._receiver(client))
            except ExceptionGroup as errors:
                lost, other = errors.split(aiomqtt.MqttError)
                if other is not None or lost is None:
                    raise
                first = lost.exceptions[0]
                while isinstance(first, ExceptionGroup):
                    first = first.exceptions[0]
                raise first from None
            finally:
                self._session_ended()

    def _new_intake(self, maxsize: int = 0) -> _Intake:
        """aiomqtt's queue of received messages (it takes any queue type), kept at hand for the receiver."""
        self._intake = _Intake(maxsize)
        return self._intake

    async def _receiver(self, client: aiomqtt.Client) -> None:
        """Hand every message to the bridge in order, as fast as they are read: a flood is not held here
        but by the bridge's bounded request queue, which answers the excess `busy` (measured: a 20,000-
        request flood went +120 MB waiting here, ~7 KB each, before; +5 MB now)."""
        async for incoming in client.messages:  # the next one, or MqttError when the connection ends
            await self._deliver(incoming)  # type: ignore[arg-type]  # _Intake turned it into an Incoming
            while self._intake is not None and not self._intake.empty():  # the rest, without a loop turn each
                while len(self._transient) >= TRANSIENT_LIMIT // 2:  # answers go out first: none dropped for room
                    self._wake.set()
                    await asyncio.sleep(0.005)
                await self._deliver(self._intake.get_nowait())

    async def _deliver(self, incoming: Incoming) -> None:
        try:
            await self._on_message(incoming)
        except Exception:  # a bug in one handler must not drop the connection
            log.exception("failed to handle a message on %s", incoming.topic)

    async def _publisher(self, client: _Client, window: PublishWindow) -> None:
        """Retained state (each change, in order) before responses and events (in order), each
        published as soon as the window has a slot for it."""
        while True:
            while not (self._retained_queue or self._transient):
                self._wake.clear()
                await self._wake.wait()
            await window.acquire(Lane.CONTROL)
            item: _Retained | _Transient
            if self._retained_queue:
                item = _Retained(*self._retained_queue.popleft())
            else:
                item = self._transient.popleft()
            key = next(self._dispatch_ids)
            self._in_flight[key] = item
            self._send_control(client, window, key, item)

    def _send_control(self, client: _Client, window: PublishWindow, key: int, item: _Retained | _Transient) -> None:
        def acked() -> None:
            window.release(Lane.CONTROL)
            self._in_flight.pop(key, None)

        if not is_topic_name(item.topic):  # paho would send an empty one, and the broker hang up on us
            log.error("dropped a publish to %r: not a valid topic name", item.topic[:200])
            acked()
        elif isinstance(item, _Retained):
            client.publish_then(item.topic, item.payload, 1, True, None, acked)
        else:
            props = None
            if item.correlation_data is not None:
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho: no annotations
                props.CorrelationData = item.correlation_data
            client.publish_then(item.topic, item.payload, item.qos, False, props, acked)

    async def _spool_publisher(self, client: _Client, window: PublishWindow) -> None:
        """The spool, oldest first, each entry as soon as the window has a slot for it; an entry
        leaves the spool only after its PUBACK and those of all older entries."""
        self._spool_acks.new_connection()
        after = 0  # the newest entry read on this connection
        while True:
            self._spool_wake.clear()
            entries = self._spool.peek(SPOOL_READ, after=after)
            if not entries:
                await self._spool_wake.wait()
                continue
            for entry in entries:
                after = entry.seq
                if not self._spool_acks.read(entry.seq):  # acknowledged on an earlier connection
                    self._spool_acked(entry.seq)
                    continue
                await window.acquire(Lane.SPOOL)
                self._spool.publishing(entry.seq)
                self._send_spooled(client, window, entry)

    def _send_spooled(self, client: _Client, window: PublishWindow, entry: SpoolEntry) -> None:
        def acked() -> None:
            window.release(Lane.SPOOL)
            self._spool_acked(entry.seq)

        payload = redelivered_copy(entry.payload) if entry.redelivered else entry.payload
        client.publish_then(entry.topic, payload, entry.qos, entry.retain, None, acked)

    def _spool_acked(self, seq: int) -> None:
        upto = self._spool_acks.acked(seq)
        if upto is None:
            return
        self._ack_upto = max(self._ack_upto, upto)
        if not self._removal_due:  # one DELETE for every PUBACK handled in this loop iteration
            self._removal_due = True
            asyncio.get_running_loop().call_soon(self._remove_acked)

    def _remove_acked(self) -> None:
        self._removal_due = False
        if self._ack_upto <= self._acked_upto:
            return
        try:
            self._spool.ack(self._ack_upto)
        except sqlite3.Error as exc:  # a full disk: tried again with the next PUBACK
            log.warning("spool: could not remove acknowledged publishes (%s)", exc)
            return
        self._acked_upto = self._ack_upto

    def _session_ended(self) -> None:
        """Whatever was in flight and not acknowledged goes out again on the next connection, first;
        spool entries among it are marked as possibly delivered."""
        self._remove_acked()
        self._spool.connection_lost()
        retained = [(i.topic, i.payload) for i in self._in_flight.values() if isinstance(i, _Retained)]
        transient = [i for i in self._in_flight.values() if isinstance(i, _Transient)]
        self._in_flight.clear()
        self._retained_queue.extendleft(reversed(retained))
        self._transient.extendleft(reversed(transient))

