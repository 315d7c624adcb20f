"""Black box: engine sessions in supervised child processes. A crash, a hang or a leak of one account's
engine costs that account a restart and nobody else anything; no child outlives the bridge."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from harness import BridgeEnv, BridgeProcess, Probe

A = "5511900000001"
B = "5511900000002"
ANA = "5511988887777"


def engine_children(sessions: Path) -> list[int]:
    """PIDs of engine child processes serving stores under `sessions`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()  # exec'd: its argv; forked: the title it set
        except OSError:
            continue
        if b"wa_mqtt.engines.child" in cmdline and str(sessions).encode() in cmdline:
            found.append(int(entry.name))
    return found


async def wait_no_children(sessions: Path, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while engine_children(sessions):
        if loop.time() > deadline:
            raise AssertionError(f"engine children still running: {engine_children(sessions)}")
        await asyncio.sleep(0.05)


def never_left_connected(probe: Probe, env: BridgeEnv, phone: str, after: int) -> bool:
    return not [r for r in probe.received[after:] if r.topic == f"{env.base}/{phone}/status"
                and r.payload and r.json()["state"] != "connected"]


async def test_a_crashed_engine_restarts_and_the_other_account_never_notices(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    env.link_sim_account(B)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected", timeout=15)
        await probe.wait_state(B, "connected", timeout=15)
        children = engine_children(env.sessions)
        assert len(children) == 2
        mark = probe.mark()
        await probe.sim(A, "crash")
        event = await probe.wait_for(f"{env.base}/bridge/event", lambda r: r.json()["type"] == "engine_crashed",
                                     after=mark)
        assert event.json()["data"]["phone"] == A and "exit code 70" in event.json()["data"]["error"]
        crashed = await probe.wait_state(A, "disconnected", after=mark)
        assert crashed["error_code"] == "engine_crashed" and crashed["next_retry_at"]
        await probe.wait_state(A, "connected", timeout=15, after=mark)
        response = await probe.request(A, "send", {"to": ANA, "text": "after the crash"})
        assert response["status"] == "ok" and response["data"]["queued"] is False
        assert never_left_connected(probe, env, B, mark)
        assert len(engine_children(env.sessions)) == 2 and set(engine_children(env.sessions)) != set(children)


async def test_a_hung_engine_is_killed_and_restarted(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.write_config(engine_process={"heartbeat_interval": 0.2, "heartbeat_timeout": 1.5})
    env.link_sim_account(A)
    env.link_sim_account(B)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected", timeout=15)
        await probe.wait_state(B, "connected", timeout=15)
        mark = probe.mark()
        await probe.sim(A, "hang")
        event = await probe.wait_for(f"{env.base}/bridge/event", lambda r: r.json()["type"] == "engine_crashed",
                                     timeout=15, after=mark)
        assert "no heartbeat" in event.json()["data"]["error"]
        await probe.wait_state(A, "connected", timeout=15, after=mark)
        assert never_left_connected(probe, env, B, mark)


async def test_an_engine_over_its_memory_budget_is_recycled(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.write_config(engine_process={"heartbeat_interval": 0.2, "max_rss_mb": 160})
    env.link_sim_account(A)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected", timeout=15)
        mark = probe.mark()
        await probe.sim(A, "balloon", {"mb": 200})
        event = await probe.wait_for(f"{env.base}/bridge/event", lambda r: r.json()["type"] == "engine_crashed",
                                     timeout=15, after=mark)
        assert "memory budget exceeded" in event.json()["data"]["error"]
        await probe.wait_state(A, "connected", timeout=15, after=mark)


async def test_no_engine_process_outlives_the_bridge(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    env.link_sim_account(B)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected", timeout=15)
        await probe.wait_state(B, "connected", timeout=15)
        assert len(engine_children(env.sessions)) == 2
        assert bridge.stop(signal.SIGTERM) == 0
        assert engine_children(env.sessions) == []  # a clean stop reaps them before exiting

        mark = probe.mark()
        bridge.start()
        await probe.wait_state(A, "connected", timeout=15, after=mark)
        await probe.wait_state(B, "connected", timeout=15, after=mark)
        assert bridge.kill() == -signal.SIGKILL
        await wait_no_children(env.sessions)  # their stdin closed: they end by themselves


async def test_engine_logs_reach_the_bridge_log(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected", timeout=15)
    assert bridge.stop() == 0
    assert f"{A}: sim engine process" in bridge.log()
    assert os.path.exists(env.sessions / A / "store.db")
