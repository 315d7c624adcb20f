"""Black-box: Home Assistant discovery from the real bridge (sim engine) over a real broker.

The bridge announces the bridge device and every account on start (retained), announces them again
when Home Assistant's birth message (`<prefix>/status` = `online`) arrives, and removes an account's
device (empty retained config) when the account is removed.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import wa_mqtt
from wa_mqtt.mqtt import discovery

from harness import BridgeEnv, BridgeProcess, Probe

A = "5511900000001"


def _prefix() -> str:
    return "ha" + uuid.uuid4().hex[:8]  # a discovery prefix of this test's own


async def test_announces_on_start_and_again_on_home_assistant_birth(env: BridgeEnv, bridge: BridgeProcess) -> None:
    prefix = _prefix()
    env.write_config(mqtt={"discovery": True, "discovery_prefix": prefix}, notify=["5511999999999"])
    env.link_sim_account(A)
    bridge_topic = discovery.device_topic(prefix, discovery.bridge_device_id(env.base))
    account_topic = discovery.device_topic(prefix, discovery.account_device_id(A))
    async with Probe(env.broker, env.base, [f"{env.base}/#", f"{prefix}/#"]) as probe:
        bridge.start()
        await probe.wait_state(A, "connected")
        first = await probe.wait_for(account_topic, lambda r: bool(r.payload) and "message" in r.json()["cmps"])
        await probe.wait_for(bridge_topic, lambda r: bool(r.payload))
        config = first.json()
        assert config["origin"]["sw_version"] == wa_mqtt.__version__
        assert config["cmps"]["state"]["state_topic"] == f"{env.base}/{A}/status"
        assert "to_5511999999999" in config["cmps"]
        # retained: a Home Assistant that subscribes later still finds it
        async with Probe(env.broker, env.base, [account_topic]) as late:
            assert (await late.wait_for(account_topic)).retain

        mark = probe.mark()
        await probe.publish(discovery.ha_status_topic(prefix), b"online")
        again = await probe.wait_for(account_topic, lambda r: bool(r.payload), after=mark)
        await probe.wait_for(bridge_topic, lambda r: bool(r.payload), after=mark)
        assert again.json()["cmps"].keys() == config["cmps"].keys()
        assert {c["unique_id"] for c in again.json()["cmps"].values()} == {
            c["unique_id"] for c in config["cmps"].values()}

        mark = probe.mark()
        await probe.publish(discovery.ha_status_topic(prefix), b"offline")
        await probe.publish(discovery.ha_status_topic(prefix), b"online")
        await probe.wait_for(account_topic, lambda r: bool(r.payload), after=mark)


def name_entities_as_before_2025_10(registry: dict[str, str], config: dict[str, Any]) -> None:
    """What Home Assistant before 2025.10 does with a device discovery config: it ignores
    `default_entity_id`; a new entity gets `<platform>.<object_id>`, or without one the slug of the
    device name and the entity name as they are at that moment; an entity keeps its id afterwards."""
    for component in config["cmps"].values():
        if component["unique_id"] not in registry:
            object_id = component.get("object_id") or re.sub(
                r"[^a-z0-9]+", "_", f"{config['device']['name']} {component['name']}".lower()).strip("_")
            registry[component["unique_id"]] = f"{component['platform']}.{object_id}"


async def test_entity_ids_are_the_documented_ones_on_home_assistant_before_2025_10(
        env: BridgeEnv, bridge: BridgeProcess) -> None:
    """A number paired from scratch: its pairing entities are announced while the device is named by the
    phone, its session entities once the push name is known; every id is still `whatsapp_<phone>_...`."""
    prefix = _prefix()
    env.write_config(mqtt={"discovery": True, "discovery_prefix": prefix}, notify=["5511999999999"])
    account_topic = discovery.device_topic(prefix, discovery.account_device_id(A))
    async with Probe(env.broker, env.base, [f"{env.base}/#", f"{prefix}/#"]) as probe:
        bridge.start()
        await probe.wait_online()
        assert (await probe.request("bridge", "pair", {"phone": A}))["status"] == "ok"
        await probe.wait_for(account_topic, lambda r: bool(r.payload))
        await probe.sim(A, "scan")
        await probe.wait_for(account_topic, lambda r: bool(r.payload) and "message" in r.json()["cmps"])
        configs = [r.json() for r in probe.received if r.topic == account_topic and r.payload]
    assert configs[0]["device"]["name"] == f"WhatsApp +{A}" and configs[-1]["device"]["name"] == "WhatsApp Sim 0001"
    registry: dict[str, str] = {}
    for config in configs:
        name_entities_as_before_2025_10(registry, config)
    documented = {c["unique_id"]: c["default_entity_id"] for c in configs[-1]["cmps"].values()}
    assert {uid: registry[uid] for uid in documented} == documented


async def test_removed_account_loses_its_device(env: BridgeEnv, bridge: BridgeProcess) -> None:
    prefix = _prefix()
    env.write_config(mqtt={"discovery": True, "discovery_prefix": prefix})
    env.link_sim_account(A)
    account_topic = discovery.device_topic(prefix, discovery.account_device_id(A))
    async with Probe(env.broker, env.base, [f"{env.base}/#", f"{prefix}/#"]) as probe:
        bridge.start()
        await probe.wait_for(account_topic, lambda r: bool(r.payload))
        mark = probe.mark()
        response = await probe.request("bridge", "remove", {"phone": A})
        assert response["status"] == "ok", response
        await probe.wait_for(account_topic, lambda r: r.payload == b"", after=mark)
        accounts = await probe.wait_for(f"{env.base}/bridge/accounts",
                                        lambda r: A not in json.dumps(r.json()), after=mark)
        assert accounts.payload


async def test_discovery_off_publishes_nothing_under_the_prefix(env: BridgeEnv, bridge: BridgeProcess) -> None:
    prefix = _prefix()
    env.write_config(mqtt={"discovery": False, "discovery_prefix": prefix})
    env.link_sim_account(A)
    async with Probe(env.broker, env.base, [f"{env.base}/#", f"{prefix}/#"]) as probe:
        bridge.start()
        await probe.wait_state(A, "connected")
        await probe.publish(discovery.ha_status_topic(prefix), b"online")
        await probe.request("bridge", "health", {})  # a round trip after the birth message
        assert not [r for r in probe.received if r.topic.startswith(f"{prefix}/device/")]
