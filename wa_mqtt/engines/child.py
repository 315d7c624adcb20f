"""An engine session in a child process: `python -m wa_mqtt.engines.child --engine sim --phone P --store S`.

Runs one account's real session (sim or neonize) and speaks the protocol of protocol.py on
stdin/stdout; logs go to stderr. Requests are handled one at a time, in order. A heartbeat with the
child's RSS goes out every `--heartbeat` seconds. When stdin closes (the bridge went away, even by
SIGKILL) the session is closed and the process exits: no orphan keeps a WhatsApp session open.
While it has the store open it holds the account folder's lock (folder_lock.py): a second engine
process for the same store (one of a killed bridge, still closing) is waited for, never run beside.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ..folder_lock import FolderBusy, FolderLock, lock_folder, lock_folder_waiting
from . import protocol as p

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


def make_inner_engine(name: str, options: dict[str, Any]) -> Any:
    from ..media import MediaPolicy

    policy = MediaPolicy.from_options(options.get("media", {}))
    if name == "sim":
        from .sim import SimEngine

        # `wa/sim/<phone>/crash`: die abruptly
        return SimEngine(crash=lambda: os._exit(CRASH_EXIT), media_policy=policy)
    from .neonize_engine import NeonizeEngine

    return NeonizeEngine(media_policy=policy, proxy=options.get("proxy"))


class ChildServer:
    def __init__(self, engine_name: str, phone: str, store: Path, options: dict[str, Any], heartbeat: float) -> None:
        self._engine_name = engine_name
        self._phone = phone
        self._store = store
        self._options = options
        self._heartbeat = heartbeat
        self._out = sys.stdout.buffer

    def _write(self, line: bytes) -> None:
        self._out.write(line)
        self._out.flush()

    async def run(self) -> int:
        from ..model import OutgoingMessage

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
            return STORE_BUSY_EXIT
        engine = make_inner_engine(self._engine_name, self._options)
        session = engine.open_session(self._phone, self._store, lambda event: self._write(p.encode_event(event)))
        gc.freeze()  # what is loaded now lives as long as the process: full collections skip it (no 10 ms pauses)
        self._write(p.encode_hello(os.getpid(), self._engine_name))
        handlers = {
            "start": lambda a: session.start(a.get("method", "qr")),
            "stop": lambda a: session.stop(),
            "logout": lambda a: session.logout(),
            "send": lambda a: session.send(OutgoingMessage.model_validate(a["message"]), a.get("message_id"),
                                           bool(a.get("retry"))),
            "react": lambda a: session.react(a["chat"], a["id"], a["emoji"], a.get("sender")),
            "mark_read": lambda a: session.mark_read(a["chat"], a["ids"], a.get("sender")),
            "typing": lambda a: session.typing(a["chat"], a["state"]),
            "sim_control": lambda a: session.sim_control(a["action"], a.get("payload", "").encode("latin-1")),
        }
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
                self._write(p.encode_reply(await self._call(handlers[request.op], request)))
        finally:
            beat.cancel()
            try:
                await asyncio.wait_for(session.close(), 15)
                await engine.aclose()
            except Exception:  # closing must never keep the process alive
                log.exception("session did not close cleanly")
            if store_lock is not None:
                store_lock.release()  # only now may another engine process open this store
        return 0

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
    async def _call(handler: Any, request: p.Request) -> p.Reply:
        from .base import EngineError

        try:
            result = await handler(request.args)
        except EngineError as exc:
            return p.Reply(request.id, False, error=str(exc), code=exc.code)
        except Exception as exc:  # a bug in the engine is an answer, not a dead child
            log.exception("%s failed", request.op)
            return p.Reply(request.id, False, error=f"{type(exc).__name__}: {exc}", code="engine_error")
        if hasattr(result, "model_dump"):
            result = result.model_dump(mode="json")
        return p.Reply(request.id, True, result)

    async def _beat(self) -> None:
        seq = 0
        while True:
            self._write(p.encode_heartbeat(seq, rss_kb()))
            seq += 1
            await asyncio.sleep(self._heartbeat)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wa_mqtt.engines.child")
    parser.add_argument("--engine", choices=["sim", "neonize"], required=True)
    parser.add_argument("--phone", required=True)
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--options", default=None, help="JSON; default: $WAMQTT_ENGINE_OPTIONS or {}")
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, force=True,
                        format=f"%(asctime)s %(levelname)-7s engine[{args.phone}] %(name)s: %(message)s")
    logging.getLogger("whatsmeow").setLevel(logging.WARNING)
    options = json.loads(args.options or os.environ.pop(OPTIONS_ENV, "") or "{}")
    server = ChildServer(args.engine, args.phone, args.store, options, args.heartbeat)
    code = asyncio.run(server.run())
    sys.stdout.flush()
    os._exit(code)  # neonize's Go threads must not hold the exit (docs/neonize.md)


if __name__ == "__main__":
    main()
