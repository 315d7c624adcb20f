"""Who a WhatsApp JID names: a phone number, a linked identity (LID), or both. Pure; used by every engine.

WhatsApp addresses many chats and groups by LID (`<digits>@lid`), digits that are not a phone number.
What the bridge publishes as a phone is therefore a phone or nothing: a LID is turned into a phone only
through what the account's LID map knows (whatsmeow's store; the sim's own map), never by taking its
digits. `Party` keeps the three views a message needs: `phone` (or None), `lid` (the `…@lid` JID, when
known) and `jid` (the address as WhatsApp gave it, which replies, reactions and receipts use).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

PN_SERVER = "s.whatsapp.net"
LID_SERVER = "lid"


def bare(jid: str) -> str:
    """A JID without agent or device (`5511…:7@s.whatsapp.net` → `5511…@s.whatsapp.net`); a phone as its JID."""
    user, at, server = jid.partition("@")
    if not at:
        return f"{user}@{PN_SERVER}"
    if server in (PN_SERVER, LID_SERVER):
        user = user.split(":", 1)[0].split(".", 1)[0]
    return f"{user}@{server}"


def user_of(jid: str) -> str:
    return jid.partition("@")[0]


def is_lid(jid: str) -> bool:
    return jid.endswith("@" + LID_SERVER)


@dataclass(frozen=True, slots=True)
class Party:
    """A sender (or mentioned / quoted person): `phone` never holds LID digits."""

    jid: str  # as received
    phone: str | None
    lid: str | None


def party(jid: str, alt: str | None = None, lid_phones: Mapping[str, str] | None = None) -> Party:
    """Who `jid` (as received) names. `alt` is the other address WhatsApp sent along (SenderAlt), if any;
    `lid_phones` maps LID users (digits) to phone numbers, as the account's LID map knows them.
    Other servers (groups, newsletters, broadcasts) keep their user part as before: they are no LID."""
    received = bare(jid)
    other = bare(alt) if alt else None
    if is_lid(received):
        if other is not None and other.endswith("@" + PN_SERVER):
            return Party(received, user_of(other), received)
        phone = (lid_phones or {}).get(user_of(received))
        return Party(received, phone, received)
    lid = other if other is not None and is_lid(other) else None
    return Party(received, user_of(received), lid)


def lids_in(jids: list[str], known: Mapping[str, str]) -> set[str]:
    """The LID users among `jids` that `known` cannot resolve yet (what to ask the LID map)."""
    return {user_of(bare(j)) for j in jids if j and is_lid(bare(j)) and user_of(bare(j)) not in known}
