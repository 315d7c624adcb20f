"""Requests and responses (contract section 5): payload → typed command, result → response JSON. No I/O.

Every failure is an `ApiError` with a response code (`errors.ErrorCode`); the message names the offending field. Requests
are strict JSON (RFC 8259 in UTF-8, as I-JSON, RFC 7493, narrows it: no `NaN`/`Infinity`, no number
beyond a double, no lone surrogate, no repeated key), and every body the bridge publishes is too.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import BridgeError, ErrorCode
from ..model import JID_RE, OutgoingMessage, is_phone
from .topics import ACCOUNT_COMMANDS, BRIDGE_COMMANDS, is_topic_name, within

log = logging.getLogger(__name__)

MAX_CHECK_NUMBERS = 100  # numbers per `check` request
MAX_REQUEST_BYTES = 96 * 1024 * 1024  # a 64 MB media file in base64 plus the envelope


class ApiError(BridgeError):
    """A request refused at the edge (bad payload, unknown command, policy): `ApiError(code, message)`."""


@dataclass(frozen=True)
class Route:
    """Where and how to answer: the echoed `transaction` and the MQTT v5 response topic."""

    transaction: object = None  # any JSON value, echoed as given
    has_transaction: bool = False
    response_topic: str | None = None
    correlation_data: bytes | None = None

    def to_dict(self) -> dict[str, object]:
        """As JSON: the reply reference stored with a queued send (the outbox never reads it)."""
        return {
            "transaction": self.transaction, "has_transaction": self.has_transaction,
            "response_topic": self.response_topic,
            "correlation_data": self.correlation_data.hex() if self.correlation_data is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Route:
        corr, topic = data.get("correlation_data"), data.get("response_topic")
        return cls(data.get("transaction"), bool(data.get("has_transaction")), topic if isinstance(topic, str) else None,
                   bytes.fromhex(corr) if isinstance(corr, str) and corr else None)

    @staticmethod
    def is_route(data: Mapping[str, object]) -> bool:
        """True for a reply reference made by `to_dict`, or none at all (answered on the response topic
        without a transaction); False for one of another kind (an auto-reply's)."""
        return "has_transaction" in data or not data


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _chat(value: str) -> str:
    if not (is_phone(value) or JID_RE.match(value)):
        raise ValueError("must be a phone number (digits only) or a WhatsApp JID")
    return value


class EmptyRequest(_Req):
    pass


class ConnectRequest(_Req):
    method: Literal["qr", "code"] = "qr"


class PairRequest(_Req):
    phone: str
    method: Literal["qr", "code"] = "qr"

    check_phone = field_validator("phone")(lambda v: _phone(v))


class PhoneRequest(_Req):
    phone: str

    check_phone = field_validator("phone")(lambda v: _phone(v))


class OptionalPhoneRequest(_Req):
    phone: str | None = None

    check_phone = field_validator("phone")(lambda v: v if v is None else _phone(v))


LOG_LEVELS = ("debug", "info", "warning", "error")


class LogLevelRequest(_Req):
    """`bridge/request/log_level`: the bridge's log level until the next start."""

    level: Literal["debug", "info", "warning", "error"]

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class ReactRequest(_Req):
    chat: str
    id: str = Field(min_length=1, max_length=128)
    emoji: str = Field(max_length=32)
    sender: str | None = None

    check_chat = field_validator("chat")(lambda v: _chat(v))


class ReadRequest(_Req):
    chat: str
    ids: list[str] = Field(min_length=1, max_length=1000)
    sender: str | None = None

    check_chat = field_validator("chat")(lambda v: _chat(v))


class TypingRequest(_Req):
    chat: str
    state: Literal["composing", "paused", "recording"] = "composing"

    check_chat = field_validator("chat")(lambda v: _chat(v))


class CheckRequest(_Req):
    """`check`: which numbers have a WhatsApp account (issue 15's Contacts)."""

    numbers: list[str] = Field(min_length=1, max_length=MAX_CHECK_NUMBERS)

    @field_validator("numbers")
    @classmethod
    def _numbers(cls, value: list[str]) -> list[str]:
        return [_phone(v) for v in value]


def _phone(value: str) -> str:
    value = value.lstrip("+")
    if not is_phone(value):
        raise ValueError("must be an international phone number, digits only")
    return value


class SendRequest(OutgoingMessage):
    """`send` as a request: `text` or one media object, not both (the media's text is its `caption`).
    A rule of the request, not of `OutgoingMessage`, so sends queued by an older version still load."""

    @model_validator(mode="after")
    def _text_or_media(self) -> SendRequest:
        if self.text is None:
            return self
        kind = self.kind  # a property that looks through the fields: once per request
        if kind == "poll":
            raise ValueError("text and poll: give one of them; the poll's text is poll.question")
        if kind != "text":
            where = f"; the {kind}'s text goes in {kind}.caption" if kind in ("image", "video", "document") else ""
            raise ValueError(f"text and {kind}: give one of them{where}")
        return self


# groups, contacts, edits (issue 15)
class GroupInfoRequest(_Req):
    jid: str

    @field_validator("jid")
    @classmethod
    def _group(cls, value: str) -> str:
        if not (JID_RE.match(value) and value.endswith("@g.us")):
            raise ValueError("must be a group JID (`...@g.us`, as `groups` lists them)")
        return value


class EditRequest(_Req):
    chat: str
    id: str = Field(min_length=1, max_length=128)
    text: str = Field(min_length=1, max_length=65536)

    check_chat = field_validator("chat")(lambda v: _chat(v))


class RevokeRequest(_Req):
    chat: str
    id: str = Field(min_length=1, max_length=128)

    check_chat = field_validator("chat")(lambda v: _chat(v))


ACCOUNT_SCHEMAS: dict[str, type[BaseModel]] = {
    "connect": ConnectRequest, "disconnect": EmptyRequest, "logout": EmptyRequest,
    "send": SendRequest, "react": ReactRequest, "read": ReadRequest, "typing": TypingRequest,
    "check": CheckRequest,
    "groups": EmptyRequest, "group_info": GroupInfoRequest, "contacts": EmptyRequest, "edit": EditRequest,
    "revoke": RevokeRequest,
}
BRIDGE_SCHEMAS: dict[str, type[BaseModel]] = {
    "pair": PairRequest, "remove": PhoneRequest, "backup": OptionalPhoneRequest,
    "restart_account": PhoneRequest, "reload": EmptyRequest, "health": EmptyRequest,
}
BRIDGE_SCHEMAS |= {"log_level": LogLevelRequest, "restart": EmptyRequest}  # operating it (issue 17)
assert set(ACCOUNT_SCHEMAS) == ACCOUNT_COMMANDS and set(BRIDGE_SCHEMAS) == BRIDGE_COMMANDS


def decode_payload(raw: bytes, max_bytes: int = MAX_REQUEST_BYTES) -> tuple[dict[str, object], object, bool]:
    """The request object, its `transaction` and whether it had one. Empty payload = `{}`."""
    if len(raw) > max_bytes:
        raise ApiError(ErrorCode.TOO_LARGE, f"request is {len(raw)} bytes; the limit is {max_bytes}")
    if not raw or raw.isspace():  # as `not raw.strip()`, without copying a large payload
        return {}, None, False
    data = loads_strict(raw)
    if not isinstance(data, dict):
        raise ApiError(ErrorCode.INVALID_REQUEST, "payload must be a JSON object")
    has_transaction = "transaction" in data
    transaction = data.pop("transaction", None)
    return data, transaction, has_transaction


_SURROGATE = re.compile("[\ud800-\udfff]")


def loads_strict(raw: bytes) -> Any:
    """`raw` as strict JSON: UTF-8 (a leading BOM is ignored), no `NaN`/`Infinity`, every number a finite
    double, no lone surrogate (`"\\ud800"`), no key twice. Anything else is `invalid_json`."""
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise ApiError(ErrorCode.INVALID_JSON, f"payload is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        if text.startswith("\ufeff"):  # a second BOM: as `json.loads` says it
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        data = _DECODER.decode(text)
    except ValueError as exc:
        raise ApiError(ErrorCode.INVALID_JSON, f"payload is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(ErrorCode.INVALID_JSON, "payload is nested too deeply") from None
    if "\\u" in text and (where := _lone_surrogate(data)) is not None:  # only an escape can make one
        raise ApiError(ErrorCode.INVALID_JSON, f"payload is not valid JSON: {where}: a lone surrogate (\\ud800-\\udfff) "
                                       "is not a character")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"{literal[:20]} is out of range for a number")
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise ValueError(f"key {_printable(key)[:100]!r} appears twice")
        data[key] = value
    return data


def _lone_surrogate(data: Any) -> str | None:
    """Where (`ids.3`, `transaction`) the first key or string holding a lone surrogate is, if any."""
    if isinstance(data, str):
        return "payload" if _SURROGATE.search(data) else None
    stack: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    while stack:  # no recursion: as deep as the parser allowed
        value, path = stack.pop()
        if not isinstance(value, (dict, list)):
            continue
        for key, item in (value.items() if isinstance(value, dict) else enumerate(value)):
            here = (*path, _printable(str(key))[:100])
            if _SURROGATE.search(str(key)) or (isinstance(item, str) and _SURROGATE.search(item)):
                return ".".join(here)
            if isinstance(item, (dict, list)):
                stack.append((item, here))
    return None


def _printable(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text)


# built once: `json.loads` with hooks builds a new decoder for every call (half the cost of a small request)
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite, object_pairs_hook=_object)


def check_response_topic(topic: str | None, reserved: Iterable[str]) -> None:
    """The rule for an MQTT v5 response topic: a topic name (no `+` or `#`), not a `$` topic, and
    outside the bridge's own topics (`reserved`: the base topic and the discovery prefix), so a client
    allowed only to publish requests cannot make the bridge write its state, events or discovery."""
    if not topic:  # none, or empty (as some clients send for none)
        return
    if not is_topic_name(topic):
        raise ApiError(ErrorCode.INVALID_REQUEST, f"response topic {_printable(topic)[:200]!r} is not a topic name "
                                          "(it has a wildcard + or #, a control character or a noncharacter, or over 65,535 bytes)")
    if topic.startswith("$"):
        raise ApiError(ErrorCode.INVALID_REQUEST, f"response topic {topic[:200]!r}: $ topics belong to the broker")
    for root in reserved:
        if within(topic, root):
            raise ApiError(ErrorCode.FORBIDDEN, f"response topic {topic[:200]!r} is one of the bridge's own topics "
                                        f"({root}/#); answer to a topic outside them")


# built once: json.dumps with any option builds a JSONEncoder per call (a few microseconds per publish)
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def encode(data: object) -> bytes:
    """Strict JSON bytes for anything the bridge publishes: UTF-8, no `NaN`/`Infinity`. A value that
    cannot be both (a non-finite number, a lone surrogate from a file name) is replaced, not raised:
    null for the number, U+FFFD for the surrogate, so a response always goes out and always parses."""
    try:
        return _ENCODER.encode(data).encode()
    except (ValueError, UnicodeEncodeError):  # rare: clean a copy, keep the fast path fast
        log.debug("publishing a body with a non-finite number or a lone surrogate, replaced")
        return _ENCODER.encode(_clean(data)).encode()


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, str):
        return _printable(value)
    if isinstance(value, dict):
        return {_clean(k) if isinstance(k, str) else k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def parse_command(is_bridge: bool, command: str, data: Mapping[str, object]) -> BaseModel:
    """Validate `data` against the command's schema; unknown commands are `invalid_request`."""
    schemas = BRIDGE_SCHEMAS if is_bridge else ACCOUNT_SCHEMAS
    schema = schemas.get(command)
    if schema is None:
        known = ", ".join(sorted(schemas))
        raise ApiError(ErrorCode.INVALID_REQUEST, f"unknown command {command!r}; known: {known}")
    try:
        parsed: BaseModel = schema.__pydantic_validator__.validate_python(data)  # model_validate, one frame less
    except ValidationError as exc:
        raise ApiError(ErrorCode.INVALID_REQUEST, describe(exc)) from None
    return parsed


def describe(exc: ValidationError) -> str:
    """`to: field required` style, one clause per problem, each naming its field."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "request"
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        if err["type"] == "missing":
            msg = "field required"
        parts.append(f"{field}: {msg}")
    return "; ".join(parts)


def ok(route: Route, data: Mapping[str, object] | None = None) -> dict[str, object]:
    """The response body of a request carried out (`data`: its result); see `error` for a refused one."""
    body: dict[str, object] = {"status": "ok", "data": data or {}}
    if route.has_transaction:
        body["transaction"] = route.transaction
    return body


def error(route: Route, code: str, message: str) -> dict[str, object]:
    """The response body of a request refused or failed."""
    body: dict[str, object] = {"status": "error", "error": message, "code": code}
    if route.has_transaction:
        body["transaction"] = route.transaction
    return body
