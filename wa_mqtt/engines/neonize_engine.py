"""The real WhatsApp engine: one neonize (whatsmeow) client per account, behind the EngineSession protocol.

This module is the engine and the session's WhatsApp calls and queries; the session mixes in its
lifecycle (neonize_lifecycle: connect, stop, recycle, pairing), its event handlers and ordered pump
(neonize_events) and its presence and groups refreshes (neonize_refresh). The WhatsApp calls (send,
react, read, typing) live in `neonize_calls`, translation in `neonize_convert` and `neonize_groups`, the
store's reading in `neonize_store`. Runs inside an engine child process
(`engines/process.py`); neonize is imported lazily, because importing it configures logging and
loads the Go library.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ErrorCode
from ..media import MediaPolicy
from ..model import Contact, GroupInfo, GroupSummary, NumberCheck, OutgoingMessage, SendResult
from . import neonize_calls as calls
from . import neonize_convert as conv
from . import neonize_groups as groups
from . import resolving
from .base import (
    EmitFn,
    EngineError,
    EngineEvent,
    GroupsUpdated,
    PairMethod,
)
from .incoming_media import MediaSaver
from .neonize_calls import engine_error
from .neonize_events import Deferred, NeonizeEventsMixin
from .neonize_lifecycle import FailureLog, NeonizeLifecycleMixin
from .neonize_refresh import NeonizeRefreshMixin
from .neonize_store import account_of, store_for
from .neonize_store import store_dsn as store_dsn  # re-exported: tests and benchmarks build DSNs with it
from .neonize_store import stored_device_jids as stored_device_jids  # re-exported (process.py, tests)
from .options import DownloadOptions, EngineOptions, Presence
from .poll_store import PollStore

if TYPE_CHECKING:
    from neonize.aioze.client import NewAClient

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

def _utcnow() -> datetime:
    return datetime.now(UTC)



class NeonizeEngine:
    """Opens neonize sessions, one store per account; sizes the loop's executor for them."""

    name = "neonize"

    def __init__(self, *, clock: Clock = _utcnow, executor_workers: int = 32,
                 stop_timeout: float = 10.0, media_policy: MediaPolicy | None = None,
                 proxy: str | None = None, downloads: DownloadOptions | None = None, presence: Presence = "available",
                 pairing_stop_grace: float = 2.0, store_url: str | None = None) -> None:
        self._clock = clock
        self.store_url = store_url  # config `store.url`: each account's store in PostgreSQL (neonize_store.py)
        self.downloads = downloads or EngineOptions().downloads  # incoming media (config `media`)
        self.proxy = proxy  # config `proxy`: WhatsApp's websocket and media go through it
        self.presence: Presence = presence  # config `presence`: sent on every connect
        self.pairing_stop_grace = pairing_stop_grace  # how long a stop during pairing may take before a recycle
        self.media_policy = media_policy or EngineOptions().media.policy()  # the config's defaults
        self._executor_workers = executor_workers
        self._stop_timeout = stop_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sessions: set[NeonizeSession] = set()

    def has_device(self, store_path: Path) -> bool:
        try:
            return bool(store_for(self.store_url, account_of(store_path), store_path).device_jids())
        except sqlite3.DatabaseError as exc:
            log.warning("store %s unreadable: %s", store_path, exc)
            return False

    def open_session(self, phone: str, store_path: Path, emit: EmitFn) -> NeonizeSession:
        session = NeonizeSession(phone, Path(store_path), emit, engine=self)
        self._sessions.add(session)
        return session

    def session(self, phone: str) -> NeonizeSession | None:
        """The open session of an account (diagnostics and tests)."""
        return next((s for s in self._sessions if s.phone == phone), None)

    async def aclose(self) -> None:
        for session in list(self._sessions):
            await session.close()

    def _prepare_loop(self) -> None:
        """Point neonize's event dispatch at the running loop and give the loop enough threads
        (a running client holds one default-executor thread for its whole life)."""
        import neonize.aioze.events as neonize_events

        loop = asyncio.get_running_loop()
        neonize_events.event_global_loop = loop
        if loop is not self._loop:
            loop.set_default_executor(
                ThreadPoolExecutor(self._executor_workers, thread_name_prefix="neonize"))
            self._loop = loop

    def _forget(self, session: NeonizeSession) -> None:
        self._sessions.discard(session)


class NeonizeSession(NeonizeLifecycleMixin, NeonizeEventsMixin, NeonizeRefreshMixin):
    """One account's neonize client. `start` returns at once; outcomes arrive through `emit`."""

    def __init__(self, phone: str, store_path: Path, emit: EmitFn, *, engine: NeonizeEngine,
                 recent_limit: int = 500) -> None:
        self.phone = phone
        self.store_path = store_path
        self.store = store_for(engine.store_url, phone, store_path)  # its SQLite file or its PostgreSQL schema
        self._emit = emit
        self._engine = engine
        self._clock = engine._clock
        self._account = phone
        self._lock = asyncio.Lock()
        self._client: NewAClient | None = None
        self._watch: asyncio.Task[None] | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[EngineEvent | Deferred | None] | None = None
        self._pair_method: PairMethod = "qr"
        self._pair_code_asked = False
        self._stopping = False
        self._closed = False
        self._recent = calls.RecentMessages(recent_limit)
        self._device_key: bytes | None = None  # keys the messageSecret of idempotent sends (read once)
        self._lids: dict[str, str] = {}  # LID user → phone, as the store's LID map (or SenderAlt) told us
        self._numbers = resolving.NumberCache(self._clock)  # is_on_whatsapp answers (send, check)
        self._polls = PollStore.beside(store_path)  # the options of polls sent and seen, for their votes
        self._media = MediaSaver(engine.downloads, phone)
        self._downloads: set[asyncio.Task[None]] = set()
        self._group_names: dict[str, str] = {}  # group JID → subject (chat_name), from the groups list
        self._contact_names: dict[str, str] = {}  # user → saved or push name (chat_name), from the store
        self._refresh: asyncio.Task[None] | None = None
        self._logged_in = False  # a linked device: whatsmeow reconnects it by itself after a drop
        self._recycle_reason: str | None = None
        self._failure_log = FailureLog()
        self._side_tasks: set[asyncio.Task[None]] = set()

    @property
    def recycle_reason(self) -> str | None:
        """Why this process should be replaced (issue 14), else None: see `base.Recyclable`."""
        return self._recycle_reason

    @property
    def client(self) -> NewAClient | None:
        """The current neonize client (diagnostics and tests)."""
        return self._client

    # ------------------------------------------------------------ WhatsApp calls

    async def ping(self, timeout: float) -> None:
        """The watchdog's check: whatsmeow's `GetBlocklist`, one IQ to the server (`blocklist` get)
        answered with a short list, no side effect and no cache (privacy settings are cached)."""
        await calls.ping(self._require_client(), timeout)

    def _require_client(self) -> NewAClient:
        if self._client is None:
            raise EngineError("not connected", code=ErrorCode.NOT_CONNECTED)
        return self._client

    async def send(self, message: OutgoingMessage, message_id: str | None = None, retry: bool = False) -> SendResult:
        """Send; with `message_id`, idempotently (see neonize_calls): a retry of a message whatsmeow
        already handed to WhatsApp returns its id and sends nothing."""
        client = self._require_client()
        secret = await self._message_secret(message_id) if message_id is not None else None
        if retry and secret is not None:
            try:
                known = await asyncio.to_thread(self.store.sent_with_secret, secret)
            except sqlite3.Error as exc:
                log.warning("%s: cannot tell whether %s went out before (%s); sending it", self.phone, message_id, exc)
                known = None
            if known is not None:
                log.info("%s: message %s already went out as %s; not sent again", self.phone, message_id, known)
                if message.poll is not None:  # the try that sent it may have ended before remembering it
                    await asyncio.to_thread(self._remember_poll, known, message.poll.options)
                return SendResult(id=known, already_sent=True)
        try:
            to = await resolving.resolve(message.to, self._numbers, lambda phones: calls.is_on_whatsapp(client, phones))
            if to != message.jid:
                log.debug("%s: %s is %s on WhatsApp", self.phone, message.to, to)
            result = await calls.send(client, message, self._recent, self._engine.media_policy, self.phone, secret, to)
            if message.poll is not None:
                await asyncio.to_thread(self._remember_poll, result.id, message.poll.options)
            return result
        except EngineError:
            if secret is not None:
                try:
                    await asyncio.to_thread(self.store.forget_secret, secret)
                except sqlite3.Error as exc:
                    log.warning("%s: could not drop the record of failed send %s: %s", self.phone, message_id, exc)
            raise

    async def _message_secret(self, message_id: str) -> bytes | None:
        if self._device_key is None:
            try:
                self._device_key = await asyncio.to_thread(self.store.device_key)
            except sqlite3.Error as exc:
                log.warning("%s: store unreadable (%s)", self.phone, exc)
        if self._device_key is None:
            log.debug("%s: no device key in the store; %s is sent without a retry marker", self.phone, message_id)
            return None
        return calls.message_secret(self._device_key, message_id)

    async def check(self, numbers: list[str]) -> list[NumberCheck]:
        """Which numbers have a WhatsApp account, and their JIDs (cached, as for sends)."""
        client = self._require_client()
        return await resolving.check_numbers(numbers, self._numbers, lambda phones: calls.is_on_whatsapp(client, phones))

    async def react(self, chat: str, message_id: str, emoji: str, sender: str | None = None) -> str:
        return await calls.react(self._require_client(), self._recent, chat, message_id, emoji, sender)

    async def mark_read(self, chat: str, ids: list[str], sender: str | None = None) -> None:
        await calls.mark_read(self._require_client(), self._recent, chat, ids, sender)

    async def typing(self, chat: str, state: str) -> None:
        if state not in calls.TYPING_STATES:
            raise EngineError(f"state must be one of {', '.join(calls.TYPING_STATES)}", code=ErrorCode.INVALID_REQUEST)
        await calls.typing(self._require_client(), chat, state)

    async def groups(self) -> list[GroupSummary]:
        client = self._require_client()
        try:
            joined = await client.get_joined_groups()
        except Exception as exc:
            raise engine_error(exc) from exc
        summaries = [groups.group_summary(info, self._me()) for info in joined]
        self._group_names = {g.jid: g.name for g in summaries if g.name}
        self._put(GroupsUpdated(groups=summaries))  # the retained list follows what was just read
        return summaries

    async def group_info(self, jid: str) -> GroupInfo:
        client = self._require_client()
        try:
            return groups.group_info(await client.get_group_info(conv.parse_jid(jid)), self._lids)
        except Exception as exc:
            raise engine_error(exc) from exc

    async def contacts(self) -> list[Contact]:
        client = self._require_client()
        try:
            return [groups.contact(c) for c in await client.contact.get_all_contacts()]
        except Exception as exc:
            raise engine_error(exc) from exc

    async def edit(self, chat: str, message_id: str, text: str) -> str:
        client = self._require_client()
        return await calls.edit(client, await self._chat_of_send(client, chat), message_id, text)

    async def revoke(self, chat: str, message_id: str) -> str:
        client = self._require_client()
        return await calls.revoke(client, await self._chat_of_send(client, chat), message_id, self._account)

    async def _chat_of_send(self, client: NewAClient, chat: str) -> str:
        """The chat a send to `chat` went to (a phone as WhatsApp knows it: cached since that send), where
        an edit or a delete of that message must go."""
        return await resolving.resolve(chat, self._numbers, lambda phones: calls.is_on_whatsapp(client, phones))

    async def reject_call(self, caller: str, call_id: str) -> None:
        client = self._require_client()
        try:
            await client.reject_call(conv.parse_jid(caller), call_id)
        except Exception as exc:
            raise engine_error(exc) from exc
