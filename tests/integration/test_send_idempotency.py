"""A send handed to WhatsApp right before the bridge is killed goes out once, black box: the bridge
stores the WhatsApp id before the engine call and a retry reuses it; the sim, like WhatsApp, drops a
message id it already delivered. `wa/sim/<phone>/stall` holds the engine's answer, so the kill lands
exactly between the handover and the bridge hearing of it."""

from __future__ import annotations

import signal
from typing import Any

from harness import BridgeEnv, BridgeProcess, Probe

A = "5511900000061"
ANA = "5511988887777"
STALL = {"seconds": 10}  # longer than the test needs to kill the bridge; the stalled child then exits


def deliveries(probe: Probe, env: BridgeEnv) -> list[tuple[str, str]]:
    """(text, WhatsApp id) of each message the sim delivered, in order. A crash may make the bridge
    publish one `sim/sent` twice (MQTT publishing is at-least-once across a kill): one id, one delivery."""
    seen: list[tuple[str, str]] = []
    for item in probe.received:
        if item.topic == f"{env.base}/sim/{A}/sent" and (delivery := (item.json()["text"], item.json()["id"])) not in seen:
            seen.append(delivery)
    return seen


async def kill_after_handover(probe: Probe, bridge: BridgeProcess, env: BridgeEnv, text: str) -> dict[str, Any]:
    """Wait until the sim delivered `text`, then SIGKILL the bridge before it hears back; the delivery."""
    delivered = await probe.wait_for(f"{env.base}/sim/{A}/sent", lambda r: r.json()["text"] == text, timeout=15)
    assert bridge.kill() == -signal.SIGKILL
    return delivered.json()


async def restart(probe: Probe, bridge: BridgeProcess) -> int:
    """Start the bridge again; the probe's mark before it, once the account is connected."""
    mark = probe.mark()
    bridge.start()
    await probe.wait_state(A, "connected", timeout=15, after=mark)
    return mark


async def deliver(probe: Probe, env: BridgeEnv, text: str) -> None:
    """Send `text` while connected and see it delivered. Sent last, whatever the restart re-sent has
    arrived before it; sent first, a re-send with an id of its own could not reuse the earlier one's
    by chance (the sim numbers its own ids from 1 again after a restart)."""
    response = await probe.request(A, "send", {"to": ANA, "text": text})
    assert response["status"] == "ok", response
    await probe.wait_for(f"{env.base}/sim/{A}/sent", lambda r: r.json()["text"] == text)


async def test_a_send_killed_after_handover_is_answered_after_restart_and_not_sent_again(
        env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected", timeout=15)
        await deliver(probe, env, "first")
        await probe.sim(A, "stall", STALL)
        await probe.publish(f"{env.base}/{A}/request/send",
                            {"to": ANA, "text": "once", "id": "key-once", "transaction": "t-once"})
        delivered = await kill_after_handover(probe, bridge, env, "once")
        mark = await restart(probe, bridge)
        # the request that never got its answer gets it now, with the id WhatsApp has
        answer = await probe.wait_for(f"{env.base}/{A}/response/send",
                                      lambda r: r.json().get("transaction") == "t-once", timeout=15, after=mark)
        assert answer.json()["data"] == {"id": delivered["id"], "queued": False, "from_queue": True}
        # the client retries with its idempotency key: the same id, nothing new delivered
        again = await probe.request(A, "send", {"to": ANA, "text": "once", "id": "key-once"})
        assert again["data"] == {"id": delivered["id"], "queued": False, "duplicate": True}
        await deliver(probe, env, "marker")
    assert [text for text, _id in deliveries(probe, env)] == ["first", "once", "marker"]


async def test_a_queued_send_killed_after_handover_goes_out_once(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected", timeout=15)
        await deliver(probe, env, "first")
        await probe.sim(A, "outage", {"seconds": 3600})
        await probe.wait_state(A, "disconnected")
        queued = await probe.request(A, "send", {"to": ANA, "text": "queued", "id": "key-queued"})
        assert queued["data"]["queued"] is True
        await probe.sim(A, "stall", STALL)
        await probe.sim(A, "outage", {"seconds": 0})  # WhatsApp is back: the bridge reconnects and flushes
        delivered = await kill_after_handover(probe, bridge, env, "queued")
        mark = await restart(probe, bridge)
        answer = await probe.wait_for(f"{env.base}/{A}/response/send",
                                      lambda r: r.json().get("data", {}).get("from_queue") is True, timeout=15, after=mark)
        assert answer.json()["data"]["id"] == delivered["id"]
        await probe.wait_for(f"{env.base}/{A}/status", lambda r: r.json()["queued_outgoing"] == 0, after=mark)
        await deliver(probe, env, "marker")
    assert [text for text, _id in deliveries(probe, env)] == ["first", "queued", "marker"]
    assert "had already reached WhatsApp" in bridge.log()
