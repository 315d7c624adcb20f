"""Session store backups: consistent verified copies, rotation, integrity checks, restore."""

from __future__ import annotations

import re
import sqlite3
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from wa_mqtt.accounts.backups import BackupError, backup_store, check_store, list_backups, restore_from_backup
from wa_mqtt.accounts.store import SessionStore

T0 = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)
PHONE = "557996277210"


def make_store(path: Path, rows: int = 200, tag: str = "v1") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS device (k INTEGER PRIMARY KEY, v TEXT)")
    db.execute("DELETE FROM device")
    db.executemany("INSERT INTO device VALUES (?, ?)", [(i, f"{tag}-{i}-" + "x" * 200) for i in range(rows)])
    db.commit()
    db.close()


def tag_of(path: Path) -> str:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT v FROM device WHERE k = 0").fetchone()[0].split("-")[0]
    finally:
        db.close()


def corrupt(path: Path) -> None:
    """Keep the SQLite header but smash the pages after the first."""
    data = bytearray(path.read_bytes())
    data[4096:12288] = b"\xde\xad\xbe\xef" * 2048
    path.write_bytes(bytes(data))


@pytest.fixture
def paths(tmp_path: Path):
    return SessionStore(tmp_path / "sessions").prepare(PHONE)


def test_backup_is_a_verified_private_copy(paths) -> None:
    make_store(paths.store)
    writer = sqlite3.connect(paths.store)  # uncheckpointed data still in the -wal must be in the copy
    writer.execute("UPDATE device SET v = 'v2-0' WHERE k = 0")
    writer.commit()
    try:
        made = backup_store(paths.store, paths.backups, keep=3, now=T0)
    finally:
        writer.close()
    assert made == paths.backups / "store-20261124T100000Z.db"
    assert tag_of(made) == "v2"
    assert check_store(made) is None
    assert stat.S_IMODE(made.stat().st_mode) == 0o600
    assert stat.S_IMODE(paths.backups.stat().st_mode) == 0o700
    assert sorted(p.name for p in paths.backups.iterdir()) == [made.name]  # no -wal/-shm/tmp left


def test_rotation_keeps_the_newest_and_same_second_gets_a_suffix(paths) -> None:
    make_store(paths.store)
    made = [backup_store(paths.store, paths.backups, keep=3, now=T0 + timedelta(hours=i)) for i in range(4)]
    again = backup_store(paths.store, paths.backups, keep=3, now=T0 + timedelta(hours=3))
    assert again.name == "store-20261124T130000Z-1.db"
    assert list_backups(paths.backups) == [again, made[3], made[2]]


def test_backup_of_a_corrupt_or_missing_store_fails_and_leaves_nothing(paths) -> None:
    make_store(paths.store)
    corrupt(paths.store)
    with pytest.raises(BackupError):
        backup_store(paths.store, paths.backups, keep=3, now=T0)
    assert list(paths.backups.iterdir()) == []
    with pytest.raises(BackupError):
        backup_store(paths.root / "nothing.db", paths.backups, keep=3, now=T0)


@pytest.mark.parametrize("setup, expected", [
    (lambda p: None, "missing"),
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_bytes(b"this is not a database at all" * 100), "not an SQLite database"),
    (lambda p: p.mkdir(), "not a regular file"),
    (lambda p: (make_store(p), corrupt(p)), "integrity check failed|unreadable"),
    (lambda p: sqlite3.connect(p).execute("PRAGMA user_version=1").connection.close(), "no tables"),
    (lambda p: (make_store(p), p.write_bytes(p.read_bytes()[:6000])), "integrity check failed|unreadable"),
])
def test_check_store_gives_a_reason_and_never_raises(tmp_path: Path, setup, expected: str) -> None:
    path = tmp_path / "store.db"
    setup(path)
    reason = check_store(path)
    assert reason is not None and re.match(expected, reason), reason


def test_check_store_accepts_a_good_store(paths) -> None:
    make_store(paths.store)
    assert check_store(paths.store) is None


def test_list_backups_ignores_other_files(tmp_path: Path) -> None:
    assert list_backups(tmp_path / "absent") == []
    for name in ("store-20261124T100000Z.db", "store-20251124T100000Z.db", "notes.txt",
                 ".store-20271124T100000Z.db.tmp", "store-20261124T100000Z.db-journal"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_backups(tmp_path)] == ["store-20261124T100000Z.db", "store-20251124T100000Z.db"]


def test_restore_uses_the_newest_good_backup_and_keeps_the_broken_store(paths) -> None:
    make_store(paths.store, tag="old")
    good = backup_store(paths.store, paths.backups, keep=3, now=T0)
    make_store(paths.store, tag="newer")
    bad = backup_store(paths.store, paths.backups, keep=3, now=T0 + timedelta(hours=1))
    corrupt(bad)  # the newest backup went bad on disk
    paths.store.write_bytes(b"garbage" * 100)
    Path(f"{paths.store}-wal").write_bytes(b"stale wal")
    Path(f"{paths.store}-shm").write_bytes(b"stale shm")
    Path(f"{paths.store}-sent").write_bytes(b"2026-11-24T11:00:00+00:00 OLD\n")  # the sim's sent-id log: that store's

    used = restore_from_backup(paths.store, paths.backups, now=T0 + timedelta(hours=2))
    assert used == good
    assert check_store(paths.store) is None and tag_of(paths.store) == "old"
    assert stat.S_IMODE(paths.store.stat().st_mode) == 0o600
    aside = paths.root / "store.db.corrupt-20261124T120000Z"
    assert aside.read_bytes() == b"garbage" * 100
    assert Path(f"{aside}-wal").read_bytes() == b"stale wal"
    assert Path(f"{aside}-sent").read_bytes() == b"2026-11-24T11:00:00+00:00 OLD\n"
    assert not Path(f"{paths.store}-shm").exists() and not Path(f"{paths.store}-wal").exists()
    assert not Path(f"{paths.store}-sent").exists()
    assert not list(paths.root.glob("*restore-tmp*"))


def test_restore_named_backup(paths) -> None:
    make_store(paths.store, tag="first")
    first = backup_store(paths.store, paths.backups, keep=3, now=T0)
    make_store(paths.store, tag="second")
    backup_store(paths.store, paths.backups, keep=3, now=T0 + timedelta(hours=1))
    assert restore_from_backup(paths.store, paths.backups, first.name, now=T0) == first
    assert tag_of(paths.store) == "first"


def test_restore_without_a_good_backup_changes_nothing(paths) -> None:
    paths.store.write_bytes(b"garbage" * 100)
    assert restore_from_backup(paths.store, paths.backups) is None
    make_store(paths.root / "other.db")
    bad = backup_store(paths.root / "other.db", paths.backups, keep=3, now=T0)
    corrupt(bad)
    assert restore_from_backup(paths.store, paths.backups) is None
    assert restore_from_backup(paths.store, paths.backups, "store-20991124T100000Z.db") is None
    assert restore_from_backup(paths.store, paths.backups, "../store.db") is None
    assert paths.store.read_bytes() == b"garbage" * 100
    assert not list(paths.root.glob("store.db.corrupt-*"))


def test_restore_into_a_missing_store(paths) -> None:
    make_store(paths.store, tag="kept")
    made = backup_store(paths.store, paths.backups, keep=1, now=T0)
    paths.store.unlink()
    assert restore_from_backup(paths.store, paths.backups) == made
    assert tag_of(paths.store) == "kept"


def test_encrypted_backups_round_trip_and_need_the_key(tmp_path):
    from cryptography.fernet import Fernet

    from wa_mqtt.accounts.backups import check_backup

    key, other = Fernet.generate_key(), Fernet.generate_key()
    store = tmp_path / "store.db"
    with sqlite3.connect(store) as db:
        db.execute("CREATE TABLE device (jid TEXT)")
        db.execute("INSERT INTO device VALUES ('5511900000001:7@s.whatsapp.net')")
    db.close()
    made = backup_store(store, tmp_path / "backups", 3, T0, key)
    assert made.name.endswith(".db.enc") and b"whatsapp" not in made.read_bytes()
    assert (made.stat().st_mode & 0o777) == 0o600
    assert check_backup(made, key) is None
    assert "no backups.encryption_key" in check_backup(made, None)
    assert "cannot be decrypted" in check_backup(made, other)
    store.write_bytes(b"garbage")
    assert restore_from_backup(store, tmp_path / "backups", now=T0, key=other) is None
    assert restore_from_backup(store, tmp_path / "backups", now=T0, key=key) == made
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT jid FROM device").fetchone()[0].startswith("5511900000001")
    db.close()


def test_many_backups_in_one_second_keep_the_newest(tmp_path):
    store = tmp_path / "store.db"
    with sqlite3.connect(store) as db:
        db.execute("CREATE TABLE t (x)")
    db.close()
    made = [backup_store(store, tmp_path / "backups", 3, T0) for _ in range(6)]
    assert len({p.name for p in made}) == 6  # no name is ever reused
    assert list_backups(tmp_path / "backups") == made[:-4:-1]  # the three made last, newest first


def test_account_json_writes_from_many_threads_neither_collide_nor_lose_keys(tmp_path: Path) -> None:
    """account.json is written from the loop and from worker threads at once (found as a CI flake:
    a shared temporary name made one writer's rename fail)."""
    from concurrent.futures import ThreadPoolExecutor

    store = SessionStore(tmp_path / "sessions")
    barrier = threading.Barrier(8)

    def write(index: int) -> None:
        barrier.wait(timeout=10)
        for round_ in range(25):
            store.write_meta(PHONE, **{f"key{index}": round_})

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(write, i) for i in range(8)]:
            future.result()
    meta = store.read_meta(PHONE)
    assert {f"key{i}": 24 for i in range(8)}.items() <= meta.items()
    root = store.paths(PHONE).root
    assert sorted(p.name for p in root.iterdir() if p.name.endswith(".tmp")) == []
    assert stat.S_IMODE((root / "account.json").stat().st_mode) == 0o600
