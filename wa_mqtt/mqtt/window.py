"""The publish window: how many publishes may await their PUBACK at once, and which lane gets a free slot.

The broker says how many QoS 1 publishes it takes from us unacknowledged (MQTT v5 CONNACK
`ReceiveMaximum`; Mosquitto: 20). The link keeps that many in flight continuously, a new publish as
soon as any PUBACK comes back, instead of publishing a batch and waiting for all of its PUBACKs. The
difference is large on a broker that leaves Nagle's algorithm on (Mosquitto's default): the last
PUBACK of a batch waits there for our delayed ACK (up to ~40 ms), which bounded the bridge's
throughput to a batch per such wait (docs/performance.md). With publishes flowing continuously, the
packets we send carry the ACKs the broker waits for.

Two lanes share the window: `CONTROL` (retained state, responses, events, discovery) and `SPOOL`
(incoming messages, receipts). The spool never holds more than `size - reserved` slots, so a response
finds a slot at once however long the spool's backlog; when both lanes wait, slots go to them in the
order they asked (each lane is one task, so they alternate).
"""

from __future__ import annotations

import asyncio
from collections import deque
from enum import Enum
from typing import Any

DEFAULT_WINDOW = 20  # publishes in flight when the broker announces no receive maximum (MQTT 3.1.1)
MAX_WINDOW = 100  # and never more, whatever it announces (MQTT v5 allows up to 65,535)


class Lane(Enum):
    CONTROL = "control"
    SPOOL = "spool"


def reserved_for_control(size: int) -> int:
    """Slots the spool never takes: a quarter of the window, at least one (none in a window of one)."""
    return min(size - 1, max(1, size // 4))


class PublishWindow:
    """At most `size` publishes in flight; a slot of a lane is taken (`take`, or `acquire` to wait for
    one) before publishing and `release`d when the PUBACK (or the error) came back.

    Its own counters and queue of waiters, not two asyncio semaphores: a publish nearly always finds a
    slot free, and `take` gives it without a coroutine or a semaphore's bookkeeping (~3.5 slots a
    send). The rules are the semaphores' rules: a slot released goes to the waiters in the order they
    asked, each served as soon as the window allows it (a spool waiter at its limit does not hold up
    a control one behind it); `take` never passes a waiter (after every release and every new waiter,
    the waiters left are those that cannot be served: none of its lane can be, when it can)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a publish window holds at least one publish")
        self.size = size
        self.reserved = reserved_for_control(size)
        self._spool_limit = size - self.reserved
        self._free = size
        self._waiting: deque[tuple[Lane, asyncio.Future[None]]] = deque()
        self._spool = 0  # the spool's slots in flight (a counter, not a dict keyed by the lane: an Enum's
        # hash is a Python call, ~3.5 a send for `take` and as many for `release`)

    @property
    def in_flight(self) -> dict[Lane, int]:
        """Slots in flight, per lane."""
        return {Lane.CONTROL: self.size - self._free - self._spool, Lane.SPOOL: self._spool}

    def take(self, lane: Lane) -> bool:
        """A slot of `lane` now, when the window allows it (then True); False: wait with `acquire`."""
        if not self._free:
            return False
        if lane is Lane.SPOOL:
            if self._spool >= self._spool_limit:
                return False
            self._spool += 1
        self._free -= 1
        return True

    async def acquire(self, lane: Lane) -> None:
        if self.take(lane):
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append((lane, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # given a slot as it was cancelled: back
                self.release(lane)
            raise

    def release(self, lane: Lane) -> None:
        if lane is Lane.SPOOL:
            self._spool -= 1
        self._free += 1
        if self._waiting:
            self._serve()

    def _serve(self) -> None:
        """Every waiter the window now allows gets its slot, in the order they asked."""
        left: deque[tuple[Lane, asyncio.Future[None]]] = deque()
        for lane, waiter in self._waiting:
            if waiter.done():  # cancelled
                continue
            if self.take(lane):
                waiter.set_result(None)
            else:
                left.append((lane, waiter))
        self._waiting = left


def window_size(connack: Any) -> int:
    """Publishes in flight at most: the broker's receive maximum (CONNACK, MQTT v5), else 20."""
    announced = getattr(connack, "ReceiveMaximum", None) if connack is not None else None
    return max(1, min(MAX_WINDOW, announced or DEFAULT_WINDOW))
