"""The one HTTP exchange every AI provider makes: POST JSON, read a bounded JSON answer, or `AiError`.

aiohttp is the client (one `ClientSession` per responder, which imports aiohttp when it opens it: a
bridge without AI rules never loads it, ~10 MB). An answer is refused, not read, past
`MAX_ANSWER_BYTES`; a status other than 2xx, a body that is not JSON, no answer within the timeout
and an unreachable server are each an `AiError` whose text says which, never holding the token.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import aiohttp

MAX_ANSWER_BYTES = 1 << 20  # 1 MiB: far above any chat answer; a bigger one is refused
SNIPPET = 200  # characters of an error body quoted in the error


class AiError(Exception):
    """No usable answer: timeout, unreachable, HTTP error, malformed or oversized answer."""


async def post_json(session: aiohttp.ClientSession, url: str, body: dict[str, Any], token: str | None,
                    timeout: float) -> Any:
    """POST `body` to `url` (with `Authorization: Bearer <token>` when given); the decoded JSON answer."""
    import aiohttp  # here, not at the top (module docstring); already loaded by the session's owner

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    host = urlsplit(url).netloc
    try:
        async with asyncio.timeout(timeout), session.post(url, json=body, headers=headers) as response:
            raw = await _read(response)
            if not 200 <= response.status < 300:
                raise AiError(f"HTTP {response.status} from {host}: {_error_text(raw)}")
    except TimeoutError:
        raise AiError(f"no answer from {host} within {timeout:g} s") from None
    except aiohttp.ClientError as exc:
        raise AiError(f"cannot reach {host}: {exc or type(exc).__name__}") from None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise AiError(f"the answer from {host} is not JSON: {_snippet(raw)!r}") from None


async def _read(response: aiohttp.ClientResponse) -> bytes:
    if (response.content_length or 0) > MAX_ANSWER_BYTES:
        raise AiError(f"the answer is {response.content_length} bytes; the limit is {MAX_ANSWER_BYTES}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise AiError(f"the answer is over {MAX_ANSWER_BYTES} bytes; refused")
        chunks.append(chunk)
    return b"".join(chunks)


def _snippet(raw: bytes) -> str:
    text = raw.decode(errors="replace").strip()
    return text[:SNIPPET] + ("…" if len(text) > SNIPPET else "")


def _error_text(raw: bytes) -> str:
    """An error body's message: OpenAI's `error.message`, Home Assistant's `message`, or its start."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _snippet(raw) or "(no body)"
    if isinstance(data, dict):
        inner = data.get("error")
        message = inner.get("message") if isinstance(inner, dict) else inner if isinstance(inner, str) else None
        message = message or data.get("message")
        if isinstance(message, str) and message:
            return message[:SNIPPET]
    return _snippet(raw)
