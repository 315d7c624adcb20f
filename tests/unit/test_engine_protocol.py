"""The bridge ↔ engine child protocol: round trips, and refusal of other versions and shapes."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from wa_mqtt.engines import protocol as p
from wa_mqtt.engines.base import Disconnected, MessageReceived, Qr
from wa_mqtt.model import ErrorCode, IncomingMessage


def test_request_round_trip() -> None:
    request = p.Request(7, "send", {"message": {"to": "5511999999999", "text": "hé"}})
    assert p.decode_request(p.encode_request(request)) == request
    assert p.encode_request(request).endswith(b"\n") and p.encode_request(request).count(b"\n") == 1


@pytest.mark.parametrize("line", [
    p.encode_reply(p.Reply(3, True, {"id": "X"})),
    p.encode_reply(p.Reply(4, False, error="websocket not connected", code="not_connected")),
    p.encode_heartbeat(12, 30512),
    p.encode_hello(123, "sim"),
])
def test_child_lines_round_trip(line: bytes) -> None:
    decoded = p.decode_child_line(line)
    again = {p.Reply: lambda d: p.encode_reply(d), p.Heartbeat: lambda d: p.encode_heartbeat(d.seq, d.rss_kb),
             p.Hello: lambda d: p.encode_hello(d.pid, d.engine)}[type(decoded)](decoded)
    assert again == line


@pytest.mark.parametrize("event", [
    Qr(code="2@abc"),
    Disconnected(code=ErrorCode.DIAL_FAILED, error="failed to dial"),
    MessageReceived(message=IncomingMessage(
        id="M1", account="5511900000001", chat="5511988887777@s.whatsapp.net", sender="5511988887777",
        sender_jid="5511988887777@s.whatsapp.net", timestamp=datetime(2026, 11, 24, tzinfo=timezone.utc),
        text="olá", poll_options=["a", "b"])),
])
def test_events_cross_unchanged(event: object) -> None:
    decoded = p.decode_child_line(p.encode_event(event))  # type: ignore[arg-type]
    assert isinstance(decoded, p.Event) and decoded.event == event


@pytest.mark.parametrize("line", [
    b'{"v": 2, "hb": 1}\n', b'{"hb": 1}\n', b"not json\n", b"[1]\n", b'{"v": 1, "what": 1}\n',
    b'{"v": 1, "event": {"kind": "nonsense"}}\n',
])
def test_child_lines_of_another_version_or_shape_are_refused(line: bytes) -> None:
    with pytest.raises(p.ProtocolError):
        p.decode_child_line(line)


@pytest.mark.parametrize("line", [
    json.dumps({"v": 2, "id": 1, "op": "start", "args": {}}).encode(),
    json.dumps({"v": 1, "id": 1, "op": "format_disk", "args": {}}).encode(),
    json.dumps({"v": 1, "id": "1", "op": "stop", "args": {}}).encode(),
    json.dumps({"v": 1, "id": 1, "op": "stop", "args": []}).encode(),
])
def test_bad_requests_are_refused(line: bytes) -> None:
    with pytest.raises(p.ProtocolError):
        p.decode_request(line)
