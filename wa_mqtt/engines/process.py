"""Engine sessions in supervised child processes: a crash, hang or leak costs one account a restart.

`ProcessEngine` wraps an engine by name (`sim`, `neonize`); each account's session runs in its own
child (engines/child.py) spoken to with the protocol of protocol.py. The parent watches each child:
- it dies (exit, signal, `wa/sim/<phone>/crash`)  → `Crashed` event, pending calls fail;
- no line (heartbeats included) within `heartbeat_timeout` → killed, `Crashed`;
- RSS above `max_rss_mb` (as its heartbeats report it) → killed, `Crashed`;
- many failed connects in one child (neonize leaks a file per connect) → recycled on the next start;
- a stop the engine could not finish cleanly, or an engine whose event pump died (its `stop` answer
  says `recycle`: neonize stopped during pairing, an unmapped ConnectFailure / TemporaryBan) → the
  child is ended at once and the next start spawns a fresh one (issue 14).
A call unanswered within its timeout fails `engine_error` (maybe done) and is forgotten, as is one
cancelled: its late answer is dropped. Sends the pipeline hands over (`send_in_order`) are written in
the order handed, each a plain future settled by its answer (no task per send).
While the bridge's `Intake` is paused (a full data disk holding too much in memory) no child is read:
each blocks on its full stdout pipe, and its silence then is not a hang.
The supervisor turns `Crashed` into `disconnected` / `engine_crashed` and restarts with backoff by
calling `start()` again, which spawns a fresh child. Other accounts never notice.

Configured by two typed values: the `engine_process` config section (`EngineProcessConfig`: heartbeat,
memory budget, recycling, fork server) and the `EngineOptions` every child receives. Sim sessions are
`SimProcessSession`s, the only ones here that forward sim controls (`SimControllable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import JsonValue, TypeAdapter

from ..config import EngineProcessConfig
from ..errors import ErrorCode
from ..model import Contact, GroupInfo, GroupSummary, NumberCheck, OutgoingMessage, SendResult
from . import protocol as p
from .base import Crashed, Disconnected, EmitFn, EngineError, EngineEvent, Intake, PairMethod
from .child import STORE_BUSY_EXIT, STORE_WAIT
from .launch import ChildProcess, ForkServer, exec_child, fork_server_available
from .options import EngineName, EngineOptions

log = logging.getLogger(__name__)

STOP_TIMEOUT = 15.0
CALL_TIMEOUT = 120.0
CALL_GRACE = 5.0  # seconds a ping's answer may take beyond its own timeout (the pipe, a busy child)
ENDS_THE_PROCESS = frozenset({"crash", "hang"})  # sim controls whose call ends with the child gone
T = TypeVar("T")


class ProcessEngine:
    """Runs each account's session of engine `inner` in a child process."""

    def __init__(self, inner: EngineName, options: EngineOptions, settings: EngineProcessConfig, *,
                 log_level: str = "info", intake: Intake | None = None) -> None:
        self.name: str = inner
        self.settings = settings
        self.intake = intake or Intake()
        self.max_rss_kb = settings.max_rss_mb * 1024
        self.log_level = log_level
        self._store_url = options.store_url_value  # `store.url`: sessions in PostgreSQL
        self._options_wire = options.to_wire()  # serialised once; launch.py keeps it off `ps`
        self._sessions: set[ProcessSession] = set()
        self._fork_server = ForkServer(inner) if settings.fork_server and fork_server_available() else None
        # An exec'd child boots an interpreter (~0.15 s CPU for sim, ~0.5 s for neonize): started all at
        # once, a hundred of them starve the bridge (measured: 14 s before 100 statuses were out). A fork
        # costs milliseconds, but the child still sets up its engine: a few more at once, not all.
        cpus = os.cpu_count() or 2
        self.spawn_slots = asyncio.Semaphore(max(2, cpus * (4 if self._fork_server else 1)))

    def has_device(self, store_path: Path) -> bool:
        """Read in the parent without loading the engine (neonize's reader needs no Go)."""
        if self._store_url is not None:  # `store.url`: the account's schema in PostgreSQL
            from ..store.pg_sessions import has_device
            from .sim_pg import account_of

            phone = account_of(store_path)
            try:
                known = has_device(self._store_url, phone)
            except Exception as exc:  # noqa: BLE001 (no server now: "no device"; the next start asks again)
                log.warning("%s: session store in PostgreSQL unreadable: %s", phone, exc)
                return False
            if known is not None or self.name == "neonize":
                return bool(known)
        if self.name == "sim":  # (with store.url: a file not yet taken into PostgreSQL, see sim_pg.py)
            from .sim_store import read_device

            return read_device(store_path) is not None
        from .neonize_store import stored_device_jids

        try:
            return bool(stored_device_jids(store_path))
        except Exception as exc:  # noqa: BLE001 (an unreadable store is "no device"; its check reports why)
            log.warning("store %s unreadable: %s", store_path, exc)
            return False

    def open_session(self, phone: str, store_path: Path, emit: EmitFn) -> ProcessSession:
        kind = SimProcessSession if self.name == "sim" else ProcessSession
        session = kind(self, phone, store_path, emit)
        self._sessions.add(session)
        return session

    def child_args(self, phone: str, store_path: Path) -> list[str]:
        return ["--engine", self.name, "--phone", phone, "--store", str(store_path),
                "--options", self._options_wire, "--heartbeat", str(self.settings.heartbeat_interval),
                "--log-level", self.log_level]

    async def launch(self, phone: str, store_path: Path) -> ChildProcess:
        args = self.child_args(phone, store_path)
        if self._fork_server is not None:
            return await self._fork_server.launch(args)
        return await exec_child(args)

    def forget(self, session: ProcessSession) -> None:
        self._sessions.discard(session)

    async def aclose(self) -> None:
        await asyncio.gather(*(s.close() for s in list(self._sessions)), return_exceptions=True)
        if self._fork_server is not None:
            self._fork_server.close()


class ProcessSession:
    """One account's session, forwarded to its child process."""

    def __init__(self, engine: ProcessEngine, phone: str, store_path: Path, emit: EmitFn) -> None:
        self._engine = engine
        self.phone = phone
        self._store_path = store_path
        self._emit = emit
        self._proc: ChildProcess | None = None
        self._pending: dict[int, _Pending[Any]] = {}  # request id → what its reply settles
        self._ids = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []
        self._last_line = 0.0
        self._expected_exit = False
        self._failed_connects = 0
        self._kill_reason: str | None = None
        self._hello = asyncio.Event()
        self.recycled = 0  # children ended because their engine was no longer sound (diagnostics, tests)
        self._lines: list[bytes] | None = None  # requests to write at the end of this loop turn (`_write`)
        self._written: asyncio.Future[None] | None = None
        self.pid: int | None = None
        self.last_rss_kb: int | None = None

    # -- EngineSession -------------------------------------------------------------------------
    async def start(self, pair_method: PairMethod = "qr") -> None:
        if self._proc is not None and self._failed_connects >= self._engine.settings.recycle_after_failures:
            log.info("%s: recycling the engine process after %d failed connects", self.phone, self._failed_connects)
            await self._end_child()
        if self._proc is None:
            await self._spawn()
        await self._call("start", p.StartArgs(method=pair_method))

    async def stop(self) -> None:
        if self._proc is not None:
            try:
                answer = await self._call("stop", p.Args(), timeout=STOP_TIMEOUT)
            except EngineError as exc:
                log.warning("%s: engine did not stop in time (%s); ending its process", self.phone, exc)
                await self._end_child()
                return
            if isinstance(answer, dict) and answer.get("recycle"):
                log.info("%s: recycling the engine process: %s", self.phone, answer["recycle"])
                self.recycled += 1
                await self._end_child()

    async def logout(self) -> None:
        await self._call("logout", p.Args())

    async def send(self, message: OutgoingMessage, message_id: str | None = None, retry: bool = False) -> SendResult:
        result = await self._call("send", p.SendArgs(message=message, message_id=message_id, retry=retry))
        return SendResult.model_validate(result)

    def send_in_order(self, message: OutgoingMessage, message_id: str, retry: bool,
                      chained: bool, message_json: bytes | None = None) -> asyncio.Future[SendResult]:
        """`SendsInOrder`: the request is queued for writing now (written at the end of this loop turn,
        in the order of the calls), before any earlier one is answered; the child carries them out in
        that order. The future fails as `_call` does (a timeout, the child gone, its refusal). A plain
        future, not a task: no task and no `wait_for` per send. Nor is the pipe drained for it: the
        supervisor's engine window bounds what waits in its buffer, and a child that went away
        fails it (`_child_gone`) as a broken pipe would. With `message_json` the line is written around
        it (`encode_send`): the message is neither validated nor written again."""
        try:
            if message_json is not None:
                return self._request_line("send", functools.partial(
                    p.encode_send, message_json=message_json, message_id=message_id, retry=retry, chained=chained),
                    CALL_TIMEOUT, _send_result)
            args = p.SendArgs(message=message, message_id=message_id, retry=retry, chained=chained)
            return self._request("send", args, CALL_TIMEOUT, _send_result)
        except EngineError as exc:
            failed: asyncio.Future[SendResult] = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            return failed

    async def react(self, chat: str, message_id: str, emoji: str, sender: str | None = None) -> str:
        return str(await self._call("react", p.ReactArgs(chat=chat, id=message_id, emoji=emoji, sender=sender)))

    async def mark_read(self, chat: str, ids: list[str], sender: str | None = None) -> None:
        await self._call("mark_read", p.MarkReadArgs(chat=chat, ids=ids, sender=sender))

    async def typing(self, chat: str, state: str) -> None:
        await self._call("typing", p.TypingArgs(chat=chat, state=state))

    async def check(self, numbers: list[str]) -> list[NumberCheck]:
        result = await self._call("check", p.CheckArgs(numbers=numbers))
        return [NumberCheck.model_validate(item) for item in result] if isinstance(result, list) else []
    async def groups(self) -> list[GroupSummary]:
        return TypeAdapter(list[GroupSummary]).validate_python(await self._call("groups", p.Args()))

    async def group_info(self, jid: str) -> GroupInfo:
        return GroupInfo.model_validate(await self._call("group_info", p.GroupInfoArgs(jid=jid)))

    async def contacts(self) -> list[Contact]:
        return TypeAdapter(list[Contact]).validate_python(await self._call("contacts", p.Args()))

    async def edit(self, chat: str, message_id: str, text: str) -> str:
        return str(await self._call("edit", p.EditArgs(chat=chat, id=message_id, text=text)))

    async def revoke(self, chat: str, message_id: str) -> str:
        return str(await self._call("revoke", p.RevokeArgs(chat=chat, id=message_id)))

    async def reject_call(self, caller: str, call_id: str) -> None:
        await self._call("reject_call", p.RejectCallArgs(caller=caller, id=call_id))
    async def ping(self, timeout: float) -> None:
        await self._call("ping", p.PingArgs(timeout=timeout), timeout=timeout + CALL_GRACE)

    async def close(self) -> None:
        self._engine.forget(self)
        await self._end_child()

    # -- the child -----------------------------------------------------------------------------
    async def _spawn(self) -> None:
        async with self._engine.spawn_slots:
            await self._spawn_now()
            try:  # hold the slot until the child is up (or clearly is not)
                await asyncio.wait_for(self._hello.wait(), self._engine.settings.heartbeat_timeout)
            except TimeoutError:
                log.warning("%s: engine process did not report in within %g s", self.phone,
                            self._engine.settings.heartbeat_timeout)

    async def _spawn_now(self) -> None:
        loop = asyncio.get_running_loop()
        self._hello.clear()
        self._proc = await self._engine.launch(self.phone, self._store_path)
        self.pid = self._proc.pid
        self._last_line = loop.time()
        self._expected_exit = False
        self._failed_connects = 0
        self.last_rss_kb = None  # the new child reports its own
        proc = self._proc
        self._tasks = [asyncio.create_task(self._read(proc), name=f"engine-{self.phone}-out"),
                       asyncio.create_task(self._relay_logs(proc), name=f"engine-{self.phone}-log"),
                       asyncio.create_task(self._watch(proc), name=f"engine-{self.phone}-watch")]
        log.info("%s: %s engine process %d started", self.phone, self._engine.name, proc.pid)

    async def _call(self, op: str, args: p.Args, timeout: float = CALL_TIMEOUT) -> JsonValue:
        proc = self._proc
        answer = self._request(op, args, timeout, _result)
        assert proc is not None and proc.stdin is not None and self._written is not None  # `_request` checked
        try:
            await self._written
            await proc.stdin.drain()
            return await answer
        except (BrokenPipeError, ConnectionResetError):  # not connected any more; a send is retried later
            raise EngineError("the engine process went away", code=ErrorCode.NOT_CONNECTED, maybe_done=True) from None
        finally:
            if not answer.cancel() and not answer.cancelled():  # cancelled, or the pipe broke: not waited for
                answer.exception()  # read: the child's end may be in it while this call left another way

    def _request(self, op: str, args: p.Args, timeout: float, answer: Callable[[p.Reply], T]) -> asyncio.Future[T]:
        """Write request `op` (`_write`) and return the future of `answer(reply)`. It fails with an
        `EngineError` when no reply comes within `timeout` s (`engine_error`, maybe done: a timer, not
        `wait_for`, which made a task per call) or the child ends (`_child_gone`); once done or
        cancelled the request is forgotten (a late reply is dropped). Raises `EngineError` at once
        when no child runs or the request cannot be encoded (nothing is registered then)."""
        return self._request_line(op, lambda request_id: p.encode_call(request_id, op, args), timeout, answer)

    def _request_line(self, op: str, line_of: Callable[[int], bytes], timeout: float,
                      answer: Callable[[p.Reply], T]) -> asyncio.Future[T]:
        """`_request` with the request written by `line_of(request_id)`."""
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise EngineError("the engine process is not running", code=ErrorCode.NOT_CONNECTED)
        loop = asyncio.get_running_loop()
        request_id = next(self._ids)
        try:  # before it is registered: a request that cannot be written leaves nothing pending
            line = line_of(request_id)
        except ValueError as exc:  # pydantic's serialisation error (a lone surrogate from a config text)
            raise EngineError(f"the {op} request cannot be written to the engine: {exc}",
                              code=ErrorCode.ENGINE_ERROR) from exc
        future: asyncio.Future[T] = loop.create_future()
        self._pending[request_id] = _Pending(future, answer)
        timer = loop.call_later(timeout, _expire, future, op, timeout)
        future.add_done_callback(functools.partial(self._forget, request_id, timer))
        self._write(proc, line)
        return future

    def _forget(self, request_id: int, timer: asyncio.TimerHandle, _future: asyncio.Future[Any]) -> None:
        timer.cancel()
        self._pending.pop(request_id, None)

    def _write(self, proc: ChildProcess, line: bytes) -> asyncio.Future[None]:
        """Write `line` to the child at the end of this loop turn, with the others written in it (the
        sends pipelined in one turn: one write, one wake-up of the child); the future is done then."""
        if self._lines is None:
            self._lines = []
            self._written = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(self._flush_lines, proc)
        self._lines.append(line)
        assert self._written is not None
        return self._written

    def _flush_lines(self, proc: ChildProcess) -> None:
        lines, written = self._lines or [], self._written
        self._lines = self._written = None
        try:
            if proc.stdin is not None and lines:
                proc.stdin.write(b"".join(lines))  # a broken pipe shows in `drain`
        finally:
            if written is not None and not written.done():
                written.set_result(None)

    async def _read(self, proc: ChildProcess) -> None:
        assert proc.stdout is not None
        loop = asyncio.get_running_loop()
        error: str | None = None
        while True:
            if not self._engine.intake.is_open:
                await self._paused(proc)
            try:
                line = await proc.stdout.readline()
            except (ValueError, asyncio.LimitOverrunError) as exc:
                error = f"unreadable output: {exc}"
                break
            if not line:
                break
            self._last_line = loop.time()
            try:
                item = p.decode_child_line(line)
            except p.ProtocolError as exc:
                error = f"protocol error: {exc}"
                break
            self._dispatch(item)
        if error is not None:
            await self._kill(proc, error)
        code = await proc.wait()
        self._child_gone(proc, error or _describe_exit(code))

    async def _paused(self, proc: ChildProcess) -> None:
        """Read nothing more from the child until the intake opens: its pipe fills and its writes block.
        The reader's own buffer would otherwise take in up to 2 x MAX_LINE, so its pipe is paused too.
        A child that ends meanwhile (stopped, killed) is read to the end at once: what its pipe holds
        is a pipe's worth at most, and nothing else would ever read it."""
        transport = getattr(proc.stdout, "_transport", None)  # asyncio's StreamReader has no public handle on it
        if transport is not None:
            transport.pause_reading()
        waits = [asyncio.ensure_future(self._engine.intake.wait_open()), asyncio.ensure_future(proc.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
            if transport is not None and not transport.is_closing():
                transport.resume_reading()
            self._last_line = asyncio.get_running_loop().time()

    def _dispatch(self, item: p.ChildLine) -> None:
        if isinstance(item, p.Reply):
            pending = self._pending.get(item.id)
            if pending is not None and not pending.future.done():
                try:
                    value = pending.answer(item)
                except Exception as exc:  # noqa: BLE001 (the caller's: a refusal, a result that does not fit)
                    pending.future.set_exception(exc)
                else:
                    pending.future.set_result(value)
        elif isinstance(item, p.Event):
            self._note(item.event)
            self._emit(item.event)
        elif isinstance(item, p.Heartbeat):
            self.last_rss_kb = item.rss_kb
        elif isinstance(item, p.Hello):
            self._hello.set()

    def _note(self, event: EngineEvent) -> None:
        if isinstance(event, Disconnected) and event.code in (ErrorCode.DIAL_FAILED, ErrorCode.CONNECT_FAILURE) \
                and not event.engine_reconnects:
            self._failed_connects += 1

    async def _relay_logs(self, proc: ChildProcess) -> None:
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            text = line.decode(errors="replace").rstrip()
            level = logging.WARNING if (" ERROR " in text or "Traceback" in text or "panic" in text) else logging.DEBUG
            log.log(level, "%s", text)

    async def _watch(self, proc: ChildProcess) -> None:
        """Kill a child that stops answering or grows past its memory budget."""
        loop = asyncio.get_running_loop()
        engine = self._engine
        settings = engine.settings
        while proc.returncode is None:
            await asyncio.sleep(settings.heartbeat_interval)
            if not engine.intake.is_open:  # not read, so not heard: silence is no hang
                self._last_line = loop.time()
                continue
            silent = loop.time() - self._last_line
            if silent > settings.heartbeat_timeout:
                await self._kill(proc, f"no heartbeat for {silent:.0f} s (hung)")
                return
            rss = self.last_rss_kb  # from its heartbeats: reading /proc for 500 children each second cost the loop 10 %
            if rss is not None and rss > engine.max_rss_kb:
                await self._kill(proc, f"memory budget exceeded ({rss // 1024} MB > {engine.max_rss_kb // 1024} MB)")
                return

    async def _kill(self, proc: ChildProcess, reason: str) -> None:
        if proc.returncode is None:
            log.warning("%s: killing engine process %d: %s", self.phone, proc.pid, reason)
            self._kill_reason = reason
            proc.kill()

    def _child_gone(self, proc: ChildProcess, how: str) -> None:
        if proc is not self._proc:
            return
        self._proc = None
        self._hello.set()  # a child that died before reporting in frees its start slot
        reason = self._kill_reason or how
        self._kill_reason = None
        for pending in self._pending.values():  # `not_connected`: a send in flight stays queued, retried with its id
            if not pending.future.done():
                pending.future.set_exception(EngineError(f"the engine process ended ({reason})",
                                                         code=ErrorCode.NOT_CONNECTED, maybe_done=True))
        if not self._expected_exit:
            log.warning("%s: engine process %d ended unexpectedly: %s", self.phone, proc.pid, reason)
            self._emit(Crashed(error=reason))

    async def _end_child(self) -> None:
        """Ask the child to close, then terminate, then kill; reap it and its helper tasks."""
        proc = self._proc
        if proc is None:
            return
        self._expected_exit = True
        if proc.returncode is None:
            with contextlib.suppress(EngineError):  # a child that cannot answer is ended below
                await self._call("close", p.Args(), timeout=5)
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                self._signal(proc, signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 3)
                except TimeoutError:
                    self._signal(proc, signal.SIGKILL)
                    await proc.wait()
        for task in self._tasks:  # the watchdog sleeps a heartbeat between looks: not worth waiting for
            if task.get_name().endswith("-watch"):
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._proc = None

    @staticmethod
    def _signal(proc: ChildProcess, sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)  # the child and anything it started
        except ProcessLookupError:
            return


class SimProcessSession(ProcessSession):
    """A sim session in its child process; it also forwards the `wa/sim/<phone>/...` controls."""

    async def sim_control(self, action: str, payload: bytes) -> None:
        if self._proc is None:
            await self._spawn()
        proc = self._proc
        try:
            await self._call("sim_control", p.SimControlArgs(action=action, payload=payload.decode("latin-1")))
        except EngineError:
            if action in ENDS_THE_PROCESS and self._proc is not proc:
                return  # it died (or was killed, hung) as asked: that is the answer, not a failure
            raise


@dataclass(frozen=True, slots=True)
class _Pending(Generic[T]):
    """A request waiting for its reply: the future it settles, with what `answer` makes of the reply."""

    future: asyncio.Future[T]
    answer: Callable[[p.Reply], T]


def _result(reply: p.Reply) -> JsonValue:
    """A reply's result, or the `EngineError` it answers with."""
    if not reply.ok:
        raise EngineError(reply.error, code=reply.code)
    return reply.result


def _send_result(reply: p.Reply) -> SendResult:
    return SendResult.model_validate(_result(reply))


def _expire(future: asyncio.Future[Any], op: str, timeout: float) -> None:
    if not future.done():
        future.set_exception(EngineError(f"the engine did not answer {op} within {timeout:g} s",
                                         code=ErrorCode.ENGINE_ERROR, maybe_done=True))


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code == STORE_BUSY_EXIT:
        return f"its store stayed in use by another process for {STORE_WAIT:g} s"
    return f"exit code {code}"
