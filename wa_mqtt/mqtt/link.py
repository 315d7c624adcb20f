"""The broker connection: reconnect loop, will/birth, and what the bridge publishes.

It reconnects forever with backoff; on every (re)connect it publishes `bridge/state` = online (with
`offline` as the will), republishes every retained topic it holds (info, accounts, statuses, ...) and
resubscribes. Publishes are of three kinds:
- retained state (`set_retained`): latest value per topic, kept in memory, republished on reconnect;
- durable (`publish(durable=True)`: messages, receipts): appended to the on-disk spool first (a loop
  turn's together: one commit at the end of the turn, before any of them is published) and
  removed only after the broker acknowledged them (QoS 1), so an outage or a crash loses none; one
  acknowledged is not published again, and a copy that may have reached the broker before (in
  flight when the connection or the process was lost) goes out with `"redelivered": true` added to
  its JSON object (`spool_acks.py`);
- transient (responses, events): an in-memory queue, sent when connected.
All of them go out through one publish window (`window.py`): as many in flight as the broker's
receive maximum, a new one as soon as a PUBACK comes back, the spool never holding the slots kept for
the others. The client itself (aiomqtt/paho, PUBACK callbacks, socket reads and writes) is
`paho_client.py`; the broker URL and TLS are `broker.py`. Their public names are importable from here.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import sqlite3
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ..config import MqttConfig
from ..config_secrets import mask_url
from .broker import Backoff, BrokerAddress, broker_address, login_refused, tls_context_for
from .packets import Incoming
from .paho_client import CLIENT_LOG, WARNING_EVERY, Intake, PahoClient, ReadAhead, coalesce
from .spool import Spool, SpoolEntry
from .spool_acks import SpoolAcks, redelivered_copy
from .topics import is_topic_name
from .window import DEFAULT_WINDOW, MAX_WINDOW, Lane, PublishWindow, window_size

__all__ = [
    "DEFAULT_WINDOW", "MAX_WINDOW", "RETAINED_HISTORY", "SPOOL_READ", "TRANSIENT_LIMIT", "WARNING_EVERY",
    "BrokerAddress", "Incoming", "MqttLink", "ReadAhead", "SpoolAcks",
    "broker_address", "coalesce", "login_refused", "redelivered_copy", "tls_context_for", "window_size",
]

log = logging.getLogger(__name__)

TRANSIENT_LIMIT = 10_000
RETAINED_HISTORY = 10_000
SPOOL_READ = 64  # spool entries read per query


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
        self._spool_commit_due: asyncio.AbstractEventLoop | None = None  # where the turn's commit is scheduled
        self._in_flight: dict[int, _Retained | _Transient] = {}  # published, PUBACK not yet back
        self._dispatch_ids = itertools.count()
        self._spool_acks = SpoolAcks()
        self._ack_upto = 0  # the spool may remove up to here (one DELETE per loop iteration)
        self._acked_upto = 0  # ... and has
        self._removal_due = False
        self._client: aiomqtt.Client | None = None
        self._intake: Intake | None = None
        self._connected = asyncio.Event()
        self.dropped_transient = 0
        self.connects = 0

    def _commit_spooled(self) -> None:
        """The loop turn's durable publishes committed (or held in memory: the disk full): now publish them."""
        self._spool_commit_due = None
        try:
            self._spool.commit()
        finally:
            self._spool_wake.set()

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
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (yet): committed now
                self._spool.append(topic, data, qos, False)
                self._spool_wake.set()
                return
            self._spool.append(topic, data, qos, False, batch=True)
            if self._spool_commit_due is not loop:  # one commit for the turn's durable publishes, at its end
                self._spool_commit_due = loop  # (a loop closed before it ran leaves its own: scheduled here again)
                loop.call_soon(self._commit_spooled)
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
        backoff = Backoff()
        while True:
            try:
                await self._session()
                backoff.reset()
            except aiomqtt.MqttError as exc:
                self._mark_disconnected()
                if self.connects == 0 and self._v5 and "protocol" in str(exc).lower():
                    log.warning("broker refused MQTT v5 (%s); using MQTT 3.1.1", exc)
                    self._v5 = False
                    continue
                if login_refused(exc):
                    log.error("MQTT broker %s refused the login (%s): check the user name and password in mqtt.url "
                              "and the broker's access rules; retrying in %.1f s", self._url_for_logs, exc, backoff.delay)
                else:
                    log.warning("MQTT broker %s unreachable (%s); retrying in %.1f s", self._url_for_logs, exc, backoff.delay)
            await backoff.wait()

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

    def _make_client(self) -> PahoClient:
        tls_context = tls_context_for(self._config) if self._address.tls else None
        props = None
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho: no annotations
            props.SessionExpiryInterval = 86400  # requests sent while we restart are still delivered
        return PahoClient(
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
            logger=CLIENT_LOG,
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

    def _new_intake(self, maxsize: int = 0) -> Intake:
        """aiomqtt's queue of received messages (it takes any queue type), kept at hand for the receiver."""
        self._intake = Intake(maxsize)
        return self._intake

    async def _receiver(self, client: aiomqtt.Client) -> None:
        """Hand every message to the bridge in order, as fast as they are read: a flood is not held here
        but by the bridge's bounded request queue, which answers the excess `busy` (measured: a 20,000-
        request flood went +120 MB waiting here, ~7 KB each, before; +5 MB now)."""
        async for incoming in client.messages:  # the next one, or MqttError when the connection ends
            await self._deliver(incoming)  # type: ignore[arg-type]  # Intake turned it into an Incoming
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

    async def _publisher(self, client: PahoClient, window: PublishWindow) -> None:
        """Retained state (each change, in order) before responses and events (in order), each
        published as soon as the window has a slot for it."""
        while True:
            while not (self._retained_queue or self._transient):
                self._wake.clear()
                await self._wake.wait()
            if not window.take(Lane.CONTROL):
                await window.acquire(Lane.CONTROL)
            item: _Retained | _Transient
            if self._retained_queue:
                item = _Retained(*self._retained_queue.popleft())
            else:
                item = self._transient.popleft()
            key = next(self._dispatch_ids)
            self._in_flight[key] = item
            self._send_control(client, window, key, item)

    def _send_control(self, client: PahoClient, window: PublishWindow, key: int, item: _Retained | _Transient) -> None:
        def acked() -> None:
            window.release(Lane.CONTROL)
            self._in_flight.pop(key, None)

        if not is_topic_name(item.topic):  # paho would send an empty one, and the broker hang up on us
            log.error("dropped a publish to %r: not a valid topic name", item.topic[:200])
            acked()
        elif isinstance(item, _Retained):
            client.publish_then(item.topic, item.payload, 1, True, None, acked)
        else:
            client.publish_then(item.topic, item.payload, item.qos, False, item.correlation_data, acked)

    async def _spool_publisher(self, client: PahoClient, window: PublishWindow) -> None:
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
                if not window.take(Lane.SPOOL):
                    await window.acquire(Lane.SPOOL)
                self._spool.publishing(entry.seq)
                self._send_spooled(client, window, entry)

    def _send_spooled(self, client: PahoClient, window: PublishWindow, entry: SpoolEntry) -> None:
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
