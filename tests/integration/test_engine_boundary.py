"""The engine boundary across a real process: the options built from the config reach the child intact
(and its password stays off `ps`), options that do not fit stop the child with a clear line, and sim
controls are taken by sim sessions only, refused for any other engine by the child and by the supervisor."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from wa_mqtt.accounts.outbox import Outbox
from wa_mqtt.accounts.supervisor import Supervisor
from wa_mqtt.config import Config, EngineProcessConfig
from wa_mqtt.config_loading import build_config
from wa_mqtt.engines import protocol as p
from wa_mqtt.engines.base import EngineError
from wa_mqtt.engines.launch import ChildProcess, ForkServer, exec_child, fork_server_available
from wa_mqtt.engines.options import EngineName, EngineOptions
from wa_mqtt.engines.process import ProcessEngine

from harness import engine_children

PHONE = "5511900000001"
SECRET = "pr0xy-pa55"
Launcher = Callable[[Sequence[str]], Awaitable[ChildProcess]]


def config() -> Config:
    return build_config({"proxy": f"http://me:{SECRET}@127.0.0.1:3128", "outgoing": {"max_media_bytes": 4096}})


def process_engine(name: EngineName, fork_server: bool = False) -> ProcessEngine:
    return ProcessEngine(name, EngineOptions.from_config(config()),
                         EngineProcessConfig(heartbeat_interval=0.2, fork_server=fork_server), log_level="debug")


@pytest.fixture(params=["fork_server", "exec"])
async def launch(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[str], Launcher]]:
    """`launch(engine_name)`: the launcher of one kind, for that engine's children."""
    servers: list[ForkServer] = []
    if request.param == "fork_server" and not fork_server_available():
        pytest.skip("no fork server on this platform")

    def launcher(engine: str) -> Launcher:
        if request.param == "exec":
            return exec_child
        servers.append(ForkServer(engine))
        return servers[-1].launch

    yield launcher
    for server in servers:
        server.close()


async def stderr_until(child: ChildProcess, text: str) -> str:
    assert child.stderr is not None
    while line := await asyncio.wait_for(child.stderr.readline(), 15):
        if text in line.decode():
            return line.decode()
    raise AssertionError(f"{text!r} not in the child's log")


async def call(child: ChildProcess, request: p.Request) -> p.Reply:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(p.encode_request(request))
    await child.stdin.drain()
    while line := await asyncio.wait_for(child.stdout.readline(), 15):
        if isinstance(item := p.decode_child_line(line), p.Reply):
            return item
    raise AssertionError("the child closed its stdout")


async def close(child: ChildProcess) -> int:
    assert child.stdin is not None
    child.stdin.close()
    return await asyncio.wait_for(child.wait(), 20)


def cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


async def test_the_configs_options_reach_the_child_intact_and_stay_off_ps(tmp_path: Path, launch) -> None:
    engine = process_engine("sim")
    child = await launch("sim")(engine.child_args(PHONE, tmp_path / "store.db"))
    seen = await stderr_until(child, "engine options:")  # the child's own (masked) view of what it received
    assert "max_bytes=4096" in seen and "proxy='http://me:***@127.0.0.1:3128'" in seen
    assert SECRET not in seen
    assert SECRET.encode() not in cmdline(child.pid) and PHONE.encode() in cmdline(child.pid)
    assert await close(child) == 0


async def test_options_that_do_not_fit_stop_the_child_with_one_clear_line(tmp_path: Path, launch) -> None:
    args = ["--engine", "sim", "--phone", PHONE, "--store", str(tmp_path / "store.db"),
            "--options", '{"media": {"max_bytes": 0}, "colour": "red"}']
    child = await launch("sim")(args)
    refused = await stderr_until(child, "engine options:")
    assert "colour: unknown key" in refused and "media.max_bytes" in refused
    assert await asyncio.wait_for(child.wait(), 15) == 2


async def test_only_a_sim_child_takes_sim_controls(tmp_path: Path, launch) -> None:
    neonize = await launch("neonize")(process_engine("neonize").child_args(PHONE, tmp_path / "n" / "store.db"))
    refused = await call(neonize, p.Request(1, "sim_control", p.SimControlArgs(action="scan").to_json()))
    assert not refused.ok and refused.code == "invalid_request" and "engine: sim" in refused.error, refused
    assert await close(neonize) == 0

    sim = await launch("sim")(process_engine("sim").child_args(PHONE, tmp_path / "s" / "store.db"))
    taken = await call(sim, p.Request(1, "sim_control",
                                      p.SimControlArgs(action="incoming", payload='{"text": "hi"}').to_json()))
    assert taken.ok, taken
    assert await close(sim) == 0


class _Quiet:
    """Where the supervisor reports to; these tests look at what it raises, not what it reports."""

    def __getattr__(self, _name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


@pytest.mark.parametrize("name", ["sim", "neonize"])
async def test_the_supervisor_passes_sim_controls_to_sim_sessions_only(tmp_path: Path, name: EngineName) -> None:
    def now() -> datetime:
        return datetime.now(UTC)

    store = tmp_path / PHONE / "store.db"
    outbox = Outbox(tmp_path / "outbox.db", now)
    engine = process_engine(name)
    supervisor = Supervisor(PHONE, engine, store, config(), _Quiet(), outbox, now)
    try:
        if name == "sim":
            await supervisor.sim_control("incoming", b'{"text": "hi"}')
            assert engine_children(store)
            return
        with pytest.raises(EngineError) as refused:
            await supervisor.sim_control("scan", b"")
        assert refused.value.code == "invalid_request"
        assert str(refused.value) == ("sim controls exist only with engine: sim; this account runs neonize "
                                      "('scan' refused)")
        assert not engine_children(store)  # refused before any engine process was started for it
    finally:
        await supervisor.close()
        await engine.aclose()
        outbox.close()
