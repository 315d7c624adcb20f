"""Black box with the real neonize library: the bridge restores a synthetic linked device from its store
in a neonize child process, and with no route to WhatsApp it shows the real dial error and backs off."""

from __future__ import annotations

import sys
from pathlib import Path

from neonize.aioze.client import ClientFactory

from wa_mqtt.engines.neonize_engine import store_dsn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BridgeEnv, BridgeProcess, Probe
from neonize_factories import write_synthetic_device

PHONE = "4915100000001"


async def test_restored_device_shows_the_dial_error_and_backs_off(env: BridgeEnv, bridge: BridgeProcess) -> None:
    store = env.sessions / PHONE / "store.db"
    store.parent.mkdir(parents=True)
    ClientFactory.get_all_devices_from_db(store_dsn(store))  # the tables, as the engine creates them
    write_synthetic_device(store, PHONE)
    env.write_config(engine="neonize", reconnect={"initial": 0.2, "factor": 2, "max": 1, "jitter": 0.1})
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        connecting = await probe.wait_state(PHONE, "connecting", timeout=15)
        assert connecting["engine"] == "neonize"
        first = await probe.wait_state(PHONE, "disconnected", timeout=30)
        assert first["error_code"] == "dial_failed" and first["error"].startswith("cannot reach WhatsApp")
        assert "`proxy`" in first["error"] and len(first["error"]) < 160  # what to check, not Go's wrappers
        assert first["next_retry_at"] is not None
        later = await probe.wait_for(f"{env.base}/{PHONE}/status",
                                     lambda r: r.json()["state"] == "disconnected" and r.json()["reconnect_attempt"] >= 3,
                                     timeout=30)
        assert later.json()["error_code"] == "dial_failed"
        health = await probe.request("bridge", "health", {})
        assert health["data"]["accounts"][PHONE]["state"] in ("disconnected", "connecting")
    assert bridge.stop() == 0
    assert f"{PHONE}: neonize engine process" in bridge.log()
    retries = [line for line in bridge.log().splitlines() if f"{PHONE}: connecting -> disconnected" in line]
    assert len(retries) >= 3 and all(len(line) < 200 for line in retries[1:])  # one short line per attempt
    assert not [line for line in bridge.log().splitlines() if f"{PHONE}: disconnected -> connecting" in line
                and " INFO " in line]  # the retry itself is debug
