"""The send service: every send, requested or automatic, passes the same policy on its way to an account.

Policy first (`outgoing.allow_to`, `outgoing.max_text_chars`, the media policy), then the account's
supervisor sends it now or queues it in the outbox. `allow_to` matches a recipient as written, or else
as WhatsApp knows the numbers (resolved by the account, so `5511988887777` allows `551188887777` when
WhatsApp knows both as one JID). A refusal is an `ApiError` and changes nothing.
Used by the request server and by auto-replies, so neither needs the other.

It also keeps each target's turn (`lock`): one account's requests and auto-replies are carried out one
at a time, in arrival order; different accounts concurrently. The bridge's own sends (auto-replies,
alerts, a call's reply) take their turn with `send_in_turn` and catch `SEND_REFUSALS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from .accounts.manager import UnknownAccount
from .config import Config
from .disk_full import DiskFull
from .engines.base import EngineError
from .engines.resolving import phone_of
from .errors import ErrorCode
from .events import Reply
from .media import MediaPolicy, MediaRefused, check_message
from .model import OutgoingMessage, SendOutcome, identity
from .mqtt.api import ApiError
from .mqtt.topics import BRIDGE

if TYPE_CHECKING:
    from .accounts.manager import AccountManager
    from .accounts.supervisor import Supervisor

log = logging.getLogger(__name__)

SEND_REFUSALS = (ApiError, EngineError, UnknownAccount, DiskFull)  # what `send` raises: nothing was sent


class SendService:
    """`await send(phone, message, reply)`; `reconfigure(config)` on a reload."""

    def __init__(self, manager: AccountManager, config: Config) -> None:
        self._manager = manager
        self._locks: dict[str, asyncio.Lock] = {}
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """A reloaded config: allow_to and the limits apply from the next send on."""
        self._config = config
        outgoing = config.outgoing
        # what every send compares, built once per config rather than per send
        self._allowed = None if outgoing.allow_to is None else frozenset(identity(a) for a in outgoing.allow_to)
        self._media_policy = MediaPolicy(outgoing.max_media_bytes, outgoing.media_dir, outgoing.block_private_urls)

    def lock(self, target: str) -> asyncio.Lock | contextlib.nullcontext[None]:
        """The turn of `target` (a phone, or `bridge`): hold it while acting on it. Only the bridge and
        existing accounts have one: a flood of made-up targets must not leave a lock behind for each."""
        lock = self._locks.get(target)
        if lock is not None:
            return lock
        if target == BRIDGE or self._manager.find(target) is not None:
            return self._locks.setdefault(target, asyncio.Lock())
        return contextlib.nullcontext()

    def _listed(self, recipient: str) -> bool:
        return self._allowed is None or identity(recipient) in self._allowed

    async def allow(self, phone: str, recipient: str, field: str = "to") -> None:
        """Raise `ApiError` (`forbidden`) unless `outgoing.allow_to` includes `recipient` as written, or as
        WhatsApp knows the numbers (resolved by account `phone`): the rule of every send, and of an edit
        or a delete in a chat (a message sent to a number as typed is edited in that chat however written)."""
        if not self._listed(recipient) and not await self._allowed_as_resolved(phone, recipient):
            raise ApiError(ErrorCode.FORBIDDEN, f"{field}: {recipient} is not in outgoing.allow_to")

    async def _allowed_as_resolved(self, phone: str, recipient: str) -> bool:
        """`outgoing.allow_to` compared as WhatsApp knows the numbers: the recipient and each listed phone
        resolved by the account (`check`, cached), so a listed phone allows that phone however it is
        written (Brazil's ninth digit). False when the account cannot ask (not connected)."""
        allow_to = self._config.outgoing.allow_to or []
        to_phone = phone_of(recipient)
        listed = [p for p in (phone_of(a) for a in allow_to) if p is not None]
        if to_phone is None or not listed:
            return False
        try:
            checks = await self._manager.get(phone).engine_call(lambda s: s.check([to_phone, *listed]))
        except EngineError as exc:
            log.info("%s: cannot resolve %s for outgoing.allow_to (%s)", phone, recipient, exc)
            return False
        resolved = checks[0].jid if checks else None
        return resolved is not None and resolved in {c.jid for c in checks[1:] if c.jid}

    def check_content(self, message: OutgoingMessage) -> None:
        """Raise `ApiError` when the text limit or the media policy refuses `message` (not `allow_to`)."""
        limit = self._config.outgoing.max_text_chars
        text = message.text
        if text is not None and len(text) > limit:
            raise ApiError(ErrorCode.TOO_LARGE, f"text: {len(text)} characters; the limit is {limit}")
        media = message.media
        if media is not None and media.caption is not None and len(media.caption) > limit:
            raise ApiError(ErrorCode.TOO_LARGE, f"{message.kind}.caption: {len(media.caption)} characters; the limit is {limit}")
        try:
            check_message(message, self._media_policy)
        except MediaRefused as exc:
            raise ApiError(exc.code, str(exc)) from None

    async def send(self, phone: str, message: OutgoingMessage, reply: Reply) -> SendOutcome:
        """Policy, then now or into the outbox; `reply` comes back in `SendCompleted` / `SendFailed`
        when a queued send is done. Raises `UnknownAccount`, `ApiError`, `EngineError`, `DiskFull`."""
        return await (await self.accept(phone, message, reply))

    async def send_in_turn(self, phone: str, message: OutgoingMessage, reply: Reply) -> SendOutcome:
        """`send` in `phone`'s turn (`lock`), behind the requests and sends before it: the bridge's own
        sends. Raises as `send` (`SEND_REFUSALS`)."""
        async with self.lock(phone):
            return await self.send(phone, message, reply)

    async def accept(self, phone: str, message: OutgoingMessage, reply: Reply) -> asyncio.Future[SendOutcome]:
        """`send` in two steps: policy and the outbox now, in the caller's turn (raising as `send`);
        the returned future is what became of it (an `EngineError` when the engine refused it). The
        turn may end once this returns: the account delivers its accepted sends in order."""
        supervisor, listed = self._checked(phone, message)
        if not listed:  # `allow` (a coroutine per send only when it has to resolve)
            await self.allow(phone, message.to)
        return await supervisor.accept(message, reply)

    def accept_now(self, phone: str, message: OutgoingMessage, reply: Reply) -> asyncio.Future[SendOutcome] | None:
        """`accept` when it need not wait, with the same policy and refusals (raised): None when it would
        have to (`allow_to` must be resolved by the account, or the account's pipeline is full), and then
        nothing was done: the caller `accept`s it instead. The request server's path for a plain send."""
        supervisor, listed = self._checked(phone, message)
        return supervisor.accept_now(message, reply) if listed else None

    def _checked(self, phone: str, message: OutgoingMessage) -> tuple[Supervisor, bool]:
        """The account (`UnknownAccount`), the content policy (`ApiError`), and whether `allow_to` lists
        the recipient as written (if not, `allow` decides)."""
        supervisor = self._manager.get(phone)
        self.check_content(message)
        return supervisor, self._listed(message.to)

    def turn_free(self, target: str) -> bool:
        """Nobody holds `target`'s turn (`lock`) or waits for it: what is done now, without an await, is
        done in that turn's order."""
        lock = self._locks.get(target)
        # asyncio.Lock's own queue (typed in typeshed): a waiter it woke owns the turn before it runs
        return lock is None or (not lock.locked() and not lock._waiters)

    async def typing(self, phone: str, chat: str, state: str) -> None:
        """Show (`composing`) or stop (`paused`) typing in `chat`; raises as `react` does (never queued)."""
        await self._manager.get(phone).engine_call(lambda session: session.typing(chat, state))
