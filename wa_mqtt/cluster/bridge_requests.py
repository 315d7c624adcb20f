"""The cluster's bridge-request subscription, on an MQTT connection of its own that leaves no session.

Bridge requests (`<base>/bridge/request/+`) reach one bridge of a cluster through an MQTT v5 shared
subscription (cluster/gate.py). The main link's session outlives its connection (SessionExpiryInterval
86400, so account requests sent during a restart still arrive), and a shared subscription in such a
session stays a member of the group after the bridge died: Mosquitto 2.0.11 keeps handing it its turn
of the requests (at QoS 0 as at QoS 1), where nobody answers them, until the session expires a day
later (measured: a SIGKILLed member took 3 of 6 requests). So the `$share` filter is subscribed here,
on a small second connection with a clean start and session expiry 0: the broker forgets the member as
soon as its connection drops, and the live bridges get every request. The answers still go out on the
main link. The cost (docs/scaling.md): a bridge request published while no bridge is connected is
dropped by the broker instead of waiting in a session; the client's timeout says so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ..config import MqttConfig
from ..config_secrets import mask_url
from ..mqtt.broker import Backoff
from ..mqtt.link import Incoming, broker_address, tls_context_for
from ..mqtt.paho_client import incoming_of

log = logging.getLogger(__name__)


class BridgeRequestLink:
    """Holds the `$share` bridge-request subscription on its own connection. `run()` until cancelled."""

    def __init__(self, config: MqttConfig, url: str, topic_filter: str, subscription_id: int,
                 on_message: Callable[[Incoming], Awaitable[None]]) -> None:
        self._config = config
        self._url = url
        self._url_for_logs = mask_url(url)
        self._filter = topic_filter
        self._subscription_id = subscription_id
        self._on_message = on_message
        self._subscribed = asyncio.Event()  # the first SUBACK came (whatever it said)

    async def wait_subscribed(self) -> None:
        """Until the first subscription was answered (or the first attempt failed): the bridge says
        `online` only after it."""
        await self._subscribed.wait()

    def _client(self) -> aiomqtt.Client:
        address = broker_address(self._url)
        return aiomqtt.Client(
            address.host, address.port, username=address.username, password=address.password,
            identifier=f"{self._config.client_id}-requests",
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=True,  # session expiry 0 (the default): the session ends with the connection
            keepalive=self._config.keepalive,
            tls_context=tls_context_for(self._config) if address.tls else None,
            logger=log.getChild("client"))

    async def run(self) -> None:
        backoff = Backoff()
        while True:
            try:
                async with self._client() as client:
                    props = Properties(PacketTypes.SUBSCRIBE)  # type: ignore[no-untyped-call]  # paho: no annotations
                    props.SubscriptionIdentifier = self._subscription_id
                    granted = await client.subscribe(self._filter, options=SubscribeOptions(qos=1),
                                                     properties=props)
                    if any(getattr(code, "value", 0) >= 0x80 for code in granted or ()):
                        log.error("MQTT broker refused the bridge-request subscription %s (%s): this bridge "
                                  "answers no bridge request; check the broker's access rules", self._filter, granted)
                    self._subscribed.set()
                    backoff.reset()
                    log.debug("cluster: bridge requests subscribed on their own connection (%s)", self._filter)
                    async for message in client.messages:
                        await self._on_message(incoming_of(message, (self._subscription_id,)))
            except aiomqtt.MqttError as exc:
                self._subscribed.set()  # the main link is not held up by this one's trouble
                log.warning("MQTT broker %s: the bridge-request connection dropped (%s); retrying in %.1f s",
                            self._url_for_logs, exc, backoff.delay)
            await backoff.wait()
