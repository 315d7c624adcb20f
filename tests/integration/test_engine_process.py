"""Black box: engine sessions in supervised child processes. A crash, a hang or a leak of one account's
engine costs that account a restart and nobody else anything; no child outlives the bridge."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from harness import BridgeEnv, BridgeProcess, Probe, engine_children

A = "5511900000001"
B = "5511900000002"
ANA = "5511988887777"


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


async def test_a_send_whose_engine_dies_after_the_handover_is_retried_under_its_id(
        env: BridgeEnv, bridge: BridgeProcess) -> None:
    """The engine went away before answering: the send may have gone out. It stays queued and is sent
    again under the same WhatsApp id when the engine is back, so it is delivered and answered once."""
    env.link_sim_account(A)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected", timeout=15)
        [child] = engine_children(env.sessions)
        await probe.sim(A, "stall", {"seconds": 30})  # the answer to the next send is held back
        mark = probe.mark()
        await probe.publish(f"{env.base}/{A}/request/send", {"to": ANA, "text": "once", "transaction": "t1"})
        delivered = await probe.wait_for(f"{env.base}/sim/{A}/sent", after=mark)
        os.kill(child, signal.SIGKILL)
        answers = [r.json() for r in await probe.wait_count(f"{env.base}/{A}/response/send", 2)]
        assert [a["transaction"] for a in answers] == ["t1", "t1"]
        assert answers[0]["data"]["queued"] is True, answers[0]  # not "not sent": it may well have been
        assert answers[1]["data"] == {"id": delivered.json()["id"], "queued": False, "from_queue": True}
        await probe.wait_for(f"{env.base}/{A}/status", lambda r: r.json()["queued_outgoing"] == 0, after=mark)
    assert len([r for r in probe.received if r.topic == f"{env.base}/sim/{A}/sent"]) == 1


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


def fork_servers_below(pid: int) -> list[int]:
    """The multiprocessing fork server(s) the bridge started (its direct children)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (entry / "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue
            if parent == pid and b"forkserver" in cmdline:
                found.append(int(entry.name))
    return found


async def test_a_killed_fork_server_costs_a_restart_and_leaves_no_orphan(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    env.link_sim_account(B)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected", timeout=15)
        await probe.wait_state(B, "connected", timeout=15)
        old = set(engine_children(env.sessions))
        assert bridge.proc is not None and len(old) == 2
        servers = fork_servers_below(bridge.proc.pid)
        assert len(servers) == 1
        mark = probe.mark()
        os.kill(servers[0], signal.SIGKILL)
        for phone in (A, B):  # no exit status can come any more: each account's child is ended and replaced
            crashed = await probe.wait_state(phone, "disconnected", timeout=15, after=mark)
            assert crashed["error_code"] == "engine_crashed"
            await probe.wait_state(phone, "connected", timeout=20, after=mark)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 15
        while set(engine_children(env.sessions)) & old:  # the orphans are gone, not left holding the stores
            assert loop.time() < deadline, f"orphaned engine processes: {set(engine_children(env.sessions)) & old}"
            await asyncio.sleep(0.05)
        assert len(engine_children(env.sessions)) == 2
        assert len(fork_servers_below(bridge.proc.pid)) == 1  # started again on the next spawn
        assert (await probe.request(A, "send", {"to": ANA, "text": "after"}))["data"]["queued"] is False
    assert bridge.stop() == 0
    assert bridge.log().count("lost its fork server; ending it") == 2  # ended at once, not left to notice
