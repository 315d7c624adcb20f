"""A full data disk, for real: `data_dir` on a small tmpfs filled by a ballast file, then freed.

Nothing the engine handed over may be lost: what cannot be written is held in memory (and published
from there when the broker is reachable), the status says `error_code: disk_full`, and everything is
written and published once the ballast is gone. Mounting needs root (CI runs as root); elsewhere the
tests skip and say why.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from harness import BridgeEnv, BridgeProcess, Broker, Probe, SmallDisk

A = "5511900000001"
SENDER = "5511988887777"


def ids(probe: Probe, topic: str) -> list[str]:
    return [r.json()["id"] for r in probe.received if r.topic == topic]


async def test_full_disk_holds_incoming_messages_until_space_returns(small_disk: SmallDisk, env: BridgeEnv,
                                                                     bridge: BridgeProcess) -> None:
    """200 messages arrive while the data disk is full: none is lost, the status says `disk_full`,
    and once space is back everything is written and the error clears, with one log line each way."""
    env.write_config(data_dir=str(small_disk.path))
    env.link_sim_account(A)
    bridge.start()
    topic, status_topic = f"{env.base}/{A}/message", f"{env.base}/{A}/status"
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        small_disk.fill()
        mark = probe.mark()
        await probe.sim(A, "incoming", {"sender": SENDER, "repeat": 200, "id": "F", "text": "x" * 2000})
        full = await probe.wait_for(status_topic, lambda r: r.json()["error_code"] == "disk_full", after=mark)
        assert full.json()["state"] == "connected" and "disk" in full.json()["error"]
        await probe.wait_until(lambda _: len(ids(probe, topic)) >= 200, timeout=30, what="200 messages")
        health = await probe.request("bridge", "health", {})
        assert health["data"]["disk_full"] is True
        assert health["data"]["accounts"][A]["messages_in"] == 200
        assert health["data"]["accounts"][A]["error_code"] == "disk_full"

        # a send with an idempotency id while the disk is full goes out once (its id remembered in
        # memory: the repeat is a duplicate), or, where a send must be recorded before it goes out,
        # is refused with disk_full and nothing is sent; never twice, never an internal_error
        first = await probe.request(A, "send", {"to": SENDER, "text": "while full", "id": "k-full"})
        again = await probe.request(A, "send", {"to": SENDER, "text": "while full", "id": "k-full"})
        if first["status"] == "ok":
            assert first["data"]["queued"] is False, first
            assert again["data"].get("duplicate") is True and again["data"]["id"] == first["data"]["id"], again
        else:
            assert first["code"] == again["code"] == "disk_full", (first, again)
        sends = 1 if first["status"] == "ok" else 0

        small_disk.free()
        mark = probe.mark()
        cleared = await probe.wait_for(status_topic, lambda r: r.json()["error_code"] is None, timeout=20, after=mark)
        assert cleared.json()["state"] == "connected" and cleared.json()["error"] is None
        health = await probe.request("bridge", "health", {})
        assert health["data"]["disk_full"] is False and health["data"]["held_in_memory"] == 0
    assert sorted(ids(probe, topic)) == sorted(f"F-{i}" for i in range(200))  # every one, once
    assert len([r for r in probe.received if r.topic == f"{env.base}/sim/{A}/sent"]) == sends
    assert bridge.stop() == 0
    log = bridge.log()
    assert log.count("data disk full") == 1 and log.count("data disk writable again") == 1, log[-3000:]
    assert "Traceback" not in log


async def test_full_disk_and_no_broker_pause_the_engine_instead_of_dropping(
        tmp_path: Path, small_disk: SmallDisk, restartable_broker: Broker) -> None:
    """Broker down and disk full: what cannot be written or published is held up to
    `disk_full_hold_mb`, then the engine is no longer read (nor its heartbeats: it is not killed as
    hung). Space and broker back: every message is published."""
    count, outage = 400, 6.0
    env = BridgeEnv(tmp_path / "bridge", restartable_broker)
    env.write_config(data_dir=str(small_disk.path), disk_full_hold_mb=1,
                     engine_process={"heartbeat_interval": 0.2, "heartbeat_timeout": 1.5},
                     watchdog={"silent_after": 0.5, "check_timeout": 0.5})  # a quiet link is checked at once
    env.link_sim_account(A)
    bridge = BridgeProcess(env)
    topic = f"{env.base}/{A}/message"
    bridge.start()
    try:
        async with Probe(restartable_broker, env.base, [f"{env.base}/#"], client_id=f"keeper-{env.base}",
                         clean=False) as probe:
            await probe.wait_state(A, "connected", timeout=15)
            # WhatsApp keeps the burst while the account is offline and delivers it all on reconnect,
            # by which time the broker is down and the disk full
            loop = asyncio.get_running_loop()
            started = loop.time()
            await probe.sim(A, "outage", {"seconds": outage})
            await probe.wait_state(A, "disconnected")
            await probe.sim(A, "incoming", {"sender": SENDER, "repeat": count, "id": "P", "text": "y" * 10_000})
            assert (await probe.request("bridge", "health", {}))["status"] == "ok"  # the sim control was handled
            small_disk.fill()
            restartable_broker.stop()
            assert loop.time() - started < outage - 1, "too slow to set the scene before the outage ended"
            await bridge.wait_log("engines paused", timeout=30)
            # the scenario: paused for twice the heartbeat timeout, and longer than a watchdog check may take
            # (0.5 s + the engine call's 5 s grace): the silence is the bridge's own, no check may fail on it
            await asyncio.sleep(7)
            assert "killing engine process" not in bridge.log() and "ended unexpectedly" not in bridge.log()
            assert "the check failed" not in bridge.log()
            small_disk.free()
            await bridge.wait_log("data disk writable again", timeout=30)
            restartable_broker.start()
            expected = {f"P-{i}" for i in range(count)}
            try:
                await probe.wait_until(lambda _: set(ids(probe, topic)) == expected, timeout=60, what="every id")
            except AssertionError:
                missing = sorted(expected - set(ids(probe, topic)), key=lambda i: int(i[2:]))
                raise AssertionError(f"missing {len(missing)}: {missing[:20]}") from None
            assert len(ids(probe, topic)) == count  # none was lost, none repeated
        assert bridge.stop() == 0
    finally:
        bridge.cleanup()
    log = bridge.log()
    assert "engines resumed" in log and "Traceback" not in log
