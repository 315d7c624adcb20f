"""What the page knows beyond the accounts' own statuses (pure, no I/O): the QR or pair code on offer
for each account, each account's last event and message counts, and the recent events. The web page
extension feeds it from the bus and asks it for the cards and the event list it pushes."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from datetime import datetime

from ..model import Status
from .view import Counters, LastEvent, Pairing, account_view, event_view

RECENT_EVENTS = 50  # events the page lists


class Board:
    """One bridge's page state; every method is called from the event loop's thread."""

    def __init__(self, recent: int = RECENT_EVENTS) -> None:
        self._pairing: dict[str, Pairing] = {}
        self._last: dict[str, LastEvent] = {}
        self._counts: dict[str, tuple[int, int]] = {}
        self._events: deque[dict[str, object]] = deque(maxlen=recent)
        self._serial = 0  # numbers each QR / code offered, so the page reloads the image only for a new one

    def offer(self, phone: str, kind: str, code: str) -> None:
        """A QR (`kind="qr"`) or a pair code is on offer; an empty one is none."""
        if not code:
            self.clear(phone)
            return
        self._serial += 1
        self._pairing[phone] = Pairing(kind, code, self._serial)

    def clear(self, phone: str) -> None:
        self._pairing.pop(phone, None)

    def forget(self, phone: str) -> None:
        """The account is gone."""
        for held in (self._pairing, self._last, self._counts):
            held.pop(phone, None)

    def qr(self, phone: str) -> str | None:
        """The text of the QR on offer, if a QR is."""
        pairing = self._pairing.get(phone)
        return pairing.code if pairing is not None and pairing.kind == "qr" else None

    def counted(self, phone: str, messages_in: int, messages_out: int, now: datetime) -> None:
        """The account's counters changed: a message came in or went out (they start at 0 with the bridge)."""
        before = self._counts.get(phone, (0, 0))
        if (messages_in, messages_out) != before:
            self._last[phone] = LastEvent("message_in" if messages_in > before[0] else "message_out", now)
        self._counts[phone] = (messages_in, messages_out)

    def recent(self, type_: str, data: Mapping[str, object], now: datetime, account: str | None) -> dict[str, object]:
        """An event for the list, newest first; also `account`'s last event when it names one. Its view."""
        view = event_view(type_, data, now)
        self._events.appendleft(view)
        if account is not None:
            self._last[account] = LastEvent(type_, now)
        return view

    @property
    def events(self) -> list[dict[str, object]]:
        return list(self._events)

    def card(self, status: Status, counters: Counters) -> dict[str, object]:
        return account_view(status, counters, self._pairing.get(status.phone), self._last.get(status.phone))
