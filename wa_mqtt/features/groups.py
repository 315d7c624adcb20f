"""Groups on MQTT: each account's joined groups as the retained `wa/<phone>/groups` (refreshed whenever
the engine reports the list: on connect and after a change), and group events on `wa/<phone>/event`.

The engines report; this publishes. Home Assistant shows the list as a diagnostic sensor
(mqtt/discovery.py), MQTT Explorer as a retained topic, so every group's JID is at hand.
"""

from __future__ import annotations

import logging

from .. import events as ev
from ..bus import EventBus
from ..mqtt.api import encode
from ..mqtt.link import MqttLink
from ..mqtt.topics import Topics

log = logging.getLogger(__name__)
OWNER = "groups"


def groups_payload(event: ev.GroupsChanged) -> dict[str, object]:
    """`wa/<phone>/groups`: `{"count", "groups": [{"jid", "name", "participants", "is_admin"}]}`, by name."""
    groups = sorted(event.groups, key=lambda g: ((g.name or "").casefold(), g.jid))
    return {"count": len(groups), "groups": [group.model_dump(mode="json") for group in groups]}


class GroupsPublisher:
    """Publishes the groups list and group events; clears the list of a removed account."""

    def __init__(self, bus: EventBus, topics: Topics, link: MqttLink) -> None:
        self._bus = bus
        self._topics = topics
        self._link = link

    def start(self) -> None:
        self._bus.subscribe(ev.GroupsChanged, self._on_groups, OWNER)
        self._bus.subscribe(ev.GroupEventReceived, self._on_group_event, OWNER)
        self._bus.subscribe(ev.AccountDropped, self._on_dropped, OWNER)

    async def drain(self) -> None:
        pass

    async def stop(self) -> None:
        self._bus.unsubscribe(OWNER)

    def _on_groups(self, event: ev.GroupsChanged) -> None:
        log.debug("%s: %d groups", event.phone, len(event.groups))
        self._link.set_retained(self._topics.groups(event.phone), encode(groups_payload(event)))

    def _on_group_event(self, event: ev.GroupEventReceived) -> None:
        log.info("%s: %s in %s", event.phone, event.event.type, event.event.group)
        self._link.publish(self._topics.account_event(event.phone), encode(event.event.payload()), qos=1, durable=True)

    def _on_dropped(self, event: ev.AccountDropped) -> None:
        self._link.set_retained(self._topics.groups(event.phone), b"")
