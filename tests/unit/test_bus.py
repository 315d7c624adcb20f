"""The event bus: synchronous dispatch in subscription order, per-owner unsubscribe, a failing handler
isolated; and the table that turns typed events into `bridge/event` payloads."""

from __future__ import annotations

import dataclasses
import logging
import typing
from datetime import UTC, datetime

import pytest

from wa_mqtt import events as ev
from wa_mqtt.bus import EventBus
from wa_mqtt.features.state_publisher import BRIDGE_EVENTS, bridge_event
from wa_mqtt.model import AccountState


def test_handlers_run_in_subscription_order_before_emit_returns() -> None:
    bus, seen = EventBus(), []
    bus.subscribe(ev.AccountRemoved, lambda e: seen.append(("a", e.phone)), "a")
    bus.subscribe(ev.AccountRemoved, lambda e: seen.append(("b", e.phone)), "b")
    bus.subscribe(ev.AccountAdded, lambda e: seen.append(("added", e.phone)), "a")
    bus.emit(ev.AccountRemoved("1"))
    assert seen == [("a", "1"), ("b", "1")]


def test_unsubscribe_drops_every_handler_of_one_owner_only() -> None:
    bus, seen = EventBus(), []
    bus.subscribe(ev.AccountRemoved, lambda e: seen.append("a"), "a")
    bus.subscribe(ev.AccountAdded, lambda e: seen.append("a+"), "a")
    bus.subscribe(ev.AccountRemoved, lambda e: seen.append("b"), "b")
    bus.unsubscribe("a")
    bus.emit(ev.AccountRemoved("1"))
    bus.emit(ev.AccountAdded("1", AccountState.STOPPED))
    assert seen == ["b"]


def test_a_failing_handler_is_logged_with_its_owner_and_never_reaches_the_emitter(
        caplog: pytest.LogCaptureFixture) -> None:
    bus, seen = EventBus(), []

    def broken(_event: ev.AccountRemoved) -> None:
        raise RuntimeError("bug")

    bus.subscribe(ev.AccountRemoved, broken, "broken feature")
    bus.subscribe(ev.AccountRemoved, lambda e: seen.append(e.phone), "next")
    with caplog.at_level(logging.ERROR):
        bus.emit(ev.AccountRemoved("1"))
    assert seen == ["1"]
    assert "broken feature failed to handle AccountRemoved" in caplog.text


def test_every_bridge_event_has_its_contract_type_and_data() -> None:
    samples: dict[type, object] = {
        ev.AccountAdded: ev.AccountAdded("1", AccountState.STOPPED),
        ev.AccountRemoved: ev.AccountRemoved("1"),
        ev.Paired: ev.Paired("1", "2", None),
        ev.LoggedOut: ev.LoggedOut("1", "why"),
        ev.EngineCrashed: ev.EngineCrashed("1", "boom"),
        ev.StoreRestored: ev.StoreRestored("1", "b.db", "bad"),
        ev.LinkedOtherNumber: ev.LinkedOtherNumber("1", "2", True),
        ev.AutoReplySent: ev.AutoReplySent("1", "hi", "3", None, True),
        ev.AutoReplyDelivered: ev.AutoReplyDelivered("1", "hi", "X"),
        ev.AutoReplyFailed: ev.AutoReplyFailed("1", "hi", "expired", "late"),
        ev.ConfigInvalid: ev.ConfigInvalid("bad"),
        ev.AiReplyFailed: ev.AiReplyFailed("1", "ai", "3", "openai", "HTTP 500", True),
        ev.AlertRaised: ev.AlertRaised("1", AccountState.BANNED, "temporary_ban", datetime(2026, 12, 1, 12, tzinfo=UTC)),
        ev.AlertCleared: ev.AlertCleared("1", datetime(2026, 12, 1, 12, tzinfo=UTC)),
    }
    assert set(BRIDGE_EVENTS) - set(samples) == {ev.ConfigReloaded}
    expected = {
        ev.AccountAdded: ("account_added", {"phone": "1", "state": "stopped"}),
        ev.AccountRemoved: ("account_removed", {"phone": "1"}),
        ev.Paired: ("paired", {"phone": "1", "linked_phone": "2", "name": None}),
        ev.LoggedOut: ("logged_out", {"phone": "1", "reason": "why"}),
        ev.EngineCrashed: ("engine_crashed", {"phone": "1", "error": "boom"}),
        ev.StoreRestored: ("store_restored", {"phone": "1", "backup": "b.db", "reason": "bad"}),
        ev.LinkedOtherNumber: ("linked_other_number", {"asked": "1", "phone": "2", "moved": True}),
        ev.AutoReplySent: ("auto_reply", {"phone": "1", "rule": "hi", "chat": "3", "id": None, "queued": True}),
        ev.AutoReplyDelivered: ("auto_reply", {"phone": "1", "rule": "hi", "status": "ok",
                                               "data": {"id": "X", "queued": False, "from_queue": True}}),
        ev.AutoReplyFailed: ("auto_reply", {"phone": "1", "rule": "hi", "status": "error", "code": "expired",
                                            "error": "late"}),
        ev.ConfigInvalid: ("config_invalid", {"error": "bad"}),
        ev.AiReplyFailed: ("ai_error", {"phone": "1", "rule": "ai", "chat": "3", "provider": "openai",
                                        "error": "HTTP 500", "fallback": True}),
        ev.AlertRaised: ("alert", {"phone": "1", "state": "banned", "error_code": "temporary_ban",
                                   "since": "2026-12-01T12:00:00Z"}),
        ev.AlertCleared: ("recovered", {"phone": "1", "since": "2026-12-01T12:00:00Z"}),
    }
    for event_type, event in samples.items():
        type_, data = bridge_event(typing.cast(ev.Event, event))
        assert (type_, list(data.items())) == (expected[event_type][0], list(expected[event_type][1].items()))


def test_events_are_frozen_and_slotted() -> None:
    for event_type in typing.get_args(ev.Event):
        assert dataclasses.is_dataclass(event_type) and event_type.__dataclass_params__.frozen  # type: ignore[attr-defined]  # set on every dataclass
        assert "__slots__" in vars(event_type)


def test_no_feature_imports_another_nor_the_accounts_layer_a_feature() -> None:
    """Features meet on the bus: none imports another, and nothing below them imports a feature."""
    import ast
    from pathlib import Path

    package = Path(__file__).resolve().parents[2] / "wa_mqtt"
    features = {path.stem for path in (package / "features").glob("*.py")} - {"__init__"}
    for path in package.rglob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[-1])
                imported.update(alias.name for alias in node.names)
        if path.parent.name == "features" or path.name != "app.py":
            assert not (imported & features), f"{path.relative_to(package)} imports {imported & features}"
