"""The sim's incoming messages: `wa/sim/<phone>/incoming` turned into `IncomingMessage`s as whatsmeow
would report them, and delivered (or kept until the account is back online).

Covers LID-addressed senders (learned into `sim_store.SimLids`), mentions and quotes by LID, edits and
revokes, undecryptable messages (and their late decryption), poll votes, media (sim_media) and bursts
(`repeat`/`interval`). `SimIncomingMixin` is mixed into `sim.SimSession`, which owns the state it uses.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from ..errors import ErrorCode
from ..model import MESSAGE_TYPES, IncomingMessage, PollVote, to_jid
from .addressing import LID_SERVER, Party, bare, is_lid, party, user_of
from .base import EmitFn, EngineError, MessageReceived
from .incoming_media import FetchFn, MediaSaver
from .sim_media import SimMedia, media_type
from .sim_store import SimLids

ADDRESSED_KEPT = 500  # incoming messages whose addressing replies, reactions and reads reuse


class SimIncoming(BaseModel):
    """Payload of `wa/sim/<phone>/incoming`."""

    model_config = ConfigDict(extra="allow")

    chat: str | None = None
    sender: str | None = None  # a phone (default 15550000001 when there is no sender_lid either)
    sender_lid: str | None = None  # `<digits>@lid`: the message comes addressed by LID (see SimLids)
    sender_name: str | None = None
    text: str | None = None
    type: str = "text"
    id: str | None = None
    caption: str | None = None
    media: dict[str, Any] | None = None
    from_me: bool = False
    repeat: int = Field(1, ge=1, le=1_000_000)
    stamp: bool = False  # add `sim_emitted_at` (CLOCK_MONOTONIC seconds at delivery) to each message: benchmarks
    interval: float = Field(0.0, ge=0, le=3600)
    target_id: str | None = None  # type edit / revoke: the message edited or deleted
    decrypt_after: float | None = Field(None, ge=0, le=3600)  # type undecryptable: the real message N s later


def _poll_vote(extras: dict[str, Any]) -> dict[str, JsonValue]:
    """`type: "poll_vote"` on `wa/sim/<phone>/incoming`: `poll_id` and `selected` (option texts) become
    the message's `poll_vote`, as the real engine publishes a decrypted vote."""
    try:
        vote = PollVote(poll_id=extras.get("poll_id"), selected=extras.get("selected", []))
    except ValidationError as exc:
        raise EngineError("bad incoming payload: a poll_vote needs poll_id (text) and selected (option texts): "
                          f"{exc.errors()[0]['msg']}", code=ErrorCode.INVALID_REQUEST) from None
    return vote.model_dump(exclude_none=True)



class SimIncomingMixin:
    """Builds and delivers incoming messages; the state below is `SimSession`'s."""

    phone: str
    media_saver: MediaSaver | None
    _emit: EmitFn
    _clock: Callable[[], datetime]
    _connected: bool
    _tasks: set[asyncio.Task[None]]
    _lids: SimLids
    _offline_inbox: list[tuple[IncomingMessage, FetchFn | None]]
    _addressed: dict[str, tuple[str, str, str]]  # id → (chat as published, chat, sender as received)

    if TYPE_CHECKING:
        def _is_silent(self) -> bool: ...
        def _chat_name(self, chat_jid: str, sender: str, sender_name: str | None) -> str | None: ...

    async def _incoming(self, payload: bytes) -> None:
        try:
            spec = SimIncoming.model_validate_json(payload or b"{}")
        except ValidationError as exc:
            raise EngineError(f"bad incoming payload: {exc.errors()[0]['msg']}", code=ErrorCode.INVALID_REQUEST) from None
        if spec.type == "undecryptable":
            self._undecryptable(spec)
            return
        if spec.repeat == 1 and spec.interval == 0:
            self._deliver(self._build_message(spec, None), self._media_fetch(spec))
            return
        self._build_message(spec, 0)  # validate before the burst starts: errors answer the request
        task = asyncio.create_task(self._burst(spec), name=f"sim-burst-{self.phone}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _burst(self, spec: SimIncoming) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(spec.repeat):
            due = start + i * spec.interval
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            elif i % 200 == 199:
                await asyncio.sleep(0)  # let the bridge breathe during a tight burst
            message = self._build_message(spec, i)
            if spec.stamp:
                message = message.model_copy(update={"sim_emitted_at": time.monotonic()})
            self._deliver(message, self._media_fetch(spec))


    def _sender(self, spec: SimIncoming) -> Party:
        """Who sent an incoming message, as whatsmeow reports it: with `sender_lid` the message came
        addressed by LID (`sender_jid` is the LID); given with `sender` too, the LID map learns the pair."""
        phone = user_of(spec.sender).lstrip("+") if spec.sender and not is_lid(spec.sender) else None
        lid_text = spec.sender_lid or (spec.sender if spec.sender and is_lid(spec.sender) else None)
        if lid_text is None:
            phone = phone or "15550000001"
            known_lid = self._lids.lid_of(phone)
            return party(to_jid(phone), known_lid)
        lid = bare(lid_text if "@" in lid_text else f"{lid_text}@{LID_SERVER}")
        if not is_lid(lid):
            raise EngineError("sender_lid must be a `<digits>@lid` JID", code=ErrorCode.INVALID_REQUEST)
        if phone is not None:
            self._lids.learn(user_of(lid), phone)
        return party(lid, to_jid(phone) if phone else None, self._lids.phones())

    def _addressed_extras(self, extras: dict[str, Any]) -> dict[str, Any]:
        """Mentions and a quoted sender given as `…@lid` resolved through the LID map, as the real engine does."""
        fields: dict[str, Any] = {}
        lids = self._lids.phones()
        mentions = extras.get("mentions")
        if isinstance(mentions, list) and all(isinstance(m, str) for m in mentions):
            mentioned = [party(m, None, lids) for m in mentions]
            fields["mentions"] = [m.phone for m in mentioned if m.phone is not None]
            fields["mentioned_jids"] = [m.jid for m in mentioned]
        quoted = extras.get("quoted")
        if isinstance(quoted, dict) and isinstance(quoted.get("sender"), str):
            by = party(quoted["sender"], None, lids)
            fields["quoted"] = {**quoted, "sender": by.phone, "sender_lid": by.lid, "sender_jid": by.jid}
        return fields

    @staticmethod
    def _edit_or_revoke(spec: SimIncoming) -> dict[str, Any]:
        if spec.type not in ("edit", "revoke"):
            return {}
        if not spec.target_id:
            raise EngineError(f"type {spec.type} needs target_id", code=ErrorCode.INVALID_REQUEST)
        if spec.type == "edit":
            return {"edit": {"target_id": spec.target_id, "text": spec.text}}
        return {"revoke": {"target_id": spec.target_id}, "text": None}

    def _undecryptable(self, spec: SimIncoming) -> None:
        """An undecryptable message now; with `decrypt_after`, the real (text) message, same id, later."""
        failed = self._build_message(spec.model_copy(update={"text": None}), None)
        failed = failed.model_copy(update={"unavailable": False, "hidden": False})
        self._deliver(failed)
        if spec.decrypt_after is None:
            return
        real = self._build_message(spec.model_copy(update={"type": "text", "id": failed.id}), None)

        async def later() -> None:
            await asyncio.sleep(spec.decrypt_after or 0)
            self._deliver(real)
        task = asyncio.create_task(later(), name=f"sim-decrypt-{self.phone}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _answering(self, message_id: str, chat: str, sender: str | None) -> tuple[str, str | None]:
        """(chat, participant) of a reaction or read receipt for `message_id`: as the message came when
        it is known and the chat asked is its chat; else as asked."""
        known = self._addressed.get(message_id)
        asked = to_jid(chat)
        if known is not None and asked in (known[0], known[1]):
            return known[1], known[2]
        return asked, to_jid(sender) if sender else None


    def _deliver(self, message: IncomingMessage, fetch: FetchFn | None = None) -> None:
        if self._connected and not self._is_silent():
            self._receive(message, fetch)
        else:
            self._offline_inbox.append((message, fetch))  # WhatsApp keeps it until the device is back

    def _receive(self, message: IncomingMessage, fetch: FetchFn | None) -> None:
        """Emit the message; one with media once its download finished or failed (as neonize does)."""
        saver = self.media_saver
        if fetch is None or saver is None or not saver.wants(message):
            self._emit(MessageReceived(message=message))
            return

        async def download() -> None:
            self._emit(MessageReceived(message=await saver.save(message, fetch)))
        task = asyncio.create_task(download(), name=f"sim-media-{self.phone}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    def _media_spec(spec: SimIncoming) -> SimMedia | None:
        if spec.media is None:
            return None
        try:
            return SimMedia.model_validate(spec.media)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            raise EngineError(f"bad incoming payload: media.{where}: {error['msg']}",
                              code=ErrorCode.INVALID_REQUEST) from None

    def _media_fetch(self, spec: SimIncoming) -> FetchFn | None:
        media = self._media_spec(spec)
        return media.fetcher() if media is not None else None

    def _build_message(self, spec: SimIncoming, index: int | None) -> IncomingMessage:
        now = self._clock()
        base_id = spec.id or f"SIMIN{int(now.timestamp() * 1e6):X}"
        sender = self._sender(spec)
        received_chat = to_jid(spec.chat) if spec.chat else sender.jid
        chat = received_chat
        if not spec.chat and is_lid(sender.jid) and sender.phone is not None:
            chat = to_jid(sender.phone)  # a private chat addressed by LID is named by the phone when known
        extras = spec.model_extra or {}
        data: dict[str, Any] = {
            **{k: v for k, v in extras.items() if k not in IncomingMessage.model_fields},
            "id": base_id if index is None else f"{base_id}-{index}",
            "account": self.phone,
            "chat": chat,
            "chat_type": "group" if chat.endswith("@g.us") else "private",
            "chat_name": self._chat_name(chat, sender.phone or sender.jid, spec.sender_name),
            "sender": sender.phone,
            "sender_lid": sender.lid,
            "sender_jid": sender.jid,
            "sender_name": spec.sender_name,
            "from_me": spec.from_me,
            "timestamp": now,
            "type": self._message_type(spec),
            "text": spec.text if index is None or spec.text is None else f"{spec.text} {index}",
            "caption": spec.caption,
            "media": media.declared() if (media := self._media_spec(spec)) is not None else None,
        }
        for key in ("quoted", "mentions", "reaction", "location"):
            if key in extras:
                data[key] = extras[key]
        data.update(self._addressed_extras(extras))
        data.update(self._edit_or_revoke(spec))
        if data["type"] == "poll_vote":
            data["poll_vote"] = _poll_vote(extras)
            data.pop("poll_id", None)
            data.pop("selected", None)
        try:
            message = IncomingMessage.model_validate(data)
        except ValidationError as exc:
            raise EngineError(f"bad incoming payload: {exc.errors()[0]['msg']}", code=ErrorCode.INVALID_REQUEST) from None
        self._addressed[message.id] = (chat, received_chat, sender.jid)
        while len(self._addressed) > ADDRESSED_KEPT:
            del self._addressed[next(iter(self._addressed))]
        return message

    @staticmethod
    def _message_type(spec: SimIncoming) -> str:
        if spec.type == "text" and spec.media is not None and "type" not in spec.model_fields_set:
            return media_type(spec.media.get("mimetype"))  # media without a type: the mimetype's
        return spec.type if spec.type in MESSAGE_TYPES else "unknown"

