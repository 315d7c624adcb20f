"""A target's turn as the request server's plain-send path reads it (`SendService.turn_free`): a send
is served at once only when nobody holds the turn or waits for it, so it never passes one that did."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from wa_mqtt.config import Config
from wa_mqtt.mqtt.topics import BRIDGE
from wa_mqtt.sending import SendService

if TYPE_CHECKING:
    from wa_mqtt.accounts.manager import AccountManager


async def test_a_turn_handed_to_a_waiter_is_not_free_until_the_waiter_is_done() -> None:
    sending = SendService(cast("AccountManager", None), Config())  # the bridge's turn: no account asked
    assert sending.turn_free(BRIDGE)
    turn = sending.lock(BRIDGE)
    assert isinstance(turn, asyncio.Lock)
    await turn.acquire()
    assert not sending.turn_free(BRIDGE)
    took = asyncio.Event()

    async def waiter() -> None:
        async with turn:
            took.set()

    task = asyncio.create_task(waiter())
    while not turn._waiters:  # it waits for the turn now
        await asyncio.sleep(0)
    turn.release()
    assert not turn.locked()
    assert not sending.turn_free(BRIDGE)  # released to the waiter, which has not run yet: its turn
    await asyncio.wait_for(took.wait(), 5)
    await task
    assert sending.turn_free(BRIDGE)
