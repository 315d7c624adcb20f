"""The cluster's pure decisions: shares, claims, hand-backs and the route of a request."""

from __future__ import annotations

from wa_mqtt.cluster.plan import Route, claim_order, fair_share, room, route_request, to_hand_back


def test_an_even_share_rounded_up() -> None:
    assert fair_share(1000, 3) == 334
    assert fair_share(4, 2) == 2
    assert fair_share(5, 0) == 5  # no live instance seen yet: this one counts


def test_claims_fill_the_share_only_and_bridges_start_from_different_accounts() -> None:
    assert room(mine=1, target=3) == 2 and room(mine=4, target=3) == 0
    free = {f"55119{i:08d}" for i in range(100)}
    first, second = claim_order(free, "b1"), claim_order(free, "b2")
    assert sorted(first) == sorted(second) == sorted(free)
    assert len(set(first[:50]) & set(second[:50])) < 40  # not the same half: little contention
    assert claim_order(free, "b1") == first  # the same preference every round


def test_hand_back_only_the_excess_and_only_when_another_has_fewer() -> None:
    assert to_hand_back({"a", "b", "c", "d"}, target=3, others_below=True) == ["d"]
    assert to_hand_back({"a", "b", "c", "d", "e"}, target=1, others_below=True) == ["d", "e"]  # half the excess
    assert to_hand_back({"a", "b", "c", "d"}, target=2, others_below=False) == []
    assert to_hand_back({"a"}, target=2, others_below=True) == []


def test_a_request_is_served_by_its_owner_held_in_a_takeover_and_unknown_ones_answered_once() -> None:
    owners = {"1": "b1", "2": "b2", "3": "dead"}
    live = ["b1", "b2"]
    known = {"1", "2", "3", "4"}
    assert route_request("1", "b1", owners, known, live) is Route.SERVE
    assert route_request("2", "b1", owners, known, live) is Route.IGNORE
    assert route_request("3", "b1", owners, known, live) is Route.HOLD  # its owner is gone
    assert route_request("4", "b2", owners, known, live) is Route.HOLD  # known, nobody runs it yet
    # an account nobody knows: the first live bridge by name answers `unknown_account`, the others not
    assert route_request("9", "b1", owners, known, live) is Route.SERVE
    assert route_request("9", "b2", owners, known, live) is Route.IGNORE
