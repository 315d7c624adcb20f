"""The silent-link watchdog: an account must not sit `connected` while its engine no longer hears
from WhatsApp. When nothing has been heard (status `last_event_at`: a message, a receipt, the connect,
a check's answer) for `watchdog.silent_after` seconds, the connection is checked with a cheap server
round trip (`Supervisor.check_link`); a check that goes unanswered makes the account reconnect
(`disconnected`, `keepalive_timeout`, then the usual backoff). A `degraded` account (keepalives
unanswered) is left to whatsmeow, which already knows and recovers it (issue 14): no check meanwhile;
nor is an account while the data disk is full (the engines may not be read then: not a silent link).

One check at a time per account; the accounts are looked at every `period(silent_after)` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from .. import events as ev
from ..bus import EventBus
from ..config import Config
from ..errors import ErrorCode
from ..model import AccountState, Status
from ..tasks import BackgroundTasks

if TYPE_CHECKING:
    from ..accounts.manager import AccountManager

log = logging.getLogger(__name__)
OWNER = "watchdog"


def period(silent_after: float) -> float:
    """Seconds between two looks at the accounts: a quarter of `silent_after`, 0.2 s to 30 s."""
    return min(30.0, max(0.2, silent_after / 4))


def silent_for(status: Status, now: datetime) -> float | None:
    """Seconds nothing has been heard on a `connected` account; None when it is not connected, or
    `degraded`: its keepalives go unanswered and whatsmeow, the owner of that connection's recovery
    (issue 14), heals it or reconnects by itself; a check of ours would only fail and restart the client
    under it. Nor while the data disk is full: the bridge may have stopped reading the engines then
    (disk_full.py's back-pressure), so the silence is its own and a check's answer would go unread."""
    if status.state != AccountState.CONNECTED or status.degraded or status.error_code == ErrorCode.DISK_FULL:
        return None
    heard = status.last_event_at or status.since
    return (now - heard).total_seconds()


class Watchdog:
    """Checks silent connections; see the module docstring."""

    def __init__(self, bus: EventBus, config: Config, manager: AccountManager, clock: Callable[[], datetime]) -> None:
        self._bus = bus
        self._config = config
        self._manager = manager
        self._clock = clock
        self._checks = BackgroundTasks(log)
        self._checking: set[str] = set()
        self._loop: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._bus.subscribe(ev.ConfigReloaded, self._on_config, OWNER)
        self._loop = asyncio.create_task(self._run(), name="watchdog")

    async def drain(self) -> None:
        """No more checks: the accounts are about to close."""
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
        await self._checks.cancel()

    async def stop(self) -> None:
        self._bus.unsubscribe(OWNER)

    def _on_config(self, event: ev.ConfigReloaded) -> None:
        self._config = event.config

    async def _run(self) -> None:
        while True:
            silent_after = self._config.watchdog.silent_after
            await asyncio.sleep(period(silent_after) if silent_after > 0 else 30.0)
            if self._config.watchdog.silent_after > 0:
                self.look()

    def look(self) -> None:
        """Start a check for every connected account silent for `silent_after` s or more."""
        now, limit = self._clock(), self._config.watchdog.silent_after
        for phone in self._manager.phones():
            supervisor = self._manager.find(phone)
            if supervisor is None or phone in self._checking:
                continue
            silent = silent_for(supervisor.status, now)
            if silent is not None and silent >= limit:
                log.debug("%s: nothing heard from WhatsApp for %.1f s; checking the connection", phone, silent)
                self._checking.add(phone)
                self._checks.spawn(self._check(phone), f"watchdog-{phone}")

    async def _check(self, phone: str) -> None:
        try:
            supervisor = self._manager.find(phone)
            if supervisor is not None:
                await supervisor.check_link(self._config.watchdog.check_timeout)
        finally:
            self._checking.discard(phone)
