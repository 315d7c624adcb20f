"""Black box: a flood of requests costs the bridge bounded memory, and every request is answered (those
beyond what it holds at once with `busy`)."""

from __future__ import annotations

import json
import os
import signal

from test_request_edge import strict

from harness import BridgeEnv, BridgeProcess, Probe, engine_children

A = "5511900000001"
ANA = "5511988887777"


async def test_a_flood_is_held_within_bounds_and_every_request_is_answered(
        env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.write_config(engine_process={"heartbeat_timeout": 120})  # the stopped engine is not killed meanwhile
    env.link_sim_account(A)
    bridge.start()
    per_account, extra = 1000, 300
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        [child] = engine_children(env.sessions)
        os.kill(child, signal.SIGSTOP)  # every request for A now waits for the engine
        try:
            mark = probe.mark()
            for n in range(per_account + extra):
                await probe.publish(f"{env.base}/{A}/request/typing", {"chat": ANA, "transaction": n})
            topic = f"{env.base}/{A}/response/typing"
            await probe.wait_until(lambda received: sum(1 for r in received[mark:] if r.topic == topic) >= extra,
                                   timeout=60, what=f"{extra} busy answers")
            busy = [strict(r) for r in probe.received[mark:] if r.topic == topic]
            assert len(busy) == extra and {b["code"] for b in busy} == {"busy"}
            assert sorted(b["transaction"] for b in busy) == list(range(per_account, per_account + extra))
            health = (await probe.request("bridge", "health", {}))["data"]  # other targets are still served
            assert health["requests_waiting"] == per_account + 1 and health["requests_busy"] == extra  # + health
        finally:
            os.kill(child, signal.SIGCONT)
        await probe.wait_until(
            lambda received: sum(1 for r in received[mark:] if r.topic == topic) >= per_account + extra,
            timeout=120, what="every request answered")
        answers = [strict(r) for r in probe.received[mark:] if r.topic == topic]
        assert sorted(a["transaction"] for a in answers) == list(range(per_account + extra))
        assert {a["status"] for a in answers if a["transaction"] < per_account} == {"ok"}  # held ones: all done
        health = (await probe.request("bridge", "health", {}))["data"]
        assert health["requests_waiting"] == 1  # the health request itself
    assert bridge.log().count("request flood:") == 1  # one line, not 300


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in kB."""
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines())
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}


async def test_a_flood_costs_the_bridge_bounded_memory(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    bridge.start()
    count = 10_000
    topic = f"{env.base}/{A}/response/typing"
    async with Probe(env.broker, env.base) as watcher, Probe(env.broker, env.base, [topic]) as answers:
        await watcher.wait_state(A, "connected")
        await watcher.request("bridge", "health", {})
        assert bridge.proc is not None
        before = memory_kb(bridge.proc.pid)["VmRSS"]
        payload = json.dumps({"chat": ANA}).encode()
        for _ in range(count):  # as fast as one client can: each publish waits only for the broker's PUBACK
            await watcher.publish(f"{env.base}/{A}/request/typing", payload)
        await answers.wait_until(lambda received: len(received) >= count, timeout=120, what=f"{count} answers")
        assert {strict(r).get("code", "ok") for r in answers.received} <= {"ok", "busy"}
        grown_mb = (memory_kb(bridge.proc.pid)["VmHWM"] - before) / 1024
    # measured: +3 MB; before the bound +56 MB for 10,000 requests (+130 MB for 20,000), growing with the flood
    assert grown_mb < 30, f"the bridge grew {grown_mb:.0f} MB during a {count}-request flood"
