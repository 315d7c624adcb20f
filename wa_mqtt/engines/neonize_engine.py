"""The real WhatsApp engine: one neonize (whatsmeow) client per account, behind the EngineSession protocol.

Owns a session's neonize client: restore from or pairing into its store, event handlers, the
ordered event pump to `emit`, connect/stop serialisation. The WhatsApp calls (send, react, read,
typing) live in `neonize_calls`, translation in `neonize_convert`. Runs inside an engine child process
(`engines/process.py`); neonize is imported lazily, because importing it configures logging and
loads the Go library.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import uuid4

from ..errors import ErrorCode
from ..media import MediaPolicy
from ..model import Contact, GroupInfo, GroupSummary, IncomingMessage, NumberCheck, OutgoingMessage, SendResult
from . import neonize_calls as calls
from . import neonize_convert as conv
from . import neonize_groups as groups
from . import resolving
from .addressing import LID_SERVER, lids_in
from .base import (
    CallReceived,
    ClientOutdated,
    Connected,
    Degraded,
    Disconnected,
    EmitFn,
    EngineError,
    EngineEvent,
    GroupChanged,
    GroupsUpdated,
    MessageReceived,
    PairCode,
    Paired,
    PairMethod,
    Qr,
    ReceiptReceived,
)
from .incoming_media import MediaSaver
from .neonize_calls import engine_error
from .neonize_store import account_of, store_for
from .options import DownloadOptions, EngineOptions, Presence
from .poll_store import PollStore

if TYPE_CHECKING:
    from google.protobuf.message import Message as Proto
    from neonize.aioze.client import NewAClient

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
# an event whose translation waits for LID lookups; the pump awaits it in its place, keeping Go's order
Deferred = Callable[[], Awaitable[EngineEvent | None]]
LID_CACHE_LIMIT = 50_000
PRESENCE_TRIES, PRESENCE_RETRY = 6, 5.0  # whatsmeow refuses a presence until the push name is known
_STATUS_EVENTS = ("ConnectedEv", "DisconnectedEv", "LoggedOutEv", "StreamReplacedEv", "TemporaryBanEv",
                  "ConnectFailureEv", "ClientOutdatedEv", "KeepAliveTimeoutEv", "KeepAliveRestoredEv",
                  "PairStatusEv")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def store_dsn(store_path: Path) -> str:
    """The store name neonize passes to Go (`file:<name>?_foreign_keys=on` is built there)."""
    path = str(Path(store_path).absolute())
    if "?" in path or "#" in path:
        raise EngineError(f"store path may not contain '?' or '#': {path}")
    # Go appends `?_foreign_keys=on`; the trailing `&` turns that into an ignored key.
    return f"{path}?_busy_timeout=15000&_foreign_keys=on&"


def stored_device_jids(store_path: Path) -> list[str]:
    """The linked devices' JIDs (`4915…:7@s.whatsapp.net`) in a store, read-only; [] when none or no store."""
    path = Path(store_path)
    if not path.is_file():
        return []
    with sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True) as db:
        has_table = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='whatsmeow_device'").fetchone()
        if not has_table:
            return []
        return [row[0] for row in db.execute("SELECT jid FROM whatsmeow_device ORDER BY rowid")]


class _FailureLog(logging.Handler):
    """Keeps whatsmeow's last log line about a connect failure or a ban (issue 14): when neonize cannot
    encode that event, the line is the only place its reason, ban code and expiry are left. whatsmeow's
    log reaches Python through neonize's log thread, on the `whatsmeow.Client` logger."""

    MARKERS = ("connect failure", "Temporary ban")

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if any(marker in message for marker in self.MARKERS):
            self.last = message

    def attach(self) -> None:
        self.last = None
        logger = logging.getLogger("whatsmeow.Client")
        if self not in logger.handlers:
            logger.addHandler(self)

    def detach(self) -> None:
        logging.getLogger("whatsmeow.Client").removeHandler(self)


def _detach_finalizer(client: NewAClient) -> None:
    """Disarm neonize's GC finalizer: its Stop(uuid) would stop a later client with the same uuid
    (a restored client's uuid is its JID user, the same on every start)."""
    finalizer = getattr(client, "_stop_finalizer", None)
    if finalizer is not None:
        finalizer.detach()


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


class NeonizeSession:
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
        self._failure_log = _FailureLog()
        self._side_tasks: set[asyncio.Task[None]] = set()

    @property
    def recycle_reason(self) -> str | None:
        """Why this process should be replaced (issue 14), else None: see `base.Recyclable`."""
        return self._recycle_reason

    @property
    def client(self) -> NewAClient | None:
        """The current neonize client (diagnostics and tests)."""
        return self._client

    # ------------------------------------------------------------ lifecycle

    async def start(self, pair_method: PairMethod = "qr") -> None:
        if self._closed:
            raise EngineError("session is closed")
        async with self._lock:
            self._engine._prepare_loop()
            self._ensure_pump()
            if self._client is not None:
                await self._stop_locked()
            client, restoring = await self._new_client()
            self._logged_in = restoring
            self._failure_log.attach()
            self._device_key = None  # a new pairing brings a new device
            self._register(client)
            self._client, self._pair_method = client, pair_method
            self._pair_code_asked, self._stopping = False, False
            log.info("%s: %s", self.phone, "restoring session" if restoring else f"pairing ({pair_method})")
            try:
                task = await client.connect(self._proxy_settings())
            except Exception as exc:  # NeonizeError raised before the Go call started
                self._client = None
                _detach_finalizer(client)
                raise engine_error(exc) from exc
            self._watch = asyncio.get_running_loop().create_task(self._watch_connect(client, task))

    def _proxy_settings(self) -> Any:
        if not self._engine.proxy:
            return None
        from neonize._binder import ProxySettings  # neonize's own type for connect(); not re-exported

        return ProxySettings(proxy_address=self._engine.proxy)

    async def stop(self) -> None:
        async with self._lock:
            await self._stop_locked()

    async def logout(self) -> None:
        client = self._require_client()
        try:
            await client.logout()
        except Exception as exc:
            raise engine_error(exc) from exc
        log.info("%s: logged out on request", self.phone)
        await self.stop()

    async def close(self) -> None:
        if self._closed:
            return
        await self.stop()
        pending = [*self._downloads, *([self._refresh] if self._refresh is not None else [])]
        for task in pending:  # a download or a groups fetch outliving its client would never finish
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._closed = True
        self._failure_log.detach()
        for task in list(self._side_tasks):  # a presence still being retried
            task.cancel()
        await asyncio.gather(*self._side_tasks, return_exceptions=True)
        self._engine._forget(self)
        if self._queue is not None and self._pump_task is not None:
            self._queue.put_nowait(None)
            try:
                await asyncio.wait_for(self._pump_task, self._engine._stop_timeout)
            except TimeoutError:
                log.warning("%s: event pump did not drain on close", self.phone)
                self._pump_task.cancel()

    async def _new_client(self) -> tuple[NewAClient, bool]:
        from neonize.aioze.client import ClientFactory, NewAClient
        from neonize.utils.jid import build_jid

        dsn = await asyncio.to_thread(self.store.dsn)
        self.store_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:  # creates the tables on a fresh store (first connects race on that otherwise)
            await asyncio.to_thread(ClientFactory.get_all_devices_from_db, dsn)
        except ValueError as exc:  # neonize cannot parse some push names (commas); the JIDs come below
            log.warning("%s: neonize device listing failed: %s", self.phone, exc)
        if self.store_path.exists():
            os.chmod(self.store_path, 0o600)
        try:
            jids = await asyncio.to_thread(self.store.device_jids)
        except sqlite3.DatabaseError as exc:
            raise EngineError(f"store unreadable: {exc}") from exc
        if jids:
            mine = [j for j in jids if conv.jid_user(j) == self.phone] or jids
            if len(jids) > 1:
                log.warning("%s: store holds %d devices; restoring %s", self.phone, len(jids), mine[0])
            user, _, server = mine[0].partition("@")
            return NewAClient(dsn, jid=build_jid(user, server)), True
        return NewAClient(dsn, uuid=f"{self.phone}-{uuid4().hex}", new_device=True), False

    async def _stop_locked(self) -> None:
        client, watch = self._client, self._watch
        if client is None:
            return
        self._stopping = True
        pairing = not self._logged_in
        try:
            await client.stop()
        except Exception as exc:  # noqa: BLE001 (neonize raises bare Exceptions from Go; a stop must go on)
            log.warning("%s: stop failed: %s", self.phone, exc)
        if watch is not None and not watch.done():
            # During pairing Go's Neonize() loops over a QR channel whatsmeow never closes on an expected
            # disconnect (qrchan.go; neonize issue #201): the connect thread never returns. Waiting longer
            # than a moment is pointless there; the process is replaced instead (issue 14).
            grace = self._engine.pairing_stop_grace if pairing else self._engine._stop_timeout
            try:
                await asyncio.wait_for(asyncio.shield(watch), grace)
            except TimeoutError:
                self._recycle_reason = (f"neonize's connect thread did not end {grace:g} s after stop"
                                        f"{' during pairing' if pairing else ''}")
                log.warning("%s: %s; this engine process will be replaced", self.phone, self._recycle_reason)
                watch.cancel()  # cancels neonize's connect task, which calls Go's Stop once more
        _detach_finalizer(client)
        self._client, self._watch = None, None
        log.info("%s: stopped", self.phone)

    async def _watch_connect(self, client: NewAClient, task: asyncio.Task[Any]) -> None:
        """Turns the end of neonize's connect task into an event (the bridge's backoff retries)."""
        try:
            await task
        except Exception as exc:  # noqa: BLE001 (NeonizeError with Go's text, or whatever the Go side raised)
            if client is not self._client or self._stopping:
                return
            text = str(exc)
            if (field := conv.dead_pump_field(text)) is not None:
                await self._dead_pump(field, text)
                return
            code = ErrorCode.DIAL_FAILED if "dial" in text else ErrorCode.CONNECT_FAILURE
            error = conv.explain_dial_error(text, bool(self._engine.proxy)) if code == ErrorCode.DIAL_FAILED else text
            log.warning("%s: connect failed (%s): %s", self.phone, code.value, error)
            log.debug("%s: neonize said: %s", self.phone, text)
            self._put(Disconnected(code=code, error=error))
            return
        if client is self._client and not self._stopping:
            self._recycle_reason = "neonize's event loop ended without a stop"  # nothing more comes from it
            log.warning("%s: neonize event loop ended without a stop", self.phone)
            self._put(Disconnected(code=ErrorCode.CONNECTION_LOST, error="engine event loop ended"))

    async def _dead_pump(self, field: str, text: str) -> None:
        """Go's event pump ended on an event neonize could not encode (issue 14): nothing more arrives
        from this client, and whatsmeow does not reconnect after such a failure. Say what the lost event
        was (whatsmeow logged its node just before) and have this process replaced on the next stop."""
        await asyncio.sleep(0.2)  # whatsmeow's log line travels through neonize's log thread
        node = conv.failure_node_attrs(self._failure_log.last or "")
        self._recycle_reason = f"neonize's event pump died ({text})"
        out = conv.dead_pump_event(field, node, self._clock())
        log.warning("%s: %s; reported as %s, this engine process will be replaced", self.phone,
                    self._recycle_reason, out.kind)
        self._put(out)

    # ------------------------------------------------------------ events

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
            self._lids[sender.lid.partition("@")[0]] = sender.phone

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

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _send_presence(self, client: NewAClient) -> None:
        """Config `presence` on every connect: whatsmeow sends chat presence (typing) and the push name
        only after an available presence (presence.go)."""
        for attempt in range(PRESENCE_TRIES):
            if client is not self._client:
                return
            try:
                await calls.send_presence(client, self._engine.presence)
            except EngineError as exc:  # right after pairing the push name may not have arrived yet
                if "pushname" not in str(exc).lower().replace(" ", "") or attempt == PRESENCE_TRIES - 1:
                    log.warning("%s: presence %s not sent: %s", self.phone, self._engine.presence, exc)
                    return
                await asyncio.sleep(PRESENCE_RETRY)
            else:
                log.debug("%s: presence %s sent", self.phone, self._engine.presence)
                return

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

    # ------------------------------------------------------------ groups, contacts, calls (issue 15)

    def _me(self) -> list[str]:
        """The account's own user parts (phone, LID): to find it among a group's members."""
        me = getattr(self._client, "me", None)
        found = [self._account]
        if me is not None:
            found += [jid.User.split(":", 1)[0] for jid in (me.JID, me.LID) if jid.User]
        return found

    def _chat_name(self, message: IncomingMessage) -> str | None:
        if message.chat_type == "group":
            return self._group_names.get(message.chat)
        user = conv.jid_user(message.chat)
        if not message.from_me and message.sender_name and user not in self._contact_names:
            return message.sender_name
        return self._contact_names.get(user)

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

    def _refresh_groups(self, contacts: bool = False) -> None:
        """Fetch the joined groups (and the contact names) in the background; emit the list."""
        client = self._client
        if client is None:
            return
        if self._refresh is not None and not self._refresh.done():
            self._refresh.cancel()  # a newer list is on its way
        self._refresh = asyncio.get_running_loop().create_task(self._fetch_groups(client, contacts))

    async def _fetch_groups(self, client: NewAClient, contacts: bool) -> None:
        try:  # Go aborts the process on store calls of a client without a device: ask only a linked one
            linked = bool(await asyncio.to_thread(self.store.device_jids))
        except sqlite3.Error:
            linked = False
        if not linked:
            log.debug("%s: no linked device in the store; groups not fetched", self.phone)
            return
        if contacts:
            try:
                found = [groups.contact(c) for c in await client.contact.get_all_contacts()]
                self._contact_names = {c.phone or c.lid or "": c.saved_name or c.push_name or ""
                                       for c in found if c.saved_name or c.push_name}
            except Exception as exc:  # noqa: BLE001 (the names are a nicety; a failure is logged, never raised)
                log.warning("%s: contact names unavailable: %s", self.phone, exc)
        try:
            joined = await client.get_joined_groups()
        except Exception as exc:  # noqa: BLE001 (as above: Go's error text, logged)
            log.warning("%s: joined groups unavailable: %s", self.phone, exc)
            return
        summaries = [groups.group_summary(info, self._me()) for info in joined]
        self._group_names = {g.jid: g.name for g in summaries if g.name}
        if client is self._client:
            self._put(GroupsUpdated(groups=summaries))

    def _on_stream_error(self, event: Proto) -> None:
        log.warning("%s: stream error %s", self.phone, event.Code)

    async def _on_qr(self, client: NewAClient, data: bytes) -> None:
        if client is not self._client or client is None:  # a stale client's QR (None: narrows the type)
            return
        if self._pair_method == "qr":
            log.info("%s: QR code offered", self.phone)
            self._put(Qr(code=data.decode()))
            return
        if self._pair_code_asked:
            return
        self._pair_code_asked = True
        try:
            code = await calls.pair_code(client, self.phone)
        except Exception as exc:  # noqa: BLE001 (any failure of Go's PairPhone is reported as a status)
            log.warning("%s: pair code request failed: %s", self.phone, exc)
            self._put(Disconnected(code=ErrorCode.CONNECT_FAILURE, error=f"pair code request failed: {exc}"))
            return
        log.info("%s: pair code offered", self.phone)
        self._put(PairCode(code=code))

    def _login_status_callback(self, client: NewAClient) -> Callable[[int, int], None]:
        loop = asyncio.get_running_loop()

        def on_status(_uuid: int, status: int) -> None:
            text = ctypes.string_at(status).decode(errors="replace") if status else ""
            loop.call_soon_threadsafe(self._login_status, client, text)
        return on_status

    def _login_status(self, client: NewAClient, status: str) -> None:
        if client is not self._client or self._stopping:
            return
        log.info("%s: pairing window ended: %s", self.phone, status)
        # "timeout" is left to the supervisor's own pairing timer, which parks the account (no retry).
        if status == "err-client-outdated":
            self._put(ClientOutdated())
        elif status.startswith("err"):
            self._put(Disconnected(code=ErrorCode.CONNECT_FAILURE, error=f"pairing failed: {status}"))

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
