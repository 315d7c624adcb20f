"""How engine child processes are started: forked from a preloaded fork server, or exec'd afresh.

An exec'd child boots a whole interpreter and imports pydantic and the engine (~0.15 s CPU for the
sim): a hundred accounts restored at once took 14 s to connect. The fork server (the standard
library's multiprocessing "forkserver") imports all that once; each child is then a fork of it,
ready in milliseconds, and still a separate process with its own memory, so a crash, hang or leak
stays one account's problem.

Modules that start threads at import must not be preloaded: a fork keeps only the forking thread.
neonize starts Go's runtime when it is imported, so neonize children import it themselves after
the fork (the fork server only saves them the interpreter and the bridge's own modules).

Both kinds of child look the same to the caller (`ChildProcess`): pipes for stdin/stdout/stderr,
`pid`, `returncode`, `wait()`, `kill()`. Every child is the leader of its own session (a Ctrl-C in
the bridge's terminal is the bridge's to handle) and exits when its stdin closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any, Protocol

from . import protocol as p
from .child import OPTIONS_ENV

log = logging.getLogger(__name__)

CHILD_MODULE = "wa_mqtt.engines.child"
# Imported once by the fork server. Nothing here may start a thread at import (see above).
PRELOAD_COMMON = ["asyncio", "pydantic", "wa_mqtt.model", "wa_mqtt.engines.base", "wa_mqtt.engines.protocol",
                  "wa_mqtt.engines.options", CHILD_MODULE]
PRELOAD_BY_ENGINE = {"sim": ["sqlite3", "wa_mqtt.engines.sim"], "neonize": ["wa_mqtt.media"]}
LOST_STATUS = 255  # what multiprocessing reports when the fork server closed a child's sentinel without a status


class ChildProcess(Protocol):
    """What the engine supervisor needs of a child (asyncio.subprocess.Process has it all)."""

    pid: int
    stdin: asyncio.StreamWriter | None
    stdout: asyncio.StreamReader | None
    stderr: asyncio.StreamReader | None

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def kill(self) -> None: ...


async def exec_child(args: Sequence[str]) -> ChildProcess:
    """A fresh interpreter running the child module (slower to start; needs nothing preloaded).

    `--options` (which may hold a proxy password) goes through the environment, not the command line
    every user can read with `ps`."""
    args, environ = list(args), dict(os.environ)
    if "--options" in args:
        at = args.index("--options")
        environ[OPTIONS_ENV] = args[at + 1]
        del args[at:at + 2]
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", CHILD_MODULE, *args, env=environ,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        limit=p.MAX_LINE, start_new_session=True)


def fork_server_available() -> bool:
    return "forkserver" in multiprocessing.get_all_start_methods()


class ForkServer:
    """Starts children as forks of one preloaded server process (started on first use).

    All blocking multiprocessing calls (start, reaping) run on one private thread, so the standard
    library's bookkeeping of its children is never touched from two threads at once.
    """

    def __init__(self, engine: str) -> None:
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(PRELOAD_COMMON + PRELOAD_BY_ENGINE.get(engine, []))
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="fork-server")

    async def launch(self, args: Sequence[str]) -> ForkedChild:
        loop = asyncio.get_running_loop()
        stdin_r, stdin_w = os.pipe()
        stdout_r, stdout_w = os.pipe()
        stderr_r, stderr_w = os.pipe()
        child_ends = [Connection(stdin_r, writable=False), Connection(stdout_w, readable=False),
                      Connection(stderr_w, readable=False)]
        process = self._context.Process(target=run_forked_child, args=(list(args), *child_ends), daemon=True,
                                        name=f"wa_mqtt-engine-{args[args.index('--phone') + 1]}"
                                        if "--phone" in args else "wa_mqtt-engine")
        try:
            await loop.run_in_executor(self._executor, process.start)
        except BaseException:
            for fd in (stdin_w, stdout_r, stderr_r):
                os.close(fd)
            raise
        finally:
            for end in child_ends:
                end.close()  # the child has its own copies now
        child = ForkedChild(process, self._executor)
        await child.attach(loop, stdin_w, stdout_r, stderr_r)
        return child

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class ForkedChild:
    """A child forked by the fork server, with asyncio pipes and an awaitable exit."""

    def __init__(self, process: Any, executor: ThreadPoolExecutor) -> None:
        self._process = process
        self._executor = executor
        self.pid: int = process.pid
        self.stdin: asyncio.StreamWriter | None = None
        self.stdout: asyncio.StreamReader | None = None
        self.stderr: asyncio.StreamReader | None = None
        self._exited: asyncio.Future[int] | None = None

    async def attach(self, loop: asyncio.AbstractEventLoop, stdin_w: int, stdout_r: int, stderr_r: int) -> None:
        self._exited = loop.create_future()
        self.stdout = await _reader(loop, stdout_r)
        self.stderr = await _reader(loop, stderr_r)
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin,
                                                            os.fdopen(stdin_w, "wb", buffering=0))
        self.stdin = asyncio.StreamWriter(transport, protocol, None, loop)
        loop.add_reader(self._process.sentinel, self._on_sentinel, loop)

    def _on_sentinel(self, loop: asyncio.AbstractEventLoop) -> None:
        """The fork server reports the exit status on the sentinel; reap it on the fork-server thread."""
        loop.remove_reader(self._process.sentinel)

        def reap() -> int:
            self._process.join()
            code = self._process.exitcode
            self._process.close()
            if code == LOST_STATUS and _alive(self.pid):
                # The fork server died, so no status came: the child is an orphan that still holds its
                # account's store. End it now, before its replacement opens the same store.
                log.warning("engine process %d lost its fork server; ending it", self.pid)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
                return -signal.SIGKILL
            return -1 if code is None else code

        future = loop.run_in_executor(self._executor, reap)
        future.add_done_callback(self._reaped)

    def _reaped(self, future: asyncio.Future[int]) -> None:
        assert self._exited is not None
        if not self._exited.done():
            self._exited.set_result(255 if future.cancelled() or future.exception() else future.result())
        if self.stdin is not None:
            self.stdin.close()

    @property
    def returncode(self) -> int | None:
        return self._exited.result() if self._exited is not None and self._exited.done() else None

    async def wait(self) -> int:
        assert self._exited is not None
        return await asyncio.shield(self._exited)

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether `pid` runs and is not a zombie (Linux /proc; elsewhere: whether it exists)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


async def _reader(loop: asyncio.AbstractEventLoop, fd: int) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=p.MAX_LINE, loop=loop)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop),
                                 os.fdopen(fd, "rb", buffering=0))
    return reader


def run_forked_child(args: list[str], stdin: Connection, stdout: Connection, stderr: Connection) -> None:
    """In the fork: own session, a title saying what it serves, the pipes as fds 0/1/2, then the child
    module's main (never returns)."""
    import setproctitle

    os.setsid()
    title = args[:args.index("--options")] if "--options" in args else args  # options may hold a proxy password
    setproctitle.setproctitle(" ".join([CHILD_MODULE, *title]))
    for target, end in ((0, stdin), (1, stdout), (2, stderr)):
        if end.fileno() != target:
            os.dup2(end.fileno(), target)
            end.close()
    sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115 - the process's own stdio
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115 - likewise
    sys.stderr = open(2, "w", encoding="utf-8", closefd=False)  # noqa: SIM115 - likewise
    from .child import main

    main(args)
