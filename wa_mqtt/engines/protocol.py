"""The protocol between the bridge and an engine child process: versioned JSON lines over pipes. Pure.

parent → child (stdin):   {"v": 3, "id": 7, "op": "send", "args": {"message": {...}, "message_id": "3EB0...", "retry": false}}
child → parent (stdout):  {"v": 3, "id": 7, "ok": true, "result": ...}
                          {"v": 3, "id": 7, "ok": false, "error": "...", "code": "not_connected"}
                          {"v": 3, "event": {...an engine event, engines/base.py...}}
                          {"v": 3, "hb": 12, "rss_kb": 30512}           (heartbeat)
                          {"v": 3, "hello": {"pid": 123, "engine": "sim"}}
A line with another `v` is a protocol error: the two sides come from different versions.

Ops: start, stop, logout, send, react, mark_read, typing, check (which phone numbers have a WhatsApp
account; the result a list of `NumberCheck`s), sim_control, close.

Each op's `args` is a model below (`ARGS`): the bridge builds it, the child validates it, so nothing
untyped crosses. `sim_control` is answered only by a sim child (engines/child.py); any other child
refuses it with `invalid_request`.

The child serves requests one at a time, in the order written, so the bridge may write several
`send`s before the first is answered (pipelined); each is answered on its own, in order. A send written
while an earlier one is unanswered carries `"chained": true`: should the send before it fail so that
it waits to be sent again (`not_connected`: the bridge keeps it queued), a chained send is not
attempted but refused the same way (`SendChain`), so no send overtakes one that waits; a send that
was refused for good (bad media, say) does not hold the ones after it. A child's options (`EngineOptions`, engines/options.py) are not
sent here: they come with its launch.

Ops `groups`, `group_info`, `contacts`, `edit`, `revoke` and `reject_call` (issue 15) came without a new
version: bridge and children are always the same release, and an older child would refuse them as unknown.

Versions: 1, the first; 2, `send` carries the WhatsApp `message_id` the bridge chose and `retry`, and its
result `already_sent` (a version-1 child would ignore the id, and a retried message could go out twice);
3, pipelined sends: `send` carries `chained` (a version-2 child would send a chained send after a
failed one, out of order).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, JsonValue, ValidationError

from ..errors import ErrorCode
from ..model import OutgoingMessage
from .base import EVENT_ADAPTER, EngineEvent, PairMethod, ReceiptReceived, SimSent

VERSION = 3
MAX_LINE = 256 * 1024 * 1024  # a 64 MB media file in base64, with room to spare


class Args(BaseModel):
    """The arguments of one op; `stop`, `logout` and `close` take none."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_json(self) -> dict[str, JsonValue]:
        return self.model_dump(mode="json", exclude_none=True)


class StartArgs(Args):
    method: PairMethod = "qr"


class SendArgs(Args):
    message: OutgoingMessage
    message_id: str | None = None  # the WhatsApp id the bridge chose, the same on every retry
    retry: bool = False
    chained: bool = False  # written while an earlier send was unanswered: not attempted if that one must wait


class ReactArgs(Args):
    chat: str
    id: str
    emoji: str
    sender: str | None = None


class MarkReadArgs(Args):
    chat: str
    ids: list[str]
    sender: str | None = None


class TypingArgs(Args):
    chat: str
    state: str


class CheckArgs(Args):
    """`check`: phone numbers to look up on WhatsApp; the result is a list of `NumberCheck`s."""

    numbers: list[str]
class PingArgs(Args):
    """A server round trip on the open connection (the watchdog's check), within `timeout` s."""

    timeout: float


class SimControlArgs(Args):
    """A `wa/sim/<phone>/<action>` control (sim children only); the MQTT payload's bytes as latin-1 text."""

    action: str
    payload: str = ""


# groups, contacts, calls, edits (issue 15); `groups` and `contacts` take none
class GroupInfoArgs(Args):
    jid: str


class EditArgs(Args):
    chat: str
    id: str
    text: str


class RevokeArgs(Args):
    chat: str
    id: str


class RejectCallArgs(Args):
    caller: str
    id: str


ARGS: dict[str, type[Args]] = {
    "start": StartArgs, "stop": Args, "logout": Args, "send": SendArgs, "react": ReactArgs,
    "mark_read": MarkReadArgs, "typing": TypingArgs, "sim_control": SimControlArgs, "close": Args,
    "check": CheckArgs,
    "groups": Args, "group_info": GroupInfoArgs, "contacts": Args, "edit": EditArgs, "revoke": RevokeArgs,
    "reject_call": RejectCallArgs,
    "ping": PingArgs,
}
OPS = frozenset(ARGS)


class ProtocolError(Exception):
    """A line that is not this protocol (wrong version, not JSON, unknown shape)."""


@dataclass(frozen=True)
class Request:
    id: int
    op: str
    args: dict[str, JsonValue]

    def parsed_args(self) -> Args:
        """`args` as the op's model; raises ProtocolError when they do not fit it."""
        try:
            return ARGS[self.op].model_validate(self.args)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            raise ProtocolError(f"bad arguments for {self.op}: {where}: {error['msg']}") from None


@dataclass(frozen=True)
class Reply:
    id: int
    ok: bool
    result: JsonValue = None
    error: str = ""
    code: ErrorCode = ErrorCode.ENGINE_ERROR  # the response code the failure is answered with
    # the child's side: `result` already written as JSON (a send's `SendResult` by pydantic: no dict made first)
    result_json: bytes | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Event:
    event: EngineEvent


@dataclass(frozen=True)
class Heartbeat:
    seq: int
    rss_kb: int | None = None


@dataclass(frozen=True)
class Hello:
    pid: int
    engine: str


ChildLine = Reply | Event | Heartbeat | Hello


def _line(data: dict[str, Any]) -> bytes:
    return json.dumps({"v": VERSION, **data}, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def encode_request(request: Request) -> bytes:
    return _line({"id": request.id, "op": request.op, "args": request.args})


def encode_call(request_id: int, op: str, args: Args) -> bytes:
    """`encode_request(Request(request_id, op, args.to_json()))`, the same JSON, with `args` written
    by pydantic's own JSON writer (no dict of it made first: the bridge's cost of each send)."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}")
    body = args.__pydantic_serializer__.to_json(args, exclude_none=True)
    return b'{"v":%d,"id":%d,"op":"%s","args":%s}\n' % (VERSION, request_id, op.encode(), body)


def encode_send(request_id: int, message_json: bytes, message_id: str, retry: bool, chained: bool) -> bytes:
    """`encode_call(request_id, "send", SendArgs(message=..., message_id=..., retry=..., chained=...))`,
    the same line, for a message pydantic wrote as JSON already (`message_json`, exclude_none): the
    bridge writes each send's message once, for the outbox and for this line (send_pipeline.py)."""
    return b'{"v":%d,"id":%d,"op":"send","args":{"message":%s,"message_id":%s,"retry":%s,"chained":%s}}\n' % (
        VERSION, request_id, message_json, _STRING.encode(message_id).encode(), _BOOL[retry], _BOOL[chained])


_STRING = json.JSONEncoder(ensure_ascii=False)  # a JSON string as pydantic writes it
_BOOL = {True: b"true", False: b"false"}


def encode_reply(reply: Reply) -> bytes:
    if reply.ok and reply.result_json is not None:
        return b'{"v":%d,"id":%d,"ok":true,"result":%s}\n' % (VERSION, reply.id, reply.result_json)
    if reply.ok:
        return _line({"id": reply.id, "ok": True, "result": reply.result})
    return _line({"id": reply.id, "ok": False, "error": reply.error, "code": reply.code})


def encode_event(event: EngineEvent) -> bytes:
    if isinstance(event, _WRITTEN_BY_PYDANTIC):  # the same JSON, 5 times faster (two per send)
        return _EVENT_PREFIX + event.__pydantic_serializer__.to_json(event) + b"}\n"
    return _line({"event": EVENT_ADAPTER.dump_python(event, mode="json")})


def encode_heartbeat(seq: int, rss_kb: int | None) -> bytes:
    return _line({"hb": seq, "rss_kb": rss_kb})


def encode_hello(pid: int, engine: str) -> bytes:
    return _line({"hello": {"pid": pid, "engine": engine}})


def _load(line: bytes) -> dict[str, Any]:
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {line[:80]!r} ({exc})") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"not an object: {line[:80]!r}")
    if data.get("v") != VERSION:
        raise ProtocolError(f"protocol version {data.get('v')!r}, expected {VERSION}")
    return data


def decode_request(line: bytes) -> Request:
    data = _load(line)
    op, args, req_id = data.get("op"), data.get("args", {}), data.get("id")
    if op not in OPS or not isinstance(args, dict) or not isinstance(req_id, int):
        raise ProtocolError(f"bad request: {line[:80]!r}")
    return Request(req_id, op, args)


def decode_child_line(line: bytes) -> ChildLine:
    if line.startswith(_EVENT_PREFIX) and line.endswith(b"}\n"):  # as encode_event writes it: see _EVENT_PREFIX
        try:
            return Event(EVENT_ADAPTER.validate_json(line[_EVENT_START:-2]))
        except ValidationError:
            pass  # refused below, with the reason
    data = _load(line)
    if "event" in data:
        try:
            return Event(EVENT_ADAPTER.validate_python(data["event"]))
        except ValidationError as exc:
            raise ProtocolError(f"bad event: {exc.errors()[0]['msg']}") from None
    if "hb" in data:
        return Heartbeat(int(data["hb"]), data.get("rss_kb"))
    if "hello" in data:
        return Hello(int(data["hello"]["pid"]), str(data["hello"]["engine"]))
    if isinstance(data.get("id"), int) and isinstance(data.get("ok"), bool):
        if data["ok"]:
            return Reply(data["id"], True, data.get("result"))
        try:
            code = ErrorCode(data.get("code", ErrorCode.ENGINE_ERROR))
        except ValueError:
            raise ProtocolError(f"unknown error code {data.get('code')!r}") from None
        return Reply(data["id"], False, error=str(data.get("error", "")), code=code)
    raise ProtocolError(f"unknown line: {line[:80]!r}")


# Events with no float that could be NaN or infinite: pydantic writes the same JSON for them as
# json.dumps (but for a float's exponent: 1e-7, not 1e-07). It would write NaN and infinities as null,
# where json.dumps writes NaN and Infinity, which the bridge reads back as they were.
_WRITTEN_BY_PYDANTIC = (ReceiptReceived, SimSent)
# An event line as encode_event writes it (every event, most of the child's lines): `_EVENT_PREFIX`, the
# event, `}` and the newline. Between them must be exactly one JSON value, so a line the event validates
# from is `{"v": 3, "event": <that value>}` and nothing else: its event is parsed and validated in one step,
# straight from the bytes (no model of the line around it). Any other line (another version, another
# key, a bad event) takes the long way and is refused there with its reason.
_EVENT_PREFIX = b'{"v":%d,"event":' % VERSION
_EVENT_START = len(_EVENT_PREFIX)


class SendChain:
    """The child's side of pipelined sends: a chained send is refused, not attempted, when the send
    before it failed with `not_connected` (it stays queued in the bridge and goes out again later, so
    the ones behind it must wait too, to keep the account's order). An unchained send (the first of a
    run) clears that."""

    def __init__(self) -> None:
        self.held = False

    def refusal(self, request: Request) -> Reply | None:
        """The answer to `request` without attempting it, or None to carry it out."""
        if request.op == "send" and self.held and request.args.get("chained") is True:
            return Reply(request.id, False, error="not sent: a send before it failed and waits to be sent again "
                                                  "(an account's sends go out in order)", code=ErrorCode.NOT_CONNECTED)
        return None

    def answered(self, request: Request, reply: Reply) -> None:
        """Note how a send (attempted or refused) ended."""
        if request.op == "send":
            self.held = not reply.ok and reply.code == ErrorCode.NOT_CONNECTED
