"""Features as extensions: each listens on the event bus and does one job (publish state, serve
requests, Home Assistant discovery, auto-replies, sim control, alerts, the silent-link watchdog,
metrics, the web page). `app.py` starts them from a list, in
order, and stops them in reverse, in two rounds around the closing of the accounts: `drain()` takes no
more input and finishes the work in flight (requests being served, replies being sent) while the accounts
still run; `stop()`, once the accounts are closed (their last statuses and answers shown), unsubscribes.
A constructor only stores its arguments; `start()` subscribes. No extension holds a reference to
another: they meet on the bus and in the shared services (the account manager, the send service).
"""

from __future__ import annotations

from typing import Protocol


class Extension(Protocol):
    """One feature around the bus."""

    def start(self) -> None: ...

    async def drain(self) -> None: ...

    async def stop(self) -> None: ...
