"""Pure translation of neonize's groups, contacts and calls into the project's types (issue 15).

`GroupInfo` protobufs (from `get_joined_groups` / `get_group_info` / `JoinedGroupEv`) → `GroupSummary`
and `GroupInfo`; `GroupInfoEv` → group events; the contact store's `Contact` → `Contact`; `CallOfferEv`
and `CallOfferNoticeEv` → `IncomingCall`. No I/O, no neonize import (see neonize_convert).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING

from ..model import (
    Contact,
    GroupEvent,
    GroupEventType,
    GroupInfo,
    GroupParticipant,
    GroupSummary,
    IncomingCall,
)
from .neonize_convert import LID_SERVER, PN_SERVER, epoch_to_datetime, jid_str

if TYPE_CHECKING:
    from google.protobuf.message import Message as Proto


def _user(jid: Proto, server: str) -> str | None:
    return (jid.User.split(":", 1)[0] or None) if jid.User and jid.Server == server else None


def person(jid: Proto, alt: Proto | None = None, lids: Mapping[str, str] | None = None) -> str:
    """A member or caller as the contract names people: the phone when known (the JID, the alt address
    WhatsApp sent along, or the account's LID map `lids`), else the `…@lid` JID: LID digits are never
    published as if they were a phone (issue 14), and the JID is a valid `to` that reaches that person."""
    for candidate in (jid, alt):
        if candidate is not None and (phone := _user(candidate, PN_SERVER)):
            return phone
    user = str(jid.User.split(":", 1)[0])
    if jid.Server == LID_SERVER:
        return (lids or {}).get(user) or f"{user}@{LID_SERVER}"
    return user


def participant(item: Proto) -> GroupParticipant:
    phone = _user(item.PhoneNumber, PN_SERVER) or _user(item.JID, PN_SERVER)
    lid = _user(item.LID, LID_SERVER) or _user(item.JID, LID_SERVER)
    return GroupParticipant(phone=phone, lid=lid, jid=jid_str(item.JID), is_admin=bool(item.IsAdmin or item.IsSuperAdmin),
                            is_super_admin=bool(item.IsSuperAdmin), name=item.DisplayName or None)


def is_member(item: GroupParticipant, me: Iterable[str]) -> bool:
    mine = set(me)
    return bool({item.phone, item.lid} & mine)


def group_summary(info: Proto, me: Iterable[str]) -> GroupSummary:
    """A joined group's line in `groups`; `me`: the account's phone and LID user."""
    members = [participant(p) for p in info.Participants]
    mine = list(me)
    return GroupSummary(jid=jid_str(info.JID), name=info.GroupName.Name or None, participants=len(members),
                        is_admin=any(m.is_admin for m in members if is_member(m, mine)))


def group_info(info: Proto, lids: Mapping[str, str] | None = None) -> GroupInfo:
    created = epoch_to_datetime(info.GroupCreated) if info.GroupCreated else None
    owner = person(info.OwnerJID, info.OwnerPN, lids) if info.OwnerJID.User else None
    return GroupInfo(jid=jid_str(info.JID), name=info.GroupName.Name or None,
                     description=info.GroupTopic.Topic or None, owner=owner, created=created,
                     participants=[participant(p) for p in info.Participants])


def group_events(event: Proto, me: Iterable[str], name: str | None,
                 lids: Mapping[str, str] | None = None) -> list[GroupEvent]:
    """A `GroupInfoEv` (whatsmeow's events.GroupInfo) as group events; `name`: the subject known so far;
    `me`: the account's own user parts (phone, LID); `lids`: the account's LID map (LID user → phone)."""
    mine = set(me)
    group = jid_str(event.JID)
    when = epoch_to_datetime(event.Timestamp)
    by = person(event.Sender, None, lids) if event.Sender.User else None
    subject = event.Name.Name if event.HasField("Name") and event.Name.Name else name
    out: list[GroupEvent] = []

    def add(kind: GroupEventType, who: list[str]) -> None:
        out.append(GroupEvent(type=kind, group=group, name=subject, participants=who, by=by, timestamp=when))

    if event.HasField("Name") and event.Name.Name:
        add("group_subject_changed", [])
    for field, kind, own in (("Join", "group_participants_added", "group_joined"),
                             ("Leave", "group_participants_removed", "group_left"),
                             ("Promote", "group_participants_promoted", None),
                             ("Demote", "group_participants_demoted", None)):
        members = list(getattr(event, field))
        others = [person(j, None, lids) for j in members if j.User.split(":", 1)[0] not in mine]
        if others:
            add(kind, others)  # type: ignore[arg-type]  # (the tuple's literals are GroupEventType's)
        if own is not None and len(others) < len(members):
            add(own, [person(j, None, lids) for j in members  # type: ignore[arg-type]  # (as above)
                      if j.User.split(":", 1)[0] in mine])
    return out


def joined_event(event: Proto, now: datetime, lids: Mapping[str, str] | None = None) -> GroupEvent:
    """A `JoinedGroupEv`: the account was added to (or created) a group."""
    info = event.GroupInfo
    by = person(event.Sender, event.SenderPN, lids) if event.Sender.User else None
    return GroupEvent(type="group_joined", group=jid_str(info.JID), name=info.GroupName.Name or None,
                      participants=[], by=by, timestamp=now)


def contact(item: Proto) -> Contact:
    """An entry of the contact store (`get_all_contacts`)."""
    info = item.Info
    return Contact(phone=_user(item.JID, PN_SERVER), lid=_user(item.JID, LID_SERVER), jid=jid_str(item.JID),
                   push_name=info.PushName or None, saved_name=info.FullName or info.FirstName or None,
                   business_name=info.BusinessName or None)


def full_jid(jid: Proto) -> str:
    """A JID with its device, as WhatsApp delivered it (`5511…:12@s.whatsapp.net`): a call is rejected to it."""
    device = f":{jid.Device}" if jid.Device else ""
    return f"{jid.User}{device}@{jid.Server}"


def _attrs(node: Proto) -> dict[str, str]:
    """A node's attributes as text (`NodeAttrs`: a name and one of boolean, integer, text, jid)."""
    found: dict[str, str] = {}
    for attr in node.Attrs:
        which = attr.WhichOneof("Value")
        value = getattr(attr, which) if which else ""
        found[attr.name] = jid_str(value) if which == "jid" else str(value)
    return found


def _is_video(node: Proto) -> bool:
    return any(child.Tag == "video" or _is_video(child) for child in node.Nodes)


def call_from_event(event: Proto, lids: Mapping[str, str] | None = None) -> IncomingCall:
    """A `CallOfferEv` (1:1 call) or `CallOfferNoticeEv` (mostly group calls) as the contract's call."""
    meta = event.basicCallMeta
    caller = meta.callCreator if meta.callCreator.User else getattr(meta, "from")
    alt = meta.callCreatorAlt if meta.HasField("callCreatorAlt") else None
    notice = "media" in event.DESCRIPTOR.fields_by_name
    video = event.media == "video" if notice else _is_video(event.data)
    group_jid = _attrs(event.data).get("group-jid") if event.HasField("data") else None
    if group_jid is None and notice and getattr(meta, "from").Server == "g.us":
        group_jid = jid_str(getattr(meta, "from"))
    return IncomingCall(id=meta.callID, from_=person(caller, alt, lids), from_jid=full_jid(getattr(meta, "from")),
                        video=video, group=group_jid or None, timestamp=epoch_to_datetime(meta.timestamp))
