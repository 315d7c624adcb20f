"""The publish window, black box: as fast on Mosquitto's default configuration (Nagle's algorithm on
its side) as with `set_tcp_nodelay true`, and never more in flight than the broker's receive maximum."""

from __future__ import annotations

import asyncio
from pathlib import Path

from harness import BridgeEnv, BridgeProcess, Broker, Probe

A = "5511900000001"


async def burst_seconds(root: Path, broker_options: str, count: int) -> tuple[float, str]:
    """Seconds from asking the sim for `count` messages at once until a subscriber has them all, on a
    broker of its own with these mosquitto.conf options; and the bridge's log."""
    broker = Broker(root / "broker", options=broker_options)
    broker.start()
    bridge = BridgeProcess(BridgeEnv(root / "bridge", broker))
    try:
        bridge.env.link_sim_account(A)
        bridge.env.write_config(log_level="info")
        bridge.start()
        async with Probe(broker, bridge.env.base, [f"{bridge.env.base}/{A}/#"]) as probe:
            await probe.wait_state(A, "connected", timeout=15)
            loop = asyncio.get_running_loop()
            start = loop.time()
            await probe.sim(A, "incoming", {"sender": "5511988887777", "text": "n", "id": "N", "repeat": count})
            await probe.wait_count(f"{bridge.env.base}/{A}/message", count, timeout=60)
            elapsed = loop.time() - start
        assert bridge.stop() == 0
        return elapsed, bridge.log()
    finally:
        bridge.cleanup()
        broker.stop()


async def test_a_burst_is_as_fast_on_mosquittos_defaults_as_with_nodelay(tmp_path: Path) -> None:
    """Batch-then-wait publishing left the last PUBACK of each batch in the broker's Nagle buffer until
    our delayed ACK: on Mosquitto as it comes the same burst took ~4 times as long."""
    count = 3000
    nodelay, _ = await burst_seconds(tmp_path / "nodelay", "set_tcp_nodelay true\n", count)
    default, _ = await burst_seconds(tmp_path / "default", "", count)
    assert default < 1.5 * nodelay + 0.5, f"{count} messages: {default:.2f} s on defaults, {nodelay:.2f} s with nodelay"


async def test_publishes_in_flight_follow_the_brokers_receive_maximum(tmp_path: Path) -> None:
    """Mosquitto announces `max_inflight_messages` as its receive maximum (MQTT v5 CONNACK)."""
    elapsed, log = await burst_seconds(tmp_path, "max_inflight_messages 5\n", 500)
    assert "up to 5 publishes in flight" in log
    assert elapsed < 30
