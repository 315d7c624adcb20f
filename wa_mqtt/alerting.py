"""Which account states need a person, and what to tell them (pure): the rules `features/alerts.py`
runs. An alert is for an account in `logged_out`, `conflict`, `banned` or `error`, or one not
connected (retries included) for `alerts.after` seconds that was connected once; its message names
the account, the state, the error and what to do. The open episodes are stored as JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .model import AccountState, Status, utc_iso

S = AccountState
ALERTING = frozenset({S.LOGGED_OUT, S.CONFLICT, S.BANNED, S.ERROR})
"""States that need a person at once."""
ENDS_QUIETLY = frozenset({S.STOPPED})
"""Stopped on request (or by the bridge's own stop): a person acted, nobody is told."""

ADVICE: dict[AccountState, str] = {
    S.LOGGED_OUT: ("the device was unlinked: send connect (Home Assistant: the account's Connect button) and "
                   "scan the QR with WhatsApp on the phone (Linked devices)"),
    S.CONFLICT: ("the session was opened by another client: stop that client, then send connect to take "
                 "the session back"),
    S.BANNED: "WhatsApp banned the number for a while: the bridge retries by itself when the ban ends",
    S.ERROR: "the bridge cannot go on by itself: read the error, fix its cause, then send connect",
    S.DISCONNECTED: ("the bridge keeps retrying: check the network, the proxy and that the phone has "
                     "WhatsApp working"),
}


@dataclass(frozen=True, slots=True)
class Problem:
    """What an alert says: the account, its state and error when the episode began, and since when."""

    phone: str
    name: str | None
    state: AccountState
    error_code: str | None
    error: str | None
    since: datetime


def _who(problem: Problem) -> str:
    return f"+{problem.phone}" + (f" ({problem.name})" if problem.name else "")


def alert_text(problem: Problem) -> str:
    """The WhatsApp message of an alert: the account, the state, the error, what to do."""
    who = _who(problem)
    lines = [f"WhatsApp bridge: account {who} needs attention: it is {problem.state.value} "
             f"since {utc_iso(problem.since)}."]
    if problem.error:
        lines.append(f"Error ({problem.error_code}): {problem.error}")
    lines.append(f"What to do: {ADVICE.get(problem.state, ADVICE[S.ERROR])}.")
    return "\n".join(lines)


def recovered_text(problem: Problem, now: datetime) -> str:
    """The WhatsApp message when the account is back."""
    who = _who(problem)
    return (f"WhatsApp bridge: account {who} has recovered: connected again at {utc_iso(now)} "
            f"(it was {problem.state.value} since {utc_iso(problem.since)}).")


def problem_of(status: Status, down_since: datetime | None, now: datetime, after: float) -> Problem | None:
    """The problem an account shows now, if it is one an alert is for (pure): an alerting state, or
    not connected since `down_since` for `after` seconds or more (only an account that was connected
    once: a first pairing left unfinished is nobody's emergency)."""
    error = status.error
    if status.state in ALERTING:
        return Problem(status.phone, status.name, status.state, status.error_code, error, status.since)
    if (down_since is not None and status.last_connected is not None and status.state in (S.DISCONNECTED, S.CONNECTING)
            and (now - down_since).total_seconds() >= after):
        return Problem(status.phone, status.name, S.DISCONNECTED, status.error_code, error, down_since)
    return None


def episodes_json(problems: dict[str, tuple[Problem, bool]]) -> str:
    """The open episodes as stored: phone -> the problem and whether its alert went out (pure)."""
    return json.dumps({phone: {"name": p.name, "state": p.state.value, "error_code": p.error_code, "error": p.error,
                               "since": p.since.isoformat(), "told": told}
                       for phone, (p, told) in sorted(problems.items())}, indent=1)


def episodes_from_json(text: str) -> dict[str, tuple[Problem, bool]]:
    """`episodes_json` read back; entries that do not fit are skipped (pure)."""
    episodes: dict[str, tuple[Problem, bool]] = {}
    data: Any = json.loads(text)
    for phone, item in (data.items() if isinstance(data, dict) else ()):
        try:
            problem = Problem(phone, item.get("name"), AccountState(item["state"]), item.get("error_code"),
                              item.get("error"), datetime.fromisoformat(item["since"]))
        except (KeyError, ValueError, TypeError, AttributeError):
            continue
        episodes[phone] = (problem, bool(item.get("told")))
    return episodes
