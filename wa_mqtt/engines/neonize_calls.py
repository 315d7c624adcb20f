"""The outgoing WhatsApp calls of a neonize session (send, react, read, typing) and the memory of recent
incoming messages they need (replies quote them; reactions and reads name their sender).

Functions of a live neonize client; `neonize_engine.NeonizeSession` owns the client and calls these.
Protobuf building lives in `neonize_convert`; media bytes are read by `outgoing_media`, as the sim reads them.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING

from ..media import MediaPolicy
from ..model import MediaSource, OutgoingMessage, SendResult, to_jid
from . import neonize_convert as conv
from .base import EngineError
from .outgoing_media import load_media

if TYPE_CHECKING:
    from google.protobuf.message import Message as Proto
    from neonize.aioze.client import NewAClient

log = logging.getLogger(__name__)

TYPING_STATES = {"composing": ("CHAT_PRESENCE_COMPOSING", "CHAT_PRESENCE_MEDIA_TEXT"),
                 "paused": ("CHAT_PRESENCE_PAUSED", "CHAT_PRESENCE_MEDIA_TEXT"),
                 "recording": ("CHAT_PRESENCE_COMPOSING", "CHAT_PRESENCE_MEDIA_AUDIO")}


def engine_error(exc: BaseException) -> EngineError:
    """A neonize / Go failure as an EngineError with the response code the contract names."""
    text = str(exc) or type(exc).__name__
    code = "not_connected" if "not connected" in text.lower() else "engine_error"
    return EngineError(text, code=code)


class RecentMessages:
    """The newest incoming messages of a session: id → (chat, sender JID, content without context)."""

    def __init__(self, limit: int = 500) -> None:
        self._items: OrderedDict[str, tuple[str, str, Proto]] = OrderedDict()
        self._limit = limit

    def remember(self, event: Proto, chat: str, sender_jid: str) -> None:
        content = type(event.Message)()
        if event.HasField("Message"):
            content.CopyFrom(conv.unwrap(event.Message))
            name = conv.content_field(content)
            sub = getattr(content, name) if name and name != "conversation" else None
            if sub is not None and "contextInfo" in sub.DESCRIPTOR.fields_by_name:
                sub.ClearField("contextInfo")
        self._items[event.Info.ID] = (chat, sender_jid, content)
        while len(self._items) > self._limit:
            self._items.popitem(last=False)

    def get(self, message_id: str) -> tuple[str, str, Proto] | None:
        return self._items.get(message_id)

    def sender_of(self, message_id: str, chat: str, sender: str | None) -> str:
        if sender:
            return to_jid(sender)
        known = self._items.get(message_id)
        return known[1] if known else to_jid(chat)


async def send(client: NewAClient, message: OutgoingMessage, recent: RecentMessages, policy: MediaPolicy,
               phone: str) -> SendResult:
    context = None
    if message.reply_to:
        known = recent.get(message.reply_to)
        private = conv.chat_type_of(message.jid.partition("@")[2]) == "private"
        participant = known[1] if known else (message.jid if private else None)
        context = conv.reply_context(message.reply_to, participant, known[2] if known else None)
    try:
        if message.kind == "text":
            built = conv.text_message(message.text or "", context)
        else:
            source: MediaSource = getattr(message, message.kind)
            built = await build_media(client, message.kind, source, source.caption or message.text, policy)
            if context is not None:
                conv.attach_context(built, context)
        response = await client.send_message(conv.parse_jid(message.jid), built)
    except EngineError:
        raise
    except Exception as exc:
        log.warning("%s: send failed: %s", phone, exc)
        raise engine_error(exc) from exc
    stamp = conv.epoch_to_datetime(response.Timestamp) if response.Timestamp else None
    return SendResult(id=response.ID, timestamp=stamp)


async def build_media(client: NewAClient, kind: str, source: MediaSource, caption: str | None,
                      policy: MediaPolicy) -> Proto:
    data = await load_media(kind, source, policy)
    if kind == "image":
        built = await client.build_image_message(data, caption=caption)
    elif kind == "video":
        built = await client.build_video_message(data, caption=caption)
    elif kind == "audio":
        built = await client.build_audio_message(data, ptt=False)
    else:
        built = await client.build_document_message(
            data, caption=caption, title=source.filename, filename=source.filename, mimetype=source.mimetype)
    if source.mimetype:
        getattr(built, f"{kind}Message").mimetype = source.mimetype
    return built


async def react(client: NewAClient, recent: RecentMessages, chat: str, message_id: str, emoji: str,
                sender: str | None) -> str:
    chat_jid = to_jid(chat)
    try:
        reaction = await client.build_reaction(conv.parse_jid(chat_jid),
                                               conv.parse_jid(recent.sender_of(message_id, chat_jid, sender)),
                                               message_id, emoji)
        response = await client.send_message(conv.parse_jid(chat_jid), reaction)
    except Exception as exc:
        raise engine_error(exc) from exc
    return str(response.ID)


async def mark_read(client: NewAClient, recent: RecentMessages, chat: str, ids: list[str],
                    sender: str | None) -> None:
    from neonize.utils.enum import ReceiptType

    chat_jid = to_jid(chat)
    sender_jid = recent.sender_of(ids[0], chat_jid, sender) if ids else chat_jid
    try:
        await client.mark_read(*ids, chat=conv.parse_jid(chat_jid), sender=conv.parse_jid(sender_jid),
                               receipt=ReceiptType.READ)
    except Exception as exc:
        raise engine_error(exc) from exc


async def typing(client: NewAClient, chat: str, state: str) -> None:
    from neonize.utils.enum import ChatPresence, ChatPresenceMedia

    presence, media_kind = TYPING_STATES[state]
    try:
        await client.send_chat_presence(conv.parse_jid(to_jid(chat)), ChatPresence[presence],
                                        ChatPresenceMedia[media_kind])
    except Exception as exc:
        raise engine_error(exc) from exc
