"""Seen message ids: once per account, across restarts and a SIGKILL, bounded to the newest `window`."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from wa_mqtt.accounts import dedup
from wa_mqtt.accounts.dedup import SeenIds
from wa_mqtt.store.protocols import SeenStore

A, B = "557996277210", "5511999999999"


@pytest.fixture
def seen(tmp_path: Path):
    ids = SeenIds(tmp_path / "seen.db", window=5)
    yield ids
    ids.close()


def handled(seen: SeenStore, account: str, message_id: str) -> bool:
    """An incoming id as features/state_publisher.py's `_on_message` takes it: `seen` first (a duplicate
    is dropped: False), else the message is handed on and its id then remembered (True)."""
    if seen.seen(account, message_id):
        return False
    seen.remember(account, message_id)
    return True


def test_an_id_is_handled_once_per_account(seen: SeenIds) -> None:
    assert handled(seen, A, "3EB0X") is True
    assert handled(seen, A, "3EB0X") is False
    assert handled(seen, B, "3EB0X") is True
    assert handled(seen, A, "3EB0Y") is True


def test_keeps_the_newest_window_ids_per_account(seen: SeenIds) -> None:
    for i in range(8):
        assert handled(seen, A, f"m{i}")
    handled(seen, B, "b0")
    # m0..m2 were pushed out (window 5): they count as new again; the newest five do not
    assert [handled(seen, A, f"m{i}") for i in range(3, 8)] == [False] * 5
    assert handled(seen, A, "m0") is True
    assert handled(seen, B, "b0") is False  # another account's ids are not pushed out by A
    count = seen._conn.execute("SELECT COUNT(*) FROM seen WHERE account = ?", (A,)).fetchone()[0]
    assert count == 5


def test_survives_restart_and_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "seen.db"
    child = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from wa_mqtt.accounts.dedup import SeenIds
        seen = SeenIds(Path({str(path)!r}), window=100)
        for i in range(150):
            assert not seen.seen({A!r}, "id%d" % i)
            seen.remember({A!r}, "id%d" % i)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert subprocess.run([sys.executable, "-c", child], timeout=30).returncode == -9
    seen = SeenIds(path, window=100)
    try:
        assert not any(handled(seen, A, f"id{i}") for i in range(50, 150))
        assert handled(seen, A, "id49") is True  # out of the window
        assert handled(seen, A, "id150") is True
        count = seen._conn.execute("SELECT COUNT(*) FROM seen").fetchone()[0]
        assert count == 100  # the count loaded on open keeps the bound exact
    finally:
        seen.close()


async def test_a_loop_turns_ids_are_one_transaction_seen_at_once_and_trimmed(tmp_path: Path) -> None:
    """In a running loop the ids remembered in one turn (a burst of incoming messages) share one
    transaction, committed at the end of the turn; `seen` knows them at once; the window holds."""
    seen = SeenIds(tmp_path / "seen.db", window=5)
    statements: list[str] = []
    seen._conn.set_trace_callback(statements.append)
    other = sqlite3.connect(tmp_path / "seen.db")  # what a process killed now would find on disk
    try:
        for i in range(40):  # one turn: no await in between
            assert handled(seen, A, f"a{i}") and not handled(seen, A, f"a{i}")
        for i in range(3):
            assert handled(seen, B, f"b{i}")
        assert other.execute("SELECT COUNT(*) FROM seen").fetchone()[0] == 0  # not committed yet
        await asyncio.sleep(0)  # the end of the turn
        assert [s for s in statements if s in ("BEGIN IMMEDIATE", "COMMIT")] == ["BEGIN IMMEDIATE", "COMMIT"]
        rows = other.execute("SELECT account, message_id FROM seen ORDER BY n").fetchall()
        assert rows == [(A, f"a{i}") for i in range(35, 40)] + [(B, f"b{i}") for i in range(3)]
        assert handled(seen, A, "a34") and not handled(seen, A, "a39")
        handled(seen, A, "pending")
        seen.close()  # commits what the turn holds
        assert other.execute("SELECT COUNT(*) FROM seen WHERE message_id = 'pending'").fetchone()[0] == 1
    finally:
        other.close()
        seen.close()


async def test_an_id_remembered_this_turn_is_seen_under_its_other_key(seen: SeenStore) -> None:
    """An undecryptable message's redelivery is looked up under its own key and its message id at once
    (`also`): the real message remembered earlier in the same turn (a burst) counts."""
    seen.remember(A, "X")
    assert seen.seen(A, "X#undecryptable", "X")
    assert not seen.seen(A, "Y#undecryptable", "Y")
    await asyncio.sleep(0)  # written now: still seen
    assert seen.seen(A, "X#undecryptable", "X")


def test_window_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SeenIds(tmp_path / "seen.db", window=0)


def test_a_full_window_is_trimmed_in_steps_not_per_id(tmp_path: Path) -> None:
    """Past `window` it trims back to `window` once `window // 256` more were added: one DELETE per
    that many new ids (not a DELETE per message), never fewer than the newest `window` kept."""
    seen = SeenIds(tmp_path / "seen.db", window=1024)  # trimmed at 1028
    deletes: list[str] = []
    seen._conn.set_trace_callback(lambda sql: deletes.append(sql) if sql.startswith("DELETE") else None)
    try:
        counts = []
        for i in range(1100):
            assert handled(seen, A, f"id{i}")
            counts.append(seen._conn.execute("SELECT COUNT(*) FROM seen").fetchone()[0])
        assert max(counts) == 1028 and min(counts[1023:]) == 1024
        assert len(deletes) == (1100 - 1028 - 1) // 5 + 1  # every fifth id past 1028, not 72
        assert not any(handled(seen, A, f"id{i}") for i in range(1100 - 1024, 1100))  # the newest window kept
        assert handled(seen, A, "id0") is True  # trimmed: new again
    finally:
        seen.close()


def test_seen_asks_for_two_ids_at_once(seen: SeenIds) -> None:
    seen.remember(A, "U1")
    assert seen.seen(A, "U1#undecryptable", "U1") and seen.seen(A, "U1", "other")
    assert not seen.seen(A, "U2#undecryptable", "U2") and not seen.seen(B, "U1#undecryptable", "U1")
    seen.remember(A, "H", hold=True)  # held in memory: counted as seen too
    assert seen.seen(A, "H#undecryptable", "H")
    assert seen.duplicates == 3  # counted once per question


def test_a_version_1_file_keeps_its_ids_and_their_order(tmp_path: Path) -> None:
    """Upgrade 2 (the table keyed by account and id) keeps every id and its age: the oldest is still
    the first trimmed, and new ids count after the old ones."""
    path = tmp_path / "seen.db"
    conn = sqlite3.connect(path)  # a file at version 1, written as version 1 did (rowid order)
    conn.executescript(dedup._SCHEMA)
    conn.executemany("INSERT INTO seen (account, message_id) VALUES (?, ?)", [(A, "old0"), (B, "b"), (A, "old1")])
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    assert dedup.SCHEMA.version == 2
    seen = SeenIds(path, window=3)
    try:
        assert not handled(seen, A, "old0") and not handled(seen, A, "old1") and not handled(seen, B, "b")
        assert handled(seen, A, "new0") and handled(seen, A, "new1")  # old0 is the oldest: trimmed
        assert [handled(seen, A, i) for i in ("old1", "new0", "new1", "old0")] == [False, False, False, True]
    finally:
        seen.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.close()


def test_a_new_file_gets_small_pages_and_an_existing_one_keeps_its_own(tmp_path: Path) -> None:
    fresh = SeenIds(tmp_path / "new" / "seen.db")
    assert fresh._conn.execute("PRAGMA page_size").fetchone()[0] == dedup.PAGE_SIZE < 4096
    assert fresh.seen("5511900000001", "3EB0A") is False
    fresh.remember("5511900000001", "3EB0A")
    fresh.close()
    fresh = SeenIds(tmp_path / "new" / "seen.db")
    assert fresh.seen("5511900000001", "3EB0A") is True
    fresh.close()
    old = SeenIds(tmp_path / "old.db")  # made as before: SQLite's default pages
    old.close()
    conn = sqlite3.connect(tmp_path / "old.db")
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("PRAGMA page_size=4096")
    conn.execute("VACUUM")
    conn.close()
    kept = SeenIds(tmp_path / "old.db")
    assert kept._conn.execute("PRAGMA page_size").fetchone()[0] == 4096
    kept.remember("5511900000001", "3EB0B")
    assert kept.seen("5511900000001", "3EB0B") is True
    kept.close()
