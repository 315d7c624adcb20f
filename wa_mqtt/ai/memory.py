"""What AI auto-replies remember between messages, on disk (`<data_dir>/ai.db`), bounded:

- each chat's recent exchanges (`history`): the newest `KEPT_PER_CHAT` messages of a chat, each cut to
  `KEPT_CHARS` characters, forgotten `FORGET_AFTER` of silence; the `openai` provider sends the last
  `history` of them as context;
- each chat's Home Assistant `conversation_id`, so a follow-up ("and the bedroom?") continues it.

Keyed by account and chat. Blocking SQLite calls: run them in a thread (`asyncio.to_thread`); one
lock serialises them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from ..durable import open_wal, transaction

KEPT_PER_CHAT = 100
KEPT_CHARS = 8000
FORGET_AFTER = timedelta(days=30)
FILE_NAME = "ai.db"

Role = Literal["user", "assistant"]


@dataclass(frozen=True, slots=True)
class Turn:
    """One message of a chat's history: the user's (`user`) or the AI's answer (`assistant`)."""

    role: Role
    content: str


class ChatMemory:
    """The AI's memory of each chat; see the module docstring. One connection, closed by `close`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()  # calls come from worker threads (asyncio.to_thread)
        self._db = open_wal(self.path)  # private (0600): it holds conversations; NORMAL: context, not records
        with transaction(self._db):
            self._db.execute("CREATE TABLE IF NOT EXISTS history (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                             "account TEXT NOT NULL, chat TEXT NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL, "
                             "at TEXT NOT NULL)")
            self._db.execute("CREATE INDEX IF NOT EXISTS history_chat ON history (account, chat, id)")
            self._db.execute("CREATE INDEX IF NOT EXISTS history_at ON history (at)")
            self._db.execute("CREATE TABLE IF NOT EXISTS conversations (account TEXT NOT NULL, chat TEXT NOT NULL, "
                             "conversation_id TEXT NOT NULL, at TEXT NOT NULL, PRIMARY KEY (account, chat))")

    def close(self) -> None:
        self._db.close()

    def history(self, account: str, chat: str, count: int) -> list[Turn]:
        """The last `count` messages of the chat, oldest first."""
        if count <= 0:
            return []
        with self._lock:
            rows = self._db.execute("SELECT role, content FROM history WHERE account = ? AND chat = ? "
                                    "ORDER BY id DESC LIMIT ?", (account, chat, count)).fetchall()
        return [Turn(role, content) for role, content in reversed(rows)]

    def append(self, account: str, chat: str, turns: list[Turn], now: datetime) -> None:
        """Add an exchange; keep the chat's newest KEPT_PER_CHAT, forget what is older than FORGET_AFTER."""
        with self._lock, transaction(self._db):
            self._db.executemany("INSERT INTO history (account, chat, role, content, at) VALUES (?, ?, ?, ?, ?)",
                                 [(account, chat, t.role, t.content[:KEPT_CHARS], now.isoformat()) for t in turns])
            self._db.execute("DELETE FROM history WHERE account = ? AND chat = ? AND id NOT IN (SELECT id FROM history "
                             "WHERE account = ? AND chat = ? ORDER BY id DESC LIMIT ?)",
                             (account, chat, account, chat, KEPT_PER_CHAT))
            self._forget(now)

    def conversation(self, account: str, chat: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT conversation_id FROM conversations WHERE account = ? AND chat = ?",
                                   (account, chat)).fetchone()
        return str(row[0]) if row else None

    def set_conversation(self, account: str, chat: str, conversation_id: str, now: datetime) -> None:
        with self._lock, transaction(self._db):
            self._db.execute("INSERT OR REPLACE INTO conversations VALUES (?, ?, ?, ?)",
                             (account, chat, conversation_id, now.isoformat()))
            self._forget(now)

    def _forget(self, now: datetime) -> None:
        cutoff = (now - FORGET_AFTER).isoformat()
        self._db.execute("DELETE FROM history WHERE at < ?", (cutoff,))
        self._db.execute("DELETE FROM conversations WHERE at < ?", (cutoff,))
