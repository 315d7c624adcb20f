"""Pure decisions of the cluster: how many accounts an instance should run, which free ones it
claims, which it hands back, and what becomes of a request for an account (no I/O here)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from enum import Enum


def fair_share(accounts: int, instances: int) -> int:
    """The most accounts one of `instances` live instances should run: an even split, rounded up."""
    return math.ceil(accounts / max(1, instances))


def claim_order(free: Iterable[str], instance_id: str) -> list[str]:
    """The free accounts in the order this instance tries them: a hash of (instance, account), so
    bridges claiming at once start from different accounts instead of contending for the same ones
    (rendezvous hashing: the same instance prefers the same accounts every time)."""
    def rank(account: str) -> bytes:
        return hashlib.blake2b(f"{instance_id}\0{account}".encode(), digest_size=8).digest()

    return sorted(free, key=lambda account: (rank(account), account))


def room(mine: int, target: int) -> int:
    """How many more accounts this instance takes up to its fair share."""
    return max(0, target - mine)


def to_hand_back(mine: Iterable[str], target: int, others_below: bool) -> list[str]:
    """Accounts to hand back (the last by name, so the same ones each time) when this instance runs
    more than its share and another runs fewer: half the excess a round (rounded up), so a bridge
    that started alone and took everything evens out in a few rounds without moving more than needed."""
    owned = sorted(mine)
    excess = len(owned) - target
    if excess <= 0 or not others_below:
        return []
    return owned[-((excess + 1) // 2):]


class Route(Enum):
    SERVE = "serve"  # this instance owns the account (or answers for the cluster)
    IGNORE = "ignore"  # another live instance owns it and answers
    HOLD = "hold"  # nobody owns it right now (a takeover): keep it until an owner is known


def route_request(phone: str, me: str, owners: Mapping[str, str], known: set[str], live: list[str]) -> Route:
    """What this instance does with a request for account `phone` (every instance receives it).

    An account nobody knows is answered (`unknown_account`) by the first live instance, by name."""
    owner = owners.get(phone)
    if owner == me:
        return Route.SERVE
    if owner is not None and owner in live:
        return Route.IGNORE
    if phone in known:
        return Route.HOLD
    return Route.SERVE if live and sorted(live)[0] == me else Route.IGNORE
