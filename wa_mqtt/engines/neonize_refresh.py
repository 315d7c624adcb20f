"""A neonize session's background refreshes: the configured presence sent on every connect (retried
while whatsmeow lacks the push name), and the joined groups and contact names fetched on connect and
after group changes (the retained groups list, chat names). `NeonizeRefreshMixin` is mixed into
`neonize_engine.NeonizeSession`, which owns the state.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from ..model import IncomingMessage
from . import neonize_calls as calls
from . import neonize_convert as conv
from . import neonize_groups as groups
from .base import (
    EngineError,
    GroupsUpdated,
)
from .neonize_store import NeonizeStore

if TYPE_CHECKING:
    from pathlib import Path

    from neonize.aioze.client import NewAClient

    from .base import EngineEvent
    from .neonize_engine import NeonizeEngine
    from .neonize_events import Deferred

PRESENCE_TRIES, PRESENCE_RETRY = 6, 5.0  # whatsmeow refuses a presence until the push name is known

log = logging.getLogger(__name__)
T = TypeVar("T")



class NeonizeRefreshMixin:
    """Presence and the groups/contacts refresh; the state below is `NeonizeSession`'s."""

    phone: str
    store_path: Path
    store: NeonizeStore
    _engine: NeonizeEngine
    _account: str
    _client: NewAClient | None
    _lock: asyncio.Lock
    _stopping: bool
    _refresh: asyncio.Task[None] | None
    _side_tasks: set[asyncio.Task[None]]
    _group_names: dict[str, str]
    _contact_names: dict[str, str]

    if TYPE_CHECKING:
        def _put(self, event: EngineEvent | Deferred) -> None: ...

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _go_call(self, client: NewAClient, call: Callable[[], Awaitable[T]]) -> T:
        """Run a Go call of `client` under the session lock, only while it is the running client: a stop
        (which takes the lock) then waits for it, since Go aborts the process when a client is freed under
        a call. Cancelled meanwhile, it still waits for the call to return before the lock is let go."""
        async with self._lock:
            if client is not self._client or self._stopping:
                raise EngineError("the client was stopped")
            running = asyncio.ensure_future(call())
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                await asyncio.wait([running])  # the thread runs on; the lock is held until Go returned
                raise

    async def _send_presence(self, client: NewAClient) -> None:
        """Config `presence` on every connect: whatsmeow sends chat presence (typing) and the push name
        only after an available presence (presence.go)."""
        for attempt in range(PRESENCE_TRIES):
            if client is not self._client or self._stopping:
                return
            try:
                await self._go_call(client, lambda: calls.send_presence(client, self._engine.presence))
            except EngineError as exc:  # right after pairing the push name may not have arrived yet
                if "pushname" not in str(exc).lower().replace(" ", "") or attempt == PRESENCE_TRIES - 1:
                    log.warning("%s: presence %s not sent: %s", self.phone, self._engine.presence, exc)
                    return
                await asyncio.sleep(PRESENCE_RETRY)
            else:
                log.debug("%s: presence %s sent", self.phone, self._engine.presence)
                return

    def _me(self) -> list[str]:
        """The account's own user parts (phone, LID): to find it among a group's members."""
        me = getattr(self._client, "me", None)
        found = [self._account]
        if me is not None:
            found += [jid.User.split(":", 1)[0] for jid in (me.JID, me.LID) if jid.User]
        return found

    def _chat_name(self, message: IncomingMessage) -> str | None:
        if message.chat_type == "group":
            return self._group_names.get(message.chat)
        user = conv.jid_user(message.chat)
        if not message.from_me and message.sender_name and user not in self._contact_names:
            return message.sender_name
        return self._contact_names.get(user)

    def _refresh_groups(self, contacts: bool = False) -> None:
        """Fetch the joined groups (and the contact names) in the background; emit the list."""
        client = self._client
        if client is None:
            return
        if self._refresh is not None and not self._refresh.done():
            self._refresh.cancel()  # a newer list is on its way
        self._refresh = asyncio.get_running_loop().create_task(self._fetch_groups(client, contacts))

    async def _fetch_groups(self, client: NewAClient, contacts: bool) -> None:
        try:  # Go aborts the process on store calls of a client without a device: ask only a linked one
            linked = bool(await asyncio.to_thread(self.store.device_jids))
        except sqlite3.Error:
            linked = False
        if not linked:
            log.debug("%s: no linked device in the store; groups not fetched", self.phone)
            return
        if contacts:
            try:
                found = [groups.contact(c) for c in await self._go_call(client, client.contact.get_all_contacts)]
                self._contact_names = {c.phone or c.lid or "": c.saved_name or c.push_name or ""
                                       for c in found if c.saved_name or c.push_name}
            except Exception as exc:  # noqa: BLE001 (the names are a nicety; a failure is logged, never raised)
                log.warning("%s: contact names unavailable: %s", self.phone, exc)
        try:
            joined = await self._go_call(client, client.get_joined_groups)
        except Exception as exc:  # noqa: BLE001 (as above: Go's error text, logged)
            log.warning("%s: joined groups unavailable: %s", self.phone, exc)
            return
        summaries = [groups.group_summary(info, self._me()) for info in joined]
        self._group_names = {g.jid: g.name for g in summaries if g.name}
        if client is self._client:
            self._put(GroupsUpdated(groups=summaries))

