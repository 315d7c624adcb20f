"""The sim engine with its store in PostgreSQL (`store.url`): what makes a cluster testable without
a shared sessions folder.

The sim keeps its device, LID map, message numbers, the ids WhatsApp already took, its groups and
its ban in a small SQLite file (engines/sim.py). With `store.url` that file is a working copy: its
bytes are kept in the account's PostgreSQL schema (`wa_<phone>.sim_store`, store/pg_sessions.py),
which is what counts.

- Opening a session copies PostgreSQL's version over the local file (the bridge that took the
  account over has none, or an old one). When PostgreSQL has none yet but the local file holds a
  device (a setup moving to `store.url`, a store written by a benchmark) the file is taken as it is
  and saved.
- After every call into the session (a request, a sim control, a start or stop), every event it
  emits and on close, a file that changed is saved, in one statement, before the caller hears of
  the result: what the bridge saw answered is in PostgreSQL, so a bridge killed right after loses
  nothing its successor needs. (A save the server missed is logged and made with the next change.)

One connection per engine (all the accounts of a bridge running the sims inside it, or the one
account of an engine child).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from ..accounts.store import store_files
from ..store import pg_sessions
from ..store.pg import Locked
from .base import EmitFn, EngineEvent
from .sim import SimEngine, SimSession
from .sim_store import read_device

log = logging.getLogger(__name__)


def account_of(store_path: Path) -> str:
    """The phone whose store this is: `sessions/<phone>/store.db` (accounts/store.py's layout)."""
    return Path(store_path).parent.name


class SimStoreMirror:
    """One account's sim store file and its copy in PostgreSQL."""

    def __init__(self, db: Locked, phone: str, store_path: Path) -> None:
        self._db = db
        self.phone = phone
        self.path = Path(store_path)
        self._saved: bytes | None = None  # digest of the content last saved or loaded

    def load(self) -> None:
        """PostgreSQL's copy over the local file; the local file saved when PostgreSQL has none."""
        data = self._db.read(lambda conn: pg_sessions.load_sim_on(conn, self.phone))
        if data is None:
            if read_device(self.path) is not None:
                log.info("%s: sim store taken from %s into PostgreSQL", self.phone, self.path)
                self.save(force=True)
            elif self.path.exists():
                self._remove_local()
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for side in store_files(self.path)[1:]:  # the local file's side files: not PostgreSQL's copy's
            side.unlink(missing_ok=True)
        temporary = self.path.with_name(self.path.name + ".pg")
        temporary.write_bytes(data)
        os.replace(temporary, self.path)
        self._saved = _digest(data)
        log.debug("%s: sim store loaded from PostgreSQL (%d bytes)", self.phone, len(data))

    def save(self, force: bool = False) -> None:
        """Save the file when it changed since it was last saved or loaded. A server that cannot be
        reached is logged, not raised: the file stays changed, so the next save tries again (the
        whole store each time, so a repeat is harmless)."""
        try:
            data = self.path.read_bytes()  # a few dozen KB: reading and hashing it costs microseconds
        except FileNotFoundError:
            return
        stamp = _digest(data)  # not the mtime: two writes within one clock tick would look like one
        if stamp == self._saved and not force:
            return
        device = read_device(self.path)
        try:  # an upsert of the whole store: as safe to repeat on a new connection as a read
            self._db.read(lambda conn: pg_sessions.save_sim_on(conn, self.phone, data, device[0] if device else None))
        except Exception as exc:  # noqa: BLE001 (PostgreSQL away: the bridge fences its engines meanwhile)
            log.warning("%s: sim store not saved to PostgreSQL (%s); saved with the next change",
                        self.phone, str(exc).strip())
            return
        self._saved = stamp

    def _remove_local(self) -> None:
        """A local file without a device and nothing in PostgreSQL: a stale leftover, not the account's."""
        for path in store_files(self.path):
            path.unlink(missing_ok=True)


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


class PgSimSession:
    """A SimSession whose store is saved to PostgreSQL after every call, event and close."""

    def __init__(self, inner: SimSession, mirror: SimStoreMirror) -> None:
        self._inner = inner
        self._mirror = mirror

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._inner, name)
        if not callable(value) or name.startswith("_"):
            return value

        @functools.wraps(value)
        def call(*args: Any, **kwargs: Any) -> Any:
            result = value(*args, **kwargs)
            if isinstance(result, Awaitable):
                return self._saving(result)
            self._mirror.save()
            return result

        return call

    def batch_sent_ids(self) -> None:
        """Not here: the store is saved to PostgreSQL after every call, so each send commits its own."""

    def commit_sent_ids(self) -> None:
        """Nothing waits (see `batch_sent_ids`)."""

    async def _saving(self, work: Awaitable[Any]) -> Any:
        try:
            return await work
        finally:
            self._mirror.save()

    async def close(self) -> None:
        try:
            await self._inner.close()
        finally:
            self._mirror.save()


class PgSimEngine:
    """SimEngine with every account's store in its PostgreSQL schema (see the module docstring)."""

    name = "sim"

    def __init__(self, inner: SimEngine, url: str) -> None:
        self._inner = inner
        self._url = url
        self._db: Locked | None = None

    def _conn(self) -> Locked:
        if self._db is None:
            self._db = Locked(self._url)
        return self._db

    def has_device(self, store_path: Path) -> bool:
        phone = account_of(store_path)
        try:
            known = self._conn().read(lambda conn: pg_sessions.has_device_on(conn, phone))
        except Exception as exc:  # noqa: BLE001 (no server now: "no device"; the next start asks again)
            log.warning("%s: session store in PostgreSQL unreadable: %s", phone, str(exc).strip())
            return False
        if known is not None:
            return known
        return read_device(store_path) is not None  # to be taken into PostgreSQL on open

    def open_session(self, phone: str, store_path: Path, emit: EmitFn) -> PgSimSession:
        mirror = SimStoreMirror(self._conn(), phone, store_path)
        mirror.load()

        def emit_saving(event: EngineEvent) -> None:
            emit(event)
            mirror.save()

        return PgSimSession(self._inner.open_session(phone, store_path, emit_saving), mirror)

    async def aclose(self) -> None:
        await self._inner.aclose()
        if self._db is not None:
            self._db.close()


def sim_engine_for(inner: SimEngine, store_url: str | None) -> SimEngine | PgSimEngine:
    """The sim engine itself without `store.url`, else the one keeping its stores in PostgreSQL."""
    return inner if store_url is None else PgSimEngine(inner, store_url)

