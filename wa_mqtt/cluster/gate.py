"""Which bridge of a cluster serves an MQTT request.

Bridge-level requests (`<base>/bridge/request/<cmd>`) come through an MQTT v5 shared subscription
(`$share/<group>/...`): the broker hands each to one bridge, which answers it (new accounts paired
that way are spread over the bridges by the broker's round robin). Account requests are subscribed
by every bridge; only the account's owner serves one. The others keep a copy for `hold_for` seconds:
the bridge that takes an account over serves the kept requests its previous owner did not (those
received after that one released the account, or after its last lease renewal when it died), so
none is lost in a takeover. A bridge that dies may have served some of its last requests after its
last renewal: those are served again by the new owner (a send's client `id` makes that harmless: the
shared outbox answers it as a duplicate).

The shared subscription is held on a second connection with session expiry 0
(cluster/bridge_requests.py): a dead bridge's persistent session would otherwise stay a member of the
group and keep taking its turn of the requests, unanswered. The two subscriptions overlap
(`<base>/+/request/+` also matches bridge requests): their MQTT v5 subscription identifiers tell
which one delivered a message. A bridge request naming an account
(`pair`, `remove`, `restart_account`, `backup` with a `phone`) that another live bridge runs is
forwarded to that bridge (`<base>/bridge/instances/<id>/forward`, the request with its response
topic and correlation data), which serves it as if it had received it. Without MQTT v5 (the embedded broker:
one bridge only, in practice) there is neither: bridge requests are served by the first live bridge
by name, and account requests are routed the same way.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..mqtt.link import Incoming, MqttLink
from ..mqtt.topics import BRIDGE, RequestTopic, Topics
from .plan import Route, route_request

if TYPE_CHECKING:
    from .coordinator import Coordinator

log = logging.getLogger(__name__)

ACCOUNT_SUBSCRIPTION = 1
BRIDGE_SUBSCRIPTION = 2
FORWARD_SUBSCRIPTION = 3
ACCOUNT_BRIDGE_COMMANDS = frozenset({"pair", "remove", "restart_account", "backup"})  # those naming a `phone`
KEEP_LIMIT = 1000  # requests kept per account of another bridge (or of none)
KEEP_BYTES = 64 << 20  # ... and their payloads in all

Kept = tuple[float, RequestTopic, Incoming]


class RequestGate:
    """Admits the requests this bridge serves; keeps the others a while for a takeover."""

    def __init__(self, coordinator: Coordinator, topics: Topics, link: MqttLink, hold_for: float, v5: bool = True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._coordinator = coordinator
        self._link = link
        self._v5 = v5
        self._topics = topics
        self._hold_for = hold_for
        self._clock = clock
        self._kept: dict[str, deque[Kept]] = {}
        self._held_bridge: deque[Kept] = deque(maxlen=KEEP_LIMIT)  # bridge requests of accounts on the move
        self._kept_bytes = 0
        self.offer: Callable[[RequestTopic, Incoming], None] = lambda request, incoming: None  # set by the server

    @property
    def filters(self) -> list[tuple[str, int]]:
        base = self._topics.base
        forward = (self._forward_topic(self._coordinator.instance_id), FORWARD_SUBSCRIPTION)
        return [(f"{base}/+/request/+", ACCOUNT_SUBSCRIPTION), forward]

    @property
    def bridge_filter(self) -> str | None:
        """The shared subscription of bridge requests (MQTT v5), held on a connection of its own that
        leaves no session behind (cluster/bridge_requests.py); None without MQTT v5."""
        base = self._topics.base
        return f"$share/wa_mqtt_{base}/{base}/bridge/request/+" if self._v5 else None

    def _forward_topic(self, instance_id: str) -> str:
        return f"{self._topics.base}/{BRIDGE}/instances/{instance_id}/forward"

    def forwarded(self, incoming: Incoming) -> tuple[RequestTopic, Incoming] | None:
        """A bridge request another bridge forwarded here (it names an account this bridge runs), as
        it was first received; None for any other message."""
        if incoming.topic != self._forward_topic(self._coordinator.instance_id):
            return None
        try:
            envelope = json.loads(incoming.payload)
            correlation = envelope.get("correlation_data")
            original = Incoming(f"{self._topics.base}/{BRIDGE}/request/{envelope['command']}",
                                base64.b64decode(envelope["payload"]), envelope.get("response_topic"),
                                base64.b64decode(correlation) if correlation else None)
            return RequestTopic(BRIDGE, str(envelope["command"])), original
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("cluster: a forwarded request could not be read (%s); dropped", exc)
            return None

    def _bridge_route(self, request: RequestTopic, incoming: Incoming) -> tuple[Route, str | None]:
        """A bridge request this bridge received: SERVE it here, or (IGNORE, owner) to forward it to the
        bridge that runs the account it names, or HOLD it while that account has no owner."""
        if request.command not in ACCOUNT_BRIDGE_COMMANDS:
            return Route.SERVE, None
        try:
            phone = json.loads(incoming.payload).get("phone")
        except (ValueError, AttributeError):
            return Route.SERVE, None  # served here: the answer says what is wrong with it
        coordinator = self._coordinator
        if not isinstance(phone, str) or coordinator.owns(phone):
            return Route.SERVE, None
        owner = coordinator.view.owners.get(phone)
        if owner is not None and owner != coordinator.instance_id and owner in coordinator.view.live:
            return Route.IGNORE, owner
        if phone in coordinator.view.accounts:
            return Route.HOLD, None  # moving between bridges: until its new owner is known
        return Route.SERVE, None  # an account nobody has (a new one to pair, or an unknown one)

    def _forward(self, owner: str, request: RequestTopic, incoming: Incoming) -> None:
        envelope = {"command": request.command, "payload": base64.b64encode(incoming.payload).decode(),
                    "response_topic": incoming.response_topic,
                    "correlation_data": base64.b64encode(incoming.correlation_data).decode()
                    if incoming.correlation_data else None}
        self._link.publish(self._forward_topic(owner), json.dumps(envelope), qos=1)
        log.debug("cluster: %s forwarded to %s, which runs its account", request.command, owner)

    def admit(self, request: RequestTopic, incoming: Incoming) -> bool:
        """True: serve it now. False: another bridge does (a copy is kept for `hold_for` seconds, in
        case that one died and this one takes the account over)."""
        coordinator = self._coordinator
        me = coordinator.instance_id
        if request.is_bridge:
            mine = ((coordinator.view.live or [me])[0] == me if not self._v5
                    else BRIDGE_SUBSCRIPTION in incoming.subscription_ids)
            if not mine:
                return False
            route, owner = self._bridge_route(request, incoming)
            if owner is not None:
                self._forward(owner, request, incoming)
            elif route is Route.HOLD:
                self._held_bridge.append((self._clock(), request, incoming))
            return route is Route.SERVE
        if self._v5 and ACCOUNT_SUBSCRIPTION not in incoming.subscription_ids:
            return False
        # the target's owner only (not a copy of every account's, per request): this bridge when it runs
        # it; a lease still naming this bridge without it running counts as none
        owner = me if coordinator.owns(request.target) else coordinator.view.owners.get(request.target)
        if owner == me and not coordinator.owns(request.target):
            owner = None
        owners = {request.target: owner} if owner is not None else {}
        route = route_request(request.target, me, owners, coordinator.view.accounts,
                              coordinator.view.live or [me])
        if route is Route.SERVE:
            return True
        if request.target in coordinator.view.accounts or route is Route.HOLD:
            self._keep(request, incoming)
        return False

    def changed(self) -> None:
        """The cluster view changed: serve the kept requests of accounts that now run here and that
        their previous owner did not serve (received after it stopped serving; all of them when the
        account had no owner), and forget what is older than `hold_for`."""
        now = self._clock()
        running = self._coordinator.running
        since = self._coordinator.unserved_since
        held, self._held_bridge = self._held_bridge, deque(maxlen=KEEP_LIMIT)
        for at, request, incoming in held:
            route, owner = self._bridge_route(request, incoming)
            if owner is not None:
                self._forward(owner, request, incoming)
            elif route is Route.SERVE or now - at > self._hold_for:
                self.offer(request, incoming)  # runs here now; or waited too long: answered here
            else:
                self._held_bridge.append((at, request, incoming))
        for phone in list(self._kept):
            queue = self._kept[phone]
            if phone in running:
                del self._kept[phone]
                cutoff = since.pop(phone, now)
                due = [(request, incoming) for at, request, incoming in queue if at >= cutoff]
                self._kept_bytes -= sum(len(incoming.payload) for _, _, incoming in queue)
                if due:
                    log.info("cluster: %s: serving %d request(s) its previous owner did not", phone, len(due))
                for request, incoming in due:
                    self.offer(request, incoming)
                continue
            while queue and now - queue[0][0] > self._hold_for:
                self._kept_bytes -= len(queue.popleft()[2].payload)
            if not queue:
                del self._kept[phone]

    def _keep(self, request: RequestTopic, incoming: Incoming) -> None:
        queue = self._kept.setdefault(request.target, deque())
        if len(queue) >= KEEP_LIMIT:
            self._kept_bytes -= len(queue.popleft()[2].payload)
        queue.append((self._clock(), request, incoming))
        self._kept_bytes += len(incoming.payload)
        while self._kept_bytes > KEEP_BYTES and queue:
            self._kept_bytes -= len(queue.popleft()[2].payload)
