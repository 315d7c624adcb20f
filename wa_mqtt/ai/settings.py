"""The `ai:` block of an `auto_reply` rule: one model per provider, told apart by `provider`.

docs/automations.md documents every key. Secrets (`api_key`, `token`) are masked in bridge/info by
`config.Config.masked`. In the Home Assistant add-on a `home_assistant` rule needs no `url`/`token`:
`supervisor_defaults` fills them from the Supervisor (`SUPERVISOR_TOKEN`, `homeassistant_api: true`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SUPERVISOR_CORE_URL = "http://supervisor/core"  # Home Assistant Core through the Supervisor's proxy
SUPERVISOR_TOKEN_VARIABLE = "SUPERVISOR_TOKEN"


def _http_url(value: str | None) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    return value.rstrip("/")


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeout: float = Field(30, gt=0, le=600)  # seconds for the whole answer
    fallback: str | None = Field(None, min_length=1, max_length=4096)  # sent on timeout or error; None: nothing


class OpenAiSettings(_Common):
    """Any OpenAI-compatible `/chat/completions` server (Ollama, LocalAI, llama.cpp, OpenAI)."""

    provider: Literal["openai"]
    url: str  # the base URL, `/chat/completions` is added: http://localhost:11434/v1
    model: str = Field(min_length=1)
    api_key: str | None = None
    system: str | None = Field(None, max_length=20_000)
    history: int = Field(10, ge=0, le=100)  # earlier messages of the chat sent as context
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)

    @field_validator("url")
    @classmethod
    def _base_url(cls, value: str) -> str | None:
        """The base URL; one given with the endpoint (`…/v1/chat/completions`) is taken back to its base."""
        url = _http_url(value)
        return url.removesuffix("/chat/completions") if url is not None else None


class HomeAssistantSettings(_Common):
    """Home Assistant's conversation API: the user's Assist agent answers (and acts)."""

    provider: Literal["home_assistant"]
    url: str | None = None  # Home Assistant's base URL: http://homeassistant.local:8123
    token: str | None = None  # a long-lived access token
    agent_id: str | None = None  # e.g. conversation.home_assistant, conversation.ollama
    language: str | None = None

    @field_validator("url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        """The base URL; a URL given up to `/api` (as the Supervisor's `http://supervisor/core/api`) works too."""
        url = _http_url(value)
        return url.removesuffix("/api") if url is not None else None

    @model_validator(mode="after")
    def _reachable(self) -> HomeAssistantSettings:
        if not self.url or not self.token:
            raise ValueError("home_assistant needs url and token (a long-lived access token); in the add-on "
                             "both come from the Supervisor when neither is given")
        return self


AiSettings = Annotated[OpenAiSettings | HomeAssistantSettings, Field(discriminator="provider")]

SECRET_KEYS = ("api_key", "token")


def supervisor_defaults(data: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Config data where each `home_assistant` rule without `url` and `token` reaches Home Assistant
    through the Supervisor, when running as the add-on (`SUPERVISOR_TOKEN` set). Other data unchanged."""
    token = environ.get(SUPERVISOR_TOKEN_VARIABLE)
    rules = data.get("auto_reply")
    if not token or not isinstance(rules, list):
        return dict(data)
    filled = []
    for rule in rules:
        ai = rule.get("ai") if isinstance(rule, Mapping) else None
        if isinstance(ai, Mapping) and ai.get("provider") == "home_assistant" and not ai.get("url") \
                and not ai.get("token"):
            rule = {**rule, "ai": {**ai, "url": SUPERVISOR_CORE_URL, "token": token}}
        filled.append(rule)
    return {**data, "auto_reply": filled}
