"""A full disk under the stores (spool, dedup ids, outbox) and the watch that retries them.

"Full" is real either way: SQLite's own `max_page_count` (SQLITE_FULL when the file would grow), or
a filled tmpfs (`small_disk`, root only) where a delete needs space too.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from wa_mqtt.accounts.dedup import SeenIds
from wa_mqtt.accounts.outbox import Outbox
from wa_mqtt.disk_full import DiskFull, DiskFullWatch, is_disk_full
from wa_mqtt.engines.base import Intake
from wa_mqtt.mqtt.spool import Spool

from harness import SmallDisk

A = "5511900000001"
BIG = b"m" * 5000  # more than a page: every append needs a new one


class Reports(list[tuple[str, BaseException | None]]):
    def __call__(self, where: str, exc: BaseException | None) -> None:
        self.append((where, exc))


def fill(conn: sqlite3.Connection) -> None:
    """The file may not grow any more (SQLite answers SQLITE_FULL, as on a full disk), and has no free
    pages left to write into (a schema upgrade that rebuilt a table leaves some)."""
    if conn.execute("PRAGMA freelist_count").fetchone()[0]:
        conn.execute("VACUUM")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")


def make_room(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA max_page_count = 1073741823")


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 25, 10, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_disk_full_errors_are_recognised(tmp_path: Path) -> None:
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(sqlite3.OperationalError("no such table: x"))
    conn = sqlite3.connect(tmp_path / "x.db")
    conn.execute("CREATE TABLE t (x BLOB)")
    fill(conn)
    with pytest.raises(sqlite3.OperationalError) as full:
        conn.execute("INSERT INTO t VALUES (?)", (BIG,))
    assert is_disk_full(full.value)
    conn.close()


def test_spool_holds_what_it_cannot_write_in_order_and_writes_it_later(tmp_path: Path) -> None:
    reports = Reports()
    spool = Spool(tmp_path / "spool.db", report=reports)
    first = spool.append("t", BIG, 1, False)
    fill(spool._conn)
    held = [spool.append("t", bytes([i]) * 5000, 1, False) for i in range(3)]
    assert first < held[0] < held[1] < held[2]
    assert spool.held == 3 and len(spool) == 4 and spool.held_bytes == 3 * 5001
    assert [where for where, _ in reports] == ["spool"] * 3
    assert is_disk_full(reports[0][1]) and reports[1][1] is None  # the first failed, the others queued behind
    assert [e.seq for e in spool.peek(10)] == [first, *held]  # disk first, then memory: the broker gets them
    assert spool.peek(10)[1].payload == b"\0" * 5000
    spool.ack(held[0])  # published from memory: gone without ever being written
    assert spool.held == 2 and len(spool) == 2
    assert spool.write_held(10) is False  # still full
    make_room(spool._conn)
    assert spool.write_held(1) is False and spool.held == 1  # one per call here
    assert spool.write_held(10) is True and spool.held == 0
    assert spool.append("t", b"after", 1, False) > held[2]
    spool.close()
    again = Spool(tmp_path / "spool.db")
    try:
        assert [e.seq for e in again.peek(10)][:2] == held[1:]
        assert len(again) == 3
    finally:
        again.close()


def test_spool_ack_on_a_full_disk_is_kept_and_done_later(small_disk: SmallDisk) -> None:
    reports = Reports()
    spool = Spool(small_disk.path / "spool.db", report=reports)
    seqs = [spool.append("t", bytes([i]) * 2000, 1, False) for i in range(5)]
    spool._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # no WAL space left to reuse: a delete must grow it
    small_disk.fill()
    spool.ack(seqs[2])
    assert reports and is_disk_full(reports[0][1])
    assert [e.seq for e in spool.peek(10)] == seqs[3:] and len(spool) == 2
    assert spool.write_held(10) is False
    small_disk.free()
    assert spool.write_held(10) is True
    spool._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    small_disk.fill()
    assert spool.write_held(10) is False  # holding nothing: its probe write fails like any other
    small_disk.free()
    assert spool.write_held(10) is True
    spool.close()
    again = Spool(small_disk.path / "spool.db")
    try:
        assert [e.seq for e in again.peek(10)] == seqs[3:]
    finally:
        again.close()


def test_dedup_ids_are_held_and_still_seen(tmp_path: Path) -> None:
    reports = Reports()
    seen = SeenIds(tmp_path / "seen.db", window=3, report=reports)
    seen.remember(A, "a")
    seen._conn.execute("VACUUM")  # no free pages (a new file's upgrade 2 frees version 1's): each id needs a new one
    fill(seen._conn)
    long_ids = [f"{i}-" + "x" * 3000 for i in range(4)]  # big enough to need new pages
    for message_id in long_ids:  # as features/state_publisher.py: asked, handed on, then remembered
        assert seen.seen(A, message_id) is False
        seen.remember(A, message_id)
    assert seen.held == 4 and is_disk_full(reports[0][1])
    assert seen.seen(A, long_ids[0]) and seen.seen(A, long_ids[1])
    assert seen.write_held(10) is False
    make_room(seen._conn)
    assert seen.write_held(10) is True and seen.held == 0
    count = seen._conn.execute("SELECT COUNT(*) FROM seen WHERE account = ?", (A,)).fetchone()[0]
    assert count == 3  # the window still holds
    assert [seen.seen(A, i) for i in ("a", *long_ids)] == [False, False, True, True, True]
    seen.close()


async def test_dedup_ids_of_a_turn_whose_commit_fails_on_a_full_disk_are_held(small_disk: SmallDisk) -> None:
    """The loop turn's ids share one transaction: when its COMMIT finds the disk full, every id of the
    turn is held in memory (still seen, reported) exactly as a refused INSERT's id is, and written later."""
    reports = Reports()
    seen = SeenIds(small_disk.path / "seen.db", report=reports)
    seen.remember(A, "before")
    seen.commit()
    seen._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the commit must grow the WAL
    small_disk.fill()
    ids = [f"3EB0{i:04d}" for i in range(50)]
    for message_id in ids:  # one turn, as a burst of incoming messages
        assert seen.seen(A, message_id) is False
        seen.remember(A, message_id)
    assert reports == [] and seen.held == 0  # kept for the end of the turn
    await asyncio.sleep(0)  # the end of the turn: its COMMIT fails
    assert len(reports) == 1 and reports[0][0] == "dedup ids" and is_disk_full(reports[0][1])
    assert seen.held == 50 and list(seen._held) == [(A, i) for i in ids] and not seen._conn.in_transaction
    assert all(seen.seen(A, i) for i in ids)
    seen.remember(A, "next")  # queues behind the held ones, not written first
    assert seen.held == 51 and len(reports) == 2 and reports[1][1] is None
    assert seen.write_held(100) is False
    small_disk.free()
    assert seen.write_held(100) is True and seen.held == 0
    seen.close()
    again = SeenIds(small_disk.path / "seen.db")
    assert all(again.seen(A, i) for i in ("before", *ids, "next"))
    again.close()


async def test_dedup_ids_of_a_turn_are_held_together_when_one_needs_space(tmp_path: Path) -> None:
    """The turn's ids are written in one transaction: one id refused for space holds them all, oldest
    first (SQLite's own limit: no root needed)."""
    reports = Reports()
    seen = SeenIds(tmp_path / "seen.db", report=reports)
    seen.remember(A, "a")
    seen.commit()
    seen._conn.execute("VACUUM")
    fill(seen._conn)
    seen.remember(A, "small")  # fits in a page the file has
    seen.remember(A, "x" * 3000)  # needs new pages
    assert reports == [] and seen.seen(A, "small") and seen.seen(A, "x" * 3000)
    await asyncio.sleep(0)  # the end of the turn: its write is refused, nothing of it is written
    assert seen.held == 2 and list(seen._held) == [(A, "small"), (A, "x" * 3000)] and is_disk_full(reports[0][1])
    assert seen._conn.execute("SELECT COUNT(*) FROM seen").fetchone()[0] == 1 and seen.seen(A, "small")
    make_room(seen._conn)
    assert seen.write_held(10) is True
    assert seen._conn.execute("SELECT COUNT(*) FROM seen").fetchone()[0] == 3
    seen.close()


def test_outbox_refuses_a_new_send_but_keeps_what_records_a_sent_one(tmp_path: Path) -> None:
    reports, clock = Reports(), Clock()
    box = Outbox(tmp_path / "outbox.db", clock, report=reports)
    entry, _ = box.enqueue(A, {"message": {"text": "waiting"}}, "c1")
    old, _ = box.enqueue(A, {"message": {"text": "old"}}, None)
    sent, _ = box.enqueue(A, {"message": {"text": "sent"}}, "c9")  # (its row frees no page for the big id)
    fill(box._conn)
    with pytest.raises(DiskFull):
        box.enqueue(A, {"message": {"text": "x" * 5000}}, "c2")
    box.complete(sent, "WAID9" + "w" * 5000)  # its sent record needs new pages: held with the removal
    assert box.sent_id(A, "c9") == "WAID9" + "w" * 5000
    assert [e.id for e in box.pending(A)] == [entry.id, old.id] and box.depth(A) == 2
    assert box.held == 2 and [where for where, _ in reports] == ["outbox", "outbox"]
    make_room(box._conn)
    assert box.write_held(10) is True and box.held == 0
    assert box.sent_id(A, "c9") is not None
    assert [e.id for e in box.pending(A)] == [entry.id, old.id]
    box.close()


def test_outbox_removals_on_a_full_disk_are_honoured_until_written(small_disk: SmallDisk) -> None:
    clock = Clock()
    box = Outbox(small_disk.path / "outbox.db", clock)
    sent, _ = box.enqueue(A, {"message": {"text": "sent"}}, "c1")
    late, _ = box.enqueue(A, {"message": {"text": "late"}}, None)
    kept, _ = box.enqueue(A, {"message": {"text": "kept"}}, None)
    box._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    small_disk.fill()
    box.remove(sent.id)  # sent: must never be sent again, even before its delete is written
    clock.now += timedelta(seconds=10)
    assert [e.id for e in box.take_expired(A, 5)] == [late.id, kept.id]
    assert box.pending(A) == [] and box.depth(A) == 0 and box.accounts() == []
    assert box.held == 3 and box.write_held(10) is False
    small_disk.free()
    assert box.write_held(10) is True and box.held == 0
    entry, duplicate = box.enqueue(A, {"message": {"text": "again"}}, "c1")  # its client id is free again
    assert not duplicate and [e.id for e in box.pending(A)] == [entry.id]
    box.close()


async def test_watch_shows_the_condition_pushes_back_and_recovers(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="wa_mqtt.disk_full")
    intake = Intake()
    watch = DiskFullWatch(intake, hold_max_bytes=12_000, retry_every=0.05)
    changes: list[str | None] = []
    watch.on_change = changes.append
    spool = Spool(tmp_path / "spool.db", report=watch.report)
    seen = SeenIds(tmp_path / "seen.db", report=watch.report)
    watch.add(spool)
    watch.add(seen)
    fill(spool._conn)
    spool.append("t", BIG, 1, False)
    assert watch.error is not None and changes == [watch.error] and intake.is_open
    spool.append("t", BIG, 1, False)
    spool.append("t", BIG, 1, False)  # 15,003 bytes held: over the bound
    assert not intake.is_open and watch.held == 3
    await asyncio.sleep(0.2)  # several retries while still full: nothing changes, nothing is logged again
    assert watch.error is not None and changes == [watch.error] and not intake.is_open
    make_room(spool._conn)
    await asyncio.wait_for(intake.wait_open(), 5)
    while watch.error is not None:
        await asyncio.sleep(0.01)
    assert changes[-1] is None and watch.held == 0 and len(spool) == 3
    messages = [r.getMessage() for r in caplog.records]
    assert sum("data disk full" in m for m in messages) == 1
    assert sum("data disk writable again" in m for m in messages) == 1
    assert sum("engines paused" in m for m in messages) == 1 and sum("engines resumed" in m for m in messages) == 1
    await watch.close()
    spool.close()
    seen.close()


def test_spool_counts_stay_right_when_the_next_ack_does_a_held_delete(small_disk: SmallDisk) -> None:
    spool = Spool(small_disk.path / "spool.db")
    seqs = [spool.append("t", bytes([i]) * 2000, 1, False) for i in range(5)]
    spool._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    small_disk.fill()
    spool.ack(seqs[1])  # its delete is held
    assert len(spool) == 3
    small_disk.free()
    spool.ack(seqs[2])  # deletes the held rows too: they were counted out already
    assert len(spool) == 2 and spool.size_bytes == 2 * (1 + 2000)
    spool.close()
    again = Spool(small_disk.path / "spool.db")
    try:
        assert len(again) == 2 and [e.seq for e in again.peek(10)] == seqs[3:]
    finally:
        again.close()


def test_outbox_a_refused_enqueue_keeps_the_held_removal_of_its_client_id(small_disk: SmallDisk) -> None:
    box = Outbox(small_disk.path / "outbox.db", Clock())
    refused, _ = box.enqueue(A, {"message": {"text": "refused"}}, "c1")
    box._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    small_disk.fill()
    box.remove(refused.id)  # answered "not sent": must never go out, even before its delete is written
    with pytest.raises(DiskFull):
        box.enqueue(A, {"message": {"text": "x" * 5000}}, "c1")  # the client tries again: rolled back
    assert box.pending(A) == [] and box.next_pending(A) is None and box.depth(A) == 0 and box.held == 1
    small_disk.free()
    box.remove(refused.id)  # done now: nothing is held any more
    assert box.held == 0 and box.pending(A) == []
    box.close()


def test_ids_of_messages_the_spool_lost_at_close_are_not_written(tmp_path: Path) -> None:
    """The disk full to the end: the spool counts what it held and lost (`lost`), and the bridge closes
    the dedup ids without writing the held ones (app.py), so a redelivery of a lost message after the
    restart is published, not dropped as seen."""
    spool = Spool(tmp_path / "spool.db", report=Reports())
    seen = SeenIds(tmp_path / "seen.db", report=Reports())
    fill(spool._conn)
    fill(seen._conn)
    spool.append("t", b"m" * 5000, 1, False)  # held in memory: the disk is full (no page has room for it)
    seen.remember(A, "m1", hold=True)  # its id, held as the state publisher holds it then
    spool.close()
    assert spool.lost == 1
    make_room(seen._conn)  # seen.db may have room at the end (pages freed by a trim)
    seen.close(write_held=not spool.lost)
    again = SeenIds(tmp_path / "seen.db")
    try:
        assert not again.seen(A, "m1")
    finally:
        again.close()


def test_a_spool_batch_refused_for_space_is_held_in_order(tmp_path: Path) -> None:
    """An append that needs space the batch cannot have rolls the whole batch back: its entries and
    that one are held in memory in order (published from there), later ones behind them, and
    `commit()` says not everything is on disk until `write_held` wrote them."""
    reports = Reports()
    spool = Spool(tmp_path / "spool.db", report=reports)
    first = spool.append("t", b"first", 1, False)
    spool._conn.execute("VACUUM")
    fill(spool._conn)
    small = spool.append("t", b"small", 1, False, batch=True)  # fits in the page the file has
    big = spool.append("t", BIG, 1, False, batch=True)  # needs a new page: refused
    after = spool.append("t", b"after", 1, False, batch=True)
    assert len(reports) == 2 and is_disk_full(reports[0][1]) and reports[1][1] is None
    assert spool.held == 3 and len(spool) == 4 and not spool._conn.in_transaction
    assert spool.commit() is False
    assert [e.seq for e in spool.peek(10)] == [first, small, big, after]
    make_room(spool._conn)
    assert spool.write_held(10) is True and spool.commit() is True
    spool.close()
    again = Spool(tmp_path / "spool.db")
    try:
        assert [e.payload for e in again.peek(10)] == [b"first", b"small", BIG, b"after"]
    finally:
        again.close()


async def test_dedup_ids_wait_for_the_spool_and_are_held_when_their_messages_are(small_disk: SmallDisk) -> None:
    """`before_write` (the spool's commit) runs before a turn's ids are written, so an id never
    reaches the disk before its message; when the spool's batch cannot be committed (the disk full,
    the messages held in memory) the ids are held too, and both are written once there is room,
    the spool first."""
    reports = Reports()
    spool = Spool(small_disk.path / "spool.db", report=reports)
    seen = SeenIds(small_disk.path / "seen.db", report=reports, before_write=spool.commit)
    spool.append("t", b"m0", 1, False, batch=True)
    seen.remember(A, "m0")
    await asyncio.sleep(0)  # the end of the turn: the dedup commit commits the spool's batch first
    assert [e.payload for e in spool.peek(10)] == [b"m0"]
    assert seen._conn.execute("SELECT COUNT(*) FROM seen").fetchone()[0] == 1
    for conn in (spool._conn, seen._conn):
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every commit must grow a WAL
    small_disk.fill()
    ids = [f"3EB0{i:04d}" for i in range(20)]
    for message_id in ids:
        spool.append("t", message_id.encode() * 200, 1, False, batch=True)
        seen.remember(A, message_id)
    await asyncio.sleep(0)  # the spool's COMMIT fails: its messages and so their ids are held
    assert spool.held == 20 and seen.held == 20 and all(seen.seen(A, i) for i in ids)
    assert [where for where, _ in reports] == ["spool"]  # the ids were never tried: nothing to report
    assert seen._conn.execute("SELECT COUNT(*) FROM seen").fetchone()[0] == 1
    small_disk.free()
    assert spool.write_held(100) is True and seen.write_held(100) is True
    spool.close()
    seen.close()
    spool, seen = Spool(small_disk.path / "spool.db"), SeenIds(small_disk.path / "seen.db")
    try:
        assert len(spool) == 21 and all(seen.seen(A, i) for i in ids)
    finally:
        spool.close()
        seen.close()
