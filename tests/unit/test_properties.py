"""Property tests (hypothesis): no input makes a request parser or the message translation raise
anything but their own typed errors, and every failure maps to a response code."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from wa_mqtt.media import MediaPolicy, MediaRefused, check_message
from wa_mqtt.mqtt import api
from wa_mqtt.mqtt.topics import ACCOUNT_COMMANDS, BRIDGE_COMMANDS, Topics, parse_request_topic, parse_sim_topic

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))

CODES = {"invalid_json", "invalid_request", "too_large"}
COMMANDS = [(False, c) for c in sorted(ACCOUNT_COMMANDS)] + [(True, c) for c in sorted(BRIDGE_COMMANDS)] + [
    (False, "nope"), (True, "nope")]
KEYS = ["to", "text", "chat", "id", "ids", "emoji", "state", "method", "phone", "sender", "reply_to",
        "image", "video", "audio", "document", "url", "path", "base64", "caption", "transaction"]

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=4),
                           max_leaves=20)
objects = st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), json_values, max_size=6)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse(is_bridge: bool, command: str, raw: bytes) -> BaseModel | api.ApiError:
    try:
        data, _, _ = api.decode_payload(raw, max_bytes=4096)
        return api.parse_command(is_bridge, command, data)
    except api.ApiError as exc:
        return exc


@FAST
@given(st.binary(max_size=300), st.sampled_from(COMMANDS))
def test_any_bytes_parse_or_fail_with_a_code(raw: bytes, command: tuple[bool, str]) -> None:
    result = parse(*command, raw)
    assert isinstance(result, BaseModel) or (result.code in CODES and result.message)


@FAST
@given(objects, st.sampled_from(COMMANDS))
def test_any_json_object_parses_or_names_what_is_wrong(obj: dict, command: tuple[bool, str]) -> None:
    result = parse(*command, json.dumps(obj).encode())
    try:
        json.dumps(obj, allow_nan=False)
    except ValueError:  # NaN or Infinity: not strict JSON, refused before any field is looked at
        assert isinstance(result, api.ApiError) and result.code == "invalid_json"
        return
    if isinstance(result, api.ApiError):
        assert (result.code == "invalid_request" and ":" in result.message) or "unknown command" in result.message
    else:
        assert command[1] in ACCOUNT_COMMANDS | BRIDGE_COMMANDS


@FAST
@given(objects)
def test_accepted_sends_pass_or_fail_the_media_policy_with_a_code(obj: dict) -> None:
    result = parse(False, "send", json.dumps(obj).encode())
    if isinstance(result, BaseModel):
        try:
            check_message(result, MediaPolicy(max_bytes=1024, media_dir=Path("/nonexistent-media")))  # type: ignore[arg-type]
        except MediaRefused as exc:
            assert exc.code in {"forbidden", "invalid_request", "too_large"}


@FAST
@given(st.text(max_size=80))
def test_topic_parsers_never_raise(topic: str) -> None:
    topics = Topics("wa")
    request = parse_request_topic(topics, topic)
    assert request is None or ("/" not in request.target and "/" not in request.command)
    parse_sim_topic(topics, topic)


@FAST
@given(text=st.text(max_size=200), caption=st.text(max_size=50), msg_id=st.text(min_size=1, max_size=40),
       user=st.text(alphabet="0123456789abc:", max_size=20), server=st.sampled_from(
           ["s.whatsapp.net", "g.us", "broadcast", "newsletter", "lid", "", "weird"]),
       pushname=st.text(max_size=30), timestamp=st.integers(min_value=-2**40, max_value=2**45),
       kind=st.sampled_from(["conversation", "extended", "image", "reaction", "location", "poll", "empty",
                             "edit", "revoke", "protocol", "mention"]))
def test_message_translation_never_raises(text: str, caption: str, msg_id: str, user: str, server: str,
                                          pushname: str, timestamp: int, kind: str) -> None:
    from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as E

    from wa_mqtt.engines.neonize_convert import message_from_event

    from neonize_factories import jid, message_event

    content = {
        "conversation": lambda: E.Message(conversation=text),
        "extended": lambda: E.Message(extendedTextMessage=E.ExtendedTextMessage(text=text)),
        "image": lambda: E.Message(imageMessage=E.ImageMessage(caption=caption, mimetype=text[:20])),
        "reaction": lambda: E.Message(reactionMessage=E.ReactionMessage(text=caption)),
        "location": lambda: E.Message(locationMessage=E.LocationMessage(name=text)),
        "poll": lambda: E.Message(pollCreationMessage=E.PollCreationMessage(name=text)),
        "empty": lambda: E.Message(),
        "edit": lambda: E.Message(protocolMessage=E.ProtocolMessage(
            type=E.ProtocolMessage.MESSAGE_EDIT, editedMessage=E.Message(conversation=text))),
        "revoke": lambda: E.Message(protocolMessage=E.ProtocolMessage(type=E.ProtocolMessage.REVOKE)),
        "protocol": lambda: E.Message(protocolMessage=E.ProtocolMessage(type=E.ProtocolMessage.EPHEMERAL_SETTING)),
        "mention": lambda: E.Message(extendedTextMessage=E.ExtendedTextMessage(text=text, contextInfo=E.ContextInfo(
            stanzaID=msg_id, participant=f"{user}@{server}", mentionedJID=[f"{user}@{server}"]))),
    }[kind]()
    event = message_event(content, msg_id=msg_id, chat=jid(user, server), sender=jid(user, server),
                          pushname=pushname, timestamp=timestamp)
    message = message_from_event(event, "5511900000001")
    assert message.id == msg_id and message.account == "5511900000001"
    if server == "lid" and user.split(":", 1)[0]:  # LID digits are never published as a phone
        assert message.sender is None and message.mentions == []
        assert message.quoted is None or message.quoted.sender is None
    json.dumps(message.payload())  # always serialisable for MQTT
