"""Domain types shared by every part of the bridge: account states, status, messages, receipts, sends.

These are the contract's payloads (docs/mqtt-api.md: Status, Sending, Incoming message) as typed models; the
JSON on MQTT is `model.model_dump(mode="json")` of them, nothing more.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# ErrorCode lives in errors.py; it is also imported from here, where it used to live
from .errors import ErrorCode, describe

PHONE_RE = re.compile(r"^[1-9][0-9]{5,14}$")
JID_RE = re.compile(r"^[0-9A-Za-z.\-_:]{1,64}@(s\.whatsapp\.net|g\.us|broadcast|newsletter|lid)$")


def is_phone(value: str) -> bool:
    """True for an international number, digits only, no `+` (the account id in topics)."""
    return bool(PHONE_RE.match(value))


def phone_list(value: Any, jids: bool = False) -> Any:
    """A config list of phones (a leading `+` dropped), or phones and JIDs; ValueError names the bad item.
    Anything but a list is returned unchanged for pydantic to reject with its own message."""
    if not isinstance(value, list):
        return value
    items = [str(v).lstrip("+") for v in value]
    for item in items:
        if not (is_phone(item) or (jids and JID_RE.match(item))):
            kind = "a phone number or JID" if jids else "a phone number (international, digits only)"
            raise ValueError(f"{item!r} is not {kind}")
    return items


def utc_iso(moment: datetime | None) -> str | None:
    """ISO 8601 UTC with a `Z`, seconds precision, as every timestamp on MQTT."""
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class AccountState(StrEnum):
    """The states of an account (contract section 4), exactly these words."""

    CONNECTING = "connecting"
    PAIRING = "pairing"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    STOPPED = "stopped"
    LOGGED_OUT = "logged_out"
    CONFLICT = "conflict"
    BANNED = "banned"
    ERROR = "error"


class Status(BaseModel):
    """`wa/<phone>/status`: the single source of truth for an account."""

    phone: str
    name: str | None = None
    state: AccountState
    since: datetime
    last_connected: datetime | None = None
    updated_at: datetime
    reconnect_attempt: int = 0
    next_retry_at: datetime | None = None
    error_code: ErrorCode | None = None
    # what the code alone does not say (the engine's own words, a crash's cause); not published as such
    error_detail: tuple[str, ...] = Field(default=(), exclude=True)
    engine: str
    queued_outgoing: int = 0
    degraded: bool = False  # connected, but keepalives go unanswered (whatsmeow heals it or reconnects)

    @property
    def error(self) -> str | None:
        """The human text of `error_code`, looked up here, where the status is shown."""
        return None if self.error_code is None else describe(self.error_code, self.error_detail)

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for key, value in self.model_dump(mode="json").items():
            if key == "error_code":
                data["error"] = self.error
            data[key] = value
        for key in ("since", "last_connected", "updated_at", "next_retry_at"):
            data[key] = utc_iso(getattr(self, key))
        return data


class Media(BaseModel):
    mimetype: str | None = None
    size: int | None = None
    filename: str | None = None
    sha256: str | None = None
    path: str | None = None


class Quoted(BaseModel):
    id: str
    sender: str | None = None
    text: str | None = None


class Reaction(BaseModel):
    emoji: str
    target_id: str


class Location(BaseModel):
    latitude: float
    longitude: float
    name: str | None = None


MessageType = Literal[
    "text", "image", "video", "audio", "document", "sticker", "location", "contact",
    "reaction", "poll", "unknown",
]
MESSAGE_TYPES: frozenset[str] = frozenset(get_args(MessageType))
ChatType = Literal["private", "group", "broadcast", "newsletter"]


class IncomingMessage(BaseModel):
    """`wa/<phone>/message` (contract section 6)."""

    model_config = ConfigDict(extra="allow")  # type-specific extras (poll options, raw_type, contact vcard)

    id: str
    account: str
    chat: str
    chat_type: ChatType = "private"
    sender: str
    sender_jid: str
    sender_name: str | None = None
    from_me: bool = False
    timestamp: datetime
    type: MessageType = "text"
    text: str | None = None
    caption: str | None = None
    media: Media | None = None
    quoted: Quoted | None = None
    mentions: list[str] = Field(default_factory=list)
    reaction: Reaction | None = None
    location: Location | None = None

    def payload(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["timestamp"] = utc_iso(self.timestamp)
        return data


class Receipt(BaseModel):
    """`wa/<phone>/receipt`."""

    ids: list[str]
    chat: str
    type: Literal["delivered", "read", "played"]
    timestamp: datetime
    sender: str | None = None

    def payload(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["timestamp"] = utc_iso(self.timestamp)
        return data


class MediaSource(BaseModel):
    """Where outgoing media comes from: exactly one of url, path, base64."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = None
    path: str | None = None
    base64: str | None = None
    mimetype: str | None = None
    filename: str | None = None
    caption: str | None = None
    ptt: bool = False  # audio only: send as a voice note (OGG/Opus; converted with ffmpeg when needed)

    @model_validator(mode="after")
    def _one_source(self) -> MediaSource:
        given = [k for k in ("url", "path", "base64") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("exactly one of url, path, base64 is required")
        return self


MEDIA_KINDS = ("image", "video", "audio", "document")


def to_jid(recipient: str) -> str:
    """A phone or JID as a JID (`5511999999999` → `5511999999999@s.whatsapp.net`)."""
    return recipient if "@" in recipient else f"{recipient}@s.whatsapp.net"


def identity(recipient: str) -> str:
    """Whom a phone or JID names, for comparing them (`outgoing.allow_to`): `5511999999999`,
    `+5511999999999`, `5511999999999@s.whatsapp.net` and one of its devices
    (`5511999999999:12@s.whatsapp.net`) are all `5511999999999@s.whatsapp.net`; groups are themselves."""
    user, at, server = recipient.lstrip("+").partition("@")
    if not at:
        server = "s.whatsapp.net"
    if server in ("s.whatsapp.net", "lid"):
        user = user.split(":", 1)[0].split(".", 1)[0]  # `user.agent:device`: the person, not the device
    return f"{user}@{server}"


class OutgoingMessage(BaseModel):
    """`wa/<phone>/request/send` once validated (contract section 7)."""

    model_config = ConfigDict(extra="forbid")

    to: str
    text: str | None = None
    image: MediaSource | None = None
    video: MediaSource | None = None
    audio: MediaSource | None = None
    document: MediaSource | None = None
    reply_to: str | None = None
    id: str | None = Field(default=None, max_length=128)

    @field_validator("to")
    @classmethod
    def _recipient(cls, value: str) -> str:
        if not (is_phone(value) or JID_RE.match(value)):
            raise ValueError("must be a phone number (digits only) or a WhatsApp JID")
        return value

    @model_validator(mode="after")
    def _has_content(self) -> OutgoingMessage:
        media = [k for k in MEDIA_KINDS if getattr(self, k) is not None]
        if len(media) > 1:
            raise ValueError("at most one of image, video, audio, document")
        if [k for k in media if k != "audio" and getattr(self, k).ptt]:
            raise ValueError("ptt (a voice note) is for audio only")
        if not media and not self.text:
            raise ValueError("text or one of image, video, audio, document is required")
        return self

    @property
    def kind(self) -> str:
        return next((k for k in MEDIA_KINDS if getattr(self, k) is not None), "text")

    @property
    def jid(self) -> str:
        return to_jid(self.to)


class SendResult(BaseModel):
    id: str
    timestamp: datetime | None = None
    already_sent: bool = False  # a retry of a message WhatsApp already had: nothing went out again


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What became of a send (the `data` of its response, contract "Sending"): sent now as `id`, or
    `queued` (`queue_id`); `duplicate` when its `id` key was seen before (None: not asked)."""

    id: str | None
    queued: bool
    queue_id: int | None = None
    duplicate: bool | None = None

    def payload(self) -> dict[str, object]:
        data: dict[str, object] = {"id": self.id, "queued": self.queued}
        if self.queue_id is not None:
            data["queue_id"] = self.queue_id
        if self.duplicate is not None:
            data["duplicate"] = self.duplicate
        return data
