"""A neonize session's lifecycle: a client restored from or paired into its store, connect and stop
serialised under the session lock, the connect task watched (a failed dial, a dead event pump, an
event loop ended: reported, and the process marked for replacement where neonize cannot recover),
and the pairing window (QR, pair code, its end). `NeonizeLifecycleMixin` is mixed into
`neonize_engine.NeonizeSession`, which owns the state.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast
from uuid import uuid4

from ..errors import ErrorCode
from . import neonize_calls as calls
from . import neonize_convert as conv
from .base import (
    ClientOutdated,
    Disconnected,
    EngineError,
    PairCode,
    PairMethod,
    Qr,
)
from .neonize_calls import engine_error
from .neonize_store import NeonizeStore

if TYPE_CHECKING:
    from datetime import datetime
    from pathlib import Path

    from neonize.aioze.client import NewAClient

    from .base import EngineEvent
    from .neonize_engine import NeonizeEngine, NeonizeSession
    from .neonize_events import Deferred

log = logging.getLogger(__name__)

class FailureLog(logging.Handler):
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



class NeonizeLifecycleMixin:
    """Connect, stop, close and pairing; the state below is `NeonizeSession`'s."""

    phone: str
    store_path: Path
    store: NeonizeStore
    _engine: NeonizeEngine
    _clock: Callable[[], datetime]
    _lock: asyncio.Lock
    _client: NewAClient | None
    _watch: asyncio.Task[None] | None
    _pump_task: asyncio.Task[None] | None
    _queue: asyncio.Queue[EngineEvent | Deferred | None] | None
    _pair_method: PairMethod
    _pair_code_asked: bool
    _stopping: bool
    _closed: bool
    _device_key: bytes | None
    _downloads: set[asyncio.Task[None]]
    _refresh: asyncio.Task[None] | None
    _logged_in: bool
    _recycle_reason: str | None
    _failure_log: FailureLog
    _side_tasks: set[asyncio.Task[None]]

    if TYPE_CHECKING:
        def _ensure_pump(self) -> None: ...
        def _put(self, event: EngineEvent | Deferred) -> None: ...
        def _register(self, client: NewAClient) -> None: ...
        def _require_client(self) -> NewAClient: ...

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
        self._engine._forget(cast("NeonizeSession", self))
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

        dsn = await asyncio.to_thread(self.store.dsn)  # its SQLite file, or its schema in PostgreSQL
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

