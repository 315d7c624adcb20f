"""Home Assistant discovery: the retained device configs of the bridge and of each account.

Announced on every link (re)connect; all again (forced) when Home Assistant comes online (its birth
message); an account's again when a status change alters what is announced (linked or not, its name);
all when `notify` is reloaded; removed with the account. The payloads are built by `mqtt/discovery.py`
(pure); this extension only decides when.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .. import __version__
from .. import events as ev
from ..bus import EventBus
from ..config import Config
from ..model import AccountState, Status
from ..mqtt import discovery
from ..mqtt.link import MqttLink
from ..mqtt.topics import Topics

if TYPE_CHECKING:
    from ..accounts.manager import AccountManager

log = logging.getLogger(__name__)
OWNER = "home assistant discovery"


class HaDiscovery:
    """Started only with `mqtt.discovery` on (a restart-only setting)."""

    def __init__(self, bus: EventBus, config: Config, topics: Topics, link: MqttLink,
                 manager: AccountManager) -> None:
        self._bus = bus
        self._config = config
        self._topics = topics
        self._link = link
        self._manager = manager
        self._announced: dict[str, tuple[bool, str | None]] = {}  # phone -> (linked, name) last announced

    def start(self) -> None:
        self._link.subscribe(discovery.ha_status_topic(self._config.mqtt.discovery_prefix))
        on = self._bus.subscribe
        on(ev.LinkConnected, lambda _: self.announce(force=False), OWNER)
        on(ev.MqttMessageReceived, self._on_mqtt, OWNER)
        on(ev.StatusChanged, self._on_status, OWNER)
        on(ev.AccountDropped, self._on_dropped, OWNER)
        on(ev.ConfigReloaded, self._on_config, OWNER)

    async def drain(self) -> None:
        pass  # announces until the accounts are closed

    async def stop(self) -> None:
        self._bus.unsubscribe(OWNER)

    def announce(self, force: bool) -> None:
        """Discovery configs of the bridge and every account (retained); `force` republishes all."""
        prefix, base = self._config.mqtt.discovery_prefix, self._topics.base
        bridge_topic, bridge_payload = discovery.bridge_discovery(
            base_topic=base, discovery_prefix=prefix, version=__version__)
        self._link.set_retained(bridge_topic, discovery.encode(bridge_payload), force=force)
        for phone in self._manager.phones():
            supervisor = self._manager.find(phone)
            if supervisor is not None:
                self._announce_account(supervisor.status, force)

    def _announce_account(self, status: Status, force: bool = False) -> None:
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

    def _on_mqtt(self, event: ev.MqttMessageReceived) -> None:
        if discovery.is_ha_birth(self._config.mqtt.discovery_prefix, event.message.topic, event.message.payload):
            log.info("Home Assistant came online: announcing discovery again")
            self.announce(force=True)

    def _on_status(self, event: ev.StatusChanged) -> None:
        if self._manager.find(event.status.phone) is not None:
            self._announce_account(event.status)

    def _on_dropped(self, event: ev.AccountDropped) -> None:
        self._announced.pop(event.phone, None)
        for topic, payload in discovery.account_removal(
                discovery_prefix=self._config.mqtt.discovery_prefix, phone=event.phone):
            self._link.set_retained(topic, payload)

    def _on_config(self, event: ev.ConfigReloaded) -> None:
        notify_changed = event.config.notify != self._config.notify
        self._config = event.config
        if notify_changed:
            self._announced.clear()
            self.announce(force=False)
