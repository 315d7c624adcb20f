"""The auto-reply matcher (pure, fixed clock) and the validation of auto_reply rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from wa_mqtt.auto_reply_rules import AutoReplyLimits, AutoReplyRule, Window
from wa_mqtt.automations import PlannedReply, ReplyHistory, decide
from wa_mqtt.config import ConfigError
from wa_mqtt.config_loading import build_config
from wa_mqtt.model import IncomingMessage

ME = "557996277210"
ANA = "5511999999999"
ANA_JID = f"{ANA}@s.whatsapp.net"
BOB = "5511988888888"
BOB_JID = f"{BOB}@s.whatsapp.net"
GROUP = "120363012345678901@g.us"
MON_10 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)  # a Monday
NOW = MON_10


def at(day: int, hour: int, minute: int = 0) -> datetime:
    """UTC, November 2026: 23 is a Monday, 27 a Friday, 28 a Saturday."""
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


def msg(now: datetime = NOW, **fields: Any) -> IncomingMessage:
    data: dict[str, Any] = {
        "id": "M1", "account": ME, "chat": ANA_JID, "chat_type": "private", "sender": ANA,
        "sender_jid": ANA_JID, "sender_name": "Ana", "timestamp": now, "type": "text", "text": "hello",
    }
    data.update(fields)
    return IncomingMessage.model_validate(data)


def rule(name: str = "r", reply: str = "ok", **fields: Any) -> AutoReplyRule:
    return AutoReplyRule.model_validate({"name": name, "reply": reply, **fields})


def texts(rules: list[AutoReplyRule], message: IncomingMessage, history: ReplyHistory | None = None,
          now: datetime = NOW, limits: AutoReplyLimits | None = None) -> list[str]:
    return [r.text for r in decide(rules, message, history or ReplyHistory(), now, limits)]


@pytest.mark.parametrize(("match", "fields", "replies"), [
    ({}, {}, True),
    ({"text": "Hello"}, {"text": "  HELLO "}, True),
    ({"text": "hello"}, {"text": "hello there"}, False),
    ({"text": "Hello", "case_sensitive": True}, {"text": "hello"}, False),
    ({"text": 1}, {"text": "1"}, True),  # YAML `text: 1`, a menu choice
    ({"contains": ["price", "cost"]}, {"text": "what's the COST?"}, True),
    ({"contains": "price"}, {"text": "hi"}, False),
    ({"regex": r"order (\d+)"}, {"text": "Where is ORDER 42?"}, True),
    ({"regex": r"order (\d+)"}, {"text": "order me a pizza"}, False),
    ({"regex": r"Order", "case_sensitive": True}, {"text": "order 1"}, False),
    ({"text": "hi", "contains": "x"}, {"text": "hi"}, False),  # every condition must hold
    ({"contains": "invoice"}, {"type": "image", "text": None, "caption": "Invoice attached"}, True),
    ({"contains": "invoice"}, {"type": "image", "text": None}, False),
    ({"chat": [ANA]}, {}, True),
    ({"chat": [ANA_JID]}, {}, True),
    ({"chat": [BOB]}, {}, False),
    ({"sender": [f"+{ANA}"]}, {}, True),
    ({"sender": [ANA_JID]}, {}, True),
    ({"sender": [BOB, BOB_JID]}, {}, False),
    ({"sender": ["201234567890123"]}, {"sender": None, "sender_jid": "201234567890123@lid"}, False),  # LID digits no phone
    ({"sender": ["201234567890123@lid"]}, {"sender": None, "sender_jid": "201234567890123@lid"}, True),
    ({"chat_type": "private"}, {}, True),
])
def test_match_conditions(match: dict, fields: dict, replies: bool) -> None:
    assert texts([rule(match=match)], msg(**fields)) == (["ok"] if replies else [])


@pytest.mark.parametrize(("extra", "fields", "replies"), [
    ({"accounts": [ME]}, {}, True),
    ({"accounts": ["5511900000001"]}, {}, False),
    ({"enabled": False}, {}, False),
    ({}, {"from_me": True}, False),
    ({}, {"type": "reaction", "text": None, "reaction": {"emoji": "👍", "target_id": "X"}}, False),
    ({}, {"type": "edit", "text": "hello", "edit": {"target_id": "X", "text": "hello"}}, False),
    ({}, {"type": "revoke", "text": None, "revoke": {"target_id": "X"}}, False),
    ({}, {"type": "undecryptable", "text": None}, False),  # the real message may follow: that one is answered
    ({}, {"chat": GROUP, "chat_type": "group"}, False),  # groups are off by default
    ({"groups": True}, {"chat": GROUP, "chat_type": "group"}, True),
    ({"groups": True, "match": {"chat_type": "private"}}, {"chat": GROUP, "chat_type": "group"}, False),
    ({"groups": True, "match": {"chat_type": "group"}}, {}, False),
    ({}, {"chat": "status@broadcast", "chat_type": "broadcast"}, False),
    ({}, {"timestamp": NOW - timedelta(seconds=599)}, True),
    ({}, {"timestamp": NOW - timedelta(seconds=601)}, False),  # backlog after an outage
])
def test_who_gets_replies(extra: dict, fields: dict, replies: bool) -> None:
    assert texts([rule(**extra)], msg(**fields)) == (["ok"] if replies else [])


@pytest.mark.parametrize(("window", "zone", "now", "inside"), [
    ({"days": ["mon"], "from": "09:00", "to": "17:00"}, "UTC", at(23, 10), True),
    ({"days": ["mon"], "from": "09:00", "to": "17:00"}, "UTC", at(23, 17), False),  # `to` is exclusive
    ({"days": ["mon"], "from": "09:00", "to": "17:00"}, "UTC", at(24, 10), False),
    ({"days": ["fri"], "from": "22:00", "to": "06:00"}, "UTC", at(27, 23), True),
    ({"days": ["fri"], "from": "22:00", "to": "06:00"}, "UTC", at(28, 5, 59), True),  # past midnight
    ({"days": ["fri"], "from": "22:00", "to": "06:00"}, "UTC", at(28, 6), False),
    ({"days": ["fri"], "from": "22:00", "to": "06:00"}, "UTC", at(27, 5), False),  # Thursday's night
    ({"days": ["fri"], "from": "22:00", "to": "06:00"}, "UTC", at(28, 23), False),
    ({"days": ["mon"], "from": "18:00", "to": "24:00"}, "UTC", at(23, 23, 59), True),
    ({"days": ["mon"], "from": "18:00", "to": "24:00"}, "UTC", at(24, 0, 30), False),
    ({"days": ["sat", "sun"]}, "UTC", at(29, 12), True),  # no times: the whole day
    ({"days": ["sat", "sun"]}, "UTC", at(30, 0, 1), False),
    ({"days": ["mon"], "from": "09:00", "to": "10:00"}, "America/Sao_Paulo", at(23, 12, 30), True),
    ({"days": ["mon"], "from": "09:00", "to": "10:00"}, "America/Sao_Paulo", at(23, 9, 30), False),
    ({"days": ["tue"], "from": "00:00", "to": "08:00"}, "Asia/Tokyo", at(23, 20), True),  # Tue 05:00 JST
    ({"days": ["Monday"], "from": "09:00", "to": "10:00"}, "Asia/Tokyo", at(23, 9, 30), False),  # Mon 18:30 JST
    ([{"days": ["tue"]}, {"days": ["mon"], "from": "09:00", "to": "11:00"}], "UTC", at(23, 10), True),
])
def test_weekly_window(window: Any, zone: str, now: datetime, inside: bool) -> None:
    rules = [rule(timezone=zone, match={"window": window})]
    assert texts(rules, msg(now=now), now=now) == (["ok"] if inside else [])


def test_unquoted_yaml_times_are_read_as_times() -> None:
    window = Window.model_validate(yaml.safe_load("{days: [fri], from: 22:00, to: 6:30}"))
    assert (window.start.hour, window.start.minute, window.end.hour, window.end.minute) == (22, 0, 6, 30)


@pytest.mark.parametrize(("match", "seen", "replies"), [
    ({"first_message": True}, None, True),
    ({"first_message": True}, {"ago": 10}, False),
    ({"first_message": True, "quiet_for": 3600}, {"ago": 7200}, True),
    ({"first_message": True, "quiet_for": 3600}, {"ago": 1800}, False),
    ({"first_message": True}, {"ago": 10, "sender": BOB, "chat": BOB_JID}, True),  # someone else
    ({"first_message": True}, {"ago": 10, "account": "5511900000001"}, True),  # on another account
    ({"first_message": True}, {"ago": 10, "from_me": True}, True),  # our own messages don't count
])
def test_first_message(match: dict, seen: dict | None, replies: bool) -> None:
    history = ReplyHistory()
    if seen is not None:
        ago = seen.pop("ago")
        earlier = NOW - timedelta(seconds=ago)
        history.record_incoming(msg(now=earlier, **seen), earlier)
    assert texts([rule(match=match)], msg(), history) == (["ok"] if replies else [])


def test_first_message_greets_once_when_recorded_after_deciding() -> None:
    rules, history = [rule(match={"first_message": True}, cooldown=0)], ReplyHistory()
    got = []
    for i in range(3):
        now = NOW + timedelta(seconds=i)
        message = msg(now=now, id=f"M{i}")
        got.append(texts(rules, message, history, now))
        history.record_incoming(message, now)
    assert got == [["ok"], [], []]


@pytest.mark.parametrize(("replied_ago", "chat", "replies"), [
    (None, ANA_JID, True),
    (100, ANA_JID, False),
    (299, ANA_JID, False),
    (300, ANA_JID, True),
    (100, BOB_JID, True),  # cooldown is per chat
])
def test_cooldown(replied_ago: int | None, chat: str, replies: bool) -> None:
    history = ReplyHistory()
    if replied_ago is not None:
        history.record_reply(PlannedReply("r", ME, chat, "earlier"), NOW - timedelta(seconds=replied_ago))
    assert texts([rule(cooldown=300)], msg(), history) == (["ok"] if replies else [])


def test_first_matching_rule_wins_and_cooling_rules_fall_through() -> None:
    rules = [rule("price", "price list", match={"contains": "price"}, cooldown=3600), rule("any", "we'll answer soon")]
    history = ReplyHistory()
    assert texts(rules, msg(text="price?"), history) == ["price list"]
    history.record_reply(PlannedReply("price", ME, ANA_JID, "price list"), NOW)
    later = NOW + timedelta(minutes=5)
    assert texts(rules, msg(now=later, text="price??"), history, later) == ["we'll answer soon"]
    assert len(decide(rules, msg(text="price?"), ReplyHistory(), NOW)) == 1


@pytest.mark.parametrize(("sent_ago", "replies"), [
    ([], True),
    ([10, 20], False),
    ([10, 61], True),  # one of them is outside the window
])
def test_global_rate_limit(sent_ago: list[int], replies: bool) -> None:
    history = ReplyHistory()
    for i, ago in enumerate(sent_ago):  # to other chats, on any account
        history.record_reply(PlannedReply("r", f"55119000000{i:02d}", f"55119000001{i:02d}@s.whatsapp.net", "x"),
                             NOW - timedelta(seconds=ago))
    limits = AutoReplyLimits(max=2, per=60)
    assert texts([rule(cooldown=0)], msg(), history, limits=limits) == (["ok"] if replies else [])


@pytest.mark.parametrize(("sent", "text", "chat", "replies"), [
    ([(60, "We're closed, back at 9")], "we're  CLOSED, back at 9", ANA_JID, False),  # an echo
    ([(60, "We're closed, back at 9")], "we're closed", ANA_JID, True),
    ([(60, "We're closed, back at 9")], "We're closed, back at 9", BOB_JID, True),  # sent to another chat
    ([(86401, "We're closed, back at 9")], "We're closed, back at 9", ANA_JID, True),  # long ago
    ([(60, "a"), (50, "b")], "hello", ANA_JID, False),  # chat cap reached
    ([(86401, "a"), (50, "b")], "hello", ANA_JID, True),
])
def test_loop_protection(sent: list[tuple[int, str]], text: str, chat: str, replies: bool) -> None:
    history = ReplyHistory()
    for ago, reply in sent:
        history.record_reply(PlannedReply("other", ME, ANA_JID, reply), NOW - timedelta(seconds=ago))
    message = msg(text=text, chat=chat, sender=chat.split("@")[0], sender_jid=chat)
    limits = AutoReplyLimits(chat_max=2)
    assert texts([rule(cooldown=0)], message, history, limits=limits) == (["ok"] if replies else [])


def test_two_bots_answering_each_other_stop_at_the_chat_cap() -> None:
    """Two bridges with catch-all rules and different texts: the loop is bounded by chat_max."""
    bots = {ME: ([rule("a", "Hi from A $name", cooldown=0)], ReplyHistory()),
            BOB: ([rule("b", "Hi from B", cooldown=0)], ReplyHistory())}
    limits, now, sent = AutoReplyLimits(chat_max=3), NOW, 0
    incoming = msg(account=ME, chat=BOB_JID, sender=BOB, sender_jid=BOB_JID, text="hi")
    while incoming is not None and sent < 100:
        rules, history = bots[incoming.account]
        planned = decide(rules, incoming, history, now, limits)
        history.record_incoming(incoming, now)
        incoming = None
        for reply in planned:
            history.record_reply(reply, now)
            sent += 1
            peer = BOB if reply.account == ME else ME
            incoming = msg(now=now, id=f"M{sent}", account=peer, chat=f"{reply.account}@s.whatsapp.net",
                           sender=reply.account, sender_jid=f"{reply.account}@s.whatsapp.net", text=reply.text)
        now += timedelta(seconds=2)
    assert sent == 6  # three each, then both chats are capped for chat_per


@pytest.mark.parametrize(("reply", "match", "extra", "fields", "expected"), [
    ("Hi $name!", {}, {}, {}, "Hi Ana!"),
    ("Hi ${name}!", {}, {}, {"sender_name": None}, f"Hi {ANA}!"),
    ("$phone on $account", {}, {}, {}, f"{ANA} on {ME}"),
    ("$date $time", {}, {"timezone": "America/Sao_Paulo"}, {}, "2026-11-23 07:00"),
    ("$time ($rule)", {}, {}, {}, "10:00 (r)"),
    ("Order ${1}: $0", {"regex": r"order #?(\d+)"}, {}, {"text": "about order #42"}, "Order 42: order #42"),
    ("Order $id, $2.", {"regex": r"order (?P<id>\d+)( urgent)?"}, {}, {"text": "order 7"}, "Order 7, ."),
    ("costs $$5", {}, {}, {}, "costs $5"),
    ("$name.__class__", {}, {}, {}, "Ana.__class__"),  # no attribute access, just text
    ("Hi $name ($phone)", {}, {}, {"sender": None, "sender_name": None, "sender_jid": "201234567890123@lid"},
     "Hi  ()"),  # a LID sender whose phone is unknown: no digits are made up
])
def test_template(reply: str, match: dict, extra: dict, fields: dict, expected: str) -> None:
    assert texts([rule(reply=reply, match=match, **extra)], msg(**fields)) == [expected]


R = {"name": "r", "reply": "x"}


@pytest.mark.parametrize(("rules", "key", "words"), [
    ([{**R, "match": {"regex": "order (\\d+"}}], "auto_reply.0.match.regex", "regular expression"),
    ([{"name": "r", "reply": "x"}, {"name": "r", "reply": "y"}], "auto_reply", "twice"),
    ([{**R, "typo": 1}], "auto_reply.0.typo", "unknown key"),
    ([{**R, "match": {"txet": "hi"}}], "auto_reply.0.match.txet", "unknown key"),
    ([{"name": "r"}], "auto_reply.0", "a reply (a text) or ai (a provider), one of them"),
    ([{"name": "r", "reply": "costs $5"}], "auto_reply.0.reply", "$$"),
    ([{"name": "r", "reply": "order $1"}], "auto_reply.0.reply", "unknown placeholder $1"),
    ([{"name": "r", "reply": "$nome"}], "auto_reply.0.reply", "unknown placeholder $nome"),
    ([{**R, "match": {"regex": "(?P<name>.)"}}], "auto_reply.0.reply", "rename"),
    ([{**R, "timezone": "Mars/Olympus"}], "auto_reply.0.timezone", "IANA"),
    ([{**R, "match": {"quiet_for": 60}}], "auto_reply.0.match.quiet_for", "first_message"),
    ([{**R, "match": {"chat_type": "group"}}], "auto_reply.0.match", "groups: true"),
    ([{**R, "match": {"chat_type": "newsletter"}}], "auto_reply.0.match.chat_type", "private"),
    ([{**R, "match": {"sender": ["ana"]}}], "auto_reply.0.match.sender", "phone"),
    ([{**R, "accounts": ["12ab"]}], "auto_reply.0.accounts", "phone"),
    ([{**R, "cooldown": -1}], "auto_reply.0.cooldown", "greater"),
    ([{**R, "match": {"window": {"days": ["xyz"]}}}], "auto_reply.0.match.window.0.days.0", "'mon'"),
    ([{**R, "match": {"window": {"from": "25:00"}}}], "auto_reply.0.match.window.0.from", "'22:00'"),
    # AI rules (issue 16)
    ([{**R, "ai": {"provider": "openai", "url": "http://x/v1", "model": "m"}}], "auto_reply.0", "one of them"),
    ([{"name": "r", "ai": {"provider": "gpt"}}], "auto_reply.0.ai", "'openai', 'home_assistant'"),
    ([{"name": "r", "ai": {"provider": "openai", "url": "localhost:11434", "model": "m"}}],
     "auto_reply.0.ai.openai.url", "http://"),
    ([{"name": "r", "ai": {"provider": "openai", "url": "http://x/v1", "model": "m", "history": 101}}],
     "auto_reply.0.ai.openai.history", "100"),
    ([{"name": "r", "ai": {"provider": "home_assistant", "url": "http://ha:8123", "token": "t"}}],
     "auto_reply.0", "match.sender must name the numbers allowed"),
    ([{"name": "r", "match": {"sender": ["5511988887777"]}, "ai": {"provider": "home_assistant"}}],
     "auto_reply.0.ai.home_assistant", "needs url and token"),
])
def test_invalid_rules_name_their_key(rules: list, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({"auto_reply": rules}, environ={})
    assert str(info.value).startswith(f"{key}:") and words in str(info.value)


def test_valid_rules_and_limits_load_from_yaml() -> None:
    data = yaml.safe_load("""
auto_reply:
  - name: night
    timezone: Europe/Lisbon
    match: {window: {days: [mon, tue], from: 22:00, to: 07:30}}
    reply: "Closed until 7:30, $name."
auto_reply_limits: {max: 10, per: 60}
""")
    config = build_config(data, environ={})
    assert [r.name for r in config.auto_reply] == ["night"] and config.auto_reply_limits.max == 10
    assert config.masked()["auto_reply"][0]["match"]["window"][0]["from"] == "22:00:00"
    assert build_config(config.masked(), environ={}).auto_reply == config.auto_reply  # round trip


def test_history_is_bounded_and_forgets_the_oldest_contact() -> None:
    history = ReplyHistory(max_keys=2)
    for sender in ("5511900000001", "5511900000002", "5511900000003"):
        history.record_incoming(msg(sender=sender, chat=f"{sender}@s.whatsapp.net"), NOW)
    assert history.last_incoming(ME, "5511900000001@s.whatsapp.net", "5511900000001") is None
    assert history.last_incoming(ME, "5511900000003@s.whatsapp.net", "5511900000003") == NOW


def test_naive_clock_is_refused_and_replies_become_sends() -> None:
    with pytest.raises(ValueError):
        decide([rule()], msg(), ReplyHistory(), datetime(2026, 11, 23, 10, 0))
    send = PlannedReply("r", ME, GROUP, "hi").to_outgoing("auto:M1")
    assert (send.to, send.text, send.id) == (GROUP, "hi", "auto:M1")


def test_debug_log_says_why_no_auto_reply_was_sent(caplog: pytest.LogCaptureFixture) -> None:
    """Each skip names its reason at debug: stale, cooldown, loop guard, limits."""
    caplog.set_level("DEBUG", logger="wa_mqtt.automations")
    history = ReplyHistory()
    assert texts([rule()], msg(now=NOW - timedelta(hours=1)), history) == []
    history.record_reply(PlannedReply("r", ME, ANA_JID, "ok"), NOW - timedelta(seconds=10))
    assert texts([rule(cooldown=300)], msg(), history) == []
    assert texts([rule("echo", cooldown=0)], msg(text="OK"), history) == []
    limits = AutoReplyLimits(max=1, per=60)
    assert texts([rule("busy", cooldown=0)], msg(chat=BOB_JID, sender=BOB, sender_jid=BOB_JID), history,
                 limits=limits) == []
    reasons = [r.getMessage() for r in caplog.records if r.levelname == "DEBUG"]
    assert any("stale" in line and "stale_after" in line for line in reasons), reasons
    assert any("'r'" in line and "cooldown" in line for line in reasons), reasons
    assert any("'echo'" in line and "loop" in line for line in reasons), reasons
    assert any("'busy'" in line and "rate limit" in line for line in reasons), reasons
    assert not any("hello" in line for line in reasons)  # no message text in the log
