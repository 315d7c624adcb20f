"""The bridge's one error vocabulary: every error code of the contract, its human message, and the
exception every refusal is raised as.

`ErrorCode` holds the words docs/mqtt-api.md lists, the response `code`s and the status `error_code`s
alike (a test keeps the two equal), exactly as they appear on MQTT. `MESSAGES` says for each what happened
and what to do. Code that decides returns codes, not text: the state machine puts an `error_code` and its
detail (the engine's own words, a crash's cause) into the status, and the text is looked up where it is
shown (`describe`), as mautrix does for its bridge states. A refusal is a `BridgeError` carrying its code
and the text of the response; `ApiError`, `EngineError`, `MediaRefused`, `StorageError`, `DiskFull` and
`UnknownAccount` are its kinds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from types import MappingProxyType


class ErrorCode(StrEnum):
    """The contract's error codes: response `code` and status `error_code`, exactly these words."""

    # response codes (docs/mqtt-api.md, Requests and responses)
    INVALID_JSON = "invalid_json"
    INVALID_REQUEST = "invalid_request"
    UNKNOWN_ACCOUNT = "unknown_account"
    NOT_CONNECTED = "not_connected"
    ENGINE_ERROR = "engine_error"
    FORBIDDEN = "forbidden"
    TOO_LARGE = "too_large"
    EXPIRED = "expired"
    CONFIG_INVALID = "config_invalid"
    INTERNAL_ERROR = "internal_error"
    BUSY = "busy"
    NOT_ON_WHATSAPP = "not_on_whatsapp"  # a send to a phone number that has no WhatsApp account
    # both: a response code and a status error_code
    STORAGE_ERROR = "storage_error"
    DISK_FULL = "disk_full"  # the bridge's data disk is full: incoming messages are held in memory
    # status error codes (docs/mqtt-api.md, Status)
    DIAL_FAILED = "dial_failed"
    CONNECT_FAILURE = "connect_failure"
    CONNECTION_LOST = "connection_lost"
    KEEPALIVE_TIMEOUT = "keepalive_timeout"
    LOGGED_OUT = "logged_out"
    STREAM_REPLACED = "stream_replaced"
    TEMPORARY_BAN = "temporary_ban"
    CLIENT_OUTDATED = "client_outdated"
    PAIRING_TIMEOUT = "pairing_timeout"
    ENGINE_CRASHED = "engine_crashed"
    STORE_CORRUPT = "store_corrupt"


E = ErrorCode

RESPONSE_CODES = frozenset({
    E.INVALID_JSON, E.INVALID_REQUEST, E.UNKNOWN_ACCOUNT, E.NOT_CONNECTED, E.ENGINE_ERROR, E.FORBIDDEN,
    E.TOO_LARGE, E.DISK_FULL, E.EXPIRED, E.CONFIG_INVALID, E.STORAGE_ERROR, E.INTERNAL_ERROR, E.BUSY,
    E.NOT_ON_WHATSAPP,
})
"""The codes a response can carry (`{"status": "error", "code": ...}`)."""

STATUS_CODES = frozenset({
    E.DIAL_FAILED, E.CONNECT_FAILURE, E.CONNECTION_LOST, E.KEEPALIVE_TIMEOUT, E.LOGGED_OUT, E.STREAM_REPLACED,
    E.TEMPORARY_BAN, E.CLIENT_OUTDATED, E.PAIRING_TIMEOUT, E.ENGINE_CRASHED, E.STORE_CORRUPT, E.STORAGE_ERROR,
    E.DISK_FULL,
})
"""The codes an account's status can show (`error_code`)."""

MESSAGES: Mapping[ErrorCode, str] = MappingProxyType({
    E.INVALID_JSON: "the payload is not valid JSON: send a JSON object (or an empty payload)",
    E.INVALID_REQUEST: "the request does not fit its command: see docs/mqtt-api.md for the commands and their fields",
    E.UNKNOWN_ACCOUNT: "no such account: link it first with bridge/request/pair",
    E.NOT_CONNECTED: "the account is not connected: send connect and try again once it is (sends queue instead)",
    E.ENGINE_ERROR: "WhatsApp refused the operation",
    E.FORBIDDEN: "refused by the outgoing policy (outgoing.allow_to, outgoing.media_dir, media URLs)",
    E.TOO_LARGE: ("too large: see mqtt.max_payload_bytes, outgoing.max_media_bytes and "
                  "outgoing.max_text_chars"),
    E.EXPIRED: "not sent: still queued after outgoing.ttl",
    E.CONFIG_INVALID: "config.yaml is invalid, empty or missing; the running config stays: fix the file",
    E.NOT_ON_WHATSAPP: "not sent: this phone number has no WhatsApp account (check the number and its country code)",
    E.BUSY: "not done: too many requests are waiting; send it again later",
    E.INTERNAL_ERROR: "internal error (a bug, see the log): the request had no effect beyond what the response says",
    E.STORAGE_ERROR: ("the sessions folder cannot be written (read-only, permissions, disk full): make it "
                      "writable and try again"),
    E.DISK_FULL: ("the data disk is full: incoming messages are held in memory and written as soon as "
                  "there is space"),
    E.DIAL_FAILED: "cannot reach WhatsApp: check the network (and `proxy`); retrying with backoff",
    E.CONNECT_FAILURE: "WhatsApp refused the connection; retrying with backoff",
    E.CONNECTION_LOST: "connection lost; reconnecting",
    E.KEEPALIVE_TIMEOUT: ("WhatsApp stopped answering keepalives: still connected (degraded); it heals by "
                          "itself or reconnects within minutes"),
    E.LOGGED_OUT: "logged out: this device is no longer linked; send connect to pair again",
    E.STREAM_REPLACED: "the session was opened elsewhere; not fighting it: send connect to take it back",
    E.TEMPORARY_BAN: "temporarily banned by WhatsApp; retrying when the ban ends (next_retry_at)",
    E.CLIENT_OUTDATED: ("WhatsApp rejected this client version (whatsmeow inside neonize is too old): upgrade "
                        "neonize within the range wa_mqtt allows (pip install -U wa_mqtt neonize; the add-on: "
                        "update it), then send connect"),
    E.PAIRING_TIMEOUT: "pairing timed out: nothing was scanned in time; send connect to try again",
    E.ENGINE_CRASHED: "the engine process crashed; restarting it with backoff",
    E.STORE_CORRUPT: "the session store is unusable and no good backup exists: send connect to pair again",
})
"""What happened and what to do, for each code: the text shown when there is no detail to show."""

DETAIL_FORMATS: Mapping[ErrorCode, str] = MappingProxyType({
    E.ENGINE_CRASHED: "engine crashed: {0}",
    E.PAIRING_TIMEOUT: "pairing timed out: nothing was scanned within {0} s; send connect to try again",
    E.TEMPORARY_BAN: "temporary ban {0} until {1}",
})
"""How a detail reads for the few codes whose detail alone would not say what happened (a crash's cause,
the pairing timeout in seconds, a ban's code and end); any other code shows its detail as it is."""


def describe(code: ErrorCode, detail: Sequence[str] = ()) -> str:
    """The text for `code`: its detail (the engine's own words, the folder and its cause, ...) in the
    code's format when there is a detail, else the code's message."""
    if not detail:
        return MESSAGES[code]
    return DETAIL_FORMATS.get(code, "{0}").format(*detail)


class BridgeError(Exception):
    """A refusal or failure the contract names: `code` is its error code, `message` the text for the
    response (the specifics when the raiser knows them, else the code's message). `str()` is `message`."""

    code: ErrorCode
    message: str

    def __init__(self, code: ErrorCode | str, message: str | None = None) -> None:
        self.code = ErrorCode(code)  # a word outside the vocabulary is a bug: ValueError
        self.message = message or MESSAGES[self.code]
        super().__init__(self.message)
