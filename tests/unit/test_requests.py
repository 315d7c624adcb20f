"""The request edge without a broker: strict JSON in and out, the response topic rule, recipients
compared as identities, and `send`'s text-or-media rule."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wa_mqtt.model import identity
from wa_mqtt.mqtt import api


@pytest.mark.parametrize("raw", [
    rb'{"transaction": "\udfff", "to": "5511988887777", "text": "x"}',  # a lone low surrogate
    rb'{"to": "5511988887777", "text": "\ud800"}',  # a lone high surrogate
    rb'{"ids": ["ok", {"\udc00": 1}]}',  # ... in a nested key
    b'{"transaction": NaN}', b'{"transaction": Infinity}', b'{"a": -Infinity}',
    b'{"transaction": 1e400}', b'{"a": -1e400}',  # beyond a double
    b'{"a": 1, "a": 2}',  # a key twice: which one counts differs between parsers
    b'{"text": "\xed\xa0\x80"}',  # a surrogate encoded as UTF-8 bytes (CESU-8)
    '{"text": "x"}'.encode("utf-16"),  # not UTF-8
])
def test_not_strict_json_is_invalid_json(raw: bytes) -> None:
    with pytest.raises(api.ApiError) as info:
        api.decode_payload(raw)
    assert info.value.code == "invalid_json"
    api.encode(api.error(api.Route(), info.value.code, info.value.message))  # the message itself is publishable


@pytest.mark.parametrize(("raw", "data"), [
    (rb'{"text": "\ud83d\ude00"}', {"text": "\U0001F600"}),  # a surrogate pair is one character
    (rb'{"text": "\\ud800"}', {"text": "\\ud800"}),  # an escaped backslash, not an escape
    (b'\xef\xbb\xbf{"text": "bom"}', {"text": "bom"}),  # a leading byte order mark is ignored
    (b'{"n": 1e-400, "m": 1.5e300}', {"n": 0.0, "m": 1.5e300}),
])
def test_strict_json_is_accepted(raw: bytes, data: dict[str, Any]) -> None:
    assert api.decode_payload(raw)[0] == data


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(st.characters(exclude_categories=()), max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10)


@given(values)
def test_every_published_body_is_strict_json(value: Any) -> None:
    body = api.encode({"status": "ok", "data": {"value": value}, "transaction": value})
    api.loads_strict(body)  # NaN, Infinity and lone surrogates replaced, never raised, never emitted


@given(values)
def test_a_body_that_is_strict_json_is_encoded_as_json_dumps_does(value: Any) -> None:
    data = {"status": "ok", "data": {"value": value}}
    try:
        expected = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    except (ValueError, UnicodeEncodeError):
        return
    assert api.encode(data) == expected  # one encoder kept, not one built per call: the same bytes


@given(values)
def test_a_request_is_accepted_exactly_when_it_is_strict(value: Any) -> None:
    raw = json.dumps({"transaction": value}).encode()  # ensure_ascii: lone surrogates as \\u escapes
    try:
        json.dumps(value, allow_nan=False, ensure_ascii=False).encode()
        strict = True
    except (ValueError, UnicodeEncodeError):
        strict = False
    try:
        _, transaction, _ = api.decode_payload(raw)
    except api.ApiError as exc:
        assert not strict and exc.code == "invalid_json"
    else:
        assert strict and json.dumps(transaction) == json.dumps(value)


@pytest.mark.parametrize(("topic", "code"), [
    ("wa/#", "invalid_request"), ("replies/+/me", "invalid_request"), ("#", "invalid_request"),
    ("replies/\x00", "invalid_request"), ("$SYS/broker/x", "invalid_request"), ("replies/\x01", "invalid_request"),
    ("replies/\x85", "invalid_request"), ("replies/\ufdd0", "invalid_request"), ("replies/\U0010ffff", "invalid_request"),
    ("wa/bridge/state", "forbidden"), ("wa/bridge/event", "forbidden"), ("wa/5511900000001/message", "forbidden"),
    ("wa", "forbidden"), ("homeassistant/device/x/config", "forbidden"), ("homeassistant", "forbidden"),
    ("replies/me", None), ("wax/replies", None), ("home/wa", None), ("", None), (None, None),
])
def test_response_topic_rule(topic: str | None, code: str | None) -> None:
    if code is None:
        api.check_response_topic(topic, ("wa", "homeassistant"))
        return
    with pytest.raises(api.ApiError) as info:
        api.check_response_topic(topic, ("wa", "homeassistant"))
    assert info.value.code == code and "response topic" in info.value.message


def test_identity_treats_a_phone_and_its_jids_as_one_person() -> None:
    person = "5511988887777@s.whatsapp.net"
    for written in ("5511988887777", "+5511988887777", person, "5511988887777:12@s.whatsapp.net",
                    "5511988887777.0:3@s.whatsapp.net"):
        assert identity(written) == person
    assert identity("120363025246125486@g.us") == "120363025246125486@g.us"
    assert identity("5511988887777@g.us") != person and identity("5511988887778") != person


def test_send_takes_text_or_one_media_object_not_both() -> None:
    with pytest.raises(api.ApiError) as info:
        api.parse_command(False, "send", {"to": "5511988887777", "text": "look", "image": {"url": "https://x/y.jpg"}})
    assert info.value.code == "invalid_request" and "image.caption" in info.value.message
    api.parse_command(False, "send", {"to": "5511988887777", "image": {"url": "https://x/y.jpg", "caption": "look"}})
    api.parse_command(False, "send", {"to": "5511988887777", "text": "look"})
