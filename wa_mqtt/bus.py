"""The event bus: the accounts layer and the app publish domain events (events.py), features subscribe.

Dispatch is synchronous, in subscription order, so an event reaches every subscriber before `emit`
returns and two events are seen in the order they were emitted (a status `connecting` never arrives
after `connected`). A handler that needs async work starts its own task and owns it. An exception in a
handler is logged with its owner and never reaches the emitter nor stops the other handlers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar, cast

log = logging.getLogger(__name__)
E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class _Listener:
    owner: str
    handler: Callable[[object], None]


class EventBus:
    """`subscribe(type, handler, owner)`; `unsubscribe(owner)` drops all of one owner's handlers."""

    def __init__(self) -> None:
        self._listeners: dict[type, list[_Listener]] = {}

    def subscribe(self, event_type: type[E], handler: Callable[[E], None], owner: str) -> None:
        """Call `handler` with every event of exactly `event_type`, after the handlers subscribed before."""
        # listeners are keyed by the event's exact type, so each handler is only ever called with its E
        listener = _Listener(owner, cast("Callable[[object], None]", handler))
        self._listeners.setdefault(event_type, []).append(listener)

    def unsubscribe(self, owner: str) -> None:
        for event_type, listeners in list(self._listeners.items()):
            self._listeners[event_type] = [listener for listener in listeners if listener.owner != owner]

    def emit(self, event: object) -> None:
        for listener in self._listeners.get(type(event), ()):
            try:
                listener.handler(event)
            except Exception:  # one subscriber's bug must not reach the emitter (a supervisor) nor the others
                log.exception("%s failed to handle %s", listener.owner, type(event).__name__)
