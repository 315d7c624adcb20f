"""Auto-replies at run time: each new incoming message is matched against the `auto_reply` rules
(automations.py, pure) and the planned reply goes out through the send service, the same path as a
`send` request: the same policy, the outbox, the account's turn. Each is reported on `bridge/event`
(`auto_reply`), sent or queued now, and again when a queued one is delivered or given up.

An AI rule's reply (ai/) is asked first, outside the account's turn, while the account shows typing;
no answer (timeout, error) sends the rule's `fallback` or nothing, and is logged and reported on
`bridge/event` (`ai_error`). Limits and loop guards counted it when it was planned, like any reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable
from datetime import datetime

from .. import events as ev
from ..accounts.manager import UnknownAccount
from ..ai.http import AiError
from ..ai.memory import FILE_NAME as AI_MEMORY_FILE
from ..ai.memory import ChatMemory
from ..ai.responder import Responder
from ..automations import PlannedReply, ReplyHistory, decide
from ..bus import EventBus
from ..config import Config
from ..engines.base import EngineError
from ..model import OutgoingMessage
from ..sending import SEND_REFUSALS, SendService
from ..tasks import BackgroundTasks

log = logging.getLogger(__name__)
OWNER = "auto-reply"
DRAIN_TIMEOUT = 10.0  # seconds a stop waits for the replies being sent
TYPING_EVERY = 10.0  # seconds between two "composing" while an AI answer is awaited (WhatsApp drops it after ~25 s)


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
        self._responder: Responder | None = None  # AI rules: opened on the first one planned
        self._memory: ChatMemory | None = None
        self._ai_turns: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}  # (account, chat) → turn, users

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
        if self._responder is not None:
            await self._responder.close()
            self._responder = None
        if self._memory is not None:
            self._memory.close()
            self._memory = None

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
            key = f"auto:{message.id}:{reply.rule}"
            if reply.ai is not None:
                self._tasks.spawn(self._ai_reply(phone, reply, now, key), f"ai-reply-{phone}")
                continue
            outgoing = reply.to_outgoing(key=key)
            self._tasks.spawn(self._send(phone, reply.rule, outgoing), f"auto-reply-{phone}")

    def _ai(self) -> Responder:
        if self._responder is None:
            try:
                self._memory = ChatMemory(self._config.data_dir / AI_MEMORY_FILE)
            except (OSError, sqlite3.Error) as exc:
                log.warning("AI memory %s cannot be opened (%s); answering without history",
                            self._config.data_dir / AI_MEMORY_FILE, exc)
            self._responder = Responder(self._memory, self._clock)
        return self._responder

    async def _ai_reply(self, phone: str, reply: PlannedReply, planned_at: datetime, key: str) -> None:
        """One chat's AI replies one at a time, in arrival order: each sees the history the one before left."""
        chat = (phone, reply.chat)
        turn, users = self._ai_turns.get(chat, (asyncio.Lock(), 0))
        self._ai_turns[chat] = (turn, users + 1)
        try:
            async with turn:
                await self._ai_answer(phone, reply, planned_at, key)
        finally:
            turn, users = self._ai_turns[chat]
            if users == 1:
                del self._ai_turns[chat]  # nobody waiting: no lock kept for every chat ever answered
            else:
                self._ai_turns[chat] = (turn, users - 1)

    async def _ai_answer(self, phone: str, reply: PlannedReply, planned_at: datetime, key: str) -> None:
        """Ask the rule's provider while typing; send its answer, or the fallback (reported) when none came."""
        assert reply.ai is not None
        settings = reply.ai
        answered = asyncio.Event()
        typing = asyncio.create_task(self._keep_typing(phone, reply.chat, answered), name=f"ai-typing-{phone}")
        try:
            text = await self._ai().answer(settings, phone, reply.chat, reply.prompt,
                                           self._config.outgoing.max_text_chars)
            log.debug("%s: AI rule %r answered (%d characters)", phone, reply.rule, len(text))
        except AiError as exc:
            fallback = settings.fallback
            log.warning("%s: AI rule %r (%s) got no answer: %s; %s", phone, reply.rule, settings.provider, exc,
                        "sending its fallback" if fallback else "no reply (no fallback)")
            self._bus.emit(ev.AiReplyFailed(phone, reply.rule, reply.chat, settings.provider, str(exc),
                                            fallback is not None))
            text = fallback or ""
        finally:
            answered.set()  # not a cancel: an engine call under way is let finish, in its order
            await typing
        await self._typing(phone, reply.chat, "paused")
        if not text:
            return
        self._replies.record_answer(reply, planned_at, text)
        await self._send(phone, reply.rule, OutgoingMessage(to=reply.chat, text=text, id=key))

    async def _keep_typing(self, phone: str, chat: str, answered: asyncio.Event) -> None:
        """`composing` now and every TYPING_EVERY seconds until `answered`."""
        while not answered.is_set():
            await self._typing(phone, chat, "composing")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(answered.wait(), TYPING_EVERY)

    async def _typing(self, phone: str, chat: str, state: str) -> None:
        try:
            await self._sending.typing(phone, chat, state)
        except (EngineError, UnknownAccount) as exc:
            log.debug("%s: typing %s in %s not shown: %s", phone, state, chat, exc)

    async def _send(self, phone: str, rule: str, outgoing: OutgoingMessage) -> None:
        try:
            result = await self._sending.send_in_turn(phone, outgoing, reply_ref(rule))
        except SEND_REFUSALS as exc:
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
