"""Auto-replies at run time: each new incoming message is matched against the `auto_reply` rules
(automations.py, pure) and the planned reply goes out through the send service, the same path as a
`send` request: the same policy, the outbox, the account's turn. Each is reported on `bridge/event`
(`auto_reply`), sent or queued now, and again when a queued one is delivered or given up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from .. import events as ev
from ..accounts.manager import UnknownAccount
from ..automations import ReplyHistory, decide
from ..bus import EventBus
from ..config import Config
from ..disk_full import DiskFull
from ..engines.base import EngineError
from ..model import OutgoingMessage
from ..mqtt.api import ApiError
from ..sending import SendService
from ..tasks import BackgroundTasks

log = logging.getLogger(__name__)
OWNER = "auto-reply"
DRAIN_TIMEOUT = 10.0  # seconds a stop waits for the replies being sent


def reply_ref(rule: str) -> ev.Reply:
    """The reply reference of an auto-reply's send: the rule, reported when a queued one is done."""
    return {"auto_reply": rule}


class AutoReply:
    """Replies by the rules; see the module docstring."""

    def __init__(self, bus: EventBus, config: Config, sending: SendService, clock: Callable[[], datetime]) -> None:
        self._bus = bus
        self._config = config
        self._sending = sending
        self._clock = clock
        self._replies = ReplyHistory()
        self._tasks = BackgroundTasks(log)  # replies being sent
        self._accepting = False

    def start(self) -> None:
        self._accepting = True
        self._bus.subscribe(ev.MessagePublished, self._on_message, OWNER)
        self._bus.subscribe(ev.SendCompleted, self._on_send_completed, OWNER)
        self._bus.subscribe(ev.SendFailed, self._on_send_failed, OWNER)
        self._bus.subscribe(ev.ConfigReloaded, self._on_config, OWNER)

    async def drain(self) -> None:
        """Plan no more replies; finish sending those planned (bounded)."""
        self._accepting = False
        await self._tasks.finish(DRAIN_TIMEOUT)

    async def stop(self) -> None:
        self._bus.unsubscribe(OWNER)

    def _on_config(self, event: ev.ConfigReloaded) -> None:
        self._config = event.config

    def _on_message(self, event: ev.MessagePublished) -> None:
        """Plan replies with the rules (pure) and send them through the same path, outbox included."""
        if not self._config.auto_reply or not self._accepting:
            return
        phone, message = event.phone, event.message
        now = self._clock()
        planned = decide(self._config.auto_reply, message, self._replies, now, self._config.auto_reply_limits)
        self._replies.record_incoming(message, now)
        for reply in planned:
            self._replies.record_reply(reply, now)
            outgoing = reply.to_outgoing(key=f"auto:{message.id}:{reply.rule}")
            self._tasks.spawn(self._send(phone, reply.rule, outgoing), f"auto-reply-{phone}")

    async def _send(self, phone: str, rule: str, outgoing: OutgoingMessage) -> None:
        async with self._sending.lock(phone):
            try:
                result = await self._sending.send(phone, outgoing, reply_ref(rule))
            except (ApiError, EngineError, UnknownAccount, DiskFull) as exc:
                log.warning("%s: auto-reply %r not sent: %s", phone, rule, exc)
                return
        log.info("%s: auto-reply %r %s", phone, rule, "queued" if result.queued else "sent")
        self._bus.emit(ev.AutoReplySent(phone, rule, outgoing.to, result.id, result.queued))

    def _on_send_completed(self, event: ev.SendCompleted) -> None:
        if isinstance(rule := event.reply.get("auto_reply"), str):
            self._bus.emit(ev.AutoReplyDelivered(event.phone, rule, event.id))

    def _on_send_failed(self, event: ev.SendFailed) -> None:
        if isinstance(rule := event.reply.get("auto_reply"), str):
            self._bus.emit(ev.AutoReplyFailed(event.phone, rule, event.code, event.error))
