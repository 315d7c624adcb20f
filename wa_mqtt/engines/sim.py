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

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ErrorCode
from ..media import MediaPolicy
from ..model import MESSAGE_TYPES, IncomingMessage, OutgoingMessage, Receipt, SendResult, to_jid
from .base import (
    Connected,
    Crashed,
    Disconnected,
    EmitFn,
    EngineError,
    LoggedOut,
    MessageReceived,
    PairCode,
    Paired,
    PairMethod,
    Qr,
    ReceiptReceived,
    SimSent,
    StreamReplaced,
)
from .options import EngineOptions
from .outgoing_media import load_media

log = logging.getLogger(__name__)

RECONNECT_AFTER_DROP = 0.2  # seconds; whatsmeow's own reconnect after a dropped connection
SENT_IDS_KEPT = timedelta(days=2)  # how long a delivered message id is remembered (a repeat is dropped)
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


def _inode(path: Path) -> int:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return -1


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


class SimIncoming(BaseModel):
    """Payload of `wa/sim/<phone>/incoming`."""

    model_config = ConfigDict(extra="allow")

    chat: str | None = None
    sender: str = "15550000001"
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


class SimEngine:
    """Opens sim sessions. `crash` is what `wa/sim/<phone>/crash` does (in a child: exit at once)."""

    name = "sim"

    def __init__(self, clock: Clock = _utcnow, crash: Callable[[], None] | None = None,
                 media_policy: MediaPolicy | None = None) -> None:
        self._clock = clock
        self._crash = crash
        self._media_policy = media_policy or EngineOptions().media.policy()

    def has_device(self, store_path: Path) -> bool:
        return read_device(store_path) is not None

    def open_session(self, phone: str, store_path: Path, emit: EmitFn) -> SimSession:
        return SimSession(phone, store_path, emit, self._clock, self._crash, self._media_policy)

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
        self._pair_count = 0
        self._outage_until: datetime | None = None
        self._offline_inbox: list[IncomingMessage] = []
        self._stall = 0.0  # seconds the next send's answer is held (`wa/sim/<phone>/stall`)
        self._next_number = 0
        self._numbers_end = 0  # the reserved block is [_next_number, _numbers_end)
        self._tasks: set[asyncio.Task[None]] = set()
        self._reconnect: asyncio.TimerHandle | None = None
        self._sent: tuple[int, sqlite3.Connection] | None = None  # the store's inode, a connection to its sent ids

    # -- EngineSession -------------------------------------------------------------------------
    async def start(self, pair_method: PairMethod = "qr") -> None:
        self._cancel_reconnect()
        if self._in_outage():
            self._emit(Disconnected(code=ErrorCode.DIAL_FAILED,  # worded like the real engine's dial errors
                                    error="sim: cannot reach WhatsApp (simulated outage); check the network, or set `proxy`"))
            return
        device = read_device(self.store_path)
        if device is None:
            self._pairing = True
            self._pair_count += 1
            if pair_method == "code":
                self._emit(PairCode(code=f"SIM{self._pair_count % 10}-{self.phone[-4:]}"))
            else:
                self._emit(Qr(code=f"sim-qr:{self.phone}:{self._pair_count}"))
            return
        self._go_online(device[1])

    async def stop(self) -> None:
        self._cancel_reconnect()
        self._connected = False
        self._pairing = False

    async def logout(self) -> None:
        await self.stop()
        self._unlink()

    async def send(self, message: OutgoingMessage, message_id: str | None = None, retry: bool = False) -> SendResult:
        self._require_connected()
        if message_id is not None and (first := self._delivered_at(message_id)) is not None:
            log.info("%s: message %s was delivered before; dropped as WhatsApp does", self.phone, message_id)
            return SendResult(id=message_id, timestamp=first, already_sent=True)
        media = getattr(message, message.kind) if message.kind != "text" else None
        loaded = await load_media(message.kind, media, self._media_policy) if media is not None else None
        msg_id = message_id or self._new_id()
        now = self._clock()
        self._record_delivery(msg_id, now)
        payload: dict[str, Any] = {"to": message.jid, "id": msg_id, "type": message.kind, "text": message.text}
        if message.reply_to:
            payload["reply_to"] = message.reply_to
        if media is not None and loaded is not None:
            payload["media"] = {k: v for k, v in media.model_dump().items() if v is not None and k != "base64"}
            payload["media"].update(size=len(loaded), sha256=hashlib.sha256(loaded).hexdigest())
            payload["text"] = media.caption or message.text
        if message.id:
            payload["client_id"] = message.id
        self._emit(SimSent(payload=payload))
        self._emit(ReceiptReceived(receipt=Receipt(ids=[msg_id], chat=message.jid, type="delivered", timestamp=now)))
        if self._stall:
            seconds, self._stall = self._stall, 0.0
            await asyncio.sleep(seconds)  # WhatsApp has it; the bridge hears of it only now
        return SendResult(id=msg_id, timestamp=now)

    def _delivered_at(self, message_id: str) -> datetime | None:
        row = self._sent_ids().execute("SELECT sent_at FROM sim_sent WHERE id = ?", (message_id,)).fetchone()
        return datetime.fromisoformat(row[0]) if row else None

    def _record_delivery(self, message_id: str, now: datetime) -> None:
        db = self._sent_ids()
        with db:
            db.execute("INSERT OR REPLACE INTO sim_sent VALUES (?, ?)", (message_id, now.isoformat()))
            db.execute("DELETE FROM sim_sent WHERE sent_at < ?", ((now - SENT_IDS_KEPT).isoformat(),))

    def _sent_ids(self) -> sqlite3.Connection:
        """The store's sent ids, on a connection kept open (opening one cost ~0.5 ms, and a send made two;
        its journal is kept, not created and removed with each write); a new one for a new store file."""
        inode = _inode(self.store_path)
        if self._sent is None or self._sent[0] != inode:
            self._close_sent()
            db = _sent_db(self.store_path)
            db.execute("PRAGMA journal_mode=PERSIST")
            self._sent = (_inode(self.store_path), db)
        return self._sent[1]

    def _close_sent(self) -> None:
        if self._sent is not None:
            self._sent[1].close()
            self._sent = None

    async def react(self, chat: str, message_id: str, emoji: str, sender: str | None = None) -> str:
        self._require_connected()
        msg_id = self._new_id()
        self._emit(SimSent(payload={"to": to_jid(chat), "id": msg_id, "type": "reaction", "emoji": emoji, "target_id": message_id}))
        return msg_id

    async def mark_read(self, chat: str, ids: list[str], sender: str | None = None) -> None:
        self._require_connected()
        self._emit(SimSent(payload={"to": to_jid(chat), "type": "read", "ids": ids, "sender": sender}))

    async def typing(self, chat: str, state: str) -> None:
        self._require_connected()
        self._emit(SimSent(payload={"to": to_jid(chat), "type": "typing", "state": state}))

    async def close(self) -> None:
        await self.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._close_sent()

    # -- control topics ------------------------------------------------------------------------
    async def sim_control(self, action: str, payload: bytes) -> None:
        handler = {
            "scan": self._scan, "incoming": self._incoming, "drop": self._drop, "outage": self._outage,
            "logout": self._remote_logout, "replace": self._replace, "crash": self._do_crash,
            "hang": self._hang, "balloon": self._balloon,  # test aids for the engine process supervision
            "stall": self._stall_next_send,  # test aid: a bridge killed between handing over and hearing back
        }.get(action)
        if handler is None:
            raise EngineError(f"unknown sim action {action!r}", code=ErrorCode.INVALID_REQUEST)
        await handler(payload)

    async def _scan(self, payload: bytes) -> None:
        """Accept the QR / code on offer; `{"phone": N}` makes another number than asked scan it."""
        if not self._pairing:
            raise EngineError("nothing to scan: the account is not pairing", code=ErrorCode.INVALID_REQUEST)
        try:
            scanner = str(json.loads(payload).get("phone", self.phone)) if payload.strip() else self.phone
        except (ValueError, AttributeError):
            raise EngineError("scan payload must be empty or {\"phone\": ...}", code=ErrorCode.INVALID_REQUEST) from None
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
        if spec.repeat == 1 and spec.interval == 0:
            self._deliver(self._build_message(spec, None))
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
            self._deliver(message)

    async def _drop(self, _payload: bytes) -> None:
        if not self._connected:
            return
        self._connected = False
        self._emit(Disconnected(code=ErrorCode.CONNECTION_LOST, error="sim: connection dropped"))
        self._reconnect = asyncio.get_running_loop().call_later(RECONNECT_AFTER_DROP, self._auto_reconnect)

    async def _outage(self, payload: bytes) -> None:
        try:
            seconds = float(json.loads(payload or b"{}").get("seconds", 30))
        except (ValueError, AttributeError, TypeError):
            raise EngineError("outage payload must be {\"seconds\": N}", code=ErrorCode.INVALID_REQUEST) from None
        self._outage_until = self._clock() + timedelta(seconds=seconds)
        if self._connected:
            self._connected = False
            self._emit(Disconnected(code=ErrorCode.CONNECTION_LOST, error="sim: WhatsApp unreachable"))

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
        self._emit(Connected(name=name))
        inbox, self._offline_inbox = self._offline_inbox, []
        for message in inbox:
            self._emit(MessageReceived(message=message))

    def _auto_reconnect(self) -> None:
        self._reconnect = None
        device = read_device(self.store_path)
        if self._connected or self._in_outage() or device is None:
            return
        self._go_online(device[1])

    def _cancel_reconnect(self) -> None:
        if self._reconnect is not None:
            self._reconnect.cancel()
            self._reconnect = None

    def _deliver(self, message: IncomingMessage) -> None:
        if self._connected:
            self._emit(MessageReceived(message=message))
        else:
            self._offline_inbox.append(message)  # WhatsApp keeps it until the device is back

    def _build_message(self, spec: SimIncoming, index: int | None) -> IncomingMessage:
        now = self._clock()
        base_id = spec.id or f"SIMIN{int(now.timestamp() * 1e6):X}"
        sender = spec.sender.split("@")[0]
        chat = spec.chat or sender
        extras = spec.model_extra or {}
        data: dict[str, Any] = {
            **{k: v for k, v in extras.items() if k not in IncomingMessage.model_fields},
            "id": base_id if index is None else f"{base_id}-{index}",
            "account": self.phone,
            "chat": to_jid(chat),
            "chat_type": "group" if to_jid(chat).endswith("@g.us") else "private",
            "sender": sender,
            "sender_jid": to_jid(sender),
            "sender_name": spec.sender_name,
            "from_me": spec.from_me,
            "timestamp": now,
            "type": spec.type if spec.type in MESSAGE_TYPES else "unknown",
            "text": spec.text if index is None or spec.text is None else f"{spec.text} {index}",
            "caption": spec.caption,
            "media": spec.media,
        }
        for key in ("quoted", "mentions", "reaction", "location"):
            if key in extras:
                data[key] = extras[key]
        try:
            return IncomingMessage.model_validate(data)
        except ValidationError as exc:
            raise EngineError(f"bad incoming payload: {exc.errors()[0]['msg']}", code=ErrorCode.INVALID_REQUEST) from None

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
