"""The publish window: its size bounds what is in flight, and the spool never takes the slots kept for
responses and state."""

from __future__ import annotations

import asyncio

import pytest

from wa_mqtt.mqtt.link import SpoolAcks, redelivered_copy, window_size
from wa_mqtt.mqtt.window import Lane, PublishWindow, reserved_for_control


async def test_the_spool_leaves_slots_for_responses() -> None:
    window = PublishWindow(4)
    assert window.reserved == 1
    for _ in range(3):
        await window.acquire(Lane.SPOOL)
    fourth = asyncio.create_task(window.acquire(Lane.SPOOL))
    await asyncio.sleep(0)
    assert not fourth.done()  # the spool holds all it may
    await asyncio.wait_for(window.acquire(Lane.CONTROL), 1)  # a response still goes out at once
    assert window.in_flight == {Lane.CONTROL: 1, Lane.SPOOL: 3}
    window.release(Lane.SPOOL)
    await asyncio.wait_for(fourth, 1)
    assert window.in_flight == {Lane.CONTROL: 1, Lane.SPOOL: 3}


async def test_control_waits_only_when_the_whole_window_is_in_flight() -> None:
    window = PublishWindow(2)
    await window.acquire(Lane.CONTROL)
    await window.acquire(Lane.CONTROL)
    third = asyncio.create_task(window.acquire(Lane.CONTROL))
    await asyncio.sleep(0)
    assert not third.done()
    window.release(Lane.CONTROL)
    await asyncio.wait_for(third, 1)


def test_sizes() -> None:
    assert [reserved_for_control(n) for n in (1, 2, 4, 20, 100)] == [0, 1, 1, 5, 25]
    with pytest.raises(ValueError):
        PublishWindow(0)

    class Connack:
        ReceiveMaximum = 7

    assert window_size(Connack()) == 7
    assert window_size(None) == 20  # MQTT 3.1.1: no receive maximum announced
    Connack.ReceiveMaximum = 65535
    assert window_size(Connack()) == 100


def test_a_redelivered_copy_says_so() -> None:
    assert redelivered_copy(b'{"id":"X","text":"\xc3\xa9"}') == '{"id":"X","text":"é","redelivered":true}'.encode()
    assert redelivered_copy(b"not json") == b"not json"
    assert redelivered_copy(b"[1]") == b"[1]"


def test_pending_publish_warnings_are_folded_into_one_line_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from wa_mqtt.mqtt import paho_client

    now = [1000.0]
    monkeypatch.setattr(paho_client.time, "monotonic", lambda: now[0])
    note = paho_client._PendingCallsNote()

    def record() -> logging.LogRecord:
        return logging.LogRecord("x", logging.WARNING, __file__, 1, "There are %d pending publish calls.", (11,), None)

    assert note.filter(record())
    assert [note.filter(record()) for _ in range(5)] == [False] * 5
    now[0] += paho_client.WARNING_EVERY
    shown = record()
    assert note.filter(shown) and "5 such warnings" in shown.getMessage()
    other = logging.LogRecord("x", logging.WARNING, __file__, 1, "something else", (), None)
    assert note.filter(other)


def test_the_spool_is_acknowledged_by_prefix_and_nothing_acknowledged_goes_out_twice() -> None:
    acks = SpoolAcks()
    assert all(acks.read(seq) for seq in (1, 2, 3, 4))
    assert acks.acked(2) is None  # 1 is still out: nothing may be removed
    assert acks.acked(4) is None
    assert acks.acked(1) == 2  # 1 and 2 may go; 3 is still out
    acks.new_connection()  # the connection is lost; 3 and 4 are read again from the spool
    assert acks.read(3) is True  # never acknowledged: published again
    assert acks.read(4) is False  # acknowledged before: not published again ...
    assert acks.acked(4) is None  # ... and reported again, which waits for 3
    assert acks.acked(3) == 4


async def test_slots_go_to_waiters_in_order_and_take_never_passes_one() -> None:
    window = PublishWindow(4)  # the spool takes at most 3
    assert all(window.take(Lane.SPOOL) for _ in range(3)) and not window.take(Lane.SPOOL)
    assert window.take(Lane.CONTROL) and not window.take(Lane.CONTROL)  # the whole window in flight
    spool = asyncio.create_task(window.acquire(Lane.SPOOL))
    control = asyncio.create_task(window.acquire(Lane.CONTROL))
    await asyncio.sleep(0)
    window.release(Lane.CONTROL)  # the spool is still at its limit: the control waiter behind it gets it
    await asyncio.wait_for(control, 1)
    assert not spool.done() and window.in_flight == {Lane.CONTROL: 1, Lane.SPOOL: 3}
    window.release(Lane.SPOOL)
    assert not window.take(Lane.CONTROL)  # given to the spool waiter as it was released
    await asyncio.wait_for(spool, 1)
    assert window.in_flight == {Lane.CONTROL: 1, Lane.SPOOL: 3}


async def test_a_cancelled_waiter_takes_no_slot_even_one_given_as_it_was_cancelled() -> None:
    window = PublishWindow(1)
    assert window.take(Lane.CONTROL)
    first = asyncio.create_task(window.acquire(Lane.CONTROL))
    second = asyncio.create_task(window.acquire(Lane.CONTROL))
    await asyncio.sleep(0)
    first.cancel()  # cancelled while waiting
    await asyncio.sleep(0)
    window.release(Lane.CONTROL)  # goes past the cancelled one, to the second
    await asyncio.wait_for(second, 1)
    third = asyncio.create_task(window.acquire(Lane.CONTROL))
    await asyncio.sleep(0)
    window.release(Lane.CONTROL)  # the slot is given to the third ...
    third.cancel()  # ... which is cancelled before it runs: the slot comes back
    with pytest.raises(asyncio.CancelledError):
        await third
    assert window.in_flight == {Lane.CONTROL: 0, Lane.SPOOL: 0} and window.take(Lane.CONTROL)


@pytest.mark.parametrize("seed", range(40))
async def test_random_takes_waits_releases_and_cancels_keep_every_rule(seed: int) -> None:
    """Whatever the order of takes, waits, releases and cancellations: never over the window or the
    spool's share, no waiter left waiting that the window allows, and every slot back at the end."""
    import random

    rng = random.Random(seed)
    window = PublishWindow(rng.choice([1, 2, 3, 4, 8]))
    spool_limit = window.size - window.reserved
    held: list[Lane] = []
    waiting: list[tuple[asyncio.Task[None], Lane]] = []

    async def wait(lane: Lane) -> None:
        await window.acquire(lane)
        held.append(lane)

    def allows(lane: Lane) -> bool:
        free = window.size - sum(window.in_flight.values())
        return free > 0 and (lane is Lane.CONTROL or window.in_flight[Lane.SPOOL] < spool_limit)

    for _ in range(200):
        action = rng.random()
        lane = rng.choice([Lane.CONTROL, Lane.SPOOL])
        if action < 0.4:
            if rng.random() < 0.5 and window.take(lane):
                held.append(lane)
            else:
                waiting.append((asyncio.create_task(wait(lane)), lane))
        elif action < 0.75 and held:
            window.release(held.pop(rng.randrange(len(held))))
        elif action < 0.85 and (pending := [task for task, _ in waiting if not task.done()]):
            rng.choice(pending).cancel()
        for _ in range(rng.choice([0, 1, 3])):
            await asyncio.sleep(0)
        assert sum(window.in_flight.values()) <= window.size and window.in_flight[Lane.SPOOL] <= spool_limit
        if rng.random() < 0.3:  # settled: each waiter has run or still waits because the window says so
            for _ in range(3):
                await asyncio.sleep(0)
            assert not [lane for task, lane in waiting if not task.done() and allows(lane)]
    for task, _ in waiting:
        task.cancel()
    await asyncio.gather(*(task for task, _ in waiting), return_exceptions=True)
    for lane in held:
        window.release(lane)
    assert window.in_flight == {Lane.CONTROL: 0, Lane.SPOOL: 0}
    assert sum(window.take(Lane.CONTROL) for _ in range(window.size + 1)) == window.size
