"""The sim engine: a deterministic simulated WhatsApp (contract section 8).

It keeps linked accounts in `sessions/<phone>/store.db` like the real engine (a `sim_device` table),
so restore, backups and removal run the same code paths. It is driven by the `wa/sim/<phone>/...`
control topics, which the bridge forwards to `SimSession.sim_control`. Behaviour follows whatsmeow:
a dropped connection reconnects by itself shortly after; a failed dial is reported, not retried;
messages that arrive while the account is offline are delivered when it connects again.

Message ids it hands out (`SIM<last 4 digits><8 hex>`) are numbered from a counter kept in the store,
reserved in blocks, so they never repeat, across engine restarts too. Outgoing media is read as the
real engine reads it (`outgoing_media.load_media`: the same policy, fetch and errors); `wa/sim/<phone>/sent`
shows its `size` and `sha256`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from ..errors import ErrorCode
from ..media import MediaPolicy
from ..model import (
    MESSAGE_TYPES,
    Contact,
    GroupInfo,
    GroupSummary,
    IncomingCall,
    IncomingMessage,
    NumberCheck,
    OutgoingMessage,
    PollVote,
    Receipt,
    SendResult,
    phone_list,
    to_jid,
)
from . import resolving
from .addressing import LID_SERVER, Party, bare, is_lid, party, user_of
from .base import (
    CallReceived,
    Connected,
    Crashed,
    Degraded,
    Disconnected,
    EmitFn,
    EngineError,
    GroupChanged,
    GroupsUpdated,
    LoggedOut,
    MessageReceived,
    PairCode,
    Paired,
    PairMethod,
    Qr,
    ReceiptReceived,
    SimSent,
    StreamReplaced,
    TemporaryBan,
)
from .incoming_media import FetchFn, MediaSaver
from .options import DownloadOptions, EngineOptions, Presence
from .outgoing_media import load_media
from .sim_groups import SimDirectory, SimGroup, SimGroupSpec, apply
from .sim_media import SimMedia, media_type
from .voice_note import VOICE_NOTE_MIMETYPE, to_voice_note

log = logging.getLogger(__name__)

RECONNECT_AFTER_DROP = 0.2  # seconds; whatsmeow's own reconnect after a dropped connection
SENT_IDS_KEPT = timedelta(days=2)  # how long a delivered message id is remembered (a repeat is dropped)
ADDRESSED_KEPT = 500  # incoming messages whose addressing replies, reactions and reads reuse
ID_BLOCK = 1024  # message numbers reserved per store write: one write per 1,024 sends; a crash skips the rest
Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _connect(store_path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(store_path)
    db.execute(
        "CREATE TABLE IF NOT EXISTS sim_device (phone TEXT PRIMARY KEY, name TEXT, linked_at TEXT)"
    )
    db.execute("CREATE TABLE IF NOT EXISTS sim_ids (next INTEGER NOT NULL)")
    return db


def _sent_db(store_path: Path) -> sqlite3.Connection:
    """The ids the simulated WhatsApp already took from this device (it drops a repeated one, as
    WhatsApp does). Written without fsync: it must outlive a killed process, not a power cut."""
    db = sqlite3.connect(store_path)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("CREATE TABLE IF NOT EXISTS sim_sent (id TEXT PRIMARY KEY, sent_at TEXT NOT NULL)")
    return db


def read_device(store_path: Path) -> tuple[str, str | None] | None:
    """(phone, name) of the linked device in a sim store, or None."""
    if not store_path.exists():
        return None
    try:
        with sqlite3.connect(f"file:{store_path}?mode=ro", uri=True) as db:
            row = db.execute("SELECT phone, name FROM sim_device LIMIT 1").fetchone()
    except sqlite3.DatabaseError:
        return None
    return (row[0], row[1]) if row else None


def write_device(store_path: Path, phone: str, name: str | None, now: datetime) -> None:
    """Link a device into a sim store (what a QR scan does; also used by tests and benchmarks)."""
    store_path.parent.mkdir(parents=True, exist_ok=True)
    db = _connect(store_path)
    try:
        with db:
            db.execute("DELETE FROM sim_device")
            db.execute("INSERT INTO sim_device VALUES (?, ?, ?)", (phone, name, now.isoformat()))
    finally:
        db.close()


def reserve_ids(store_path: Path, count: int) -> int:
    """Reserve `count` message numbers in a sim store and return the first; none is handed out twice."""
    db = _connect(store_path)
    try:
        with db:
            row = db.execute("SELECT next FROM sim_ids").fetchone()
            first = row[0] if row else 1
            db.execute("DELETE FROM sim_ids")
            db.execute("INSERT INTO sim_ids VALUES (?)", (first + count,))
    finally:
        db.close()
    return first


class SimLids:
    """The sim's LID map (in the store, like whatsmeow's `whatsmeow_lid_map`): a message that names its
    sender by phone and LID together teaches it the pair; later messages from that LID alone resolve to
    the phone. A LID never seen with a phone stays unknown."""

    def __init__(self, store_path: Path) -> None:
        self._store_path = store_path
        self._phones: dict[str, str] | None = None  # LID user → phone, loaded on first use

    def _load(self) -> dict[str, str]:
        if self._phones is None:
            db = self._db()
            try:
                self._phones = dict(db.execute("SELECT lid, phone FROM sim_lid_map").fetchall())
            finally:
                db.close()
        return self._phones

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._store_path)
        db.execute("CREATE TABLE IF NOT EXISTS sim_lid_map (lid TEXT PRIMARY KEY, phone TEXT NOT NULL)")
        return db

    def phones(self) -> dict[str, str]:
        return dict(self._load())

    def lid_of(self, phone: str) -> str | None:
        return next((f"{lid}@{LID_SERVER}" for lid, known in self._load().items() if known == phone), None)

    def learn(self, lid_user: str, phone: str) -> None:
        if self._load().get(lid_user) == phone:
            return
        db = self._db()
        try:
            with db:
                db.execute("INSERT OR REPLACE INTO sim_lid_map VALUES (?, ?)", (lid_user, phone))
        finally:
            db.close()
        self._load()[lid_user] = phone


class SimContacts(BaseModel):
    """Payload of `wa/sim/<phone>/contacts`: what `is_on_whatsapp` answers from now on."""

    model_config = ConfigDict(extra="forbid")

    not_on_whatsapp: list[str] = Field(default_factory=list)
    jid_of: dict[str, str] = Field(default_factory=dict)  # typed number → the JID (or phone) WhatsApp knows


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


class SimEngine:
    """Opens sim sessions. `crash` is what `wa/sim/<phone>/crash` does (in a child: exit at once)."""

    name = "sim"

    def __init__(self, clock: Clock = _utcnow, crash: Callable[[], None] | None = None,
                 media_policy: MediaPolicy | None = None, downloads: DownloadOptions | None = None,
                 presence: Presence = "available") -> None:
        self._clock = clock
        self._crash = crash
        self._media_policy = media_policy or EngineOptions().media.policy()
        self._downloads = downloads or EngineOptions().downloads
        self._presence: Presence = presence

    def has_device(self, store_path: Path) -> bool:
        return read_device(store_path) is not None

    def open_session(self, phone: str, store_path: Path, emit: EmitFn) -> SimSession:
        session = SimSession(phone, store_path, emit, self._clock, self._crash, self._media_policy)
        session.media_saver = MediaSaver(self._downloads, phone)
        session.presence = self._presence
        return session

    async def aclose(self) -> None:
        return None


class SimSession:
    """One simulated account connection."""

    def __init__(
        self, phone: str, store_path: Path, emit: EmitFn, clock: Clock,
        crash: Callable[[], None] | None, media_policy: MediaPolicy,
    ) -> None:
        self.phone = phone
        self.store_path = store_path
        self._emit = emit
        self._clock = clock
        self._crash = crash
        self._media_policy = media_policy
        self._connected = False
        self._pairing = False
        self._offered: str | None = None  # the QR or pair code on offer
        self._pair_count = 0
        self._outage_until: datetime | None = None
        self._silent_until: datetime | None = None  # `wa/sim/<phone>/silence`: connected, but nothing arrives
        self._offline_inbox: list[tuple[IncomingMessage, FetchFn | None]] = []
        self.media_saver: MediaSaver | None = None  # incoming media downloads (set by the engine)
        self._directory = SimDirectory(store_path)  # groups and seen contacts
        self._names: dict[str, str] | None = None  # push names seen (read from the store once)
        self._group_cache: dict[str, SimGroup] | None = None
        self._stall = 0.0  # seconds the next send's answer is held (`wa/sim/<phone>/stall`)
        self._next_number = 0
        self._numbers_end = 0  # the reserved block is [_next_number, _numbers_end)
        self._tasks: set[asyncio.Task[None]] = set()
        self._reconnect: asyncio.TimerHandle | None = None
        self._lids = SimLids(store_path)
        self._contacts = SimContacts()
        self._numbers = resolving.NumberCache(clock)
        self._addressed: dict[str, tuple[str, str, str]] = {}  # id → (chat as published, chat, sender as received)
        # issue 14 (see the block "issue 14" below)
        self.presence: Presence = "available"
        self._keepalive_heal: asyncio.TimerHandle | None = None
        self._ban: tuple[str, datetime] | None = None  # (code, end) of a temporary ban
        self._recycle_reason: str | None = None

    # -- EngineSession -------------------------------------------------------------------------
    async def start(self, pair_method: PairMethod = "qr") -> None:
        self._cancel_reconnect()
        if self._banned():
            return
        if self._in_outage():
            self._emit(Disconnected(code=ErrorCode.DIAL_FAILED,  # worded like the real engine's dial errors
                                    error="sim: cannot reach WhatsApp (simulated outage); check the network, or set `proxy`"))
            return
        device = read_device(self.store_path)
        if device is None:
            self._pairing = True
            self._pair_count += 1
            if pair_method == "code":
                self._offered = f"SIM{self._pair_count % 10}-{self.phone[-4:]}"
                self._emit(PairCode(code=self._offered))
            else:
                self._offered = f"sim-qr:{self.phone}:{self._pair_count}"
                self._emit(Qr(code=self._offered))
            return
        self._go_online(device[1])

    async def stop(self) -> None:
        self._cancel_reconnect()
        self._heal_keepalive(emit=False)
        if self._pairing:  # as neonize: its connect thread outlives a stop during pairing (issue 14)
            self._recycle_reason = "stop during pairing (sim: neonize's connect thread would not end)"
        self._connected = False
        self._pairing = False
        self._silent_until = None  # the silence was this connection's: the next one is heard again

    async def ping(self, timeout: float) -> None:
        """The server round trip: answered at once, except on a silent connection or during a keepalive
        gap, where no answer comes (the check fails after `timeout` s, as an unanswered IQ does)."""
        self._require_connected()
        if self._is_silent() or self._keepalive_heal is not None:  # a keepalive gap: the server answers nothing
            await asyncio.sleep(timeout)
            raise EngineError(f"sim: WhatsApp did not answer a check within {timeout:g} s (silent connection)",
                              code=ErrorCode.KEEPALIVE_TIMEOUT)

    async def logout(self) -> None:
        await self.stop()
        self._unlink()

    async def send(self, message: OutgoingMessage, message_id: str | None = None, retry: bool = False) -> SendResult:
        self._require_connected()
        if message_id is not None and (first := self._delivered_at(message_id)) is not None:
            log.info("%s: message %s was delivered before; dropped as WhatsApp does", self.phone, message_id)
            return SendResult(id=message_id, timestamp=first, already_sent=True)
        to = await resolving.resolve(message.to, self._numbers, self._is_on_whatsapp)
        media = message.media
        loaded = await load_media(message.kind, media, self._media_policy) if media is not None else None
        if loaded is not None and media is not None and media.ptt:
            loaded = await to_voice_note(loaded)  # as the real engine does: a voice note is OGG/Opus
        msg_id = message_id or self._new_id()
        now = self._clock()
        self._record_delivery(msg_id, now)
        payload: dict[str, Any] = {"to": to, "id": msg_id, "type": message.kind, "text": message.text}
        if message.reply_to:
            payload["reply_to"] = message.reply_to
            if message.reply_to in self._addressed:
                payload["participant"] = self._addressed[message.reply_to][2]
        if media is not None and loaded is not None:
            payload["media"] = {k: v for k, v in media.model_dump().items()
                                if v is not None and k != "base64" and not (k == "ptt" and not v)}
            payload["media"].update(size=len(loaded), sha256=hashlib.sha256(loaded).hexdigest())
            if media.ptt:
                payload["media"]["mimetype"] = VOICE_NOTE_MIMETYPE
            payload["text"] = media.caption or message.text
        if message.poll is not None:  # issue 16: a poll shows its question and options
            payload["text"] = message.poll.question
            payload["poll"] = message.poll.model_dump()
        if message.mentions:
            payload["mentions"] = message.mentions
        if message.location is not None:
            payload["location"] = message.location.model_dump(exclude_none=True)
        if message.contact is not None:
            payload["contact"] = {"name": message.contact.display_name, "vcard": message.contact.card()}
        if message.id:
            payload["client_id"] = message.id
        self._emit(SimSent(payload=payload))
        self._emit(ReceiptReceived(receipt=Receipt(ids=[msg_id], chat=to, type="delivered", timestamp=now)))
        if self._stall:
            seconds, self._stall = self._stall, 0.0
            await asyncio.sleep(seconds)  # WhatsApp has it; the bridge hears of it only now
        return SendResult(id=msg_id, timestamp=now)

    def _delivered_at(self, message_id: str) -> datetime | None:
        db = _sent_db(self.store_path)
        try:
            row = db.execute("SELECT sent_at FROM sim_sent WHERE id = ?", (message_id,)).fetchone()
        finally:
            db.close()
        return datetime.fromisoformat(row[0]) if row else None

    def _record_delivery(self, message_id: str, now: datetime) -> None:
        db = _sent_db(self.store_path)
        try:
            with db:
                db.execute("INSERT OR REPLACE INTO sim_sent VALUES (?, ?)", (message_id, now.isoformat()))
                db.execute("DELETE FROM sim_sent WHERE sent_at < ?", ((now - SENT_IDS_KEPT).isoformat(),))
        finally:
            db.close()

    async def react(self, chat: str, message_id: str, emoji: str, sender: str | None = None) -> str:
        self._require_connected()
        msg_id = self._new_id()
        to, participant = self._answering(message_id, chat, sender)
        self._emit(SimSent(payload={"to": to, "id": msg_id, "type": "reaction", "emoji": emoji, "target_id": message_id,
                                    "participant": participant}))
        return msg_id

    async def mark_read(self, chat: str, ids: list[str], sender: str | None = None) -> None:
        self._require_connected()
        to, participant = self._answering(ids[0], chat, sender)
        self._emit(SimSent(payload={"to": to, "type": "read", "ids": ids, "sender": sender, "participant": participant}))

    async def check(self, numbers: list[str]) -> list[NumberCheck]:
        self._require_connected()
        return await resolving.check_numbers(numbers, self._numbers, self._is_on_whatsapp)

    async def typing(self, chat: str, state: str) -> None:
        self._require_connected()
        self._emit(SimSent(payload={"to": to_jid(chat), "type": "typing", "state": state, "presence": self.presence}))

    # -- groups, contacts, calls, edits (issue 15) ----------------------------------------------
    async def groups(self) -> list[GroupSummary]:
        self._require_connected()
        return [group.summary(self.phone) for group in self._groups().values()]

    async def group_info(self, jid: str) -> GroupInfo:
        self._require_connected()
        group = self._groups().get(jid)
        if group is None:
            raise EngineError(f"failed to get group info: {jid}: the account is not in this group (item-not-found)")
        return group.info(self._known_names())

    async def contacts(self) -> list[Contact]:
        self._require_connected()
        return self._directory.contacts(self.phone)

    async def edit(self, chat: str, message_id: str, text: str) -> str:
        self._require_connected()
        to = await resolving.resolve(chat, self._numbers, self._is_on_whatsapp)  # the chat the message went to
        msg_id = self._new_id()
        self._emit(SimSent(payload={"to": to, "id": msg_id, "type": "edit", "target_id": message_id,
                                    "text": text}))
        return msg_id

    async def revoke(self, chat: str, message_id: str) -> str:
        self._require_connected()
        to = await resolving.resolve(chat, self._numbers, self._is_on_whatsapp)
        msg_id = self._new_id()
        self._emit(SimSent(payload={"to": to, "id": msg_id, "type": "revoke", "target_id": message_id}))
        return msg_id

    async def reject_call(self, caller: str, call_id: str) -> None:
        self._require_connected()
        self._emit(SimSent(payload={"to": to_jid(caller), "type": "call_rejected", "call_id": call_id}))

    async def _group(self, payload: bytes) -> None:
        """`wa/sim/<phone>/group`: create or change a group the account is in (sim_groups.SimGroupSpec)."""
        try:
            spec = SimGroupSpec.model_validate_json(payload or b"{}")
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            raise EngineError(f"bad group payload: {where}: {error['msg']}", code=ErrorCode.INVALID_REQUEST) from None
        old = self._groups().get(spec.jid)
        group, events = apply(old, spec, self.phone, self._clock())
        self._directory.put_group(spec.jid, group)
        self._group_cache = None
        if self._connected:
            for event in events:
                self._emit(GroupChanged(event=event))
            self._emit_groups()

    async def _call(self, payload: bytes) -> None:
        """`wa/sim/<phone>/call`: `{"from", "video"?, "group"?}` rings the account."""
        try:
            data = json.loads(payload or b"{}")
            caller = phone_list([str(data["from"])])[0]
            video, group = bool(data.get("video", False)), data.get("group")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise EngineError('call payload must be {"from": "<phone>", "video"?: bool, "group"?: "<jid>"}',
                              code=ErrorCode.INVALID_REQUEST) from None
        self._require_connected()
        call_id = f"SIMCALL{self._new_id()[3:]}"
        self._emit(CallReceived(call=IncomingCall(id=call_id, from_=caller, from_jid=to_jid(caller), video=video,
                                                  group=group, timestamp=self._clock())))

    def _groups(self) -> dict[str, SimGroup]:
        if self._group_cache is None:
            self._group_cache = self._directory.groups()
        return self._group_cache

    def _emit_groups(self) -> None:
        self._emit(GroupsUpdated(groups=[g.summary(self.phone) for g in self._groups().values()]))

    def _known_names(self) -> dict[str, str]:
        if self._names is None:
            self._names = self._directory.names()
        return self._names

    def _chat_name(self, chat_jid: str, sender: str, sender_name: str | None) -> str | None:
        """The group's subject, or the contact's name (remembering a push name seen). `sender` is a phone,
        or the `…@lid` JID of a sender whose phone is unknown (its digits are no phone: issue 14)."""
        names = self._known_names()
        if sender_name and names.get(sender) != sender_name:
            names[sender] = sender_name
            self._directory.saw(sender, sender_name)
        if chat_jid.endswith("@g.us"):
            group = self._groups().get(chat_jid)
            return group.name if group is not None else None
        return names.get(chat_jid if is_lid(chat_jid) else user_of(chat_jid))

    async def close(self) -> None:
        await self.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- control topics ------------------------------------------------------------------------
    async def sim_control(self, action: str, payload: bytes) -> None:
        handler = {
            "scan": self._scan, "incoming": self._incoming, "drop": self._drop, "outage": self._outage,
            "logout": self._remote_logout, "replace": self._replace, "crash": self._do_crash,
            "hang": self._hang, "balloon": self._balloon,  # test aids for the engine process supervision
            "stall": self._stall_next_send,  # test aid: a bridge killed between handing over and hearing back
            "contacts": self._set_contacts,
            "group": self._group, "call": self._call,  # issue 15
            "silence": self._silence,  # the connection stays up, nothing arrives: the watchdog's case
            "keepalive": self._keepalive_gap, "ban": self._temporary_ban,  # issue 14
        }.get(action)
        if handler is None:
            raise EngineError(f"unknown sim action {action!r}", code=ErrorCode.INVALID_REQUEST)
        await handler(payload)

    async def _scan(self, payload: bytes) -> None:
        """Accept the QR / code on offer; `{"phone": N}` makes another number than asked scan it;
        `{"code": "..."}` is what the phone read: any other than the one on offer is refused."""
        if not self._pairing:
            raise EngineError("nothing to scan: the account is not pairing", code=ErrorCode.INVALID_REQUEST)
        try:
            spec = json.loads(payload) if payload.strip() else {}
            scanner = str(spec.get("phone", self.phone))
            read = spec.get("code")
        except (ValueError, AttributeError):
            raise EngineError("scan payload must be empty or {\"phone\": ..., \"code\": ...}",
                              code=ErrorCode.INVALID_REQUEST) from None
        if read is not None and read != self._offered:
            raise EngineError(f"scanned {str(read)[:80]!r}, which is not the code on offer", code=ErrorCode.INVALID_REQUEST)
        name = f"Sim {scanner[-4:]}"
        write_device(self.store_path, scanner, name, self._clock())
        self._pairing = False
        self._emit(Paired(phone=scanner, name=name))
        self._go_online(name)

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

    async def _drop(self, _payload: bytes) -> None:
        if not self._connected:
            return
        self._lose_connection("sim: connection dropped")

    async def _outage(self, payload: bytes) -> None:
        try:
            seconds = float(json.loads(payload or b"{}").get("seconds", 30))
        except (ValueError, AttributeError, TypeError):
            raise EngineError("outage payload must be {\"seconds\": N}", code=ErrorCode.INVALID_REQUEST) from None
        self._outage_until = self._clock() + timedelta(seconds=seconds)
        if self._connected:
            self._lose_connection("sim: WhatsApp unreachable")
        elif self._reconnect is not None:
            self._schedule_reconnect()  # the engine's own loop is waiting: it gets through when this outage ends

    async def _silence(self, payload: bytes) -> None:
        """`{"seconds": N}`: the connection stays up but nothing arrives for N s (messages wait for the
        next connection, as WhatsApp keeps them) and server checks go unanswered."""
        try:
            seconds = float(json.loads(payload or b"{}").get("seconds", 60))
        except (ValueError, AttributeError, TypeError):
            seconds = -1.0
        if not 0 < seconds <= 86400:
            raise EngineError("silence payload must be {\"seconds\": N}, 0 < N <= 86400", code=ErrorCode.INVALID_REQUEST)
        self._silent_until = self._clock() + timedelta(seconds=seconds)

    def _is_silent(self) -> bool:
        return self._silent_until is not None and self._clock() < self._silent_until

    async def _remote_logout(self, _payload: bytes) -> None:
        self._unlink()
        self._connected = False
        self._emit(LoggedOut(reason="sim: the phone unlinked this device"))

    async def _replace(self, _payload: bytes) -> None:
        self._connected = False
        self._emit(StreamReplaced())

    async def _do_crash(self, _payload: bytes) -> None:
        if self._crash is not None:
            self._crash()
        else:
            self._connected = False
            self._emit(Crashed(error="sim: engine crashed"))

    async def _hang(self, _payload: bytes) -> None:
        """Test aid: the engine stops answering (blocks its process), as neonize can after a QR expiry."""
        time.sleep(3600)  # noqa: ASYNC251 (the point: block the loop, as a wedged neonize does)

    async def _stall_next_send(self, payload: bytes) -> None:
        """Test aid: the next send reaches WhatsApp at once, its answer comes `{"seconds": N}` later."""
        try:
            seconds = float(json.loads(payload or b"{}").get("seconds", 10))
        except (ValueError, AttributeError, TypeError):
            seconds = -1.0
        if not 0 <= seconds <= 600:
            raise EngineError("stall payload must be {\"seconds\": N}, 0 to 600", code=ErrorCode.INVALID_REQUEST)
        self._stall = seconds

    async def _balloon(self, payload: bytes) -> None:
        """Test aid: the engine grows by `{"mb": N}` megabytes, like a leak."""
        try:
            megabytes = int(json.loads(payload or b"{}").get("mb", 100))
        except (ValueError, AttributeError, TypeError):
            raise EngineError("balloon payload must be {\"mb\": N}", code=ErrorCode.INVALID_REQUEST) from None
        self._ballast = bytearray(os.urandom(1024)) * (megabytes * 1024)

    # -- LID senders, edits, revokes, undecryptable messages, contacts (issue 14) ---------------
    def _sender(self, spec: SimIncoming) -> Party:
        """Who sent an incoming message, as whatsmeow reports it: with `sender_lid` the message came
        addressed by LID (`sender_jid` is the LID); given with `sender` too, the LID map learns the pair."""
        phone = spec.sender.split("@")[0].lstrip("+") if spec.sender and not is_lid(spec.sender) else None
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

    async def _set_contacts(self, payload: bytes) -> None:
        try:
            self._contacts = SimContacts.model_validate_json(payload or b"{}")
        except ValidationError as exc:
            raise EngineError(f"bad contacts payload: {exc.errors()[0]['msg']}", code=ErrorCode.INVALID_REQUEST) from None
        self._numbers.clear()  # WhatsApp's answers changed

    async def _is_on_whatsapp(self, phones: list[str]) -> list[NumberCheck]:
        absent = {p.lstrip("+") for p in self._contacts.not_on_whatsapp}
        real = {typed.lstrip("+"): to_jid(jid.lstrip("+")) for typed, jid in self._contacts.jid_of.items()}
        return [NumberCheck(number=p, on_whatsapp=p not in absent, jid=None if p in absent else real.get(p, to_jid(p)))
                for p in phones]

    # -- helpers -------------------------------------------------------------------------------
    def _new_id(self) -> str:
        """The next message id; numbers come from blocks reserved in the store, so none repeats."""
        if self._next_number >= self._numbers_end:
            self._next_number = reserve_ids(self.store_path, ID_BLOCK)
            self._numbers_end = self._next_number + ID_BLOCK
        number, self._next_number = self._next_number, self._next_number + 1
        return f"SIM{self.phone[-4:]}{number:08X}"

    def _go_online(self, name: str | None) -> None:
        self._connected = True
        log.debug("%s: presence %s", self.phone, self.presence)
        self._emit(Connected(name=name))
        self._emit_groups()  # whatsmeow's groups are fetched on connect too (the bridge's retained list)
        inbox, self._offline_inbox = self._offline_inbox, []
        for message, fetch in inbox:
            self._receive(message, fetch)

    def _auto_reconnect(self) -> None:
        self._reconnect = None
        device = read_device(self.store_path)
        if self._connected or device is None or self._ban is not None:
            return
        if self._in_outage():
            self._schedule_reconnect()
            return
        self._go_online(device[1])

    def _cancel_reconnect(self) -> None:
        if self._reconnect is not None:
            self._reconnect.cancel()
            self._reconnect = None

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

    # -- issue 14: whatsmeow's own reconnect loop, keepalive gaps, temporary bans, presence ------------
    def _lose_connection(self, why: str) -> None:
        """A logged-in connection drops: like whatsmeow, the engine reconnects by itself (tells the
        bridge so: `engine_reconnects`), at once and then when WhatsApp can be reached again."""
        self._connected = False
        self._heal_keepalive(emit=False)
        self._emit(Disconnected(code=ErrorCode.CONNECTION_LOST, error=why, engine_reconnects=True))
        self._schedule_reconnect()

    def _schedule_reconnect(self) -> None:
        self._cancel_reconnect()
        wait = RECONNECT_AFTER_DROP
        if self._outage_until is not None:
            wait += max(0.0, (self._outage_until - self._clock()).total_seconds())
        self._reconnect = asyncio.get_running_loop().call_later(wait, self._auto_reconnect)

    async def _keepalive_gap(self, payload: bytes) -> None:
        """`{"seconds": N}`: WhatsApp stops answering keepalives for N seconds, then answers again (the
        connection stays up, as whatsmeow keeps it for up to 3 minutes of missed keepalives)."""
        seconds = _seconds(payload, "keepalive", default=None, most=3600)
        if not self._connected:
            raise EngineError("keepalive: the account is not connected", code=ErrorCode.INVALID_REQUEST)
        self._heal_keepalive(emit=False)
        self._emit(Degraded(degraded=True, missed=1))
        self._keepalive_heal = asyncio.get_running_loop().call_later(seconds, self._heal_keepalive)

    def _heal_keepalive(self, emit: bool = True) -> None:
        if self._keepalive_heal is None:
            return
        self._keepalive_heal.cancel()
        self._keepalive_heal = None
        if emit and self._connected:
            self._emit(Degraded(degraded=False))

    async def _temporary_ban(self, payload: bytes) -> None:
        """`{"seconds": N, "code": "...", "pump_dies": bool}`: WhatsApp bans the account for N seconds;
        every connect before the end is answered with the ban. `pump_dies`: as neonize with a ban code it
        cannot encode, the engine's event pump dies (the engine process must be replaced)."""
        seconds = _seconds(payload, "ban", default=3600, most=30 * 86400)
        try:
            spec = json.loads(payload or b"{}")
            code, pump_dies = str(spec.get("code", "101")), bool(spec.get("pump_dies", False))
        except (ValueError, AttributeError):
            raise EngineError("ban payload must be {\"seconds\": N, \"code\": C}", code=ErrorCode.INVALID_REQUEST) from None
        self._ban = (code, self._clock() + timedelta(seconds=seconds))
        _save_ban(self.store_path, self._ban)  # WhatsApp's, not the process's: a new engine process sees it too
        if pump_dies:
            self._recycle_reason = "neonize's event pump died (sim: a ban code neonize cannot encode)"
        self._connected = self._pairing = False
        self._cancel_reconnect()
        self._heal_keepalive(emit=False)
        self._banned()

    def _banned(self) -> bool:
        """While banned, say so (WhatsApp answers every connect with the ban and its remaining time)."""
        if self._ban is None:
            self._ban = _load_ban(self.store_path)
        if self._ban is None:
            return False
        code, until = self._ban
        if self._clock() >= until:
            self._ban = None
            return False
        self._emit(TemporaryBan(code=code, expires_at=until))
        return True

    @property
    def recycle_reason(self) -> str | None:
        """See `base.Recyclable`: set where neonize would leave its process unsound."""
        return self._recycle_reason

    def _in_outage(self) -> bool:
        return self._outage_until is not None and self._clock() < self._outage_until

    def _require_connected(self) -> None:
        if not self._connected:
            raise EngineError("websocket not connected", code=ErrorCode.NOT_CONNECTED)

    def _unlink(self) -> None:
        if self.store_path.exists():
            db = _connect(self.store_path)
            try:
                with db:
                    db.execute("DELETE FROM sim_device")
            finally:
                db.close()


def _seconds(payload: bytes, action: str, default: float | None, most: float) -> float:
    """`{"seconds": N}` of a control, 0 < N <= most; an `invalid_request` error otherwise."""
    try:
        raw = json.loads(payload or b"{}").get("seconds", default)
        seconds = float(raw) if raw is not None else -1.0
    except (ValueError, AttributeError, TypeError):
        seconds = -1.0
    if not 0 < seconds <= most:
        raise EngineError(f"{action} payload must be {{\"seconds\": N}}, 0 < N <= {most:g}",
                          code=ErrorCode.INVALID_REQUEST)
    return seconds


def _save_ban(store_path: Path, ban: tuple[str, datetime]) -> None:
    db = _connect(store_path)
    try:
        with db:
            db.execute("CREATE TABLE IF NOT EXISTS sim_ban (code TEXT NOT NULL, until TEXT NOT NULL)")
            db.execute("DELETE FROM sim_ban")
            db.execute("INSERT INTO sim_ban VALUES (?, ?)", (ban[0], ban[1].isoformat()))
    finally:
        db.close()


def _load_ban(store_path: Path) -> tuple[str, datetime] | None:
    """The temporary ban the simulated WhatsApp holds against this account, if any."""
    if not store_path.exists():
        return None
    try:
        with sqlite3.connect(f"file:{store_path}?mode=ro", uri=True) as db:
            row = db.execute("SELECT code, until FROM sim_ban LIMIT 1").fetchone()
    except sqlite3.DatabaseError:  # no such table: never banned
        return None
    return (str(row[0]), datetime.fromisoformat(row[1])) if row else None
