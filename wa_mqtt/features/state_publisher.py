"""The MQTT state publisher: what the accounts report, shown on MQTT.

Retained: each account's status, QR (text and PNG), pair code and stats; `bridge/info` and
`bridge/accounts` (these two, and each account's stats, at most once per SUMMARY_INTERVAL however many
accounts changed). Durable: incoming messages (each id once: duplicates re-delivered by WhatsApp are
dropped here; an undecryptable message does not hide the real one that follows under its id) and
receipts. Transient: `bridge/event`, built from the typed events by one table
(`bridge_event`), so its payloads are what they always were. A removed account's retained topics are cleared.
It decides nothing: it shows what the supervisors and the manager report.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from .. import __version__
from .. import events as ev
from ..bus import EventBus
from ..config import Config
from ..disk_full import DiskFullWatch
from ..model import IncomingMessage, utc_iso
from ..mqtt.api import encode
from ..mqtt.link import MqttLink
from ..mqtt.topics import Topics
from ..qr import qr_png
from ..store.protocols import SeenStore as SeenIds

if TYPE_CHECKING:
    from ..accounts.manager import AccountManager

log = logging.getLogger(__name__)
OWNER = "state publisher"
SUMMARY_INTERVAL = 0.25  # seconds between two publishes of bridge/accounts (or bridge/info) at most


def bridge_event(event: ev.Event) -> tuple[str, dict[str, object]]:
    """The `bridge/event` type and data of an event in BRIDGE_EVENTS: the contract's event stream."""
    match event:
        case ev.AccountAdded(phone=phone, state=state):
            return "account_added", {"phone": phone, "state": state.value}
        case ev.AccountRemoved(phone=phone):
            return "account_removed", {"phone": phone}
        case ev.Paired(phone=phone, linked_phone=linked, name=name):
            return "paired", {"phone": phone, "linked_phone": linked, "name": name}
        case ev.LoggedOut(phone=phone, reason=reason):
            return "logged_out", {"phone": phone, "reason": reason}
        case ev.EngineCrashed(phone=phone, error=error):
            return "engine_crashed", {"phone": phone, "error": error}
        case ev.StoreRestored(phone=phone, backup=backup, reason=reason):
            return "store_restored", {"phone": phone, "backup": backup, "reason": reason}
        case ev.LinkedOtherNumber(asked=asked, phone=phone, moved=moved):
            return "linked_other_number", {"asked": asked, "phone": phone, "moved": moved}
        case ev.AutoReplySent(phone=phone, rule=rule, chat=chat, id=id_, queued=queued):
            return "auto_reply", {"phone": phone, "rule": rule, "chat": chat, "id": id_, "queued": queued}
        case ev.AutoReplyDelivered(phone=phone, rule=rule, id=id_):
            return "auto_reply", {"phone": phone, "rule": rule, "status": "ok",
                                  "data": {"id": id_, "queued": False, "from_queue": True}}
        case ev.AutoReplyFailed(phone=phone, rule=rule, code=code, error=error):
            return "auto_reply", {"phone": phone, "rule": rule, "status": "error", "code": code, "error": error}
        case ev.AiReplyFailed(phone=phone, rule=rule, chat=chat, provider=provider, error=error, fallback=fallback):
            return "ai_error", {"phone": phone, "rule": rule, "chat": chat, "provider": provider, "error": error,
                                "fallback": fallback}
        case ev.ConfigReloaded(changed=changed, restart_required=restart):
            return "config_reloaded", {"changed": changed, "restart_required": restart}
        case ev.ConfigInvalid(error=error):
            return "config_invalid", {"error": error}
        case ev.AlertRaised(phone=phone, state=state, error_code=code, since=since):
            return "alert", {"phone": phone, "state": state.value, "error_code": code, "since": utc_iso(since)}
        case ev.AlertCleared(phone=phone, since=since):
            return "recovered", {"phone": phone, "since": utc_iso(since)}
    raise ValueError(f"{type(event).__name__} is not a bridge/event")


def dedup_key(message: IncomingMessage) -> str:
    """The id a message is deduplicated by. An undecryptable message has its own key: whatsmeow asks the
    sender to send it again, and the real message that follows under the same id must be published too
    (an undecryptable one after the real message is dropped: the caller checks the plain id as well)."""
    return f"{message.id}#undecryptable" if message.type == "undecryptable" else message.id


BRIDGE_EVENTS: tuple[type, ...] = (
    ev.AccountAdded, ev.AccountRemoved, ev.Paired, ev.LoggedOut, ev.EngineCrashed, ev.StoreRestored,
    ev.LinkedOtherNumber, ev.AutoReplySent, ev.AutoReplyDelivered, ev.AutoReplyFailed, ev.ConfigReloaded,
    ev.ConfigInvalid, ev.AiReplyFailed, ev.AlertRaised, ev.AlertCleared,
)


class StatePublisher:
    """Publishes account and bridge state; see the module docstring."""

    def __init__(self, bus: EventBus, config: Config, topics: Topics, link: MqttLink, manager: AccountManager,
                 seen: SeenIds, started_at: datetime, disk: DiskFullWatch | None = None) -> None:
        self._bus = bus
        self._config = config
        self._topics = topics
        self._link = link
        self._manager = manager
        self._seen = seen
        self._started_at = started_at
        self._disk = disk
        self._scheduled: set[str] = set()
        self._last_summary: dict[str, float] = {}  # loop time of the last publish of each summary

    def start(self) -> None:
        on = self._bus.subscribe
        on(ev.LinkConnected, lambda _: self.publish_info(), OWNER)
        on(ev.StatusChanged, self._on_status, OWNER)
        on(ev.StatsChanged, lambda e: self._soon(f"stats-{e.phone}", lambda: self._publish_stats(e.phone)), OWNER)
        on(ev.AccountsChanged, lambda _: self._soon("info", self.publish_info), OWNER)
        on(ev.AccountDropped, self._on_dropped, OWNER)
        on(ev.MessageReceived, self._on_message, OWNER)
        on(ev.ReceiptReceived, self._on_receipt, OWNER)
        on(ev.PairingOffered, self._on_pairing, OWNER)
        on(ev.PairingCleared, self._on_pairing_cleared, OWNER)
        on(ev.ConfigReloaded, self._on_config, OWNER)
        on(ev.LogLevelChanged, lambda _: self.publish_info(), OWNER)
        for event_type in BRIDGE_EVENTS:
            on(event_type, self._bridge_event, OWNER)

    async def drain(self) -> None:
        pass  # shows state until the accounts are closed

    async def stop(self) -> None:
        """The account list published now (at shutdown: before `offline`, not after a summary delay)."""
        self._bus.unsubscribe(OWNER)
        self._publish_accounts()

    # -- bridge-wide --------------------------------------------------------------------------------
    def publish_info(self) -> None:
        self._link.set_retained(self._topics.bridge_info, encode({
            "version": __version__, "engine": self._config.engine, "started_at": utc_iso(self._started_at),
            "base_topic": self._topics.base, "accounts": self._manager.phones(), "config": self._config.masked(),
            "log_level": logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower(),
        }))
        self._publish_accounts()

    def _publish_accounts(self) -> None:
        self._link.set_retained(self._topics.bridge_accounts, encode(self._manager.summary()))

    def _on_config(self, event: ev.ConfigReloaded) -> None:
        self._config = event.config
        self.publish_info()

    def _bridge_event(self, event: ev.Event) -> None:
        type_, payload = bridge_event(event)
        log.info("event %s %s", type_, payload.get("phone", ""))
        self._link.publish(self._topics.bridge_event, encode({"type": type_, "data": payload}), qos=1)
        self._bus.emit(ev.BridgeEventPublished(type_, payload))

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

    # -- one account --------------------------------------------------------------------------------
    def _on_status(self, event: ev.StatusChanged) -> None:
        status = event.status
        self._link.set_retained(self._topics.status(status.phone), encode(status.payload()))
        if self._manager.find(status.phone) is not None:
            self._soon("accounts", self._publish_accounts)
            self._publish_stats(status.phone)

    def _publish_stats(self, phone: str) -> None:
        supervisor = self._manager.find(phone)
        if supervisor is not None:
            self._link.set_retained(self._topics.stats(phone), encode({
                "messages_in": supervisor.messages_in, "messages_out": supervisor.messages_out,
                "reconnects": supervisor.account.reconnects}))

    def _on_message(self, event: ev.MessageReceived) -> None:
        phone, message = event.phone, event.message
        key = dedup_key(message)
        if self._seen.seen(phone, key, None if key == message.id else message.id):  # one query for both
            log.debug("%s: duplicate message %s dropped", phone, message.id)
            return
        # spooled (or held in memory while the disk is full), then its id remembered, never on disk
        # before the message: a crash in between repeats the message rather than losing it
        self._link.publish(self._topics.message(phone), encode(message.payload()), qos=1, durable=True)
        self._seen.remember(phone, key, hold=self._disk is not None and self._disk.error is not None)
        self._bus.emit(ev.MessagePublished(phone, message))

    def _on_receipt(self, event: ev.ReceiptReceived) -> None:
        self._link.publish(self._topics.receipt(event.phone), encode(event.receipt.payload()), qos=1, durable=True)

    def _on_pairing(self, event: ev.PairingOffered) -> None:
        phone, code = event.phone, event.code
        if event.kind == "qr" and code:
            self._link.set_retained(self._topics.qr(phone), code)
            self._link.set_retained(self._topics.qr_image(phone), qr_png(code))
            log.info("%s: QR code on offer on %s", phone, self._topics.qr(phone))
        elif event.kind == "code" and code:
            self._link.set_retained(self._topics.pair_code(phone), code)
            log.info("%s: pair code on offer on %s", phone, self._topics.pair_code(phone))
        else:
            self._clear_pairing(phone)

    def _on_pairing_cleared(self, event: ev.PairingCleared) -> None:
        self._clear_pairing(event.phone)

    def _clear_pairing(self, phone: str) -> None:
        for topic in (self._topics.qr(phone), self._topics.qr_image(phone), self._topics.pair_code(phone)):
            self._link.set_retained(topic, b"")

    def _on_dropped(self, event: ev.AccountDropped) -> None:
        phone = event.phone
        for topic in (self._topics.status(phone), self._topics.qr(phone), self._topics.qr_image(phone),
                      self._topics.pair_code(phone), self._topics.stats(phone)):
            self._link.set_retained(topic, b"")
        self._last_summary.pop(f"stats-{phone}", None)
