"""The sessions/ folder: one folder per account (store.db, account.json, backups/), its metadata and permissions.

Layout (contract section 9):
    sessions/<phone>/store.db        the engine's session store (SQLite)
    sessions/<phone>/account.json    phone, name, engine, created_at, last_connected
    sessions/<phone>/backups/        consistent copies of store.db
    sessions/<phone>/store.db-*      the store's side files (STORE_SIDE_FILES): they go with it
Folders are 0700 and files 0600: a store is a key to someone's WhatsApp.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import BridgeError, ErrorCode
from ..model import is_phone, utc_iso

log = logging.getLogger(__name__)

STORE_FILE = "store.db"
META_FILE = "account.json"
BACKUP_DIR = "backups"
# SQLite's side files of store.db, and the sim engine child's sent-id log (engines/sim_sent.py): part of
# that store file (removed with it, set aside with it); another store in its place must not take them.
STORE_SIDE_FILES = ("-journal", "-wal", "-shm", "-sent")


def store_files(store: Path) -> tuple[Path, ...]:
    """`store` and its side files (STORE_SIDE_FILES)."""
    return (store, *(store.with_name(store.name + side) for side in STORE_SIDE_FILES))


class StorageError(BridgeError, OSError):
    """The sessions folder cannot be written (read-only, permissions, disk full): response `storage_error`.
    Also an OSError: callers that catch failed writes catch it too."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(ErrorCode.STORAGE_ERROR, message)


@dataclass(frozen=True)
class AccountPaths:
    root: Path

    @property
    def store(self) -> Path:
        return self.root / STORE_FILE

    @property
    def meta(self) -> Path:
        return self.root / META_FILE

    @property
    def backups(self) -> Path:
        return self.root / BACKUP_DIR


class SessionStore:
    """Owns `sessions_dir`: which accounts exist, their folders and account.json."""

    def __init__(self, sessions_dir: Path) -> None:
        self.root = Path(sessions_dir)
        self._meta_lock = threading.Lock()  # account.json is written from the loop and from worker threads

    def ensure_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def paths(self, phone: str) -> AccountPaths:
        if not is_phone(phone):
            raise ValueError(f"not a phone number: {phone!r}")
        return AccountPaths(self.root / phone)

    def account_phones(self) -> list[str]:
        """Phones with an account folder (a store.db or an account.json), sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            entry.name for entry in self.root.iterdir()
            if entry.is_dir() and is_phone(entry.name)
            and ((entry / STORE_FILE).exists() or (entry / META_FILE).exists())
        )

    def prepare(self, phone: str) -> AccountPaths:
        """Create the account folder (0700) if needed and return its paths."""
        paths = self.paths(phone)
        self.ensure_root()
        paths.root.mkdir(mode=0o700, exist_ok=True)
        os.chmod(paths.root, 0o700)
        return paths

    def ensure_writable(self, phone: str) -> AccountPaths:
        """Make sure the account's folder exists and can be written (a test file is written and removed);
        raise `StorageError` naming the folder and the cause otherwise. A folder made here is removed
        again on failure, so a failed account creation leaves nothing behind."""
        paths = self.paths(phone)
        existed = paths.root.exists()
        try:
            self.prepare(phone)
            fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=paths.root)
            try:
                os.write(fd, b"ok")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as exc:
            if not existed and paths.root.exists():
                shutil.rmtree(paths.root, ignore_errors=True)
            raise StorageError(_describe_failure(paths.root, exc)) from exc
        return paths

    def secure(self, phone: str) -> None:
        """Re-apply 0700 on folders and 0600 on files of an account (after an engine wrote them)."""
        paths = self.paths(phone)
        if not paths.root.exists():
            return
        for folder, _dirs, files in os.walk(paths.root):
            os.chmod(folder, 0o700)
            for name in files:
                with contextlib.suppress(FileNotFoundError):  # an SQLite -journal/-wal file that just went away
                    os.chmod(os.path.join(folder, name), 0o600)

    def read_meta(self, phone: str) -> dict[str, Any]:
        try:
            data = json.loads(self.paths(phone).meta.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def write_meta(self, phone: str, /, **changes: Any) -> dict[str, Any]:
        """Merge `changes` into account.json (atomic replace, 0600).

        Thread-safe: the read-merge-write is one step under a lock, and each write goes through its own
        temporary file, so a write from a worker thread and one from the loop can neither collide nor
        lose each other's keys.
        """
        try:
            return self._write_meta(phone, changes)
        except StorageError:
            raise
        except OSError as exc:
            raise StorageError(_describe_failure(self.paths(phone).root, exc)) from exc

    def _write_meta(self, phone: str, changes: dict[str, Any]) -> dict[str, Any]:
        paths = self.prepare(phone)
        with self._meta_lock:
            meta = self.read_meta(phone)
            meta.setdefault("phone", phone)
            meta.setdefault("created_at", utc_iso(datetime.now(UTC)))
            for key, value in changes.items():
                meta[key] = utc_iso(value) if isinstance(value, datetime) else value
            fd, tmp = tempfile.mkstemp(prefix=".account-", suffix=".tmp", dir=paths.root)  # mode 0600
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    json.dump(meta, handle, indent=2, sort_keys=True)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, paths.meta)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return meta

    def remove(self, phone: str) -> None:
        """Delete the account's folder entirely (store, metadata, backups)."""
        paths = self.paths(phone)
        if paths.root.exists():
            shutil.rmtree(paths.root)
            log.info("removed session folder of %s", phone)


def _describe_failure(folder: Path, exc: OSError) -> str:
    """`cannot write the session folder <folder>: <cause>`, with what to check for that cause."""
    cause = exc.strerror or str(exc)
    if exc.errno == errno.EROFS:
        return f"cannot write the session folder {folder}: {cause} (its file system is mounted read-only)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        where = next((p for p in (folder, *folder.parents) if p.exists()), folder)
        try:
            info = where.stat()
            owner = f"{where} has mode {info.st_mode & 0o7777:04o} and owner uid {info.st_uid}; "
        except OSError:
            owner = ""
        return (f"cannot write the session folder {folder}: {cause} ({owner}the bridge runs as uid {os.geteuid()}; "
                "an immutable attribute (chattr +i) stops root too)")
    return f"cannot write the session folder {folder}: {cause}"
