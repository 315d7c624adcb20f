"""Filesystem watching (watchdog): tells the event loop, debounced, that a folder or file changed.

watchdog runs its observer in a thread; every event only pokes the loop, and the callback runs on
the loop once the path has been quiet for `quiet` seconds (so an editor writing config.yaml in several
steps is seen once, complete). A callback that returns False is run again after another quiet period.
Watches are not recursive by default: every SQLite write below sessions/ would otherwise be an event
for this process to read (measured: a tenth of the bridge's CPU in a send benchmark).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

log = logging.getLogger(__name__)


class _Poke(FileSystemEventHandler):
    def __init__(self, poke: Callable[[str], None], only: str | None) -> None:
        self._poke = poke
        self._only = only

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        path = str(event.src_path)
        dest = str(getattr(event, "dest_path", "") or "")
        if self._only is None or Path(path).name == self._only or Path(dest).name == self._only:
            self._poke(path)


class Watcher:
    """Watch `folder` (recursively, or only the file named `only` in it); call `on_change()` debounced."""

    def __init__(self, folder: Path, on_change: Callable[[], Awaitable[bool | None]], *, only: str | None = None,
                 recursive: bool = False, quiet: float = 0.5) -> None:
        self._folder = folder
        self._on_change = on_change
        self._only = only
        self._recursive = recursive and only is None
        self._quiet = quiet
        self._observer: BaseObserver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._running: asyncio.Task[None] | None = None
        self._again = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._folder.mkdir(parents=True, exist_ok=True)
        observer = Observer()
        observer.schedule(_Poke(self._poke_threadsafe, self._only), str(self._folder), recursive=self._recursive)
        observer.daemon = True
        observer.start()
        self._observer = observer

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._observer is not None:
            self._observer.stop()
            await asyncio.to_thread(self._observer.join, 5)
            self._observer = None
        if self._running is not None:
            self._running.cancel()
            await asyncio.gather(self._running, return_exceptions=True)

    def _poke_threadsafe(self, _path: str) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._arm)

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer = self._loop.call_later(self._quiet, self._fire)

    def _fire(self) -> None:
        self._timer = None
        if self._running is not None and not self._running.done():
            self._again = True  # changed while the callback runs: run once more after it
            return
        self._running = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self._again = False
            try:
                settled = await self._on_change()
            except Exception:
                log.exception("handling a change under %s failed", self._folder)
                settled = True
            if settled is False:  # something is still being written: look again once it is quiet
                self._arm()
                return
            if not self._again:
                return
