"""The outbox: order, duplicates, TTL by the injected clock, idempotency window, and SIGKILL survival."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from wa_mqtt.accounts.outbox import PAGE_SIZE, Outbox
from wa_mqtt.disk_full import DiskFull
from wa_mqtt.store.protocols import OutboxStore

T0 = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)
A, B = "557996277210", "5511999999999"


class FakeClock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def outbox(tmp_path: Path, clock: FakeClock):
    box = Outbox(tmp_path / "outbox.db", clock)
    yield box
    box.close()


def request(text: str) -> dict:
    return {"message": {"to": B, "text": text}, "transaction": {"t": text},
            "route": {"response_topic": "reply/here", "correlation": "00ff"}}


def send(box: OutboxStore, account: str, client_id: str, wa_id: str) -> None:
    """A send that went out, recorded as the bridge records it: queued with its client id and its
    WhatsApp id, then completed (which remembers the client id as sent)."""
    entry, duplicate = box.enqueue(account, request(client_id), client_id, wa_id)
    assert not duplicate
    box.complete(entry, wa_id)


def test_enqueue_keeps_order_per_account(outbox: Outbox, clock: FakeClock) -> None:
    first, dup = outbox.enqueue(A, request("one"), None)
    assert dup is False
    assert first.account == A and first.request == request("one") and first.client_id is None
    assert first.created_at == T0
    clock.advance(1)
    outbox.enqueue(B, request("other"), None)
    outbox.enqueue(A, request("two"), "k2")
    assert [e.request["message"]["text"] for e in outbox.pending(A)] == ["one", "two"]
    assert [e.request["message"]["text"] for e in outbox.pending(B)] == ["other"]
    assert outbox.depth(A) == 2 and outbox.depth(B) == 1 and outbox.depth("1234567") == 0
    assert outbox.accounts() == sorted([A, B])


def test_duplicate_client_id_returns_the_waiting_entry(outbox: Outbox) -> None:
    entry, dup = outbox.enqueue(A, request("one"), "key")
    again, dup2 = outbox.enqueue(A, request("changed"), "key")
    assert (dup, dup2) == (False, True)
    assert again == entry
    assert outbox.depth(A) == 1
    other, dup3 = outbox.enqueue(B, request("one"), "key")  # same key, another account: not a duplicate
    assert dup3 is False and other.id != entry.id


def test_remove_and_accounts(outbox: Outbox) -> None:
    entry, _ = outbox.enqueue(A, request("one"), "key")
    outbox.remove(entry.id)
    outbox.remove(entry.id)  # already gone: no error
    assert outbox.pending(A) == [] and outbox.accounts() == []
    again, dup = outbox.enqueue(A, request("one"), "key")  # the key is free again once removed
    assert dup is False and again.id > entry.id


def test_take_expired_uses_the_clock(outbox: Outbox, clock: FakeClock) -> None:
    old, _ = outbox.enqueue(A, request("old"), None)
    clock.advance(50)
    mid, _ = outbox.enqueue(A, request("mid"), None)
    other, _ = outbox.enqueue(B, request("other-account"), None)
    clock.advance(60)  # old is 110 s old, mid 60 s
    assert outbox.take_expired(A, 100) == [old]
    assert outbox.take_expired(A, 100) == []
    assert outbox.pending(A) == [mid]
    clock.advance(41)
    assert outbox.take_expired(A, 100, keep={mid.id}) == []  # with the engine now: answered by it
    assert outbox.take_expired(A, 100, keep={old.id}) == [mid]
    assert outbox.pending(B) == [other]


def test_clear_account(outbox: Outbox) -> None:
    outbox.enqueue(A, request("a1"), None)
    outbox.enqueue(A, request("a2"), None)
    outbox.enqueue(B, request("b"), None)
    assert [e.request["message"]["text"] for e in outbox.clear(A)] == ["a1", "a2"]
    assert outbox.accounts() == [B]


def test_sent_ids_are_remembered_for_the_window(outbox: Outbox, clock: FakeClock) -> None:
    assert outbox.sent_id(A, "k") is None
    send(outbox, A, "k", "3EB0AAA")
    assert outbox.sent_id(A, "k") == "3EB0AAA"
    assert outbox.sent_id(B, "k") is None
    clock.advance(24 * 3600 - 1)
    assert outbox.sent_id(A, "k") == "3EB0AAA"
    clock.advance(2)
    assert outbox.sent_id(A, "k") is None
    send(outbox, A, "k2", "3EB0BBB")  # prunes the expired record
    rows = outbox._conn.execute("SELECT client_id FROM sent").fetchall()
    assert rows == [("k2",)]


def test_naive_clock_is_refused(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", lambda: datetime(2026, 1, 1))
    try:
        with pytest.raises(ValueError):
            box.enqueue(A, request("x"), None)
    finally:
        box.close()


def test_persists_across_reopen_and_is_private(tmp_path: Path, clock: FakeClock) -> None:
    box = Outbox(tmp_path / "outbox.db", clock)
    entry, _ = box.enqueue(A, request("one"), "key")
    send(box, A, "sent-key", "3EB0CCC")
    box.close()
    assert stat.S_IMODE((tmp_path / "outbox.db").stat().st_mode) == 0o600
    box = Outbox(tmp_path / "outbox.db", clock)
    try:
        assert box.pending(A) == [entry]
        assert box.enqueue(A, request("one"), "key") == (entry, True)
        assert box.sent_id(A, "sent-key") == "3EB0CCC"
    finally:
        box.close()


def test_survives_sigkill(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "outbox.db"
    child = textwrap.dedent(f"""
        import os, signal
        from datetime import datetime, timezone
        from pathlib import Path
        from wa_mqtt.accounts.outbox import Outbox
        box = Outbox(Path({str(path)!r}), lambda: datetime(2026, 11, 24, 10, tzinfo=timezone.utc))
        for i in range(20):
            box.enqueue({A!r}, {{"message": {{"text": "m%d" % i}}}}, "k%d" % i)
        done, _ = box.enqueue({A!r}, {{"message": {{"text": "done"}}}}, "done", "3EB0DDD")
        box.complete(done, "3EB0DDD")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert subprocess.run([sys.executable, "-c", child], timeout=30).returncode == -9
    box = Outbox(path, clock)
    try:
        assert [e.request["message"]["text"] for e in box.pending(A)] == [f"m{i}" for i in range(20)]
        assert [e.client_id for e in box.pending(A)] == [f"k{i}" for i in range(20)]
        assert box.sent_id(A, "done") == "3EB0DDD"
    finally:
        box.close()


def test_the_whatsapp_id_is_chosen_once_and_kept_for_every_try(outbox: Outbox) -> None:
    entry, _ = outbox.enqueue(A, request("one"), "key")
    assert (entry.wa_id, entry.tries) == (None, 0)
    first = outbox.begin_attempt(entry.id, "3EB0FIRST")
    assert first is not None and (first.wa_id, first.tries) == ("3EB0FIRST", 1)
    again = outbox.begin_attempt(entry.id, "3EB0OTHER")  # a retry: the stored id wins
    assert again is not None and (again.wa_id, again.tries) == ("3EB0FIRST", 2)
    outbox.end_attempt(entry.id)  # the engine refused that try: it did not reach WhatsApp
    assert outbox.pending(A)[0].tries == 1
    outbox.complete(again, "3EB0FIRST")
    assert outbox.pending(A) == [] and outbox.sent_id(A, "key") == "3EB0FIRST"
    assert outbox.begin_attempt(entry.id, "3EB0NEW") is None  # gone


def test_next_pending_sees_entries_queued_meanwhile(outbox: Outbox) -> None:
    one, _ = outbox.enqueue(A, request("one"), None)
    outbox.enqueue(B, request("other"), None)
    assert outbox.next_pending(A) == one
    two, _ = outbox.enqueue(A, request("two"), None)
    assert outbox.next_pending(A, one.id) == two
    assert outbox.next_pending(A, two.id) is None


def test_an_outbox_of_the_previous_version_is_upgraded(tmp_path: Path, clock: FakeClock) -> None:
    import sqlite3

    path = tmp_path / "outbox.db"
    with sqlite3.connect(path) as db:  # the schema before `wa_id` and `tries`
        db.execute("CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, account TEXT NOT NULL,"
                   " request TEXT NOT NULL, client_id TEXT, created_at REAL NOT NULL)")
        db.execute("INSERT INTO outbox (account, request, client_id, created_at) VALUES (?, ?, 'k', ?)",
                   (A, '{"message": {"text": "old"}}', T0.timestamp()))
    box = Outbox(path, clock)
    try:
        [entry] = box.pending(A)
        assert (entry.request["message"]["text"], entry.wa_id, entry.tries) == ("old", None, 0)
        started = box.begin_attempt(entry.id, "3EB0NEW")
        assert started is not None and started.wa_id == "3EB0NEW"
    finally:
        box.close()


def test_a_send_enqueued_with_its_try_begun_keeps_that_whatsapp_id_across_a_reopen(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, clock)
    entry, duplicate = box.enqueue(A, request("now"), "k", "3EB0FIRST")
    assert not duplicate and (entry.wa_id, entry.tries) == ("3EB0FIRST", 1)
    plain, _ = box.enqueue(A, request("later"), None)
    assert (plain.wa_id, plain.tries) == (None, 0)
    box.sync()
    box.close()
    box = Outbox(path, clock)  # a bridge killed before the answer: the try counts, its id is kept
    again = box.begin_attempt(entry.id, "3EB0OTHER")
    assert again is not None and (again.wa_id, again.tries) == ("3EB0FIRST", 2)
    box.close()


def test_depth_is_counted_in_memory_and_matches_the_file(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, clock)

    def on_file(account: str) -> int:
        return int(box._conn.execute("SELECT COUNT(*) FROM outbox WHERE account = ?", (account,)).fetchone()[0])

    def check() -> None:
        for account in (A, B):
            assert box.depth(account) == on_file(account)
        assert box.accounts() == [a for a in sorted((A, B)) if on_file(a)]

    a1, _ = box.enqueue(A, request("a1"), None)
    a2, _ = box.enqueue(A, request("a2"), "k2", "3EB0A2")
    box.enqueue(A, request("a2 again"), "k2")  # a duplicate: nothing added
    b1, _ = box.enqueue(B, request("b1"), None)
    check()
    box.complete(a1, "3EB0A1")
    box.complete(a1, "3EB0A1")  # gone already: counted once
    check()
    box.complete_and_begin(a2, "3EB0A2", (b1.id, "3EB0B1"))
    box.remove(b1.id)
    box.remove(b1.id)
    check()
    old, _ = box.enqueue(A, request("old"), None)
    clock.advance(100)
    box.enqueue(A, request("new"), None)
    box.enqueue(B, request("b2"), None)
    assert box.take_expired(A, 50) == [old]
    check()
    box.clear(B)
    check()
    box.close()
    box = Outbox(path, clock)  # counted from the file at open
    check()
    assert box.depth(A) == 1
    box.close()


def test_fsyncs_follow_the_commits_that_promise_them(tmp_path: Path, clock: FakeClock,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite runs at synchronous=NORMAL; the outbox fsyncs its WAL itself, after the commit, exactly
    where a power loss must not undo a change (remove, expiry, clear) and on `sync()`."""
    path = tmp_path / "outbox.db"
    box = Outbox(path, clock)
    assert box._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL: no PRAGMA per call
    seen: list[int] = []  # rows on the file (as another connection sees them) at each fsync
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        reader = sqlite3.connect(path)
        seen.append(reader.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        reader.close()
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    first, _ = box.enqueue(A, request("one"), None, "3EB0ONE")
    second, _ = box.enqueue(A, request("two"), "k2")
    box.begin_attempt(second.id, "3EB0TWO")
    box.end_attempt(second.id)
    box.complete(first, "3EB0ONE")
    assert seen == []  # none of these waits for the disk
    box.sync()
    box.sync()  # nothing new: no second fsync
    assert seen == [1]
    box.remove(second.id)
    assert seen == [1, 0]  # after the commit: the delete is what gets synced
    box.remove(second.id)  # nothing removed: nothing to sync
    assert len(seen) == 2
    send(box, A, "k9", "3EB0NINE")  # a completion that records a client id waits for no disk either
    assert len(seen) == 2
    box.sync()
    assert seen == [1, 0, 0]
    box.sync()  # covered by the last fsync already
    assert len(seen) == 3
    box.enqueue(A, request("old"), None)
    clock.advance(100)
    box.enqueue(A, request("b"), None)
    assert len(box.take_expired(A, 50)) == 1 and seen[-1] == 1 and len(seen) == 4
    assert box.take_expired(A, 50) == [] and len(seen) == 4
    assert len(box.clear(A)) == 1 and seen[-1] == 0 and len(seen) == 5
    box.close()
    relaxed = Outbox(tmp_path / "relaxed.db", clock, synchronous="NORMAL")
    entry, _ = relaxed.enqueue(A, request("one"), None)
    relaxed.sync()
    relaxed.remove(entry.id)
    assert len(seen) == 5  # NORMAL: the outbox never fsyncs
    relaxed.close()


def test_sent_records_past_the_window_are_pruned_at_most_once_a_minute(outbox: Outbox, clock: FakeClock) -> None:
    def on_file() -> list[str]:
        return sorted(row[0] for row in outbox._conn.execute("SELECT client_id FROM sent"))

    send(outbox, A, "old", "3EB0OLD")
    clock.advance(24 * 3600 - 10)
    send(outbox, A, "x", "3EB0X")  # pruned now: nothing past the window yet
    clock.advance(20)  # "old" is past the window
    entry, _ = outbox.enqueue(A, request("y"), "y")
    outbox.complete(entry, "3EB0Y")  # 20 s after the last prune: no prune
    assert outbox.sent_id(A, "old") is None and outbox.sent_id(A, "y") == "3EB0Y"
    assert on_file() == ["old", "x", "y"]
    clock.advance(41)
    send(outbox, A, "z", "3EB0Z")  # a minute on: pruned
    assert on_file() == ["x", "y", "z"]


def test_a_single_statement_enqueue_or_completion_on_a_full_disk(tmp_path: Path, clock: FakeClock) -> None:
    box = Outbox(tmp_path / "outbox.db", clock)
    waiting, _ = box.enqueue(A, request("waiting"), None)
    pages = box._conn.execute("PRAGMA page_count").fetchone()[0]
    box._conn.execute(f"PRAGMA max_page_count = {pages}")  # the file may not grow: SQLITE_FULL
    with pytest.raises(DiskFull):
        box.enqueue(A, {"message": {"text": "x" * 5000}}, None)
    assert [e.id for e in box.pending(A)] == [waiting.id] and box.depth(A) == 1 and not box._conn.in_transaction
    box._conn.execute("PRAGMA max_page_count = 1073741823")
    box.complete(waiting, "3EB0W")
    assert box.pending(A) == [] and box.depth(A) == 0 and box.held == 0
    box.close()


def test_a_new_file_gets_small_pages_and_an_existing_one_is_kept_as_it_is(tmp_path: Path, clock: FakeClock) -> None:
    box = Outbox(tmp_path / "new" / "outbox.db", clock)
    entry, _ = box.enqueue(A, request("x" * 5000), None)  # a row larger than a page
    assert box._conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE < 4096
    assert box._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert stat.S_IMODE((tmp_path / "new" / "outbox.db").stat().st_mode) == 0o600
    box.close()
    box = Outbox(tmp_path / "new" / "outbox.db", clock)
    assert box.pending(A) == [entry]
    box.close()
    old = sqlite3.connect(tmp_path / "old.db")  # written before: SQLite's default page size
    old.execute("CREATE TABLE unrelated (x)")
    old.close()
    box = Outbox(tmp_path / "old.db", clock)
    assert box._conn.execute("PRAGMA page_size").fetchone()[0] == 4096
    box.enqueue(A, request("one"), None)
    assert box.depth(A) == 1
    box.close()


def test_completing_an_entry_that_expired_meanwhile_on_a_full_disk_holds_no_removal(
        tmp_path: Path, clock: FakeClock) -> None:
    """Found in review: the send of an entry that expired while it was with the engine comes back on a
    full disk; no row is left to remove, so none may be held (depth would count one too few)."""
    box = Outbox(tmp_path / "outbox.db", clock)
    gone, _ = box.enqueue(A, request("one"), "c" * 20000)
    other, _ = box.enqueue(A, request("two"), None)
    assert box.take_expired(A, -1) == [gone, other]
    box.enqueue(A, request("three"), None)
    for i in range(200):  # use up the file's free pages, then forbid growth
        send(box, A, f"fill{i}" * 20, "W")
    pages = box._conn.execute("PRAGMA page_count").fetchone()[0]
    box._conn.execute(f"PRAGMA max_page_count = {pages}")
    box.complete(gone, "3EB0")  # its sent record cannot be written: held in memory
    assert len(box.pending(A)) == 1 and box.depth(A) == 1 and box.sent_id(A, "c" * 20000) == "3EB0"
    assert box.held == 1  # the sent record only
    box.close()


def test_complete_all_is_one_commit_for_the_sends_answered_together(tmp_path: Path, clock: FakeClock,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """What `complete` does to each, in one statement (or one transaction with client ids): entries gone
    meanwhile skipped, client ids remembered, the count kept; on a full disk all of it held."""
    box = Outbox(tmp_path / "outbox.db", clock)
    gone, _ = box.enqueue(A, request("gone"), None)
    clock.advance(10)
    kept, _ = box.enqueue(A, request("kept"), None)
    one, _ = box.enqueue(A, request("one"), None, "3EB0ONE")
    two, _ = box.enqueue(A, request("two"), "k2", "3EB0TWO")
    three, _ = box.enqueue(A, request("three"), None)
    assert box.take_expired(A, 5) == [gone]  # expired while it was with the engine
    commits = box._commits
    statements: list[str] = []
    box._conn.set_trace_callback(statements.append)
    box.complete_all([(one, "3EB0ONE"), (gone, "3EB0GONE"), (two, "3EB0TWO")])
    box._conn.set_trace_callback(None)
    assert box._commits == commits + 1 and sum(s.startswith("DELETE FROM outbox") for s in statements) == 1
    assert [e.id for e in box.pending(A)] == [kept.id, three.id] and box.depth(A) == 2
    assert box.sent_id(A, "k2") == "3EB0TWO"
    box.complete_all([(three, "3EB0THREE")])
    assert box.depth(A) == 1
    last, _ = box.enqueue(A, request("last"), "k9")
    first = box.pending(A)[0]
    monkeypatch.setattr("wa_mqtt.accounts.outbox.is_disk_full", lambda exc, path: True)  # what a full disk raises
    box._conn.execute("CREATE TEMP TRIGGER refuse BEFORE DELETE ON outbox BEGIN SELECT RAISE(FAIL, 'full'); END")
    box.complete_all([(first, "3EB0FIRST"), (last, "3EB0LAST")])  # held in memory, honoured by every read
    assert box.pending(A) == [] and box.depth(A) == 0 and box.held == 3 and box.sent_id(A, "k9") == "3EB0LAST"
    box._conn.execute("DROP TRIGGER refuse")
    assert box.write_held(10) and box.held == 0 and box.pending(A) == [] and box.sent_id(A, "k9") == "3EB0LAST"
    box.close()
