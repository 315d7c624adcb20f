"""The bridge ↔ engine child protocol: round trips, and refusal of other versions and shapes."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pytest

from wa_mqtt.engines import protocol as p
from wa_mqtt.engines.base import EVENT_ADAPTER, Disconnected, EngineEvent, MessageReceived, Qr, ReceiptReceived, SimSent
from wa_mqtt.model import ErrorCode, IncomingMessage, Location, LocationSend, OutgoingMessage, Poll, Receipt, SendResult
from wa_mqtt.mqtt.api import SendRequest


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


QR = b'{"kind":"qr","code":"2@abc"}'


def test_an_event_line_as_written_is_read_straight_from_its_bytes() -> None:
    assert p.decode_child_line(b'{"v":%d,"event":%s}\n' % (V, QR)) == p.Event(Qr(code="2@abc"))


@pytest.mark.parametrize("line", [
    b'{"v":%d,"event":%s,"v":%d}\n' % (V, QR, V + 1),  # the event, then another version: the last one counts
    b'{"v":%d,"event":%s}}\n' % (V, QR),  # not JSON
    b'{"v":%d,"event":%s' % (V, QR),  # cut off
    b'{"v":%d,"event":{"kind":"nonsense"}}\n' % V,
])
def test_lines_that_only_begin_like_an_event_line_are_refused(line: bytes) -> None:
    """The event is validated straight from the bytes between `{"v":3,"event":` and `}\n` only when they
    are one JSON value; anything else takes the long way and is refused there."""
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


# -- the fast paths of the hot lines write and read the same JSON as the general ones -----------------
def _outgoing() -> list[OutgoingMessage]:
    request = SendRequest(to="5511999999999", image={"url": "https://example.com/ã.jpg", "caption": "olá 👋"})
    assert request.kind == "image"  # worked out (and kept) before it crosses: no part of what is written
    return [
        OutgoingMessage(to="5511999999999", text="hé \"quoted\" \\ \n\u2028 👋", mentions=["5511988887777"], id="k1"),
        request,
        OutgoingMessage(to="120363000000000000@g.us", location=LocationSend(latitude=-23.5505, longitude=1e-7, name="São")),
        OutgoingMessage(to="5511999999999", poll=Poll(question="?", options=["a", "b"], selectable=0)),
    ]


@pytest.mark.parametrize("args", [
    *(p.SendArgs(message=m, message_id="3EB0A1B2C3D4E5F6A7B8C9", retry=True, chained=True) for m in _outgoing()),
    p.SendArgs(message=OutgoingMessage(to="5511999999999", text="x")), p.PingArgs(timeout=0.1), p.Args(),
    p.StartArgs(method="code"), p.SimControlArgs(action="incoming", payload='{"text": "\xe9"}'),
    p.MarkReadArgs(chat="c", ids=["a", "b"]),
])
def test_a_call_is_written_as_its_request(args: p.Args) -> None:
    op = next(op for op, model in p.ARGS.items() if model is type(args))
    line = p.encode_call(41, op, args)
    assert json.loads(line) == json.loads(p.encode_request(p.Request(41, op, args.to_json())))  # floats: 1e-7, not 1e-07
    assert line.endswith(b"}\n") and line.count(b"\n") == 1
    assert p.decode_request(line).parsed_args().to_json() == args.to_json()


@pytest.mark.parametrize("message", _outgoing())
@pytest.mark.parametrize(("retry", "chained"), [(False, False), (True, False), (False, True)])
def test_a_send_written_around_its_message_json_is_its_call(message: OutgoingMessage, retry: bool,
                                                             chained: bool) -> None:
    """The send pipeline writes a message once (pydantic, exclude_none): the outbox stores it in place of
    `model_dump`'s JSON, and the engine's line is written around it, byte for byte the general call."""
    written = message.__pydantic_serializer__.to_json(message, exclude_none=True)
    assert json.loads(written) == message.model_dump(mode="json", exclude_none=True)
    args = p.SendArgs(message=message, message_id="3EB0A1B2C3D4E5F6A7B8C9", retry=retry, chained=chained)
    assert p.encode_send(41, written, "3EB0A1B2C3D4E5F6A7B8C9", retry, chained) == p.encode_call(41, "send", args)


def test_a_call_of_an_unknown_op_is_not_written() -> None:
    with pytest.raises(ValueError, match="unknown op"):
        p.encode_call(1, 'x","op":"format_disk', p.Args())


@pytest.mark.parametrize("event", [
    ReceiptReceived(receipt=Receipt(ids=["A", "B"], chat="5511988887777@s.whatsapp.net", type="read",
                                    timestamp=datetime(2026, 11, 24, 1, 2, 3, 456789, tzinfo=UTC), sender="5511988887777")),
    SimSent(payload={"to": "x@s.whatsapp.net", "text": "olá \"👋\"\n", "location": {"latitude": -23.5, "longitude": 1e-7},
                     "mentions": ["1"], "n": 3, "ok": True, "none": None}),
])
def test_hot_events_are_written_as_the_general_path_writes_them(event: EngineEvent) -> None:
    line = p.encode_event(event)
    assert json.loads(line) == json.loads(p._line({"event": EVENT_ADAPTER.dump_python(event, mode="json")}))
    assert line.endswith(b"}\n") and line.count(b"\n") == 1
    decoded = p.decode_child_line(line)
    assert isinstance(decoded, p.Event) and decoded.event == event


def test_a_float_that_is_no_number_still_crosses() -> None:
    """Events with floats take the general path: pydantic would write NaN as null, json.dumps as NaN."""
    message = IncomingMessage(id="M1", account="5511900000001", chat="c", sender=None, sender_jid="j",
                              timestamp=datetime(2026, 11, 24, tzinfo=UTC), type="location",
                              location=Location(latitude=math.nan, longitude=math.inf))
    decoded = p.decode_child_line(p.encode_event(MessageReceived(message=message)))
    assert isinstance(decoded, p.Event) and isinstance(decoded.event, MessageReceived)
    location = decoded.event.message.location
    assert location is not None and math.isnan(location.latitude) and location.longitude == math.inf


@pytest.mark.parametrize(("line", "why"), [
    (b'{"v":%d,"event":{"kind":"qr","code":"x"}}\n' % (V - 1), "protocol version 2"),
    (b'{"v":%d,"event":{"kind":"qr","code":"x"}}\n' % (V + 1), "protocol version 4"),
    (b'{"v":%d,"event":{"kind":"receipt","receipt":{"ids":"A"}}}\n' % V, "bad event"),
    (b'{"v":%d,"event":{"kind":"qr"' % V, "not JSON"),
])
def test_event_lines_of_another_version_or_shape_are_refused_with_the_reason(line: bytes, why: str) -> None:
    with pytest.raises(p.ProtocolError, match=why):
        p.decode_child_line(line)


@pytest.mark.parametrize("result", [
    SendResult(id="3EB0A1", timestamp=datetime(2026, 11, 24, 1, 2, 3, 456789, tzinfo=UTC), already_sent=True),
    SendResult(id="ção"),
])
def test_a_result_written_by_its_model_reads_as_its_dump(result: SendResult) -> None:
    line = p.encode_reply(p.Reply(9, True, result_json=result.__pydantic_serializer__.to_json(result)))
    assert p.decode_child_line(line) == p.decode_child_line(p.encode_reply(p.Reply(9, True, result.model_dump(mode="json"))))
    assert p.decode_child_line(line) == p.Reply(9, True, result.model_dump(mode="json"))
    assert line.endswith(b"}\n") and line.count(b"\n") == 1
