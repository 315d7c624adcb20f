"""Schema versions of the bridge's SQLite files: stepwise upgrades from 0, one transaction each,
refusal of a newer file, and today's unversioned spool / outbox / dedup files kept row for row."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from wa_mqtt.accounts import dedup
from wa_mqtt.accounts import outbox as outbox_module
from wa_mqtt.accounts.dedup import SeenIds
from wa_mqtt.accounts.outbox import Outbox
from wa_mqtt.durable import open_wal
from wa_mqtt.mqtt import spool as spool_module
from wa_mqtt.mqtt.spool import Spool, SpoolEntry
from wa_mqtt.schema import (
    Schema,
    SchemaTooNewError,
    SchemaUpgradeError,
    Upgrade,
    open_versioned,
    user_version,
)

A = "557996277210"
T0 = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)


def version_of(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def tables(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def add_note_column(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE item ADD COLUMN note TEXT NOT NULL DEFAULT ''")
    conn.execute("UPDATE item SET note = 'was ' || name")


UPGRADES = [
    Upgrade(1, "the item table", "CREATE TABLE IF NOT EXISTS item (id INTEGER PRIMARY KEY, name TEXT NOT NULL);"),
    Upgrade(2, "a note per item", add_note_column),
    Upgrade(3, "an index and a trigger", """
        CREATE INDEX item_by_name ON item (name);  -- a comment; with a semicolon
        CREATE TABLE log (line TEXT);
        CREATE TRIGGER item_logged AFTER INSERT ON item BEGIN
            INSERT INTO log VALUES ('added; ' || new.name);
        END;
        INSERT INTO item (name, note) VALUES ('semi;colon', 'a '';'' in a string')
    """),
]


def test_a_new_file_gets_every_upgrade_in_order(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    conn = open_versioned(path, Schema("test", "items", UPGRADES))
    try:
        assert user_version(conn) == 3
        assert conn.execute("SELECT name, note FROM item").fetchall() == [("semi;colon", "a ';' in a string")]
        conn.execute("INSERT INTO item (name) VALUES ('b')")
        assert conn.execute("SELECT line FROM log ORDER BY rowid").fetchall() == [("added; semi;colon",), ("added; b",)]
    finally:
        conn.close()


def test_an_older_file_gets_only_the_missing_upgrades_and_keeps_its_rows(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "x.db"
    conn = open_versioned(path, Schema("test", "items", UPGRADES[:1]))
    conn.execute("INSERT INTO item (name) VALUES ('kept')")
    conn.close()
    assert version_of(path) == 1
    calls: list[int] = []

    def counted(conn: sqlite3.Connection) -> None:
        calls.append(user_version(conn))
        add_note_column(conn)

    with caplog.at_level(logging.INFO, logger="wa_mqtt.schema"):
        conn = open_versioned(path, Schema("test", "items", [UPGRADES[0], Upgrade(2, "a note per item", counted),
                                                             UPGRADES[2]]))
    try:
        assert calls == [1]  # upgrade 1 was not run again; 2 ran once, on a version 1 file
        assert conn.execute("SELECT name, note FROM item ORDER BY id").fetchall() == [
            ("kept", "was kept"), ("semi;colon", "a ';' in a string")]
        assert user_version(conn) == 3
    finally:
        conn.close()
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: test schema upgraded from version 1 to version 3 (a note per item; an index and a trigger)"]
    conn = open_versioned(path, Schema("test", "items", UPGRADES))  # current: nothing to do
    conn.close()
    assert calls == [1]


def test_a_file_newer_than_the_code_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    conn = open_versioned(path, Schema("test", "items", UPGRADES))
    conn.execute("INSERT INTO item (name) VALUES ('future')")
    conn.close()
    with pytest.raises(SchemaTooNewError) as info:
        open_versioned(path, Schema("test", "queued items", UPGRADES[:2]))
    error = info.value
    assert (error.path, error.found, error.supported) == (path, 3, 2)
    message = str(error)
    assert "\n" not in message
    assert message.startswith(f"{path}: test schema version 3 is newer than this wa_mqtt supports (version 2)")
    assert "run that version again, or move the file away" in message and "queued items" in message
    assert version_of(path) == 3 and "log" in tables(path)
    assert not any(t.name == "checkpoint-x.db" for t in threading.enumerate())  # the refused file was closed


@pytest.mark.parametrize("failing", [
    "CREATE TABLE half (x); INSERT INTO no_such_table VALUES (1)",
    "CREATE TABLE half (x); INSERT INTO item (name) VALUES ('unterminated",
], ids=["bad statement", "incomplete script"])
def test_a_failing_script_rolls_back_and_leaves_the_old_version(tmp_path: Path, failing: str) -> None:
    path = tmp_path / "x.db"
    open_versioned(path, Schema("test", "items", UPGRADES[:1])).close()
    with pytest.raises(SchemaUpgradeError) as info:
        open_versioned(path, Schema("test", "items", [UPGRADES[0], Upgrade(2, "breaks", failing)]))
    assert str(info.value).startswith(f"{path}: upgrade to schema version 2 (breaks) failed: ")
    assert str(info.value).endswith("the file stays at version 1, nothing in it lost; the next start tries again")
    assert version_of(path) == 1 and tables(path) == {"item"}


def test_a_failing_function_rolls_back_its_changes_and_later_upgrades_do_not_run(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    conn = open_versioned(path, Schema("test", "items", UPGRADES[:1]))
    conn.execute("INSERT INTO item (name) VALUES ('a')")
    conn.close()

    def half_done(conn: sqlite3.Connection) -> None:
        add_note_column(conn)
        conn.execute("DELETE FROM item")
        raise RuntimeError("disk on fire")

    with pytest.raises(SchemaUpgradeError, match="disk on fire"):
        open_versioned(path, Schema("test", "items", [UPGRADES[0], Upgrade(2, "half", half_done), UPGRADES[2]]))
    assert version_of(path) == 1
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT * FROM item").fetchall() == [(1, "a")]  # no note column, the row is back
    conn.close()
    conn = open_versioned(path, Schema("test", "items", UPGRADES))  # fixed code: the upgrade goes through
    assert conn.execute("SELECT name, note FROM item WHERE id = 1").fetchone() == ("a", "was a")
    conn.close()


@pytest.mark.parametrize("numbers", [[2], [1, 3], [1, 1], [2, 1]])
def test_upgrades_must_be_numbered_from_one_without_gaps(numbers: list[int]) -> None:
    with pytest.raises(ValueError, match="numbered 1, 2, 3"):
        Schema("test", "items", [Upgrade(n, "x", "SELECT 1") for n in numbers])


# --- the bridge's three files, as today's (unversioned) code wrote them ----------------------------
# The CREATE statements below are copied from the code before schema versions; they must stay as
# they are (files in the field look like this), whatever the stores' schemas become.

V0_SPOOL = """
CREATE TABLE IF NOT EXISTS spool (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    topic   TEXT    NOT NULL,
    payload BLOB    NOT NULL,
    qos     INTEGER NOT NULL,
    retain  INTEGER NOT NULL,
    size    INTEGER NOT NULL
)
"""
V0_OUTBOX = """
CREATE TABLE IF NOT EXISTS outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    account    TEXT NOT NULL,
    request    TEXT NOT NULL,
    client_id  TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_by_account ON outbox (account, id);
CREATE UNIQUE INDEX IF NOT EXISTS outbox_by_client ON outbox (account, client_id) WHERE client_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS sent (
    account   TEXT NOT NULL,
    client_id TEXT NOT NULL,
    wa_id     TEXT NOT NULL,
    sent_at   REAL NOT NULL,
    PRIMARY KEY (account, client_id)
);
CREATE INDEX IF NOT EXISTS sent_by_time ON sent (sent_at);
"""
V0_SEEN = """
CREATE TABLE IF NOT EXISTS seen (
    n          INTEGER PRIMARY KEY,
    account    TEXT NOT NULL,
    message_id TEXT NOT NULL,
    UNIQUE (account, message_id)
);
CREATE INDEX IF NOT EXISTS seen_by_age ON seen (account, n);
"""


def v0_file(path: Path, script: str, rows: Callable[[sqlite3.Connection], None]) -> Path:
    """A file as the unversioned code left it: WAL, its CREATE script, some rows, user_version 0."""
    conn = open_wal(path)
    conn.executescript(script)
    rows(conn)
    conn.close()
    assert version_of(path) == 0
    return path


def test_an_unversioned_spool_is_upgraded_with_its_entries(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    path = v0_file(tmp_path / "spool.db", V0_SPOOL, lambda c: c.executemany(
        "INSERT INTO spool (topic, payload, qos, retain, size) VALUES (?, ?, ?, ?, ?)",
        [("wa/1/message", b"one", 1, 0, 15), ("wa/1/receipt", b"two", 1, 1, 15)]))
    with caplog.at_level(logging.INFO, logger="wa_mqtt.schema"):
        spool = Spool(path)
    try:
        assert len(spool) == 2 and spool.size_bytes == 30
        assert spool.peek(10) == [SpoolEntry(1, "wa/1/message", b"one", 1, False),
                                  SpoolEntry(2, "wa/1/receipt", b"two", 1, True)]
        assert spool.append("wa/1/message", b"three", 1, False) == 3
    finally:
        spool.close()
    assert version_of(path) == spool_module.SCHEMA.version
    assert f"{path}: spool schema upgraded from unversioned (written before schema versions) to version {spool_module.SCHEMA.version}" \
        in caplog.text


def test_a_version_2_spool_emptied_keeps_its_numbers_through_upgrade_3(tmp_path: Path) -> None:
    """A spool written with AUTOINCREMENT and emptied: only sqlite_sequence knew how far its numbers
    went; upgrade 3 carries that into the "issued up to" mark, so no number is given out again."""
    path = _v0_spool(tmp_path / "spool.db", appended=5, deleted_upto=4)
    spool = Spool(path)
    try:
        assert spool.peek(10) == [SpoolEntry(5, "t", b"x", 1, False)]
        spool.ack(5)
        assert spool.append("t", b"y", 1, False) == 6
    finally:
        spool.close()
    spool = Spool(_v0_spool(tmp_path / "empty.db", appended=7, deleted_upto=7))
    try:
        assert spool.append("t", b"y", 1, False) == 8
    finally:
        spool.close()


def _v0_spool(path: Path, appended: int, deleted_upto: int) -> Path:
    """An unversioned spool (AUTOINCREMENT) that gave out `appended` numbers and lost those up to `deleted_upto`."""
    return v0_file(path, V0_SPOOL, lambda c: (
        c.executemany("INSERT INTO spool (topic, payload, qos, retain, size) VALUES (?, ?, ?, ?, ?)",
                      [("t", b"x", 1, 0, 2)] * appended),
        c.execute("DELETE FROM spool WHERE seq <= ?", (deleted_upto,))))


def test_an_unversioned_outbox_is_upgraded_from_version_1_with_its_queue_and_sent_ids(tmp_path: Path) -> None:
    request = {"message": {"to": "5511999999999", "text": "hi"}, "transaction": "t1"}

    def rows(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO outbox (account, request, client_id, created_at) VALUES (?, ?, ?, ?)",
                     (A, json.dumps(request), "k1", T0.timestamp()))
        conn.execute("INSERT INTO sent (account, client_id, wa_id, sent_at) VALUES (?, ?, ?, ?)",
                     (A, "k0", "3EB0AA", T0.timestamp()))

    path = v0_file(tmp_path / "outbox.db", V0_OUTBOX, rows)
    outbox = Outbox(path, lambda: T0)
    try:
        [entry] = outbox.pending(A)
        assert (entry.request, entry.client_id, entry.created_at) == (request, "k1", T0)
        assert outbox.enqueue(A, {"other": 1}, "k1") == (entry, True)  # the unique index is still there
        assert outbox.sent_id(A, "k0") == "3EB0AA"
        assert (entry.wa_id, entry.tries) == (None, 0)  # upgrade 2's columns, empty for old entries
    finally:
        outbox.close()
    assert version_of(path) == outbox_module.SCHEMA.version


def test_an_unversioned_dedup_file_is_taken_as_version_1_with_its_ids(tmp_path: Path) -> None:
    path = v0_file(tmp_path / "seen.db", V0_SEEN, lambda c: c.executemany(
        "INSERT INTO seen (account, message_id) VALUES (?, ?)", [(A, "m1"), (A, "m2")]))
    seen = SeenIds(path, window=3)
    try:
        assert seen.seen(A, "m1") and seen.seen(A, "m2")
        for new in ("m3", "m4"):  # as features/state_publisher.py: asked, handed on, then remembered
            assert not seen.seen(A, new)
            seen.remember(A, new)
        assert not seen.seen(A, "m1")  # the window counted the old rows: m1 was the oldest of 4 and is gone
    finally:
        seen.close()
    assert version_of(path) == dedup.SCHEMA.version  # and upgrade 2 (the keyed table) kept them too


CURRENT = {"spool.db": spool_module.SCHEMA.version, "outbox.db": outbox_module.SCHEMA.version,
           "seen.db": dedup.SCHEMA.version}
OPENERS: dict[str, Callable[[Path], object]] = {
    "spool.db": Spool,
    "outbox.db": lambda path: Outbox(path, lambda: T0),
    "seen.db": SeenIds,
}


@pytest.mark.parametrize("name", sorted(OPENERS))
def test_each_file_is_created_at_its_current_version_and_refused_when_newer(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    store = OPENERS[name](path)
    store.close()  # type: ignore[attr-defined]
    assert version_of(path) == CURRENT[name]
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 7")
    conn.close()
    with pytest.raises(SchemaTooNewError, match=rf"^{path}: \w+ schema version 7 is newer than this wa_mqtt supports "
                                           rf"\(version {CURRENT[name]}\)"):
        OPENERS[name](path)
    assert version_of(path) == 7
