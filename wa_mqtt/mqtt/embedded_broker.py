"""The embedded MQTT broker (amqtt, MQTT 3.1.1) started when `mqtt.url` is unset, corrected where amqtt
breaks MQTT.

amqtt 0.11.2-0.12.1, on every CONNECT, sends the connecting client the retained messages matching *every*
topic filter any client has subscribed to (`Broker._handle_client_session` loops over the broker-wide
`_subscriptions`), before and besides the ones its own SUBSCRIBE asks for. A Home Assistant subscribed to
`homeassistant/#` then receives `wa/<phone>/stats`, and a message matched by two clients' filters
arrives twice. MQTT sends retained messages only when a SUBSCRIBE establishes a subscription
[MQTT-3.3.1-6], [MQTT-3.8.4-3]; `EmbeddedBroker` does exactly that: it sends them from the SUBSCRIBE
handler and nowhere else. The fix offered upstream: docs/upstream/amqtt-retained-filter.md.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

from amqtt.broker import Broker
from amqtt.session import Session

log = logging.getLogger(__name__)

# True while the broker handles a SUBSCRIBE packet (context-local: one connection's task at a time).
_handling_subscribe: ContextVar[bool] = ContextVar("handling_subscribe", default=False)


class EmbeddedBroker(Broker):  # type: ignore[misc]  # amqtt ships no type information
    """amqtt's broker, sending retained messages only in answer to a SUBSCRIBE."""

    async def _handle_subscription(self, *args: Any, **kwargs: Any) -> None:
        token = _handling_subscribe.set(True)
        try:
            await super()._handle_subscription(*args, **kwargs)
        finally:
            _handling_subscribe.reset(token)

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int],
                                                          session: Session) -> None:
        if not _handling_subscribe.get():
            # amqtt's CONNECT path, with another client's filter: not a subscription of this client
            return
        await super()._publish_retained_messages_for_subscription(subscription, session)


async def start_embedded_broker(port: int) -> EmbeddedBroker:
    """Start the broker on 127.0.0.1:`port` (MQTT 3.1.1, anonymous); call `.shutdown()` to stop it."""
    broker = EmbeddedBroker({
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}", "max_connections": 256}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    })
    await broker.start()
    log.info("embedded MQTT broker listening on 127.0.0.1:%d (set mqtt.url to use your own broker)", port)
    return broker
