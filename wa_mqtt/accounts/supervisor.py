"""One account at run time: feeds inputs through the state machine, carries out its effects, owns the
engine session, its timers and the account's outgoing queue.

Everything that changes the account goes through one inbox, handled one item at a time, so the state
machine sees a single ordered stream of engine events, commands and timer expiries. Calls into the
engine session are serialised by one lock (neonize must never see concurrent connect/stop), but for
the sends pipelined to an engine process (`SendsInOrder`): its child serves its requests one at a
time, in order, whatever the bridge writes meanwhile.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from .. import events as ev
from ..bus import EventBus
from ..config import Config
from ..disk_full import DiskFull
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
    SendsInOrder,
    SimControllable,
    SimSent,
    new_message_id,
)
from ..errors import ErrorCode
from ..model import AccountState, OutgoingMessage, SendOutcome, SendResult, Status
from ..store.protocols import OutboxStore as Outbox
from . import machine as m
from .outbox import OutboxEntry

log = logging.getLogger(__name__)
T = TypeVar("T")
Clock = Callable[[], datetime]
PING_GRACE = 10.0  # seconds beyond a check's own timeout before the bridge stops waiting for its answer
PIPELINE = 64  # accepted sends of one account waiting for the engine; more wait to be accepted
ENGINE_WINDOW = 16  # of those, begun and handed to the engine at once, unanswered (`_dispatch`)


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
        self._flush_task: asyncio.Task[None] | None = None
        self._in_flight: set[int] = set()  # outbox entries handed to the engine right now, or piped to it
        self._pipeline: deque[_Piped] = deque()  # accepted sends being sent now, in order (see `accept`)
        self._piped = 0  # len(self._pipeline)
        self._begun = 0  # of them (the first ones), begun: their WhatsApp ids stored and synced
        self._handed = 0  # of those, handed to a `SendsInOrder` session and not answered yet
        self._dispatch_due = False  # `_dispatch` is scheduled for the end of this loop turn
        self._stalled = False  # a send of the pipeline must wait: all after it stay queued too
        self._pipe_room = asyncio.Event()
        self._pipe_task: asyncio.Task[None] | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()  # `_sync_begun` synced a batch
        self._closed = False
        self.messages_in = 0
        self.messages_out = 0
        self._publish_status()

    # -- public API (called by the manager) ----------------------------------------------------
    @property
    def status(self) -> Status:
        return self.account.status

    @property
    def state(self) -> AccountState:
        return self.account.state

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

    async def accept(self, message: OutgoingMessage, reply: ev.Reply) -> asyncio.Future[SendOutcome]:
        """Take a send in order: once this returns, it is in the outbox, behind every send accepted
        before it. The future says what became of it: sent now when connected and nothing waits before
        it but sends being sent now (the pipeline); else queued on disk (`queued: true`).

        Every send is written to the outbox first and leaves it only once WhatsApp took it, so a bridge
        killed in between sends it again after a restart, with the same WhatsApp id (see `_dispatch`).
        `reply` is stored with it, unread, and handed back in `SendCompleted` / `SendFailed` when a
        queued send is done. Accepted sends go to WhatsApp in acceptance order, each answered with its
        own result, by `_dispatch` and `_pipe`; while some are with the engine the next ones are
        accepted and handed over behind them. At most `PIPELINE` wait: a caller past that waits here."""
        if self._closed:  # removed or restarted meanwhile: nothing may start a session or a pipe again
            raise EngineError(f"account {self.phone} was closed (removed or restarted); send it again",
                              code=ErrorCode.NOT_CONNECTED)
        loop = asyncio.get_running_loop()
        while self._piped >= PIPELINE:
            self._pipe_room.clear()
            await self._pipe_room.wait()
        # after the wait, with no await before `enqueue`: a send with the same id that completed while
        # this one waited must be found here, not queued again under a new WhatsApp id
        if message.id and (known := self._outbox.sent_id(self.phone, message.id)):
            return _done(loop, SendOutcome(id=known, queued=False, duplicate=True))
        # into the pipeline when connected and nothing waits in the outbox before it but the pipeline's
        # sends; its try begins with the enqueue then (its WhatsApp id stored in the same commit)
        piping = self.state == AccountState.CONNECTED and not self._flushing() \
            and self._outbox.depth(self.phone) == self._piped
        begin = piping and not self._stalled
        entry, duplicate = self._outbox.enqueue(
            self.phone, {"message": message.model_dump(mode="json", exclude_none=True), "reply": dict(reply)},
            message.id, new_message_id() if begin else None)
        if duplicate:
            return _done(loop, SendOutcome(id=None, queued=True, queue_id=entry.id, duplicate=True))
        if piping:
            piped = _Piped(entry, message, loop.create_future())
            if begin:  # the pipeline's begun sends stay its first ones: none is begun after a stall
                piped.begun, piped.started = True, entry
                self._begun += 1
            self._pipeline.append(piped)
            self._piped += 1
            self._in_flight.add(entry.id)
            if not self._dispatch_due:  # at the end of this loop turn: the sends accepted in it share an fsync
                self._dispatch_due = True
                loop.call_soon(self._dispatch)
            if self._pipe_task is None or self._pipe_task.done():
                self._pipe_task = asyncio.create_task(self._pipe(), name=f"pipe-{self.phone}")
            return piped.outcome
        return _done(loop, self._queued(entry))

    def _queued(self, entry: OutboxEntry) -> SendOutcome:
        self._outbox.sync()  # a queued send was promised: it must survive a power loss before that answer
        depth = self._refresh_queue_depth()
        log.info("%s: send queued (%s), %d waiting", self.phone, self.state, depth)
        return SendOutcome(id=None, queued=True, queue_id=entry.id, duplicate=False)

    def _dispatch(self) -> None:
        """Begin the tries of the accepted sends not begun yet, in order: each stores its WhatsApp id (a
        commit without fsync); `_sync_begun` then makes them durable with one fsync (a group commit)
        before the engine may have any. Runs at the end of the loop turn a send was accepted in."""
        self._dispatch_due = False
        if self._stalled or self._closed or self.state != AccountState.CONNECTED:
            return
        for piped in itertools.islice(self._pipeline, self._begun, None):  # those `accept` could not begin
            try:
                piped.started = self._outbox.begin_attempt(piped.entry.id, new_message_id())
            except DiskFull:
                log.debug("%s: send stays queued: its try cannot be recorded on a full disk", self.phone)
                self._stalled = True
                break
            piped.begun = True
            self._begun += 1
        if self._begun and (self._sync_task is None or self._sync_task.done()):
            self._sync_task = asyncio.create_task(self._sync_begun(), name=f"sync-{self.phone}")

    async def _sync_begun(self) -> None:
        """fsync the outbox for the begun sends, on a thread: the loop goes on serving meanwhile, and
        the sends begun during one fsync share the next (an fsync takes ~0.2 ms on an idle disk,
        milliseconds on a busy one). Then `_hand` them over."""
        loop = asyncio.get_running_loop()
        while batch := [piped for piped in itertools.islice(self._pipeline, self._begun) if not piped.synced]:
            await loop.run_in_executor(None, self._outbox.sync)  # covers every commit made before it
            for piped in batch:
                piped.synced = True
            self._synced.set()
            self._hand()

    async def _wait_synced(self, piped: _Piped) -> None:
        while not piped.synced:
            task = self._sync_task
            if task is None or task.done():  # not to be: synced here, then
                self._outbox.sync()
                for begun in itertools.islice(self._pipeline, self._begun):
                    begun.synced = True
                self._hand()
                return
            self._synced.clear()
            await self._synced.wait()

    def _hand(self) -> None:
        """Hand the begun sends to a session that `SendsInOrder` (an engine process), in order, up to
        `ENGINE_WINDOW` unanswered, each `chained` when one before it is still unanswered. A media send
        goes alone (it may take long: those behind it must not time out waiting). Any other session
        gets them from `_pipe`, one at a time."""
        in_order = _in_order(self._session)
        if in_order is None or self._stalled or self._closed or self.state != AccountState.CONNECTED:
            return
        media = False  # a media send is with the engine
        for piped in itertools.islice(self._pipeline, self._begun):
            if not piped.synced:
                break
            if piped.reply is not None:
                media = media or piped.message.kind != "text"
                continue
            started = piped.started
            if started is None:  # gone meanwhile (expired or removed)
                continue
            if self._handed >= ENGINE_WINDOW or (self._handed and (media or piped.message.kind != "text")):
                break
            reply = asyncio.ensure_future(in_order.send_in_order(
                piped.message, started.wa_id or new_message_id(), started.tries > 1, self._handed > 0))
            reply.add_done_callback(_retrieved)  # awaited by `_pipe`, unless it was cancelled first
            piped.reply = reply
            self._handed += 1

    async def _pipe(self) -> None:
        """Take the answers of the accepted sends in order; each send is answered with its own. A send
        that must wait (not connected, the engine went away mid-call, a full disk) stays queued, and so
        does every send after it that was not with the engine yet (the engine refuses the chained ones
        it has: `SendsInOrder`); they are answered `queued: true` and go out in order with the next
        flush. A send the engine refused for good is answered with its error; the ones after it go on."""
        try:
            while self._pipeline:
                piped = self._pipeline[0]
                if not piped.begun:
                    self._dispatch()
                if not piped.begun or (piped.reply is None and (self._stalled or self.state != AccountState.CONNECTED)):
                    self._stalled = True  # it cannot go now: nor may any after it
                    if piped.started is not None:  # its try was counted, not made
                        self._outbox.end_attempt(piped.entry.id)
                    self._unpipe(piped, None)
                    continue
                started = piped.started
                if started is None:  # gone meanwhile (expired or removed)
                    self._unpipe(piped, None)
                    continue
                if not piped.synced:  # its try on disk first (`_sync_begun`)
                    await self._wait_synced(piped)
                    if piped.reply is None and (self._stalled or self.state != AccountState.CONNECTED):
                        continue  # taken as above, on the next round
                try:
                    if piped.reply is not None:
                        result = await piped.reply
                    else:
                        result = await self._call(_sending(piped.message, started.wa_id, started.tries > 1))
                except EngineError as exc:
                    if not exc.maybe_done:
                        self._outbox.end_attempt(piped.entry.id)  # the engine answered: it did not reach WhatsApp
                    if _retry_later(exc):
                        self._stalled = True
                        self._unpipe(piped, None)
                        continue
                    self._outbox.remove(piped.entry.id)  # refused: nothing to retry
                    self._unpipe(piped, exc)
                    continue
                self._outbox.complete(started, result.id)
                self._sent(piped.entry, result)
                self._unpipe(piped, SendOutcome(id=result.id, queued=False))
                self._hand()  # room in the engine window
        finally:
            for piped in list(self._pipeline):  # cancelled (closing): they wait in the outbox for the next start
                self._unpipe(piped, SendOutcome(id=None, queued=True, queue_id=piped.entry.id, duplicate=False))
            self._stalled = False
            self._refresh_queue_depth()
        if self.state == AccountState.CONNECTED and not self._closed:
            self._start_flush()  # what stayed queued (a flush it held back meanwhile included)

    def _unpipe(self, piped: _Piped, outcome: SendOutcome | BaseException | None) -> None:
        """`piped` (the first) leaves the pipeline with its outcome; None: it stays queued."""
        self._pipeline.popleft()
        self._piped -= 1
        self._begun -= piped.begun
        self._handed -= piped.reply is not None
        self._in_flight.discard(piped.entry.id)
        self._pipe_room.set()
        if outcome is None:
            outcome = self._queued(piped.entry)
        if not piped.outcome.done():
            if isinstance(outcome, BaseException):
                piped.outcome.set_exception(outcome)
            else:
                piped.outcome.set_result(outcome)

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
        for task in (self._flush_task, self._pipe_task, self._sync_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
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
            self._expire_queued()
            self.account = replace(self.account, status=self.status.model_copy(update={"updated_at": self._clock()}))
            self._publish_status()
            if self.state == AccountState.CONNECTED:
                self._start_flush()  # what a full disk held back (begin_attempt could not be recorded)
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
                self._start_flush()
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

    async def _guarded(self, fn: Callable[[EngineSession], Awaitable[Any]]) -> None:
        try:
            await self._call(fn)
        except EngineError as exc:
            log.warning("%s: engine call failed: %s", self.phone, exc)

    # -- outgoing queue ------------------------------------------------------------------------
    def _flushing(self) -> bool:
        return self._flush_task is not None and not self._flush_task.done()

    def _start_flush(self) -> None:
        if not self._piped and self._outbox.depth(self.phone) and not self._flushing():  # never beside the pipeline
            self._flush_task = asyncio.create_task(self._flush(), name=f"flush-{self.phone}")

    async def _flush(self) -> None:
        """Send queued messages oldest first while connected, including those queued meanwhile."""
        self._expire_queued()
        last = 0
        while self.state == AccountState.CONNECTED and (entry := self._outbox.next_pending(self.phone, last)):
            last = entry.id
            if entry.id in self._in_flight:
                continue  # a direct send of it is under way
            message = OutgoingMessage.model_validate(entry.request["message"])
            reply = _reply_of(entry)
            try:
                delivered = await self._deliver(entry, message)
            except DiskFull:
                break  # retried by the next heartbeat once the disk has space
            except EngineError as exc:
                if _retry_later(exc):
                    break
                self._outbox.remove(entry.id)
                self._bus.emit(ev.SendFailed(self.phone, reply, exc.code, f"queued message not sent: {exc}"))
                continue
            if delivered is not None:
                self._bus.emit(ev.SendCompleted(self.phone, reply, delivered.id))
            self._refresh_queue_depth()
        self._refresh_queue_depth()

    async def _deliver(self, entry: OutboxEntry, message: OutgoingMessage) -> SendResult | None:
        """Hand one queued outbox entry to the engine under its WhatsApp id, stored (and synced) before
        the call; on success the entry leaves the outbox. None when it was gone (expired or removed)."""
        started = self._outbox.begin_attempt(entry.id, new_message_id())
        if started is None:
            return None
        self._outbox.sync()  # the entry, its id and its try on disk before WhatsApp may have it
        retry = started.tries > 1  # an earlier try may have reached WhatsApp
        if retry:
            log.info("%s: sending queued message %d again as %s (try %d): WhatsApp drops it if it got it before",
                     self.phone, entry.id, started.wa_id, started.tries)
        self._in_flight.add(entry.id)
        try:
            result = await self._call(lambda s: s.send(message, started.wa_id, retry))
        except EngineError as exc:
            if not exc.maybe_done:
                self._outbox.end_attempt(entry.id)  # the engine answered: this try did not reach WhatsApp
            raise
        finally:
            self._in_flight.discard(entry.id)
        self._outbox.complete(started, result.id)
        self._sent(entry, result)
        return result

    def _sent(self, entry: OutboxEntry, result: SendResult) -> None:
        if result.already_sent:
            log.info("%s: queued message %d had already reached WhatsApp as %s; not sent again",
                     self.phone, entry.id, result.id)
        else:
            self.messages_out += 1
            self._bus.emit(ev.StatsChanged(self.phone))

    def _expire_queued(self) -> None:
        for entry in self._outbox.take_expired(self.phone, self._config.outgoing.ttl):
            self._bus.emit(ev.SendFailed(
                self.phone, _reply_of(entry), ErrorCode.EXPIRED,
                f"not sent: still queued after outgoing.ttl ({self._config.outgoing.ttl:g} s)"
                + (f"; a try before a crash may have reached WhatsApp as {entry.wa_id}" if entry.tries else "")))
        self._refresh_queue_depth()

    def _refresh_queue_depth(self) -> int:
        """Show how many sends wait in the outbox (not those of the pipeline, being sent now); returns it."""
        depth = self._outbox.depth(self.phone) - self._piped
        if depth != self.status.queued_outgoing:
            self.account = replace(self.account, status=self.status.model_copy(
                update={"queued_outgoing": depth, "updated_at": self._clock()}))
            self._publish_status()
        return depth

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


@dataclass(eq=False)
class _Piped:
    """An accepted send in the pipeline: its outbox entry, the future its caller awaits, and how far it got."""

    entry: OutboxEntry
    message: OutgoingMessage
    outcome: asyncio.Future[SendOutcome]
    begun: bool = False  # its try was begun (`started`), or it was found gone
    synced: bool = False  # ... and that is on disk (fsync'd): it may go to the engine
    started: OutboxEntry | None = None  # the entry with its try begun: its WhatsApp id; None when gone
    reply: asyncio.Future[SendResult] | None = None  # its engine call, when handed to a `SendsInOrder` session


def _in_order(session: object) -> SendsInOrder | None:
    """`session` if it `SendsInOrder` (checked by its method: isinstance with a protocol is slow)."""
    return session if callable(getattr(session, "send_in_order", None)) else None  # type: ignore[return-value]  # checked just now


def _sending(message: OutgoingMessage, wa_id: str | None, retry: bool) -> Callable[[EngineSession], Awaitable[SendResult]]:
    return lambda session: session.send(message, wa_id, retry)


def _retrieved(task: asyncio.Future[SendResult]) -> None:
    """A handed send's outcome is read by `_pipe`; one it stopped waiting for (closing) is read here."""
    if not task.cancelled():
        task.exception()


def _done(loop: asyncio.AbstractEventLoop, outcome: SendOutcome) -> asyncio.Future[SendOutcome]:
    future: asyncio.Future[SendOutcome] = loop.create_future()
    future.set_result(outcome)
    return future


def _reply_of(entry: OutboxEntry) -> ev.Reply:
    """The reply reference stored with a send; rows queued before it had that name call it `route`."""
    reply = entry.request.get("reply", entry.request.get("route"))
    return reply if isinstance(reply, dict) else {}


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


def _retry_later(exc: EngineError) -> bool:
    """A send that failed this way stays queued: the account is not connected, or the engine went away
    mid-call (it may have gone out; the retry carries the same WhatsApp id, so it cannot go out twice)."""
    return exc.code == ErrorCode.NOT_CONNECTED or exc.maybe_done

