"""Black box: auto-reply rules in the running bridge, and config.yaml hot reload."""

from __future__ import annotations

import yaml

from harness import BridgeEnv, BridgeProcess, Probe

A = "5511900000001"
ANA = "5511988887777"
BOB = "5511977776666"

PRICE_RULE = {"name": "price", "match": {"contains": "price"}, "reply": "Hi $name, prices are on our site.",
              "cooldown": 3600}
HELLO_RULE = {"name": "hello", "match": {"regex": "^hello (?P<what>\\w+)"}, "reply": "hello to you, $what",
              "cooldown": 0}


def sent_texts(probe: Probe, env: BridgeEnv) -> list[str]:
    return [r.json()["text"] for r in probe.received if r.topic == f"{env.base}/sim/{A}/sent"]


async def test_reply_cooldown_and_loop_protection(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.write_config(auto_reply=[PRICE_RULE, HELLO_RULE])
    env.link_sim_account(A)
    bridge.start()
    sent = f"{env.base}/sim/{A}/sent"
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        await probe.sim(A, "incoming", {"sender": ANA, "sender_name": "Ana", "text": "what is the price?", "id": "P1"})
        first = await probe.wait_for(sent, lambda r: r.json()["to"] == f"{ANA}@s.whatsapp.net")
        assert first.json()["text"] == "Hi Ana, prices are on our site."
        event = await probe.wait_for(f"{env.base}/bridge/event", lambda r: r.json()["type"] == "auto_reply")
        assert event.json()["data"]["rule"] == "price"

        # cooldown: Ana asks again; from_me and an echo of our own reply get nothing either
        await probe.sim(A, "incoming", {"sender": ANA, "sender_name": "Ana", "text": "price again?", "id": "P2"})
        await probe.sim(A, "incoming", {"sender": BOB, "text": "hello price", "id": "P3", "from_me": True})
        await probe.sim(A, "incoming", {"sender": ANA, "text": "Hi Ana, prices are on our site.", "id": "P4"})
        # a marker that does reply: everything before it has been handled (same account, in order)
        await probe.sim(A, "incoming", {"sender": BOB, "sender_name": "Bob", "text": "hello world", "id": "P5"})
        await probe.wait_for(sent, lambda r: r.json()["text"] == "hello to you, world")
        assert sent_texts(probe, env) == ["Hi Ana, prices are on our site.", "hello to you, world"]


async def test_hot_reload_applies_valid_edits_and_rejects_broken_ones(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.write_config(auto_reply=[HELLO_RULE])
    env.link_sim_account(A)
    bridge.start()
    sent = f"{env.base}/sim/{A}/sent"
    event_topic = f"{env.base}/bridge/event"
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")

        mark = probe.mark()
        env.write_config(auto_reply=[PRICE_RULE, HELLO_RULE], log_level="info")
        reloaded = await probe.wait_for(event_topic, lambda r: r.json()["type"] == "config_reloaded", after=mark)
        assert reloaded.json()["data"]["changed"] == ["auto_reply", "log_level"]
        assert reloaded.json()["data"]["restart_required"] == []
        await probe.sim(A, "incoming", {"sender": ANA, "sender_name": "Ana", "text": "price?", "id": "R1"})
        await probe.wait_for(sent, lambda r: r.json()["text"].startswith("Hi Ana"))

        # a broken edit: the old rules stay in force
        mark = probe.mark()
        raw = yaml.safe_load(env.config_path.read_text())
        raw["auto_reply"] = [{"name": "bad", "match": {"regex": "(unclosed"}, "reply": "x"}]
        env.config_path.write_text(yaml.safe_dump(raw))
        invalid = await probe.wait_for(event_topic, lambda r: r.json()["type"] == "config_invalid", after=mark)
        assert "auto_reply.0.match.regex" in invalid.json()["data"]["error"]
        await probe.sim(A, "incoming", {"sender": BOB, "text": "hello again", "id": "R2"})
        await probe.wait_for(sent, lambda r: r.json()["text"] == "hello to you, again")

        # on demand, and a setting that needs a restart is reported, not half-applied
        env.write_config(auto_reply=[HELLO_RULE], mqtt={"keepalive": 45})
        response = await probe.request("bridge", "reload", {})
        assert response["status"] == "ok", response
        assert response["data"]["restart_required"] == ["mqtt"]
        info = await probe.wait_for(f"{env.base}/bridge/info", lambda r: r.json()["config"]["auto_reply"][0]["name"] == "hello")
        assert info.json()["config"]["mqtt"]["keepalive"] == 30  # still the running value
        broken = env.config_path.read_text().replace("engine: sim", "engine: [")
        env.config_path.write_text(broken)
        refused = await probe.request("bridge", "reload", {})
        assert refused["status"] == "error" and refused["code"] == "config_invalid"
