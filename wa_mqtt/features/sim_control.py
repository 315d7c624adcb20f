"""Sim control, present only with `engine: sim`: the `wa/sim/<phone>/<action>` topics drive the
simulated WhatsApp of an account (a scan, an incoming message, an outage...), and what the sim engine
hands to its simulated WhatsApp is published on `wa/sim/<phone>/sent` (durable).

A control is carried out before the next MQTT message is looked at (`MqttMessageReceived.hold`), so a
request sent after it is served after it, as tests and scripts rely on.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .. import events as ev
from ..bus import EventBus
from ..engines.base import EngineError
from ..mqtt.api import encode
from ..mqtt.link import MqttLink
from ..mqtt.topics import Topics, parse_sim_topic

if TYPE_CHECKING:
    from ..accounts.manager import AccountManager

log = logging.getLogger(__name__)
OWNER = "sim control"


class SimControl:
    """The sim's control topics and its `sent` publishes."""

    def __init__(self, bus: EventBus, topics: Topics, link: MqttLink, manager: AccountManager) -> None:
        self._bus = bus
        self._topics = topics
        self._link = link
        self._manager = manager
        self._accepting = False

    def start(self) -> None:
        self._accepting = True
        self._link.subscribe(self._topics.sim_filter)
        self._bus.subscribe(ev.MqttMessageReceived, self._on_mqtt, OWNER)
        self._bus.subscribe(ev.SimSent, self._on_sent, OWNER)

    async def drain(self) -> None:
        """Take no more controls (those taken were awaited by the link); `sent` is still published."""
        self._accepting = False

    async def stop(self) -> None:
        self._bus.unsubscribe(OWNER)

    def _on_mqtt(self, event: ev.MqttMessageReceived) -> None:
        sim = parse_sim_topic(self._topics, event.message.topic)
        if sim is not None and self._accepting:
            event.hold(self._control(sim.phone, sim.action, event.message.payload))

    async def _control(self, phone: str, action: str, payload: bytes) -> None:
        supervisor = self._manager.find(phone)
        if supervisor is None:
            if self._manager.runs_elsewhere(phone):  # another bridge of the cluster runs it, and carries it out
                return
            log.warning("sim: no account %s for %s", phone, action)
            return
        try:
            await supervisor.sim_control(action, payload)
        except EngineError as exc:
            log.warning("sim %s/%s refused: %s", phone, action, exc)

    def _on_sent(self, event: ev.SimSent) -> None:
        payload = event.payload  # the engine's dict as it is; any other mapping as a dict, which JSON takes
        self._link.publish(self._topics.sim_sent(event.phone), encode(payload if isinstance(payload, dict) else dict(payload)),
                           qos=1, durable=True)
