"""Requests and responses (contract section 5): payload → typed command, result → response JSON. No I/O.

Every failure is an `ApiError` with a response code; the message names the offending field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..model import JID_RE, OutgoingMessage, is_phone
from .topics import ACCOUNT_COMMANDS, BRIDGE_COMMANDS

MAX_REQUEST_BYTES = 96 * 1024 * 1024  # a 64 MB media file in base64 plus the envelope


class ApiError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


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


def _phone(value: str) -> str:
    value = value.lstrip("+")
    if not is_phone(value):
        raise ValueError("must be an international phone number, digits only")
    return value


ACCOUNT_SCHEMAS: dict[str, type[BaseModel]] = {
    "connect": ConnectRequest, "disconnect": EmptyRequest, "logout": EmptyRequest,
    "send": OutgoingMessage, "react": ReactRequest, "read": ReadRequest, "typing": TypingRequest,
}
BRIDGE_SCHEMAS: dict[str, type[BaseModel]] = {
    "pair": PairRequest, "remove": PhoneRequest, "backup": OptionalPhoneRequest,
    "restart_account": PhoneRequest, "reload": EmptyRequest, "health": EmptyRequest,
}
assert set(ACCOUNT_SCHEMAS) == ACCOUNT_COMMANDS and set(BRIDGE_SCHEMAS) == BRIDGE_COMMANDS


def decode_payload(raw: bytes, max_bytes: int = MAX_REQUEST_BYTES) -> tuple[dict[str, object], object, bool]:
    """The request object, its `transaction` and whether it had one. Empty payload = `{}`."""
    if len(raw) > max_bytes:
        raise ApiError("too_large", f"request is {len(raw)} bytes; the limit is {max_bytes}")
    if not raw.strip():
        return {}, None, False
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError("invalid_json", f"payload is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError("invalid_json", "payload is nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError("invalid_request", "payload must be a JSON object")
    has_transaction = "transaction" in data
    transaction = data.pop("transaction", None)
    return data, transaction, has_transaction


def parse_command(is_bridge: bool, command: str, data: Mapping[str, object]) -> BaseModel:
    """Validate `data` against the command's schema; unknown commands are `invalid_request`."""
    schemas = BRIDGE_SCHEMAS if is_bridge else ACCOUNT_SCHEMAS
    schema = schemas.get(command)
    if schema is None:
        known = ", ".join(sorted(schemas))
        raise ApiError("invalid_request", f"unknown command {command!r}; known: {known}")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ApiError("invalid_request", describe(exc)) from None


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


def encode(data: object) -> bytes:
    """JSON bytes for anything the bridge publishes: UTF-8, compact."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
