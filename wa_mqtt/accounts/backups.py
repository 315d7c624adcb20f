"""Session store safety: consistent backups (SQLite online backup API), integrity checks, restore.

A store is `sessions/<phone>/store.db` and its backups live in `sessions/<phone>/backups/` (see
store.AccountPaths). Backups are named `store-<UTC yyyymmddThhmmssZ>[-n].db`, verified with
`PRAGMA integrity_check` before they count, kept newest `keep`, files 0600 in a 0700 folder, and
written in rollback-journal mode so a backup is one self-contained file.

Restore never deletes: the broken store (and its -wal, -journal and the sim's sent-id log -sent) is set
aside as `store.db.corrupt-<stamp>`. The restored store knows the sent ids its backup knew, not the old
store's logged ones (as it knows none of the old store's stored ones: they were that file's).
The engine must not hold the store open during a restore. Functions are synchronous and take
milliseconds for a session store; call them via `asyncio.to_thread` from the event loop.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from .store import STORE_SIDE_FILES

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

log = logging.getLogger(__name__)

SQLITE_HEADER = b"SQLite format 3\x00"
_BACKUP_NAME = re.compile(r"^(?P<stem>.+)-(?P<stamp>\d{8}T\d{6}Z)(?:-(?P<n>\d+))?\.db(?:\.enc)?$")
ENCRYPTED_SUFFIX = ".enc"


class BackupError(Exception):
    """A backup could not be made or did not verify (nothing is left behind)."""


def backup_store(store: Path, backups_dir: Path, keep: int, now: datetime, key: bytes | None = None) -> Path:
    """Copy `store` consistently into `backups_dir`, verify it, keep the newest `keep`; the new backup's path.

    With `key` (a Fernet key, `backups.encryption_key`) the verified copy is encrypted at rest as
    `store-<stamp>.db.enc` and decrypted again to prove it before it counts."""
    if keep < 1:
        raise ValueError("keep must be at least 1")
    store, backups_dir = Path(store), Path(backups_dir)
    if not store.is_file():
        raise BackupError(f"no store at {store}")
    _private_dir(backups_dir)
    target = _next_name(backups_dir, store.stem, _stamp(now), ".db.enc" if key else ".db")
    tmp = backups_dir / f".{target.name}.tmp"
    try:
        _copy(store, tmp)
        if reason := check_store(tmp):
            raise BackupError(f"backup of {store} did not verify: {reason}")
        if key is not None:
            plain = tmp.read_bytes()
            _write_private(tmp, _fernet(key).encrypt(plain))
            if _fernet(key).decrypt(tmp.read_bytes()) != plain:
                raise BackupError(f"encrypted backup of {store} did not decrypt to the same bytes")
        os.replace(tmp, target)
    except BaseException as exc:  # a full disk among others: nothing half-written stays behind
        for leftover in (tmp, Path(f"{tmp}-journal")):
            _unlink(leftover)
        if isinstance(exc, (sqlite3.Error, OSError)):
            raise BackupError(f"cannot back up {store}: {exc}") from exc
        raise
    _fsync_dir(backups_dir)
    for old in list_backups(backups_dir)[keep:]:
        if old != target:  # a clock behind older stamps must not prune the copy just made
            _unlink(old)
    log.debug("backed up %s to %s", store, target.name)  # the caller says it, with the account
    return target


def check_store(path: Path) -> str | None:
    """None when `path` is a readable SQLite database with tables that passes integrity_check, else why not."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            return "not a regular file"
        if size == 0:
            return "empty file"
        with path.open("rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable: {exc}"
    if header != SQLITE_HEADER:
        return "not an SQLite database"
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            problems = [row[0] for row in conn.execute("PRAGMA integrity_check").fetchall()]
            tables = conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return f"unreadable: {exc}"
    if problems != ["ok"]:
        return "integrity check failed: " + "; ".join(str(p) for p in problems[:3])
    if not tables:
        return "no tables"
    return None


def list_backups(backups_dir: Path) -> list[Path]:
    """Backups in `backups_dir`, newest first (by the UTC stamp in the name, then its suffix)."""
    try:
        names = os.listdir(backups_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = [(m["stamp"], int(m["n"] or 0), name) for name in names if (m := _BACKUP_NAME.match(name))]
    return [Path(backups_dir) / name for _stamp_, _n, name in sorted(found, reverse=True)]


def restore_from_backup(store: Path, backups_dir: Path, name: str | None = None,
                        *, now: datetime | None = None, key: bytes | None = None) -> Path | None:
    """Put the named backup, or the newest good one, in place of `store`; the backup used, or None.

    The old store (if any) is kept as `store.db.corrupt-<stamp>` (its -wal, -journal, -sent alongside),
    its -shm removed.
    """
    store, backups_dir = Path(store), Path(backups_dir)
    if name is not None and Path(name).name != name:
        log.warning("restore of %s: %r is not a backup file name", store, name)
        return None
    candidates = [backups_dir / name] if name is not None else list_backups(backups_dir)
    tmp = store.with_name(store.name + ".restore-tmp")
    for candidate in candidates:
        if reason := _materialise(candidate, tmp, key):
            _unlink(tmp)
            log.warning("backup %s of %s is unusable: %s", candidate.name, store, reason)
            continue
        if reason := check_store(tmp):
            _unlink(tmp)
            log.warning("copy of backup %s did not verify: %s", candidate.name, reason)
            continue
        _set_aside(store, now or datetime.now(UTC))
        os.replace(tmp, store)
        _fsync_dir(store.parent)
        log.info("restored %s from backup %s", store, candidate.name)
        return candidate
    log.warning("no good backup to restore %s from (%d tried)", store, len(candidates))
    return None


def check_backup(path: Path, key: bytes | None = None) -> str | None:
    """Like check_store, for a backup that may be encrypted (decrypted to a temporary file to check)."""
    if not path.name.endswith(ENCRYPTED_SUFFIX):
        return check_store(path)
    tmp = path.with_name(f".{path.name}.check")
    try:
        return _materialise(path, tmp, key)
    finally:
        _unlink(tmp)


# -- helpers -------------------------------------------------------------------------------------
def _fernet(key: bytes) -> Fernet:
    from cryptography.fernet import Fernet  # only needed when backups are encrypted

    return Fernet(key)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _materialise(backup: Path, target: Path, key: bytes | None) -> str | None:
    """Put a usable plain copy of `backup` at `target`; None when it verifies, else the reason."""
    if backup.name.endswith(ENCRYPTED_SUFFIX):
        if key is None:
            return "encrypted, and no backups.encryption_key is configured"
        from cryptography.fernet import InvalidToken

        try:
            _write_private(target, _fernet(key).decrypt(backup.read_bytes()))
        except InvalidToken:
            return "cannot be decrypted with the configured backups.encryption_key"
        except OSError as exc:
            return f"unreadable: {exc}"
    else:
        if reason := check_store(backup):
            return reason
        try:
            _copy(backup, target)
        except sqlite3.Error as exc:
            return f"could not be copied: {exc}"
    return check_store(target)



def _copy(source: Path, target: Path) -> None:
    """Consistent copy of an SQLite database into a fresh 0600 file, as a single self-contained file."""
    _unlink(target)
    _unlink(Path(f"{target}-journal"))
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()
    with target.open("rb") as handle:
        os.fsync(handle.fileno())


def _set_aside(store: Path, now: datetime) -> None:
    """Move a broken store and its side files out of the way (kept for inspection); drop its -shm."""
    if store.exists():
        aside = _free_name(store.parent, f"{store.name}.corrupt-{_stamp(now)}", "")
        os.replace(store, aside)
        log.warning("kept the replaced store as %s", aside.name)
        for side in STORE_SIDE_FILES:
            if side != "-shm" and Path(f"{store}{side}").exists():
                os.replace(f"{store}{side}", f"{aside}{side}")
    for side in STORE_SIDE_FILES:
        _unlink(Path(f"{store}{side}"))


def _next_name(folder: Path, stem: str, stamp: str, ext: str) -> Path:
    """A backup name that sorts after every existing one of the same second (never a reused name:
    a freed `-n` would sort as the oldest and be pruned next)."""
    used = [int(m["n"] or 0) for name in os.listdir(folder)
            if (m := _BACKUP_NAME.match(name)) and m["stem"] == stem and m["stamp"] == stamp]
    if not used:
        return folder / f"{stem}-{stamp}{ext}"
    return folder / f"{stem}-{stamp}-{max(used) + 1}{ext}"


def _free_name(folder: Path, base: str, ext: str) -> Path:
    candidate = folder / f"{base}{ext}"
    n = 0
    while candidate.exists():
        n += 1
        candidate = folder / f"{base}-{n}{ext}"
    return candidate


def _stamp(now: datetime) -> str:
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def _private_dir(folder: Path) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
