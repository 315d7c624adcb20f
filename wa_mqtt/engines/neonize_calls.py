"""The outgoing WhatsApp calls of a neonize session (send, react, read, typing) and the memory of recent
incoming messages they need (replies quote them; reactions and reads name their sender).

Functions of a live neonize client; `neonize_engine.NeonizeSession` owns the client and calls these.
Protobuf building lives in `neonize_convert`; media bytes are read by `outgoing_media`, as the sim reads them.
Idempotent sends. neonize 0.5.2 cannot send under an id of our choosing: its Go `SendMessage` takes
no `SendRequestExtra`, so whatsmeow always picks the id (goneonize main.go:474-503). What whatsmeow
does record, in the store and before the message goes out (send.go:390-396), is the message's
`messageContextInfo.messageSecret`. So a send carries a secret derived from the id the bridge chose
(`message_secret`), and a retry first looks that secret up (`sent_with_secret`): found, the message
reached WhatsApp before under whatsmeow's id, and is not sent again. A send that fails drops its
record (`forget_secret`), so only a message whatsmeow may have sent keeps one.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import sqlite3
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ErrorCode
from ..media import MediaPolicy
from ..model import MediaSource, NumberCheck, OutgoingMessage, SendResult, to_jid
from . import neonize_convert as conv
from .base import EngineError
from .outgoing_media import load_media
from .voice_note import VOICE_NOTE_MIMETYPE, to_voice_note

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
    code = ErrorCode.NOT_CONNECTED if "not connected" in text.lower() else ErrorCode.ENGINE_ERROR
    return EngineError(text, code=code)


class RecentMessages:
    """The newest incoming messages of a session: id → (chat, sender JID, content without context), the
    JIDs as WhatsApp addressed the message (a LID where it came as LID): replies, reactions and read
    receipts answer it with the same addressing."""

    def __init__(self, limit: int = 500) -> None:
        self._items: OrderedDict[str, tuple[str, str, Proto]] = OrderedDict()
        self._published_chat: dict[str, str] = {}  # id → the chat as published (a LID chat's phone JID)
        self._limit = limit

    def remember(self, event: Proto, published_chat: str) -> None:
        """Keep a message as it came: its chat and sender as WhatsApp addressed them, and its content."""
        source = event.Info.MessageSource
        chat = conv.jid_str(source.Chat)
        sender_jid = conv.sender_party(source).jid
        content = type(event.Message)()
        if event.HasField("Message"):
            content.CopyFrom(conv.unwrap(event.Message))
            name = conv.content_field(content)
            sub = getattr(content, name) if name and name != "conversation" else None
            if sub is not None and "contextInfo" in sub.DESCRIPTOR.fields_by_name:
                sub.ClearField("contextInfo")
        self._items[event.Info.ID] = (chat, sender_jid, content)
        self._published_chat[event.Info.ID] = published_chat
        while len(self._items) > self._limit:
            old, _ = self._items.popitem(last=False)
            self._published_chat.pop(old, None)

    def get(self, message_id: str) -> tuple[str, str, Proto] | None:
        return self._items.get(message_id)

    def sender_of(self, message_id: str, chat: str, sender: str | None) -> str:
        """Whom a reaction or read receipt for `message_id` names: the sender as the message came (when
        it is known here), else the `sender` asked, else the chat."""
        known = self._items.get(message_id)
        if known:
            return known[1]
        return to_jid(sender) if sender else to_jid(chat)

    def chat_of(self, message_id: str, chat: str) -> str:
        """The chat of `message_id` as the message came (a private chat may have come as `…@lid`) when
        it is the chat asked (by phone or LID); else the chat asked."""
        known = self._items.get(message_id)
        asked = to_jid(chat)
        if known and asked in (known[0], self._published_chat.get(message_id)):
            return known[0]
        return asked


def device_key(store_path: Path, phone: str) -> bytes | None:
    """A private key of the account's linked device (its noise key), to key `message_secret`; None when
    the store holds no device."""
    path = Path(store_path)
    if not path.is_file():
        return None
    with sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT jid, noise_key FROM whatsmeow_device ORDER BY rowid").fetchall()
    mine = [key for jid, key in rows if conv.jid_user(jid) == phone] or [key for _jid, key in rows]
    return bytes(mine[0]) if mine else None


def message_secret(key: bytes, message_id: str) -> bytes:
    """The 32-byte `messageSecret` of the send the bridge calls `message_id`: the same on every retry,
    unguessable without the device's key (recipients get it; WhatsApp's servers never see it)."""
    return hmac.new(key, b"wa_mqtt message secret\0" + message_id.encode(), hashlib.sha256).digest()


def sent_with_secret(store_path: Path, secret: bytes) -> str | None:
    """whatsmeow's id of an outgoing message that carried `secret`, if it was handed to WhatsApp."""
    path = Path(store_path)
    with sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True) as db:
        row = db.execute("SELECT message_id FROM whatsmeow_message_secrets WHERE key = ? ORDER BY rowid DESC LIMIT 1",
                         (secret,)).fetchone()  # the newest: an earlier try may have failed after the secret was kept
    return str(row[0]) if row else None


def forget_secret(store_path: Path, secret: bytes) -> None:
    """A send failed after whatsmeow kept its secret (seen offline: the secret is stored, then the
    device list cannot be fetched): drop that record, so a retry does not take it for a message sent."""
    with sqlite3.connect(Path(store_path).absolute(), timeout=15) as db:
        db.execute("DELETE FROM whatsmeow_message_secrets WHERE key = ?", (secret,))


async def is_on_whatsapp(client: NewAClient, phones: list[str]) -> list[NumberCheck]:
    """Which of `phones` have a WhatsApp account, and their JIDs (whatsmeow wants them with a `+`)."""
    try:
        responses = await client.is_on_whatsapp(*(f"+{p}" for p in phones))
    except Exception as exc:
        raise engine_error(exc) from exc
    return conv.number_checks(responses, phones)


async def send(client: NewAClient, message: OutgoingMessage, recent: RecentMessages, policy: MediaPolicy,
               phone: str, secret: bytes | None = None, to: str | None = None) -> SendResult:
    """Send `message` to `to` (the resolved JID; default: the message's own)."""
    to = to or message.jid
    context = None
    if message.reply_to:
        known = recent.get(message.reply_to)
        private = conv.chat_type_of(to.partition("@")[2]) == "private"
        participant = known[1] if known else (to if private else None)
        context = conv.reply_context(message.reply_to, participant, known[2] if known else None)
    if message.mentions:
        context = conv.mention_context(message.mentions, context)
    try:
        if message.kind == "text":
            built = conv.text_message(message.text or "", context)
        elif message.poll is not None:  # votes are encrypted with the poll's secret: it must have one
            built = conv.poll_message(message.poll, secret or os.urandom(32), context)
        elif message.location is not None or message.contact is not None:
            built = conv.location_or_contact(message.location, message.contact)
            if context is not None:
                conv.attach_context(built, context)
        else:
            source: MediaSource = getattr(message, message.kind)
            built = await build_media(client, message.kind, source, source.caption or message.text, policy)
            if context is not None:
                conv.attach_context(built, context)
        if secret is not None:
            built.messageContextInfo.messageSecret = secret
        response = await client.send_message(conv.parse_jid(to), built)
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
        if source.ptt:  # a voice note: WhatsApp plays only OGG/Opus as one
            data = await to_voice_note(data)
        built = await client.build_audio_message(data, ptt=source.ptt)
    elif kind == "sticker":  # WebP as it is; another image is turned into one by neonize
        return await client.build_sticker_message(data)
    else:
        built = await client.build_document_message(
            data, caption=caption, title=source.filename, filename=source.filename, mimetype=source.mimetype)
    if kind == "audio" and source.ptt:
        built.audioMessage.mimetype = VOICE_NOTE_MIMETYPE
    elif source.mimetype:
        getattr(built, f"{kind}Message").mimetype = source.mimetype
    return built


async def edit(client: NewAClient, chat: str, message_id: str, text: str) -> str:
    """Edit a text message the account sent (whatsmeow: a MESSAGE_EDIT protocol message)."""
    try:
        response = await client.edit_message(conv.parse_jid(to_jid(chat)), message_id, conv.text_message(text))
    except Exception as exc:
        raise engine_error(exc) from exc
    return str(response.ID)


async def revoke(client: NewAClient, chat: str, message_id: str, account: str) -> str:
    """Delete a message the account sent, for everyone (a REVOKE protocol message from the account).
    Built with neonize's `build_revoke` from the account's own JID: `client.get_me()` aborts Go when the
    client is not connected."""
    from neonize.builder import build_revoke

    me = conv.parse_jid(to_jid(account))
    try:
        response = await client.send_message(conv.parse_jid(to_jid(chat)),
                                             build_revoke(conv.parse_jid(to_jid(chat)), me, message_id, me))
    except Exception as exc:
        raise engine_error(exc) from exc
    return str(response.ID)


async def react(client: NewAClient, recent: RecentMessages, chat: str, message_id: str, emoji: str,
                sender: str | None) -> str:
    chat_jid = recent.chat_of(message_id, chat)
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

    chat_jid = recent.chat_of(ids[0], chat) if ids else to_jid(chat)
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


async def decrypt_poll_vote(client: NewAClient, event: Proto) -> list[bytes]:
    """The SHA-256 hashes of the options a poll vote (a MessageEv with a pollUpdateMessage) selects,
    decrypted by whatsmeow with the poll's secret from the store. Raises EngineError.

    Calls Go's DecryptPollVote itself: neonize 0.5.2's `decrypt_poll_vote` cannot work, because that
    one Go function is missing from the list that turns a returned `Bytes*` into `bytes`
    (neonize/_binder.py), so its result reaches `FromString` as a pointer ("expected bytes, LP_Bytes")."""
    from neonize._binder import gocode
    from neonize.proto.Neonize_pb2 import ReturnFunctionWithError

    def call() -> bytes:
        data = event.SerializeToString()
        result = gocode.DecryptPollVote(client.uuid, data, len(data))
        if isinstance(result, (bytes, bytearray)):  # a neonize that converts it already
            return bytes(result)
        if not result:
            return b""
        try:
            return bytes(result.contents.get_bytes())
        finally:
            gocode.FreeBytesStruct(result)

    try:
        answer = ReturnFunctionWithError.FromString(await asyncio.to_thread(call))
    except Exception as exc:
        raise engine_error(exc) from exc
    if answer.Error:
        raise EngineError(answer.Error)
    return [bytes(option) for option in answer.PollVoteMessage.selectedOptions]
async def ping(client: NewAClient, timeout: float) -> None:
    """One server round trip on the open connection: whatsmeow's `GetBlocklist` sends an IQ
    (`<iq xmlns="blocklist" type="get">`) and waits for its answer; nothing is cached or changed."""
    try:
        await asyncio.wait_for(client.get_blocklist(), timeout)
    except TimeoutError:
        raise EngineError(f"WhatsApp did not answer a check within {timeout:g} s",
                          code=ErrorCode.KEEPALIVE_TIMEOUT) from None
    except Exception as exc:
        raise engine_error(exc) from exc


# -- issue 14: presence and pair codes --------------------------------------------------------------------
# whatsmeow's PairPhone: "the client display name must be formatted as `Browser (OS)`, and only common
# browsers/OSes are allowed (the server will validate it and return 400 if it's wrong)" (pair-code.go).
# neonize 0.5.2 builds it from enum names, "FIREFOX (Linux)" (aioze/client.py PairPhone): the browser
# upper-cased. Its binding takes the PairPhoneParams protobuf, so the engine builds that itself.
PAIR_CLIENT_NAME = "Chrome (Linux)"
PAIR_CLIENT_TYPE = 1  # whatsmeow.PairClientChrome (goneonize pairClientTypeFromInt)


def pair_params(phone: str) -> bytes:
    """The PairPhoneParams neonize's Go side takes: WhatsApp's "Browser (OS)" display name, a push
    notification on the phone."""
    from neonize.proto import Neonize_pb2 as N

    return bytes(N.PairPhoneParams(phone=phone, clientDisplayName=PAIR_CLIENT_NAME, clientType=PAIR_CLIENT_TYPE,
                                   showPushNotification=True).SerializeToString())


async def pair_code(client: NewAClient, phone: str) -> str:
    """Ask WhatsApp for a pair code (`ABCD-EFGH`) for `phone`, as neonize's PairPhone does but with a
    display name WhatsApp accepts. Raises what neonize raises."""
    from neonize.exc import PairPhoneError
    from neonize.proto import Neonize_pb2 as N

    payload = pair_params(phone)
    binder = client._NewAClient__client  # neonize's Go binding: its PairPhone method hard-codes the name
    answer = N.PairPhoneReturnFunction.FromString(await binder.PairPhone(client.uuid, payload, len(payload)))
    if answer.Error:
        raise PairPhoneError(answer.Error)
    return str(answer.Code)


async def send_presence(client: NewAClient, presence: str) -> None:
    """Send the account's presence (`available` / `unavailable`)."""
    from neonize.utils.enum import Presence

    try:
        await client.send_presence(Presence[presence.upper()])
    except Exception as exc:
        raise engine_error(exc) from exc
