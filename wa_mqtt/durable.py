"""Opening the bridge's own SQLite files (spool, outbox, dedup ids): WAL, private, one transaction helper.

These files hold message bodies and recipients, so they are created 0600 (SQLite gives the -wal and
-shm files the database file's permissions). `synchronous=NORMAL` in WAL mode makes every committed
transaction survive a process crash or kill (the WAL is in the OS before COMMIT returns); only a
power loss or kernel crash can lose the last commits. `FULL` also fsyncs the WAL on every commit.

Checkpoints (copying the WAL into the database, with an fsync) run on a thread of their own: left to
SQLite, every ~1,000th commit does one inline and stalls the event loop for ~10 ms (measured: the
whole p99 of inbound latency).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

Synchronous = Literal["NORMAL", "FULL"]
CHECKPOINT_EVERY = 0.5  # seconds between background checkpoints (when the WAL was written to)
CHECKPOINT_WAL_CAP = 8 << 20  # WAL frames left over this size: the next checkpoint holds writers back
WAL_SIZE_LIMIT = 4 << 20  # the WAL file is cut back to this size when it starts over
BUSY_TIMEOUT_MS = 5000  # how long a statement waits for a lock another connection holds
RESTART_WAIT_MS = 100  # a RESTART's whole budget for waiting: for the writer, then (holding writers back) for readers


class WalCheckpointer:
    """Checkpoints one WAL database from its own thread and connection while the owner keeps writing.

    A PASSIVE checkpoint never blocks writers, and the first commit after a complete one starts the WAL
    over. Under writes that never pause that commit never comes: each PASSIVE copies what was there
    when it began, the writer commits more meanwhile, and the WAL grows (to 30 to 40 MB in the send
    benchmark, measured). So once the WAL file is past `WAL_SIZE_LIMIT`, a PASSIVE that copied all it
    saw is followed at once by a RESTART: writers wait only while it copies the frames committed during
    the PASSIVE and syncs, and the writer's next commit starts the WAL over (cutting the file back to
    `WAL_SIZE_LIMIT`). When PASSIVEs fall behind (more than `cap` bytes of frames left over, or
    four times `cap` in the WAL), the next checkpoint is a RESTART straight away (the stall SQLite would have
    caused inline, but only under sustained overload).

    A RESTART holds writers back while it waits for readers, so it waits `RESTART_WAIT_MS` at most,
    not SQLite's usual 5 s: another process's open read transaction must not stall the event loop for
    seconds. One that gave up is tried again only once the WAL grew by `WAL_SIZE_LIMIT` more."""

    def __init__(self, path: Path, every: float = CHECKPOINT_EVERY, cap: int = CHECKPOINT_WAL_CAP) -> None:
        self._wal = Path(f"{path}-wal")
        self._every = every
        self._cap = cap
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        self._page_size = int(self._conn.execute("PRAGMA page_size").fetchone()[0])
        self._restart_next = False  # the PASSIVEs fall behind: the next checkpoint is a RESTART
        self._restart_past = WAL_SIZE_LIMIT  # no RESTART while the WAL file is this size or smaller
        self._seen: tuple[int, int] | None = None  # the WAL's (mtime, size) when last found fully checkpointed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"checkpoint-{Path(path).name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.checkpoint()

    def checkpoint(self) -> tuple[int, int] | None:
        """One checkpoint if the WAL changed: (frames in the WAL, frames copied), or None when skipped."""
        try:
            stat = self._wal.stat()
            if (stat.st_mtime_ns, stat.st_size) == self._seen:
                return None
            if stat.st_size <= WAL_SIZE_LIMIT:
                self._restart_past = WAL_SIZE_LIMIT  # it started over (or never grew) since a RESTART gave up
            restart = self._restart_next and stat.st_size > self._restart_past
            if not restart:
                busy, frames, copied = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if busy:  # another connection is checkpointing it: the next round tries again
                    return None
                restart = frames == copied and stat.st_size > self._restart_past  # caught up: start it over
            if restart:
                log.debug("checkpoint of %s (%d bytes): RESTART", self._wal, stat.st_size)
                busy, frames, copied = self._restart()
                self._restart_past = stat.st_size + WAL_SIZE_LIMIT if busy else WAL_SIZE_LIMIT
        except FileNotFoundError:
            return None
        except sqlite3.Error as exc:  # closing, or the disk: the next round tries again
            log.debug("checkpoint of %s skipped: %s", self._wal, exc)
            return None
        # a RESTART that went through reports the WAL it copied, which the next commit starts over
        self._restart_next = not (restart and not busy) and (
            (frames - copied) * self._page_size > self._cap or frames * self._page_size > 4 * self._cap)
        if frames == copied:
            self._seen = (stat.st_mtime_ns, stat.st_size)
        return frames, copied

    def _restart(self) -> tuple[bool, int, int]:
        """PRAGMA wal_checkpoint(RESTART) under `RESTART_WAIT_MS` of busy timeout: (gave up, frames in
        the WAL, frames copied)."""
        self._conn.execute(f"PRAGMA busy_timeout={RESTART_WAIT_MS}")
        try:
            busy, frames, copied = self._conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        finally:
            self._conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return bool(busy), int(frames), int(copied)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        self._conn.close()


class WalConnection(sqlite3.Connection):
    """An SQLite connection whose WAL is checkpointed in the background; `close()` stops that too."""

    checkpointer: WalCheckpointer | None = None

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.close()
            self.checkpointer = None
        super().close()


def open_wal(path: Path, synchronous: Synchronous = "NORMAL", page_size: int | None = None) -> sqlite3.Connection:
    """Open (creating 0600 if missing) an SQLite file in WAL mode, autocommit, usable from any thread,
    checkpointed in the background (see the module's docstring). `page_size`: what a new (empty) file
    gets, before WAL mode fixes it; an existing file keeps its own. A commit writes every page it
    changed whole to the WAL, so files of small rows written often are cheaper with small pages.

    The caller serialises access (one connection, one owner); transactions go through `transaction()`.
    """
    if synchronous not in ("NORMAL", "FULL"):
        raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)
    new = path.stat().st_size == 0
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, factory=WalConnection)
    try:
        if new and page_size is not None:
            conn.execute(f"PRAGMA page_size={int(page_size)}")
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"{path}: cannot switch to WAL (journal_mode={mode})")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        conn.checkpointer = WalCheckpointer(path)
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (which is re-raised), a failed COMMIT
    included (SQLITE_FULL there can leave the transaction open: SQLite asks for an explicit ROLLBACK)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
