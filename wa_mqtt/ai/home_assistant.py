"""The `home_assistant` provider: Home Assistant's conversation API, `POST <url>/api/conversation/process`
with `text`, and `language`, `agent_id`, `conversation_id` when known. The user's Assist agent (built-in
intents or the LLM they chose) handles the message and may act on the house; the reply is its spoken
response, `response.speech.plain.speech`, and the answer's `conversation_id` continues the conversation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .http import AiError, post_json
from .settings import HomeAssistantSettings

if TYPE_CHECKING:
    import aiohttp  # the session is the responder's, which imports aiohttp on first use

PATH = "/api/conversation/process"


def request_body(settings: HomeAssistantSettings, text: str, conversation_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"text": text}
    if settings.language:
        body["language"] = settings.language
    if settings.agent_id:
        body["agent_id"] = settings.agent_id
    if conversation_id:
        body["conversation_id"] = conversation_id
    return body


def answer_of(data: Any) -> tuple[str, str | None]:
    """(the spoken response, the conversation id) of a conversation result; `AiError` without speech."""
    try:
        speech = data["response"]["speech"]["plain"]["speech"]
    except (KeyError, TypeError):
        raise AiError("malformed answer: no response.speech.plain.speech") from None
    if not isinstance(speech, str) or not speech.strip():
        raise AiError("Home Assistant gave no spoken response")
    conversation_id = data.get("conversation_id")
    return speech.strip(), conversation_id if isinstance(conversation_id, str) and conversation_id else None


async def converse(session: aiohttp.ClientSession, settings: HomeAssistantSettings, text: str,
                   conversation_id: str | None) -> tuple[str, str | None]:
    assert settings.url is not None  # the settings refuse a rule without one
    data = await post_json(session, settings.url + PATH, request_body(settings, text, conversation_id),
                           settings.token, settings.timeout)
    return answer_of(data)
