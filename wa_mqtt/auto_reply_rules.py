"""The `auto_reply` and `auto_reply_limits` sections of config.yaml: rule models and their validation.

A rule is `name`, `match` (text / contains / regex, chat and sender lists, chat types, first message,
a weekly window), `reply` (a template) or `ai` (a provider's answer, ai/settings.py), `accounts`,
`cooldown`, `timezone`. Everything a user can
get wrong is refused at load time with the field named; docs/automations.md documents each field.
The matcher that applies them is `automations.decide`.
"""

from __future__ import annotations

import re
import string
from datetime import datetime, time
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .ai.settings import AiSettings, HomeAssistantSettings
from .model import ChatType, phone_list

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
BUILTIN_PLACEHOLDERS = ("name", "phone", "time", "date", "account", "rule")
REPLIABLE_CHAT_TYPES = ("private", "group")
CHAT_TRACK = 100  # auto-replies remembered per chat (>= chat_max)
GLOBAL_TRACK = 10_000  # auto-replies remembered in total (>= max)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, (str, dict)) else value


_HH_MM = re.compile(r"^(\d{1,2}):(\d{2})$")


def _yaml_time(value: Any) -> Any:
    """YAML 1.1 reads an unquoted `22:00` as the base-60 integer 1320: read it back as 22:00."""
    if isinstance(value, str) and (hm := _HH_MM.match(value.strip())):
        hours, minutes = int(hm[1]), int(hm[2])
        if (hours, minutes) == (24, 0):
            return time(0, 0)
        value = hours * 60 + minutes if hours < 24 and minutes < 60 else -1
    if isinstance(value, bool) or not isinstance(value, int):
        return value
    if not 0 <= value < 24 * 60:
        raise ValueError("must be a time of day such as '22:00' (quote it in YAML)")
    return time(value // 60, value % 60)


class Window(_Strict):
    """A weekly window: on each of `days`, from `from` to `to` local time (`to` <= `from` crosses
    midnight into the next day; `from` == `to` is 24 hours). `days` name the day the window opens."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS), min_length=1)
    start: time = Field(time(0, 0), alias="from")
    end: time = Field(time(0, 0), alias="to")

    @field_validator("days", mode="before")
    @classmethod
    def _days(cls, value: Any) -> Any:
        value = _as_list(value)
        return [str(v).lower()[:3] for v in value] if isinstance(value, list) else value

    @field_validator("start", "end", mode="before")
    @classmethod
    def _times(cls, value: Any) -> Any:
        return _yaml_time(value)

    def contains(self, local: datetime) -> bool:
        """True when the local wall-clock moment `local` is inside the window."""
        today = WEEKDAYS[local.weekday()]
        yesterday = WEEKDAYS[(local.weekday() - 1) % 7]
        moment = local.time().replace(tzinfo=None)
        if self.start < self.end:
            return today in self.days and self.start <= moment < self.end
        return (today in self.days and moment >= self.start) or (yesterday in self.days and moment < self.end)


def normalise_text(text: str) -> str:
    return " ".join(text.split()).casefold()


class Match(_Strict):
    """What a message must be for the rule to reply; every condition given must hold."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)  # `text: 1` for menu choices

    text: str | None = Field(None, min_length=1)
    contains: list[str] | None = None
    regex: str | None = None
    case_sensitive: bool = False
    chat: list[str] | None = None
    sender: list[str] | None = None
    chat_type: list[ChatType] | None = None
    first_message: bool = False
    quiet_for: float | None = Field(None, gt=0)
    window: list[Window] | None = None

    @field_validator("contains", "chat", "sender", "chat_type", "window", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return _as_list(value)

    @field_validator("contains")
    @classmethod
    def _non_empty(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or not all(value)):
            raise ValueError("needs at least one non-empty text")
        return value

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"invalid regular expression ({exc})") from None
        return value

    @field_validator("chat", "sender", mode="before")
    @classmethod
    def _recipients(cls, value: Any) -> Any:
        return phone_list(value, jids=True)

    @field_validator("chat_type")
    @classmethod
    def _repliable(cls, value: list[str] | None) -> list[str] | None:
        for item in value or []:
            if item not in REPLIABLE_CHAT_TYPES:
                raise ValueError(f"{item!r}: auto-replies go only to private chats and groups")
        return value

    @field_validator("quiet_for")
    @classmethod
    def _needs_first(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and not info.data.get("first_message"):
            raise ValueError("quiet_for needs first_message: true")
        return value

    def compiled(self) -> re.Pattern[str] | None:
        if self.regex is None:
            return None
        return re.compile(self.regex, 0 if self.case_sensitive else re.IGNORECASE)  # re caches it

    def group_names(self) -> set[str]:
        """The placeholders the regex offers the reply: `0`..`n` and its named groups."""
        pattern = self.compiled()
        if pattern is None:
            return set()
        return {str(i) for i in range(pattern.groups + 1)} | set(pattern.groupindex)


class ReplyTemplate(string.Template):
    """`$name`, `${name}`, `$1`, `${order}`; `$$` is a dollar sign. Plain substitution, no expressions."""

    idpattern = r"(?a:[0-9]+|[_a-zA-Z][_a-zA-Z0-9]*)"
    flags = re.NOFLAG


class AutoReplyRule(_Strict):
    """One entry of `auto_reply` in config.yaml."""

    name: str = Field(min_length=1, max_length=64)
    enabled: bool = True
    accounts: list[str] | None = None
    groups: bool = False
    timezone: str = "UTC"
    cooldown: float = Field(60, ge=0)
    match: Match = Field(default_factory=Match)
    reply: str | None = Field(None, min_length=1, max_length=4096)
    ai: AiSettings | None = None  # instead of `reply`: the answer of a model or of Home Assistant (ai/)

    @field_validator("accounts", mode="before")
    @classmethod
    def _phones(cls, value: Any) -> Any:
        return phone_list(_as_list(value))

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r} (use an IANA name such as Europe/Lisbon)") from None
        return value

    @field_validator("match")
    @classmethod
    def _groups_allowed(cls, value: Match, info: ValidationInfo) -> Match:
        if value.chat_type and "group" in value.chat_type and not info.data.get("groups"):
            raise ValueError("chat_type group needs groups: true on the rule")
        return value

    @field_validator("reply")
    @classmethod
    def _placeholders(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        template = ReplyTemplate(value)
        if not template.is_valid():
            raise ValueError("a '$' must start a placeholder such as $name; write $$ for a dollar sign")
        match = info.data.get("match")
        if not isinstance(match, Match):
            return value  # the match has its own error; its groups are unknown
        groups = match.group_names()
        clash = sorted(groups & set(BUILTIN_PLACEHOLDERS))
        if clash:
            raise ValueError(f"regex group name {clash[0]!r} hides the ${clash[0]} placeholder; rename the group")
        known = set(BUILTIN_PLACEHOLDERS) | groups
        for ident in template.get_identifiers():
            if ident not in known:
                raise ValueError(
                    f"unknown placeholder ${ident} (known: {', '.join('$' + k for k in sorted(known))};"
                    " write $$ for a dollar sign)")
        return value

    @model_validator(mode="after")
    def _reply_or_ai(self) -> AutoReplyRule:
        if (self.reply is None) == (self.ai is None):
            raise ValueError("give the rule a reply (a text) or ai (a provider), one of them")
        if isinstance(self.ai, HomeAssistantSettings) and not self.match.sender:
            raise ValueError("an ai rule with provider home_assistant controls the house: its match.sender must name "
                             "the numbers allowed to use it (see docs/security.md)")
        return self

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def _unique_names(rules: list[AutoReplyRule]) -> list[AutoReplyRule]:
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise ValueError(f"rule name {rule.name!r} is used twice; names must be unique")
        seen.add(rule.name)
    return rules


AutoReplyRules = Annotated[list[AutoReplyRule], AfterValidator(_unique_names)]


class AutoReplyLimits(_Strict):
    """`auto_reply_limits` in config.yaml: the global rate limit and the per-chat loop breaker."""

    max: int = Field(60, ge=1, le=GLOBAL_TRACK)
    per: float = Field(3600, gt=0)
    chat_max: int = Field(5, ge=1, le=CHAT_TRACK)
    chat_per: float = Field(86400, gt=0)
    stale_after: float = Field(600, gt=0)


