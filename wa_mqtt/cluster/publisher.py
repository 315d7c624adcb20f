"""The cluster on MQTT (retained): `<base>/bridge/instances/<id>` lists the accounts each live bridge
runs, `<base>/bridge/instances/<id>/state` is its own `online`/`offline` (its MQTT will), and
`<base>/bridge/state` stays `online` while any bridge of the cluster is. A bridge seen dead (its row
expired) has its topics cleared by the others. Each bridge's `bridge/info` and `bridge/accounts`
move under `bridge/instances/<id>/` (InstanceTopics)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..mqtt.link import MqttLink
from ..mqtt.topics import Topics

if TYPE_CHECKING:
    from .coordinator import Coordinator

log = logging.getLogger(__name__)


def instance_topic(topics: Topics, instance_id: str) -> str:
    return f"{topics.base}/bridge/instances/{instance_id}"


def instance_state_topic(topics: Topics, instance_id: str) -> str:
    return f"{instance_topic(topics, instance_id)}/state"


@dataclass(frozen=True)
class InstanceTopics(Topics):
    """The topics of one bridge of a cluster: `bridge/info` and `bridge/accounts` are its own view, so
    they move under `bridge/instances/<id>/` (each bridge would overwrite the others' otherwise)."""

    instance_id: str = ""

    @property
    def bridge_info(self) -> str:
        return f"{instance_topic(self, self.instance_id)}/info"

    @property
    def bridge_accounts(self) -> str:
        return f"{instance_topic(self, self.instance_id)}/accounts"


class ClusterPublisher:
    """Publishes the cluster's topics each time the coordinator's view changes (at least every round)."""

    def __init__(self, coordinator: Coordinator, topics: Topics, link: MqttLink) -> None:
        self._coordinator = coordinator
        self._topics = topics
        self._link = link
        self._seen_live: set[str] = set()

    def update(self) -> None:
        coordinator = self._coordinator
        me = coordinator.instance_id
        body = {"instance_id": me, "accounts": sorted(coordinator.running), "takeover_after": coordinator.ttl}
        self._link.set_retained(instance_topic(self._topics, me), json.dumps(body, separators=(",", ":")))
        self._link.set_retained(self._topics.bridge_state, b"online", force=True)
        live = set(coordinator.view.live) | {me}
        for gone in sorted(self._seen_live - live):
            log.info("cluster: bridge %s is gone (its registration expired); clearing its topics", gone)
            self._link.set_retained(instance_topic(self._topics, gone), b"", force=True)
            self._link.set_retained(instance_state_topic(self._topics, gone), b"offline", force=True)
        self._seen_live = live

    def leave(self, last: bool) -> None:
        """A clean shutdown: this bridge runs nothing now; `last`: the cluster goes offline with it."""
        me = self._coordinator.instance_id
        self._link.set_retained(instance_topic(self._topics, me), b"", force=True)
        if last:
            self._link.set_retained(self._topics.bridge_state, b"offline", force=True)
