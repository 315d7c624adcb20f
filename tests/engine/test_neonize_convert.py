"""Table tests of neonize_convert against real neonize protobuf classes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from neonize.proto import Neonize_pb2 as N
from neonize.proto.waCommon.WACommon_pb2 import MessageKey
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as E

from wa_mqtt.engines import neonize_convert as conv
from wa_mqtt.engines.base import (
    ClientOutdated,
    Connected,
    Degraded,
    Disconnected,
    LoggedOut,
    Paired,
    StreamReplaced,
    TemporaryBan,
)
from wa_mqtt.model import ErrorCode

from neonize_factories import TS_MS, jid, message_event, receipt_event

ACCOUNT = "4915100000001"
SHA = bytes(range(32))

CONTENT_CASES = [
    # (name, waE2E.Message, expected subset of the payload)
    ("conversation", E.Message(conversation="hello"), {"type": "text", "text": "hello", "caption": None}),
    ("extended", E.Message(extendedTextMessage=E.ExtendedTextMessage(text="see https://x.y")),
     {"type": "text", "text": "see https://x.y"}),
    ("image", E.Message(imageMessage=E.ImageMessage(mimetype="image/jpeg", caption="cat", fileLength=1234,
                                                    fileSHA256=SHA)),
     {"type": "image", "caption": "cat", "text": None,
      "media": {"mimetype": "image/jpeg", "size": 1234, "filename": None, "sha256": SHA.hex(), "path": None, "error": None}}),
    ("video", E.Message(videoMessage=E.VideoMessage(mimetype="video/mp4", caption="clip", fileLength=9)),
     {"type": "video", "caption": "clip", "media": {"mimetype": "video/mp4", "size": 9, "filename": None,
                                                    "sha256": None, "path": None, "error": None}}),
    ("voice", E.Message(audioMessage=E.AudioMessage(mimetype="audio/ogg; codecs=opus", PTT=True, fileLength=5)),
     {"type": "audio", "ptt": True, "media": {"mimetype": "audio/ogg; codecs=opus", "size": 5, "filename": None,
                                              "sha256": None, "path": None, "error": None}}),
    ("audio", E.Message(audioMessage=E.AudioMessage(mimetype="audio/mpeg")), {"type": "audio", "ptt": False}),
    ("document", E.Message(documentMessage=E.DocumentMessage(mimetype="application/pdf", fileName="a.pdf",
                                                             fileLength=77, fileSHA256=SHA, caption="doc")),
     {"type": "document", "caption": "doc",
      "media": {"mimetype": "application/pdf", "size": 77, "filename": "a.pdf", "sha256": SHA.hex(), "path": None, "error": None}}),
    ("document_with_caption", E.Message(documentWithCaptionMessage=E.FutureProofMessage(
        message=E.Message(documentMessage=E.DocumentMessage(fileName="b.txt", caption="wrapped")))),
     {"type": "document", "caption": "wrapped"}),
    ("sticker", E.Message(stickerMessage=E.StickerMessage(mimetype="image/webp", fileLength=3)),
     {"type": "sticker", "media": {"mimetype": "image/webp", "size": 3, "filename": None, "sha256": None,
                                   "path": None, "error": None}}),
    ("location", E.Message(locationMessage=E.LocationMessage(degreesLatitude=-10.9, degreesLongitude=-37.05,
                                                             name="Aracaju")),
     {"type": "location", "location": {"latitude": -10.9, "longitude": -37.05, "name": "Aracaju"}, "live": False}),
    ("live_location", E.Message(liveLocationMessage=E.LiveLocationMessage(degreesLatitude=1.5, degreesLongitude=2.5,
                                                                          caption="on my way")),
     {"type": "location", "location": {"latitude": 1.5, "longitude": 2.5, "name": None}, "live": True,
      "caption": "on my way"}),
    ("contact", E.Message(contactMessage=E.ContactMessage(displayName="Bob", vcard="BEGIN:VCARD\nEND:VCARD")),
     {"type": "contact", "text": "Bob", "vcard": "BEGIN:VCARD\nEND:VCARD",
      "contacts": [{"name": "Bob", "vcard": "BEGIN:VCARD\nEND:VCARD"}]}),
    ("contacts_array", E.Message(contactsArrayMessage=E.ContactsArrayMessage(
        displayName="2 contacts", contacts=[E.ContactMessage(displayName="A", vcard="va"),
                                            E.ContactMessage(displayName="B", vcard="vb")])),
     {"type": "contact", "vcard": "va", "contacts": [{"name": "A", "vcard": "va"}, {"name": "B", "vcard": "vb"}]}),
    ("reaction", E.Message(reactionMessage=E.ReactionMessage(
        key=MessageKey(remoteJID="5511999999999@s.whatsapp.net", fromMe=True, ID="3EB0TARGET"), text="👍")),
     {"type": "reaction", "reaction": {"emoji": "👍", "target_id": "3EB0TARGET"}}),
    ("reaction_removed", E.Message(reactionMessage=E.ReactionMessage(key=MessageKey(ID="3EB0TARGET"), text="")),
     {"type": "reaction", "reaction": {"emoji": "", "target_id": "3EB0TARGET"}}),
    ("poll", E.Message(pollCreationMessage=E.PollCreationMessage(
        name="Lunch?", selectableOptionsCount=1,
        options=[E.PollCreationMessage.Option(optionName="Yes"), E.PollCreationMessage.Option(optionName="No")])),
     {"type": "poll", "text": "Lunch?", "poll_options": ["Yes", "No"], "poll_selectable": 1}),
    ("poll_v3", E.Message(pollCreationMessageV3=E.PollCreationMessage(
        name="Q", options=[E.PollCreationMessage.Option(optionName="a")])),
     {"type": "poll", "text": "Q", "poll_options": ["a"]}),
    ("ephemeral_text", E.Message(ephemeralMessage=E.FutureProofMessage(message=E.Message(conversation="psst"))),
     {"type": "text", "text": "psst"}),
    ("view_once_image", E.Message(viewOnceMessageV2=E.FutureProofMessage(
        message=E.Message(imageMessage=E.ImageMessage(mimetype="image/png")))),
     {"type": "image"}),
    ("unknown_type", E.Message(keepInChatMessage=E.KeepInChatMessage()),
     {"type": "unknown", "raw_type": "keepInChatMessage"}),
    ("poll_vote", E.Message(pollUpdateMessage=E.PollUpdateMessage(pollCreationMessageKey=MessageKey(ID="POLL1"))),
     {"type": "poll_vote", "poll_vote": {"poll_id": "POLL1", "selected": []}}),
    ("unknown_with_meta", E.Message(messageContextInfo=E.MessageContextInfo(), callLogMesssage=E.CallLogMessage()),
     {"type": "unknown", "raw_type": "callLogMesssage"}),
    ("only_meta", E.Message(messageContextInfo=E.MessageContextInfo()), {"type": "unknown", "raw_type": "empty"}),
]


@pytest.mark.parametrize(("name", "content", "expected"), CONTENT_CASES, ids=[c[0] for c in CONTENT_CASES])
def test_message_content(name: str, content: E.Message, expected: dict) -> None:
    payload = conv.message_from_event(message_event(content), ACCOUNT).payload()
    assert {k: payload.get(k) for k in expected} == expected
    assert payload["id"] == "3EB0AAAA" and payload["account"] == ACCOUNT


def test_private_message_envelope() -> None:
    event = message_event(E.Message(conversation="hi"), sender=jid("5511999999999", device=3), pushname="Ana")
    payload = conv.message_from_event(event, ACCOUNT).payload()
    assert payload | {"text": None} == {
        "id": "3EB0AAAA", "account": ACCOUNT, "chat": "5511999999999@s.whatsapp.net", "chat_type": "private",
        "chat_name": None, "sender": "5511999999999", "sender_lid": None, "sender_jid": "5511999999999@s.whatsapp.net",
        "sender_name": "Ana", "from_me": False, "timestamp": "2026-11-18T11:06:40Z", "type": "text", "text": None,
        "caption": None, "media": None, "quoted": None, "mentions": [], "mentioned_jids": [], "reaction": None,
        "location": None, "edit": None, "revoke": None,
    }


def test_message_without_content_is_unknown_not_dropped() -> None:
    message = conv.message_from_event(message_event(None), ACCOUNT)
    assert (message.type, message.model_extra) == ("unknown", {"raw_type": "empty"})


def test_group_message_sender_and_quote_and_mentions() -> None:
    quoted = E.Message(conversation="original text")
    content = E.Message(extendedTextMessage=E.ExtendedTextMessage(
        text="@5511888888888 yes",
        contextInfo=E.ContextInfo(stanzaID="3EB0QUOTED", participant="5511777777777@s.whatsapp.net",
                                  quotedMessage=quoted,
                                  mentionedJID=["5511888888888@s.whatsapp.net", "5511666666666:2@s.whatsapp.net"])))
    event = message_event(content, chat=jid("120363012345678901", "g.us"), sender=jid("5511999999999", device=12))
    payload = conv.message_from_event(event, ACCOUNT).payload()
    assert payload["chat"] == "120363012345678901@g.us"
    assert payload["chat_type"] == "group"
    assert (payload["sender"], payload["sender_jid"]) == ("5511999999999", "5511999999999@s.whatsapp.net")
    assert payload["quoted"] == {"id": "3EB0QUOTED", "sender": "5511777777777", "sender_lid": None,
                                 "sender_jid": "5511777777777@s.whatsapp.net", "text": "original text"}
    assert payload["mentions"] == ["5511888888888", "5511666666666"]
    assert payload["mentioned_jids"] == ["5511888888888@s.whatsapp.net", "5511666666666@s.whatsapp.net"]


def test_quoted_media_caption_is_the_quoted_text() -> None:
    content = E.Message(imageMessage=E.ImageMessage(
        caption="reply", contextInfo=E.ContextInfo(
            stanzaID="Q1", quotedMessage=E.Message(imageMessage=E.ImageMessage(caption="the photo")))))
    payload = conv.message_from_event(message_event(content), ACCOUNT).payload()
    assert payload["quoted"] == {"id": "Q1", "sender": None, "sender_lid": None, "sender_jid": None,
                                 "text": "the photo"}


def test_lid_sender_uses_phone_alt_and_names_private_chat_by_phone() -> None:
    event = message_event(E.Message(conversation="x"), chat=jid("123456789012345", "lid"),
                          sender=jid("123456789012345", "lid"), sender_alt=jid("5511555555555"))
    payload = conv.message_from_event(event, ACCOUNT).payload()
    assert (payload["sender"], payload["chat"]) == ("5511555555555", "5511555555555@s.whatsapp.net")
    assert (payload["sender_lid"], payload["sender_jid"]) == ("123456789012345@lid", "123456789012345@lid")


LID = "123456789012345"


def test_lid_sender_without_alt_is_never_published_as_a_phone() -> None:
    """SenderAlt empty (whatsmeow#1014): the LID digits are no phone; the LID map may know it."""
    event = message_event(E.Message(conversation="x"), chat=jid(LID, "lid"), sender=jid(LID, "lid", device=2))
    unknown = conv.message_from_event(event, ACCOUNT)
    assert (unknown.sender, unknown.sender_lid, unknown.sender_jid, unknown.chat) == (
        None, f"{LID}@lid", f"{LID}@lid", f"{LID}@lid")
    assert conv.lid_users(event) == [f"{LID}@lid", f"{LID}@lid"]
    known = conv.message_from_event(event, ACCOUNT, {LID: "5511555555555"})
    assert (known.sender, known.sender_lid, known.sender_jid, known.chat) == (
        "5511555555555", f"{LID}@lid", f"{LID}@lid", "5511555555555@s.whatsapp.net")


def test_lid_group_sender_mentions_and_quote() -> None:
    content = E.Message(extendedTextMessage=E.ExtendedTextMessage(
        text="@x @y", contextInfo=E.ContextInfo(
            stanzaID="Q2", participant="777000000000001@lid", quotedMessage=E.Message(conversation="q"),
            mentionedJID=["777000000000001@lid", "777000000000002@lid", "5511888888888@s.whatsapp.net"])))
    event = message_event(content, chat=jid("120363012345678901", "g.us"), sender=jid("777000000000002", "lid"))
    lids = {"777000000000001": "5511444444444"}
    assert set(conv.lid_users(event)) == {"120363012345678901@g.us", "777000000000002@lid", "777000000000001@lid",
                                          "5511888888888@s.whatsapp.net"}
    payload = conv.message_from_event(event, ACCOUNT, lids).payload()
    assert (payload["sender"], payload["sender_lid"], payload["chat"]) == (
        None, "777000000000002@lid", "120363012345678901@g.us")
    assert payload["mentions"] == ["5511444444444", "5511888888888"]  # the unknown LID is left out, not its digits
    assert payload["mentioned_jids"] == ["777000000000001@lid", "777000000000002@lid", "5511888888888@s.whatsapp.net"]
    assert payload["quoted"] == {"id": "Q2", "sender": "5511444444444", "sender_lid": "777000000000001@lid",
                                 "sender_jid": "777000000000001@lid", "text": "q"}


def test_pn_sender_with_lid_alt_carries_both() -> None:
    event = message_event(E.Message(conversation="x"), sender=jid("5511999999999", device=3),
                          sender_alt=jid(LID, "lid"))
    message = conv.message_from_event(event, ACCOUNT)
    assert (message.sender, message.sender_lid, message.sender_jid) == (
        "5511999999999", f"{LID}@lid", "5511999999999@s.whatsapp.net")


def test_lid_receipt_sender_is_no_phone() -> None:
    event = receipt_event(N.Receipt.READ, ["A"], chat=jid(LID, "lid"), sender=jid(LID, "lid"))
    receipt = conv.receipt_from_event(event)
    assert (receipt.sender, receipt.sender_lid) == (None, f"{LID}@lid")


def _protocol(kind: int, **fields: object) -> E.Message:
    return E.Message(protocolMessage=E.ProtocolMessage(type=kind, **fields))


def test_edit_is_published_with_its_target_and_new_text() -> None:
    """As whatsmeow delivers an edit: editedMessage wrapping protocolMessage{MESSAGE_EDIT}, IsEdit set."""
    edit = _protocol(E.ProtocolMessage.MESSAGE_EDIT, key=MessageKey(ID="3EB0ORIG", fromMe=False),
                     editedMessage=E.Message(conversation="fixed typo"))
    wrapped = E.Message(editedMessage=E.FutureProofMessage(message=edit))
    for content in (wrapped, edit):
        event = message_event(content, msg_id="3EB0EDIT", is_edit=content is wrapped)
        assert not conv.is_device_traffic(event)
        payload = conv.message_from_event(event, ACCOUNT).payload()
        assert (payload["type"], payload["text"], payload["edit"]) == (
            "edit", "fixed typo", {"target_id": "3EB0ORIG", "text": "fixed typo"})
        assert "edited" not in payload
    caption = _protocol(E.ProtocolMessage.MESSAGE_EDIT, key=MessageKey(ID="IMG"),
                        editedMessage=E.Message(imageMessage=E.ImageMessage(caption="new caption")))
    assert conv.message_from_event(message_event(caption), ACCOUNT).edit.text == "new caption"


def test_revoke_is_published_with_its_target() -> None:
    event = message_event(_protocol(E.ProtocolMessage.REVOKE, key=MessageKey(ID="3EB0GONE")), msg_id="3EB0REV")
    assert not conv.is_device_traffic(event)
    payload = conv.message_from_event(event, ACCOUNT).payload()
    assert (payload["type"], payload["revoke"], payload["text"]) == ("revoke", {"target_id": "3EB0GONE"}, None)


@pytest.mark.parametrize("kind", [E.ProtocolMessage.HISTORY_SYNC_NOTIFICATION, E.ProtocolMessage.APP_STATE_SYNC_KEY_SHARE,
                                  E.ProtocolMessage.PEER_DATA_OPERATION_REQUEST_RESPONSE_MESSAGE])
def test_own_device_protocol_traffic_is_not_a_message(kind: int) -> None:
    mine = message_event(_protocol(kind), from_me=True, chat=jid(ACCOUNT), sender=jid(ACCOUNT, device=7))
    assert conv.is_device_traffic(mine)
    assert conv.is_device_traffic(message_event(_protocol(kind)))  # these are device traffic whoever sends them


def test_key_distribution_alone_is_device_traffic_but_other_protocol_messages_are_kept() -> None:
    skdm = E.Message(senderKeyDistributionMessage=E.SenderKeyDistributionMessage(groupID="g"))
    assert conv.is_device_traffic(message_event(skdm))
    assert not conv.is_device_traffic(message_event(None))  # nothing at all: published as unknown, as before
    ephemeral = message_event(_protocol(E.ProtocolMessage.EPHEMERAL_SETTING))
    assert not conv.is_device_traffic(ephemeral)
    message = conv.message_from_event(ephemeral, ACCOUNT)
    assert (message.type, message.model_extra) == ("unknown", {"raw_type": "protocolMessage.EPHEMERAL_SETTING"})
    assert conv.is_device_traffic(message_event(_protocol(E.ProtocolMessage.EPHEMERAL_SETTING), from_me=True))


def test_undecryptable_message() -> None:
    info = message_event(None, msg_id="3EB0LOCKED", chat=jid(LID, "lid"), sender=jid(LID, "lid")).Info
    event = N.UndecryptableMessage(Info=info, IsUnavailable=False, DecryptFailMode=N.UndecryptableMessage.DECRYPT_FAIL_SHOW)
    assert conv.lid_users(event) == [f"{LID}@lid", f"{LID}@lid"]
    payload = conv.undecryptable_from_event(event, ACCOUNT, {LID: "5511555555555"}).payload()
    assert (payload["id"], payload["type"], payload["text"], payload["unavailable"], payload["hidden"]) == (
        "3EB0LOCKED", "undecryptable", None, False, False)
    assert (payload["sender"], payload["sender_lid"], payload["chat"]) == (
        "5511555555555", f"{LID}@lid", "5511555555555@s.whatsapp.net")


def test_number_checks() -> None:
    answers = [N.IsOnWhatsAppResponse(Query="+551188887777@c.us", JID=jid("551188887777"), IsIn=True),
               N.IsOnWhatsAppResponse(Query="+5511000000000@c.us", JID=jid("5511000000000"), IsIn=False)]
    checks = conv.number_checks(answers, ["5511000000000", "551188887777", "4915100000009"])
    assert [c.model_dump() for c in checks] == [
        {"number": "5511000000000", "on_whatsapp": False, "jid": None},
        {"number": "551188887777", "on_whatsapp": True, "jid": "551188887777@s.whatsapp.net"},
        {"number": "4915100000009", "on_whatsapp": False, "jid": None}]
    # WhatsApp rewrote the query (Brazil's ninth digit): matched by position
    rewritten = [N.IsOnWhatsAppResponse(Query="+551188887777", JID=jid("551188887777"), IsIn=True)]
    assert conv.number_checks(rewritten, ["5511988887777"])[0].jid == "551188887777@s.whatsapp.net"


@pytest.mark.parametrize(("chat", "chat_type"), [
    (jid("status", "broadcast"), "broadcast"),
    (jid("120363000000000001", "newsletter"), "newsletter"),
    (jid("120363000000000002", "g.us"), "group"),
    (jid("5511999999999"), "private"),
])
def test_chat_types(chat: N.JID, chat_type: str) -> None:
    assert conv.message_from_event(message_event(E.Message(conversation="x"), chat=chat), ACCOUNT).chat_type == chat_type


def test_newsletter_without_sender_uses_chat() -> None:
    event = message_event(E.Message(conversation="news"), chat=jid("120363000000000001", "newsletter"),
                          sender=jid("", ""))
    message = conv.message_from_event(event, ACCOUNT)
    assert message.sender_jid == "120363000000000001@newsletter"


def test_from_me_and_edit_flags() -> None:
    event = message_event(E.Message(conversation="mine"), from_me=True, sender=jid(ACCOUNT, device=7),
                          is_edit=True)
    message = conv.message_from_event(event, ACCOUNT)
    assert message.from_me is True and message.sender == ACCOUNT and message.model_extra == {"edited": True}


def test_timestamp_seconds_and_milliseconds() -> None:
    assert conv.epoch_to_datetime(TS_MS) == conv.epoch_to_datetime(TS_MS // 1000)
    assert conv.epoch_to_datetime(TS_MS).tzinfo is UTC


RECEIPT_CASES = [
    (N.Receipt.DELIVERED, "delivered"), (N.Receipt.READ, "read"), (N.Receipt.PLAYED, "played"),
    (N.Receipt.READ_SELF, None), (N.Receipt.SENDER, None), (N.Receipt.RETRY, None),
    (N.Receipt.SERVER_ERROR, None),
]


@pytest.mark.parametrize(("kind", "expected"), RECEIPT_CASES)
def test_receipt_types(kind: int, expected: str | None) -> None:
    receipt = conv.receipt_from_event(receipt_event(kind, ["A", "B"]))
    assert (receipt.type if receipt else None) == expected


def test_receipt_payload_in_group() -> None:
    event = receipt_event(N.Receipt.READ, ["A"], chat=jid("120363012345678901", "g.us"),
                          sender=jid("5511999999999", device=2))
    assert conv.receipt_from_event(event).payload() == {
        "ids": ["A"], "chat": "120363012345678901@g.us", "type": "read", "timestamp": "2026-11-18T11:06:40Z",
        "sender": "5511999999999", "sender_lid": None}


NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
_EMPTY_NODE = N.Node(Tag="failure")

STATUS_CASES = [
    ("connected", N.Connected(status=True), Connected(name="Ana")),
    ("keepalive_restored", N.KeepAliveRestored(), Degraded(degraded=False)),
    ("disconnected", N.Disconnected(status=True),
     Disconnected(code=ErrorCode.CONNECTION_LOST, error="connection lost", engine_reconnects=True)),
    ("keepalive_timeout", N.KeepAliveTimeout(ErrorCount=3, LastSuccess=0), Degraded(degraded=True, missed=3)),
    ("logged_out", N.LoggedOut(OnConnect=False, Reason=N.LOGGED_OUT),
     LoggedOut(reason="logged out while connected: logged_out")),
    ("stream_replaced", N.StreamReplaced(), StreamReplaced()),
    ("temporary_ban", N.TemporaryBan(Code=N.TemporaryBan.BLOCKED_BY_USERS, Expire=3600),
     TemporaryBan(code="blocked_by_users", expires_at=NOW + timedelta(hours=1))),
    ("client_outdated", N.ClientOutdated(), ClientOutdated()),
    ("connect_failure_generic", N.ConnectFailure(Reason=N.SERVICE_UNAVAILABLE, Message="try later", Raw=_EMPTY_NODE),
     Disconnected(code=ErrorCode.CONNECT_FAILURE, error="connect failure service_unavailable: try later")),
    ("connect_failure_rejected", N.ConnectFailure(Reason=N.MAIN_DEVICE_GONE, Message="", Raw=_EMPTY_NODE),
     LoggedOut(reason="connect failure main_device_gone")),
    ("connect_failure_unknown_logout", N.ConnectFailure(Reason=N.UNKNOWN_LOGOUT, Message="", Raw=_EMPTY_NODE),
     LoggedOut(reason="connect failure unknown_logout")),
    ("connect_failure_outdated", N.ConnectFailure(Reason=N.CLIENT_OUTDATED, Message="", Raw=_EMPTY_NODE),
     ClientOutdated()),
    ("pair_success", N.PairStatus(ID=jid("5511444444444", device=9), BusinessName="", Platform="android",
                                  Status=N.PairStatus.SUCCESS), Paired(phone="5511444444444", name=None)),
    ("pair_error", N.PairStatus(ID=jid(""), BusinessName="", Platform="", Status=N.PairStatus.ERROR, Error="bad"),
     Disconnected(code=ErrorCode.CONNECT_FAILURE, error="pairing failed: bad")),
    ("unrelated", N.OfflineSyncCompleted(Count=1), None),
]


@pytest.mark.parametrize(("name", "event", "expected"), STATUS_CASES, ids=[c[0] for c in STATUS_CASES])
def test_status_event_mapping(name: str, event, expected) -> None:
    assert conv.status_event(event, NOW, name="Ana") == expected


def test_outbound_builders() -> None:
    target = conv.parse_jid("5511999999999:3@s.whatsapp.net")
    assert (target.User, target.Device, target.Server) == ("5511999999999", 3, "s.whatsapp.net")
    assert conv.parse_jid("120363012345678901@g.us").Server == "g.us"
    assert conv.text_message("hi @5511") == E.Message(conversation="hi @5511")
    ctx = conv.reply_context("Q1", "5511777777777@s.whatsapp.net", E.Message(conversation="orig"))
    reply = conv.text_message("answer", ctx)
    assert reply.extendedTextMessage.contextInfo.stanzaID == "Q1"
    assert reply.extendedTextMessage.contextInfo.quotedMessage.conversation == "orig"
    image = E.Message(imageMessage=E.ImageMessage(caption="c"))
    conv.attach_context(image, ctx)
    assert image.imageMessage.contextInfo.participant == "5511777777777@s.whatsapp.net"


GO_PREFIX = ('failed to dial whatsapp web websocket: failed to WebSocket dial: failed to send handshake request: '
             'Get "https://web.whatsapp.com/ws/chat": ')


@pytest.mark.parametrize(("tail", "proxy", "expected"), [
    ("dial tcp: lookup web.whatsapp.com on 10.255.255.53:53: no such host", False,
     "cannot reach WhatsApp: DNS lookup of web.whatsapp.com failed (no such host); check DNS, or set `proxy`"),
    ("dial tcp: lookup web.whatsapp.com: i/o timeout", True,
     "cannot reach WhatsApp: DNS lookup of web.whatsapp.com failed (i/o timeout); check DNS and `proxy`"),
    ("dial tcp 157.240.0.53:443: connect: connection refused", False,
     "cannot reach WhatsApp (connection refused); check the network, or set `proxy`"),
    ("proxyconnect tcp: dial tcp 127.0.0.1:3128: connect: connection refused", True,
     "cannot reach WhatsApp through the proxy (connection refused); check `proxy`"),
    ("socks connect tcp 127.0.0.1:1080->web.whatsapp.com:443: dial tcp 127.0.0.1:1080: connect: connection refused",
     True, "cannot reach WhatsApp through the proxy (connection refused); check `proxy`"),
])
def test_dial_errors_are_one_short_line_saying_what_to_check(tail: str, proxy: bool, expected: str) -> None:
    assert conv.explain_dial_error(GO_PREFIX + tail, proxy) == expected


# -- issue 14: whatsmeow owns reconnection after a drop; a dead event pump says what it lost ----------
def test_a_drop_while_pairing_is_not_reconnected_by_whatsmeow() -> None:
    """whatsmeow's autoReconnect returns at once without a stored device (client.go)."""
    out = conv.status_event(N.Disconnected(status=True), NOW, logged_in=False)
    assert isinstance(out, Disconnected) and out.engine_reconnects is False


# Go's protobuf text for the marshal error that ends neonize's event pump (protobuf-go RequiredNotSet),
# and whatsmeow's log lines for the failure node (connectionevents.go handleConnectFailure).
BAN_ERROR = "proto: required field neonize.TemporaryBan.Code not set"
FAILURE_ERROR = "proto: required field neonize.ConnectFailure.Reason not set"
BAN_LOG = 'Temporary ban connect failure: <failure code="106" expire="7200" reason="402"/>'
FAILURE_LOG = 'Unknown connect failure: <failure location="frc" reason="409"/>'


def test_a_ban_neonize_cannot_encode_waits_for_its_logged_expiry() -> None:
    field = conv.dead_pump_field(BAN_ERROR)
    assert field == "neonize.TemporaryBan.Code"
    out = conv.dead_pump_event(field, conv.failure_node_attrs(BAN_LOG), NOW)
    assert out == TemporaryBan(code="106", expires_at=NOW + timedelta(hours=2))
    unknown = conv.dead_pump_event(field, {}, NOW)  # the log line was not seen: an hour, then try again
    assert unknown == TemporaryBan(code="unknown", expires_at=NOW + conv.UNKNOWN_BAN_WAIT)


def test_a_connect_failure_neonize_cannot_encode_is_a_refused_connection() -> None:
    field = conv.dead_pump_field(FAILURE_ERROR)
    assert field == "neonize.ConnectFailure.Reason"
    out = conv.dead_pump_event(field, conv.failure_node_attrs(FAILURE_LOG), NOW)
    assert isinstance(out, Disconnected) and out.code == ErrorCode.CONNECT_FAILURE and "409" in out.error
    assert not out.engine_reconnects  # whatsmeow expects that disconnect: the bridge's backoff retries
    assert conv.dead_pump_field("failed to dial whatsapp") is None
