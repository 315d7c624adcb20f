"""The sim's control topics (`wa/sim/<phone>/<action>`): scan, drop, outage, silence, keepalive gaps,
temporary bans, remote logout, stream replaced, crash, the supervision test aids (hang, stall,
balloon), contacts (what `is_on_whatsapp` answers), group changes and incoming calls. Incoming
messages are sim_incoming's. `SimControlsMixin` is mixed into `sim.SimSession`, which owns the state.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ErrorCode
from ..model import IncomingCall, NumberCheck, phone_list, to_jid
from . import resolving
from .base import (
    CallReceived,
    Crashed,
    Degraded,
    EmitFn,
    EngineError,
    GroupChanged,
    LoggedOut,
    Paired,
    StreamReplaced,
    TemporaryBan,
)
from .sim_groups import SimDirectory, SimGroup, SimGroupSpec, apply
from .sim_store import load_ban, save_ban, unlink_device, write_device


class SimContacts(BaseModel):
    """Payload of `wa/sim/<phone>/contacts`: what `is_on_whatsapp` answers from now on."""

    model_config = ConfigDict(extra="forbid")

    not_on_whatsapp: list[str] = Field(default_factory=list)
    jid_of: dict[str, str] = Field(default_factory=dict)  # typed number → the JID (or phone) WhatsApp knows



class SimControlsMixin:
    """The `wa/sim/<phone>/...` handlers; the state below is `SimSession`'s."""

    phone: str
    store_path: Path
    _emit: EmitFn
    _clock: Callable[[], datetime]
    _crash: Callable[[], None] | None
    _connected: bool
    _pairing: bool
    _offered: str | None
    _outage_until: datetime | None
    _silent_until: datetime | None
    _stall: float
    _reconnect: asyncio.TimerHandle | None
    _keepalive_heal: asyncio.TimerHandle | None
    _ban: tuple[str, datetime] | None
    _recycle_reason: str | None
    _contacts: SimContacts
    _numbers: resolving.NumberCache
    _directory: SimDirectory
    _group_cache: dict[str, SimGroup] | None
    _ballast: bytearray

    if TYPE_CHECKING:
        async def _incoming(self, payload: bytes) -> None: ...
        def _go_online(self, name: str | None) -> None: ...
        def _lose_connection(self, why: str) -> None: ...
        def _schedule_reconnect(self) -> None: ...
        def _cancel_reconnect(self) -> None: ...
        def _require_connected(self) -> None: ...
        def _new_id(self) -> str: ...
        def _groups(self) -> dict[str, SimGroup]: ...
        def _emit_groups(self) -> None: ...

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
        unlink_device(self.store_path)
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
        save_ban(self.store_path, self._ban)  # WhatsApp's, not the process's: a new engine process sees it too
        if pump_dies:
            self._recycle_reason = "neonize's event pump died (sim: a ban code neonize cannot encode)"
        self._connected = self._pairing = False
        self._cancel_reconnect()
        self._heal_keepalive(emit=False)
        self._banned()

    def _banned(self) -> bool:
        """While banned, say so (WhatsApp answers every connect with the ban and its remaining time)."""
        if self._ban is None:
            self._ban = load_ban(self.store_path)
        if self._ban is None:
            return False
        code, until = self._ban
        if self._clock() >= until:
            self._ban = None
            return False
        self._emit(TemporaryBan(code=code, expires_at=until))
        return True

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

