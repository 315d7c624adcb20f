"""The neonize (whatsmeow) store as the bridge reads it without Go: the DSN neonize is given, and the
linked devices' JIDs (read-only; the parent process asks it without loading the engine)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from .base import EngineError


def store_dsn(store_path: Path) -> str:
    """The store name neonize passes to Go (`file:<name>?_foreign_keys=on` is built there)."""
    path = str(Path(store_path).absolute())
    if "?" in path or "#" in path:
        raise EngineError(f"store path may not contain '?' or '#': {path}")
    # Go appends `?_foreign_keys=on`; the trailing `&` turns that into an ignored key.
    return f"{path}?_busy_timeout=15000&_foreign_keys=on&"


def stored_device_jids(store_path: Path) -> list[str]:
    """The linked devices' JIDs (`4915…:7@s.whatsapp.net`) in a store, read-only; [] when none or no store."""
    path = Path(store_path)
    if not path.is_file():
        return []
    with sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True) as db:
        has_table = db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='whatsmeow_device'").fetchone()
        if not has_table:
            return []
        return [row[0] for row in db.execute("SELECT jid FROM whatsmeow_device ORDER BY rowid")]

