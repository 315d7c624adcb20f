"""The `openai` provider: any OpenAI-compatible `POST <url>/chat/completions` (Ollama, LocalAI,
llama.cpp server, OpenAI). Request: `model`, `messages` (the `system` prompt, the chat's history
oldest first, then the new message), `max_tokens` when set; the answer is `choices[0].message.content`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from .http import AiError, post_json
from .memory import Turn
from .settings import OpenAiSettings

if TYPE_CHECKING:
    import aiohttp  # the session is the responder's, which imports aiohttp on first use

_THINKING = re.compile(r"^\s*<think>.*?</think>\s*", re.DOTALL)  # reasoning models (deepseek-r1 on Ollama)


def request_body(settings: OpenAiSettings, history: list[Turn], prompt: str) -> dict[str, Any]:
    messages: list[dict[str, str]] = []
    if settings.system:
        messages.append({"role": "system", "content": settings.system})
    messages += [{"role": turn.role, "content": turn.content} for turn in history]
    messages.append({"role": "user", "content": prompt})
    body: dict[str, Any] = {"model": settings.model, "messages": messages}
    if settings.max_tokens is not None:
        body["max_tokens"] = settings.max_tokens
    return body


def answer_of(data: Any) -> str:
    """The assistant's text in a chat completion; `AiError` when the answer has none."""
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise AiError("malformed answer: no choices[0].message.content") from None
    if isinstance(content, list):  # content parts, as some servers answer
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    if not isinstance(content, str):
        raise AiError("malformed answer: choices[0].message.content is not text")
    text = _THINKING.sub("", content).strip()
    if not text:
        raise AiError("empty answer")
    return text


async def complete(session: aiohttp.ClientSession, settings: OpenAiSettings, history: list[Turn],
                   prompt: str) -> str:
    data = await post_json(session, f"{settings.url}/chat/completions", request_body(settings, history, prompt),
                           settings.api_key, settings.timeout)
    return answer_of(data)
