"""Model helpers asked on every send: `OutgoingMessage.kind` (and `media`) is worked out once per
message and never goes stale; `utc_iso` writes what it always wrote."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta, timezone

import pytest

from wa_mqtt.model import LocationSend, MediaSource, OutgoingMessage, Receipt, utc_iso

TO = "5511988887777"


def test_kind_follows_a_copy_with_changes_and_a_field_set() -> None:
    text = OutgoingMessage(to=TO, text="hi")
    assert (text.kind, text.media) == ("text", None)
    image = text.model_copy(update={"text": None, "image": MediaSource(url="https://example.com/a.jpg")})
    assert image.kind == "image" and image.media is image.image
    assert text.model_copy().kind == "text" and text.kind == "text"
    image.image = None
    image.location = LocationSend(latitude=1, longitude=2)
    assert (image.kind, image.media) == ("location", None)
    assert pickle.loads(pickle.dumps(image)).kind == "location"


def test_a_worked_out_kind_is_not_part_of_the_message() -> None:
    asked, fresh = OutgoingMessage(to=TO, text="hi"), OutgoingMessage(to=TO, text="hi")
    assert asked.kind == "text"
    assert asked == fresh and asked.model_dump() == fresh.model_dump()
    assert "kind" not in asked.model_dump_json()
    assert OutgoingMessage.model_validate_json(asked.model_dump_json()) == asked


@pytest.mark.parametrize("moment", [
    datetime(2026, 12, 4, 23, 54, 11, 999999, tzinfo=UTC),
    datetime(2026, 12, 4, 23, 54, 11, tzinfo=timezone(timedelta(hours=-3))),
    datetime(2026, 12, 31, 23, 30, tzinfo=timezone(timedelta(hours=-1))),  # the next year in UTC
    datetime(2026, 12, 4, 23, 54, 11),  # naive: local time
    Receipt.model_validate({"ids": ["A"], "chat": "c", "type": "read", "timestamp": "2026-12-04T23:54:11.5Z"}).timestamp,
    datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC),
    None,
])
def test_utc_iso_writes_what_strftime_did(moment: datetime | None) -> None:
    expected = None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert utc_iso(moment) == expected
