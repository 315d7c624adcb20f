"""Auto-reply rules: their config models, the in-memory reply history, and the pure matcher `decide`.

The bridge calls, for every incoming message and in this order:
    planned = decide(config.auto_reply, message, history, now, config.auto_reply_limits)
    history.record_incoming(message, now)
    for reply in planned: history.record_reply(reply, now); <send reply.to_outgoing(...) via the outbox>
`decide` reads the history as it was *before* the message, which is what `first_message` needs.

Guards, checked for the rule that would reply (docs/automations.md explains them to users):
- never our own messages (`from_me`), reactions, broadcast/newsletter chats, groups unless the rule
  has `groups: true`, nor messages older than `stale_after` (a backlog delivered after an outage);
- at most ONE reply per incoming message: the first rule in config order that matches and is not
  cooling down for that chat. A rule in cooldown does not match, so a later catch-all still can;
- loop protection, two layers: (1) echo: never answer a message whose text equals (ignoring case and
  spacing) an auto-reply we sent to that chat within `chat_per` seconds, which stops two bridges or
  echo bots bouncing the same text; (2) a per-chat cap: at most `chat_max` auto-replies to one chat
  per `chat_per` seconds, all rules together, which bounds any other bot-to-bot loop (different
  texts) to a handful of replies a day with the defaults;
- a global rate limit: at most `max` auto-replies in total per `per` seconds, all accounts together.
"""

from __future__ import annotations

import logging
import re
import string
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from .model import ChatType, IncomingMessage, OutgoingMessage, phone_list, to_jid

logger = logging.getLogger(__name__)

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


def _normalise_text(text: str) -> str:
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
    reply: str = Field(min_length=1, max_length=4096)

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
    def _placeholders(cls, value: str, info: ValidationInfo) -> str:
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


@dataclass(frozen=True, slots=True)
class PlannedReply:
    """An auto-reply to send: `text` to `chat` from `account`, because of rule `rule`."""

    rule: str
    account: str
    chat: str
    text: str

    def to_outgoing(self, key: str | None = None) -> OutgoingMessage:
        """As a send for the outbox; `key` is its idempotency id (e.g. `auto:<incoming id>`)."""
        return OutgoingMessage(to=self.chat, text=self.text, id=key)


class ReplyHistory:
    """What `decide` needs to remember, in memory and bounded (least recently used forgotten first).

    Forgetting a contact makes its next message a first message again; restarting the bridge forgets
    everything. Update it only through `record_incoming` and `record_reply`."""

    def __init__(self, max_keys: int = 10_000) -> None:
        self._max_keys = max_keys
        self._last_incoming: OrderedDict[tuple[str, str, str], datetime] = OrderedDict()
        self._last_reply: OrderedDict[tuple[str, str, str], datetime] = OrderedDict()
        self._chat_replies: OrderedDict[tuple[str, str], deque[tuple[datetime, str]]] = OrderedDict()
        self._replies: deque[datetime] = deque(maxlen=GLOBAL_TRACK)

    def _put(self, table: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > self._max_keys:
            table.popitem(last=False)

    def record_incoming(self, message: IncomingMessage, now: datetime) -> None:
        """A message arrived (call for every message, after `decide`); our own and reactions are skipped."""
        if message.from_me or message.type == "reaction":
            return
        self._put(self._last_incoming, (message.account, message.chat, message.sender), now)

    def record_reply(self, reply: PlannedReply, now: datetime) -> None:
        """An auto-reply was handed to the outbox."""
        self._put(self._last_reply, (reply.rule, reply.account, reply.chat), now)
        chat = self._chat_replies.get((reply.account, reply.chat)) or deque(maxlen=CHAT_TRACK)
        chat.append((now, _normalise_text(reply.text)))
        self._put(self._chat_replies, (reply.account, reply.chat), chat)
        self._replies.append(now)

    def last_incoming(self, account: str, chat: str, sender: str) -> datetime | None:
        return self._last_incoming.get((account, chat, sender))

    def last_reply(self, rule: str, account: str, chat: str) -> datetime | None:
        return self._last_reply.get((rule, account, chat))

    def chat_replies(self, account: str, chat: str, since: datetime) -> list[str]:
        """Normalised texts of the auto-replies sent to a chat after `since`."""
        return [text for at, text in self._chat_replies.get((account, chat), ()) if at > since]

    def replies_since(self, since: datetime) -> int:
        return sum(1 for at in self._replies if at > since)


def _message_text(message: IncomingMessage) -> str | None:
    return message.text if message.text is not None else message.caption


def _in_list(message: IncomingMessage, wanted: Sequence[str], chat: bool) -> bool:
    if chat:
        return message.chat in {to_jid(w) for w in wanted}
    return message.sender in wanted or message.sender_jid in wanted


def _match_text(match: Match, text: str | None) -> re.Match[str] | bool:
    """False if a text condition fails; the regex match (for its groups) or True otherwise."""
    has_text_condition = match.text is not None or match.contains or match.regex is not None
    if not has_text_condition:
        return True
    if text is None:
        return False
    fold = (lambda s: s) if match.case_sensitive else str.casefold
    if match.text is not None and fold(text.strip()) != fold(match.text.strip()):
        return False
    if match.contains and not any(fold(c) in fold(text) for c in match.contains):
        return False
    pattern = match.compiled()
    if pattern is None:
        return True
    return pattern.search(text) or False


def _matches(rule: AutoReplyRule, message: IncomingMessage, history: ReplyHistory,
             now: datetime) -> re.Match[str] | bool:
    match = rule.match
    if not rule.enabled or (rule.accounts is not None and message.account not in rule.accounts):
        return False
    if message.chat_type == "group" and not rule.groups:
        return False
    if match.chat_type is not None and message.chat_type not in match.chat_type:
        return False
    if match.chat is not None and not _in_list(message, match.chat, chat=True):
        return False
    if match.sender is not None and not _in_list(message, match.sender, chat=False):
        return False
    if match.window is not None:
        local = now.astimezone(rule.zone())
        if not any(w.contains(local) for w in match.window):
            return False
    if match.first_message:
        seen = history.last_incoming(message.account, message.chat, message.sender)
        if seen is not None and (match.quiet_for is None or now - seen < timedelta(seconds=match.quiet_for)):
            return False
    return _match_text(match, _message_text(message))


def render(rule: AutoReplyRule, message: IncomingMessage, now: datetime,
           found: re.Match[str] | None = None) -> str:
    """The rule's reply for this message: built-in placeholders plus the regex groups of `found`."""
    local = now.astimezone(rule.zone())
    values: dict[str, str] = {
        "name": message.sender_name or message.sender, "phone": message.sender,
        "time": local.strftime("%H:%M"), "date": local.strftime("%Y-%m-%d"),
        "account": message.account, "rule": rule.name,
    }
    if found is not None:
        values.update({str(i): found.group(i) or "" for i in range(found.re.groups + 1)})
        values.update({k: v or "" for k, v in found.groupdict().items()})
    return ReplyTemplate(rule.reply).safe_substitute(values)


def _guard(message: IncomingMessage, history: ReplyHistory, now: datetime, limits: AutoReplyLimits) -> str | None:
    """Why no auto-reply may answer this message now, or None."""
    chat_since = now - timedelta(seconds=limits.chat_per)
    sent = history.chat_replies(message.account, message.chat, chat_since)
    text = _message_text(message)
    if text is not None and _normalise_text(text) in sent:
        return "loop: the message repeats an auto-reply we sent to this chat"
    if len(sent) >= limits.chat_max:
        return f"loop: {limits.chat_max} auto-replies to this chat within {limits.chat_per:g} s"
    if history.replies_since(now - timedelta(seconds=limits.per)) >= limits.max:
        return f"rate limit: {limits.max} auto-replies within {limits.per:g} s"
    return None


def decide(rules: Iterable[AutoReplyRule], message: IncomingMessage, history: ReplyHistory,
           now: datetime, limits: AutoReplyLimits | None = None) -> list[PlannedReply]:
    """The auto-replies (zero or one) to send for `message` at `now` (timezone-aware). Pure."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    limits = limits or AutoReplyLimits()
    if message.from_me or message.type == "reaction" or message.chat_type not in REPLIABLE_CHAT_TYPES:
        return []
    sent_at = message.timestamp if message.timestamp.tzinfo else message.timestamp.replace(tzinfo=timezone.utc)
    if now - sent_at > timedelta(seconds=limits.stale_after):
        return []
    for rule in rules:
        found = _matches(rule, message, history, now)
        if found is False:
            continue
        last = history.last_reply(rule.name, message.account, message.chat)
        if last is not None and now - last < timedelta(seconds=rule.cooldown):
            continue
        reason = _guard(message, history, now, limits)
        if reason is not None:
            logger.debug("auto_reply %r to %s skipped: %s", rule.name, message.chat, reason)
            return []
        text = render(rule, message, now, found if isinstance(found, re.Match) else None)
        if not text.strip():
            continue
        return [PlannedReply(rule.name, message.account, message.chat, text)]
    return []
