"""The sim's groups and contacts: what `wa/sim/<phone>/group` creates and changes, kept in the sim store.

`SimGroupSpec` is the control's payload; `apply` turns it into the group's new state and the group
events a real WhatsApp would send (pure); `SimDirectory` keeps groups and the contacts the sim has seen
(senders' push names, group members) in the account's `store.db`, so they outlive an engine restart.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..model import (
    Contact,
    GroupEvent,
    GroupEventType,
    GroupInfo,
    GroupParticipant,
    GroupSummary,
    phone_list,
    to_jid,
)
from .addressing import is_lid, user_of


class SimGroup(BaseModel):
    """A group as the sim keeps it."""

    jid: str
    name: str | None = None
    description: str | None = None
    participants: list[str] = Field(default_factory=list)  # phones, the account's own included
    admins: list[str] = Field(default_factory=list)
    created: datetime

    def summary(self, me: str) -> GroupSummary:
        return GroupSummary(jid=self.jid, name=self.name, participants=len(self.participants), is_admin=me in self.admins)

    def info(self, names: dict[str, str]) -> GroupInfo:
        members = [GroupParticipant(phone=phone, jid=to_jid(phone), is_admin=phone in self.admins,
                                    is_super_admin=phone == (self.admins[0] if self.admins else None),
                                    name=names.get(phone)) for phone in self.participants]
        return GroupInfo(jid=self.jid, name=self.name, description=self.description,
                         owner=self.admins[0] if self.admins else None, created=self.created, participants=members)


class SimGroupSpec(BaseModel):
    """`wa/sim/<phone>/group`: `{"jid", "name", "participants", "admins"?, "description"?}` creates or
    updates a group the account is in; `{"jid", "add": [...]}` / `{"jid", "remove": [...]}` changes members."""

    model_config = ConfigDict(extra="forbid")

    jid: str
    name: str | None = Field(None, max_length=100)
    description: str | None = None
    participants: list[str] | None = None
    admins: list[str] | None = None
    add: list[str] | None = None
    remove: list[str] | None = None
    by: str | None = None  # who made the change (default: the group's first admin)

    @field_validator("participants", "admins", "add", "remove", mode="before")
    @classmethod
    def _phones(cls, value: object) -> object:
        return phone_list(value)

    @field_validator("jid")
    @classmethod
    def _group_jid(cls, value: str) -> str:
        if not value.endswith("@g.us") or not value.removesuffix("@g.us").replace("-", "").isdigit():
            raise ValueError("must be a group JID, digits then @g.us")
        return value

    @model_validator(mode="after")
    def _something(self) -> SimGroupSpec:
        if all(v is None for v in (self.name, self.description, self.participants, self.admins, self.add, self.remove)):
            raise ValueError("give name / participants / admins to set a group, or add / remove to change members")
        return self


def apply(old: SimGroup | None, spec: SimGroupSpec, me: str, now: datetime) -> tuple[SimGroup | None, list[GroupEvent]]:
    """The group after `spec` (None: the account left it) and the events that says, in WhatsApp's order."""
    if old is None:
        participants = list(dict.fromkeys([me, *(spec.participants or []), *(spec.add or [])]))
        group = SimGroup(jid=spec.jid, name=spec.name, description=spec.description, participants=participants,
                         admins=[a for a in spec.admins or [] if a in participants], created=now)
        return group, [_event("group_joined", group, [me], spec.by, now)]
    events: list[GroupEvent] = []
    members = list(old.participants)
    if spec.participants is not None:
        wanted = list(dict.fromkeys([*(spec.participants), *([me] if me in members else [])]))
        added = [p for p in wanted if p not in members]
        removed = [p for p in members if p not in wanted]
        members = wanted
    else:
        added = [p for p in spec.add or [] if p not in members]
        removed = [p for p in spec.remove or [] if p in members]
        members = [p for p in members if p not in removed] + added
    admins = [a for a in (spec.admins if spec.admins is not None else old.admins) if a in members]
    group = old.model_copy(update={
        "name": spec.name if spec.name is not None else old.name,
        "description": spec.description if spec.description is not None else old.description,
        "participants": members, "admins": admins})
    by = spec.by or (old.admins[0] if old.admins else None)
    if group.name != old.name:
        events.append(_event("group_subject_changed", group, [], by, now))
    if added:
        events.append(_event("group_participants_added", group, added, by, now))
    if others := [p for p in removed if p != me]:
        events.append(_event("group_participants_removed", group, others, by, now))
    if promoted := [a for a in admins if a not in old.admins]:
        events.append(_event("group_participants_promoted", group, promoted, by, now))
    if demoted := [a for a in old.admins if a not in admins and a in members]:
        events.append(_event("group_participants_demoted", group, demoted, by, now))
    if me in removed:
        events.append(_event("group_left", group, [me], by, now))
        return None, events
    return group, events


def _event(kind: GroupEventType, group: SimGroup, who: list[str], by: str | None, now: datetime) -> GroupEvent:
    return GroupEvent(type=kind, group=group.jid, name=group.name, participants=who, by=by, timestamp=now)


class SimDirectory:
    """The sim account's groups and seen contacts, in its store."""

    def __init__(self, store_path: Path) -> None:
        self._store_path = store_path

    def _db(self) -> sqlite3.Connection:
        self._store_path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._store_path)
        db.execute("CREATE TABLE IF NOT EXISTS sim_groups (jid TEXT PRIMARY KEY, data TEXT NOT NULL)")
        db.execute("CREATE TABLE IF NOT EXISTS sim_contacts (phone TEXT PRIMARY KEY, push_name TEXT)")
        return db

    def groups(self) -> dict[str, SimGroup]:
        db = self._db()
        try:
            rows = db.execute("SELECT data FROM sim_groups ORDER BY jid").fetchall()
        finally:
            db.close()
        found = (SimGroup.model_validate(json.loads(row[0])) for row in rows)
        return {group.jid: group for group in found}

    def put_group(self, jid: str, group: SimGroup | None) -> None:
        db = self._db()
        try:
            with db:
                if group is None:
                    db.execute("DELETE FROM sim_groups WHERE jid = ?", (jid,))
                else:
                    db.execute("INSERT OR REPLACE INTO sim_groups VALUES (?, ?)", (jid, group.model_dump_json()))
                    db.executemany("INSERT OR IGNORE INTO sim_contacts VALUES (?, NULL)",
                                   [(p,) for p in group.participants])
        finally:
            db.close()

    def saw(self, phone: str, push_name: str | None) -> None:
        """A sender seen (its phone, or its `…@lid` JID when the phone is unknown): its push name is
        remembered (as WhatsApp's contact store does)."""
        db = self._db()
        try:
            with db:
                db.execute("INSERT INTO sim_contacts VALUES (?, ?) ON CONFLICT(phone) DO UPDATE SET "
                           "push_name = COALESCE(excluded.push_name, push_name)", (phone, push_name))
        finally:
            db.close()

    def names(self) -> dict[str, str]:
        db = self._db()
        try:
            rows = db.execute("SELECT phone, push_name FROM sim_contacts WHERE push_name IS NOT NULL").fetchall()
        finally:
            db.close()
        return {phone: name for phone, name in rows}

    def contacts(self, me: str) -> list[Contact]:
        db = self._db()
        try:
            rows = db.execute("SELECT phone, push_name FROM sim_contacts ORDER BY phone").fetchall()
        finally:
            db.close()
        return [Contact(phone=None, lid=user_of(key), jid=key, push_name=name) if is_lid(key)  # by LID only
                else Contact(phone=key, jid=to_jid(key), push_name=name)
                for key, name in rows if key != me]
