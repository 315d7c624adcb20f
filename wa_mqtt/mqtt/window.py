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
    """At most `size` publishes in flight; `acquire` a slot of a lane before publishing, `release` it
    when the PUBACK (or the error) came back."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a publish window holds at least one publish")
        self.size = size
        self.reserved = reserved_for_control(size)
        self._slots = asyncio.Semaphore(size)
        self._spool_slots = asyncio.Semaphore(size - self.reserved)
        self.in_flight = {Lane.CONTROL: 0, Lane.SPOOL: 0}

    async def acquire(self, lane: Lane) -> None:
        if lane is Lane.SPOOL:
            await self._spool_slots.acquire()
            try:
                await self._slots.acquire()
            except BaseException:
                self._spool_slots.release()
                raise
        else:
            await self._slots.acquire()
        self.in_flight[lane] += 1

    def release(self, lane: Lane) -> None:
        self.in_flight[lane] -= 1
        self._slots.release()
        if lane is Lane.SPOOL:
            self._spool_slots.release()


def window_size(connack: Any) -> int:
    """Publishes in flight at most: the broker's receive maximum (CONNACK, MQTT v5), else 20."""
    announced = getattr(connack, "ReceiveMaximum", None) if connack is not None else None
    return max(1, min(MAX_WINDOW, announced or DEFAULT_WINDOW))
