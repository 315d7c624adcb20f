"""Domain events → topics and payloads; MQTT requests → account manager calls → responses.

The bridge decides no account state: it shows what the supervisors report and forwards what clients
ask. Requests for one account are served in arrival order (a per-target lock); different accounts
are served concurrently; how many wait is bounded (`RequestQueue`), beyond that they are answered `busy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

import segno

from . import __version__
from .accounts.dedup import SeenIds
from .accounts.manager import AccountManager, UnknownAccount
from .accounts.store import StorageError
from .automations import ReplyHistory, decide
from .config import Config
from .disk_full import DiskFull, DiskFullWatch
from .engines.base import EngineError
from .errors import ErrorCode
from .media import MediaPolicy, MediaRefused, check_message
from .model import AccountState, IncomingMessage, OutgoingMessage, Receipt, Status, identity, is_phone, utc_iso
from .mqtt import api, discovery
from .mqtt.api import ApiError, Route
from .mqtt.link import Incoming, MqttLink
from .mqtt.request_queue import RequestQueue
from .mqtt.topics import BRIDGE, RequestTopic, Topics, parse_request_topic, parse_sim_topic
from .tasks import BackgroundTasks

log = logging.getLogger(__name__)
SUMMARY_INTERVAL = 0.25  # seconds between two publishes of bridge/accounts (or bridge/info) at most
Clock = Callable[[], datetime]


def qr_png(code: str) -> bytes:
    """The QR as PNG bytes (for the Home Assistant image entity)."""
    buffer = io.BytesIO()
    segno.make(code, error="l", micro=False).save(buffer, kind="png", scale=6, border=2)
    return buffer.getvalue()


def _json(data: Any) -> bytes:
    return api.encode(data)


class Bridge:
    """Implements `AccountSink` for the supervisors and serves requests arriving from the link."""

    def __init__(self, config: Config, topics: Topics, link: MqttLink, seen: SeenIds, clock: Clock,
                 started_at: datetime, disk: DiskFullWatch | None = None) -> None:
        self._config = config
        self._disk = disk
        self._topics = topics
        self._link = link
        self._seen = seen
        self._clock = clock
        self._started_at = started_at
        self._manager: AccountManager | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks = BackgroundTasks(log)  # requests being served, auto-replies, relinks
        self._requests: RequestQueue[tuple[RequestTopic, Incoming]] = RequestQueue(
            lambda _target, item: self._serve(*item), self._tasks.spawn)
        self._accepting = True
        self._announced: dict[str, tuple[bool, str | None]] = {}  # phone -> (linked, name) last announced
        self._replies = ReplyHistory()
        self._scheduled: set[str] = set()
        self._last_summary: dict[str, float] = {}  # loop time of the last publish of each summary
        self.reloader: Callable[[], Awaitable[dict[str, Any]]] | None = None
        self.duplicates_dropped = 0

    def attach(self, manager: AccountManager) -> None:
        self._manager = manager

    def reconfigure(self, config: Config) -> None:
        """A reloaded config (restart-only settings unchanged): rules, allow_to, notify apply at once."""
        notify_changed = config.notify != self._config.notify
        self._config = config
        self.publish_info()
        if notify_changed:
            self._announced.clear()
            self.announce(force=False)

    @property
    def manager(self) -> AccountManager:
        assert self._manager is not None, "attach() the manager first"
        return self._manager

    # -- lifecycle -----------------------------------------------------------------------------
    def on_link_connected(self) -> None:
        """Called by the link on every (re)connect, before it republishes retained topics."""
        self.publish_info()
        self.announce(force=False)

    # -- Home Assistant discovery ----------------------------------------------------------------
    def announce(self, force: bool) -> None:
        """Discovery configs of the bridge and every account (retained); `force` republishes all."""
        if not self._config.mqtt.discovery or self._manager is None:
            return
        prefix, base = self._config.mqtt.discovery_prefix, self._topics.base
        bridge_topic, bridge_payload = discovery.bridge_discovery(
            base_topic=base, discovery_prefix=prefix, version=__version__)
        self._link.set_retained(bridge_topic, discovery.encode(bridge_payload), force=force)
        for phone in self.manager.phones():
            supervisor = self.manager.find(phone)
            if supervisor is not None:
                self._announce_account(supervisor.status, force)

    def _announce_account(self, status: Status, force: bool = False) -> None:
        if not self._config.mqtt.discovery:
            return
        linked = status.last_connected is not None and status.state not in (
            AccountState.LOGGED_OUT, AccountState.PAIRING)
        key = (linked, status.name)
        if not force and self._announced.get(status.phone) == key:
            return
        self._announced[status.phone] = key
        topic, payload = discovery.account_discovery(
            base_topic=self._topics.base, discovery_prefix=self._config.mqtt.discovery_prefix,
            phone=status.phone, name=status.name, version=__version__, linked=linked,
            recipients=self._config.notify)
        self._link.set_retained(topic, discovery.encode(payload), force=force)

    def _publish_stats(self, phone: str) -> None:
        supervisor = self.manager.find(phone) if self._manager else None
        if supervisor is not None:
            self._link.set_retained(self._topics.stats(phone), _json({
                "messages_in": supervisor.messages_in, "messages_out": supervisor.messages_out,
                "reconnects": supervisor.account.reconnects}))

    def publish_info(self) -> None:
        phones = self.manager.phones() if self._manager else []
        self._link.set_retained(self._topics.bridge_info, _json({
            "version": __version__, "engine": self._config.engine, "started_at": utc_iso(self._started_at),
            "base_topic": self._topics.base, "accounts": phones, "config": self._config.masked(),
        }))
        self._publish_accounts()

    def stop_accepting(self) -> None:
        self._accepting = False

    def publish_summaries(self) -> None:
        """Publish the account list now (at shutdown: before `offline`, not after a summary delay)."""
        self._publish_accounts()

    async def drain(self) -> None:
        """Wait for requests being served to finish."""
        await self._tasks.wait()

    # -- AccountSink ---------------------------------------------------------------------------
    def on_status(self, status: Status) -> None:
        self._link.set_retained(self._topics.status(status.phone), _json(status.payload()))
        if self._manager is not None and self.manager.find(status.phone) is not None:
            self._soon("accounts", self._publish_accounts)
            self._announce_account(status)
            self._publish_stats(status.phone)

    def on_accounts_changed(self) -> None:
        self._soon("info", self.publish_info)

    def _soon(self, what: str, publish: Callable[[], None]) -> None:
        """Publish a bridge-wide summary soon: at the next loop iteration, but at most once per
        SUMMARY_INTERVAL, however many accounts changed (a restore of 500 accounts would otherwise
        rebuild and publish the 500-entry list hundreds of times: 4 s of the loop, measured)."""
        if what in self._scheduled:
            return
        self._scheduled.add(what)
        loop = asyncio.get_running_loop()
        last = self._last_summary.get(what)
        delay = 0.0 if last is None else max(0.0, last + SUMMARY_INTERVAL - loop.time())
        loop.call_later(delay, self._run_scheduled, what, publish)

    def _run_scheduled(self, what: str, publish: Callable[[], None]) -> None:
        self._scheduled.discard(what)
        self._last_summary[what] = asyncio.get_running_loop().time()
        publish()

    def _publish_accounts(self) -> None:
        self._link.set_retained(self._topics.bridge_accounts, _json(self.manager.summary() if self._manager else []))

    def on_stats(self, phone: str) -> None:
        """A message came in or went out: refresh `stats` soon (at most every SUMMARY_INTERVAL per account)."""
        self._soon(f"stats-{phone}", lambda: self._publish_stats(phone))

    def on_message(self, phone: str, message: IncomingMessage) -> None:
        if self._seen.seen(phone, message.id):
            self.duplicates_dropped += 1
            log.debug("%s: duplicate message %s dropped", phone, message.id)
            return
        # spooled (or held in memory while the disk is full), then its id remembered, never on disk
        # before the message: a crash in between repeats the message rather than losing it
        self._link.publish(self._topics.message(phone), _json(message.payload()), qos=1, durable=True)
        self._seen.remember(phone, message.id, hold=self._disk is not None and self._disk.error is not None)
        if self._config.auto_reply:
            self._auto_reply(phone, message)

    # -- auto-reply --------------------------------------------------------------------------------
    def _auto_reply(self, phone: str, message: IncomingMessage) -> None:
        """Plan replies with the rules (pure) and send them through the same path, outbox included."""
        now = self._clock()
        planned = decide(self._config.auto_reply, message, self._replies, now, self._config.auto_reply_limits)
        self._replies.record_incoming(message, now)
        for reply in planned:
            self._replies.record_reply(reply, now)
            outgoing = reply.to_outgoing(key=f"auto:{message.id}:{reply.rule}")
            self._tasks.spawn(self._send_auto_reply(phone, reply.rule, outgoing), f"auto-reply-{phone}")

    async def _send_auto_reply(self, phone: str, rule: str, outgoing: OutgoingMessage) -> None:
        lock = self._locks.setdefault(phone, asyncio.Lock())
        async with lock:
            try:
                result = await self._send(phone, outgoing, {"auto_reply": rule})
            except (ApiError, EngineError, UnknownAccount, DiskFull) as exc:
                log.warning("%s: auto-reply %r not sent: %s", phone, rule, exc)
                return
        log.info("%s: auto-reply %r %s", phone, rule, "queued" if result.get("queued") else "sent")
        self.on_bridge_event("auto_reply", {"phone": phone, "rule": rule, "chat": outgoing.to,
                                            "id": result.get("id"), "queued": bool(result.get("queued"))})

    def on_receipt(self, phone: str, receipt: Receipt) -> None:
        self._link.publish(self._topics.receipt(phone), _json(receipt.payload()), qos=1, durable=True)

    def on_pairing(self, phone: str, kind: str | None, code: str | None) -> None:
        if kind == "qr" and code:
            self._link.set_retained(self._topics.qr(phone), code)
            self._link.set_retained(self._topics.qr_image(phone), qr_png(code))
            log.info("%s: QR code on offer on %s", phone, self._topics.qr(phone))
        elif kind == "code" and code:
            self._link.set_retained(self._topics.pair_code(phone), code)
            log.info("%s: pair code on offer on %s", phone, self._topics.pair_code(phone))
        else:
            for topic in (self._topics.qr(phone), self._topics.qr_image(phone), self._topics.pair_code(phone)):
                self._link.set_retained(topic, b"")

    def on_bridge_event(self, type_: str, data: dict[str, Any]) -> None:
        log.info("event %s %s", type_, data.get("phone", ""))
        self._link.publish(self._topics.bridge_event, _json({"type": type_, "data": data}), qos=1)

    def on_sim_sent(self, phone: str, payload: dict[str, Any]) -> None:
        self._link.publish(self._topics.sim_sent(phone), _json(payload), qos=1, durable=True)

    def on_deferred_response(self, phone: str, command: str, route: dict[str, Any], response: dict[str, Any]) -> None:
        if "auto_reply" in route:  # nobody asked: report it as an event
            self.on_bridge_event("auto_reply", {"phone": phone, "rule": route["auto_reply"], **response})
            return
        self._respond(phone, command, Route.from_dict(route), api.with_route(Route.from_dict(route), response))

    def on_connected(self, phone: str) -> None:
        self.manager.after_connected(phone)

    def on_linked_elsewhere(self, asked: str, linked: str) -> None:
        self._tasks.spawn(self.manager.relink(asked, linked), f"relink-{asked}")


    def on_removed(self, phone: str) -> None:
        for topic in (self._topics.status(phone), self._topics.qr(phone), self._topics.qr_image(phone),
                      self._topics.pair_code(phone), self._topics.stats(phone)):
            self._link.set_retained(topic, b"")
        self._last_summary.pop(f"stats-{phone}", None)
        if self._config.mqtt.discovery:
            self._announced.pop(phone, None)
            for topic, payload in discovery.account_removal(
                    discovery_prefix=self._config.mqtt.discovery_prefix, phone=phone):
                self._link.set_retained(topic, payload)

    # -- requests ------------------------------------------------------------------------------
    async def handle(self, incoming: Incoming) -> None:
        """Entry point for every message from the broker."""
        request = parse_request_topic(self._topics, incoming.topic)
        if request is not None:
            if not self._accepting:
                return
            busy = self._requests.offer(request.target, (request, incoming), len(incoming.payload))
            if busy is not None:
                self._answer_busy(request, incoming, busy)
            return
        if discovery.is_ha_birth(self._config.mqtt.discovery_prefix, incoming.topic, incoming.payload):
            log.info("Home Assistant came online: announcing discovery again")
            self.announce(force=True)
            return
        sim = parse_sim_topic(self._topics, incoming.topic)
        if sim is not None and self._config.engine == "sim":
            await self._sim_control(sim.phone, sim.action, incoming.payload)

    def _lock(self, target: str) -> asyncio.Lock | contextlib.nullcontext[None]:
        """The target's lock (its requests and auto-replies one at a time), for the bridge and existing
        accounts only: a flood of made-up targets must not leave a lock behind for each."""
        if target == BRIDGE or (self._manager is not None and self.manager.find(target) is not None):
            return self._locks.setdefault(target, asyncio.Lock())
        return contextlib.nullcontext()

    def _route(self, incoming: Incoming) -> tuple[Route, ApiError | None]:
        """Where to answer: the MQTT v5 response topic only when the rule allows it (docs/security.md);
        a refused one is left out of the route (the answer goes to `.../response/<cmd>` alone)."""
        try:
            api.check_response_topic(incoming.response_topic,
                                     (self._topics.base, self._config.mqtt.discovery_prefix))
        except ApiError as exc:
            return Route(), exc
        return Route(response_topic=incoming.response_topic, correlation_data=incoming.correlation_data), None

    def _answer_busy(self, request: RequestTopic, incoming: Incoming, why: str) -> None:
        route, _ = self._route(incoming)
        try:
            _, transaction, has_transaction = api.decode_payload(incoming.payload, self._config.mqtt.max_payload_bytes)
            route = replace(route, transaction=transaction, has_transaction=has_transaction)
        except ApiError:
            pass  # answered busy all the same, without a transaction to echo
        self._respond(request.target, request.command, route,
                      api.error(route, ErrorCode.BUSY, f"not done: {why}; send it again later"))

    async def _serve(self, topic: RequestTopic, incoming: Incoming) -> None:
        target, command, is_bridge = topic.target, topic.command, topic.is_bridge
        route, refused = self._route(incoming)
        async with self._lock(target):
            try:
                data, transaction, has_transaction = api.decode_payload(
                    incoming.payload, self._config.mqtt.max_payload_bytes)
                route = replace(route, transaction=transaction, has_transaction=has_transaction)
                if refused is not None:
                    raise refused
                if not is_bridge and not is_phone(target):
                    raise ApiError(ErrorCode.UNKNOWN_ACCOUNT, f"{target!r} is not an account id (a phone number)")
                request = api.parse_command(is_bridge, command, data)
                result = await (self._bridge_command(command, request, route) if is_bridge
                                else self._account_command(target, command, request, route))
                body = api.ok(route, result)
            except ApiError as exc:
                body = api.error(route, exc.code, exc.message)
            except UnknownAccount as exc:
                body = api.error(route, "unknown_account", str(exc))
            except StorageError as exc:
                body = api.error(route, "storage_error", str(exc))
            except EngineError as exc:
                body = api.error(route, exc.code, str(exc))
            except DiskFull as exc:
                body = api.error(route, exc.code, str(exc))
            except Exception as exc:  # a bug must still answer the client
                log.exception("%s/%s failed", target, command)
                body = api.error(route, "internal_error", f"internal error: {type(exc).__name__}")
            if body["status"] == "error":
                log.info("request %s/%s refused: %s", target, command, body["code"])
        self._respond(target, command, route, body)

    def _respond(self, target: str, command: str, route: Route, body: dict[str, Any]) -> None:
        payload = _json(body)
        topic = self._topics.bridge_response(command) if target == "bridge" else self._topics.response(target, command)
        self._link.publish(topic, payload, qos=1)
        if route.response_topic:
            self._link.publish(route.response_topic, payload, qos=1, correlation_data=route.correlation_data)

    async def _account_command(self, phone: str, command: str, request: Any, route: Route) -> dict[str, Any]:
        manager = self.manager
        match command:
            case "connect":
                return self._state(await manager.connect(phone, request.method))
            case "disconnect":
                return self._state(await manager.disconnect(phone))
            case "logout":
                return self._state(await manager.logout(phone))
            case "send":
                return await self._send(phone, request, route.to_dict())
            case "react":
                sup = manager.get(phone)
                msg_id = await sup.engine_call(lambda s: s.react(request.chat, request.id, request.emoji, request.sender))
                return {"id": msg_id}
            case "read":
                await manager.get(phone).engine_call(lambda s: s.mark_read(request.chat, request.ids, request.sender))
                return {}
            case "typing":
                await manager.get(phone).engine_call(lambda s: s.typing(request.chat, request.state))
                return {}
        raise ApiError(ErrorCode.INVALID_REQUEST, f"unknown command {command!r}")

    async def _send(self, phone: str, message: OutgoingMessage, route: dict[str, Any]) -> dict[str, Any]:
        """Every send, requested or automatic: policy first, then now or into the outbox."""
        supervisor = self.manager.get(phone)
        outgoing = self._config.outgoing
        if outgoing.allow_to is not None and identity(message.to) not in {identity(a) for a in outgoing.allow_to}:
            raise ApiError(ErrorCode.FORBIDDEN, f"to: {message.to} is not in outgoing.allow_to")
        texts = {"text": message.text}
        if message.kind != "text":
            texts[f"{message.kind}.caption"] = getattr(message, message.kind).caption
        for field, value in texts.items():
            if value is not None and len(value) > outgoing.max_text_chars:
                raise ApiError(ErrorCode.TOO_LARGE, f"{field}: {len(value)} characters; the limit is {outgoing.max_text_chars}")
        try:
            check_message(message, MediaPolicy(outgoing.max_media_bytes, outgoing.media_dir, outgoing.block_private_urls))
        except MediaRefused as exc:
            raise ApiError(exc.code, str(exc)) from None
        return await supervisor.send(message, route)

    async def _bridge_command(self, command: str, request: Any, route: Route) -> dict[str, Any]:
        manager = self.manager
        match command:
            case "pair":
                return self._state(await manager.pair(request.phone, request.method))
            case "remove":
                await manager.remove(request.phone)
                return {"phone": request.phone, "removed": True}
            case "restart_account":
                return self._state(await manager.restart(request.phone))
            case "health":
                now = self._clock()
                return {
                    "version": __version__, "uptime": round((now - self._started_at).total_seconds(), 1),
                    "broker_connected": self._link.is_connected, "pending_publishes": self._link.pending(),
                    "spool_dropped": self._link.spool_dropped, "duplicates_dropped": self.duplicates_dropped,
                    "disk_full": self._disk is not None and self._disk.error is not None,
                    "held_in_memory": self._disk.held if self._disk is not None else 0,
                    "requests_waiting": self._requests.held, "requests_busy": self._requests.busy,
                    "accounts": manager.health(),
                }
            case "backup":
                return {"backups": await manager.backup(request.phone)}
            case "reload":
                if self.reloader is None:
                    raise ApiError(ErrorCode.INVALID_REQUEST, "reload is not available in this bridge")
                return await self.reloader()
        raise ApiError(ErrorCode.INVALID_REQUEST, f"unknown command {command!r}")

    @staticmethod
    def _state(supervisor: Any) -> dict[str, Any]:
        return {"phone": supervisor.phone, "state": supervisor.state.value}

    async def _sim_control(self, phone: str, action: str, payload: bytes) -> None:
        supervisor = self.manager.find(phone)
        if supervisor is None:
            log.warning("sim: no account %s for %s", phone, action)
            return
        try:
            await supervisor.sim_control(action, payload)
        except EngineError as exc:
            log.warning("sim %s/%s refused: %s", phone, action, exc)
