"""Black box: the reply route of a send stays on the MQTT side. The outbox keeps it as an opaque
reference; a queued send is answered when it goes out, on the response topic and the MQTT v5 response
topic, with its transaction. A send queued by an earlier version (its route stored as `route`) is still
answered after the upgrade."""

from __future__ import annotations

from datetime import UTC, datetime

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from wa_mqtt.accounts.outbox import Outbox

from harness import BridgeEnv, BridgeProcess, Probe

A = "5511900000071"
ANA = "5511988887777"


async def test_a_queued_send_is_answered_where_it_was_asked_when_it_goes_out(env: BridgeEnv,
                                                                            bridge: BridgeProcess) -> None:
    env.write_config()
    env.link_sim_account(A)
    bridge.start()
    async with Probe(env.broker, env.base, [f"{env.base}/#", "replies/#"]) as probe:
        await probe.wait_state(A, "connected", timeout=15)
        await probe.sim(A, "outage", {"seconds": 1})
        await probe.wait_state(A, "disconnected")
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "replies/me"
        props.CorrelationData = b"\x01\x02"
        mark = probe.mark()
        await probe.publish(f"{env.base}/{A}/request/send", {"to": ANA, "text": "later", "transaction": "t1"},
                            properties=props)
        queued = await probe.wait_for("replies/me", after=mark)
        assert queued.json()["data"]["queued"] is True and queued.correlation_data == b"\x01\x02"
        done = await probe.wait_for("replies/me", lambda r: r.json()["data"].get("from_queue") is True,
                                    timeout=15, after=mark)
        assert done.json() == {"status": "ok", "data": {"id": done.json()["data"]["id"], "queued": False,
                                                        "from_queue": True}, "transaction": "t1"}
        assert done.correlation_data == b"\x01\x02"
        await probe.wait_for(f"{env.base}/{A}/response/send", lambda r: r.json()["data"].get("from_queue") is True,
                             after=mark)
    assert bridge.stop() == 0


async def test_a_send_queued_by_an_earlier_version_is_answered_after_the_upgrade(env: BridgeEnv,
                                                                                bridge: BridgeProcess) -> None:
    env.write_config()
    env.link_sim_account(A)
    (env.root / "data").mkdir(parents=True)
    outbox = Outbox(env.root / "data" / "outbox.db", lambda: datetime.now(UTC))
    route = {"transaction": "old", "has_transaction": True, "response_topic": None, "correlation_data": None}
    outbox.enqueue(A, {"message": {"to": ANA, "text": "from before"}, "route": route}, None)
    outbox.close()
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        answer = await probe.wait_for(f"{env.base}/{A}/response/send", timeout=15)
        assert answer.json()["transaction"] == "old" and answer.json()["data"]["from_queue"] is True
        sent = await probe.wait_for(f"{env.base}/sim/{A}/sent")
        assert sent.json()["text"] == "from before"
    assert bridge.stop() == 0
