"""Number resolution before a send (engines/resolving.py) and who a JID names (engines/addressing.py): pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from wa_mqtt.engines.addressing import Party, party
from wa_mqtt.engines.base import EngineError
from wa_mqtt.engines.resolving import NumberCache, check_numbers, phone_of, resolve
from wa_mqtt.model import NumberCheck

LID = "201234567890123@lid"


@pytest.mark.parametrize(("jid", "alt", "lids", "expected"), [
    ("5511999999999:3@s.whatsapp.net", None, {}, Party("5511999999999@s.whatsapp.net", "5511999999999", None)),
    ("5511999999999@s.whatsapp.net", LID, {}, Party("5511999999999@s.whatsapp.net", "5511999999999", LID)),
    ("201234567890123:4@lid", None, {}, Party(LID, None, LID)),
    ("201234567890123@lid", "5511999999999:4@s.whatsapp.net", {}, Party(LID, "5511999999999", LID)),
    ("201234567890123@lid", None, {"201234567890123": "5511999999999"}, Party(LID, "5511999999999", LID)),
    ("120363012345678901@g.us", None, {}, Party("120363012345678901@g.us", "120363012345678901", None)),
])
def test_party(jid: str, alt: str | None, lids: dict[str, str], expected: Party) -> None:
    assert party(jid, alt, lids) == expected


def test_phone_of() -> None:
    assert [phone_of(r) for r in ("5511999999999", "+5511999999999", "5511999999999:2@s.whatsapp.net",
                                  LID, "120363012345678901@g.us")] == [
        "5511999999999", "5511999999999", "5511999999999", None, None]


async def test_answers_are_cached_and_a_missing_account_expires() -> None:
    now = [datetime(2026, 12, 4, tzinfo=UTC)]
    asked: list[list[str]] = []

    async def ask(phones: list[str]) -> list[NumberCheck]:
        asked.append(phones)
        return [NumberCheck(number=p, on_whatsapp=p != "5511000000000",
                            jid=None if p == "5511000000000" else f"{p.replace('55119', '5511', 1)}@s.whatsapp.net")
                for p in phones]

    cache = NumberCache(lambda: now[0], limit=10, negative_ttl=timedelta(hours=1))
    assert await resolve("5511988887777", cache, ask) == "551188887777@s.whatsapp.net"
    assert await resolve("+5511988887777", cache, ask) == "551188887777@s.whatsapp.net"
    assert await resolve("120363012345678901@g.us", cache, ask) == "120363012345678901@g.us"
    assert await resolve(f"{LID[:-4]}:2@lid", cache, ask) == LID
    for _ in range(2):
        with pytest.raises(EngineError) as failure:
            await resolve("5511000000000", cache, ask)
        assert failure.value.code == "not_on_whatsapp"
    assert asked == [["5511988887777"], ["5511000000000"]]
    now[0] += timedelta(hours=2)  # the number may have signed up meanwhile: asked again
    checks = await check_numbers(["5511000000000", "5511988887777", "5511000000000"], cache, ask)
    assert [c.on_whatsapp for c in checks] == [False, True, False]
    assert asked[2:] == [["5511000000000"]]  # one call, each number once, the known one from the cache
