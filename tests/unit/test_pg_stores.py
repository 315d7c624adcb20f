"""The PostgreSQL stores (store.url) behave as the SQLite ones: the outbox's own tests run again on
PgOutbox, the dedup ids' on PgSeenIds, against a real server (skipped where there is none); plus what
only a shared database has: two bridges' stores see one queue, one client id, one set of seen ids."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from test_dedup import (
    handled,
    test_an_id_is_handled_once_per_account,
    test_an_id_remembered_this_turn_is_seen_under_its_other_key,
)
from test_outbox import (
    A,
    B,
    FakeClock,
    request,
    send,
    test_clear_account,
    test_duplicate_client_id_returns_the_waiting_entry,
    test_enqueue_keeps_order_per_account,
    test_next_pending_sees_entries_queued_meanwhile,
    test_remove_and_accounts,
    test_take_expired_uses_the_clock,
    test_the_whatsapp_id_is_chosen_once_and_kept_for_every_try,
)

from wa_mqtt.config import ConfigError
from wa_mqtt.config_loading import build_config
from wa_mqtt.store.pg import PgSchema, PgSchemaTooNew, PgUnavailable, PgUpgrade, connect, masked, upgrade
from wa_mqtt.store.pg_dedup import PgSeenIds
from wa_mqtt.store.pg_outbox import PgOutbox

REUSED = (  # the SQLite stores' tests, collected again here with the PostgreSQL fixtures below
    test_clear_account, test_duplicate_client_id_returns_the_waiting_entry, test_enqueue_keeps_order_per_account,
    test_next_pending_sees_entries_queued_meanwhile, test_remove_and_accounts,
    test_take_expired_uses_the_clock,
    test_the_whatsapp_id_is_chosen_once_and_kept_for_every_try,
    test_an_id_is_handled_once_per_account, test_an_id_remembered_this_turn_is_seen_under_its_other_key,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def outbox(pg_url: str, clock: FakeClock) -> Iterator[PgOutbox]:
    box = PgOutbox(pg_url, clock)
    yield box
    box.close()


@pytest.fixture
def seen(pg_url: str) -> Iterator[PgSeenIds]:
    ids = PgSeenIds(pg_url, window=5)
    yield ids
    ids.close()


def test_keeps_the_newest_window_ids_per_account(seen: PgSeenIds, pg_url: str) -> None:
    for i in range(8):
        assert handled(seen, A, f"m{i}")
    handled(seen, B, "b0")
    assert [handled(seen, A, f"m{i}") for i in range(3, 8)] == [False] * 5
    assert handled(seen, A, "m0") is True  # pushed out, new again
    assert handled(seen, B, "b0") is False
    with connect(pg_url) as conn:
        row = conn.execute("SELECT COUNT(*) FROM wa_mqtt_seen WHERE account = %s", (A,)).fetchone()
    assert row is not None and row[0] == 5


def test_seen_asks_for_two_ids_in_one_round_trip(seen: PgSeenIds) -> None:
    seen.remember(A, "U1")
    assert seen.seen(A, "U1#undecryptable", "U1") and seen.seen(A, "U1", "other")
    assert not seen.seen(A, "U2#undecryptable", "U2") and not seen.seen(B, "U1#undecryptable", "U1")
    seen.remember(A, "H", hold=True)
    assert seen.seen(A, "H#undecryptable", "H") and seen.duplicates == 3


def test_sent_ids_are_remembered_for_the_window_and_pruned(outbox: PgOutbox, clock: FakeClock, pg_url: str) -> None:
    send(outbox, A, "k", "3EB0AAA")
    assert outbox.sent_id(B, "k") is None
    clock.advance(24 * 3600 - 1)
    assert outbox.sent_id(A, "k") == "3EB0AAA"
    clock.advance(2)
    assert outbox.sent_id(A, "k") is None
    send(outbox, A, "k2", "3EB0BBB")  # prunes the expired record
    with connect(pg_url) as conn:
        rows = conn.execute("SELECT client_id FROM wa_mqtt_sent").fetchall()
    assert rows == [("k2",)]


def test_complete_all_removes_the_sends_answered_together_and_keeps_their_client_ids(outbox: PgOutbox) -> None:
    one, _ = outbox.enqueue(A, request("one"), None, "3EB0ONE")
    kept, _ = outbox.enqueue(A, request("kept"), None)
    two, _ = outbox.enqueue(A, request("two"), "k2", "3EB0TWO")
    outbox.remove(one.id)  # gone meanwhile: skipped
    outbox.complete_all([(one, "3EB0ONE"), (two, "3EB0TWO")])
    assert [e.id for e in outbox.pending(A)] == [kept.id] and outbox.depth(A) == 1
    assert outbox.sent_id(A, "k2") == "3EB0TWO"


async def test_a_loop_turns_ids_are_written_together_at_its_end(seen: PgSeenIds, pg_url: str) -> None:
    """In a running loop the turn's ids are seen at once and written in one transaction at its end."""
    other = PgSeenIds(pg_url)  # another bridge of the cluster: what is in the table
    try:
        for i in range(20):
            assert handled(seen, A, f"t{i}") and not handled(seen, A, f"t{i}")
        assert not other.seen(A, "t0")  # not written yet
        await asyncio.sleep(0)  # the end of the turn
        assert all(other.seen(A, f"t{i}") for i in range(15, 20))  # the newest window (5) of them
        with connect(pg_url) as conn:  # rows written by one transaction share its id (xmin)
            row = conn.execute("SELECT COUNT(*), COUNT(DISTINCT xmin::text) FROM wa_mqtt_seen WHERE account = %s",
                               (A,)).fetchone()
        assert row == (5, 1)
        handled(seen, A, "pending")
        seen.close()  # writes what the turn holds
        assert other.seen(A, "pending")
    finally:
        other.close()


async def test_a_turns_ids_wait_for_the_spool_and_are_held_while_it_holds_messages(pg_url: str) -> None:
    """`before_write` (the spool's commit) runs first; while it says messages are held in memory, the
    turn's ids are held too (still seen), and written with `write_held`."""
    on_disk = [False]
    calls: list[bool] = []

    def spool_commit() -> bool:
        calls.append(on_disk[0])
        return on_disk[0]

    seen, other = PgSeenIds(pg_url, before_write=spool_commit), PgSeenIds(pg_url)
    try:
        assert handled(seen, A, "held")
        await asyncio.sleep(0)  # the end of the turn
        assert calls == [False] and seen.held == 1 and seen.seen(A, "held") and not other.seen(A, "held")
        on_disk[0] = True
        assert handled(seen, A, "written")
        await asyncio.sleep(0)
        assert calls == [False, True] and other.seen(A, "written") and not other.seen(A, "held")
        assert seen.write_held(10) is True and other.seen(A, "held")
    finally:
        seen.close()
        other.close()


def test_two_bridges_share_one_queue_one_client_id_and_one_set_of_seen_ids(pg_url: str, clock: FakeClock) -> None:
    first, second = PgOutbox(pg_url, clock), PgOutbox(pg_url, clock)
    seen_1, seen_2 = PgSeenIds(pg_url), PgSeenIds(pg_url)
    try:
        entry, duplicate = first.enqueue(A, request("hi"), "c1")
        assert not duplicate
        again, duplicate = second.enqueue(A, request("hi"), "c1")  # the other bridge: the same waiting entry
        assert duplicate and again.id == entry.id
        assert [e.id for e in second.pending(A)] == [entry.id]
        begun = second.begin_attempt(entry.id, "WAID1")
        assert begun is not None and begun.tries == 1
        second.complete(begun, "WAID1")
        assert first.sent_id(A, "c1") == "WAID1" and first.depth(A) == 0
        assert handled(seen_1, A, "in-1") and not handled(seen_2, A, "in-1")
    finally:
        for store in (first, second, seen_1, seen_2):
            store.close()


def test_a_queued_send_survives_a_killed_bridge(pg_url: str, clock: FakeClock) -> None:
    """Committed when enqueue returns: a SIGKILL right after loses nothing."""
    code = textwrap.dedent(f"""
        import os, signal
        from datetime import UTC, datetime
        from wa_mqtt.store.pg_outbox import PgOutbox
        box = PgOutbox({pg_url!r}, lambda: datetime.now(UTC))
        box.enqueue({A!r}, {{"text": "kept"}}, "k1")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert result.returncode == -9
    box = PgOutbox(pg_url, clock)
    try:
        assert [(e.client_id, e.request) for e in box.pending(A)] == [("k1", {"text": "kept"})]
    finally:
        box.close()


def test_schema_versions_are_applied_once_and_a_newer_database_is_refused(pg_url: str) -> None:
    schema = PgSchema("probe", [PgUpgrade(1, "a table", "CREATE TABLE probe (x INT); INSERT INTO probe VALUES (1);")])
    with connect(pg_url) as conn:
        assert upgrade(conn, schema) == 0
        assert upgrade(conn, schema) == 1  # already there: nothing run twice
        row = conn.execute("SELECT COUNT(*) FROM probe").fetchone()
        assert row is not None and row[0] == 1
        conn.execute("UPDATE wa_mqtt_schema SET version = 7 WHERE name = 'probe'")
        with pytest.raises(PgSchemaTooNew, match="version 7 is newer"):
            upgrade(conn, schema)


def test_an_unreachable_server_is_named_without_its_password() -> None:
    from harness import free_port

    with pytest.raises(PgUnavailable) as caught:
        connect(f"postgresql://wa:s3cret@127.0.0.1:{free_port()}/wa?connect_timeout=2")
    assert "cannot reach PostgreSQL at postgresql://wa:***@127.0.0.1" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    assert masked("postgres://u@h/db") == "postgres://u@h/db"


def test_store_url_is_checked_and_masked_in_info() -> None:
    config = build_config({"store": {"url": "postgres://wa:pw@db:5432/wa_mqtt"}, "instance_id": "b-1"}, environ={})
    info = config.masked()
    assert info["store"]["url"] == "postgres://wa:***@db:5432/wa_mqtt"
    assert info["cluster"]["takeover_after"] == 30
    for bad in ({"store": {"url": "mysql://db/x"}}, {"store": {"url": "postgres://db"}}, {"instance_id": "a/b"}):
        with pytest.raises(ConfigError):
            build_config(bad, environ={})


async def test_a_turn_written_while_the_server_is_gone_is_logged_not_raised(
        pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """The connection dropped and the server unreachable: the end of the turn logs the lost ids (their
    messages were published) rather than raising into the event loop, and a close still closes."""
    seen = PgSeenIds(pg_url)
    failures: list[object] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: failures.append(context))
    seen._db.url = "postgresql://nobody@127.0.0.1:1/none"  # the server gone: no reconnect either
    seen._db._conn.close()
    with caplog.at_level(logging.ERROR, logger="wa_mqtt.store.pg_dedup"):
        seen.remember(A, "lost")  # (`seen` itself raises meanwhile: the state publisher logs that)
        await asyncio.sleep(0)  # the end of the turn
        seen.remember(A, "lost too")
        seen.close()
    assert failures == []
    assert [r.getMessage().split(" dedup ids")[0] for r in caplog.records] == ["1", "1"]
    assert seen._db._closed
