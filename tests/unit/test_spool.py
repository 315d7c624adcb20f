"""The spool: FIFO order, ack semantics, the byte bound, and survival of a SIGKILL."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from wa_mqtt.mqtt.spool import Spool, SpoolEntry


@pytest.fixture
def spool(tmp_path: Path):
    s = Spool(tmp_path / "spool.db")
    yield s
    s.close()


def test_fifo_order_and_fields(spool: Spool) -> None:
    seqs = [spool.append(f"wa/1/message/{i}", f"p{i}".encode(), i % 2, i == 2) for i in range(3)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert spool.peek(10) == [
        SpoolEntry(seqs[0], "wa/1/message/0", b"p0", 0, False),
        SpoolEntry(seqs[1], "wa/1/message/1", b"p1", 1, False),
        SpoolEntry(seqs[2], "wa/1/message/2", b"p2", 0, True),
    ]
    assert [e.seq for e in spool.peek(2)] == seqs[:2]
    assert len(spool) == 3


def test_ack_removes_entry_and_everything_older(spool: Spool) -> None:
    seqs = [spool.append("t", bytes([i]), 1, False) for i in range(5)]
    spool.ack(seqs[2])
    assert [e.seq for e in spool.peek(10)] == seqs[3:]
    assert len(spool) == 2
    assert spool.size_bytes == 2 * (1 + 1)
    spool.ack(seqs[4])
    assert spool.peek(10) == [] and len(spool) == 0 and spool.size_bytes == 0


def test_peek_after_an_entry(spool: Spool) -> None:
    seqs = [spool.append("t", bytes([i]), 1, False) for i in range(5)]
    assert [e.seq for e in spool.peek(2, after=seqs[1])] == seqs[2:4]
    assert spool.peek(10, after=seqs[4]) == []


def test_entries_in_flight_when_the_connection_is_lost_come_back_marked(spool: Spool) -> None:
    seqs = [spool.append("t", bytes([i]), 1, False) for i in range(4)]
    for seq in seqs[:3]:
        spool.publishing(seq)
    spool.ack(seqs[0])  # its PUBACK came back; those of seqs[1] and seqs[2] did not
    assert not any(e.redelivered for e in spool.peek(10))
    spool.connection_lost()
    assert [(e.seq, e.redelivered) for e in spool.peek(10)] == [
        (seqs[1], True), (seqs[2], True), (seqs[3], False)]  # seqs[3] was never published


def test_after_a_kill_what_may_have_been_published_comes_back_marked(tmp_path: Path) -> None:
    """The "published up to" mark is on disk before a publish goes out (ahead by PUBLISHED_LEASE), so
    a process killed mid-publish marks every entry that may have gone out; a clean close writes the
    exact mark."""
    from wa_mqtt.mqtt.spool import PUBLISHED_LEASE

    path = tmp_path / "spool.db"
    running = Spool(path)
    seqs = [running.append("t", bytes([i % 256]), 1, False) for i in range(PUBLISHED_LEASE + 10)]
    running.publishing(seqs[0])
    running.publishing(seqs[1])
    after_kill = Spool(path)  # what a new process finds when `running` was killed here
    try:
        marked = [e.redelivered for e in after_kill.peek(1000)]
        assert marked == [True] * (PUBLISHED_LEASE + 1) + [False] * 9  # up to seqs[0] + the lease
    finally:
        after_kill.close()
    running.close()
    reopened = Spool(path)
    try:
        assert [e.seq for e in reopened.peek(1000) if e.redelivered] == seqs[:2]
    finally:
        reopened.close()


def test_survives_reopen_and_sequence_never_goes_back(tmp_path: Path) -> None:
    first = Spool(tmp_path / "spool.db")
    a = first.append("t", b"a", 1, False)
    b = first.append("t", b"b", 1, False)
    first.ack(b)  # spool empty now
    c = first.append("t", b"c", 1, False)
    first.close()
    again = Spool(tmp_path / "spool.db")
    try:
        assert [(e.seq, e.payload) for e in again.peek(10)] == [(c, b"c")]
        assert len(again) == 1 and again.size_bytes == 2
        again.ack(c)
        d = again.append("t", b"d", 1, False)
        assert a < b < c < d
    finally:
        again.close()


def test_numbers_are_never_reused_after_the_spool_is_emptied_whatever_the_way_it_ended(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No AUTOINCREMENT (upgrade 3): the "issued up to" mark, written with the append that passes it,
    keeps numbers unique across restarts, after a clean close or a kill, the spool emptied or not,
    so an entry never takes the number of one already published (the "published up to" mark)."""
    from wa_mqtt.mqtt import spool as spool_module

    monkeypatch.setattr(spool_module, "ISSUED_LEASE", 4)  # the mark passed several times below
    path = tmp_path / "spool.db"
    last = 0
    for run in range(3):
        running = Spool(path)
        seqs = [running.append("t", b"x", 1, False) for _ in range(6 + run)]
        assert seqs[0] > last and seqs == sorted(seqs)
        running.publishing(seqs[-1])
        running.ack(seqs[-1])  # emptied: nothing on disk tells the numbers any more but the marks
        assert len(running) == 0
        last = seqs[-1]
        if run == 1:
            running.close()  # a clean close; the other runs end as a kill would (never closed)
    after = Spool(path)
    try:
        fresh = after.append("t", b"y", 1, False)
        assert fresh > last
        assert after.peek(10) == [SpoolEntry(fresh, "t", b"y", 1, False)]  # not marked as maybe delivered
        table = after._conn.execute("SELECT sql FROM sqlite_master WHERE name = 'spool'").fetchone()[0]
        assert "AUTOINCREMENT" not in table  # private: the schema
    finally:
        after.close()


def test_the_issued_mark_is_written_only_with_the_append_that_passes_it(tmp_path: Path) -> None:
    """One write of the mark per ISSUED_LEASE appends, in the same transaction as that append."""
    from wa_mqtt.mqtt.spool import ISSUED_LEASE

    spool = Spool(tmp_path / "spool.db")
    try:
        statements: list[str] = []
        spool._conn.set_trace_callback(statements.append)  # private: the SQL an append runs
        for _ in range(ISSUED_LEASE * 2):
            spool.append("t", b"x", 1, False)
        marks = [s for s in statements if "issued_upto" in s]
        assert len(marks) == 2
        inserts = sum(1 for s in statements if s.startswith("INSERT INTO spool "))
        assert inserts == ISSUED_LEASE * 2
        assert statements[statements.index(marks[1]) - 2].startswith("BEGIN")  # insert + mark: one commit
    finally:
        spool.close()


@pytest.mark.parametrize("tail_entries", [0, 3, 512])
def test_peek_from_the_tail_in_memory_is_what_the_file_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            tail_entries: int) -> None:
    """`peek` reads the entries this process wrote from memory (the tail); after any mix of appends,
    acks, overflow drops, peeks and lost connections it returns what a query of the file returns
    (checked against a second Spool opened on the same file, which has no tail), marked as before."""
    import random

    from wa_mqtt.mqtt import spool as spool_module

    monkeypatch.setattr(spool_module, "TAIL_ENTRIES", tail_entries)
    monkeypatch.setattr(spool_module, "TAIL_BYTES", 3_000)  # a big entry pushes the tail back too
    rng = random.Random(12)
    path = tmp_path / "spool.db"
    spool = Spool(path, max_bytes=20_000)  # overflow drops happen too
    try:
        seqs: list[int] = []
        for step in range(400):
            action = rng.random()
            if action < 0.5:
                seqs.append(spool.append(f"t/{step}", bytes([step % 256]) * rng.choice([1, 50, 900, 2_500]), 1,
                                         step % 7 == 0))
            elif action < 0.65 and seqs:
                spool.ack(rng.choice(seqs))
            elif action < 0.8:
                for entry in spool.peek(rng.randint(1, 5)):
                    spool.publishing(entry.seq)
            elif action < 0.85:
                spool.connection_lost()
            limit, after = rng.randint(1, 70), rng.choice([0, *seqs[-30:]])
            got = spool.peek(limit, after)
            reader = Spool(path)
            try:
                on_disk = reader.peek(limit, max(after, spool._acked))  # private: what it acknowledged
            finally:
                reader._conn.close()  # not close(): that would rewrite the "published" mark
            assert [(e.seq, e.topic, e.payload, e.qos, e.retain) for e in got] == \
                [(e.seq, e.topic, e.payload, e.qos, e.retain) for e in on_disk]
            assert [e.redelivered for e in got] == [e.seq <= spool._redeliver_upto for e in got]
        assert spool.dropped > 0  # the overflow path was taken
    finally:
        spool.close()


def test_stays_under_max_bytes_by_dropping_oldest_with_one_warning(tmp_path: Path, caplog) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=100)  # each entry: 1 + 19 = 20 bytes
    try:
        with caplog.at_level(logging.WARNING, logger="wa_mqtt.mqtt.spool"):
            seqs = [spool.append("t", b"x" * 19, 1, False) for _ in range(8)]
        assert [e.seq for e in spool.peek(100)] == seqs[3:]
        assert spool.size_bytes == 100 and len(spool) == 5
        assert spool.dropped == 3
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1

        spool.ack(seqs[3])  # the broker is back: a later overflow is a new episode
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="wa_mqtt.mqtt.spool"):
            big = spool.append("t", b"y" * 59, 1, False)  # 80 + 60 bytes: the 2 oldest must go
        assert [e.seq for e in spool.peek(100)] == [seqs[6], seqs[7], big]
        assert spool.dropped == 5 and spool.size_bytes == 100
        assert len(caplog.records) == 1
    finally:
        spool.close()


def test_entry_larger_than_the_bound_is_kept_alone(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=50)
    try:
        spool.append("t", b"small", 1, False)
        huge = spool.append("t", b"z" * 500, 1, False)
        assert [e.seq for e in spool.peek(10)] == [huge]
        assert spool.dropped == 1
    finally:
        spool.close()


def test_file_is_private(spool: Spool) -> None:
    spool.append("t", b"secret", 1, False)
    for suffix in ("", "-wal"):
        path = Path(str(spool.path) + suffix)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_bad_synchronous_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        Spool(tmp_path / "spool.db", synchronous="OFF")  # type: ignore[arg-type]


def test_appends_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    child = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from wa_mqtt.mqtt.spool import Spool
        spool = Spool(Path({str(path)!r}))
        seqs = [spool.append("wa/1/message", b"m%d" % i, 1, False) for i in range(200)]
        spool.ack(seqs[49])
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", child], timeout=30)
    assert result.returncode == -9
    spool = Spool(path)
    try:
        entries = spool.peek(1000)
        assert [e.payload for e in entries] == [b"m%d" % i for i in range(50, 200)]
        assert len(spool) == 150
    finally:
        spool.close()
    assert os.path.exists(path)


def test_wal_checkpoints_run_off_the_writer_and_rewind_the_wal(tmp_path: Path) -> None:
    """SQLite's inline checkpoints stalled the event loop ~10 ms every ~1,000 commits; ours run on a
    thread with their own connection, and a complete one lets the next commit rewind the WAL."""
    import threading

    from wa_mqtt.durable import WalConnection, open_wal

    conn = open_wal(tmp_path / "x.db")
    assert isinstance(conn, WalConnection) and conn.checkpointer is not None
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0  # never inline
    conn.execute("CREATE TABLE t (v BLOB)")
    for _ in range(500):
        conn.execute("INSERT INTO t VALUES (?)", (b"x" * 600,))
    frames, copied = conn.checkpointer.checkpoint()
    assert frames > 100 and copied == frames
    assert conn.checkpointer.checkpoint() is None  # nothing new: skipped
    conn.execute("INSERT INTO t VALUES (?)", (b"y",))
    frames, copied = conn.checkpointer.checkpoint()
    assert frames == copied == 1  # the WAL started over
    names = {t.name for t in threading.enumerate()}
    assert "checkpoint-x.db" in names
    conn.close()
    assert "checkpoint-x.db" not in {t.name for t in threading.enumerate()}


class _PauseBeforeRestart:
    """A checkpointer's connection that commits the owner's open transaction just before a RESTART:
    the pause between two of the owner's transactions, which a RESTART waits for the writer lock in."""

    def __init__(self, conn: sqlite3.Connection, owner: sqlite3.Connection) -> None:
        self._conn, self._owner = conn, owner

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if "RESTART" in sql and self._owner.in_transaction:
            self._owner.execute("COMMIT")
        return self._conn.execute(sql, *args)

    def close(self) -> None:
        self._conn.close()


def _wal_files(tmp_path: Path) -> tuple[Path, sqlite3.Connection, Path]:
    """A WAL database past WAL_SIZE_LIMIT, its background checkpoints off: (path, owner, its WAL)."""
    from wa_mqtt.durable import WAL_SIZE_LIMIT, open_wal

    path = tmp_path / "x.db"
    conn = open_wal(path)
    assert conn.checkpointer is not None
    conn.checkpointer.close()  # the test runs the checkpoints itself
    conn.checkpointer = None
    conn.execute("CREATE TABLE t (v BLOB)")
    wal = Path(f"{path}-wal")
    while wal.stat().st_size <= WAL_SIZE_LIMIT + (1 << 20):
        conn.execute("INSERT INTO t VALUES (?)", (b"x" * 600,))
    return path, conn, wal


def _generation(wal: Path) -> bytes:
    """The WAL header's checkpoint sequence and salts: new each time the WAL starts over."""
    with open(wal, "rb") as f:
        return f.read(24)[12:]


def test_a_wal_written_during_every_checkpoint_starts_over_once_past_its_size_limit(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A commit starts the WAL over only if it begins while the WAL is wholly copied. Under sustained
    writes a commit always landed during the PASSIVE (here: the owner's transaction is open across it),
    so none did, and the WAL grew to 30 - 40 MB in the send benchmark. Past WAL_SIZE_LIMIT, a PASSIVE
    that copied all it saw is followed by a RESTART, which takes the writer lock in the owner's next
    pause; the owner's next commit then starts the WAL over and cuts the file back."""
    from wa_mqtt.durable import WAL_SIZE_LIMIT, WalCheckpointer

    path, conn, wal = _wal_files(tmp_path)
    checkpointer = WalCheckpointer(path, every=3600, cap=1 << 18)  # the WAL is past 4 x cap too
    setattr(checkpointer, "_conn", _PauseBeforeRestart(checkpointer._conn, conn))  # noqa: B010 (a test seam)
    caplog.set_level(logging.DEBUG, logger="wa_mqtt.durable")
    try:
        before = _generation(wal)
        conn.execute("BEGIN IMMEDIATE")  # a commit in flight during the checkpoint
        conn.execute("INSERT INTO t VALUES (?)", (b"y",))
        result = checkpointer.checkpoint()
        assert result is not None and result[0] == result[1]  # all it saw was copied
        if conn.in_transaction:
            conn.execute("COMMIT")
        conn.execute("INSERT INTO t VALUES (?)", (b"z",))  # the owner's next commit
        assert _generation(wal) != before  # the WAL started over
        assert wal.stat().st_size <= WAL_SIZE_LIMIT  # and was cut back
        conn.execute("INSERT INTO t VALUES (?)", (b"z",))
        checkpointer.checkpoint()  # a PASSIVE: the RESTART that went through left no RESTART due
        assert sum("RESTART" in r.getMessage() for r in caplog.records) == 1
    finally:
        checkpointer.close()
        conn.close()


def test_a_restart_gives_up_soon_on_a_reader_that_keeps_its_snapshot(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A RESTART holds writers back while it waits for readers: under SQLite's 5 s busy timeout another
    process's open read transaction would stall the bridge's loop for seconds, every round. It gives up
    after RESTART_WAIT_MS, and is tried again only once the WAL grew by WAL_SIZE_LIMIT more."""
    import time

    from wa_mqtt.durable import BUSY_TIMEOUT_MS, WAL_SIZE_LIMIT, WalCheckpointer

    path, conn, wal = _wal_files(tmp_path)
    checkpointer = WalCheckpointer(path, every=3600, cap=1 << 18)  # PASSIVEs "fall behind" too: past 4 x cap
    reader = sqlite3.connect(path, isolation_level=None)

    def read_the_latest() -> None:  # a reader that reads again and again, each time the latest snapshot
        if reader.in_transaction:
            reader.execute("COMMIT")
        reader.execute("BEGIN")
        assert reader.execute("SELECT COUNT(*) FROM t").fetchone()[0] > 0

    def restarts() -> int:
        return sum("RESTART" in r.getMessage() for r in caplog.records)

    try:
        read_the_latest()  # from here on the owner's commits cannot start the WAL over by themselves
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")  # copied already: the timed call copies one frame
        conn.execute("INSERT INTO t VALUES (?)", (b"y",))
        read_the_latest()
        caplog.set_level(logging.DEBUG, logger="wa_mqtt.durable")
        started = time.monotonic()
        checkpointer.checkpoint()
        assert time.monotonic() - started < BUSY_TIMEOUT_MS / 1000 / 2  # gave up: not SQLite's 5 s
        assert restarts() == 1
        conn.execute("INSERT INTO t VALUES (?)", (b"z",))
        read_the_latest()
        checkpointer.checkpoint()
        assert restarts() == 1  # not every round
        size = wal.stat().st_size
        while wal.stat().st_size <= size + WAL_SIZE_LIMIT:
            conn.execute("INSERT INTO t VALUES (?)", (b"x" * 600,))
        read_the_latest()
        checkpointer.checkpoint()
        assert restarts() == 2  # once the WAL grew by WAL_SIZE_LIMIT more
    finally:
        reader.close()
        checkpointer.close()
        conn.close()


def _version_2_spool(path: Path, entries: int, size: int) -> None:
    """A spool as version 2 left it: AUTOINCREMENT, `entries` waiting."""
    import sqlite3

    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript("""
CREATE TABLE spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL,
                    qos INTEGER NOT NULL, retain INTEGER NOT NULL, size INTEGER NOT NULL);
CREATE TABLE spool_state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
PRAGMA user_version = 2;
""")
    with db:
        db.executemany("INSERT INTO spool (topic, payload, qos, retain, size) VALUES ('t', ?, 1, 0, ?)",
                       [(b"x" * size, size + 1)] * entries)
    db.close()


def test_a_full_spool_upgrades_on_a_nearly_full_disk_and_loses_autoincrement_once_empty(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Upgrade 3 must not copy the table: a spool is largest when the broker was away and the disk
    filled, and a failed upgrade keeps the bridge from starting. The file may grow by 64 KiB only."""
    from wa_mqtt import schema

    path = tmp_path / "spool.db"
    _version_2_spool(path, 2000, 1000)  # ~2 MB waiting
    real = schema.open_wal

    def tight(*args: object) -> object:
        conn = real(*args)  # type: ignore[arg-type]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + 16}")
        return conn

    monkeypatch.setattr(schema, "open_wal", tight)
    spool = Spool(path)
    assert len(spool) == 2000 and spool.peek(1)[0].seq == 1
    assert spool.append("t", b"y", 1, False) == 2001
    spool.close()
    monkeypatch.undo()
    spool = Spool(path)  # entries still waiting: the table stays as it is
    (sql,) = spool._conn.execute("SELECT sql FROM sqlite_master WHERE name = 'spool'").fetchone()
    assert "AUTOINCREMENT" in sql.upper()
    spool.ack(2001)
    spool.close()
    spool = Spool(path)  # empty now: rebuilt without AUTOINCREMENT, and the numbers go on
    (sql,) = spool._conn.execute("SELECT sql FROM sqlite_master WHERE name = 'spool'").fetchone()
    assert "AUTOINCREMENT" not in sql.upper()
    assert spool.append("t", b"z", 1, False) > 2001  # above the "issued up to" mark, never reused
    spool.close()


def test_counts_after_removals_in_and_beyond_the_in_memory_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A removal of entries all in the tail takes their sizes from it (no RETURNING); one reaching below
    the tail's floor reads them back from the file: either way the counts match the file."""
    import random

    import wa_mqtt.mqtt.spool as spool_module

    monkeypatch.setattr(spool_module, "TAIL_ENTRIES", 8)
    spool = Spool(tmp_path / "spool.db")
    rng = random.Random(7)
    appended: list[int] = []
    for _ in range(300):
        if rng.random() < 0.6:
            appended.append(spool.append(f"t/{rng.randrange(100)}", b"p" * rng.randrange(1, 300), 1, False))
        elif appended:
            spool.ack(rng.choice(appended))
        count, size = spool._conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM spool WHERE seq > ?", (spool._acked,)).fetchone()
        assert (len(spool), spool.size_bytes) == (count, size)
    spool.close()


def wal_frames(spool: Spool) -> int:
    """Pages written to the WAL since its last reset (each commit writes the pages it changed)."""
    return int(spool._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1])


def test_a_batch_is_one_commit_and_unseen_until_committed(tmp_path: Path) -> None:
    """`append(batch=True)` writes into one open transaction: not in the file for another reader and
    not returned by `peek` (never published) before `commit()`; then all of it, in order, with the
    WAL pages of one commit instead of one commit each."""
    spool = Spool(tmp_path / "spool.db")
    other = sqlite3.connect(tmp_path / "spool.db")
    try:
        spool._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        singles = [spool.append("wa/1/receipt", b"r%d" % i, 1, False) for i in range(20)]
        frames_singly = wal_frames(spool)
        spool.ack(singles[-1])
        spool._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        batched = [spool.append("wa/1/receipt", b"b%d" % i, 1, False, batch=True) for i in range(20)]
        assert batched == sorted(batched) and batched[0] > singles[-1]
        assert spool.peek(100) == [] and len(spool) == 20  # counted, not yet publishable
        assert other.execute("SELECT COUNT(*) FROM spool").fetchone()[0] == 0
        assert spool.commit() is True
        assert [e.payload for e in spool.peek(100)] == [b"b%d" % i for i in range(20)]
        assert other.execute("SELECT COUNT(*) FROM spool").fetchone()[0] == 20
        assert frames_singly >= 20 and wal_frames(spool) <= 3
        assert spool.commit() is True  # nothing open: nothing to do
    finally:
        other.close()
        spool.close()


def test_any_other_call_commits_the_open_batch_first(tmp_path: Path) -> None:
    """A batch never waits behind an ack, a published mark or close, and a peek that reads the file
    (entries from before a restart) stops below it."""
    path = tmp_path / "spool.db"
    spool = Spool(path)
    old = [spool.append("t", b"old%d" % i, 1, False) for i in range(3)]
    spool.close()
    spool = Spool(path)  # none of the file is in the in-memory tail: peek reads it
    new = [spool.append("t", b"new%d" % i, 1, False, batch=True) for i in range(3)]
    assert [e.seq for e in spool.peek(10)] == old
    spool.ack(old[0])
    assert [e.seq for e in spool.peek(10)] == old[1:] + new  # committed by the ack
    later = spool.append("t", b"later", 1, False, batch=True)
    spool.close()  # commits it
    again = Spool(path)
    try:
        assert [e.seq for e in again.peek(10)] == old[1:] + new + [later]
    finally:
        again.close()


def test_a_batch_survives_sigkill_once_committed(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, signal
        from wa_mqtt.mqtt.spool import Spool
        s = Spool({str(tmp_path / 'spool.db')!r})
        for i in range(5):
            s.append('t', b'kept%d' % i, 1, False, batch=True)
        s.commit()
        s.append('t', b'open', 1, False, batch=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert subprocess.run([sys.executable, "-c", script], check=False, timeout=30).returncode == -9
    spool = Spool(tmp_path / "spool.db")
    try:
        assert [e.payload for e in spool.peek(10)] == [b"kept%d" % i for i in range(5)]
    finally:
        spool.close()
