"""A send request and the account's turn, black box through MQTT with the bridge in this process (its send
service at hand): a send that arrives while the bridge's own send (an auto-reply, an alert, a call's reply)
holds the account's turn waits for it, even where a plain send is otherwise served at once."""

from __future__ import annotations

import asyncio

import yaml

from wa_mqtt.app import App
from wa_mqtt.config_loading import build_config
from wa_mqtt.model import OutgoingMessage

from harness import BridgeEnv, Probe

A = "5511900000081"
ANA = "5511988887777"


async def test_a_send_request_waits_while_the_bridge_s_own_send_holds_the_turn(env: BridgeEnv) -> None:
    env.link_sim_account(A)
    config = build_config(yaml.safe_load(env.write_config().read_text()), environ={})
    app = App(config)
    stop = asyncio.Event()
    running = asyncio.create_task(app.run(stop))
    try:
        async with Probe(env.broker, env.base) as probe:
            await probe.wait_state(A, "connected", timeout=15)
            assert app.sending is not None
            sending = app.sending
            turn = sending.lock(A)
            async with turn:  # as `send_in_turn` holds it
                before = (await probe.request("bridge", "health"))["data"]["requests_waiting"]  # itself
                await probe.publish(f"{env.base}/{A}/request/send", {"to": ANA, "text": "request", "transaction": "r"})
                health = await probe.request("bridge", "health")  # after the send: MQTT keeps one client's order
                assert health["data"]["requests_waiting"] == before + 1, health  # the send waits for the turn
                own = await sending.send(A, OutgoingMessage(to=ANA, text="own"), {})
                assert own.id is not None and not own.queued
            answer = await probe.wait_for(f"{env.base}/{A}/response/send", timeout=15)
            assert answer.json()["status"] == "ok", answer.json()
            sent = await probe.wait_count(f"{env.base}/sim/{A}/sent", 2, timeout=15)
            assert [item.json()["text"] for item in sent] == ["own", "request"]
    finally:
        stop.set()
        assert await asyncio.wait_for(running, 60) == 0
