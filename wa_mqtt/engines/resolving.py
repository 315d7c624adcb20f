"""Where a send to a phone number goes: the JID WhatsApp knows the number by, asked once and remembered.

A number as typed is not always its WhatsApp JID (Brazil's ninth digit: `55 11 9 8888-7777` may be
`551188887777@s.whatsapp.net`), and a number may have no account at all. Every engine asks WhatsApp
(`is_on_whatsapp`) before the first send to a phone and keeps the answer (`NumberCache`): a number that
has an account for as long as the session lives, one that has none for `NEGATIVE_TTL` (it may sign up).
Groups, LIDs and other JIDs go out as given. Pure but for the `ask` function it is handed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from ..errors import ErrorCode
from ..model import NumberCheck
from .addressing import PN_SERVER, bare, user_of
from .base import EngineError

NEGATIVE_TTL = timedelta(hours=1)
CACHE_LIMIT = 10_000

Ask = Callable[[list[str]], Awaitable[list[NumberCheck]]]


def phone_of(recipient: str) -> str | None:
    """The phone number a recipient names (`5511…`, `+5511…`, `5511…@s.whatsapp.net`, a device of it);
    None for groups, LIDs, newsletters and broadcasts."""
    jid = bare(recipient.lstrip("+"))
    return user_of(jid) if jid.endswith("@" + PN_SERVER) else None


class NumberCache:
    """Answers of `is_on_whatsapp` per phone number, newest `limit` kept; a "no account" answer expires."""

    def __init__(self, clock: Callable[[], datetime], limit: int = CACHE_LIMIT,
                 negative_ttl: timedelta = NEGATIVE_TTL) -> None:
        self._clock = clock
        self._limit = limit
        self._negative_ttl = negative_ttl
        self._items: OrderedDict[str, tuple[NumberCheck, datetime]] = OrderedDict()

    def get(self, phone: str) -> NumberCheck | None:
        item = self._items.get(phone)
        if item is None:
            return None
        check, at = item
        if not check.on_whatsapp and self._clock() - at > self._negative_ttl:
            del self._items[phone]
            return None
        return check

    def put(self, check: NumberCheck) -> None:
        self._items[check.number] = (check, self._clock())
        self._items.move_to_end(check.number)
        while len(self._items) > self._limit:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()


async def check_numbers(numbers: list[str], cache: NumberCache, ask: Ask) -> list[NumberCheck]:
    """`numbers` (phones, a leading `+` allowed) checked: cached answers as they are, the rest asked in
    one call; every answer cached. In the order given."""
    phones = [n.lstrip("+") for n in numbers]
    missing = list(dict.fromkeys(p for p in phones if cache.get(p) is None))
    if missing:
        for answer in await ask(missing):
            cache.put(answer)
    return [cache.get(p) or NumberCheck(number=p, on_whatsapp=False) for p in phones]


async def resolve(recipient: str, cache: NumberCache, ask: Ask) -> str:
    """The JID a send to `recipient` goes to: a phone number as WhatsApp knows it (asked once, then
    cached); a group, LID or other JID as given. `EngineError(not_on_whatsapp)` for a number without an
    account."""
    phone = phone_of(recipient)
    if phone is None:
        return bare(recipient)
    answer = (await check_numbers([phone], cache, ask))[0]
    if not answer.on_whatsapp or answer.jid is None:
        raise EngineError(f"to: {phone} has no WhatsApp account", code=ErrorCode.NOT_ON_WHATSAPP)
    return answer.jid
