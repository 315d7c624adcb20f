"""The sim's persistent stores in `sessions/<phone>/store.db`: the linked device, the message-number
counter, the LID map (`SimLids`) and a temporary ban, each kept as WhatsApp or whatsmeow would keep it
(so they outlive an engine restart). The sent-id table lives with the session (`sim.SimSession`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from types import MappingProxyType

from .addressing import LID_SERVER


def open_store(store_path: Path) -> sqlite3.Connection:
    """The sim store, its device and message-number tables created if missing."""
    db = sqlite3.connect(store_path)
    db.execute(
        "CREATE TABLE IF NOT EXISTS sim_device (phone TEXT PRIMARY KEY, name TEXT, linked_at TEXT)"
    )
    db.execute("CREATE TABLE IF NOT EXISTS sim_ids (next INTEGER NOT NULL)")
    return db



def read_device(store_path: Path) -> tuple[str, str | None] | None:
    """(phone, name) of the linked device in a sim store, or None."""
    if not store_path.exists():
        return None
    try:
        with sqlite3.connect(f"file:{store_path}?mode=ro", uri=True) as db:
            row = db.execute("SELECT phone, name FROM sim_device LIMIT 1").fetchone()
    except sqlite3.DatabaseError:
        return None
    return (row[0], row[1]) if row else None


def write_device(store_path: Path, phone: str, name: str | None, now: datetime) -> None:
    """Link a device into a sim store (what a QR scan does; also used by tests and benchmarks)."""
    store_path.parent.mkdir(parents=True, exist_ok=True)
    db = open_store(store_path)
    try:
        with db:
            db.execute("DELETE FROM sim_device")
            db.execute("INSERT INTO sim_device VALUES (?, ?, ?)", (phone, name, now.isoformat()))
    finally:
        db.close()


def reserve_ids(store_path: Path, count: int) -> int:
    """Reserve `count` message numbers in a sim store and return the first; none is handed out twice."""
    db = open_store(store_path)
    try:
        with db:
            row = db.execute("SELECT next FROM sim_ids").fetchone()
            first = row[0] if row else 1
            db.execute("DELETE FROM sim_ids")
            db.execute("INSERT INTO sim_ids VALUES (?)", (first + count,))
    finally:
        db.close()
    return first


class SimLids:
    """The sim's LID map (in the store, like whatsmeow's `whatsmeow_lid_map`): a message that names its
    sender by phone and LID together teaches it the pair; later messages from that LID alone resolve to
    the phone. A LID never seen with a phone stays unknown."""

    def __init__(self, store_path: Path) -> None:
        self._store_path = store_path
        self._phones: dict[str, str] | None = None  # LID user → phone, loaded on first use

    def _load(self) -> dict[str, str]:
        if self._phones is None:
            db = self._db()
            try:
                self._phones = dict(db.execute("SELECT lid, phone FROM sim_lid_map").fetchall())
            finally:
                db.close()
        return self._phones

    def _db(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._store_path)
        db.execute("CREATE TABLE IF NOT EXISTS sim_lid_map (lid TEXT PRIMARY KEY, phone TEXT NOT NULL)")
        return db

    def phones(self) -> Mapping[str, str]:
        """LID user → phone, as known now (a read-only view: no copy per message)."""
        return MappingProxyType(self._load())

    def lid_of(self, phone: str) -> str | None:
        return next((f"{lid}@{LID_SERVER}" for lid, known in self._load().items() if known == phone), None)

    def learn(self, lid_user: str, phone: str) -> None:
        if self._load().get(lid_user) == phone:
            return
        db = self._db()
        try:
            with db:
                db.execute("INSERT OR REPLACE INTO sim_lid_map VALUES (?, ?)", (lid_user, phone))
        finally:
            db.close()
        self._load()[lid_user] = phone



def save_ban(store_path: Path, ban: tuple[str, datetime]) -> None:
    db = open_store(store_path)
    try:
        with db:
            db.execute("CREATE TABLE IF NOT EXISTS sim_ban (code TEXT NOT NULL, until TEXT NOT NULL)")
            db.execute("DELETE FROM sim_ban")
            db.execute("INSERT INTO sim_ban VALUES (?, ?)", (ban[0], ban[1].isoformat()))
    finally:
        db.close()


def load_ban(store_path: Path) -> tuple[str, datetime] | None:
    """The temporary ban the simulated WhatsApp holds against this account, if any."""
    if not store_path.exists():
        return None
    try:
        with sqlite3.connect(f"file:{store_path}?mode=ro", uri=True) as db:
            row = db.execute("SELECT code, until FROM sim_ban LIMIT 1").fetchone()
    except sqlite3.DatabaseError:  # no such table: never banned
        return None
    return (str(row[0]), datetime.fromisoformat(row[1])) if row else None


def unlink_device(store_path: Path) -> None:
    """Forget the linked device (a logout); the store's other tables stay."""
    if store_path.exists():
        db = open_store(store_path)
        try:
            with db:
                db.execute("DELETE FROM sim_device")
        finally:
            db.close()
