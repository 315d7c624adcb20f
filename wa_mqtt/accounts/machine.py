"""The account state machine, pure: one transition function from (account, input) to (account, effects).

`decide` is the only place an account's state changes. It does no I/O and reads no clock: the
supervisor passes `now` and a random number in, and carries out the effects it returns. States are the
contract's (section 4); backoff is exponential with jitter, none after states a person must resolve,
the ban's own expiry after a temporary ban, and drops soon after connecting count as failures (flaps).

A full data disk is not a state: it does not change what the account does. While it lasts, a status
without an error of its own shows `error_code: disk_full`; a connection error takes precedence.
Every transition reads the clock once: `since` (on a state change) and `updated_at` are that reading.

The machine writes no text: a status gets an `error_code` and, where the code alone does not say it, a
detail (the engine's own words, a crash's cause, a ban's code and end); `Status.error` looks the text up
in `errors` where the status is shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import assert_never

from ..config import ReconnectConfig
from ..engines.base import (
    ClientOutdated,
    Connected,
    Crashed,
    Degraded,
    Disconnected,
    LoggedOut,
    PairCode,
    Paired,
    PairMethod,
    Qr,
    StreamReplaced,
    TemporaryBan,
)
from ..errors import ErrorCode
from ..model import AccountState, Status, utc_iso

S = AccountState
# States a person must resolve: engine news is ignored there, and nothing retries.
PARKED = frozenset({S.STOPPED, S.LOGGED_OUT, S.CONFLICT, S.ERROR})
ACTIVE = frozenset({S.CONNECTING, S.PAIRING, S.CONNECTED, S.DISCONNECTED})


# -- inputs --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Start:
    """Restore at boot, or a `connect` / `pair` command (`by_user` resets the failure count)."""

    method: PairMethod = "qr"
    by_user: bool = False


@dataclass(frozen=True)
class Stop:
    """`disconnect`: stop and stay stopped until `connect`."""


LOGOUT_ON_REQUEST = "logged out on request"
"""The detail of a `logged_out` status that a person asked for (`logout`), as opposed to WhatsApp's."""


def logged_out_on_request(status: Status) -> bool:
    """The account is `logged_out` because a person asked for it (the `logout` request, or the web page's)."""
    return status.state == S.LOGGED_OUT and status.error_detail == (LOGOUT_ON_REQUEST,)


@dataclass(frozen=True)
class LogoutDone:
    """`logout` finished: unlinked on WhatsApp's side and the store removed (`reason`: the status detail)."""

    reason: str | None = None


@dataclass(frozen=True)
class RetryDue:
    pass


@dataclass(frozen=True)
class PairingExpired:
    pass


@dataclass(frozen=True)
class StoreUnusable:
    error: str


@dataclass(frozen=True)
class Settle:
    """Boot found no linked device to restore: show `stopped` or `logged_out` instead of `connecting`."""

    state: AccountState
    error: str | None = None


@dataclass(frozen=True)
class DiskFull:
    """The bridge's data disk is full (`detail`: what the status says, else the code's message); not a
    state of the account."""

    detail: str | None = None


@dataclass(frozen=True)
class DiskSpaceBack:
    """The data disk is writable again."""


@dataclass(frozen=True)
class Shutdown:
    """The bridge stops cleanly: an account it was running is `stopped` (until the next start)."""


EngineInput = (
    Connected | Disconnected | Degraded | LoggedOut | StreamReplaced | TemporaryBan | ClientOutdated | Qr | PairCode
    | Paired | Crashed
)
Input = (
    Start | Stop | LogoutDone | RetryDue | PairingExpired | StoreUnusable | Settle | DiskFull | DiskSpaceBack
    | Shutdown | EngineInput
)


# -- effects -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StartSession:
    method: PairMethod


@dataclass(frozen=True)
class StopSession:
    pass


@dataclass(frozen=True)
class ScheduleRetry:
    at: datetime


@dataclass(frozen=True)
class CancelRetry:
    pass


@dataclass(frozen=True)
class SchedulePairingExpiry:
    at: datetime


@dataclass(frozen=True)
class ShowPairing:
    """Publish a QR (`kind="qr"`) or pair code (`kind="code"`)."""

    kind: str
    code: str


@dataclass(frozen=True)
class ClearPairing:
    pass


@dataclass(frozen=True)
class OnConnected:
    """Connected: flush the outbox, back the store up, remember the name and time."""


@dataclass(frozen=True)
class BridgeEvent:
    type: str
    data: dict[str, object]


Effect = (
    StartSession | StopSession | ScheduleRetry | CancelRetry | SchedulePairingExpiry | ShowPairing
    | ClearPairing | OnConnected | BridgeEvent
)


# -- the account -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Account:
    """What the supervisor remembers of one account; `status` is what the world sees."""

    status: Status
    failures: int = 0  # consecutive failed attempts; a flap counts as one
    connected_at: datetime | None = None
    pairing_until: datetime | None = None
    method: PairMethod = "qr"
    reconnects: int = 0
    disk_full: DiskFull | None = None  # while the data disk is full: the condition as reported
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def state(self) -> AccountState:
        return self.status.state


def new_account(phone: str, engine: str, now: datetime, name: str | None = None,
                last_connected: datetime | None = None, state: AccountState = S.STOPPED,
                error: str | None = None) -> Account:
    """An account as first shown: `connecting` for a stored session about to be restored,
    `logged_out` for a folder without a linked device, `stopped` for a configured, never linked phone."""
    status = Status(phone=phone, name=name, state=state, since=now, updated_at=now, engine=engine,
                    last_connected=last_connected, error_detail=_detail(error),
                    error_code=ErrorCode.LOGGED_OUT if state == S.LOGGED_OUT else None)
    return Account(status=status)


def _detail(text: str | None) -> tuple[str, ...]:
    """A status detail from words that may be missing."""
    return (text,) if text else ()


def backoff_delay(failures: int, policy: ReconnectConfig, rand: float) -> float:
    """Seconds before attempt `failures + 1`: initial * factor^(failures-1), capped, ± jitter."""
    exponent = max(failures - 1, 0)
    base = min(policy.max, policy.initial * policy.factor ** min(exponent, 64))
    return max(0.0, base * (1 + policy.jitter * (2 * rand - 1)))


def _with(acc: Account, now: datetime, state: AccountState | None = None, **status_changes: object) -> Account:
    status = acc.status
    changes = dict(status_changes, updated_at=now)
    if state is not None and state != status.state:
        changes["since"] = now
        changes.setdefault("degraded", False)  # a keepalive gap belongs to the connection it was on
    if state is not None:
        changes["state"] = state
    return replace(acc, status=status.model_copy(update=changes))


def _park(acc: Account, now: datetime, state: AccountState, code: ErrorCode | None, detail: tuple[str, ...] = (),
          extra: list[Effect] | None = None) -> tuple[Account, list[Effect]]:
    acc = _with(acc, now, state, error_code=code, error_detail=detail, next_retry_at=None, reconnect_attempt=0)
    acc = replace(acc, pairing_until=None, connected_at=None)
    return acc, [StopSession(), CancelRetry(), ClearPairing(), *(extra or [])]


def _fail(acc: Account, now: datetime, code: ErrorCode, detail: tuple[str, ...], policy: ReconnectConfig,
          rand: float) -> tuple[Account, list[Effect]]:
    """A failed attempt or a drop: disconnected, retry after the backoff."""
    stable = (acc.state == S.CONNECTED and acc.connected_at is not None
              and (now - acc.connected_at).total_seconds() >= policy.flap_window)
    failures = 1 if stable else acc.failures + 1
    retry_at = now + timedelta(seconds=backoff_delay(failures, policy, rand))
    effects: list[Effect] = [ScheduleRetry(retry_at)]
    if acc.state == S.PAIRING:
        effects.append(ClearPairing())
    acc = replace(acc, failures=failures, connected_at=None, pairing_until=None,
                  reconnects=acc.reconnects + (1 if acc.state == S.CONNECTED else 0))
    acc = _with(acc, now, S.DISCONNECTED, error_code=code, error_detail=detail, reconnect_attempt=failures,
                next_retry_at=retry_at)
    return acc, effects


def decide(acc: Account, event: Input, now: datetime, policy: ReconnectConfig, rand: float,
           pairing_timeout: float) -> tuple[Account, list[Effect]]:
    """The transition function. Returns the account unchanged and no effects for ignored input."""
    after, effects = _decide(acc, event, now, policy, rand, pairing_timeout)
    status = after.status
    if after.disk_full is not None and status.error_code is None:
        after = _with(after, now, error_code=ErrorCode.DISK_FULL, error_detail=_detail(after.disk_full.detail))
    elif after.disk_full is None and status.error_code == ErrorCode.DISK_FULL:
        after = _with(after, now, error_code=None, error_detail=())
    return after, effects


def _decide(acc: Account, event: Input, now: datetime, policy: ReconnectConfig, rand: float,
            pairing_timeout: float) -> tuple[Account, list[Effect]]:
    state = acc.state
    match event:
        case DiskFull():
            return replace(acc, disk_full=event), []
        case DiskSpaceBack():
            return replace(acc, disk_full=None), []
        case Shutdown():
            if state in PARKED:
                return acc, []
            return _park(acc, now, S.STOPPED, None)
        case Start(method=method, by_user=by_user):
            if state == S.CONNECTED and not by_user:
                return acc, []
            if by_user and (state in (S.CONNECTING, S.CONNECTED) or (state == S.PAIRING and method == acc.method)):
                return acc, []  # already on its way: connect is idempotent
            failures = 0 if by_user else acc.failures
            clear = {"error_code": None, "error_detail": ()} if by_user else {}
            acc = replace(acc, failures=failures, method=method, pairing_until=None)
            acc = _with(acc, now, S.CONNECTING, next_retry_at=None, reconnect_attempt=failures, **clear)
            return acc, [CancelRetry(), StopSession(), StartSession(method)]
        case RetryDue():
            if state not in (S.DISCONNECTED, S.BANNED):
                return acc, []
            acc = _with(acc, now, S.CONNECTING, next_retry_at=None)
            return acc, [StopSession(), StartSession(acc.method)]
        case Stop():
            return _park(acc, now, S.STOPPED, None)
        case LogoutDone(reason=reason):
            acc = replace(acc, failures=0)
            return _park(acc, now, S.LOGGED_OUT, ErrorCode.LOGGED_OUT, _detail(reason))
        case StoreUnusable(error=error):
            return _park(acc, now, S.ERROR, ErrorCode.STORE_CORRUPT, _detail(error))
        case Settle(state=settled, error=error):
            if state != S.CONNECTING:
                return acc, []
            code = ErrorCode.LOGGED_OUT if settled == S.LOGGED_OUT else None
            return _with(acc, now, settled, error_code=code, error_detail=_detail(error) if code else ()), []
        case Qr(code=code) | PairCode(code=code):
            if state not in (S.CONNECTING, S.PAIRING):
                return acc, []
            effects: list[Effect] = [ShowPairing("qr" if isinstance(event, Qr) else "code", code)]
            if acc.pairing_until is None:
                until = now + timedelta(seconds=pairing_timeout)
                acc = replace(acc, pairing_until=until)
                effects.append(SchedulePairingExpiry(until))
            return _with(acc, now, S.PAIRING, error_code=None, error_detail=()), effects
        case PairingExpired():
            if state != S.PAIRING:
                return acc, []
            return _park(acc, now, S.DISCONNECTED, ErrorCode.PAIRING_TIMEOUT, (f"{pairing_timeout:g}",))
        case Paired(phone=phone, name=name):
            acc = _with(acc, now, None, name=name or acc.status.name)
            return acc, [ClearPairing(), BridgeEvent("paired", {"phone": acc.status.phone, "linked_phone": phone, "name": name})]
        case Connected(name=name):
            if state in PARKED or state == S.BANNED:
                return acc, [StopSession()]  # late news from a session we already stopped
            if state == S.CONNECTED:
                return _healed(acc, now)
            effects = [CancelRetry(), OnConnected()]
            if state == S.PAIRING or acc.pairing_until is not None:
                effects.insert(1, ClearPairing())
            acc = replace(acc, connected_at=now, pairing_until=None)
            acc = _with(acc, now, S.CONNECTED, name=name or acc.status.name, last_connected=now,
                        error_code=None, error_detail=(), next_retry_at=None, reconnect_attempt=0)
            return acc, effects
        case Disconnected(code=code, error=error, engine_reconnects=engine_reconnects):
            if state not in ACTIVE:
                return acc, []
            if engine_reconnects and state != S.PAIRING:
                return _engine_reconnects(acc, now, code, _detail(error), policy)
            return _fail(acc, now, code, _detail(error), policy, rand)
        case Degraded():
            return _degraded(acc, now, event)
        case Crashed(error=error):
            crash_event = BridgeEvent("engine_crashed", {"phone": acc.status.phone, "error": error})
            if state not in ACTIVE and state != S.BANNED:
                return acc, [crash_event]
            acc, effects = _fail(acc, now, ErrorCode.ENGINE_CRASHED, _detail(error), policy, rand)
            return acc, [crash_event, *effects]
        case LoggedOut(reason=reason):
            if state in (S.STOPPED, S.LOGGED_OUT):
                return acc, []
            acc = replace(acc, failures=0)
            return _park(acc, now, S.LOGGED_OUT, ErrorCode.LOGGED_OUT, _detail(reason),
                         [BridgeEvent("logged_out", {"phone": acc.status.phone, "reason": reason})])
        case StreamReplaced():
            if state in PARKED:
                return acc, []
            return _park(acc, now, S.CONFLICT, ErrorCode.STREAM_REPLACED)
        case TemporaryBan(code=ban_code, expires_at=expires_at):
            acc = replace(acc, connected_at=None, pairing_until=None)
            acc = _with(acc, now, S.BANNED, error_code=ErrorCode.TEMPORARY_BAN,
                        error_detail=(ban_code, utc_iso(expires_at) or ""), next_retry_at=expires_at)
            return acc, [StopSession(), ClearPairing(), ScheduleRetry(expires_at)]
        case ClientOutdated():
            return _park(acc, now, S.ERROR, ErrorCode.CLIENT_OUTDATED)
        case _:
            assert_never(event)


# -- issue 14: one owner of reconnection; a keepalive gap is `degraded`, not a state ----------------------
# whatsmeow reconnects a logged-in session by itself after a drop (client.go autoReconnect) and heals a
# keepalive gap by itself, forcing a reconnect only after 3 minutes of it (keepalive.go). A restart by the
# bridge meanwhile would race it and cost neonize a leaked file per connect. So after such a drop the
# bridge only shows `disconnected` and waits; it takes over (stop, start, its own backoff) only when the
# engine is still down after `reconnect.engine_grace`. The bridge's backoff owns everything else: a first
# connect that fails (whatsmeow does not retry it), pairing, a crashed or recycled engine process.


def _engine_reconnects(acc: Account, now: datetime, code: ErrorCode, detail: tuple[str, ...],
                       policy: ReconnectConfig) -> tuple[Account, list[Effect]]:
    """A drop the engine heals itself: `disconnected` without a retry of ours; a watchdog after the grace."""
    failures = acc.failures + 1 if acc.state != S.CONNECTED else 1
    acc = replace(acc, failures=failures, connected_at=None,
                  reconnects=acc.reconnects + (1 if acc.state == S.CONNECTED else 0))
    acc = _with(acc, now, S.DISCONNECTED, error_code=code, error_detail=detail, reconnect_attempt=failures,
                next_retry_at=None)
    return acc, [ScheduleRetry(now + timedelta(seconds=policy.engine_grace))]


def _degraded(acc: Account, now: datetime, event: Degraded) -> tuple[Account, list[Effect]]:
    """A keepalive gap while connected: `degraded` (with `keepalive_timeout`) until it heals; no state change."""
    if acc.state != S.CONNECTED:
        return acc, []
    if not event.degraded:
        return _healed(acc, now)
    if acc.status.degraded and acc.status.error_code == ErrorCode.KEEPALIVE_TIMEOUT:
        return acc, []  # one more missed keepalive of the same gap
    detail = (f"WhatsApp stopped answering keepalives ({event.missed} missed): still connected; "
              "whatsmeow heals it or reconnects within minutes",) if event.missed else ()
    return _with(acc, now, degraded=True, error_code=ErrorCode.KEEPALIVE_TIMEOUT, error_detail=detail), []


def _healed(acc: Account, now: datetime) -> tuple[Account, list[Effect]]:
    if not acc.status.degraded:
        return acc, []
    if acc.status.error_code == ErrorCode.KEEPALIVE_TIMEOUT:
        return _with(acc, now, degraded=False, error_code=None, error_detail=()), []
    return _with(acc, now, degraded=False), []
