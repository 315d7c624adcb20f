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
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..errors import ErrorCode
from ..model import (
    ChatType,
    IncomingMessage,
    Location,
    Media,
    Quoted,
    Reaction,
    Receipt,
)
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


def _sender_jid(source: Proto) -> str:
    """The sender as a phone-number JID when neonize knows one (LID senders carry it in SenderAlt)."""
    sender = source.Sender
    if sender.Server == LID_SERVER and _has(source, "SenderAlt") and source.SenderAlt.Server == PN_SERVER:
        sender = source.SenderAlt
    if not sender.User:
        sender = source.Chat  # newsletters carry no sender
    return jid_str(sender)


def _chat_jid(source: Proto) -> str:
    """The chat JID; a private chat addressed by LID is named by the other side's phone JID when known."""
    chat = source.Chat
    if chat.Server == LID_SERVER and not source.IsGroup:
        alt = source.RecipientAlt if source.IsFromMe else source.SenderAlt
        alt_field = "RecipientAlt" if source.IsFromMe else "SenderAlt"
        if _has(source, alt_field) and alt.Server == PN_SERVER:
            chat = alt
    return jid_str(chat)


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
    if name in _POLL_FIELDS:
        return {
            "type": "poll",
            "text": sub.name,
            "poll_options": [option.optionName for option in sub.options],
            "poll_selectable": sub.selectableOptionsCount,
        }
    return {"type": "unknown", "raw_type": name}


def _context_fields(sub: Any) -> dict[str, Any]:
    """`quoted` and `mentions` from a content message's contextInfo, when it has one."""
    if isinstance(sub, str) or "contextInfo" not in sub.DESCRIPTOR.fields_by_name:
        return {}
    if not sub.HasField("contextInfo"):
        return {}
    ctx = sub.contextInfo
    fields: dict[str, Any] = {"mentions": [jid_user(j) for j in ctx.mentionedJID]}
    if ctx.stanzaID:
        fields["quoted"] = Quoted(
            id=ctx.stanzaID,
            sender=jid_user(ctx.participant) if ctx.participant else None,
            text=message_text(ctx.quotedMessage) if ctx.HasField("quotedMessage") else None,
        )
    return fields


def message_from_event(event: Proto, account: str) -> IncomingMessage:
    """A neonize `Message` event (Neonize_pb2.Message) as the contract's incoming message.

    Unknown content becomes `type: "unknown"` with `raw_type` (the protobuf field name, or
    `"empty"` when the message has no content field); nothing is dropped here.
    """
    info = event.Info
    source = info.MessageSource
    sender_jid = _sender_jid(source)
    fields: dict[str, Any] = {
        "id": info.ID,
        "account": account,
        "chat": _chat_jid(source),
        "chat_type": chat_type_of(source.Chat.Server),
        "sender": jid_user(sender_jid),
        "sender_jid": sender_jid,
        "sender_name": info.Pushname or None,
        "from_me": bool(source.IsFromMe),
        "timestamp": epoch_to_datetime(info.Timestamp),
    }
    content = unwrap(event.Message) if event.HasField("Message") else None
    name = content_field(content) if content is not None else None
    if content is None or name is None:
        fields.update(type="unknown", raw_type="empty")
    else:
        sub = getattr(content, name)
        fields.update(_content(name, sub))
        fields.update(_context_fields(sub))
    if event.IsEdit:
        fields["edited"] = True
    return IncomingMessage(**fields)


def fallback_message(event: Proto, account: str, raw_type: str) -> IncomingMessage:
    """A minimal `unknown` message from the event's Info alone, for content that failed to translate."""
    info = event.Info
    source = info.MessageSource
    sender_jid = jid_str(source.Sender) if source.Sender.User else jid_str(source.Chat)
    return IncomingMessage(
        id=info.ID, account=account, chat=jid_str(source.Chat), chat_type=chat_type_of(source.Chat.Server),
        sender=jid_user(sender_jid), sender_jid=sender_jid, from_me=bool(source.IsFromMe),
        timestamp=epoch_to_datetime(info.Timestamp), type="unknown", raw_type=raw_type,
    )


def receipt_from_event(event: Proto) -> Receipt | None:
    """A neonize `Receipt` event as the contract's receipt; None for kinds the contract does not carry
    (sender, retry, server-error, inactive, peer, history-sync, and the *_self receipts of our own devices)."""
    kind = _RECEIPT_TYPES.get(_enum_name(event, "Type"))
    if kind is None or not event.MessageIDs:
        return None
    source = event.MessageSource
    return Receipt(
        ids=list(event.MessageIDs),
        chat=_chat_jid(source),
        type=kind,
        timestamp=epoch_to_datetime(event.Timestamp),
        sender=jid_user(_sender_jid(source)),
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
