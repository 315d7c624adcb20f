"""The bounded request queue: what it holds, what it refuses, the order it serves in."""

from __future__ import annotations

import asyncio
import logging

from wa_mqtt.mqtt.request_queue import Limits, RequestQueue
from wa_mqtt.tasks import BackgroundTasks


async def test_request_queue_bounds_what_it_holds_and_serves_everything_in_order() -> None:
    limits = Limits(per_target=5, total=8, total_bytes=1000, workers=2)
    release = asyncio.Event()
    served: list[tuple[str, int]] = []
    peak_workers = 0

    async def serve(target: str, item: int) -> None:
        nonlocal peak_workers
        peak_workers = max(peak_workers, queue.workers)
        await release.wait()
        served.append((target, item))

    tasks = BackgroundTasks(logging.getLogger("test"))
    queue: RequestQueue[int] = RequestQueue(serve, tasks.spawn, limits)
    admitted: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    refused = []
    for n in range(20):
        target = "a" if n < 10 else ("b" if n < 17 else "c")
        reason = queue.offer(target, n, 10)
        (admitted[target].append(n) if reason is None else refused.append(reason))
        assert queue.held <= limits.total and queue.workers <= limits.workers
    assert admitted == {"a": [0, 1, 2, 3, 4], "b": [10, 11, 12], "c": []}  # 5 for a (per target), 8 in all
    assert "waiting for a" in refused[0] and queue.busy == len(refused) == 12
    assert queue.offer("c", 99, 2000) is not None  # over the byte budget while others are held
    release.set()
    await tasks.wait()
    assert queue.held == 0 and queue.held_bytes == 0 and queue.workers == 0
    assert [n for t, n in served if t == "a"] == admitted["a"] and [n for t, n in served if t == "b"] == admitted["b"]
    assert peak_workers <= limits.workers
    assert queue.offer("c", 100, 5000) is None  # nothing held: even an oversized request is taken
    await tasks.wait()
    assert served[-1] == ("c", 100)


async def test_request_queue_takes_turns_when_more_targets_than_workers_have_work() -> None:
    order: list[str] = []

    async def serve(target: str, item: int) -> None:
        order.append(target)
        await asyncio.sleep(0)

    tasks = BackgroundTasks(logging.getLogger("test"))
    queue: RequestQueue[int] = RequestQueue(serve, tasks.spawn, Limits(workers=1))
    for n in range(3):
        for target in ("a", "b", "c"):
            queue.offer(target, n, 1)
    await tasks.wait()
    assert order == ["a", "b", "c"] * 3  # one request per turn: no target waits behind another's backlog
