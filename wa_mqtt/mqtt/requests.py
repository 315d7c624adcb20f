"""The request table (contract section 5): command name → schema → handler.

`ACCOUNT_REQUESTS` answer `<base>/<phone>/request/<cmd>`, `BRIDGE_REQUESTS` `<base>/bridge/request/<cmd>`.
The schemas and their validation are api.py's (pure; `api.parse_command`); each row here names the same
schema (checked at import) and the handler that carries it out. A handler gets the call's context and its
validated request, does the work through the account manager or the send service, and returns the
response's `data`; a refusal is raised (ApiError, UnknownAccount, EngineError, StorageError, DiskFull)
and turned into the error response by the request server, the one place that writes response bodies.
`send` returns `Later`: taken in order (in the outbox) within the target's turn, answered once sent,
after the turn, so an account's next requests are taken while this one is with the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar, cast

from pydantic import BaseModel

from .. import __version__
from ..events import Reply
from ..model import AccountState, OutgoingMessage, SendOutcome
from . import api
from .api import (
    CheckRequest,
    ConnectRequest,
    EditRequest,
    EmptyRequest,
    GroupInfoRequest,
    LogLevelRequest,
    OptionalPhoneRequest,
    PairRequest,
    PhoneRequest,
    ReactRequest,
    ReadRequest,
    RevokeRequest,
    SendRequest,
    TypingRequest,
)

if TYPE_CHECKING:
    from ..accounts.manager import AccountManager
    from ..accounts.supervisor import Supervisor
    from ..sending import SendService

Result = dict[str, object]
R = TypeVar("R", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Services:
    """What handlers may use."""

    manager: AccountManager
    sending: SendService
    health: Callable[[], Result]  # the bridge's own figures for `health` (uptime, link, disk, dedup)
    reload: Callable[[], Awaitable[Result]]  # re-read config.yaml (ApiError when there is none)
    set_log_level: Callable[[str], None] = lambda _level: None  # the bridge's log level, until the next start


@dataclass(frozen=True, slots=True)
class Call:
    """One request being served: its target (a phone, or `bridge`) and where a deferred answer goes."""

    services: Services
    target: str
    reply: Reply


@dataclass(frozen=True, slots=True)
class Later:
    """A handler's answer that is not ready yet, and need not hold the target's turn: what the request
    asked is taken in order already (a send is in the outbox); its answer is `result()` once `outcome`
    is done (the request server waits for it after the turn, with a callback: no task per send)."""

    outcome: asyncio.Future[SendOutcome]

    def result(self) -> Result:
        """The answer once `outcome` is done; raises what the send raised."""
        return self.outcome.result().payload()


@dataclass(frozen=True, slots=True)
class Command:
    """A row of the table: the schema a payload is validated against, and what runs it."""

    schema: type[BaseModel]
    run: Callable[[Call, BaseModel], Awaitable[Result | Later]]


def command(schema: type[R], handler: Callable[[Call, R], Awaitable[Result | Later]]) -> Command:
    """A table row; the handler is typed with its own request model. It is called as it is (no wrapper
    coroutine per request): the request server validates with `api.parse_command`, which uses the same
    schema as this row (checked at import, below), so the handler always gets an instance of `schema`."""
    return Command(schema, cast("Callable[[Call, BaseModel], Awaitable[Result | Later]]", handler))


def _state(supervisor: Supervisor) -> Result:
    return {"phone": supervisor.phone, "state": supervisor.state.value}


# -- account commands -------------------------------------------------------------------------------
async def _connect(call: Call, request: ConnectRequest) -> Result:
    return _state(await call.services.manager.connect(call.target, request.method))


async def _disconnect(call: Call, _request: EmptyRequest) -> Result:
    return _state(await call.services.manager.disconnect(call.target))


async def _logout(call: Call, _request: EmptyRequest) -> Result:
    return _state(await call.services.manager.logout(call.target))


async def _send(call: Call, request: SendRequest) -> Result | Later:
    # a plain send that need not wait is taken without this row (`RequestServer._serve_now`, the same
    # `SendService` policy, `accept_now`); this is its way when it must wait for its turn or its pipeline
    return Later(await call.services.sending.accept(call.target, request, call.reply))


async def _react(call: Call, request: ReactRequest) -> Result:
    supervisor = call.services.manager.get(call.target)
    msg_id = await supervisor.engine_call(lambda s: s.react(request.chat, request.id, request.emoji, request.sender))
    return {"id": msg_id}


async def _read(call: Call, request: ReadRequest) -> Result:
    await call.services.manager.get(call.target).engine_call(
        lambda s: s.mark_read(request.chat, request.ids, request.sender))
    return {}


async def _typing(call: Call, request: TypingRequest) -> Result:
    await call.services.manager.get(call.target).engine_call(lambda s: s.typing(request.chat, request.state))
    return {}


async def _check(call: Call, request: CheckRequest) -> Result:
    checks = await call.services.manager.get(call.target).engine_call(lambda s: s.check(request.numbers))
    return {"results": [check.model_dump(mode="json") for check in checks]}
# -- groups, contacts, edits (issue 15) ------------------------------------------------------------------
async def _groups(call: Call, _request: EmptyRequest) -> Result:
    groups = await call.services.manager.get(call.target).engine_call(lambda s: s.groups())
    return {"groups": [group.model_dump(mode="json") for group in groups]}


async def _group_info(call: Call, request: GroupInfoRequest) -> Result:
    info = await call.services.manager.get(call.target).engine_call(lambda s: s.group_info(request.jid))
    return info.payload()


async def _contacts(call: Call, _request: EmptyRequest) -> Result:
    contacts = await call.services.manager.get(call.target).engine_call(lambda s: s.contacts())
    return {"contacts": [contact.model_dump(mode="json") for contact in contacts]}


async def _edit(call: Call, request: EditRequest) -> Result:
    sending = call.services.sending
    sending.check_content(OutgoingMessage(to=request.chat, text=request.text))  # max_text_chars
    await sending.allow(call.target, request.chat, "chat")  # allow_to as a send to that chat compares it
    msg_id = await call.services.manager.get(call.target).engine_call(
        lambda s: s.edit(request.chat, request.id, request.text))
    return {"id": msg_id}


async def _revoke(call: Call, request: RevokeRequest) -> Result:
    await call.services.sending.allow(call.target, request.chat, "chat")
    msg_id = await call.services.manager.get(call.target).engine_call(lambda s: s.revoke(request.chat, request.id))
    return {"id": msg_id}


# -- bridge commands --------------------------------------------------------------------------------
async def _pair(call: Call, request: PairRequest) -> Result:
    return _state(await call.services.manager.pair(request.phone, request.method))


async def _remove(call: Call, request: PhoneRequest) -> Result:
    await call.services.manager.remove(request.phone)
    return {"phone": request.phone, "removed": True}


async def _restart_account(call: Call, request: PhoneRequest) -> Result:
    return _state(await call.services.manager.restart(request.phone))


async def _health(call: Call, _request: EmptyRequest) -> Result:
    return {"version": __version__, **call.services.health(), "accounts": call.services.manager.health()}


async def _backup(call: Call, request: OptionalPhoneRequest) -> Result:
    return {"backups": await call.services.manager.backup(request.phone)}


async def _reload(call: Call, _request: EmptyRequest) -> Result:
    return await call.services.reload()


# -- operating it (issue 17) ---------------------------------------------------------------------------
async def _log_level(call: Call, request: LogLevelRequest) -> Result:
    call.services.set_log_level(request.level)
    return {"level": request.level}


RESTART_SKIPPED = (AccountState.STOPPED, AccountState.LOGGED_OUT)
"""Not restarted by `restart`: stopped on request (a restart would start it), or without a linked device."""


async def _restart(call: Call, _request: EmptyRequest) -> Result:
    """Restart every account that runs or tries to (each as `restart_account`), all at once."""
    manager = call.services.manager
    phones = [phone for phone in manager.phones()
              if (s := manager.find(phone)) is not None and s.state not in RESTART_SKIPPED]
    skipped = sorted(set(manager.phones()) - set(phones))
    results = await asyncio.gather(*(manager.restart(phone) for phone in phones), return_exceptions=True)
    failed = {phone: str(result) for phone, result in zip(phones, results, strict=True)
              if isinstance(result, BaseException)}
    return {"restarted": sorted(set(phones) - set(failed)), "skipped": skipped, "failed": failed}


ACCOUNT_REQUESTS: Mapping[str, Command] = {
    "connect": command(ConnectRequest, _connect),
    "disconnect": command(EmptyRequest, _disconnect),
    "logout": command(EmptyRequest, _logout),
    "send": command(SendRequest, _send),
    "react": command(ReactRequest, _react),
    "read": command(ReadRequest, _read),
    "typing": command(TypingRequest, _typing),
    "check": command(CheckRequest, _check),
    "groups": command(EmptyRequest, _groups),
    "group_info": command(GroupInfoRequest, _group_info),
    "contacts": command(EmptyRequest, _contacts),
    "edit": command(EditRequest, _edit),
    "revoke": command(RevokeRequest, _revoke),
}
BRIDGE_REQUESTS: Mapping[str, Command] = {
    "pair": command(PairRequest, _pair),
    "remove": command(PhoneRequest, _remove),
    "backup": command(OptionalPhoneRequest, _backup),
    "restart_account": command(PhoneRequest, _restart_account),
    "reload": command(EmptyRequest, _reload),
    "health": command(EmptyRequest, _health),
    "log_level": command(LogLevelRequest, _log_level),
    "restart": command(EmptyRequest, _restart),
}
assert {name: row.schema for name, row in ACCOUNT_REQUESTS.items()} == api.ACCOUNT_SCHEMAS
assert {name: row.schema for name, row in BRIDGE_REQUESTS.items()} == api.BRIDGE_SCHEMAS
