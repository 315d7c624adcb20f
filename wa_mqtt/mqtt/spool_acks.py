"""Durable publishes after the broker: which prefix of the spool it acknowledged (`SpoolAcks`), and
the `"redelivered": true` mark on a copy it may have received before (pure)."""

from __future__ import annotations

import json
from collections import deque


def redelivered_copy(payload: bytes) -> bytes:
    """A spooled payload that may have reached the broker before: a JSON object gets `"redelivered":
    true` (compact, as the bridge writes it); anything else goes out unchanged."""
    try:
        data = json.loads(payload)
    except ValueError:
        return payload
    if not isinstance(data, dict):
        return payload
    data["redelivered"] = True
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


class SpoolAcks:
    """Which prefix of the spool the broker has acknowledged. PUBACKs come back in any order, but the
    spool removes a prefix (`ack(seq)`: that entry and every older one), so an entry leaves only once
    all older ones are acknowledged too; the ones acknowledged past the prefix are remembered, and
    not published again after a reconnect, until the prefix reaches them."""

    def __init__(self) -> None:
        self._order: deque[int] = deque()  # entries read on this connection, oldest first, not yet acked
        self._done: set[int] = set()  # acknowledged, past the prefix

    def new_connection(self) -> None:
        self._order.clear()

    def read(self, seq: int) -> bool:
        """The publisher reads entry `seq` (in spool order): True to publish it, False when the broker
        acknowledged it on an earlier connection (then report it `acked` again to move the prefix)."""
        self._order.append(seq)
        return seq not in self._done

    def acked(self, seq: int) -> int | None:
        """The broker acknowledged `seq`: the newest entry the spool may now remove up to, or None."""
        self._done.add(seq)
        upto = None
        while self._order and self._order[0] in self._done:
            upto = self._order.popleft()
            self._done.discard(upto)
        return upto
