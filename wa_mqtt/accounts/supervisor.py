"""One account at run time: feeds inputs through the state machine, carries out its effects, owns the
engine session and its timers; its sends go through its `SendPipeline` (send_pipeline.py).

Everything that changes the account goes through one inbox, handled one item at a time, so the state
machine sees a single ordered stream of engine events, commands and timer expiries. Calls into the
engine session are serialised by one lock (neonize must never see concurrent connect/stop), but for
the sends the pipeline hands to an engine process (`SendsInOrder`): its child serves its requests one
at a time, in order, whatever the bridge writes meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from .. import events as ev
from ..bus import EventBus
from ..config import Config
from ..engines.base import (
    CallReceived,
    Connected,
    Degraded,
    Disconnected,
    Engine,
    EngineError,
    EngineEvent,
    EngineSession,
    GroupChanged,
    GroupsUpdated,
    MessageReceived,
    PairMethod,
    ReceiptReceived,
    SimControllable,
    SimSent,
)
from ..errors import ErrorCode
from ..model import AccountState, OutgoingMessage, SendOutcome, SendResult, Status
from ..store.protocols import OutboxStore as Outbox
from . import machine as m
from .send_pipeline import SendPipeline

log = logging.getLogger(__name__)
T = TypeVar("T")
Clock = Callable[[], datetime]
PING_GRACE = 10.0  # seconds beyond a check's own timeout before the bridge stops waiting for its answer


@dataclass(frozen=True)
class _Call:
    """A command that must run in inbox order; `future` gets its result."""

    input: m.Input | None
    action: Callable[[], Awaitable[Any]] | None
    future: asyncio.Future[Any]


class Supervisor:
    """Owns one account. Start with `run()` inside a TaskGroup; stop with `close()`."""

    def __init__(self, phone: str, engine: Engine, store_path: Path, config: Config, bus: EventBus,
                 outbox: Outbox, clock: Clock, rng: random.Random | None = None,
                 name: str | None = None, last_connected: datetime | None = None,
                 initial: AccountState = AccountState.STOPPED, error: str | None = None) -> None:
        self.phone = phone
        self._engine = engine
        self._store_path = store_path
        self._config = config
        self._bus = bus
        self._outbox = outbox
        self._clock = clock
        self._rng = rng or random.Random()
        self.account = m.new_account(phone, engine.name, clock(), name, last_connected, initial, error)
        self._session: EngineSession | None = None
        self._session_lock = asyncio.Lock()
        self._inbox: asyncio.Queue[Any] = asyncio.Queue()
        self._retry: asyncio.TimerHandle | None = None
        self._pairing_timer: asyncio.TimerHandle | None = None
        self._sends = SendPipeline(phone, outbox, bus, state=lambda: self.state, session=lambda: self._session,
                                   send=self._send, ttl=lambda: self._config.outgoing.ttl,
                                   show_depth=self._show_queue_depth)
        self._closed = False
        self.messages_in = 0
        self._publish_status()

    # -- public API (called by the manager) ----------------------------------------------------
    @property
    def status(self) -> Status:
        return self.account.status

    @property
    def state(self) -> AccountState:
        return self.account.state

    @property
    def messages_out(self) -> int:
        return self._sends.messages_out

    def reconfigure(self, config: Config) -> None:
        """A reloaded config: backoff, pairing timeout and TTL apply from the next use on."""
        self._config = config

    def apply(self, event: m.Input) -> None:
        """Queue an input without waiting (boot restore, store problems)."""
        self._inbox.put_nowait(event)

    async def submit(self, event: m.Input) -> Status:
        """Queue an input and wait until it has been handled; returns the status after it."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait(_Call(event, None, future))
        await future
        return self.status

    async def logout(self) -> None:
        """Unlink on WhatsApp's side (when connected), stop; the caller then removes the store."""
        if self._session is not None and self.state == AccountState.CONNECTED:
            await self._call(lambda s: s.logout())
        await self.submit(m.LogoutDone(reason=m.LOGOUT_ON_REQUEST))

    async def send(self, message: OutgoingMessage, reply: ev.Reply) -> SendOutcome:
        """`accept` the send, then wait for what became of it."""
        return await (await self.accept(message, reply))

    def accept(self, message: OutgoingMessage, reply: ev.Reply) -> Awaitable[asyncio.Future[SendOutcome]]:
        """Take a send in order (`SendPipeline.accept`, awaited by the caller: no coroutine of its own per
        send): once that returns it is in the outbox; the future says what became of it."""
        return self._sends.accept(message, reply)

    async def engine_call(self, fn: Callable[[EngineSession], Awaitable[T]]) -> T:
        """react / read / typing: need a connected session, never queued."""
        if self.state != AccountState.CONNECTED:
            raise EngineError(f"account is {self.state}, not connected", code=ErrorCode.NOT_CONNECTED)
        return await self._call(fn)

    async def sim_control(self, action: str, payload: bytes) -> None:
        """A `wa/sim/<phone>/<action>` control; only a sim session takes one (`SimControllable`)."""
        session = self._ensure_session()
        if not isinstance(session, SimControllable):
            raise EngineError(f"sim controls exist only with engine: sim; this account runs {self._engine.name} "
                              f"({action!r} refused)", code=ErrorCode.INVALID_REQUEST)
        async with self._session_lock:
            await session.sim_control(action, payload)

    # -- the silent-link watchdog -----------------------------------------------------------------
    async def check_link(self, timeout: float) -> bool:
        """While `connected`: a server round trip on the open connection (`EngineSession.ping`). An
        answer counts as news (`last_event_at`); no answer is a lost connection (`keepalive_timeout`),
        and the state machine reconnects with backoff. False when the check failed."""
        if self.state != AccountState.CONNECTED or self._session is None:
            return True
        try:
            async with self._session_lock:  # the time a send holds the session does not count against the check
                if self._session is None or self.status.state != AccountState.CONNECTED:
                    return True
                await asyncio.wait_for(self._session.ping(timeout), timeout + PING_GRACE)
        except (EngineError, TimeoutError) as exc:
            if self.status.state != AccountState.CONNECTED:  # (not `self.state`: mypy narrowed that one)
                return True  # it dropped meanwhile: the engine said so already
            silent = (self._clock() - (self.status.last_event_at or self.status.since)).total_seconds()
            log.warning("%s: nothing heard from WhatsApp for %.0f s and the check failed (%s); reconnecting",
                        self.phone, silent, exc)
            self._emit(Disconnected(code=ErrorCode.KEEPALIVE_TIMEOUT, error=(
                f"nothing heard from WhatsApp for {silent:.0f} s on an open connection and a check went "
                "unanswered; reconnecting with backoff")))
            return False
        log.debug("%s: the connection answered a check", self.phone)
        self._heard(publish=True)
        return True

    def _heard(self, publish: bool = False) -> None:
        """Something came from WhatsApp now: `last_event_at`, shown with the next status publish (at
        most one status copy per second: a busy account receives hundreds of messages a second)."""
        now = self._clock()
        last = self.status.last_event_at
        if last is not None and not publish and (now - last).total_seconds() < 1:
            return
        self.account = replace(self.account, status=self.status.model_copy(update={"last_event_at": now}))
        if publish:
            self._publish_status()

    @property
    def engine_rss_kb(self) -> int | None:
        """The resident memory of the account's engine process, as its last heartbeat said (None in process)."""
        rss = getattr(self._session, "last_rss_kb", None)
        return rss if isinstance(rss, int) else None

    def heartbeat(self) -> None:
        """Republish the status with a fresh `updated_at`; expire queued sends past their TTL."""
        self._inbox.put_nowait(_Heartbeat())

    async def run(self) -> None:
        """Handle the inbox until `close()`, then show the account `stopped` if it was running;
        never raises for one bad item."""
        while True:
            item = await self._inbox.get()
            if item is None:
                break
            try:
                await self._handle(item)
            except Exception as exc:  # one bad item must not kill the account
                log.exception("%s: failed to handle %s", self.phone, type(item).__name__)
                if isinstance(item, _Call) and not item.future.done():
                    item.future.set_exception(exc)
        try:
            await self._step(m.Shutdown())  # the retained status must not say `connected` after a stop
        except Exception:
            log.exception("%s: final status not published", self.phone)

    async def close(self) -> None:
        """Stop timers and the engine session; end `run()`."""
        self._closed = True
        self._cancel_timers()
        await self._sends.close()
        if self._session is not None:
            async with self._session_lock:
                try:
                    await asyncio.wait_for(self._session.close(), timeout=10)
                except (EngineError, TimeoutError, OSError) as exc:
                    log.warning("%s: engine did not close cleanly: %s", self.phone, exc)
            self._session = None
        self._inbox.put_nowait(None)

    # -- the loop ------------------------------------------------------------------------------
    async def _handle(self, item: Any) -> None:
        if isinstance(item, _Call):
            try:
                if item.input is not None:
                    await self._step(item.input)
                result = await item.action() if item.action else None
            except Exception as exc:
                if not item.future.done():
                    item.future.set_exception(exc)
                raise
            if not item.future.done():
                item.future.set_result(result)
        elif isinstance(item, _Heartbeat):
            self._sends.expire_queued()
            self.account = replace(self.account, status=self.status.model_copy(update={"updated_at": self._clock()}))
            self._publish_status()
            if self.state == AccountState.CONNECTED:
                self._sends.start_flush()  # what a full disk held back (begin_attempt could not be recorded)
        elif isinstance(item, MessageReceived):
            self._heard()
            self.messages_in += 1
            self._bus.emit(ev.MessageReceived(self.phone, item.message))
            self._bus.emit(ev.StatsChanged(self.phone))
        elif isinstance(item, ReceiptReceived):
            self._heard()
            self._bus.emit(ev.ReceiptReceived(self.phone, item.receipt))
        elif isinstance(item, SimSent):
            self._bus.emit(ev.SimSent(self.phone, item.payload))
        elif isinstance(item, GroupsUpdated):
            self._bus.emit(ev.GroupsChanged(self.phone, tuple(item.groups)))
        elif isinstance(item, GroupChanged):
            self._bus.emit(ev.GroupEventReceived(self.phone, item.event))
        elif isinstance(item, CallReceived):
            self._bus.emit(ev.CallReceived(self.phone, item.call))
        else:
            if isinstance(item, Connected) or (isinstance(item, Degraded) and not item.degraded):
                self._heard()  # shown with the status: the connect, or a keepalive answered again
            await self._step(item)

    async def _step(self, event: m.Input) -> None:
        before = self.account
        self.account, effects = m.decide(
            before, event, self._clock(), self._config.reconnect, self._rng.random(), self._config.pairing_timeout)
        if self.account.status != before.status:
            if self.account.state != before.state:
                self._log_transition(before.status, isinstance(event, m.RetryDue | m.Shutdown))  # a stop: one line in app.py
            self._publish_status()
        for effect in effects:
            await self._do(effect)

    async def _do(self, effect: m.Effect) -> None:
        loop = asyncio.get_running_loop()
        match effect:
            case m.StartSession(method=method):
                await self._start_session(method)
            case m.StopSession():
                if self._session is not None:
                    await self._guarded(lambda s: s.stop())
            case m.ScheduleRetry(at=at):
                self._cancel(self._retry)
                self._retry = loop.call_later(self._seconds_until(at), self._inbox.put_nowait, m.RetryDue())
            case m.CancelRetry():
                self._cancel(self._retry)
                self._retry = None
            case m.SchedulePairingExpiry(at=at):
                self._cancel(self._pairing_timer)
                self._pairing_timer = loop.call_later(self._seconds_until(at), self._inbox.put_nowait, m.PairingExpired())
            case m.ShowPairing(kind=kind, code=code):
                self._bus.emit(ev.PairingOffered(self.phone, kind, code))
            case m.ClearPairing():
                self._cancel(self._pairing_timer)
                self._pairing_timer = None
                self._bus.emit(ev.PairingCleared(self.phone))
            case m.OnConnected():
                self._bus.emit(ev.AccountConnected(self.phone))
                self._sends.start_flush()
            case m.BridgeEvent():
                self._bus.emit(_machine_event(self.phone, effect))
                linked = effect.data.get("linked_phone") if effect.type == "paired" else None
                if linked is not None and linked != self.phone:
                    self._bus.emit(ev.LinkedElsewhere(self.phone, str(linked)))

    async def _start_session(self, method: PairMethod) -> None:
        if self._closed:
            return  # a retry that was due as the bridge stopped: no new engine
        try:
            self._store_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:  # retried with backoff: it recovers when the folder can be written again
            log.warning("%s: cannot create the session folder %s: %s", self.phone, self._store_path.parent, exc)
            self._emit(Disconnected(code=ErrorCode.STORAGE_ERROR,
                                    error=f"cannot create the session folder {self._store_path.parent}: {exc.strerror or exc}"))
            return
        session = self._ensure_session()
        async with self._session_lock:
            try:
                await session.start(method)
            except EngineError as exc:
                log.warning("%s: engine failed to start: %s", self.phone, exc)
                self._emit(Disconnected(code=ErrorCode.DIAL_FAILED, error=str(exc)))

    def _ensure_session(self) -> EngineSession:
        if self._session is None:
            self._session = self._engine.open_session(self.phone, self._store_path, self._emit)
        return self._session

    def _emit(self, event: EngineEvent) -> None:
        if not self._closed:
            self._inbox.put_nowait(event)

    async def _call(self, fn: Callable[[EngineSession], Awaitable[T]]) -> T:
        session = self._ensure_session()
        async with self._session_lock:
            return await fn(session)

    def _send(self, message: OutgoingMessage, wa_id: str | None, retry: bool) -> Awaitable[SendResult]:
        return self._call(lambda s: s.send(message, wa_id, retry))

    async def _guarded(self, fn: Callable[[EngineSession], Awaitable[Any]]) -> None:
        try:
            await self._call(fn)
        except EngineError as exc:
            log.warning("%s: engine call failed: %s", self.phone, exc)

    def _show_queue_depth(self, depth: int) -> None:
        """How many sends wait in the outbox (not those being sent now), shown with the status."""
        if depth != self.status.queued_outgoing:
            self.account = replace(self.account, status=self.status.model_copy(
                update={"queued_outgoing": depth, "updated_at": self._clock()}))
            self._publish_status()

    # -- helpers -------------------------------------------------------------------------------
    def _publish_status(self) -> None:
        self._bus.emit(ev.StatusChanged(self.status))

    def _log_transition(self, before: Status, retrying: bool) -> None:
        """One line per state change; an error already said is not repeated, and a scheduled retry
        (disconnected -> connecting) is debug: a failing connect logs one short line per attempt."""
        now = self.status
        if now.error is None:
            detail = ""
        elif now.error != before.error or now.error_code != before.error_code:
            detail = f" ({now.error_code}: {now.error})"
        else:
            detail = f" ({now.error_code}, as before)"
        if now.next_retry_at is not None and now.state == AccountState.DISCONNECTED:
            detail += f"; retrying in {self._seconds_until(now.next_retry_at):.1f} s (failure {now.reconnect_attempt})"
        log.log(logging.DEBUG if retrying else logging.INFO, "%s: %s -> %s%s", self.phone, before.state,
                now.state, detail)

    def _seconds_until(self, at: datetime) -> float:
        return max(0.0, (at - self._clock()).total_seconds())

    @staticmethod
    def _cancel(handle: asyncio.TimerHandle | None) -> None:
        if handle is not None:
            handle.cancel()

    def _cancel_timers(self) -> None:
        for handle in (self._retry, self._pairing_timer):
            self._cancel(handle)
        self._retry = self._pairing_timer = None


@dataclass(frozen=True)
class _Heartbeat:
    pass


def _machine_event(phone: str, effect: m.BridgeEvent) -> ev.Event:
    """The typed event for the state machine's `BridgeEvent` effect."""
    data = effect.data
    match effect.type:
        case "paired":
            linked, name = data.get("linked_phone"), data.get("name")
            return ev.Paired(phone, None if linked is None else str(linked), None if name is None else str(name))
        case "engine_crashed":
            return ev.EngineCrashed(phone, str(data.get("error")))
        case "logged_out":
            return ev.LoggedOut(phone, str(data.get("reason")))
    raise ValueError(f"unknown machine event {effect.type!r}")

