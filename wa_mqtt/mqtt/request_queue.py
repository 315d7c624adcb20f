"""Requests waiting to be served, within bounds: what a flood of requests can make the bridge hold.

One FIFO per target (an account, or `bridge`), served in arrival order, one request at a time; at most
`Limits.workers` targets are served at once, taking turns request by request when more have work. A
request is held (waiting or being served) only within `Limits`: `per_target` requests for one target,
`total` in all, `total_bytes` of payload in all (a request is always admitted when nothing is held, so
one large request is never refused). Beyond them `offer` holds nothing and says why, and the caller
answers `busy` at once: a flood costs bounded memory, and every request still gets an answer.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    per_target: int = 1000  # one account's requests waiting; ~1 MB held for small requests
    total: int = 10_000
    total_bytes: int = 256 * 1024 * 1024
    workers: int = 32  # targets served at once (each a task)


class RequestQueue(Generic[T]):
    """`offer` requests; `serve(target, item)` is awaited for each, in order per target."""

    def __init__(self, serve: Callable[[str, T], Awaitable[None]],
                 spawn: Callable[[Coroutine[Any, Any, None], str], object], limits: Limits = Limits()) -> None:
        self._serve = serve
        self._spawn = spawn
        self.limits = limits
        self._queues: dict[str, deque[tuple[T, int]]] = {}  # target -> its requests, the first being served
        self._turns: deque[str] = deque()  # targets with requests and no worker, in the order they got work
        self.workers = 0
        self.held = 0
        self.held_bytes = 0
        self.busy = 0  # requests refused since the start
        self._refusing = 0  # refused since the flood began (the first refusal while nothing was refused)

    def idle(self, target: str) -> bool:
        """Nothing of `target` is held (waiting or being served)."""
        return target not in self._queues

    def offer(self, target: str, item: T, size: int) -> str | None:
        """Hold `item` to be served after the target's earlier requests; None when held, else why not."""
        queue = self._queues.get(target)
        reason = None
        if queue is not None and len(queue) >= self.limits.per_target:
            reason = f"{len(queue)} requests are waiting for {target}"
        elif self.held >= self.limits.total or (self.held and self.held_bytes + size > self.limits.total_bytes):
            reason = f"{self.held} requests ({self.held_bytes} bytes) are waiting"
        if reason is not None:
            self.busy += 1
            self._refusing += 1
            if self._refusing == 1:
                log.warning("request flood: %s; answering busy until there is room", reason)
            return reason
        self.held += 1
        self.held_bytes += size
        if queue is None:
            self._queues[target] = deque([(item, size)])
            if self.workers < self.limits.workers:
                self.workers += 1
                self._spawn(self._work(target), f"requests-{target}")
            else:
                self._turns.append(target)
        else:
            queue.append((item, size))
        return None

    async def _work(self, target: str) -> None:
        """Serve `target`, then whichever target waits longest; one request per turn when others wait."""
        try:
            current: str | None = target
            while current is not None:
                queue = self._queues[current]
                item, size = queue[0]
                try:
                    await self._serve(current, item)
                except Exception:  # serve answers every failure itself: this is a bug, not a request's fault
                    log.exception("serving a request for %s failed", current)
                finally:
                    queue.popleft()
                    self.held -= 1
                    self.held_bytes -= size
                    if self._refusing and not self.held:
                        log.info("request flood over: all waiting requests served, %d answered busy", self._refusing)
                        self._refusing = 0
                if queue:
                    self._turns.append(current)
                else:
                    del self._queues[current]
                current = self._turns.popleft() if self._turns else None
        finally:
            self.workers -= 1
