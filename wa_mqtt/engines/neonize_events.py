"""A neonize session's events: the handlers registered on a client and the ordered pump to `emit`.

Handlers translate (neonize_convert, neonize_groups) and enqueue without awaiting, so the queue keeps
Go's order; what needs a Go call first (LID lookups in the store's LID map, a poll vote's decryption)
is queued as a deferred the pump awaits in its place. Media downloads run beside the pump.
`NeonizeEventsMixin` is mixed into `neonize_engine.NeonizeSession`, which owns the state.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..model import IncomingMessage
from . import neonize_calls as calls
from . import neonize_convert as conv
from . import neonize_groups as groups
from .addressing import LID_SERVER, lids_in, user_of
from .base import (
    CallReceived,
    Connected,
    Degraded,
    Disconnected,
    EngineError,
    EngineEvent,
    GroupChanged,
    MessageReceived,
    Paired,
    ReceiptReceived,
)

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from datetime import datetime

    from google.protobuf.message import Message as Proto
    from neonize.aioze.client import NewAClient

    from .base import EmitFn
    from .incoming_media import MediaSaver
    from .poll_store import PollStore

# an event whose translation waits for LID lookups; the pump awaits it in its place, keeping Go's order
Deferred = Callable[[], Awaitable[EngineEvent | None]]
LID_CACHE_LIMIT = 50_000
_STATUS_EVENTS = ("ConnectedEv", "DisconnectedEv", "LoggedOutEv", "StreamReplacedEv", "TemporaryBanEv",
                  "ConnectFailureEv", "ClientOutdatedEv", "KeepAliveTimeoutEv", "KeepAliveRestoredEv",
                  "PairStatusEv")


log = logging.getLogger(__name__)



class NeonizeEventsMixin:
    """The handlers and the pump; the state below is `NeonizeSession`'s."""

    phone: str
    _emit: EmitFn
    _clock: Callable[[], datetime]
    _account: str
    _lock: asyncio.Lock
    _client: NewAClient | None
    _pump_task: asyncio.Task[None] | None
    _queue: asyncio.Queue[EngineEvent | Deferred | None] | None
    _stopping: bool
    _closed: bool
    _logged_in: bool
    _recent: calls.RecentMessages
    _lids: dict[str, str]
    _polls: PollStore
    _media: MediaSaver
    _downloads: set[asyncio.Task[None]]
    _group_names: dict[str, str]

    if TYPE_CHECKING:
        async def _on_qr(self, client: NewAClient, data: bytes) -> None: ...
        def _login_status_callback(self, client: NewAClient) -> Callable[[int, int], None]: ...
        def _chat_name(self, message: IncomingMessage) -> str | None: ...
        def _me(self) -> list[str]: ...
        def _refresh_groups(self, contacts: bool = False) -> None: ...
        def _spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...
        async def _send_presence(self, client: NewAClient) -> None: ...

    def _ensure_pump(self) -> None:
        if self._pump_task is None:
            self._queue = asyncio.Queue()
            self._pump_task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        assert self._queue is not None
        while (item := await self._queue.get()) is not None:
            if callable(item):  # a LID lookup or a poll vote's decryption, in its place in Go's order
                try:
                    event = await item()
                except Exception:
                    log.exception("%s: a deferred event failed", self.phone)
                    continue
                if event is None:
                    continue
            else:
                event = item
            try:
                self._emit(event)
            except Exception:
                log.exception("%s: emit failed for %s", self.phone, event.kind)

    def _put(self, event: EngineEvent | Deferred) -> None:
        if self._queue is not None and not self._closed:
            self._queue.put_nowait(event)

    def _register(self, client: NewAClient) -> None:
        """Every handler before connect(): Go forwards only event types that had one then.
        Handlers translate and enqueue without awaiting, so the queue keeps Go's order."""
        import neonize.aioze.events as ev
        from neonize.proto.Neonize_pb2 import UndecryptableMessage  # not re-exported by aioze.events (code 44)

        for name in _STATUS_EVENTS:
            client.event(getattr(ev, name))(self._handler(self._on_status))
        client.event(ev.MessageEv)(self._addressed_handler(self._on_message))
        client.event(UndecryptableMessage)(self._addressed_handler(self._on_undecryptable))
        client.event(ev.ReceiptEv)(self._handler(self._on_receipt))
        client.event(ev.StreamErrorEv)(self._handler(self._on_stream_error))
        client.event(ev.GroupInfoEv)(self._handler(self._on_group_info))
        client.event(ev.JoinedGroupEv)(self._handler(self._on_joined_group))
        client.event(ev.CallOfferEv)(self._handler(self._on_call))
        client.event(ev.CallOfferNoticeEv)(self._handler(self._on_call))
        client.event.qr(self._on_qr)
        # neonize ignores the QR channel's end ("success" / "timeout"); take it (called from a Go thread).
        client._NewAClient__onLoginStatus = self._login_status_callback(client)

    def _handler(self, translate: Callable[[Proto], EngineEvent | Deferred | None],
                 ) -> Callable[..., Any]:
        async def handle(client: NewAClient, event: Proto) -> None:
            if client is not self._client:
                log.debug("%s: event from a stopped client ignored", self.phone)
                return
            try:
                out = translate(event)
            except Exception:
                log.exception("%s: failed to handle %s", self.phone, event.DESCRIPTOR.name)
                return
            if out is not None:
                self._put(out)
        return handle

    def _addressed_handler(self, translate: Callable[[Proto], EngineEvent | Deferred | None]) -> Callable[..., Any]:
        """A handler for events that name people (messages): LIDs the session does not know yet are
        looked up in the store's LID map first, in the pump, so the event keeps its place in Go's order."""
        async def handle(client: NewAClient, event: Proto) -> None:
            if client is not self._client:
                log.debug("%s: event from a stopped client ignored", self.phone)
                return
            try:
                self._learn_lid(event.Info.MessageSource)
                unknown = lids_in(conv.lid_users(event), self._lids)
            except Exception:
                log.exception("%s: failed to read the addresses of %s", self.phone, event.DESCRIPTOR.name)
                unknown = set()
            if not unknown:
                self._put_translated(translate, event)
                return

            async def resolve_then_translate() -> EngineEvent | None:
                await self._resolve_lids(client, unknown)
                out = self._translate(translate, event)
                return await out() if callable(out) else out
            self._put(resolve_then_translate)
        return handle

    def _put_translated(self, translate: Callable[[Proto], EngineEvent | Deferred | None], event: Proto) -> None:
        out = self._translate(translate, event)
        if out is not None:
            self._put(out)

    def _translate(self, translate: Callable[[Proto], EngineEvent | Deferred | None],
                   event: Proto) -> EngineEvent | Deferred | None:
        try:
            return translate(event)
        except Exception:
            log.exception("%s: failed to handle %s", self.phone, event.DESCRIPTOR.name)
            return None

    def _learn_lid(self, source: Proto) -> None:
        """A sender named by LID with its phone alongside (SenderAlt): remember the pair, as the store does."""
        sender = conv.sender_party(source)
        if sender.lid is not None and sender.phone is not None:
            if len(self._lids) >= LID_CACHE_LIMIT:
                self._lids.clear()  # the store keeps them all; this is only a shortcut
            self._lids[user_of(sender.lid)] = sender.phone

    async def _resolve_lids(self, client: NewAClient, users: set[str]) -> None:
        """Ask the store's LID map (`get_pn_from_lid`) for the phones of LID `users`; only while `client`
        runs (under the session lock: a stopped client must not be called, Go would abort)."""
        from neonize.utils.jid import build_jid

        async with self._lock:
            current = self._client
            if current is None or client is not current or self._stopping:
                return
            for user in users:
                try:
                    found = await current.get_pn_from_lid(build_jid(user, LID_SERVER))
                except Exception as exc:  # noqa: BLE001 (a failed lookup leaves the sender unknown, no more)
                    log.debug("%s: LID map lookup of %s failed: %s", self.phone, user, exc)
                    continue
                if found.User:
                    self._lids[user] = found.User
                else:
                    log.debug("%s: LID %s is not in the LID map; its sender stays unknown", self.phone, user)

    def _on_status(self, event: Proto) -> EngineEvent | None:
        me = getattr(self._client, "me", None)
        out = conv.status_event(event, self._clock(), name=(me.PushName or None) if me is not None else None,
                                logged_in=self._logged_in)
        if isinstance(out, Paired):
            self._account = out.phone
            self._logged_in = True
            log.info("%s: paired as %s", self.phone, out.phone)
        elif isinstance(out, Degraded):
            log.log(logging.WARNING if out.degraded else logging.INFO, "%s: %s", self.phone,
                    f"keepalive missed ({out.missed})" if out.degraded else "keepalive restored")
        elif out is not None:
            log.info("%s: %s%s", self.phone, out.kind, f" ({out.code})" if isinstance(out, Disconnected) else "")
        if isinstance(out, Connected):
            self._refresh_groups(contacts=True)
            if self._client is not None:
                self._spawn(self._send_presence(self._client))
        return out

    def _on_message(self, event: Proto) -> EngineEvent | Deferred | None:
        if conv.is_device_traffic(event):
            log.debug("%s: own-device protocol message %s not published", self.phone, event.Info.ID)
            return None
        try:
            message = conv.message_from_event(event, self._account, self._lids)
        except Exception:
            log.exception("%s: message %s could not be translated", self.phone, event.Info.ID)
            message = conv.fallback_message(event, self._account, "untranslatable", self._lids)
        self._recent.remember(event, message.chat)
        log.debug("%s: message %s (%s)", self.phone, message.id, message.type)
        message = message.model_copy(update={"chat_name": self._chat_name(message)})
        if message.type == "poll_vote":  # decrypted by a Go call: the pump awaits it in its place
            return lambda: self._poll_vote(event, message)
        if (poll := conv.poll_of(message)) is not None:
            self._remember_poll(*poll)
        if self._client is not None and self._media.wants(message) and event.HasField("Message"):
            content = conv.unwrap(event.Message)  # whatsmeow's DownloadAny looks at the top level only
            if not conv.downloadable(content):  # Go is never asked for what it cannot fetch
                log.info("%s: media of message %s has no download path", self.phone, message.id)
                media = message.media.model_copy(update={"error": "download_failed"}) if message.media else None
                return MessageReceived(message=message.model_copy(update={"media": media}))
            self._download(self._client, content, message)
            return None  # published once its media is saved or has failed
        return MessageReceived(message=message)

    def _download(self, client: NewAClient, content: Proto, message: IncomingMessage) -> None:
        """Download the media of `message` (neonize `download_any`), then emit it; later messages are not
        held back meanwhile."""
        async def fetch() -> bytes:
            return bytes(await client.download_any(content))

        async def run() -> None:
            self._put(MessageReceived(message=await self._media.save(message, fetch)))
        task = asyncio.get_running_loop().create_task(run(), name=f"media-{self.phone}-{message.id}")
        self._downloads.add(task)
        task.add_done_callback(self._downloads.discard)

    def _on_undecryptable(self, event: Proto) -> EngineEvent:
        message = conv.undecryptable_from_event(event, self._account, self._lids)
        log.info("%s: message %s could not be decrypted; whatsmeow asked the sender to send it again",
                 self.phone, message.id)
        return MessageReceived(message=message)

    # ------------------------------------------------------------ polls (issue 16)

    def _remember_poll(self, poll_id: str, options: list[str]) -> None:
        try:
            self._polls.remember(poll_id, options, self._clock())
        except sqlite3.Error as exc:
            log.warning("%s: poll %s not remembered (%s); its votes will show no option texts", self.phone,
                        poll_id, exc)

    async def _poll_vote(self, event: Proto, message: IncomingMessage) -> EngineEvent | None:
        """A vote decrypted with the poll's secret (whatsmeow's store) and named by the poll's options."""
        client = self._client
        hashes: list[bytes] | None = None
        error = None
        try:
            if client is None:
                raise EngineError("not connected")
            hashes = await calls.decrypt_poll_vote(client, event)
        except EngineError as exc:  # Go's text: no secret for that poll, a corrupt vote; the vote is still reported
            error = f"the vote could not be decrypted: {exc}"
            log.warning("%s: poll vote %s: %s", self.phone, message.id, error)
        vote = message.model_extra.get("poll_vote") if message.model_extra else None
        poll_id = str(vote.get("poll_id", "")) if isinstance(vote, dict) else ""
        try:
            options = await asyncio.to_thread(self._polls.options, poll_id)
        except sqlite3.Error as exc:
            log.warning("%s: poll store unreadable (%s)", self.phone, exc)
            options = None
        if options is None and hashes:
            log.info("%s: vote for poll %s, whose options are unknown here", self.phone, poll_id)
        return MessageReceived(message=conv.poll_vote_of(message, options, hashes, error))

    def _on_receipt(self, event: Proto) -> EngineEvent | None:
        receipt = conv.receipt_from_event(event)
        return ReceiptReceived(receipt=receipt) if receipt is not None else None

    def _on_group_info(self, event: Proto) -> None:
        chat = conv.jid_str(event.JID)
        for change in groups.group_events(event, self._me(), self._group_names.get(chat), self._lids):
            log.info("%s: %s in %s", self.phone, change.type, change.group)
            self._put(GroupChanged(event=change))
        self._refresh_groups()

    def _on_joined_group(self, event: Proto) -> None:
        self._put(GroupChanged(event=groups.joined_event(event, self._clock(), self._lids)))
        self._refresh_groups()

    def _on_call(self, event: Proto) -> EngineEvent:
        call = groups.call_from_event(event, self._lids)
        log.info("%s: call %s ringing", self.phone, call.id)
        return CallReceived(call=call)

    def _on_stream_error(self, event: Proto) -> None:
        log.warning("%s: stream error %s", self.phone, event.Code)

