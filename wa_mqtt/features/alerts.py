"""Alerts: tell a person when an account needs one, once per episode, and once more when it is back.

An episode begins when an account enters `logged_out`, `conflict`, `banned` or `error`, or stays
`disconnected` (retries in `connecting` included) longer than `alerts.after` seconds; it ends when the
account is `connected` again, or when it is stopped or logged out on request (the `logout` request,
or the web page's button) or removed (a person acted: nothing to tell). For each episode:
`bridge/event` `alert` (`phone`, `state`, `error_code`, `since`), the retained `<base>/<phone>/problem`
turns on (Home Assistant's `problem` binary sensor), and each `alerts.to` gets one WhatsApp message
from a healthy account (`alerts.via`, or `any` connected one but the account in trouble) naming the
account, the state, the error and what to do. When it ends by reconnecting: `bridge/event`
`recovered` and, if the alert message went out, one "recovered" message.

A message waits (in memory) until a healthy account can send it; an alert still waiting when its
account recovers is dropped, and no "recovered" message follows it. Sends go through the send
service: the same policy (`outgoing.allow_to`), the outbox, the sender's turn.

The open episodes are kept in `<data_dir>/alerts.json` (rewritten whole, atomically, when one begins,
is told or ends), so a restart resumes them: an account still in trouble is not alerted again, and its
"recovered" message still comes. The rules and texts are `alerting.py`'s (pure).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from .. import events as ev
from ..accounts.machine import logged_out_on_request
from ..accounts.manager import AccountManager
from ..alerting import (
    ALERTING,
    ENDS_QUIETLY,
    Problem,
    alert_text,
    episodes_from_json,
    episodes_json,
    problem_of,
    recovered_text,
)
from ..bus import EventBus
from ..config import Config
from ..health_config import ANY
from ..model import AccountState, OutgoingMessage, Status, utc_iso
from ..mqtt.api import encode
from ..mqtt.link import MqttLink
from ..mqtt.topics import Topics
from ..sending import SEND_REFUSALS, SendService
from ..tasks import BackgroundTasks

log = logging.getLogger(__name__)
OWNER = "alerts"
DRAIN_TIMEOUT = 5.0  # seconds a stop waits for alert messages being sent
S = AccountState


@dataclass
class _Account:
    """What the alerts remember of one account."""

    down_since: datetime | None = None  # since when it is not connected (this outage), if it was
    timer: asyncio.TimerHandle | None = None  # `after` runs out
    problem: Problem | None = None  # the episode's alert; None: no episode
    alert: _Notice | None = None  # its message, while it waits for a sender
    told: bool = False  # its message went out: a "recovered" one is owed


@dataclass
class _Notice:
    """A message waiting for a healthy account to send it."""

    subject: str
    kind: str  # "alert" or "recovered"
    text: str
    key: str  # the send's idempotency key: the episode's start, to the microsecond
    done: bool = field(default=False)


class Alerts:
    """See the module docstring."""

    def __init__(self, bus: EventBus, config: Config, topics: Topics, link: MqttLink, manager: AccountManager,
                 sending: SendService, clock: Callable[[], datetime]) -> None:
        self._bus = bus
        self._config = config
        self._topics = topics
        self._link = link
        self._manager = manager
        self._sending = sending
        self._clock = clock
        self._accounts: dict[str, _Account] = {}
        self._waiting: list[_Notice] = []
        self._tasks = BackgroundTasks(log)  # messages being sent
        self._path = config.data_dir / "alerts.json"

    def start(self) -> None:
        for phone, (problem, told) in self._load().items():  # episodes open at the last stop go on
            self._accounts[phone] = _Account(problem=problem, told=told)
            self._publish_problem(phone, problem)
            log.info("alert for %s still open from before the restart (%s since %s)", phone, problem.state.value,
                     utc_iso(problem.since))
        on = self._bus.subscribe
        on(ev.StatusChanged, self._on_status, OWNER)
        on(ev.AccountDropped, self._on_dropped, OWNER)
        on(ev.ConfigReloaded, self._on_config, OWNER)

    async def drain(self) -> None:
        """Start no more messages (the accounts are about to stop); finish those being sent."""
        self._bus.unsubscribe(OWNER)
        for account in self._accounts.values():
            if account.timer is not None:
                account.timer.cancel()
        await self._tasks.finish(DRAIN_TIMEOUT)

    async def stop(self) -> None:
        self._bus.unsubscribe(OWNER)

    def _on_config(self, event: ev.ConfigReloaded) -> None:
        self._config = event.config

    # -- episodes -----------------------------------------------------------------------------------
    def _on_status(self, event: ev.StatusChanged) -> None:
        status = event.status
        if self._manager.find(status.phone) is None:
            return  # a removed account's last word
        account = self._accounts.get(status.phone)
        if account is None:
            account = self._accounts[status.phone] = _Account()
            self._publish_problem(status.phone, None)
        state, now = status.state, self._clock()
        if state == S.CONNECTED:
            self._clear_timer(account)
            account.down_since = None
            self._end(status.phone, account, recovered=True)
            self._flush()
            return
        if state in ENDS_QUIETLY or logged_out_on_request(status):  # a person acted: nothing to tell
            self._clear_timer(account)
            account.down_since = None
            self._end(status.phone, account, recovered=False)
            return
        if state == S.DISCONNECTED and account.down_since is None:
            account.down_since = status.since
            delay = max(0.0, self._config.alerts.after - (now - status.since).total_seconds())
            account.timer = asyncio.get_running_loop().call_later(delay, self._due, status.phone)
        if account.problem is None:
            problem = problem_of(status, account.down_since, now, self._config.alerts.after)
            if problem is not None:
                self._raise(account, problem)
        elif account.problem.state != state and state in ALERTING:
            self._publish_problem(status.phone, account.problem, status)

    def _due(self, phone: str) -> None:
        """`alerts.after` ran out on an account that was not connected since."""
        account = self._accounts.get(phone)
        supervisor = self._manager.find(phone)
        if account is None or supervisor is None:
            return
        account.timer = None
        if account.problem is None:
            problem = problem_of(supervisor.status, account.down_since, self._clock(), self._config.alerts.after)
            if problem is not None:
                self._raise(account, problem)

    def _raise(self, account: _Account, problem: Problem) -> None:
        account.problem, account.told = problem, False
        self._save()
        log.warning("alert: %s is %s since %s (%s)", problem.phone, problem.state.value, utc_iso(problem.since),
                    problem.error_code or "no error code")
        self._publish_problem(problem.phone, problem)
        self._bus.emit(ev.AlertRaised(problem.phone, problem.state, problem.error_code, problem.since))
        if self._config.alerts.to:
            account.alert = _Notice(problem.phone, "alert", alert_text(problem),
                                    f"alert:{problem.phone}:{problem.since.isoformat()}")
            self._waiting.append(account.alert)
            self._flush()

    def _end(self, phone: str, account: _Account, recovered: bool) -> None:
        problem = account.problem
        if problem is None:
            return
        waiting = account.alert is not None and not account.alert.done
        if waiting and account.alert is not None:
            self._waiting.remove(account.alert)  # never told: nothing to take back either
        account.problem, account.alert = None, None
        self._save()
        self._publish_problem(phone, None)
        if not recovered:
            log.info("alert for %s over: stopped on request", phone)
            return
        log.info("recovered: %s is connected again (it was %s since %s)", phone, problem.state.value,
                 utc_iso(problem.since))
        self._bus.emit(ev.AlertCleared(phone, problem.since))
        if account.told and self._config.alerts.to:
            self._waiting.append(_Notice(phone, "recovered", recovered_text(problem, self._clock()),
                                         f"recovered:{phone}:{problem.since.isoformat()}"))
        account.told = False

    def _clear_timer(self, account: _Account) -> None:
        if account.timer is not None:
            account.timer.cancel()
            account.timer = None

    def _on_dropped(self, event: ev.AccountDropped) -> None:
        account = self._accounts.pop(event.phone, None)
        if account is not None:
            self._clear_timer(account)
            self._save()
        self._waiting = [n for n in self._waiting if n.subject != event.phone]
        self._link.set_retained(self._topics.problem(event.phone), b"")

    def _publish_problem(self, phone: str, problem: Problem | None, status: Status | None = None) -> None:
        payload: dict[str, object] = {"problem": problem is not None, "state": None, "error_code": None,
                                      "since": None}
        if problem is not None:
            payload.update(state=(status.state if status is not None else problem.state).value,
                           error_code=status.error_code if status is not None else problem.error_code,
                           since=utc_iso(problem.since))
        self._link.set_retained(self._topics.problem(phone), encode(payload))

    # -- messages -----------------------------------------------------------------------------------
    def _sender(self, subject: str) -> str | None:
        """A healthy account to send a message about `subject`: `alerts.via` when it is connected, or
        with `any` the first connected account but `subject`; None when there is none now."""
        via = self._config.alerts.via
        candidates = self._manager.phones() if via == ANY else [via]
        for phone in candidates:
            supervisor = self._manager.find(phone)
            if phone != subject and supervisor is not None and supervisor.state == S.CONNECTED:
                return phone
        return None

    def _flush(self) -> None:
        """Hand every waiting message to a healthy sender, if there is one."""
        for notice in list(self._waiting):
            sender = self._sender(notice.subject)
            if sender is None:
                log.debug("alerts: no healthy account to send the %s about %s yet; it waits", notice.kind,
                          notice.subject)
                continue
            self._waiting.remove(notice)
            notice.done = True
            account = self._accounts.get(notice.subject)
            if notice.kind == "alert" and account is not None:
                account.told = True
                self._save()
            for index, recipient in enumerate(self._config.alerts.to):  # the index: a JID could pass the id's limit
                message = OutgoingMessage(to=recipient, text=notice.text, id=f"{notice.key}:{index}")
                self._tasks.spawn(self._send(sender, notice, message), f"alert-{notice.subject}")

    async def _send(self, sender: str, notice: _Notice, message: OutgoingMessage) -> None:
        try:
            outcome = await self._sending.send_in_turn(sender, message, {"alert": notice.subject})
        except SEND_REFUSALS as exc:
            log.warning("alerts: the %s about %s to %s was not sent from %s: %s", notice.kind, notice.subject,
                        message.to, sender, exc)
            return
        how = "already sent" if outcome.duplicate else "queued" if outcome.queued else "sent"
        log.info("alerts: %s about %s %s to %s from %s", notice.kind, notice.subject, how, message.to, sender)

    # -- the episodes on disk -----------------------------------------------------------------------
    def _load(self) -> dict[str, tuple[Problem, bool]]:
        try:
            return episodes_from_json(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("alerts: %s unreadable (%s); open alerts start afresh", self._path, exc)
            return {}

    def _save(self) -> None:
        """Write the open episodes (of accounts that still exist) atomically; a failure is logged only:
        the alerts go on in memory."""
        problems = {phone: (a.problem, a.told) for phone, a in self._accounts.items()
                    if a.problem is not None and self._manager.find(phone) is not None}
        temporary = self._path.with_name(self._path.name + ".tmp")
        try:
            temporary.write_text(episodes_json(problems), encoding="utf-8")
            os.chmod(temporary, 0o600)
            temporary.replace(self._path)
        except OSError as exc:
            log.warning("alerts: cannot write %s (%s); open alerts are kept in memory only", self._path,
                        exc.strerror or exc)
