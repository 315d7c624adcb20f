"""The request server: MQTT requests in, responses out; the only writer of response bodies.

It subscribes the request topics, decodes and validates each request (api.py), carries it out through
the request table (mqtt/requests.py) and answers on `<base>/<target>/response/<cmd>` and, for MQTT v5,
on the request's response topic with its correlation data, when the response topic rule allows it
(docs/security.md). Requests for one target are served in arrival order (the request queue, and the
target's turn in the send service, shared with auto-replies); different targets concurrently. A send
holds the turn only until it is in the outbox (`Later`): its answer is awaited after the turn, and
published after those of the sends taken before it (in the order taken, whichever is ready first). How many
wait is bounded (`RequestQueue`): beyond that a request is answered `busy` at once. A plain `send`
whose target has nothing waiting and whose turn is free is served at once, where it arrives
(`_serve_now`: no task, no lock taken; nothing else runs meanwhile, so it is taken exactly where the
turn would take it, through the same checks and policy), unless it would have to wait (its pipeline
full, `allow_to` to resolve): then it is queued as any request. A send that
had to wait in the outbox is answered later, from `SendCompleted` / `SendFailed`: the reply route
(response topic, correlation data, transaction) went down with it as an opaque reference.

Requests from other front ends (the web page) arrive as `LocalRequest` events and take the same path:
the same queue and turn, decoding, table, validation and error bodies; only the answer goes to the
event's `answer` instead of a response topic.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, cast

from pydantic import BaseModel

from .. import events as ev
from ..bus import EventBus
from ..config import Config
from ..disk_full import DiskFullWatch
from ..errors import BridgeError, ErrorCode
from ..model import is_phone
from ..mqtt import api
from ..mqtt.api import ApiError, Route, SendRequest, encode
from ..mqtt.link import Incoming, MqttLink
from ..mqtt.request_queue import RequestQueue
from ..mqtt.requests import ACCOUNT_REQUESTS, BRIDGE_REQUESTS, Call, Later, Result, Services
from ..mqtt.topics import BRIDGE, RequestTopic, Topics, parse_request_topic
from ..sending import SendService
from ..store.protocols import SeenStore as SeenIds
from ..tasks import BackgroundTasks

if TYPE_CHECKING:
    from ..accounts.manager import AccountManager
    from ..cluster.gate import RequestGate

log = logging.getLogger(__name__)
OWNER = "request server"
DRAIN_TIMEOUT = 10.0  # seconds a stop waits for the requests being served


@dataclass(frozen=True, slots=True)
class _Pending:
    """A request waiting for its turn: from MQTT (`answer` None: published on the response topics), or
    local (`answer` takes the body; `reply` is what a send waiting in the outbox stores)."""

    request: RequestTopic
    payload: bytes
    route: Route
    refused: ApiError | None = None  # the MQTT v5 response topic broke the rule
    answer: Callable[[dict[str, object]], None] | None = None
    reply: ev.Reply | None = None


class RequestServer:
    """Serves `<base>/+/request/+`; see the module docstring."""

    def __init__(self, bus: EventBus, config: Config, topics: Topics, link: MqttLink, manager: AccountManager,
                 sending: SendService, seen: SeenIds, clock: Callable[[], datetime], started_at: datetime,
                 reload: Callable[[], Awaitable[Result]], disk: DiskFullWatch | None = None,
                 gate: RequestGate | None = None) -> None:
        """`gate` (a cluster): which requests this bridge serves (cluster/gate.py)."""
        self._bus = bus
        self._gate = gate
        if gate is not None:
            gate.offer = self.offer
        self._config = config
        self._topics = topics
        self._link = link
        self._sending = sending
        self._seen = seen
        self._clock = clock
        self._started_at = started_at
        self._disk = disk
        self._services = Services(manager, sending, self._health, reload, self._set_log_level)
        self._tasks = BackgroundTasks(log)  # requests being served
        self._requests: RequestQueue[_Pending] = RequestQueue(lambda _target, item: self._serve(item),
                                                              self._tasks.spawn)
        self._accepting = False
        self._later: dict[str, deque[_LaterAnswer]] = {}  # per target, the `Later` answers not published yet

    def start(self) -> None:
        if self._gate is not None:
            for topic_filter, subscription_id in self._gate.filters:
                self._link.subscribe(topic_filter, subscription_id)
        else:
            for topic_filter in self._topics.request_filters:
                self._link.subscribe(topic_filter)
        self._accepting = True
        self._bus.subscribe(ev.MqttMessageReceived, self._on_mqtt, OWNER)
        self._bus.subscribe(ev.LocalRequest, self._on_local, OWNER)
        self._bus.subscribe(ev.SendCompleted, self._on_send_completed, OWNER)
        self._bus.subscribe(ev.SendFailed, self._on_send_failed, OWNER)
        self._bus.subscribe(ev.ConfigReloaded, self._on_config, OWNER)

    async def drain(self) -> None:
        """Accept no more requests; finish the ones being served and publish their answers (bounded by
        DRAIN_TIMEOUT in all; an answer still not ready then is not published). Sends that waited in the
        outbox are still answered until `stop()`."""
        self._accepting = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_TIMEOUT
        await self._tasks.finish(DRAIN_TIMEOUT)
        unanswered = [waiting.later.outcome for queue in self._later.values() for waiting in queue if not waiting.done]
        if unanswered:
            _, late = await asyncio.wait(unanswered, timeout=max(0.0, deadline - loop.time()))
            if late:
                log.warning("%d sends not answered after %g s; their answers are dropped", len(late), DRAIN_TIMEOUT)
                for outcome in late:
                    outcome.cancel()  # as the answer tasks were: the callbacks drop them

    async def stop(self) -> None:
        self._bus.unsubscribe(OWNER)

    def _on_config(self, event: ev.ConfigReloaded) -> None:
        self._config = event.config

    def _on_mqtt(self, event: ev.MqttMessageReceived) -> None:
        request = parse_request_topic(self._topics, event.message.topic)
        incoming = event.message
        if request is None and self._gate is not None and (forwarded := self._gate.forwarded(incoming)):
            self.offer(*forwarded)  # another bridge of the cluster handed it here
            return
        if request is None or not self._accepting:
            return
        if self._gate is not None and not self._gate.admit(request, incoming):
            return
        self.offer(request, incoming)

    def offer(self, request: RequestTopic, incoming: Incoming) -> None:
        """Queue a request that came over MQTT (here, or forwarded by another bridge of the cluster) to be
        served in order per target, or answer `busy`."""
        if not self._accepting:
            return
        route, refused = self._route(incoming)
        self._offer(_Pending(request, incoming.payload, route, refused))

    def _on_local(self, event: ev.LocalRequest) -> None:
        pending = _Pending(RequestTopic(event.target, event.command), event.payload, Route(),
                           answer=event.answer, reply=event.reply)
        if not self._accepting:
            self._respond(pending, Route(), api.error(Route(), ErrorCode.BUSY, "not done: the bridge is stopping"))
            return
        self._offer(pending)

    def _offer(self, pending: _Pending) -> None:
        request = pending.request
        if request.command == "send" and not request.is_bridge and self._requests.idle(request.target) \
                and self._sending.turn_free(request.target) and self._serve_now(pending):
            return
        busy = self._requests.offer(request.target, pending, len(pending.payload))
        if busy is not None:
            self._answer_busy(pending, busy)

    def _route(self, incoming: Incoming) -> tuple[Route, ApiError | None]:
        """Where to answer: the MQTT v5 response topic only when the rule allows it (docs/security.md);
        a refused one is left out of the route (the answer goes to `.../response/<cmd>` alone)."""
        try:
            api.check_response_topic(incoming.response_topic,
                                     (self._topics.base, self._config.mqtt.discovery_prefix))
        except ApiError as exc:
            return Route(), exc
        return Route(response_topic=incoming.response_topic, correlation_data=incoming.correlation_data), None

    def _answer_busy(self, pending: _Pending, why: str) -> None:
        route = pending.route
        try:
            _, transaction, has_transaction = api.decode_payload(pending.payload, self._config.mqtt.max_payload_bytes)
            route = replace(route, transaction=transaction, has_transaction=has_transaction)
        except ApiError:
            pass  # answered busy all the same, without a transaction to echo
        self._respond(pending, route, api.error(route, ErrorCode.BUSY, f"not done: {why}; send it again later"))

    async def _serve(self, pending: _Pending) -> None:
        target = pending.request.target
        async with self._sending.lock(target):
            route, parsed = self._parse(pending)
            result: Result | Later | Exception = parsed if isinstance(parsed, Exception) else \
                await self._run(pending, route, parsed)
        self._taken(pending, route, result)

    def _serve_now(self, pending: _Pending) -> bool:
        """A `send` served at once, as `_serve` would: nothing waits for its target in the queue and
        nobody holds or waits for its turn, and all of it runs without an await here, so it is taken in
        the turn's order (the same checks, policy and answers; no task, no turn taken). False, having
        changed nothing, when the send would wait (its pipeline full, `allow_to` to resolve): queue it."""
        route, parsed = self._parse(pending)
        result: Later | Exception
        if isinstance(parsed, Exception):
            result = parsed
        else:
            try:
                outcome = self._sending.accept_now(pending.request.target, cast("SendRequest", parsed),  # `send`'s schema
                                                   self._reply(pending, route))
            except Exception as exc:  # noqa: BLE001 - answered, as in `_run`
                result = exc
            else:
                if outcome is None:
                    return False
                result = Later(outcome)
        self._taken(pending, route, result)
        return True

    def _parse(self, pending: _Pending) -> tuple[Route, BaseModel | Exception]:
        """Decode and validate a request: where to answer (its transaction, once read), and the request
        as its command's schema, or the refusal to answer with."""
        request, route = pending.request, pending.route
        try:
            data, transaction, has_transaction = api.decode_payload(pending.payload, self._config.mqtt.max_payload_bytes)
            route = Route(transaction, has_transaction, route.response_topic, route.correlation_data)
            if pending.refused is not None:
                raise pending.refused
            if not request.is_bridge and not is_phone(request.target):
                raise ApiError(ErrorCode.UNKNOWN_ACCOUNT, f"{request.target!r} is not an account id (a phone number)")
            return route, api.parse_command(request.is_bridge, request.command, data)
        except Exception as exc:  # noqa: BLE001 - every failure is answered; a bug too (`_refusal` logs its trace)
            return route, exc

    async def _run(self, pending: _Pending, route: Route, parsed: BaseModel) -> Result | Later | Exception:
        """Carry out a validated request (the request table), or the failure to answer with."""
        request = pending.request
        row = (BRIDGE_REQUESTS if request.is_bridge else ACCOUNT_REQUESTS)[request.command]
        try:
            return await row.run(Call(self._services, request.target, self._reply(pending, route)), parsed)
        except Exception as exc:  # noqa: BLE001 - as in `_parse`
            return exc

    @staticmethod
    def _reply(pending: _Pending, route: Route) -> ev.Reply:
        """What a send waiting in the outbox stores to be answered: the route, or a local request's own."""
        return route.to_dict() if pending.reply is None else pending.reply

    def _taken(self, pending: _Pending, route: Route, result: Result | Later | Exception) -> None:
        """Answer a request served, or, for a send taken in order (`Later`), once it is done and every
        send of its target taken before it is answered."""
        if isinstance(result, Later):  # its answer is awaited after the target's turn
            target = pending.request.target
            waiting = _LaterAnswer(pending, route, result)
            self._later.setdefault(target, deque()).append(waiting)  # in the order taken (no await since the turn)
            result.outcome.add_done_callback(partial(self._answer_later, target, waiting))
        else:
            self._answer(pending, route, result)

    def _answer_later(self, target: str, waiting: _LaterAnswer, outcome: asyncio.Future[object]) -> None:
        """`waiting`'s outcome is done (a callback: no task per send); publish the target's answers that
        are ready, in the order their requests were taken: a send is answered after every send taken
        before it, even when its result was ready first. A cancelled outcome (a stop that timed out)
        is not answered, and does not hold the others back."""
        if not outcome.cancelled():
            try:
                waiting.result = waiting.later.result()
            except Exception as exc:  # noqa: BLE001 - as in `_serve`
                waiting.result = exc
        waiting.done = True
        queue = self._later.get(target)
        try:
            while queue and queue[0].done:
                head = queue.popleft()
                if head.result is not None:
                    self._answer(head.pending, head.route, head.result)
        except Exception:  # a bug (a task logged it before): log it, and do not stall the target's answers
            log.exception("answering a request for %s failed", target)
        if not queue:
            self._later.pop(target, None)

    def _answer(self, pending: _Pending, route: Route, result: Result | Exception) -> None:
        target, command = pending.request.target, pending.request.command
        if isinstance(result, Exception):
            refusal = _refusal(result, f"{target}/{command}")
            body = api.error(route, refusal.code, refusal.message)
            log.info("request %s/%s refused: %s", target, command, refusal.code)
        else:
            body = api.ok(route, result)
        self._respond(pending, route, body)

    def _respond(self, pending: _Pending, route: Route, body: dict[str, object]) -> None:
        if pending.answer is not None:
            pending.answer(body)
            return
        self._publish(pending.request.target, pending.request.command, route, body)

    def _publish(self, target: str, command: str, route: Route, body: dict[str, object]) -> None:
        payload = encode(body)
        topic = self._topics.bridge_response(command) if target == BRIDGE else self._topics.response(target, command)
        self._link.publish(topic, payload, qos=1)
        if route.response_topic:
            self._link.publish(route.response_topic, payload, qos=1, correlation_data=route.correlation_data)

    # -- deferred answers (sends that waited in the outbox) ---------------------------------------
    def _on_send_completed(self, event: ev.SendCompleted) -> None:
        if Route.is_route(event.reply):
            route = Route.from_dict(event.reply)
            self._publish(event.phone, "send", route, api.ok(route, {"id": event.id, "queued": False, "from_queue": True}))

    def _on_send_failed(self, event: ev.SendFailed) -> None:
        if Route.is_route(event.reply):
            route = Route.from_dict(event.reply)
            self._publish(event.phone, "send", route, api.error(route, event.code, event.error))

    def _set_log_level(self, level: str) -> None:
        """`bridge/request/log_level`: the root logger's level (the bridge process) until the next start."""
        logging.getLogger().setLevel(level.upper())
        log.warning("log level set to %s on request (until the next start)", level)  # seen at every level
        self._bus.emit(ev.LogLevelChanged(level))

    def _health(self) -> Result:
        """The bridge's own figures for `health` (the accounts' are the manager's)."""
        return {
            "uptime": round((self._clock() - self._started_at).total_seconds(), 1),
            "broker_connected": self._link.is_connected, "pending_publishes": self._link.pending(),
            "spool_dropped": self._link.spool_dropped, "duplicates_dropped": self._seen.duplicates,
            "disk_full": self._disk is not None and self._disk.error is not None,
            "held_in_memory": self._disk.held if self._disk is not None else 0,
            "requests_waiting": self._requests.held, "requests_busy": self._requests.busy,
        }


@dataclass(eq=False, slots=True)
class _LaterAnswer:
    """A deferred answer of a target (a send), in the order its request was taken; `done` once it may be
    published."""

    pending: _Pending
    route: Route
    later: Later
    result: Result | Exception | None = None
    done: bool = False


def _refusal(exc: Exception, what: str) -> BridgeError:
    """Any failure of a request as the code and message of its error response: the contract's own
    errors as they are, anything else (a bug) as `internal_error`, logged with its trace."""
    if isinstance(exc, BridgeError):
        return exc
    log.error("%s failed", what, exc_info=exc)  # a bug must still answer the client
    return ApiError(ErrorCode.INTERNAL_ERROR, f"internal error: {type(exc).__name__}")
