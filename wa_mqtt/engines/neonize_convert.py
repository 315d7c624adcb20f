"""Pure translation between neonize protobufs and the project's types, in both directions.

Inbound: neonize events (`neonize.proto.Neonize_pb2.Message`, `Receipt`, the status events) →
`IncomingMessage`, `Receipt` and the engine events of `engines/base.py`. Outbound: JIDs and the
small protobufs a send needs (reply context, text message).

No I/O and no neonize import at module import (importing neonize configures logging and loads the
Go library): inbound functions only read protobuf attributes; outbound ones import the protobuf
classes inside the function.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..errors import ErrorCode
from ..model import (
    ChatType,
    ContactSend,
    Edit,
    IncomingMessage,
    Location,
    LocationSend,
    Media,
    NumberCheck,
    Poll,
    PollVote,
    Quoted,
    Reaction,
    Receipt,
    Revoke,
)
from .addressing import Party, party
from .base import (
    ClientOutdated,
    Connected,
    Degraded,
    Disconnected,
    EngineEvent,
    LoggedOut,
    Paired,
    StreamReplaced,
    TemporaryBan,
)
from .poll_store import resolve_vote

if TYPE_CHECKING:
    from google.protobuf.message import Message as Proto

PN_SERVER = "s.whatsapp.net"
LID_SERVER = "lid"

# Fields of waE2E.Message that ride along with the content and are never the content themselves.
_META_FIELDS = frozenset(
    {"messageContextInfo", "senderKeyDistributionMessage", "fastRatchetKeySenderKeyDistributionMessage"}
)
# FutureProofMessage / DeviceSentMessage wrappers: the content is in `.message`.
_WRAPPERS = frozenset(
    {
        "ephemeralMessage", "viewOnceMessage", "viewOnceMessageV2", "viewOnceMessageV2Extension",
        "documentWithCaptionMessage", "editedMessage", "lottieStickerMessage", "groupMentionedMessage",
        "botInvokeMessage", "deviceSentMessage",
    }
)
_POLL_FIELDS = frozenset(
    {"pollCreationMessage", "pollCreationMessageV2", "pollCreationMessageV3", "pollCreationMessageV5",
     "pollCreationMessageV6"}
)
# whatsmeow ConnectFailureReason.IsLoggedOut(): the server rejects the stored session.
_REJECTED_SESSION = frozenset({"LOGGED_OUT", "MAIN_DEVICE_GONE", "UNKNOWN_LOGOUT"})
_RECEIPT_TYPES = {"DELIVERED": "delivered", "READ": "read", "PLAYED": "played"}
# protocolMessage types that are our own devices talking to each other, never a chat message
_DEVICE_PROTOCOL = frozenset({
    "HISTORY_SYNC_NOTIFICATION", "APP_STATE_SYNC_KEY_SHARE", "APP_STATE_SYNC_KEY_REQUEST",
    "MSG_FANOUT_BACKFILL_REQUEST", "INITIAL_SECURITY_NOTIFICATION_SETTING_SYNC",
    "APP_STATE_FATAL_EXCEPTION_NOTIFICATION", "PEER_DATA_OPERATION_REQUEST_MESSAGE",
    "PEER_DATA_OPERATION_REQUEST_RESPONSE_MESSAGE", "EPHEMERAL_SYNC_RESPONSE", "LID_MIGRATION_MAPPING_SYNC",
    "SHARED_DEVICE_CONTACT_HASH_KEY_SHARE", "SHARED_DEVICE_CONTACT_HASH_KEY_REQUEST", "COEX_STATE_SYNC",
})
LidPhones = Mapping[str, str]  # LID user (digits) → phone number, what the account's LID map knows


# ---------------------------------------------------------------- JIDs and time


def jid_str(jid: Proto) -> str:
    """A JID protobuf as `user@server`, without agent or device (`4915…:7@s.whatsapp.net` → `4915…@s.whatsapp.net`)."""
    user = jid.User.split(":", 1)[0].split(".", 1)[0] if jid.Server in (PN_SERVER, LID_SERVER) else jid.User
    return f"{user}@{jid.Server}" if user else jid.Server


def jid_user(jid_text: str) -> str:
    """The user part of a JID string, without agent or device (`5511…:3@s.whatsapp.net` → `5511…`)."""
    return jid_text.split("@", 1)[0].split(":", 1)[0].split(".", 1)[0]


def chat_type_of(server: str) -> ChatType:
    if server == "g.us":
        return "group"
    if server == "broadcast":
        return "broadcast"
    if server == "newsletter":
        return "newsletter"
    return "private"


def epoch_to_datetime(value: int) -> datetime:
    """Seconds or milliseconds since the epoch (neonize sends both) as an aware UTC datetime."""
    seconds = value / 1000 if value > 100_000_000_000 else value
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return datetime.fromtimestamp(0, tz=UTC)  # out of range: unknown, never a crash


def _has(jid: Proto, field: str) -> bool:
    return jid.HasField(field) and bool(getattr(jid, field).User)


def _alt(source: Proto, field: str) -> str | None:
    return jid_str(getattr(source, field)) if _has(source, field) else None


def sender_party(source: Proto, lids: LidPhones | None = None) -> Party:
    """The sender: as received (`Sender`, the chat for newsletters, which carry none), its phone (from
    `SenderAlt` or the LID map; None when neither knows it) and its LID."""
    sender = source.Sender if source.Sender.User else source.Chat
    return party(jid_str(sender), _alt(source, "SenderAlt"), lids)


def _chat_jid(source: Proto, lids: LidPhones | None = None) -> str:
    """The chat JID; a private chat addressed by LID is named by the other side's phone JID when known
    (from the alt address WhatsApp sent, or the LID map), else it stays the `…@lid` JID."""
    chat = jid_str(source.Chat)
    if source.Chat.Server == LID_SERVER and not source.IsGroup:
        other = party(chat, _alt(source, "RecipientAlt" if source.IsFromMe else "SenderAlt"), lids)
        if other.phone is not None:
            return f"{other.phone}@{PN_SERVER}"
    return chat


def lid_users(event: Proto) -> list[str]:
    """Every JID of a message or undecryptable event that may be a LID to resolve: chat, sender,
    mentions and the quoted sender (`…@lid` ones are looked up in the LID map)."""
    source = event.Info.MessageSource
    found = [jid_str(source.Chat), jid_str(source.Sender) if source.Sender.User else ""]
    if "Message" in event.DESCRIPTOR.fields_by_name and event.HasField("Message"):
        content = unwrap(event.Message)
        name = content_field(content)
        sub = getattr(content, name) if name and name != "conversation" else None
        if sub is not None and "contextInfo" in sub.DESCRIPTOR.fields_by_name and sub.HasField("contextInfo"):
            found.extend(sub.contextInfo.mentionedJID)
            found.append(sub.contextInfo.participant)
    return [j for j in found if j]


def _enum_name(message: Proto, field: str) -> str:
    """The name of an enum field's value (`Receipt.Type` 4 → `READ`), read from the descriptor."""
    enum = message.DESCRIPTOR.fields_by_name[field].enum_type
    number = getattr(message, field)
    value = enum.values_by_number.get(number)
    return value.name if value is not None else str(number)


# ---------------------------------------------------------------- message content


def content_field(message: Proto) -> str | None:
    """The name of the field of a waE2E.Message that holds its content (None when there is none)."""
    for descriptor, _ in message.ListFields():
        if descriptor.name not in _META_FIELDS:
            return str(descriptor.name)
    return None


def unwrap(message: Proto) -> Proto:
    """Strip ephemeral / view-once / device-sent / edited wrappers down to the content message."""
    for _ in range(8):
        name = content_field(message)
        if name not in _WRAPPERS:
            break
        inner = getattr(message, name)
        if not inner.HasField("message"):
            break
        message = inner.message
    return message


def message_text(message: Proto) -> str | None:
    """The human text of a message: its text, caption, poll question or contact name."""
    message = unwrap(message)
    name = content_field(message)
    if name is None:
        return None
    if name == "conversation":
        return str(message.conversation)
    sub = getattr(message, name)
    for field in ("text", "caption", "name", "displayName"):
        if field in sub.DESCRIPTOR.fields_by_name and getattr(sub, field):
            return str(getattr(sub, field))
    return None


def _media(sub: Proto) -> Media:
    fields = sub.DESCRIPTOR.fields_by_name
    return Media(
        mimetype=sub.mimetype or None,
        size=sub.fileLength if sub.HasField("fileLength") else None,
        filename=(sub.fileName or None) if "fileName" in fields else None,
        sha256=sub.fileSHA256.hex() if sub.fileSHA256 else None,
    )


def downloadable(content: Proto) -> bool:
    """True when an (unwrapped) message's media says where to fetch it and how to decrypt it."""
    name = content_field(content)
    if name is None or name == "conversation":
        return False
    sub = getattr(content, name)
    fields = sub.DESCRIPTOR.fields_by_name
    has_path = any(key in fields and bool(getattr(sub, key)) for key in ("directPath", "URL"))
    return has_path and "mediaKey" in fields and bool(sub.mediaKey)


def _content(name: str, sub: Any) -> dict[str, Any]:
    """The type-specific fields of an IncomingMessage for content field `name` holding `sub`."""
    if name == "conversation":
        return {"type": "text", "text": sub}
    if name == "extendedTextMessage":
        return {"type": "text", "text": sub.text}
    if name == "imageMessage":
        return {"type": "image", "caption": sub.caption or None, "media": _media(sub)}
    if name in ("videoMessage", "ptvMessage"):
        return {"type": "video", "caption": sub.caption or None, "media": _media(sub)}
    if name == "audioMessage":
        return {"type": "audio", "media": _media(sub), "ptt": bool(sub.PTT)}
    if name == "documentMessage":
        return {"type": "document", "caption": sub.caption or None, "media": _media(sub)}
    if name == "stickerMessage":
        return {"type": "sticker", "media": _media(sub)}
    if name in ("locationMessage", "liveLocationMessage"):
        live = name == "liveLocationMessage"
        return {
            "type": "location",
            "caption": (sub.caption or None) if live else None,
            "location": Location(latitude=sub.degreesLatitude, longitude=sub.degreesLongitude,
                                 name=None if live else (sub.name or None)),
            "live": live,
        }
    if name == "contactMessage":
        contacts = [{"name": sub.displayName, "vcard": sub.vcard}]
        return {"type": "contact", "text": sub.displayName or None, "vcard": sub.vcard, "contacts": contacts}
    if name == "contactsArrayMessage":
        contacts = [{"name": c.displayName, "vcard": c.vcard} for c in sub.contacts]
        first = contacts[0]["vcard"] if contacts else None
        return {"type": "contact", "text": sub.displayName or None, "vcard": first, "contacts": contacts}
    if name == "reactionMessage":
        return {"type": "reaction", "reaction": Reaction(emoji=sub.text, target_id=sub.key.ID)}
    if name == "protocolMessage":
        return _protocol(sub)
    if name == "pollUpdateMessage":  # issue 16: decrypted and resolved by the engine (poll_vote_of)
        return {"type": "poll_vote", "poll_vote": {"poll_id": sub.pollCreationMessageKey.ID, "selected": []}}
    if name in _POLL_FIELDS:
        return {
            "type": "poll",
            "text": sub.name,
            "poll_options": [option.optionName for option in sub.options],
            "poll_selectable": sub.selectableOptionsCount,
        }
    return {"type": "unknown", "raw_type": name}


def _protocol(sub: Any) -> dict[str, Any]:
    """A protocolMessage: an edit or a delete for everyone; anything else is `unknown` (own-device
    traffic never gets here: `is_device_traffic`)."""
    kind = _enum_name(sub, "type")
    if kind == "MESSAGE_EDIT":
        text = message_text(sub.editedMessage) if sub.HasField("editedMessage") else None
        return {"type": "edit", "text": text, "edit": Edit(target_id=sub.key.ID, text=text)}
    if kind == "REVOKE":
        return {"type": "revoke", "revoke": Revoke(target_id=sub.key.ID)}
    return {"type": "unknown", "raw_type": f"protocolMessage.{kind}"}


def is_device_traffic(event: Proto) -> bool:
    """True for what our own devices exchange (history-sync notices, app-state key shares, peer data
    requests, sender-key distribution alone): protocol traffic, never published as a message."""
    if not event.HasField("Message"):
        return False
    content = unwrap(event.Message)
    name = content_field(content)
    if name is None:
        return bool(content.ListFields())  # only key distribution fields, no content
    if name != "protocolMessage":
        return False
    kind = _enum_name(content.protocolMessage, "type")
    if kind in ("MESSAGE_EDIT", "REVOKE"):
        return False
    return kind in _DEVICE_PROTOCOL or bool(event.Info.MessageSource.IsFromMe)


def _context_fields(sub: Any, lids: LidPhones | None) -> dict[str, Any]:
    """`quoted` and `mentions` from a content message's contextInfo, when it has one. Mentions are
    phone numbers (a LID the map does not know is left out); `mentioned_jids` keeps them as received."""
    if isinstance(sub, str) or "contextInfo" not in sub.DESCRIPTOR.fields_by_name:
        return {}
    if not sub.HasField("contextInfo"):
        return {}
    ctx = sub.contextInfo
    mentioned = [party(j, None, lids) for j in ctx.mentionedJID]
    fields: dict[str, Any] = {"mentions": [p.phone for p in mentioned if p.phone is not None],
                              "mentioned_jids": [p.jid for p in mentioned]}
    if ctx.stanzaID:
        quoted_by = party(ctx.participant, None, lids) if ctx.participant else None
        fields["quoted"] = Quoted(
            id=ctx.stanzaID,
            sender=quoted_by.phone if quoted_by else None,
            sender_lid=quoted_by.lid if quoted_by else None,
            sender_jid=quoted_by.jid if quoted_by else None,
            text=message_text(ctx.quotedMessage) if ctx.HasField("quotedMessage") else None,
        )
    return fields


def _info_fields(info: Proto, account: str, lids: LidPhones | None) -> dict[str, Any]:
    """The fields every published message takes from its `MessageInfo`."""
    source = info.MessageSource
    sender = sender_party(source, lids)
    return {
        "id": info.ID,
        "account": account,
        "chat": _chat_jid(source, lids),
        "chat_type": chat_type_of(source.Chat.Server),
        "sender": sender.phone,
        "sender_lid": sender.lid,
        "sender_jid": sender.jid,
        "sender_name": info.Pushname or None,
        "from_me": bool(source.IsFromMe),
        "timestamp": epoch_to_datetime(info.Timestamp),
    }


def message_from_event(event: Proto, account: str, lids: LidPhones | None = None) -> IncomingMessage:
    """A neonize `Message` event (Neonize_pb2.Message) as the contract's incoming message.

    Unknown content becomes `type: "unknown"` with `raw_type` (the protobuf field name, or
    `"empty"` when the message has no content field); nothing is dropped here (own-device traffic is
    recognised by `is_device_traffic` first). `lids`: what the LID map knows, for LID senders.
    """
    fields = _info_fields(event.Info, account, lids)
    content = unwrap(event.Message) if event.HasField("Message") else None
    name = content_field(content) if content is not None else None
    if content is None or name is None:
        fields.update(type="unknown", raw_type="empty")
    else:
        sub = getattr(content, name)
        fields.update(_content(name, sub))
        fields.update(_context_fields(sub, lids))
    if event.IsEdit and fields.get("type") != "edit":
        fields["edited"] = True
    return IncomingMessage(**fields)


def fallback_message(event: Proto, account: str, raw_type: str, lids: LidPhones | None = None) -> IncomingMessage:
    """A minimal `unknown` message from the event's Info alone, for content that failed to translate."""
    fields = _info_fields(event.Info, account, lids)
    fields.pop("sender_name")
    return IncomingMessage(**fields, type="unknown", raw_type=raw_type)


def undecryptable_from_event(event: Proto, account: str, lids: LidPhones | None = None) -> IncomingMessage:
    """A neonize `UndecryptableMessage` (whatsmeow could not decrypt it and asked the sender to send it
    again) as `type: "undecryptable"`; `unavailable` when WhatsApp sent no content at all (a view-once
    or a message for the phone only); `hidden` when WhatsApp says clients hide such a failure (what
    failed was no visible message: a reaction, a poll vote). The real message may follow under the same id."""
    fields = _info_fields(event.Info, account, lids)
    hidden = _enum_name(event, "DecryptFailMode") == "DECRYPT_FAIL_HIDE"
    return IncomingMessage(**fields, type="undecryptable", unavailable=bool(event.IsUnavailable), hidden=hidden)


def receipt_from_event(event: Proto) -> Receipt | None:
    """A neonize `Receipt` event as the contract's receipt; None for kinds the contract does not carry
    (sender, retry, server-error, inactive, peer, history-sync, and the *_self receipts of our own devices)."""
    kind = _RECEIPT_TYPES.get(_enum_name(event, "Type"))
    if kind is None or not event.MessageIDs:
        return None
    source = event.MessageSource
    sender = sender_party(source)
    return Receipt(
        ids=list(event.MessageIDs),
        chat=_chat_jid(source),
        type=kind,
        timestamp=epoch_to_datetime(event.Timestamp),
        sender=sender.phone,
        sender_lid=sender.lid,
    )


# ---------------------------------------------------------------- status events


def status_event(event: Proto, now: datetime, name: str | None = None,
                 logged_in: bool = True) -> EngineEvent | None:
    """A neonize connection-status event as an engine event; None for events that change nothing.

    `now` dates a temporary ban's expiry; `name` is the push name to put on `Connected`; `logged_in`:
    the session has a linked device, so whatsmeow reconnects it by itself after a `Disconnected`
    (client.go onDisconnect / autoReconnect; it does not for a session still pairing).
    A keepalive gap is `Degraded`, not a drop: whatsmeow heals it, or reconnects after 3 minutes.
    """
    kind = event.DESCRIPTOR.name
    if kind == "Connected":
        return Connected(name=name)
    if kind == "KeepAliveRestored":
        return Degraded(degraded=False)
    if kind == "Disconnected":
        return Disconnected(code=ErrorCode.CONNECTION_LOST, error="connection lost", engine_reconnects=logged_in)
    if kind == "KeepAliveTimeout":
        return Degraded(degraded=True, missed=max(1, event.ErrorCount))
    if kind == "LoggedOut":
        when = "on connect" if event.OnConnect else "while connected"
        return LoggedOut(reason=f"logged out {when}: {_enum_name(event, 'Reason').lower()}")
    if kind == "StreamReplaced":
        return StreamReplaced()
    if kind == "TemporaryBan":
        return TemporaryBan(code=_enum_name(event, "Code").lower(),
                            expires_at=now + timedelta(seconds=max(0, event.Expire)))
    if kind == "ClientOutdated":
        return ClientOutdated()
    if kind == "ConnectFailure":
        reason = _enum_name(event, "Reason")
        text = f"connect failure {reason.lower()}" + (f": {event.Message}" if event.Message else "")
        if reason in _REJECTED_SESSION:
            return LoggedOut(reason=text)
        if reason == "CLIENT_OUTDATED":
            return ClientOutdated()
        return Disconnected(code=ErrorCode.CONNECT_FAILURE, error=text)
    if kind == "PairStatus":
        return pair_status_event(event)
    return None


def pair_status_event(event: Proto) -> Paired | Disconnected:
    """PairStatus: success → `Paired` with the phone that actually scanned; error → `Disconnected`."""
    if _enum_name(event, "Status") == "SUCCESS":
        return Paired(phone=jid_user(event.ID.User), name=event.BusinessName or None)
    return Disconnected(code=ErrorCode.CONNECT_FAILURE, error=f"pairing failed: {event.Error or 'unknown error'}")


_DNS_LOOKUP = re.compile(r"lookup (?P<host>[^\s:]+)(?: on \S+)?: (?P<reason>[^:]+)$")


def explain_dial_error(text: str, proxy: bool) -> str:
    """Go's dial error (300 characters of nested wrappers) as one short line saying what to check."""
    reason = text.rsplit(": ", 1)[-1].strip() or text
    if "proxyconnect" in text or "socks connect" in text:
        return f"cannot reach WhatsApp through the proxy ({reason}); check `proxy`"
    hint = "check the network and `proxy`" if proxy else "check the network, or set `proxy`"
    if lookup := _DNS_LOOKUP.search(text):
        hint = "check DNS and `proxy`" if proxy else "check DNS, or set `proxy`"
        return f"cannot reach WhatsApp: DNS lookup of {lookup['host']} failed ({lookup['reason']}); {hint}"
    return f"cannot reach WhatsApp ({reason}); {hint}"


def number_checks(responses: Any, asked: list[str]) -> list[NumberCheck]:
    """`is_on_whatsapp`'s answers (IsOnWhatsAppResponse: `Query` as sent, `+<phone>` maybe with a
    server, `JID`, `IsIn`) for the phones `asked`, in that order; matched by the query's digits, or by
    position when WhatsApp changed the query; a number with no answer has no account."""
    answers = list(responses)
    by_digits = {re.sub(r"\D", "", r.Query.partition("@")[0]): r for r in answers}
    out = []
    for index, phone in enumerate(asked):
        found = by_digits.get(phone)
        if found is None and len(answers) == len(asked):
            found = answers[index]
        on = found is not None and bool(found.IsIn) and bool(found.JID.User)
        out.append(NumberCheck(number=phone, on_whatsapp=on, jid=jid_str(found.JID) if on and found else None))
    return out


# ---------------------------------------------------------------- outbound


def parse_jid(text: str) -> Proto:
    """A phone or JID string as a neonize JID protobuf (`5511…` → `5511…@s.whatsapp.net`)."""
    from neonize.proto.Neonize_pb2 import JID

    user, _, server = text.partition("@")
    server = server or PN_SERVER
    device = 0
    if ":" in user and server in (PN_SERVER, LID_SERVER):
        user, _, dev = user.partition(":")
        device = int(dev) if dev.isdigit() else 0
    return JID(User=user, Server=server, Device=device, RawAgent=0, Integrator=0, IsEmpty=False)


def reply_context(message_id: str, participant: str | None, quoted: Proto | None = None) -> Proto:
    """The ContextInfo that makes a message a reply to `message_id` (sent by `participant`, a JID)."""
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import ContextInfo

    ctx = ContextInfo(stanzaID=message_id)
    if participant:
        ctx.participant = participant
    if quoted is not None:
        ctx.quotedMessage.CopyFrom(quoted)
    return ctx


def mention_context(phones: list[str], context: Proto | None = None) -> Proto:
    """A ContextInfo mentioning `phones` (`@<phone>` in the text then shows as a mention); merged into
    `context` (a reply's) when given."""
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import ContextInfo

    ctx = ContextInfo()
    if context is not None:
        ctx.CopyFrom(context)
    ctx.mentionedJID.extend(f"{phone}@{PN_SERVER}" for phone in phones)
    return ctx


def location_or_contact(location: LocationSend | None, contact: ContactSend | None) -> Proto:
    """A location pin or a contact card as a waE2E.Message (exactly one of them is given)."""
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import ContactMessage, LocationMessage, Message

    if location is not None:
        pin = LocationMessage(degreesLatitude=location.latitude, degreesLongitude=location.longitude)
        if location.name:
            pin.name = location.name
        if location.address:
            pin.address = location.address
        return Message(locationMessage=pin)
    assert contact is not None
    return Message(contactMessage=ContactMessage(displayName=contact.display_name, vcard=contact.card()))


def text_message(text: str, context: Proto | None = None) -> Proto:
    """A text message sent verbatim (no mention parsing); with a reply context it is an extended text."""
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import ExtendedTextMessage, Message

    if context is None:
        return Message(conversation=text)
    return Message(extendedTextMessage=ExtendedTextMessage(text=text, contextInfo=context))


def attach_context(message: Proto, context: Proto) -> None:
    """Merge a reply context into the content of a built media message (in place)."""
    name = content_field(message)
    if name is None:
        return
    sub = getattr(message, name)
    if "contextInfo" in sub.DESCRIPTOR.fields_by_name:
        sub.contextInfo.MergeFrom(context)


# ---------------------------------------------------------------- polls (issue 16)


def poll_message(poll: Poll, secret: bytes, context: Proto | None = None) -> Proto:
    """A poll to send, as whatsmeow's BuildPollCreation makes it (a PollCreationMessage whatever the
    count); `secret` (32 bytes) is the messageSecret the votes are encrypted with."""
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message, PollCreationMessage

    creation = PollCreationMessage(name=poll.question, selectableOptionsCount=poll.selectable,
                                   options=[PollCreationMessage.Option(optionName=o) for o in poll.options])
    if context is not None:
        creation.contextInfo.CopyFrom(context)
    message = Message(pollCreationMessage=creation)
    message.messageContextInfo.messageSecret = secret
    return message


def poll_of(message: IncomingMessage) -> tuple[str, list[str]] | None:
    """(id, options) of an incoming poll, to remember for its votes."""
    options = getattr(message, "poll_options", None)
    if message.type != "poll" or not isinstance(options, list):
        return None
    return message.id, [str(o) for o in options]


def poll_vote_of(message: IncomingMessage, options: list[str] | None, hashes: list[bytes] | None,
                 error: str | None = None) -> IncomingMessage:
    """`message` (a `poll_vote`) with its selection as option texts; `hashes` None: not decrypted (`error`)."""
    vote = (message.model_extra or {}).get("poll_vote")
    poll_id = str(vote.get("poll_id", "")) if isinstance(vote, dict) else ""
    if hashes is None:
        resolved = PollVote(poll_id=poll_id, error=error or "the vote could not be decrypted")
    else:
        selected, unresolved = resolve_vote(options, hashes)
        resolved = PollVote(poll_id=poll_id, selected=selected, unresolved=unresolved or None)
    return message.model_copy(update={"poll_vote": resolved.model_dump(exclude_none=True)})
# ---------------------------------------------------------------- issue 14: a dead event pump

# neonize leaves a proto2 required field unset for a ConnectFailure reason or a TemporaryBan code it has
# no enum value for (goneonize utils/encoder.go EncodeConnectFailureReason / EncodeTemporaryBan), and
# the marshal error ends Go's event pump (main.go CallbackFunction): Neonize() returns that error.
_REQUIRED_UNSET = re.compile(r"required field (?P<field>[\w.]+) not set")
# whatsmeow logs the failure node before dispatching the event (connectionevents.go handleConnectFailure)
_NODE_ATTR = re.compile(r'(?P<key>reason|code|expire)="?(?P<value>\d+)"?')
UNKNOWN_BAN_WAIT = timedelta(hours=1)  # a ban whose end is unknown: try again after this


def dead_pump_field(text: str) -> str | None:
    """The unset field named by neonize's marshal error (`neonize.TemporaryBan.Code`), or None."""
    found = _REQUIRED_UNSET.search(text)
    return found["field"] if found else None


def failure_node_attrs(log_line: str) -> dict[str, int]:
    """`reason`, `code` and `expire` of the failure node in whatsmeow's log line, as far as it has them."""
    return {m["key"]: int(m["value"]) for m in _NODE_ATTR.finditer(log_line)}


def dead_pump_event(field: str, node: dict[str, int], now: datetime) -> TemporaryBan | Disconnected:
    """What the event neonize could not deliver was: a ban (until its logged expiry, else for an hour)
    or a refused connection (with whatsmeow's reason number when logged)."""
    if "TemporaryBan" in field or node.get("reason") == 402:
        expire = node.get("expire")
        until = now + (timedelta(seconds=expire) if expire is not None else UNKNOWN_BAN_WAIT)
        return TemporaryBan(code=str(node.get("code", "unknown")), expires_at=until)
    reason = node.get("reason")
    return Disconnected(code=ErrorCode.CONNECT_FAILURE,
                        error=f"WhatsApp refused the connection (reason {reason if reason is not None else 'unknown'}, "
                              "not known to neonize)")
