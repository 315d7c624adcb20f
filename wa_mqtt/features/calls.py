"""Incoming calls: each ringing call on `wa/<phone>/call` (Home Assistant shows it as an event entity),
and with `calls.reject` rejected at once, with the optional `calls.reply` text sent to the caller
through the send service (the same policy and outbox as a `send`).
"""

from __future__ import annotations

import logging

from .. import events as ev
from ..accounts.manager import AccountManager, UnknownAccount
from ..bus import EventBus
from ..config import Config
from ..engines.base import EngineError
from ..model import IncomingCall, OutgoingMessage, identity
from ..mqtt.api import encode
from ..mqtt.link import MqttLink
from ..mqtt.topics import Topics
from ..sending import SEND_REFUSALS, SendService
from ..tasks import BackgroundTasks

log = logging.getLogger(__name__)
OWNER = "calls"
DRAIN_TIMEOUT = 10.0  # seconds a stop waits for rejections and replies under way


class Calls:
    """Publishes calls; rejects and answers them as `calls` says."""

    def __init__(self, bus: EventBus, config: Config, topics: Topics, link: MqttLink, manager: AccountManager,
                 sending: SendService) -> None:
        self._bus = bus
        self._config = config
        self._topics = topics
        self._link = link
        self._manager = manager
        self._sending = sending
        self._tasks = BackgroundTasks(log)

    def start(self) -> None:
        self._bus.subscribe(ev.CallReceived, self._on_call, OWNER)
        self._bus.subscribe(ev.ConfigReloaded, self._on_config, OWNER)

    async def drain(self) -> None:
        await self._tasks.finish(DRAIN_TIMEOUT)

    async def stop(self) -> None:
        self._bus.unsubscribe(OWNER)

    def _on_config(self, event: ev.ConfigReloaded) -> None:
        self._config = event.config

    def _on_call(self, event: ev.CallReceived) -> None:
        call = event.call
        log.info("%s: %s call %s from %s", event.phone, "video" if call.video else "voice", call.id, call.from_)
        self._link.publish(self._topics.call(event.phone), encode(call.payload()), qos=1, durable=True)
        if self._config.calls.reject:
            self._tasks.spawn(self._reject(event.phone, call), f"reject-call-{event.phone}")

    async def _reject(self, phone: str, call: IncomingCall) -> None:
        try:
            supervisor = self._manager.get(phone)
            await supervisor.engine_call(lambda s: s.reject_call(call.from_jid, call.id))
        except (EngineError, UnknownAccount) as exc:
            log.warning("%s: call %s not rejected: %s", phone, call.id, exc)
            return
        log.info("%s: call %s rejected (calls.reject)", phone, call.id)
        reply = self._config.calls.reply
        if not reply or call.group is not None:
            return
        try:
            await self._sending.send_in_turn(phone, OutgoingMessage(to=identity(call.from_jid), text=reply),
                                             {"call": call.id})  # to the person: WhatsApp refuses a device JID
        except SEND_REFUSALS as exc:
            log.warning("%s: reply to call %s not sent: %s", phone, call.id, exc)
