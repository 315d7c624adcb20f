"""Background tasks with an owner: started by one part, awaited or cancelled by it at shutdown, and
never failing silently (an exception is logged with the task's name)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any


class BackgroundTasks:
    def __init__(self, log: logging.Logger) -> None:
        self._log = log
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, work: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.error("%s failed", task.get_name(), exc_info=task.exception())

    async def wait(self) -> None:
        """Until every task started so far has finished."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.wait()

    async def finish(self, timeout: float) -> None:
        """Let the running tasks end by themselves for up to `timeout` seconds, then cancel the rest
        (logged: a shutdown that had to cut work short says so)."""
        if self._tasks:
            _, late = await asyncio.wait(list(self._tasks), timeout=timeout)
            if late:
                self._log.warning("%d tasks still running after %g s; cancelled: %s", len(late), timeout,
                                  ", ".join(sorted(task.get_name() for task in late)[:5]))
        await self.cancel()
