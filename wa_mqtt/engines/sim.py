"""The sim engine: a deterministic simulated WhatsApp (contract section 8).

It keeps linked accounts in `sessions/<phone>/store.db` like the real engine (a `sim_device` table),
so restore, backups and removal run the same code paths. It is driven by the `wa/sim/<phone>/...`
control topics, which the bridge forwards to `SimSession.sim_control`. Behaviour follows whatsmeow:
a dropped connection reconnects by itself shortly after; a failed dial is reported, not retried;
messages that arrive while the account is offline are delivered when it connects again.

Message ids it hands out (`SIM<last 4 digits><8 hex>`) are numbered from a counter kept in the store,
reserved in blocks, so they never repeat, across engine restarts too. The ids WhatsApp already took
(a repeat is dropped, `already_sent`) are sim_sent's: recorded before the send's events and answer
are emitted (in an engine child, with one write for the sends of a loop turn, before any of their
events and answers leave the process: `batch_sent_ids`), so a killed engine process never forgets an
id the bridge heard of; pruned after SENT_IDS_KEPT. They are always those of the store file in place
when the session last went online (checked there, not on every send: the file is replaced only while
the session is offline). Outgoing media is read as the
real engine reads it (`outgoing_media.load_media`: the same policy, fetch and errors); `wa/sim/<phone>/sent`
shows its `size` and `sha256`.

This module is the engine and the session's lifecycle, sends and queries; the session mixes in its
control topics (sim_controls) and incoming messages (sim_incoming); its stores are sim_store's, its
sent ids sim_sent's, its groups sim_groups', its incoming media sim_media's.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import ErrorCode
from ..media import MediaPolicy
from ..model import (
    Contact,
    GroupInfo,
    GroupSummary,
    IncomingMessage,
    NumberCheck,
    OutgoingMessage,
    Receipt,
    SendResult,
    to_jid,
)
from . import resolving
from .addressing import is_lid, user_of
from .base import (
    Connected,
    Disconnected,
    EmitFn,
    EngineError,
    GroupsUpdated,
    PairCode,
    PairMethod,
    Qr,
    ReceiptReceived,
    SimSent,
)
from .incoming_media import FetchFn, MediaSaver
from .options import DownloadOptions, EngineOptions, Presence
from .outgoing_media import load_media
from .sim_controls import SimContacts, SimControlsMixin
from .sim_groups import SimDirectory, SimGroup
from .sim_incoming import SimIncomingMixin
from .sim_sent import PRUNE_EVERY as PRUNE_EVERY  # re-exported: tests use them
from .sim_sent import SENT_IDS_KEPT as SENT_IDS_KEPT
from .sim_sent import SentIds
from .sim_store import SimLids, read_device, reserve_ids, unlink_device
from .sim_store import write_device as write_device  # re-exported: tests and benchmarks link devices with it
from .voice_note import VOICE_NOTE_MIMETYPE, to_voice_note

log = logging.getLogger(__name__)

RECONNECT_AFTER_DROP = 0.2  # seconds; whatsmeow's own reconnect after a dropped connection
ID_BLOCK = 1024  # message numbers reserved per store write: one write per 1,024 sends; a crash skips the rest
Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)



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


class SimSession(SimControlsMixin, SimIncomingMixin):
    """One simulated account connection: lifecycle, sends and queries; its control topics are
    sim_controls', its incoming messages sim_incoming's."""

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
        # issue 14: presence, keepalive gaps, temporary bans (sim_controls), recycling
        self.presence: Presence = "available"
        self._keepalive_heal: asyncio.TimerHandle | None = None
        self._ban: tuple[str, datetime] | None = None  # (code, end) of a temporary ban
        self._recycle_reason: str | None = None
        self._sent = SentIds(store_path)  # the ids WhatsApp already took

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
        """Unlink the device, then let go of the store: its logged sent ids are moved in now, while it is
        there (the manager removes the store's files next), and a new link opens the new store."""
        await self.stop()
        unlink_device(self.store_path)
        self._sent.close()

    async def send(self, message: OutgoingMessage, message_id: str | None = None, retry: bool = False) -> SendResult:
        self._require_connected()
        if message_id is not None and (first := self._sent.delivered_at(message_id)) is not None:
            log.info("%s: message %s was delivered before; dropped as WhatsApp does", self.phone, message_id)
            return SendResult(id=message_id, timestamp=first, already_sent=True)
        to = await resolving.resolve(message.to, self._numbers, self._is_on_whatsapp)
        media = message.media
        loaded = await load_media(message.kind, media, self._media_policy) if media is not None else None
        if loaded is not None and media is not None and media.ptt:
            loaded = await to_voice_note(loaded)  # as the real engine does: a voice note is OGG/Opus
        msg_id = message_id or self._new_id()
        now = self._clock()
        self._sent.record(msg_id, now)
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

    def batch_sent_ids(self) -> None:
        """Record the sent ids of a turn's sends with one write (an engine child, see sim_sent). The
        caller promises to run `commit_sent_ids` before any answer or event of those sends leaves its
        process, so no id the bridge hears of is ever forgotten, as with a commit per send."""
        self._sent.batch()

    def commit_sent_ids(self) -> None:
        """Make the sent ids recorded since the last call outlive the process; raises (OSError,
        sqlite3.Error) when one could not be recorded: the sends they belong to must then not be answered."""
        self._sent.commit()

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
        self._sent.close()

    # -- helpers -------------------------------------------------------------------------------
    def _new_id(self) -> str:
        """The next message id; numbers come from blocks reserved in the store, so none repeats."""
        if self._next_number >= self._numbers_end:
            self._next_number = reserve_ids(self.store_path, ID_BLOCK)
            self._numbers_end = self._next_number + ID_BLOCK
        number, self._next_number = self._next_number, self._next_number + 1
        return f"SIM{self.phone[-4:]}{number:08X}"

    def _go_online(self, name: str | None) -> None:
        self._sent.check_file()  # replaced while offline (a logout and a new link, a restore)?
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

    # -- issue 14: whatsmeow's own reconnect loop -------------------------------------------------
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

    @property
    def recycle_reason(self) -> str | None:
        """See `base.Recyclable`: set where neonize would leave its process unsound."""
        return self._recycle_reason

    def _in_outage(self) -> bool:
        return self._outage_until is not None and self._clock() < self._outage_until

    def _require_connected(self) -> None:
        if not self._connected:
            raise EngineError("websocket not connected", code=ErrorCode.NOT_CONNECTED)
