"""Auto-replies at run time: the in-memory reply history and the pure matcher `decide` (the rules' config
models are in auto_reply_rules.py).

features/auto_reply.py calls, for every new incoming message and in this order:
    planned = decide(config.auto_reply, message, history, now, config.auto_reply_limits)
    history.record_incoming(message, now)
    for reply in planned: history.record_reply(reply, now); <send reply.to_outgoing(...) via the outbox>
`decide` reads the history as it was *before* the message, which is what `first_message` needs.

Guards, checked for the rule that would reply (docs/automations.md explains them to users):
- never our own messages (`from_me`), reactions, poll votes, edits, deletions, undecryptable messages (the real
  one may follow), broadcast/newsletter chats, groups unless the rule
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
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from .ai.settings import AiSettings
from .auto_reply_rules import (
    CHAT_TRACK,
    GLOBAL_TRACK,
    REPLIABLE_CHAT_TYPES,
    AutoReplyLimits,
    AutoReplyRule,
    Match,
    ReplyTemplate,
    normalise_text,
)
from .model import IncomingMessage, OutgoingMessage, to_jid

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PlannedReply:
    """An auto-reply to send: `text` to `chat` from `account`, because of rule `rule`. An AI rule's
    (`ai` set) has no text yet: its provider answers `prompt` (the message's text) first."""

    rule: str
    account: str
    chat: str
    text: str
    ai: AiSettings | None = None
    prompt: str = ""

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
        if message.from_me or message.type in NOT_ANSWERED:
            return
        self._put(self._last_incoming, (message.account, message.chat, _who(message)), now)

    def record_reply(self, reply: PlannedReply, now: datetime) -> None:
        """An auto-reply was handed to the outbox."""
        self._put(self._last_reply, (reply.rule, reply.account, reply.chat), now)
        chat = self._chat_replies.get((reply.account, reply.chat)) or deque(maxlen=CHAT_TRACK)
        chat.append((now, normalise_text(reply.text)))
        self._put(self._chat_replies, (reply.account, reply.chat), chat)
        self._replies.append(now)

    def record_answer(self, reply: PlannedReply, planned_at: datetime, text: str) -> None:
        """The text an AI reply planned at `planned_at` turned out to have (for the echo guard)."""
        chat = self._chat_replies.get((reply.account, reply.chat))
        if chat is None:
            return
        for index in range(len(chat) - 1, -1, -1):
            at, known = chat[index]
            if at == planned_at and not known:
                chat[index] = (at, normalise_text(text))
                return

    def last_incoming(self, account: str, chat: str, sender: str) -> datetime | None:
        return self._last_incoming.get((account, chat, sender))

    def last_reply(self, rule: str, account: str, chat: str) -> datetime | None:
        return self._last_reply.get((rule, account, chat))

    def chat_replies(self, account: str, chat: str, since: datetime) -> list[str]:
        """Normalised texts of the auto-replies sent to a chat after `since`."""
        return [text for at, text in self._chat_replies.get((account, chat), ()) if at > since]

    def replies_since(self, since: datetime) -> int:
        return sum(1 for at in self._replies if at > since)


# answers to our messages (reactions, poll votes) or no chat message of their own
NOT_ANSWERED = frozenset({"reaction", "poll_vote", "edit", "revoke", "undecryptable"})


def _who(message: IncomingMessage) -> str:
    """The sender, for reply history: the phone, or the JID when the phone is unknown (a LID sender)."""
    return message.sender or message.sender_jid


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
        seen = history.last_incoming(message.account, message.chat, _who(message))
        if seen is not None and (match.quiet_for is None or now - seen < timedelta(seconds=match.quiet_for)):
            return False
    return _match_text(match, _message_text(message))


def render(rule: AutoReplyRule, message: IncomingMessage, now: datetime,
           found: re.Match[str] | None = None) -> str:
    """The rule's reply for this message: built-in placeholders plus the regex groups of `found`."""
    local = now.astimezone(rule.zone())
    values: dict[str, str] = {
        "name": message.sender_name or message.sender or "", "phone": message.sender or "",
        "time": local.strftime("%H:%M"), "date": local.strftime("%Y-%m-%d"),
        "account": message.account, "rule": rule.name,
    }
    if found is not None:
        values.update({str(i): found.group(i) or "" for i in range(found.re.groups + 1)})
        values.update({k: v or "" for k, v in found.groupdict().items()})
    return ReplyTemplate(rule.reply or "").safe_substitute(values)


def _guard(message: IncomingMessage, history: ReplyHistory, now: datetime, limits: AutoReplyLimits) -> str | None:
    """Why no auto-reply may answer this message now, or None."""
    chat_since = now - timedelta(seconds=limits.chat_per)
    sent = history.chat_replies(message.account, message.chat, chat_since)
    text = _message_text(message)
    if text is not None and normalise_text(text) and normalise_text(text) in sent:
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
    if message.from_me or message.type in NOT_ANSWERED or message.chat_type not in REPLIABLE_CHAT_TYPES:
        return []
    sent_at = message.timestamp if message.timestamp.tzinfo else message.timestamp.replace(tzinfo=UTC)
    if now - sent_at > timedelta(seconds=limits.stale_after):
        logger.debug("auto_reply: none to %s in %s: stale (sent %.0f s ago; auto_reply_limits.stale_after %g s)",
                     message.id, message.chat, (now - sent_at).total_seconds(), limits.stale_after)
        return []
    for rule in rules:
        found = _matches(rule, message, history, now)
        if found is False:
            continue
        last = history.last_reply(rule.name, message.account, message.chat)
        if last is not None and now - last < timedelta(seconds=rule.cooldown):
            logger.debug("auto_reply %r to %s skipped: cooldown (replied %.0f s ago; cooldown %g s); trying the "
                         "next rule", rule.name, message.chat, (now - last).total_seconds(), rule.cooldown)
            continue
        reason = _guard(message, history, now, limits)
        if reason is not None:
            logger.debug("auto_reply %r to %s skipped: %s", rule.name, message.chat, reason)
            return []
        if rule.ai is not None:  # the provider answers the message's text (none: nothing to ask)
            prompt = _message_text(message)
            if not prompt or not prompt.strip():
                continue
            return [PlannedReply(rule.name, message.account, message.chat, "", ai=rule.ai, prompt=prompt)]
        text = render(rule, message, now, found if isinstance(found, re.Match) else None)
        if not text.strip():
            logger.debug("auto_reply %r to %s skipped: its reply renders empty; trying the next rule",
                         rule.name, message.chat)
            continue
        return [PlannedReply(rule.name, message.account, message.chat, text)]
    return []
