"""Black box: the request edge of a running bridge. Response topics that would crash it or write its own
topics, values JSON does not have, empty topic levels, recipients written as JIDs, text beside media,
and what the sim's crash control logs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from harness import BridgeEnv, BridgeProcess, Probe, Received

A = "5511900000001"
ANA = "5511988887777"


def strict(item: Received) -> Any:
    """The payload as strict JSON (what a consumer in another language accepts), else the test fails."""
    def refuse(name: str) -> Any:
        raise AssertionError(f"{name} in a published body: {item.payload[:200]!r}")
    return json.loads(item.payload.decode("utf-8"), parse_constant=refuse)


def response_topic(topic: str, correlation: bytes = b"c-1") -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = topic
    props.CorrelationData = correlation
    return props


async def test_response_topics_with_wildcards_or_on_the_bridges_own_topics_are_refused(
        env: BridgeEnv, bridge: BridgeProcess) -> None:
    if not env.broker.v5:
        pytest.skip("response topics are MQTT v5")
    env.write_config(mqtt={"discovery": True, "discovery_prefix": f"{env.base}-ha"})
    env.link_sim_account(A)
    bridge.start()
    own = [f"{env.base}/bridge/state", f"{env.base}/bridge/event", f"{env.base}/{A}/message",
           f"{env.base}-ha/device/wa_mqtt_{A}/config"]
    async with Probe(env.broker, env.base, [f"{env.base}/#", f"{env.base}-ha/#", f"{env.base}-replies/#"]) as probe:
        await probe.wait_state(A, "connected")
        mark = probe.mark()
        for n, (reply_to, code) in enumerate([(f"{env.base}/#", "invalid_request"), ("+", "invalid_request"),
                                              *[(topic, "forbidden") for topic in own]]):
            await probe.publish(f"{env.base}/{A}/request/send", {"to": ANA, "text": "x", "transaction": n},
                                properties=response_topic(reply_to))
            answer = strict(await probe.wait_for(f"{env.base}/{A}/response/send",
                                                 lambda r, n=n: r.json().get("transaction") == n, after=mark))
            assert answer["status"] == "error" and answer["code"] == code, answer
            assert "response topic" in answer["error"]
        # nothing was sent, nothing written on the bridge's own topics, and the bridge is still up
        assert not [r for r in probe.received if r.topic == f"{env.base}/sim/{A}/sent"]
        assert not [r for r in probe.received[mark:] if (r.topic in own and b'"status"' in r.payload)
                    or (r.correlation_data == b"c-1" and "/request/" not in r.topic)]
        await probe.publish(f"{env.base}/{A}/request/send", {"to": ANA, "text": "fine", "transaction": "ok"},
                            properties=response_topic(f"{env.base}-replies/me", b"c-2"))
        reply = await probe.wait_for(f"{env.base}-replies/me")
        assert reply.correlation_data == b"c-2" and strict(reply)["status"] == "ok"
    assert bridge.proc is not None and bridge.proc.poll() is None
    assert "Traceback" not in bridge.log()


async def test_values_json_does_not_have_are_invalid_json_and_nothing_is_sent(
        env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    bridge.start()
    to = f'"to": "{ANA}"'.encode()
    payloads = [
        b'{' + to + rb', "text": "x", "transaction": "\udfff"}',
        b'{' + to + b', "text": "x", "transaction": NaN}',
        b'{' + to + b', "text": "x", "transaction": 1e400}',
        b'{' + to + b', "text": "x", "transaction": -Infinity}',
        b'{' + to + rb', "text": "\ud800"}',
        b'{' + to + b', "text": "harmless", "to": "5511911112222"}',
    ]
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        for payload in payloads:
            mark = probe.mark()
            await probe.publish(f"{env.base}/{A}/request/send", payload)
            answer = strict(await probe.wait_for(f"{env.base}/{A}/response/send", after=mark))
            assert answer["status"] == "error" and answer["code"] == "invalid_json", (payload, answer)
            assert "transaction" not in answer
        assert not [r for r in probe.received if r.topic == f"{env.base}/sim/{A}/sent"]
        fine = await probe.request(A, "send", {"to": ANA, "text": "\U0001F600 fine"})
        assert fine["status"] == "ok"
        assert strict(await probe.wait_for(f"{env.base}/sim/{A}/sent"))["text"] == "\U0001F600 fine"


async def test_empty_topic_levels_are_answered(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        await probe.publish(f"{env.base}//request/connect", {"transaction": 1})
        no_account = strict(await probe.wait_for(f"{env.base}//response/connect"))
        assert no_account["code"] == "unknown_account" and no_account["transaction"] == 1
        await probe.publish(f"{env.base}/{A}/request/", {"transaction": 2})
        no_command = strict(await probe.wait_for(f"{env.base}/{A}/response/"))
        assert no_command["code"] == "invalid_request" and "unknown command" in no_command["error"]
        await probe.publish(f"{env.base}/bridge/request/", {"transaction": 3})
        assert strict(await probe.wait_for(f"{env.base}/bridge/response/"))["code"] == "invalid_request"


async def test_allow_to_takes_a_phone_and_its_jid_as_the_same_recipient(env: BridgeEnv, bridge: BridgeProcess) -> None:
    other = "5511977770000"
    env.write_config(outgoing={"allow_to": [ANA, f"{other}@s.whatsapp.net"]})
    env.link_sim_account(A)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        await probe.sim(A, "incoming", {"sender": ANA, "text": "are you there?"})
        chat = (await probe.wait_for(f"{env.base}/{A}/message")).json()["chat"]
        assert chat == f"{ANA}@s.whatsapp.net"
        reply = await probe.request(A, "send", {"to": chat, "text": "yes"})  # the HA reply automation: to: chat
        assert reply["status"] == "ok", reply
        assert (await probe.request(A, "send", {"to": other, "text": "hi"}))["status"] == "ok"
        refused = await probe.request(A, "send", {"to": "5511911112222@s.whatsapp.net", "text": "hi"})
        assert refused["code"] == "forbidden"
        await probe.wait_count(f"{env.base}/sim/{A}/sent", 2)


async def test_text_beside_a_media_object_is_refused(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        both = await probe.request(A, "send", {"to": ANA, "text": "look", "image": {"url": "https://example.org/a.jpg"}})
        assert both["code"] == "invalid_request" and "image.caption" in both["error"]
        assert not [r for r in probe.received if r.topic == f"{env.base}/sim/{A}/sent"]


async def test_the_sim_crash_control_is_not_logged_as_refused(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        mark = probe.mark()
        await probe.sim(A, "crash")
        await probe.wait_for(f"{env.base}/bridge/event", lambda r: r.json()["type"] == "engine_crashed", after=mark)
        await probe.wait_state(A, "connected", after=mark)
        await probe.request("bridge", "health", {})  # the crash control was handled before this request
    assert bridge.stop() == 0
    assert f"sim {A}/crash refused" not in bridge.log()
