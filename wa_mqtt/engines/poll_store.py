"""The options of the polls an account sent or received, kept on disk so a vote that comes days later
(or after a restart) can be shown as option texts: WhatsApp's encrypted vote names each chosen option
only by the SHA-256 of its text.

One small SQLite file beside the account's store (`sessions/<phone>/polls.db`), bounded to the newest
`MAX_POLLS` polls. Used by the neonize engine; pure translation (hashes to texts) is `resolve_vote`.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

MAX_POLLS = 5000  # polls remembered per account; the oldest are forgotten first
FILE_NAME = "polls.db"


def option_hash(option: str) -> bytes:
    """How a vote names an option: SHA-256 of its UTF-8 text (whatsmeow's HashPollOptions)."""
    return hashlib.sha256(option.encode()).digest()


def resolve_vote(options: Iterable[str] | None, hashes: Iterable[bytes]) -> tuple[list[str], list[str]]:
    """(option texts selected, in the poll's order; hex hashes of options not in `options`)."""
    chosen = set(hashes)
    known = list(options or [])
    selected = [option for option in known if option_hash(option) in chosen]
    found = {option_hash(option) for option in selected}
    return selected, sorted(h.hex() for h in chosen - found)


class PollStore:
    """`remember(poll_id, options, now)` and `options(poll_id)`; one connection, opened per call."""

    def __init__(self, path: Path, max_polls: int = MAX_POLLS) -> None:
        self.path = Path(path)
        self._max = max_polls

    @classmethod
    def beside(cls, store_path: Path) -> PollStore:
        """The poll store of the account whose WhatsApp store is `store_path`."""
        return cls(Path(store_path).parent / FILE_NAME)

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=15)
        db.execute("CREATE TABLE IF NOT EXISTS polls (id TEXT PRIMARY KEY, options TEXT NOT NULL, "
                   "created_at TEXT NOT NULL)")
        return db

    def remember(self, poll_id: str, options: list[str], now: datetime) -> None:
        db = self._open()
        try:
            with db:
                db.execute("INSERT OR REPLACE INTO polls VALUES (?, ?, ?)",
                           (poll_id, json.dumps(options, ensure_ascii=False), now.isoformat()))
                db.execute("DELETE FROM polls WHERE rowid NOT IN "
                           "(SELECT rowid FROM polls ORDER BY created_at DESC, rowid DESC LIMIT ?)", (self._max,))
        finally:
            db.close()

    def options(self, poll_id: str) -> list[str] | None:
        if not self.path.exists():
            return None
        db = self._open()
        try:
            row = db.execute("SELECT options FROM polls WHERE id = ?", (poll_id,)).fetchone()
        finally:
            db.close()
        if row is None:
            return None
        loaded = json.loads(row[0])
        return [str(o) for o in loaded] if isinstance(loaded, list) else None
