"""What the web page shows, as JSON (pure): an account's card, a recent event, the HTTP status of a
response body, the QR image.

The figures are those MQTT shows (status, stats, `bridge/event`, the `health` request); the page adds
nothing of its own but the time each thing was seen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from ..errors import ErrorCode
from ..model import AccountState, Status, utc_iso


@dataclass(frozen=True, slots=True)
class Pairing:
    """What is on offer for an account: a QR (`serial` changes with each new QR) or a pair code."""

    kind: str  # "qr" or "code"
    code: str
    serial: int


@dataclass(frozen=True, slots=True)
class Counters:
    messages_in: int
    messages_out: int
    reconnects: int


@dataclass(frozen=True, slots=True)
class LastEvent:
    type: str
    at: datetime


def account_view(status: Status, counters: Counters, pairing: Pairing | None, last: LastEvent | None) -> dict[str, object]:
    """One account's card. The QR itself is not in it (only that there is one, and which): the page
    loads its image from `api/accounts/<phone>/qr.png`; a pair code is shown as text."""
    view: dict[str, object] = {
        "phone": status.phone, "name": status.name, "state": status.state.value,
        "since": utc_iso(status.since), "last_connected": utc_iso(status.last_connected),
        "error_code": status.error_code, "error": status.error,
        "reconnect_attempt": status.reconnect_attempt, "next_retry_at": utc_iso(status.next_retry_at),
        "reconnects_by_itself": reconnects_by_itself(status),
        "degraded": status.degraded, "last_event_at": utc_iso(status.last_event_at),
        "queued_outgoing": status.queued_outgoing,
        "messages_in": counters.messages_in, "messages_out": counters.messages_out, "reconnects": counters.reconnects,
        "last_event": None if last is None else {"type": last.type, "at": utc_iso(last.at)},
        "pairing": None,
    }
    if pairing is not None:
        view["pairing"] = ({"kind": "qr", "serial": pairing.serial} if pairing.kind == "qr"
                           else {"kind": "code", "code": pairing.code, "serial": pairing.serial})
    return view


def reconnects_by_itself(status: Status) -> bool:
    """A linked session that dropped and that whatsmeow reconnects by itself (issue 14: no timer of the
    bridge, so no `next_retry_at`); not one parked after a pairing window ran out, which waits for a person."""
    return (status.state == AccountState.DISCONNECTED and status.next_retry_at is None
            and status.error_code != ErrorCode.PAIRING_TIMEOUT)


def event_view(type_: str, data: Mapping[str, object], at: datetime) -> dict[str, object]:
    """A recent bridge event, as `bridge/event` carries it, with the time it was seen."""
    return {"type": type_, "data": dict(data), "at": utc_iso(at)}


# The HTTP status of a refused request: by the kind of refusal; every other code is a request understood
# but not possible now (409). The body is the request layer's own error body in every case.
HTTP_STATUS: Mapping[str, int] = {
    ErrorCode.INVALID_REQUEST: 400, ErrorCode.INVALID_JSON: 400, ErrorCode.UNKNOWN_ACCOUNT: 404,
    ErrorCode.FORBIDDEN: 403, ErrorCode.TOO_LARGE: 413, ErrorCode.BUSY: 503, ErrorCode.INTERNAL_ERROR: 500,
}


def http_status(body: Mapping[str, object]) -> int:
    """200 for `{"status": "ok"}`, else by the error's `code`."""
    if body.get("status") == "ok":
        return 200
    return HTTP_STATUS.get(str(body.get("code")), 409)
