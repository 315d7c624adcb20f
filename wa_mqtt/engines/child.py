"""An engine session in a child process: `python -m wa_mqtt.engines.child --engine sim --phone P --store S`.

Runs one account's real session (sim or neonize) and speaks the protocol of protocol.py on
stdin/stdout; logs go to stderr. Requests are handled one at a time, in order, sends the bridge
wrote several at once too (a chained one after a send that must wait is refused: `p.SendChain`).
A heartbeat with the child's RSS goes out every `--heartbeat` seconds. When stdin closes (the bridge went away, even by
SIGKILL) the session is closed and the process exits: no orphan keeps a WhatsApp session open.
While it has the store open it holds the account folder's lock (folder_lock.py): a second engine
process for the same store (one of a killed bridge, still closing) is waited for, never run beside.

Its `EngineOptions` (engines/options.py) come as `--options` JSON or, from an exec'd child's launcher,
in the environment (`WAMQTT_ENGINE_OPTIONS`); they are validated before anything starts (exit 2 when
they do not fit). Only a sim child answers `sim_control`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, JsonValue

from ..errors import ErrorCode
from ..folder_lock import FolderBusy, FolderLock, lock_folder, lock_folder_waiting
from . import protocol as p
from .base import Engine, EngineError, EngineSession, Recyclable, SimControllable
from .options import EngineName, EngineOptions, EngineOptionsError

log = logging.getLogger("wa_mqtt.engine_child")
CRASH_EXIT = 70
STORE_BUSY_EXIT = 75  # EX_TEMPFAIL: another process still held the store after STORE_WAIT seconds
STORE_WAIT = 30.0  # longer than an engine process takes to close its session (at most ~15 s)
OPTIONS_ENV = "WAMQTT_ENGINE_OPTIONS"  # an exec'd child's options: a proxy password stays off `ps` (WA_MQTT_* is config)


def rss_kb(pid: int | str = "self") -> int | None:
    """Resident set size from /proc (Linux); None where it cannot be read."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def make_inner_engine(name: EngineName, options: EngineOptions, *, crash: Callable[[], None] | None = None) -> Engine:
    """The engine itself (in this process): what a child runs, or the bridge with `engine_process.in_process`.
    `crash` is what the sim's `wa/sim/<phone>/crash` does (default: a `Crashed` event)."""
    policy = options.media.policy()
    if name == "sim":
        from .sim import SimEngine
        from .sim_pg import sim_engine_for

        return sim_engine_for(SimEngine(crash=crash, media_policy=policy, downloads=options.downloads,
                                        presence=options.presence), options.store_url_value)
    from .neonize_engine import NeonizeEngine

    return NeonizeEngine(media_policy=policy, proxy=options.proxy_url, downloads=options.downloads,
                         presence=options.presence, store_url=options.store_url_value)


class ChildServer:
    def __init__(self, engine_name: EngineName, phone: str, store: Path, options: EngineOptions,
                 heartbeat: float) -> None:
        self._engine_name = engine_name
        self._phone = phone
        self._store = store
        self._options = options
        self._heartbeat = heartbeat
        self._out = sys.stdout.buffer
        self._chain = p.SendChain()
        self._flush_due = False
        self._lines: list[bytes] = []
        self._before_output: Callable[[], None] | None = None  # the session's `commit_sent_ids` (sim)

    def _write(self, line: bytes) -> None:
        """Lines written in one loop turn (a send's events and its answer, a burst of messages) go to
        the bridge with one write at its end: the bridge wakes once for them, not once per line."""
        self._lines.append(line)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on the loop (no engine does that now): at once, as ever
            self._flush()
            return
        if not self._flush_due:
            self._flush_due = True
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Write the lines held, after what they report is durable: the sim commits the sent ids of
        this turn's sends first (`batch_sent_ids`). If that fails, nothing of the turn goes out and
        the process ends: the bridge retries those sends under the same ids, none of them recorded
        (a log write the disk took only in part is cut off again first, see sim_sent)."""
        self._flush_due = False
        if self._before_output is not None:
            try:
                self._before_output()
            except Exception:
                log.exception("the sends of this turn could not be recorded; ending without answering them")
                sys.stderr.flush()
                os._exit(CRASH_EXIT)
        if self._lines:
            self._out.write(b"".join(self._lines))
            self._lines.clear()
        self._out.flush()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=p.MAX_LINE)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        beat = asyncio.create_task(self._beat())  # also while waiting for the store: a wait is not a hang
        try:
            store_lock = await self._lock_store()
        except FolderBusy as exc:
            log.error("giving up: the store folder %s is still in use by %s", exc.folder,
                      f"process {exc.pid}" if exc.pid else "another process")
            beat.cancel()
            self._flush()
            return STORE_BUSY_EXIT
        engine = make_inner_engine(self._engine_name, self._options, crash=self._crash)
        session = engine.open_session(self._phone, self._store, lambda event: self._write(p.encode_event(event)))
        batch = getattr(session, "batch_sent_ids", None)
        if callable(batch):  # the sim: its sent ids committed once a turn, before the turn's output
            batch()
            self._before_output = session.commit_sent_ids  # type: ignore[attr-defined]  # the sim's, with batch_sent_ids
        gc.freeze()  # what is loaded now lives as long as the process: full collections skip it (no 10 ms pauses)
        self._write(p.encode_hello(os.getpid(), self._engine_name))
        try:
            while line := await reader.readline():
                try:
                    request = p.decode_request(line)
                except p.ProtocolError as exc:
                    log.error("refused a line from the bridge: %s", exc)
                    return 2
                if request.op == "close":
                    self._write(p.encode_reply(p.Reply(request.id, True)))
                    break
                if request.op != "send":  # before an op that may block or end the process (`hang`, `crash`)
                    self._flush()
                reply = self._chain.refusal(request) or await self._call(session, request)
                self._chain.answered(request, reply)
                self._write(p.encode_reply(reply))
        finally:
            beat.cancel()
            try:
                await asyncio.wait_for(session.close(), 15)
                await engine.aclose()
            except Exception:  # closing must never keep the process alive
                log.exception("session did not close cleanly")
            if store_lock is not None:
                store_lock.release()  # only now may another engine process open this store
            self._flush()  # what the last turn wrote (a `close` answer): after the session closed
        return 0

    def _crash(self) -> None:
        """`wa/sim/<phone>/crash`: die abruptly, but with what was written before it out."""
        self._flush()
        os._exit(CRASH_EXIT)

    async def _lock_store(self) -> FolderLock | None:
        """Hold the account's folder while this process has its store open. An engine process of a
        bridge that was just killed may still be closing the same store: wait for it to let go. A
        folder that cannot carry a lock file (read-only) is left to the engine, which reports it."""
        folder = self._store.parent
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            return lock_folder(folder)
        except FolderBusy as exc:
            log.warning("the store folder %s is in use by %s; waiting up to %g s for it", folder,
                        f"process {exc.pid}" if exc.pid else "another process", STORE_WAIT)
        except OSError as exc:
            log.warning("cannot lock the store folder %s (%s)", folder, exc.strerror or exc)
            return None
        return await lock_folder_waiting(folder, STORE_WAIT)

    @staticmethod
    async def _call(session: EngineSession, request: p.Request) -> p.Reply:
        try:
            result = await _perform(session, request.op, request.parsed_args())
            if isinstance(result, BaseModel):  # the same JSON as its model_dump(mode="json"), written at once
                return p.Reply(request.id, True, result_json=result.__pydantic_serializer__.to_json(result))
        except p.ProtocolError as exc:  # arguments that do not fit the op: a bridge bug, answered
            return p.Reply(request.id, False, error=str(exc), code=ErrorCode.ENGINE_ERROR)
        except EngineError as exc:
            return p.Reply(request.id, False, error=str(exc), code=exc.code)
        except Exception as exc:  # a bug in the engine is an answer, not a dead child
            log.exception("%s failed", request.op)
            return p.Reply(request.id, False, error=f"{type(exc).__name__}: {exc}", code=ErrorCode.ENGINE_ERROR)
        return p.Reply(request.id, True, result)

    async def _beat(self) -> None:
        seq = 0
        while True:
            self._write(p.encode_heartbeat(seq, rss_kb()))
            seq += 1
            await asyncio.sleep(self._heartbeat)


async def _perform(session: EngineSession, op: str, args: p.Args) -> JsonValue | BaseModel:
    """Carry out one request on the session; its result as JSON, or as a model to be written as JSON."""
    if isinstance(args, p.StartArgs):
        await session.start(args.method)
    elif isinstance(args, p.SendArgs):
        return await session.send(args.message, args.message_id, args.retry)
    elif isinstance(args, p.ReactArgs):
        return await session.react(args.chat, args.id, args.emoji, args.sender)
    elif isinstance(args, p.MarkReadArgs):
        await session.mark_read(args.chat, args.ids, args.sender)
    elif isinstance(args, p.TypingArgs):
        await session.typing(args.chat, args.state)
    elif isinstance(args, p.CheckArgs):
        return [check.model_dump(mode="json") for check in await session.check(args.numbers)]
    elif op in ("groups", "contacts"):
        found = await (session.groups() if op == "groups" else session.contacts())
        return [item.model_dump(mode="json") for item in found]
    elif isinstance(args, p.GroupInfoArgs):
        return (await session.group_info(args.jid)).model_dump(mode="json")
    elif isinstance(args, p.EditArgs):
        return await session.edit(args.chat, args.id, args.text)
    elif isinstance(args, p.RevokeArgs):
        return await session.revoke(args.chat, args.id)
    elif isinstance(args, p.RejectCallArgs):
        await session.reject_call(args.caller, args.id)
    elif isinstance(args, p.PingArgs):
        await session.ping(args.timeout)
    elif isinstance(args, p.SimControlArgs):
        if not isinstance(session, SimControllable):
            raise EngineError(f"sim controls exist only with engine: sim ({args.action!r} refused)",
                              code=ErrorCode.INVALID_REQUEST)
        await session.sim_control(args.action, args.payload.encode("latin-1"))
    elif op == "stop":
        await session.stop()
        if isinstance(session, Recyclable) and (reason := session.recycle_reason):
            return {"recycle": reason}  # issue 14: the bridge replaces this process
    elif op == "logout":
        await session.logout()
    else:
        raise EngineError(f"unknown operation {op!r}")
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wa_mqtt.engines.child")
    parser.add_argument("--engine", choices=["sim", "neonize"], required=True)
    parser.add_argument("--phone", required=True)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--options", default=None,
                        help=f"EngineOptions as JSON; default: ${OPTIONS_ENV}, else the defaults")
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, force=True,
                        format=f"%(asctime)s %(levelname)-7s engine[{args.phone}] %(name)s: %(message)s")
    logging.getLogger("whatsmeow").setLevel(logging.WARNING)
    try:
        options = EngineOptions.from_wire(args.options or os.environ.pop(OPTIONS_ENV, ""))
    except EngineOptionsError as exc:
        log.error("%s", exc)
        sys.stderr.flush()
        os._exit(2)
    log.debug("engine options: %r", options)
    server = ChildServer(args.engine, args.phone, args.store, options, args.heartbeat)
    code = asyncio.run(server.run())
    sys.stdout.flush()
    os._exit(code)  # neonize's Go threads must not hold the exit (docs/neonize.md)


if __name__ == "__main__":
    main()
