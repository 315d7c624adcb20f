"""One account's send pipeline: accepted sends enter the outbox in order, their tries are begun and
made durable by one fsync for all begun meanwhile (a group commit), then handed to the engine, several
at once to a session that `SendsInOrder`; each send is completed, failed or left queued. What waits
in the outbox goes out with the queued-send flush once connected. The owning `Supervisor` injects the
account's state, its engine session and the engine call, and shows the queue depth in the status.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from .. import events as ev
from ..bus import EventBus
from ..disk_full import DiskFull
from ..engines.base import EngineError, EngineSession, SendsInOrder, new_message_id
from ..errors import ErrorCode
from ..model import AccountState, OutgoingMessage, SendOutcome, SendResult
from ..store.protocols import OutboxStore as Outbox
from .outbox import OutboxEntry, request_json
from .sync_thread import SyncThread

log = logging.getLogger(__name__)
PIPELINE = 64  # accepted sends of one account waiting for the engine; more wait to be accepted
ENGINE_WINDOW = 16  # of those, begun and handed to the engine at once, unanswered (`_dispatch`)
EngineSend = Callable[[OutgoingMessage, str | None, bool], Awaitable[SendResult]]  # message, its WhatsApp id, retry


class SendPipeline:
    """The sends of one account (`phone`). `state`, `session` and `ttl` are read when needed; `send`
    calls the engine (serialised with the account's other engine calls); `show_depth` shows how many
    sends wait in the outbox. Stop with `close()`."""

    def __init__(self, phone: str, outbox: Outbox, bus: EventBus, *, state: Callable[[], AccountState],
                 session: Callable[[], EngineSession | None], send: EngineSend, ttl: Callable[[], float],
                 show_depth: Callable[[int], None]) -> None:
        self.phone = phone
        self._outbox = outbox
        self._bus = bus
        self._state = state
        self._session = session
        self._send = send
        self._ttl = ttl
        self._show_depth = show_depth
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
        self._syncer = SyncThread(outbox.sync, f"outbox-sync-{phone}")
        self._closed = False
        self.messages_out = 0

    @property
    def _connected(self) -> bool:
        return self._state() == AccountState.CONNECTED

    async def close(self) -> None:
        """No send is accepted or begun from now on; the pipeline's sends stay queued in the outbox."""
        self._closed = True
        for task in (self._flush_task, self._pipe_task, self._sync_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._syncer.close()

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
        while self._piped >= PIPELINE:
            self._pipe_room.clear()
            await self._pipe_room.wait()
        # after the wait, with no await before `enqueue`: a send with the same id that completed while
        # this one waited must be found here, not queued again under a new WhatsApp id
        return self._take(message, reply)

    def accept_now(self, message: OutgoingMessage, reply: ev.Reply) -> asyncio.Future[SendOutcome] | None:
        """`accept` when it need not wait (open, and fewer than `PIPELINE` sends waiting for the engine),
        as it; None, having done nothing, when it would wait or refuse (the caller awaits `accept`)."""
        return None if self._closed or self._piped >= PIPELINE else self._take(message, reply)

    def _take(self, message: OutgoingMessage, reply: ev.Reply) -> asyncio.Future[SendOutcome]:
        """`accept`'s work once there is room, without an await (see `accept`)."""
        loop = asyncio.get_running_loop()
        if message.id and (known := self._outbox.sent_id(self.phone, message.id)):
            return _done(loop, SendOutcome(id=known, queued=False, duplicate=True))
        # into the pipeline when connected and nothing waits in the outbox before it but the pipeline's
        # sends; its try begins with the enqueue then (its WhatsApp id stored in the same commit)
        piping = self._connected and not self._flushing() and self._outbox.depth(self.phone) == self._piped
        begin = piping and not self._stalled
        written = _message_json(message)  # once: in the outbox's request, and in the engine's line (`_hand`)
        request: dict[str, object] | str = \
            {"message": message.model_dump(mode="json", exclude_none=True), "reply": dict(reply)} if written is None \
            else f'{{"message":{written.decode()},"reply":{request_json(dict(reply))}}}'
        entry, duplicate = self._outbox.enqueue(self.phone, request, message.id, new_message_id() if begin else None)
        if duplicate:
            return _done(loop, SendOutcome(id=None, queued=True, queue_id=entry.id, duplicate=True))
        if piping:
            piped = _Piped(entry, message, written, loop.create_future(), message.kind != "text")
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
        log.info("%s: send queued (%s), %d waiting", self.phone, self._state(), depth)
        return SendOutcome(id=None, queued=True, queue_id=entry.id, duplicate=False)

    def _dispatch(self) -> None:
        """Begin the tries of the accepted sends not begun yet, in order: each stores its WhatsApp id (a
        commit without fsync); `_sync_begun` then makes them durable with one fsync (a group commit)
        before the engine may have any. Runs at the end of the loop turn a send was accepted in."""
        self._dispatch_due = False
        if self._stalled or self._closed or not self._connected:
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
        """fsync the outbox for the begun sends, on the pipeline's sync thread: the loop goes on serving
        meanwhile, and the sends begun during one fsync share the next (an fsync takes ~0.2 ms on an
        idle disk, milliseconds on a busy one). Then `_hand` them over."""
        try:
            while batch := [piped for piped in itertools.islice(self._pipeline, self._begun) if not piped.synced]:
                await self._syncer.sync()  # covers every commit made before it: the batch's tries included
                for piped in batch:
                    piped.synced = True
                self._synced.set()
                self._hand()
        finally:
            self._synced.set()  # whatever happened, `_wait_synced` looks again

    async def _wait_synced(self, piped: _Piped) -> None:
        """Until `piped` (begun) is synced; starts `_sync_begun` if `_dispatch` has not yet (the loop
        never waits for an fsync itself)."""
        while not piped.synced:
            if self._sync_task is None or self._sync_task.done():
                self._sync_task = asyncio.create_task(self._sync_begun(), name=f"sync-{self.phone}")
            self._synced.clear()
            await self._synced.wait()

    def _hand(self) -> None:
        """Hand the begun sends to a session that `SendsInOrder` (an engine process), in order, up to
        `ENGINE_WINDOW` unanswered, each `chained` when one before it is still unanswered. A media send
        goes alone (it may take long: those behind it must not time out waiting). Any other session
        gets them from `_pipe`, one at a time."""
        in_order = _in_order(self._session())
        if in_order is None or self._stalled or self._closed or not self._connected:
            return
        media = False  # a media send is with the engine
        for piped in itertools.islice(self._pipeline, self._begun):
            if not piped.synced:
                break
            if piped.reply is not None:
                media = media or piped.media
                continue
            started = piped.started
            if started is None:  # gone meanwhile (expired or removed)
                continue
            if self._handed >= ENGINE_WINDOW or (self._handed and (media or piped.media)):
                break
            reply = asyncio.ensure_future(in_order.send_in_order(
                piped.message, started.wa_id or new_message_id(), started.tries > 1, self._handed > 0, piped.written))
            reply.add_done_callback(_retrieved)  # awaited by `_pipe`, unless it was cancelled first
            piped.reply = reply
            self._handed += 1

    async def _pipe(self) -> None:
        """Take the answers of the accepted sends in order; each send is answered with its own. A send
        that must wait (not connected, the engine went away mid-call, a full disk) stays queued, and so
        does every send after it that was not with the engine yet (the engine refuses the chained ones
        it has: `SendsInOrder`); they are answered `queued: true` and go out in order with the next
        flush. A send the engine refused for good is answered with its error; the ones after it go on.
        The successful answers found in at once leave the outbox in one commit (`complete_all`), before
        any of them is answered: what a kill or power loss does to them is what it does to one."""
        try:
            while self._pipeline:
                piped = self._pipeline[0]
                if not piped.begun:
                    self._dispatch()
                if not piped.begun or (piped.reply is None and (self._stalled or not self._connected)):
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
                    if piped.reply is None and (self._stalled or not self._connected):
                        continue  # taken as above, on the next round
                try:
                    if piped.reply is not None:
                        result = await piped.reply
                    else:
                        result = await self._send(piped.message, started.wa_id, started.tries > 1)
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
                done = [(piped, started, result), *_answered(self._pipeline)]
                self._outbox.complete_all([(started, result.id) for _, started, result in done])
                for piped, _, result in done:
                    self._sent(piped.entry, result)
                    self._unpipe(piped, SendOutcome(id=result.id, queued=False))
                self._hand()  # room in the engine window
        finally:
            for piped in list(self._pipeline):  # cancelled (closing): they wait in the outbox for the next start
                self._unpipe(piped, SendOutcome(id=None, queued=True, queue_id=piped.entry.id, duplicate=False))
            self._stalled = False
            self._refresh_queue_depth()
        if self._connected and not self._closed:
            self.start_flush()  # what stayed queued (a flush it held back meanwhile included)

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

    # -- outgoing queue ------------------------------------------------------------------------
    def _flushing(self) -> bool:
        return self._flush_task is not None and not self._flush_task.done()

    def start_flush(self) -> None:
        """Send what waits in the outbox, unless the pipeline or a flush is at it (connected: on the
        connect, each heartbeat, and after the pipeline emptied)."""
        if not self._piped and self._outbox.depth(self.phone) and not self._flushing():  # never beside the pipeline
            self._flush_task = asyncio.create_task(self._flush(), name=f"flush-{self.phone}")

    async def _flush(self) -> None:
        """Send queued messages oldest first while connected, including those queued meanwhile."""
        self.expire_queued()
        last = 0
        while self._connected and (entry := self._outbox.next_pending(self.phone, last)):
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
            result = await self._send(message, started.wa_id, retry)
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

    def expire_queued(self) -> None:
        """Fail the queued sends older than `outgoing.ttl` (`expired`); not one with the engine now (it
        may be out already: it is answered with the engine's result)."""
        for entry in self._outbox.take_expired(self.phone, self._ttl(), self._in_flight):
            self._bus.emit(ev.SendFailed(
                self.phone, _reply_of(entry), ErrorCode.EXPIRED,
                f"not sent: still queued after outgoing.ttl ({self._ttl():g} s)"
                + (f"; a try before a crash may have reached WhatsApp as {entry.wa_id}" if entry.tries else "")))
        self._refresh_queue_depth()

    def _refresh_queue_depth(self) -> int:
        """Show how many sends wait in the outbox (not those of the pipeline, being sent now); returns it."""
        depth = self._outbox.depth(self.phone) - self._piped
        self._show_depth(depth)
        return depth


@dataclass(eq=False)
class _Piped:
    """An accepted send in the pipeline: its outbox entry, the future its caller awaits, and how far it got."""

    entry: OutboxEntry
    message: OutgoingMessage
    written: bytes | None  # `message` as JSON (`_message_json`), as the outbox stored it; None if it could not be
    outcome: asyncio.Future[SendOutcome]
    media: bool  # not a text: it goes to the engine alone (`_hand`); `message.kind` read once, it is not free
    begun: bool = False  # its try was begun (`started`), or it was found gone
    synced: bool = False  # ... and that is on disk (fsync'd): it may go to the engine
    started: OutboxEntry | None = None  # the entry with its try begun: its WhatsApp id; None when gone
    reply: asyncio.Future[SendResult] | None = None  # its engine call, when handed to a `SendsInOrder` session


def _answered(pipeline: deque[_Piped]) -> Iterator[tuple[_Piped, OutboxEntry, SendResult]]:
    """The sends right behind the first one the engine answered already, successfully, in order: they
    are completed with it (one commit, `Outbox.complete_all`), as the loop in `_pipe` would one by one."""
    for piped in itertools.islice(pipeline, 1, None):
        reply, started = piped.reply, piped.started
        if reply is None or started is None or not reply.done() or reply.cancelled() or reply.exception() is not None:
            return
        yield piped, started, reply.result()


def _message_json(message: OutgoingMessage) -> bytes | None:
    """`message` as pydantic writes it (exclude_none: the JSON `model_dump(mode="json", exclude_none=True)`
    is), written once for the outbox and the engine's line; None when it cannot be written so (a lone
    surrogate, from a config text): the outbox then escapes it as before, and the engine refuses it."""
    try:
        return message.__pydantic_serializer__.to_json(message, exclude_none=True)
    except ValueError:  # pydantic's serialisation error
        return None


def _in_order(session: object) -> SendsInOrder | None:
    """`session` if it `SendsInOrder` (checked by its method: isinstance with a protocol is slow)."""
    return session if callable(getattr(session, "send_in_order", None)) else None  # type: ignore[return-value]  # checked just now


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


def _retry_later(exc: EngineError) -> bool:
    """A send that failed this way stays queued: the account is not connected, or the engine went away
    mid-call (it may have gone out; the retry carries the same WhatsApp id, so it cannot go out twice)."""
    return exc.code == ErrorCode.NOT_CONNECTED or exc.maybe_done
