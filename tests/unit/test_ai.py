"""AI auto-replies (issue 16), piece by piece: config rules and secrets, the planner's AI replies and
their guards, the memory on disk, and the HTTP exchange against real servers (aiohttp.web on free
ports) for what the end-to-end test cannot cheaply show (oversized bodies, unreachable servers)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from wa_mqtt.ai import home_assistant, openai
from wa_mqtt.ai.http import MAX_ANSWER_BYTES, AiError, post_json
from wa_mqtt.ai.memory import FORGET_AFTER, KEPT_PER_CHAT, ChatMemory, Turn
from wa_mqtt.ai.responder import Responder, clip
from wa_mqtt.ai.settings import SUPERVISOR_CORE_URL, HomeAssistantSettings, OpenAiSettings
from wa_mqtt.auto_reply_rules import AutoReplyLimits
from wa_mqtt.automations import ReplyHistory, decide
from wa_mqtt.config_loading import build_config
from wa_mqtt.config_secrets import file_secrets
from wa_mqtt.model import IncomingMessage

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
ME, ANA = "5511900000001", "5511988887777"
OPENAI = {"provider": "openai", "url": "http://127.0.0.1:9/v1", "model": "m", "api_key": "sk-secret"}
HA = {"provider": "home_assistant", "url": "http://ha:8123", "token": "ha-secret"}


def msg(text: str | None = "hi", **fields: object) -> IncomingMessage:
    data: dict[str, object] = {"id": f"M{text}", "account": ME, "chat": f"{ANA}@s.whatsapp.net", "sender": ANA,
                               "sender_jid": f"{ANA}@s.whatsapp.net", "timestamp": NOW, "text": text, **fields}
    return IncomingMessage.model_validate(data)


# -- config -------------------------------------------------------------------------------------------
def test_secrets_are_masked_and_named_and_the_add_on_reaches_home_assistant_through_the_supervisor() -> None:
    data = {"auto_reply": [{"name": "ai", "ai": OPENAI},
                           {"name": "house", "match": {"sender": [ANA]}, "ai": {"provider": "home_assistant"}}]}
    config = build_config(data, environ={"SUPERVISOR_TOKEN": "supervisor-secret"})
    house = config.auto_reply[1].ai
    assert isinstance(house, HomeAssistantSettings)
    assert (house.url, house.token) == (SUPERVISOR_CORE_URL, "supervisor-secret")
    masked = config.masked()["auto_reply"]
    assert (masked[0]["ai"]["api_key"], masked[1]["ai"]["token"]) == ("***", "***")
    assert "secret" not in str(config.masked())
    assert file_secrets({"auto_reply": [{"name": "ai", "ai": OPENAI}]}) == ["auto_reply.0.ai.api_key"]
    # a URL with the endpoint (OpenAI) or `/api` (Home Assistant) is taken back to its base
    forgiving = build_config({"auto_reply": [
        {"name": "a", "ai": {**OPENAI, "url": "http://localhost:11434/v1/chat/completions/"}},
        {"name": "h", "match": {"sender": [ANA]}, "ai": {**HA, "url": "http://supervisor/core/api"}}]}, environ={})
    assert [rule.ai.url for rule in forgiving.auto_reply if rule.ai] == ["http://localhost:11434/v1",
                                                                          "http://supervisor/core"]
    # a url and token of its own win over the Supervisor's
    own = build_config({"auto_reply": [{"name": "h", "match": {"sender": [ANA]}, "ai": HA}]},
                       environ={"SUPERVISOR_TOKEN": "x"}).auto_reply[0].ai
    assert isinstance(own, HomeAssistantSettings) and (own.url, own.token) == ("http://ha:8123", "ha-secret")


# -- planning -----------------------------------------------------------------------------------------
def test_ai_rules_plan_a_reply_to_the_text_and_the_guards_count_it() -> None:
    rules = build_config({"auto_reply": [{"name": "ai", "cooldown": 0, "ai": OPENAI}]}, environ={}).auto_reply
    limits = AutoReplyLimits(chat_max=2)
    history = ReplyHistory()
    planned = decide(rules, msg("what time is it?"), history, NOW, limits)
    assert [(p.rule, p.prompt, p.text, p.ai is rules[0].ai) for p in planned] == [
        ("ai", "what time is it?", "", True)]
    assert decide(rules, msg(None, type="image"), history, NOW, limits) == []  # nothing to ask
    vote = msg(None, type="poll_vote", poll_vote={"poll_id": "P1", "selected": ["Yes"]})
    fixed = build_config({"auto_reply": [{"name": "hi", "reply": "hello"}]}, environ={}).auto_reply
    assert decide(fixed, vote, history, NOW, limits) == []  # a vote answers us: never auto-answered
    assert decide(rules, msg("hi", chat="120363012345678901@g.us", chat_type="group"), history, NOW, limits) == []

    history.record_reply(planned[0], NOW)
    history.record_answer(planned[0], NOW, "It is ten o'clock.")
    later = NOW + timedelta(seconds=1)
    assert decide(rules, msg("It is ten  O'CLOCK."), history, later, limits) == []  # an echo of our answer
    second = decide(rules, msg("thanks"), history, later, limits)
    history.record_reply(second[0], later)
    assert decide(rules, msg("more"), history, later, limits) == []  # chat_max reached, AI replies included


# -- memory -------------------------------------------------------------------------------------------
def test_memory_keeps_each_chat_bounded_on_disk(tmp_path: Path) -> None:
    memory = ChatMemory(tmp_path / "ai.db")
    for n in range(KEPT_PER_CHAT):
        memory.append(ME, "a", [Turn("user", f"q{n}"), Turn("assistant", f"r{n}")], NOW)
    memory.append(ME, "b", [Turn("user", "x" * 100_000)], NOW)
    memory.set_conversation(ME, "a", "conv-1", NOW)
    memory.close()
    assert (tmp_path / "ai.db").stat().st_mode & 0o077 == 0  # conversations are private

    reopened = ChatMemory(tmp_path / "ai.db")  # survives a restart
    assert reopened.history(ME, "a", 3) == [Turn("assistant", "r98"), Turn("user", "q99"), Turn("assistant", "r99")]
    assert len(reopened.history(ME, "a", 1000)) == KEPT_PER_CHAT
    assert len(reopened.history(ME, "b", 1)[0].content) == 8000
    assert reopened.history(ME, "a", 0) == [] and reopened.conversation(ME, "a") == "conv-1"
    reopened.append(ME, "c", [Turn("user", "new")], NOW + FORGET_AFTER + timedelta(seconds=1))
    assert reopened.history(ME, "a", 5) == [] and reopened.conversation(ME, "a") is None  # forgotten
    reopened.close()


def test_clip() -> None:
    assert clip("short", 10) == "short"
    assert clip("word " * 10, 22) == "word word word word…"
    assert clip("x" * 50, 10) == "x" * 9 + "…"


# -- HTTP against real servers ----------------------------------------------------------------------------
@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()  # chunked: no Content-Length to refuse it by
        await response.prepare(request)
        for _ in range(MAX_ANSWER_BYTES // 65536 + 2):
            await response.write(b" " * 65536)
        return response

    async def declared(_request: web.Request) -> web.StreamResponse:
        return web.Response(body=b"{}" + b" " * MAX_ANSWER_BYTES)

    async def ha_error(_request: web.Request) -> web.StreamResponse:  # Assist understood nothing: still a reply
        return web.json_response({"response": {"response_type": "error", "language": "en",
                                                "data": {"code": "no_intent_match"},
                                                "speech": {"plain": {"speech": "Sorry, I couldn't understand that",
                                                                     "extra_data": None}}, "card": {}},
                                  "conversation_id": None})

    async def reasoning(_request: web.Request) -> web.StreamResponse:
        return web.json_response({"choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": "<think>\nthe user greets me\n</think>\n\nHello!"}}]})

    async def empty(_request: web.Request) -> web.StreamResponse:
        return web.json_response({"choices": []})

    app = web.Application()
    for path, handler in (("/big", big), ("/declared", declared), ("/api/conversation/process", ha_error),
                          ("/v1/chat/completions", reasoning), ("/empty/chat/completions", empty)):
        app.router.add_post(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_http_edges(server: str) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/big", "/declared"):
            with pytest.raises(AiError, match="bytes"):
                await post_json(session, server + path, {}, None, 5)
        with pytest.raises(AiError, match=r"cannot reach 127\.0\.0\.1:9"):
            await post_json(session, "http://127.0.0.1:9/v1/chat/completions", {}, "sk-secret", 5)
        ha = HomeAssistantSettings(provider="home_assistant", url=server, token="t")
        assert await home_assistant.converse(session, ha, "blah", None) == ("Sorry, I couldn't understand that", None)
        settings = OpenAiSettings(provider="openai", url=server + "/v1", model="m")
        assert await openai.complete(session, settings, [], "hi") == "Hello!"
        with pytest.raises(AiError, match="no choices"):
            await openai.complete(session, settings.model_copy(update={"url": server + "/empty"}), [], "hi")


async def test_responder_answers_without_memory_and_without_a_server() -> None:
    responder = Responder(None, lambda: NOW)
    settings = OpenAiSettings(provider="openai", url="http://127.0.0.1:9/v1", model="m", timeout=2)
    with pytest.raises(AiError):
        await asyncio.wait_for(responder.answer(settings, ME, "chat", "hi", 100), 5)
    await responder.close()
