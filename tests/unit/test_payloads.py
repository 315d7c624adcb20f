"""The published bytes of an incoming message and a receipt, built the fast way (model.py, api.encode),
are byte for byte those of the plain builder: `model_dump(mode="json")`, the timestamp by strftime,
`json.dumps` with the same options."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from wa_mqtt.model import IncomingMessage, Location, Media, Quoted, Reaction, Receipt, utc_iso
from wa_mqtt.mqtt.api import encode


def plain(model: IncomingMessage | Receipt) -> bytes:
    data: dict[str, Any] = model.model_dump(mode="json")
    data["timestamp"] = model.timestamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


MOMENTS = [datetime(2026, 3, 1, 12, 30, 59, 999999, tzinfo=UTC),
           datetime(2026, 3, 1, 1, 2, 3, tzinfo=timezone(timedelta(hours=-3))),  # another zone: converted
           datetime(2026, 3, 1, 1, 2, 3),  # naive: local time, as astimezone reads it
           datetime(999, 1, 2, 3, 4, 5, tzinfo=UTC)]  # strftime does not pad the year: neither do we


@pytest.mark.parametrize("moment", MOMENTS)
def test_incoming_message_bytes(moment: datetime) -> None:
    message = IncomingMessage(
        id="3EB0ÀÉ", account="5511900000001", chat="120363012345678901@g.us", chat_type="group", chat_name="Família 🎉",
        sender=None, sender_lid="123@lid", sender_jid="123@lid", timestamp=moment, type="image", caption="olá \"x\"\n",
        media=Media(mimetype="image/jpeg", size=12, path="/m/a.jpg"), quoted=Quoted(id="Q", text="q"),
        mentions=["5511988887777"], mentioned_jids=["5511988887777@s.whatsapp.net", "9@lid"],
        reaction=Reaction(emoji="👍", target_id="T"), location=Location(latitude=-23.5, longitude=1e-7),
        raw_type="imageMessage", options=[{"name": "a", "n": 1.5}], unavailable=False)
    assert encode(message.payload()) == plain(message)


@pytest.mark.parametrize("moment", MOMENTS)
def test_receipt_bytes(moment: datetime) -> None:
    for receipt in (Receipt(ids=["A", "B"], chat="5511988887777@s.whatsapp.net", type="read", timestamp=moment,
                            sender="5511988887777", sender_lid="1@lid"),
                    Receipt(ids=[], chat="x@g.us", type="played", timestamp=moment)):
        assert encode(receipt.payload()) == plain(receipt)
        assert list(receipt.payload()) == ["ids", "chat", "type", "timestamp", "sender", "sender_lid"]


def test_utc_iso() -> None:
    assert utc_iso(None) is None
    assert utc_iso(MOMENTS[0]) == "2026-03-01T12:30:59Z"
    assert utc_iso(MOMENTS[1]) == "2026-03-01T04:02:03Z"
    assert utc_iso(MOMENTS[3]) == "999-01-02T03:04:05Z"


def test_encode_replaces_what_strict_json_cannot_carry() -> None:
    assert encode({"a": float("nan"), "b": "x\udcff", "c": [1, "é"]}) == '{"a":null,"b":"x\ufffd","c":[1,"é"]}'.encode()
