"""Both ways of starting an engine child (fork server, exec) give a child that speaks the protocol,
lives in its own session, says what it serves in `ps` (and no secret), dies by SIGKILL and exits when
its stdin closes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import pytest

from wa_mqtt.engines import protocol as p
from wa_mqtt.engines.launch import ChildProcess, ForkServer, exec_child, fork_server_available

PHONE = "5511900000001"


SECRET = "pr0xy-secret"


def child_args(store: Path) -> list[str]:
    options = {"proxy": f"http://me:{SECRET}@127.0.0.1:3128", "media": {}}
    return ["--engine", "sim", "--phone", PHONE, "--store", str(store), "--options", json.dumps(options),
            "--heartbeat", "0.2"]


async def next_line(child: ChildProcess) -> p.ChildLine:
    assert child.stdout is not None
    line = await asyncio.wait_for(child.stdout.readline(), 15)
    assert line, "the child closed its stdout"
    return p.decode_child_line(line)


async def call(child: ChildProcess, request: p.Request) -> p.Reply:
    assert child.stdin is not None
    child.stdin.write(p.encode_request(request))
    await child.stdin.drain()
    while not isinstance(item := await next_line(child), p.Reply):
        pass
    return item


@pytest.fixture(params=["fork_server", "exec"])
async def launcher(request):
    if request.param == "exec":
        yield exec_child
        return
    if not fork_server_available():
        pytest.skip("no fork server on this platform")
    server = ForkServer("sim")
    yield server.launch
    server.close()


async def test_child_speaks_the_protocol_and_exits_when_stdin_closes(tmp_path: Path, launcher) -> None:
    child = await launcher(child_args(tmp_path / "store.db"))
    hello = await next_line(child)
    assert isinstance(hello, p.Hello) and hello.pid == child.pid
    assert os.getsid(child.pid) == child.pid  # its own session: a Ctrl-C of the bridge is not its business
    assert b"wa_mqtt.engines.child" in Path(f"/proc/{child.pid}/cmdline").read_bytes()
    assert PHONE.encode() in Path(f"/proc/{child.pid}/cmdline").read_bytes()
    assert SECRET.encode() not in Path(f"/proc/{child.pid}/cmdline").read_bytes()  # `ps` shows no proxy password
    assert isinstance(await next_line(child), p.Heartbeat)
    reply = await call(child, p.Request(1, "start", {"method": "qr"}))  # a store without a device: it pairs
    assert reply.ok, reply
    assert child.returncode is None
    assert child.stdin is not None
    child.stdin.close()
    assert await asyncio.wait_for(child.wait(), 20) == 0
    assert child.returncode == 0


async def test_killed_child_reports_the_signal(tmp_path: Path, launcher) -> None:
    child = await launcher(child_args(tmp_path / "store.db"))
    assert isinstance(await next_line(child), p.Hello)
    child.kill()
    assert await asyncio.wait_for(child.wait(), 15) == -signal.SIGKILL
