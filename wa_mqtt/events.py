"""The domain events on the bus (bus.py): one frozen, slotted dataclass per kind of thing that happened.

Who emits what:
- the supervisors (one account): `StatusChanged`, `StatsChanged`, `MessageReceived`, `ReceiptReceived`,
  `PairingOffered`, `PairingCleared`, `AccountConnected`, `Paired`, `LinkedElsewhere`, `LoggedOut`,
  `EngineCrashed`, `SendCompleted`, `SendFailed`, `SimSent`, `GroupsChanged`, `GroupEventReceived`,
  `CallReceived`;
- the manager (all accounts): `AccountAdded`, `AccountDropped`, `AccountRemoved`, `AccountsChanged`,
  `StoreRestored`, `LinkedOtherNumber`;
- the app: `ConfigReloaded`, `ConfigInvalid`, `DiskFullChanged` (from `DiskFullWatch`), and from the
  MQTT link `LinkConnected`, `MqttMessageReceived`;
- features: `MessagePublished`, `BridgeEventPublished` (state publisher), `AutoReplySent` /
  `AutoReplyDelivered` / `AutoReplyFailed` / `AiReplyFailed` (auto-reply), `AlertRaised` / `AlertCleared`
  (alerts), `LogLevelChanged` (request server), `LocalRequest` (web page).

`reply` on sends is the opaque reference the MQTT side gave with the send (where to answer, or which
auto-reply rule it was): the accounts layer stores it in the outbox and hands it back unread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from .model import AccountState, GroupEvent, GroupSummary, IncomingCall, IncomingMessage, Receipt, Status

if TYPE_CHECKING:
    from .config import Config
    from .mqtt.link import Incoming

Reply = Mapping[str, object]
"""Where the answer to a send goes: opaque JSON, read only by the part that made it."""


# -- one account (supervisor) ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StatusChanged:
    """The account's status changed (or its heartbeat refreshed `updated_at`)."""

    status: Status


@dataclass(frozen=True, slots=True)
class StatsChanged:
    """A message came in or went out: the account's counters changed."""

    phone: str


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """A message arrived from WhatsApp (possibly one delivered before: dedup is the publisher's)."""

    phone: str
    message: IncomingMessage


@dataclass(frozen=True, slots=True)
class ReceiptReceived:
    phone: str
    receipt: Receipt


@dataclass(frozen=True, slots=True)
class PairingOffered:
    """A QR (`kind="qr"`) or a pair code (`kind="code"`) is on offer."""

    phone: str
    kind: str
    code: str


@dataclass(frozen=True, slots=True)
class PairingCleared:
    phone: str


@dataclass(frozen=True, slots=True)
class AccountConnected:
    """The account reached `connected` (its name and time are in its status)."""

    phone: str


@dataclass(frozen=True, slots=True)
class Paired:
    """A device was linked; `linked_phone` is the number that scanned (None when unknown)."""

    phone: str
    linked_phone: str | None
    name: str | None


@dataclass(frozen=True, slots=True)
class LinkedElsewhere:
    """The QR offered for `asked` was scanned by another number, `linked`."""

    asked: str
    linked: str


@dataclass(frozen=True, slots=True)
class LoggedOut:
    phone: str
    reason: str


@dataclass(frozen=True, slots=True)
class EngineCrashed:
    phone: str
    error: str


@dataclass(frozen=True, slots=True)
class SendCompleted:
    """A send that had waited in the outbox reached WhatsApp as `id`."""

    phone: str
    reply: Reply
    id: str


@dataclass(frozen=True, slots=True)
class SendFailed:
    """A send that had waited in the outbox was given up: refused by the engine, or expired."""

    phone: str
    reply: Reply
    code: str
    error: str


@dataclass(frozen=True, slots=True)
class SimSent:
    """Sim only: the sim engine handed something to its simulated WhatsApp."""

    phone: str
    payload: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class GroupsChanged:
    """The account's joined groups (the whole list), on connect and after a change."""

    phone: str
    groups: tuple[GroupSummary, ...]


@dataclass(frozen=True, slots=True)
class GroupEventReceived:
    """A group the account is in changed, or the account joined / left one."""

    phone: str
    event: GroupEvent


@dataclass(frozen=True, slots=True)
class CallReceived:
    """A call is ringing on the account."""

    phone: str
    call: IncomingCall


# -- all accounts (manager) -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AccountAdded:
    """A new account (through `pair`, the config's `accounts`, or a folder copied into sessions/)."""

    phone: str
    state: AccountState


@dataclass(frozen=True, slots=True)
class AccountDropped:
    """The account's supervisor is gone (removed, or moved to another number): its retained topics go."""

    phone: str


@dataclass(frozen=True, slots=True)
class AccountRemoved:
    """The account was forgotten (reported to clients once its folder and queue are gone)."""

    phone: str


@dataclass(frozen=True, slots=True)
class AccountsChanged:
    """The set of accounts changed."""


@dataclass(frozen=True, slots=True)
class StoreRestored:
    phone: str
    backup: str
    reason: str


@dataclass(frozen=True, slots=True)
class LinkedOtherNumber:
    """The session linked by another number is kept under `phone` (`moved`) or left under `asked`."""

    asked: str
    phone: str
    moved: bool


# -- the app and the MQTT link --------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ConfigReloaded:
    """config.yaml was re-read: `config` is in force (restart-only keys as before)."""

    config: Config
    changed: list[str]
    restart_required: list[str]


@dataclass(frozen=True, slots=True)
class ConfigInvalid:
    """config.yaml could not be used; the running config stays."""

    error: str


@dataclass(frozen=True, slots=True)
class DiskFullChanged:
    """The data disk filled up (`error`: the status text every account shows) or has space again (None)."""

    error: str | None


@dataclass(frozen=True, slots=True)
class LinkConnected:
    """The MQTT link (re)connected; its retained topics are republished right after."""


@dataclass(frozen=True, slots=True)
class MqttMessageReceived:
    """A message from the broker. Messages are handled in arrival order: work that must be done before
    the next message is looked at (a sim control) is given to `hold`, and the link awaits it."""

    message: Incoming
    holds: list[Awaitable[None]] = field(default_factory=list)

    def hold(self, work: Awaitable[None]) -> None:
        self.holds.append(work)


# -- features ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MessagePublished:
    """A new (not duplicate) incoming message was handed to MQTT."""

    phone: str
    message: IncomingMessage


@dataclass(frozen=True, slots=True)
class BridgeEventPublished:
    """`bridge/event` went out with this `type` and `data` (what other front ends show as recent events)."""

    type: str
    data: Mapping[str, object]


@dataclass(frozen=True, slots=True)
class LocalRequest:
    """A request from a front end other than MQTT (the web page): the request server serves it as it
    serves `<base>/<target>/request/<command>` with this payload (same queue, table, validation and
    errors) and hands the response body to `answer` instead of publishing it. A send that has to wait in
    the outbox stores `reply`; its later outcome is `SendCompleted` / `SendFailed` with that reference."""

    target: str
    command: str
    payload: bytes
    answer: Callable[[dict[str, object]], None]
    reply: Reply


@dataclass(frozen=True, slots=True)
class AutoReplySent:
    """An auto-reply was sent now (`id`) or queued."""

    phone: str
    rule: str
    chat: str
    id: str | None
    queued: bool


@dataclass(frozen=True, slots=True)
class AutoReplyDelivered:
    """A queued auto-reply reached WhatsApp later."""

    phone: str
    rule: str
    id: str


@dataclass(frozen=True, slots=True)
class AutoReplyFailed:
    """A queued auto-reply was given up."""

    phone: str
    rule: str
    code: str
    error: str


@dataclass(frozen=True, slots=True)
class AiReplyFailed:
    """An AI auto-reply got no answer (timeout, HTTP error, malformed answer); `fallback`: its text was sent."""

    phone: str
    rule: str
    chat: str
    provider: str
    error: str
    fallback: bool
# -- health monitoring (features/alerts.py) --------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AlertRaised:
    """An account needs a person (one per episode): it entered `state` at `since`, or has stayed
    `disconnected` since `since` longer than `alerts.after`."""

    phone: str
    state: AccountState
    error_code: str | None
    since: datetime


@dataclass(frozen=True, slots=True)
class AlertCleared:
    """The account an alert was raised for is `connected` again; `since`: when its problem began."""

    phone: str
    since: datetime


@dataclass(frozen=True, slots=True)
class LogLevelChanged:
    """`bridge/request/log_level` changed the bridge's log level (until the next start)."""

    level: str


Event = (
    StatusChanged | StatsChanged | MessageReceived | ReceiptReceived | PairingOffered | PairingCleared
    | AccountConnected | Paired | LinkedElsewhere | LoggedOut | EngineCrashed | SendCompleted | SendFailed
    | SimSent | AccountAdded | AccountDropped | AccountRemoved | AccountsChanged | StoreRestored
    | LinkedOtherNumber | ConfigReloaded | ConfigInvalid | DiskFullChanged | LinkConnected | MqttMessageReceived
    | MessagePublished | AutoReplySent | AutoReplyDelivered | AutoReplyFailed | AiReplyFailed
    | GroupsChanged | GroupEventReceived | CallReceived
    | AlertRaised | AlertCleared | LogLevelChanged | BridgeEventPublished | LocalRequest
)
