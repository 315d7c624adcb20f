"""What the retained topics say must be true: after a clean stop, at every state change, after a send.
Black box: the real bridge, a real broker, the sim engine."""

from __future__ import annotations

import asyncio

from harness import BridgeEnv, BridgeProcess, Probe, Received

A = "5511900000001"
C = "5511900000003"


def index_of(received: list[Received], topic: str, payload: bytes) -> int:
    return next(i for i, r in enumerate(received) if r.topic == topic and r.payload == payload)


async def test_a_clean_stop_leaves_every_running_account_stopped(env: BridgeEnv, bridge: BridgeProcess) -> None:
    """`connected` and `pairing` must not outlive the bridge: each running account is published
    `stopped` (its QR cleared) before `bridge/state` goes `offline`, and that is what stays retained."""
    env.link_sim_account(A)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        assert (await probe.request("bridge", "pair", {"phone": C}))["status"] == "ok"
        await probe.wait_for(f"{env.base}/{C}/qr", lambda r: bool(r.payload))
        mark = probe.mark()
        assert bridge.stop() == 0
        await probe.wait_for(f"{env.base}/bridge/state", lambda r: r.payload == b"offline", after=mark)
        offline = index_of(probe.received, f"{env.base}/bridge/state", b"offline")
        before = probe.received[mark:offline]
        for phone in (A, C):
            statuses = [r.json() for r in before if r.topic == f"{env.base}/{phone}/status"]
            assert statuses, f"{phone}: no status published between the stop and `offline`"
            last = statuses[-1]
            assert last["state"] == "stopped" and last["error_code"] is None, last
            assert last["updated_at"] >= last["since"]
        assert any(r.topic == f"{env.base}/{C}/qr" and r.payload == b"" for r in before), "the QR stayed on offer"
    async with Probe(env.broker, env.base) as late:  # a new subscriber: the retained truth
        for phone in (A, C):
            status = await late.wait_for(f"{env.base}/{phone}/status")
            assert status.retain and status.json()["state"] == "stopped"
        accounts = await late.wait_for(f"{env.base}/bridge/accounts")
        assert {a["phone"]: a["state"] for a in accounts.json()} == {A: "stopped", C: "stopped"}
        assert (await late.wait_for(f"{env.base}/bridge/state")).payload == b"offline"
    mark = late.mark()
    bridge.start()  # and the next start restores the linked account as before
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected", timeout=15, after=mark)


async def test_status_updated_at_is_never_older_than_since(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    bridge.start()
    status_topic = f"{env.base}/{A}/status"
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        await asyncio.sleep(1.1)  # the scenario: the next change falls in a later second than the last update
        mark = probe.mark()
        await probe.sim(A, "drop")
        await probe.wait_state(A, "disconnected", after=mark)
        await probe.wait_state(A, "connected", after=mark)
    statuses = [r.json() for r in probe.received if r.topic == status_topic and r.payload]
    assert len(statuses) >= 4
    stale = [(s["state"], s["since"], s["updated_at"]) for s in statuses if s["updated_at"] < s["since"]]
    assert not stale, stale


async def test_stats_follow_sends_and_incoming_messages(env: BridgeEnv, bridge: BridgeProcess) -> None:
    """`wa/<phone>/stats` is refreshed after a send and after a message, not only with the status
    heartbeat (60 s by default)."""
    env.link_sim_account(A)
    bridge.start()
    stats = f"{env.base}/{A}/stats"
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        sent = await probe.request(A, "send", {"to": "5511988887777", "text": "counted"})
        assert sent["status"] == "ok", sent
        await probe.wait_for(stats, lambda r: r.json()["messages_out"] == 1, timeout=5)
        await probe.sim(A, "incoming", {"sender": "5511988887777", "text": "counted too"})
        await probe.wait_for(stats, lambda r: r.json() == {"messages_in": 1, "messages_out": 1, "reconnects": 0},
                             timeout=5)
    async with Probe(env.broker, env.base, [stats]) as late:
        retained = await late.wait_for(stats)
        assert retained.retain and retained.json()["messages_out"] == 1


async def test_a_backup_is_logged_once(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        response = await probe.request("bridge", "backup", {"phone": A})
        name = response["data"]["backups"][A]
    assert bridge.stop() == 0
    lines = [line for line in bridge.log().splitlines() if name in line and " DEBUG " not in line]
    assert len(lines) == 1, lines
