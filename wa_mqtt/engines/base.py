"""The seam between the bridge and whatever talks to WhatsApp: engine events and the session protocol.

An engine turns WhatsApp into these events and nothing else; the account supervisor decides what
they mean for the account's state. Events are pydantic models with a `kind` tag, so the same types
cross the pipe between the bridge and an engine child process as JSON lines unchanged.

The simulator's extras stay outside the production protocol: only a sim session is `SimControllable`
(driven by the `wa/sim/<phone>/...` control topics), and only the sim emits `SimSent`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field, JsonValue, TypeAdapter

from ..errors import BridgeError, ErrorCode
from ..model import (
    Contact,
    GroupEvent,
    GroupInfo,
    GroupSummary,
    IncomingCall,
    IncomingMessage,
    NumberCheck,
    OutgoingMessage,
    Receipt,
    SendResult,
)

PairMethod = Literal["qr", "code"]


def new_message_id() -> str:
    """A fresh WhatsApp message id, shaped like whatsmeow's own (`3EB0` + 18 upper-case hex digits).

    The bridge chooses a send's id before handing it to the engine and keeps it for every retry, so a
    message that reached WhatsApp before a crash is recognised, not delivered twice."""
    return "3EB0" + secrets.token_hex(9).upper()


class EngineError(BridgeError):
    """An engine operation failed; `code` is a response error code (`engine_error`, `not_connected`).

    `maybe_done`: the engine went away during the call (its process died, or no answer came), so the
    operation may have taken effect; otherwise the engine answered and it did not."""

    def __init__(self, message: str, code: ErrorCode | str = ErrorCode.ENGINE_ERROR, *,
                 maybe_done: bool = False) -> None:
        super().__init__(code, message)
        self.maybe_done = maybe_done


class _Event(BaseModel):
    pass


class Connected(_Event):
    kind: Literal["connected"] = "connected"
    name: str | None = None  # push name, when the engine knows it


class Disconnected(_Event):
    """The connection is gone or could not be made. `engine_reconnects`: the engine's own loop brings it
    back (whatsmeow after a drop of a logged-in session), so the bridge does not restart the session;
    otherwise the bridge's backoff decides when to retry."""

    kind: Literal["disconnected"] = "disconnected"
    code: ErrorCode = ErrorCode.CONNECTION_LOST
    error: str = "connection lost"
    engine_reconnects: bool = False


# -- issue 14 (reconnection, keepalive): a keepalive gap is a degraded connection, not a drop ------------
class Degraded(_Event):
    """The connection stays up but misses keepalives (`degraded`), or is healthy again (not `degraded`).
    whatsmeow heals a gap by itself and forces a reconnect only after minutes of it."""

    kind: Literal["degraded"] = "degraded"
    degraded: bool = True
    missed: int = 0


class LoggedOut(_Event):
    kind: Literal["logged_out"] = "logged_out"
    reason: str = "unlinked from the phone"


class StreamReplaced(_Event):
    kind: Literal["stream_replaced"] = "stream_replaced"


class TemporaryBan(_Event):
    kind: Literal["temporary_ban"] = "temporary_ban"
    code: str = ""
    expires_at: datetime


class ClientOutdated(_Event):
    kind: Literal["client_outdated"] = "client_outdated"


class Qr(_Event):
    kind: Literal["qr"] = "qr"
    code: str


class PairCode(_Event):
    kind: Literal["pair_code"] = "pair_code"
    code: str


class Paired(_Event):
    """Linking succeeded; `phone` is the number that scanned, which may differ from the one asked."""

    kind: Literal["paired"] = "paired"
    phone: str
    name: str | None = None


class MessageReceived(_Event):
    kind: Literal["message"] = "message"
    message: IncomingMessage


class ReceiptReceived(_Event):
    kind: Literal["receipt"] = "receipt"
    receipt: Receipt


class SimSent(_Event):
    """Sim only: the sim engine handed a message to its simulated WhatsApp (published on
    `wa/sim/<phone>/sent`). No production engine emits it."""

    kind: Literal["sim_sent"] = "sim_sent"
    payload: dict[str, JsonValue]


class GroupsUpdated(_Event):
    """The account's joined groups, all of them: on connect and after any change."""

    kind: Literal["groups"] = "groups"
    groups: list[GroupSummary]


class GroupChanged(_Event):
    """A group the account is in changed (members, admins, subject), or the account joined / left one."""

    kind: Literal["group_event"] = "group_event"
    event: GroupEvent


class CallReceived(_Event):
    """A call is ringing."""

    kind: Literal["call"] = "call"
    call: IncomingCall


class Crashed(_Event):
    """The engine (its child process) died or hung; produced by the process supervisor."""

    kind: Literal["crashed"] = "crashed"
    error: str


EngineEvent = Annotated[
    Connected | Disconnected | Degraded | LoggedOut | StreamReplaced | TemporaryBan | ClientOutdated | Qr
    | PairCode | Paired | MessageReceived | ReceiptReceived | SimSent | Crashed
    | GroupsUpdated | GroupChanged | CallReceived,
    Field(discriminator="kind"),
]
EVENT_ADAPTER: TypeAdapter[EngineEvent] = TypeAdapter(EngineEvent)

EmitFn = Callable[[EngineEvent], None]


class Intake:
    """Back-pressure from the bridge to its engines: while paused, the bridge stops reading what the
    engines hand over (they block on their pipe) instead of holding more than it can keep.

    Engines in child processes honour it (engines/process.py); an in-process engine is never paused."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def pause(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    async def wait_open(self) -> None:
        await self._open.wait()


@runtime_checkable
class EngineSession(Protocol):
    """One account's connection to WhatsApp. Methods are serialised by the caller (the supervisor).

    `start` begins restoring the stored session (or pairing when the store holds none) and returns
    at once; the outcome arrives as events through the `emit` function the session was opened with.

    `send` goes out as WhatsApp message `message_id` (chosen by the bridge, the same on every retry of
    one message); `retry` says an earlier try with that id may have reached WhatsApp. A message that did
    is not delivered again: the result carries its id and `already_sent`. A send to a phone number goes
    to the JID WhatsApp knows it by (`engines/resolving.py`); one without an account is refused
    (`not_on_whatsapp`).
    """

    async def start(self, pair_method: PairMethod = "qr") -> None: ...

    async def stop(self) -> None: ...

    async def logout(self) -> None: ...

    async def send(self, message: OutgoingMessage, message_id: str | None = None, retry: bool = False) -> SendResult: ...

    async def react(self, chat: str, message_id: str, emoji: str, sender: str | None = None) -> str: ...

    async def mark_read(self, chat: str, ids: list[str], sender: str | None = None) -> None: ...

    async def typing(self, chat: str, state: str) -> None: ...

    async def check(self, numbers: list[str]) -> list[NumberCheck]:
        """Which phone numbers have a WhatsApp account, and the JID of each (asked of WhatsApp, cached)."""
        ...
    # groups, contacts, calls, edits (issue 15)
    async def groups(self) -> list[GroupSummary]: ...

    async def group_info(self, jid: str) -> GroupInfo: ...

    async def contacts(self) -> list[Contact]: ...

    async def edit(self, chat: str, message_id: str, text: str) -> str: ...

    async def revoke(self, chat: str, message_id: str) -> str: ...

    async def reject_call(self, caller: str, call_id: str) -> None: ...
    async def ping(self, timeout: float) -> None:
        """A cheap round trip to WhatsApp's server on the open connection (the silent-link watchdog):
        returns when the server answered; raises EngineError when it did not within `timeout` s."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class Recyclable(Protocol):
    """A session that can tell its process is no longer sound (issue 14): a stop that could not end the
    engine's threads (neonize during pairing), or an engine whose event pump died. `recycle_reason` says
    why (None: sound). An engine child answers `stop` with it, and the bridge then replaces the child."""

    @property
    def recycle_reason(self) -> str | None: ...


@runtime_checkable
class SimControllable(Protocol):
    """A session the `wa/sim/<phone>/<action>` control topics drive: the sim's, in or out of process.

    Not part of `EngineSession`: a production session has no such method, and asking one is refused
    (`invalid_request`) by the supervisor and by a non-sim engine child."""

    async def sim_control(self, action: str, payload: bytes) -> None: ...


@runtime_checkable
class SendsInOrder(Protocol):
    """A session that takes several sends before the first is answered and carries them out one at a
    time, in the order called (an engine process: its child serves requests in order). The supervisor
    pipelines an account's sends through it instead of awaiting each (`EngineSession` methods are
    otherwise called one at a time). `chained`: an earlier send is still unanswered; should that one
    fail with `not_connected`, this one is not attempted and fails the same way (order kept).
    `message_json`: the message as pydantic writes it (exclude_none), when the caller has it already."""

    def send_in_order(self, message: OutgoingMessage, message_id: str, retry: bool,
                      chained: bool, message_json: bytes | None = None) -> Awaitable[SendResult]: ...


class Engine(Protocol):
    """Opens sessions; one per account. `name` is `neonize` or `sim`."""

    name: str

    def has_device(self, store_path: Path) -> bool:
        """True when the store at `store_path` holds a linked device to restore."""
        ...

    def open_session(self, phone: str, store_path: Path, emit: EmitFn) -> EngineSession: ...

    async def aclose(self) -> None: ...
