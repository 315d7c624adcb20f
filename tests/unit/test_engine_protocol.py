"""The bridge ↔ engine child protocol: round trips, and refusal of other versions and shapes."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from wa_mqtt.engines import protocol as p
from wa_mqtt.engines.base import Disconnected, MessageReceived, Qr
from wa_mqtt.model import ErrorCode, IncomingMessage


def test_request_round_trip() -> None:
    request = p.Request(7, "send", {"message": {"to": "5511999999999", "text": "hé"},
                                    "message_id": "3EB0A1B2C3D4E5F6A7B8C9", "retry": True})
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
        sender_jid="5511988887777@s.whatsapp.net", timestamp=datetime(2026, 11, 24, tzinfo=UTC),
        text="olá", poll_options=["a", "b"])),
])
def test_events_cross_unchanged(event: object) -> None:
    decoded = p.decode_child_line(p.encode_event(event))  # type: ignore[arg-type]
    assert isinstance(decoded, p.Event) and decoded.event == event


V = p.VERSION


@pytest.mark.parametrize("line", [
    b'{"v": %d, "hb": 1}\n' % (V - 1), b'{"v": %d, "hb": 1}\n' % (V + 1), b'{"hb": 1}\n', b"not json\n", b"[1]\n",
    b'{"v": %d, "what": 1}\n' % V, b'{"v": %d, "event": {"kind": "nonsense"}}\n' % V,
])
def test_child_lines_of_another_version_or_shape_are_refused(line: bytes) -> None:
    with pytest.raises(p.ProtocolError):
        p.decode_child_line(line)


@pytest.mark.parametrize("line", [
    json.dumps({"v": V - 1, "id": 1, "op": "send", "args": {"message": {"to": "5511999999999", "text": "x"}}}).encode(),
    json.dumps({"v": V + 1, "id": 1, "op": "start", "args": {}}).encode(),
    json.dumps({"v": V, "id": 1, "op": "format_disk", "args": {}}).encode(),
    json.dumps({"v": V, "id": "1", "op": "stop", "args": {}}).encode(),
    json.dumps({"v": V, "id": 1, "op": "stop", "args": []}).encode(),
])
def test_bad_requests_are_refused(line: bytes) -> None:
    with pytest.raises(p.ProtocolError):
        p.decode_request(line)


def _send(request_id: int, chained: bool) -> p.Request:
    return p.Request(request_id, "send", {"message": {"to": "5511999999999", "text": "x"}, "chained": chained})


def test_a_chained_send_behind_one_that_must_wait_is_refused_unattempted_and_an_unchained_one_clears_that() -> None:
    chain = p.SendChain()
    chain.answered(_send(1, False), p.Reply(1, False, error="down", code=ErrorCode.NOT_CONNECTED))
    refused = chain.refusal(_send(2, True))
    assert refused is not None and refused.id == 2 and not refused.ok and refused.code == ErrorCode.NOT_CONNECTED
    chain.answered(_send(2, True), refused)
    assert chain.refusal(_send(3, True)) is not None  # the whole run behind it waits
    assert chain.refusal(p.Request(4, "react", {"chained": True})) is None  # only sends are chained
    assert chain.refusal(_send(5, False)) is None  # the first of a new run goes
    chain.answered(_send(5, False), p.Reply(5, True, {"id": "X"}))
    assert chain.refusal(_send(6, True)) is None


@pytest.mark.parametrize("reply", [p.Reply(1, True, {"id": "X"}),
                                   p.Reply(1, False, error="no such media", code=ErrorCode.ENGINE_ERROR)])
def test_a_chained_send_goes_after_a_send_that_went_out_or_was_refused_for_good(reply: p.Reply) -> None:
    chain = p.SendChain()
    chain.answered(_send(1, False), reply)
    assert chain.refusal(_send(2, True)) is None


def test_chained_crosses_as_a_send_argument() -> None:
    request = p.decode_request(p.encode_request(_send(1, True)))
    args = request.parsed_args()
    assert isinstance(args, p.SendArgs) and args.chained
