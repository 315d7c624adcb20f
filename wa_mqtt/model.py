"""Domain types shared by every part of the bridge: account states, status, messages, receipts, sends.

These are the contract's payloads (docs/mqtt-api.md: Status, Sending, Incoming message) as typed models; the
JSON on MQTT is `model.model_dump(mode="json")` of them, nothing more.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal, Self, get_args

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
    """ISO 8601 UTC with a `Z`, seconds precision, as every timestamp on MQTT (a naive datetime is
    local time, as `astimezone` reads it)."""
    if moment is None:
        return None
    if moment.utcoffset() != _NO_OFFSET:  # another zone, or naive (local time)
        moment = moment.astimezone(UTC)
    if moment.year < 1000:  # strftime does not pad the year, isoformat does
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return moment.isoformat(timespec="seconds")[:19] + "Z"  # a third of strftime's cost (once per send)


_NO_OFFSET = timedelta(0)


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
    # the last thing heard from WhatsApp (message, receipt, connect, a check's answer): the watchdog's clock
    last_event_at: datetime | None = None
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
        for key in ("since", "last_connected", "updated_at", "next_retry_at", "last_event_at"):
            data[key] = utc_iso(getattr(self, key))
        return data


MediaError = Literal["too_large", "download_failed", "expired"]


class Media(BaseModel):
    """An incoming message's media: metadata, and once downloaded the file's absolute `path` (its
    `size` and `sha256` then those of the file), or `error` saying why there is no file."""

    mimetype: str | None = None
    size: int | None = None
    filename: str | None = None
    sha256: str | None = None
    path: str | None = None
    error: MediaError | None = None


class Quoted(BaseModel):
    """The message a message answers. `sender` is a phone number or None (never LID digits);
    `sender_lid` the sender's `…@lid` JID when known; `sender_jid` as WhatsApp gave it."""

    id: str
    sender: str | None = None
    sender_lid: str | None = None
    sender_jid: str | None = None
    text: str | None = None


class Reaction(BaseModel):
    emoji: str
    target_id: str


class Edit(BaseModel):
    """`type: "edit"`: message `target_id` now reads `text`."""

    target_id: str
    text: str | None = None


class Revoke(BaseModel):
    """`type: "revoke"`: message `target_id` was deleted for everyone."""

    target_id: str


class Location(BaseModel):
    latitude: float
    longitude: float
    name: str | None = None


MessageType = Literal[
    "text", "image", "video", "audio", "document", "sticker", "location", "contact",
    "reaction", "poll", "poll_vote", "edit", "revoke", "undecryptable", "unknown",
]
MESSAGE_TYPES: frozenset[str] = frozenset(get_args(MessageType))
ChatType = Literal["private", "group", "broadcast", "newsletter"]


class IncomingMessage(BaseModel):
    """`wa/<phone>/message` (contract section 6).

    `sender` is the sender's phone number, or None when WhatsApp named the sender by LID only and the
    LID map does not know its phone (never LID digits); `sender_lid` is the `…@lid` JID when known;
    `sender_jid` is the sender as WhatsApp addressed the message (what replies and reactions use).
    `mentions` are phone numbers (a LID nobody resolved is left out); `mentioned_jids` as received."""

    model_config = ConfigDict(extra="allow")  # type-specific extras (poll options, raw_type, contact vcard)

    id: str
    account: str
    chat: str
    chat_type: ChatType = "private"
    chat_name: str | None = None  # the group's subject, or the contact's name
    sender: str | None
    sender_lid: str | None = None
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
    mentioned_jids: list[str] = Field(default_factory=list)
    reaction: Reaction | None = None
    location: Location | None = None
    edit: Edit | None = None
    revoke: Revoke | None = None

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
    sender: str | None = None  # a phone number or None, never LID digits
    sender_lid: str | None = None

    def payload(self) -> dict[str, Any]:
        # every field but `timestamp` (replaced) is a str, a list of str or None: the python dump is
        # the JSON one, without formatting a timestamp that is thrown away
        data = self.model_dump()
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


MEDIA_KINDS = ("image", "video", "audio", "document", "sticker")
OTHER_KINDS = ("location", "contact")  # sends without media bytes or text


class LocationSend(BaseModel):
    """`send`'s `location`: a pin."""

    model_config = ConfigDict(extra="forbid")

    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    name: str | None = Field(None, max_length=1000)
    address: str | None = Field(None, max_length=1000)


class ContactSend(BaseModel):
    """`send`'s `contact`: a contact card, from `name` and `phone` or a whole `vcard`."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, min_length=1, max_length=256)
    phone: str | None = None
    vcard: str | None = Field(None, min_length=1, max_length=65536)

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        if value is not None and not is_phone(value.lstrip("+")):
            raise ValueError("must be an international phone number, digits only")
        return value.lstrip("+") if value is not None else None

    @model_validator(mode="after")
    def _card(self) -> ContactSend:
        if self.vcard is None and (self.name is None or self.phone is None):
            raise ValueError("give name and phone, or a vcard")
        if self.vcard is not None and "BEGIN:VCARD" not in self.vcard.upper():
            raise ValueError("vcard must be a vCard (BEGIN:VCARD ... END:VCARD)")
        return self

    def card(self) -> str:
        """The vCard sent: the given one, or one built from name and phone (WhatsApp's `waid` makes it tappable)."""
        if self.vcard is not None:
            return self.vcard
        name = (self.name or "").replace("\n", " ").replace("\r", " ")
        return (f"BEGIN:VCARD\nVERSION:3.0\nFN:{name}\nTEL;type=CELL;type=VOICE;waid={self.phone}:+{self.phone}\n"
                "END:VCARD")

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        for line in (self.vcard or "").splitlines():
            if line.upper().startswith("FN:"):
                return line[3:].strip()
        return ""


# -- polls (issue 16) -------------------------------------------------------------------------------
POLL_MAX_OPTIONS = 12


class Poll(BaseModel):
    """An outgoing poll: `question`, 2 to 12 distinct `options`, `selectable` answers per voter (0: any)."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=255)
    options: list[str] = Field(min_length=2, max_length=POLL_MAX_OPTIONS)
    selectable: int = Field(1, ge=0, le=POLL_MAX_OPTIONS)

    @field_validator("options")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        for option in value:
            if not option.strip() or len(option) > 100:
                raise ValueError("each option needs 1 to 100 characters")
        if len(set(value)) != len(value):
            raise ValueError("options must differ (a vote names its options by their text)")
        return value

    @model_validator(mode="after")
    def _selectable(self) -> Poll:
        if self.selectable > len(self.options):
            raise ValueError(f"selectable: at most the {len(self.options)} options (0 allows any number)")
        return self


class PollVote(BaseModel):
    """`poll_vote` of an incoming `type: "poll_vote"` message: the options now selected (a changed vote
    is a new message with the whole new selection; none selected: the vote was withdrawn)."""

    poll_id: str
    selected: list[str] = Field(default_factory=list)
    unresolved: list[str] | None = None  # sha256 (hex) of options the bridge does not know the text of
    error: str | None = None  # the vote could not be decrypted


OUTGOING_KINDS = (*MEDIA_KINDS, *OTHER_KINDS, "poll")


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
    poll: Poll | None = None
    sticker: MediaSource | None = None  # WebP (or an image neonize turns into one)
    location: LocationSend | None = None
    contact: ContactSend | None = None
    reply_to: str | None = None
    mentions: list[str] | None = Field(default=None, max_length=1024)  # phones: `@<phone>` in the text mentions them
    id: str | None = Field(default=None, max_length=128)

    @field_validator("mentions", mode="before")
    @classmethod
    def _mentioned(cls, value: Any) -> Any:
        return phone_list(value)

    @field_validator("to")
    @classmethod
    def _recipient(cls, value: str) -> str:
        if not (is_phone(value) or JID_RE.match(value)):
            raise ValueError("must be a phone number (digits only) or a WhatsApp JID")
        return value

    @model_validator(mode="after")
    def _has_content(self) -> OutgoingMessage:
        kinds = ", ".join(OUTGOING_KINDS)
        content = [k for k in OUTGOING_KINDS if getattr(self, k) is not None]
        if len(content) > 1:
            raise ValueError(f"at most one of {kinds}")
        if [k for k in content if k in MEDIA_KINDS and k != "audio" and getattr(self, k).ptt]:
            raise ValueError("ptt (a voice note) is for audio only")
        if not content and not self.text:
            raise ValueError(f"text or one of {kinds} is required")
        return self

    @functools.cached_property
    def kind(self) -> str:
        """`text` or the one content field given (`OUTGOING_KINDS`). Asked a dozen times per send, so
        worked out once; kept in the instance's `__dict__`, which `model_dump` and `==` ignore, and
        forgotten when a field is set or a copy is made with changes (`__setattr__`, `model_copy`)."""
        fields = self.__dict__
        return next((k for k in OUTGOING_KINDS if fields[k] is not None), "text")

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        self.__dict__.pop("kind", None)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copied = super().model_copy(update=update, deep=deep)
        copied.__dict__.pop("kind", None)
        return copied

    @property
    def media(self) -> MediaSource | None:
        """The media object of a media send (image, video, audio, document, sticker), else None."""
        kind = self.kind
        return getattr(self, kind) if kind in MEDIA_KINDS else None

    @property
    def jid(self) -> str:
        return to_jid(self.to)


class NumberCheck(BaseModel):
    """Whether a phone number has a WhatsApp account, and the JID WhatsApp knows it by (which may differ
    from the number as typed: Brazil's ninth digit). The answer of `check` and what a send resolves."""

    number: str
    on_whatsapp: bool
    jid: str | None = None


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


# -- groups, contacts, calls (issue 15) -------------------------------------------------------------
class GroupSummary(BaseModel):
    """One joined group, as `groups` answers and `wa/<phone>/groups` lists it."""

    jid: str
    name: str | None = None
    participants: int = 0
    is_admin: bool = False


class GroupParticipant(BaseModel):
    phone: str | None = None  # unknown when WhatsApp names the member by LID only
    lid: str | None = None
    jid: str
    is_admin: bool = False
    is_super_admin: bool = False
    name: str | None = None


class GroupInfo(BaseModel):
    """`group_info`: a group with its members."""

    jid: str
    name: str | None = None
    description: str | None = None
    owner: str | None = None
    created: datetime | None = None
    participants: list[GroupParticipant] = Field(default_factory=list)

    def payload(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["created"] = utc_iso(self.created)
        return data


GroupEventType = Literal[
    "group_joined", "group_left", "group_participants_added", "group_participants_removed",
    "group_participants_promoted", "group_participants_demoted", "group_subject_changed",
]


class GroupEvent(BaseModel):
    """A change of a group the account is in (`wa/<phone>/event`)."""

    type: GroupEventType
    group: str
    name: str | None = None  # the group's subject (the new one for `group_subject_changed`)
    participants: list[str] = Field(default_factory=list)  # phones (or LIDs) the change is about
    by: str | None = None  # who made it, when WhatsApp says
    timestamp: datetime

    def payload(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["timestamp"] = utc_iso(self.timestamp)
        return data


class Contact(BaseModel):
    """One entry of the account's contact store (`contacts`)."""

    phone: str | None = None
    lid: str | None = None
    jid: str
    push_name: str | None = None  # the name the person set
    saved_name: str | None = None  # the name in the phone's address book
    business_name: str | None = None


class IncomingCall(BaseModel):
    """`wa/<phone>/call`: a call is ringing."""

    id: str
    from_: str = Field(alias="from", serialization_alias="from")  # the caller's phone (or LID)
    from_jid: str
    video: bool = False
    group: str | None = None  # the group's JID for a group call
    timestamp: datetime

    model_config = ConfigDict(populate_by_name=True)

    def payload(self) -> dict[str, Any]:
        data = self.model_dump(mode="json", by_alias=True)
        data["timestamp"] = utc_iso(self.timestamp)
        return data
