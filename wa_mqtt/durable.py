"""Opening the bridge's own SQLite files (spool, outbox, dedup ids): WAL, private, one transaction helper.

These files hold message bodies and recipients, so they are created 0600 (SQLite gives the -wal and
-shm files the database file's permissions). `synchronous=NORMAL` in WAL mode makes every committed
transaction survive a process crash or kill (the WAL is in the OS before COMMIT returns); only a
power loss or kernel crash can lose the last commits. `FULL` also fsyncs the WAL on every commit.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

Synchronous = Literal["NORMAL", "FULL"]


def open_wal(path: Path, synchronous: Synchronous = "NORMAL") -> sqlite3.Connection:
    """Open (creating 0600 if missing) an SQLite file in WAL mode, autocommit, usable from any thread.

    The caller serialises access (one connection, one owner); transactions go through `transaction()`.
    """
    if synchronous not in ("NORMAL", "FULL"):
        raise ValueError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    os.chmod(path, 0o600)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"{path}: cannot switch to WAL (journal_mode={mode})")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA busy_timeout=5000")
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (which is re-raised)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
