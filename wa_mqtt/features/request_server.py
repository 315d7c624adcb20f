"""The request server: MQTT requests in, responses out; the only writer of response bodies.

It subscribes the request topics, decodes and validates each request (api.py), carries it out through
the request table (mqtt/requests.py) and answers on `<base>/<target>/response/<cmd>` and, for MQTT v5,
on the request's response topic with its correlation data, when the response topic rule allows it
(docs/security.md). Requests for one target are served in arrival order (the request queue, and the
target's turn in the send service, shared with auto-replies); different targets concurrently. A send
holds the turn only until it is in the outbox (`Later`): its answer is awaited after the turn, and
published after those of the sends taken before it (in the order taken, whichever is ready first). How many
wait is bounded (`RequestQueue`): beyond that a request is answered `busy` at once. A send that
had to wait in the outbox is answered later, from `SendCompleted` / `SendFailed`: the reply route
(response topic, correlation data, transaction) went down with it as an opaque reference.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING

from .. import events as ev
from ..accounts.dedup import SeenIds
from ..bus import EventBus
from ..config import Config
from ..disk_full import DiskFullWatch
from ..errors import BridgeError, ErrorCode
from ..model import is_phone
from ..mqtt import api
from ..mqtt.api import ApiError, Route, encode
from ..mqtt.link import Incoming, MqttLink
from ..mqtt.request_queue import RequestQueue
from ..mqtt.requests import ACCOUNT_REQUESTS, BRIDGE_REQUESTS, Call, Later, Result, Services
from ..mqtt.topics import BRIDGE, RequestTopic, Topics, parse_request_topic
from ..sending import SendService
from ..tasks import BackgroundTasks

if TYPE_CHECKING:
    from ..accounts.manager import AccountManager

log = logging.getLogger(__name__)
OWNER = "request server"
DRAIN_TIMEOUT = 10.0  # seconds a stop waits for the requests being served


class RequestServer:
    """Serves `<base>/+/request/+`; see the module docstring."""

    def __init__(self, bus: EventBus, config: Config, topics: Topics, link: MqttLink, manager: AccountManager,
                 sending: SendService, seen: SeenIds, clock: Callable[[], datetime], started_at: datetime,
                 reload: Callable[[], Awaitable[Result]], disk: DiskFullWatch | None = None) -> None:
        self._bus = bus
        self._config = config
        self._topics = topics
        self._link = link
        self._sending = sending
        self._seen = seen
        self._clock = clock
        self._started_at = started_at
        self._disk = disk
        self._services = Services(manager, sending, self._health, reload)
        self._tasks = BackgroundTasks(log)  # requests being served
        self._requests: RequestQueue[tuple[RequestTopic, Incoming]] = RequestQueue(
            lambda _target, item: self._serve(*item), self._tasks.spawn)
        self._accepting = False
        self._later: dict[str, deque[_Pending]] = {}  # per target, the `Later` answers not published yet

    def start(self) -> None:
        for topic_filter in self._topics.request_filters:
            self._link.subscribe(topic_filter)
        self._accepting = True
        self._bus.subscribe(ev.MqttMessageReceived, self._on_mqtt, OWNER)
        self._bus.subscribe(ev.SendCompleted, self._on_send_completed, OWNER)
        self._bus.subscribe(ev.SendFailed, self._on_send_failed, OWNER)
        self._bus.subscribe(ev.ConfigReloaded, self._on_config, OWNER)

    async def drain(self) -> None:
        """Accept no more requests; finish the ones being served (bounded). Sends that waited in the
        outbox are still answered until `stop()`."""
        self._accepting = False
        await self._tasks.finish(DRAIN_TIMEOUT)

    async def stop(self) -> None:
        self._bus.unsubscribe(OWNER)

    def _on_config(self, event: ev.ConfigReloaded) -> None:
        self._config = event.config

    def _on_mqtt(self, event: ev.MqttMessageReceived) -> None:
        request = parse_request_topic(self._topics, event.message.topic)
        if request is None or not self._accepting:
            return
        incoming = event.message
        busy = self._requests.offer(request.target, (request, incoming), len(incoming.payload))
        if busy is not None:
            self._answer_busy(request, incoming, busy)

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

    async def _serve(self, request: RequestTopic, incoming: Incoming) -> None:
        target, command = request.target, request.command
        route, refused = self._route(incoming)
        result: Result | Later | Exception
        async with self._sending.lock(target):
            try:
                data, transaction, has_transaction = api.decode_payload(
                    incoming.payload, self._config.mqtt.max_payload_bytes)
                route = replace(route, transaction=transaction, has_transaction=has_transaction)
                if refused is not None:
                    raise refused
                if not request.is_bridge and not is_phone(target):
                    raise ApiError(ErrorCode.UNKNOWN_ACCOUNT, f"{target!r} is not an account id (a phone number)")
                parsed = api.parse_command(request.is_bridge, command, data)
                row = (BRIDGE_REQUESTS if request.is_bridge else ACCOUNT_REQUESTS)[command]
                result = await row.run(Call(self._services, target, route.to_dict()), parsed)
            except Exception as exc:  # noqa: BLE001 - every failure is answered; a bug too (`_refusal` logs its trace)
                result = exc
        if isinstance(result, Later):  # taken in order; its answer is awaited after the target's turn
            pending = _Pending(command, route)
            self._later.setdefault(target, deque()).append(pending)  # in the order taken (no await since the turn)
            self._tasks.spawn(self._answer_later(target, pending, result), f"answer-{target}-{command}")
        else:
            self._answer(target, command, route, result)

    async def _answer_later(self, target: str, pending: _Pending, later: Later) -> None:
        """Await one answer; then publish the target's answers that are ready, in the order their
        requests were taken: a send is answered after every send taken before it, even when its
        result was ready first (its task ran before theirs)."""
        try:
            pending.result = await later.result
        except Exception as exc:  # noqa: BLE001 - as in `_serve`
            pending.result = exc
        finally:  # cancelled (a stop that timed out): not answered, and not holding the others back
            pending.done = True
            queue = self._later.get(target)
            while queue and queue[0].done:
                head = queue.popleft()
                if head.result is not None:
                    self._answer(target, head.command, head.route, head.result)
            if not queue:
                self._later.pop(target, None)

    def _answer(self, target: str, command: str, route: Route, result: Result | Exception) -> None:
        if isinstance(result, Exception):
            refusal = _refusal(result, f"{target}/{command}")
            body = api.error(route, refusal.code, refusal.message)
            log.info("request %s/%s refused: %s", target, command, refusal.code)
        else:
            body = api.ok(route, result)
        self._respond(target, command, route, body)

    def _respond(self, target: str, command: str, route: Route, body: dict[str, object]) -> None:
        payload = encode(body)
        topic = self._topics.bridge_response(command) if target == BRIDGE else self._topics.response(target, command)
        self._link.publish(topic, payload, qos=1)
        if route.response_topic:
            self._link.publish(route.response_topic, payload, qos=1, correlation_data=route.correlation_data)

    # -- deferred answers (sends that waited in the outbox) ---------------------------------------
    def _on_send_completed(self, event: ev.SendCompleted) -> None:
        if Route.is_route(event.reply):
            route = Route.from_dict(event.reply)
            self._respond(event.phone, "send", route, api.ok(route, {"id": event.id, "queued": False, "from_queue": True}))

    def _on_send_failed(self, event: ev.SendFailed) -> None:
        if Route.is_route(event.reply):
            route = Route.from_dict(event.reply)
            self._respond(event.phone, "send", route, api.error(route, event.code, event.error))

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


@dataclass(eq=False)
class _Pending:
    """An answer of a target, in the order its request was taken; `done` once it may be published."""

    command: str
    route: Route
    result: Result | Exception | None = None
    done: bool = False


def _refusal(exc: Exception, what: str) -> BridgeError:
    """Any failure of a request as the code and message of its error response: the contract's own
    errors as they are, anything else (a bug) as `internal_error`, logged with its trace."""
    if isinstance(exc, BridgeError):
        return exc
    log.error("%s failed", what, exc_info=exc)  # a bug must still answer the client
    return ApiError(ErrorCode.INTERNAL_ERROR, f"internal error: {type(exc).__name__}")
