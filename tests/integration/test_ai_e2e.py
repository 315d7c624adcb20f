"""Black box: AI auto-replies (issue 16) against real HTTP servers on free ports speaking each API's
request and response shapes: an OpenAI-compatible `/v1/chat/completions` and Home Assistant's
`/api/conversation/process`. The tests assert what the bridge sent them and what it replied."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from harness import BridgeEnv, BridgeProcess, Probe

A = "5511900000001"
ANA = "5511988887777"
BOB = "5511977776666"
CARL = "5511966665555"
DAVE = "5511955554444"
EVE = "5511944443333"
GROUP = "120363012345678901@g.us"
OPENAI_KEY = "sk-test-0123456789"
HA_TOKEN = "ha-long-lived-token"
FALLBACK = "Sorry, the assistant is busy. Try again later."


@dataclass
class Seen:
    """What a fake server was sent: each request's JSON body and Authorization header, in order."""

    bodies: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)


async def _serve(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def openai_server() -> AsyncIterator[tuple[str, Seen]]:
    """OpenAI's chat completions; the last user message chooses a failure: `slow`, `fail`, `garbled`, `huge`."""
    seen = Seen()

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.bodies.append(body)
        seen.auth.append(request.headers.get("Authorization"))
        last = body["messages"][-1]["content"]
        if last == "slow":
            await asyncio.sleep(5)
        if last == "fail":
            return web.json_response({"error": {"message": "model crashed", "type": "server_error", "param": None,
                                                "code": None}}, status=500)
        if last == "garbled":
            return web.Response(text='{"choices": [', content_type="application/json")
        content = "word " * 50_000 if last == "huge" else f"echo: {last}"
        return web.json_response({
            "id": f"chatcmpl-{len(seen.bodies)}", "object": "chat.completion", "created": 1_795_000_000,
            "model": body["model"], "system_fingerprint": "fp_test",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": None,
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        })

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    async for url in _serve(app):
        yield f"{url}/v1", seen


@pytest.fixture
async def ha_server() -> AsyncIterator[tuple[str, Seen]]:
    """Home Assistant's conversation API: refuses a wrong token (401) as HA does; keeps one conversation."""
    seen = Seen()

    async def process(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {HA_TOKEN}":
            return web.json_response({"message": "Unauthorized"}, status=401)
        body = await request.json()
        seen.bodies.append(body)
        seen.auth.append(request.headers.get("Authorization"))
        speech = "Turned off the lights" if "off" in body["text"] else "The bedroom light is on"
        return web.json_response({
            "response": {
                "response_type": "action_done", "language": body.get("language", "en"),
                "data": {"targets": [], "success": [{"type": "entity", "name": "Kitchen", "id": "light.kitchen"}],
                         "failed": []},
                "speech": {"plain": {"speech": speech, "extra_data": None}}, "card": {},
            },
            "conversation_id": body.get("conversation_id") or "01JCONVERSATION1",
            "continue_conversation": False,
        })

    app = web.Application()
    app.router.add_post("/api/conversation/process", process)
    async for url in _serve(app):
        yield url, seen


def _config(openai_url: str, ha_url: str) -> dict[str, Any]:
    ai = {"provider": "openai", "url": openai_url, "model": "llama3.2", "api_key": OPENAI_KEY,
          "system": "You answer in one sentence.", "history": 4, "max_tokens": 200, "timeout": 1}
    return {
        "outgoing": {"max_text_chars": 300},
        "auto_reply_limits": {"chat_max": 20},
        "auto_reply": [
            {"name": "house", "cooldown": 0, "match": {"sender": [CARL]},
             "ai": {"provider": "home_assistant", "url": ha_url, "token": HA_TOKEN,
                    "agent_id": "conversation.home_assistant", "language": "en"}},
            {"name": "wrong-token", "cooldown": 0, "match": {"sender": [EVE]},
             "ai": {"provider": "home_assistant", "url": ha_url, "token": "not-the-token", "fallback": "Not now."}},
            {"name": "bob", "cooldown": 0, "match": {"sender": [BOB]}, "ai": {**ai, "timeout": 5}},
            {"name": "assistant", "cooldown": 0, "ai": {**ai, "fallback": FALLBACK}},
        ],
    }


async def test_ai_replies_through_openai_and_home_assistant(
        env: BridgeEnv, bridge: BridgeProcess, openai_server: tuple[str, Seen], ha_server: tuple[str, Seen]) -> None:
    openai_url, openai_seen = openai_server
    ha_url, ha_seen = ha_server
    env.write_config(**_config(openai_url, ha_url))
    env.link_sim_account(A)
    bridge.start()
    sent, events = f"{env.base}/sim/{A}/sent", f"{env.base}/bridge/event"

    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        info = await probe.wait_for(f"{env.base}/bridge/info", lambda r: bool(r.json().get("config")))
        rules = info.json()["config"]["auto_reply"]
        assert (rules[0]["ai"]["token"], rules[3]["ai"]["api_key"]) == ("***", "***")

        async def ask(sender: str, text: str, msg_id: str) -> str:
            mark = probe.mark()
            await probe.sim(A, "incoming", {"sender": sender, "text": text, "id": msg_id})
            reply = await probe.wait_for(sent, lambda r: r.json()["type"] == "text", after=mark)
            assert reply.json()["to"] == f"{sender}@s.whatsapp.net"
            return str(reply.json()["text"])

        # openai: model, system prompt, max_tokens, token; the account types while waiting
        mark = probe.mark()
        assert await ask(ANA, "hello", "O1") == "echo: hello"
        typing = [r.json()["state"] for r in probe.received[mark:] if r.topic == sent and r.json()["type"] == "typing"]
        assert typing[:1] == ["composing"] and typing[-1] == "paused"
        first = openai_seen.bodies[0]
        assert (first["model"], first["max_tokens"]) == ("llama3.2", 200)
        assert first["messages"] == [{"role": "system", "content": "You answer in one sentence."},
                                     {"role": "user", "content": "hello"}]
        assert openai_seen.auth[0] == f"Bearer {OPENAI_KEY}"

        # the chat's history goes along, oldest first, bounded to `history: 4`
        for n, text in enumerate(("second", "third", "fourth")):
            assert await ask(ANA, text, f"O{n + 2}") == f"echo: {text}"
        user_and_answers = [(m["role"], m["content"]) for m in openai_seen.bodies[-1]["messages"][1:]]
        assert user_and_answers == [("user", "second"), ("assistant", "echo: second"), ("user", "third"),
                                    ("assistant", "echo: third"), ("user", "fourth")]

        # two messages at once: one chat's AI replies take turns, the second sees the first's exchange
        mark = probe.mark()
        await probe.sim(A, "incoming", {"sender": ANA, "text": "alpha", "id": "C1"})
        await probe.sim(A, "incoming", {"sender": ANA, "text": "beta", "id": "C2"})
        await probe.wait_for(sent, lambda r: r.json().get("text") == "echo: beta", after=mark)
        texts = [r.json()["text"] for r in probe.received[mark:] if r.topic == sent and r.json()["type"] == "text"]
        assert texts == ["echo: alpha", "echo: beta"]
        assert [(m["role"], m["content"]) for m in openai_seen.bodies[-1]["messages"][-3:]] == [
            ("user", "alpha"), ("assistant", "echo: alpha"), ("user", "beta")]

        # a slow server, a 500 and malformed JSON: the fallback goes out, and each is an ai_error event
        for text, words in (("slow", "within 1 s"), ("fail", "HTTP 500"), ("garbled", "not JSON")):
            mark = probe.mark()
            assert await ask(ANA, text, f"F-{text}") == FALLBACK
            event = await probe.wait_for(events, lambda r: r.json()["type"] == "ai_error", after=mark)
            data = event.json()["data"]
            assert (data["rule"], data["provider"], data["fallback"], data["chat"]) == (
                "assistant", "openai", True, f"{ANA}@s.whatsapp.net")
            assert words in data["error"], data
        assert "model crashed" in bridge.log()

        # a huge answer is cut to outgoing.max_text_chars, ending in an ellipsis
        huge = await ask(ANA, "huge", "H1")
        assert len(huge) <= 300 and huge.endswith("…") and huge.startswith("word word")

        # no fallback: nothing is sent, the error is still reported
        mark = probe.mark()
        await probe.sim(A, "incoming", {"sender": BOB, "text": "fail", "id": "B1"})
        event = await probe.wait_for(events, lambda r: r.json()["type"] == "ai_error", after=mark)
        assert (event.json()["data"]["rule"], event.json()["data"]["fallback"]) == ("bob", False)

        # a group message gets no AI reply (the rules have no `groups: true`)
        await probe.sim(A, "incoming", {"chat": GROUP, "sender": ANA, "text": "group hello", "id": "G1"})

        # home_assistant: text, language, agent_id and the token; the conversation id comes back next time
        assert await ask(CARL, "turn off the kitchen lights", "H-1") == "Turned off the lights"
        assert ha_seen.bodies[0] == {"text": "turn off the kitchen lights", "language": "en",
                                     "agent_id": "conversation.home_assistant"}
        assert ha_seen.auth[0] == f"Bearer {HA_TOKEN}"
        assert await ask(CARL, "and the bedroom?", "H-2") == "The bedroom light is on"
        assert ha_seen.bodies[1]["conversation_id"] == "01JCONVERSATION1"

        # Home Assistant refusing the token: the fallback, and the reason reported
        mark = probe.mark()
        assert await ask(EVE, "open the garage", "E1") == "Not now."
        refused = await probe.wait_for(events, lambda r: r.json()["type"] == "ai_error", after=mark)
        assert (refused.json()["data"]["provider"], refused.json()["data"]["rule"]) == ("home_assistant", "wrong-token")
        assert "HTTP 401" in refused.json()["data"]["error"] and "Unauthorized" in refused.json()["data"]["error"]

        # someone not in match.sender never reaches Home Assistant: the catch-all openai rule answers
        assert await ask(DAVE, "turn off everything", "D1") == "echo: turn off everything"
        assert len(ha_seen.bodies) == 2
        assert not [b for b in openai_seen.bodies if b["messages"][-1]["content"] == "group hello"]
        assert OPENAI_KEY not in bridge.log() and HA_TOKEN not in bridge.log()
