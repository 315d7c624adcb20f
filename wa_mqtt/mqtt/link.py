"""The broker connection: the only module that touches aiomqtt.

It reconnects forever with backoff; on every (re)connect it publishes `bridge/state` = online (with
`offline` as the will), republishes every retained topic it holds (info, accounts, statuses, ...) and
resubscribes. Publishes are of three kinds:
- retained state (`set_retained`): latest value per topic, kept in memory, republished on reconnect;
- durable (`publish(durable=True)`: messages, receipts): appended to the on-disk spool first and
  removed only after the broker acknowledged them (QoS 1), so an outage or a crash loses none;
- transient (responses, events): an in-memory queue, sent when connected.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..config import MqttConfig, mask_url
from .spool import Spool
from .topics import is_topic_name

log = logging.getLogger(__name__)

TRANSIENT_LIMIT = 10_000
RETAINED_HISTORY = 10_000
BATCH = 256
# Durable publishes go out in batches that stay under the broker's receive maximum (Mosquitto: 20 in
# flight per client), so a response never queues behind hundreds of spooled messages in the client
# (measured: a 256-entry batch held responses back ~100 ms, the whole send-path p99).
SPOOL_BATCH = 16


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


class _Intake(asyncio.Queue[Incoming]):
    """aiomqtt's queue of received messages holding each as an `Incoming`: its payload and ~0.3 KB, not
    the ~7 KB of paho's objects, so messages waiting to be handled cost little."""

    def put_nowait(self, item: Any) -> None:
        message: aiomqtt.Message = item
        payload = message.payload if isinstance(message.payload, bytes) else str(message.payload or "").encode()
        props = message.properties
        response_topic = getattr(props, "ResponseTopic", None) if props else None
        correlation = getattr(props, "CorrelationData", None) if props else None
        super().put_nowait(Incoming(str(message.topic), payload, response_topic, correlation))


@dataclass(frozen=True)
class _Transient:
    topic: str
    payload: bytes
    qos: int
    correlation_data: bytes | None


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
        self._retained: dict[str, bytes] = {}
        self._retained_queue: deque[tuple[str, bytes]] = deque()  # every change, in order, while connected
        self._transient: deque[_Transient] = deque()
        self._wake = asyncio.Event()  # retained and transient publishes waiting
        self._spool_wake = asyncio.Event()  # durable publishes waiting
        self._client: aiomqtt.Client | None = None
        self._intake: _Intake | None = None
        self._connected = asyncio.Event()
        self.dropped_transient = 0
        self.connects = 0

    # -- publishing (safe to call at any time, connected or not) --------------------------------
    def subscribe(self, topic_filter: str) -> None:
        self._subscriptions.append(topic_filter)

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
        return len(self._retained_queue) + len(self._transient) + len(self._spool)

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

    def _make_client(self) -> aiomqtt.Client:
        tls_context = tls_context_for(self._config) if self._address.tls else None
        props = None
        if self._v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 86400  # requests sent while we restart are still delivered
        return aiomqtt.Client(
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
            queue_type=self._new_intake,  # type: ignore[arg-type]  # a factory is all aiomqtt needs
            # MQTT is many small packets (a PUBACK, then a response): with Nagle on, each second write
            # waits for the peer's delayed ACK, ~40 ms a hop (measured: 88 ms request -> response).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )

    async def _session(self) -> None:
        async with self._make_client() as client:
            self._client = client
            self.connects += 1
            for topic_filter in self._subscriptions:  # subscribed before `online`: online means ready
                await client.subscribe(topic_filter, qos=1)
            await client.publish(self._state_topic, b"online", qos=1, retain=True)
            self._on_connect()
            last_queued = {topic: data for topic, data in self._retained_queue}
            self._retained_queue.extend(
                (topic, data) for topic, data in self._retained.items() if last_queued.get(topic) != data)
            self._connected.set()
            self._wake.set()
            self._spool_wake.set()
            log.info("connected to MQTT broker %s (MQTT %s)", self._url_for_logs, "5" if self._v5 else "3.1.1")
            try:
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._publisher(client))
                    group.create_task(self._spool_publisher(client))
                    group.create_task(self._receiver(client))
            except ExceptionGroup as errors:
                lost, other = errors.split(aiomqtt.MqttError)
                if other is not None or lost is None:
                    raise
                first = lost.exceptions[0]
                while isinstance(first, ExceptionGroup):
                    first = first.exceptions[0]
                raise first from None

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

    async def _publisher(self, client: aiomqtt.Client) -> None:
        """Retained state (in order, each change) then transient publishes (responses, events)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._retained_queue:
                topic, data = self._retained_queue[0]
                await client.publish(topic, data, qos=1, retain=True)
                self._retained_queue.popleft()
            while self._transient:
                batch = [self._transient.popleft() for _ in range(min(BATCH, len(self._transient)))]
                try:
                    await asyncio.gather(*(self._send_transient(client, item) for item in batch))
                except aiomqtt.MqttError:
                    self._transient.extendleft(reversed(batch))
                    raise

    async def _spool_publisher(self, client: aiomqtt.Client) -> None:
        """The spool, oldest first; an entry leaves it only after the broker's PUBACK."""
        while True:
            await self._spool_wake.wait()
            self._spool_wake.clear()
            while entries := self._spool.peek(SPOOL_BATCH):
                await asyncio.gather(*(client.publish(e.topic, e.payload, qos=e.qos, retain=e.retain) for e in entries))
                self._spool.ack(entries[-1].seq)

    @staticmethod
    async def _send_transient(client: aiomqtt.Client, item: _Transient) -> None:
        """Publish one response or event; one the client refuses (an invalid topic, too large) is logged and
        dropped, never raised: it must not end the connection, nor come back after the reconnect."""
        props = None
        if item.correlation_data is not None:
            props = Properties(PacketTypes.PUBLISH)
            props.CorrelationData = item.correlation_data
        if not is_topic_name(item.topic):  # paho would send an empty one, and the broker hang up on us
            log.error("dropped a publish to %r: not a valid topic name", item.topic[:200])
            return
        try:
            await client.publish(item.topic, item.payload, qos=item.qos, properties=props)
        except ValueError as exc:
            log.error("dropped a publish to %r: %s", item.topic[:200], exc)

