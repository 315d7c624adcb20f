"""One AI answer, end to end: the provider's call with the chat's memory, the answer cut to size.

`Responder.answer(settings, account, chat, text)` returns the reply text or raises `AiError`; what
to do then (the rule's `fallback`, the `ai_error` event) is the auto-reply feature's. The chat's
history (openai) or conversation id (home_assistant) is read before and written after a success only.
aiohttp is imported when the HTTP session opens, on the first answer asked: a bridge without AI rules
never loads it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

from . import home_assistant, openai
from .http import AiError
from .memory import ChatMemory, Turn
from .settings import AiSettings, OpenAiSettings

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)
ELLIPSIS = "…"
T = TypeVar("T")


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, at a word boundary when one is near, ending in `…`."""
    if len(text) <= limit:
        return text
    cut = text[:max(limit - len(ELLIPSIS), 0)]
    space = cut.rfind(" ")
    if space > len(cut) * 0.8:
        cut = cut[:space]
    return cut.rstrip() + ELLIPSIS


class Responder:
    """Asks the rule's provider; owns the HTTP session (opened on first use) and uses `memory`."""

    def __init__(self, memory: ChatMemory | None, clock: Callable[[], datetime]) -> None:
        self._memory = memory
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            import aiohttp  # here, not at the top (module docstring)

            self._session = aiohttp.ClientSession(headers={"User-Agent": "wa_mqtt"})
        return self._session

    async def answer(self, settings: AiSettings, account: str, chat: str, text: str, limit: int) -> str:
        """The reply to `text` in `chat`, at most `limit` characters; raises `AiError`."""
        if isinstance(settings, OpenAiSettings):
            no_history: list[Turn] = []
            history = await self._remembered(lambda m: m.history(account, chat, settings.history), no_history)
            reply = clip(await openai.complete(self._http(), settings, history, text), limit)
            turns = [Turn("user", text), Turn("assistant", reply)]  # what was sent, as the chat shows it
            await self._remember(lambda m: m.append(account, chat, turns, self._clock()))
            return reply
        conversation = await self._remembered(lambda m: m.conversation(account, chat), None)
        reply, conversation = await home_assistant.converse(self._http(), settings, text, conversation)
        if conversation is not None:
            new_id = conversation
            await self._remember(lambda m: m.set_conversation(account, chat, new_id, self._clock()))
        return clip(reply, limit)

    async def _remembered(self, read: Callable[[ChatMemory], T], default: T) -> T:
        if self._memory is None:
            return default
        memory = self._memory
        try:
            return await asyncio.to_thread(read, memory)
        except sqlite3.Error as exc:
            log.warning("AI memory unreadable (%s); answering without it", exc)
            return default

    async def _remember(self, write: Callable[[ChatMemory], None]) -> None:
        if self._memory is None:
            return
        memory = self._memory
        try:
            await asyncio.to_thread(write, memory)
        except sqlite3.Error as exc:
            log.warning("AI memory not written (%s)", exc)


__all__ = ["AiError", "Responder", "clip"]
