"""Builders of real neonize protobuf events for the engine tests (proto2 required fields filled in)."""

from __future__ import annotations

import secrets
import sqlite3
from pathlib import Path
from typing import Any

from neonize.proto import Neonize_pb2 as N
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as E

TS_MS = 1_795_000_000_000  # 2026-11-17T...Z in milliseconds, as neonize sends Info.Timestamp


def jid(user: str, server: str = "s.whatsapp.net", device: int = 0) -> N.JID:
    return N.JID(User=user, Server=server, Device=device, RawAgent=0, Integrator=0, IsEmpty=not user)


def source(chat: N.JID, sender: N.JID, *, from_me: bool = False,
           sender_alt: N.JID | None = None, recipient_alt: N.JID | None = None) -> N.MessageSource:
    empty = jid("", "")
    return N.MessageSource(
        Chat=chat, Sender=sender, IsFromMe=from_me, IsGroup=chat.Server == "g.us",
        SenderAlt=sender_alt or empty, RecipientAlt=recipient_alt or empty, BroadcastListOwner=empty,
    )


def message_event(content: E.Message | None, *, msg_id: str = "3EB0AAAA", chat: N.JID | None = None,
                  sender: N.JID | None = None, pushname: str = "Ana", from_me: bool = False,
                  timestamp: int = TS_MS, is_edit: bool = False, **source_kw: Any) -> N.Message:
    sender = sender or jid("5511999999999", device=3)
    chat = chat or jid("5511999999999")
    info = N.MessageInfo(
        MessageSource=source(chat, sender, from_me=from_me, **source_kw), ID=msg_id, ServerID=0, Type="text",
        Pushname=pushname, Timestamp=timestamp, Category="", Multicast=False, MediaType="", Edit="",
    )
    event = N.Message(
        Info=info, IsEphemeral=False, IsViewOnce=False, IsViewOnceV2=False, IsViewOnceV2Extension=False,
        IsDocumentWithCaption=False, IsLottieSticker=False, IsEdit=is_edit, UnavailableRequestID="",
        RetryCount=0,
    )
    if content is not None:
        event.Message.CopyFrom(content)
    return event


def receipt_event(kind: int, ids: list[str], *, chat: N.JID | None = None, sender: N.JID | None = None,
                  timestamp: int = 1_795_000_000) -> N.Receipt:
    chat = chat or jid("5511999999999")
    return N.Receipt(MessageSource=source(chat, sender or chat), MessageIDs=ids, Timestamp=timestamp, Type=kind)


def write_synthetic_device(db_path: Path, phone: str, push_name: str = "Ana") -> str:
    """Insert a linked-device row (random keys) into a store whose tables exist; returns its JID."""
    device_jid = f"{phone}:7@s.whatsapp.net"
    r = secrets.token_bytes
    with sqlite3.connect(db_path) as db:
        db.execute(
            "INSERT INTO whatsmeow_device (jid, lid, registration_id, noise_key, identity_key, signed_pre_key,"
            " signed_pre_key_id, signed_pre_key_sig, adv_key, adv_details, adv_account_sig,"
            " adv_account_sig_key, adv_device_sig, platform, business_name, push_name)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (device_jid, f"1{phone}:7@lid", 1234, r(32), r(32), r(32), 1, r(64), r(32), b"", r(64), r(32),
             r(64), "", "", push_name),
        )
    return device_jid


# -- groups, contacts, calls (issue 15) ---------------------------------------------------------------
def group_name(name: str) -> N.GroupName:
    return N.GroupName(Name=name, NameSetAt=0, NameSetBy=jid("", ""))


def group_info_event(group: N.JID, *, sender: N.JID | None = None, name: str | None = None,
                     join: list[N.JID] | None = None, leave: list[N.JID] | None = None,
                     promote: list[N.JID] | None = None, demote: list[N.JID] | None = None,
                     timestamp: int = 1_795_000_000) -> N.GroupInfoEvent:
    """whatsmeow's events.GroupInfo as neonize delivers it (`GroupInfoEv`)."""
    event = N.GroupInfoEvent(JID=group, Notify="", Timestamp=timestamp, PrevParticipantsVersionID="",
                             ParticipantVersionID="", JoinReason="", Sender=sender or jid("", ""),
                             Join=join or [], Leave=leave or [], Promote=promote or [], Demote=demote or [])
    if name is not None:
        event.Name.CopyFrom(group_name(name))
    return event


def participant(user: N.JID, *, phone: N.JID | None = None, lid: N.JID | None = None, admin: bool = False,
                super_admin: bool = False, name: str = "") -> N.GroupParticipant:
    return N.GroupParticipant(JID=user, LID=lid or jid("", ""), PhoneNumber=phone or jid("", ""), IsAdmin=admin,
                              IsSuperAdmin=super_admin, DisplayName=name, Error=0)


def group_info(group: N.JID, name: str, participants: list[N.GroupParticipant], *, topic: str = "",
               owner: N.JID | None = None, created: int = 1_700_000_000) -> N.GroupInfo:
    """A GroupInfo as `get_joined_groups` / `get_group_info` return it (only the fields read are set)."""
    info = N.GroupInfo(JID=group, OwnerJID=owner or jid("", ""), OwnerPN=jid("", ""), GroupCreated=created,
                       ParticipantVersionID="", Participants=participants)
    info.GroupName.CopyFrom(group_name(name))
    info.GroupTopic.Topic = topic
    return info


def call_offer(caller: N.JID, call_id: str = "CALLID1", *, video: bool = False,
               creator_alt: N.JID | None = None, timestamp: int = 1_795_000_000) -> N.CallOffer:
    """A 1:1 call offer (`CallOfferEv`); whatsmeow puts a `<video>` child in the offer node of a video call."""
    data = N.Node(Tag="offer", Nodes=[N.Node(Tag="video")] if video else [N.Node(Tag="audio")])
    meta = N.BasicCallMeta(timestamp=timestamp, callCreator=caller, callCreatorAlt=creator_alt or jid("", ""),
                           callID=call_id)
    getattr(meta, "from").CopyFrom(caller)
    return N.CallOffer(basicCallMeta=meta, callRemoteMeta=N.CallRemoteMeta(remotePlatform="android",
                                                                          remoteVersion="2.24"), data=data)


def contact(user: N.JID, *, push: str = "", full: str = "", first: str = "") -> N.Contact:
    return N.Contact(JID=user, Info=N.ContactInfo(Found=True, FirstName=first, FullName=full, PushName=push,
                                                  BusinessName="", RedactedPhone=""))


async def everyone_on_whatsapp(*numbers: str) -> list[N.IsOnWhatsAppResponse]:
    """Stands in for a client's `is_on_whatsapp` (the network part of the lookup before a first send):
    every number has an account under its own digits."""
    return [N.IsOnWhatsAppResponse(Query=f"{n}@c.us", JID=jid(n.lstrip("+")), IsIn=True) for n in numbers]


class Sends(list[tuple[N.JID, E.Message]]):
    """Stands in for a client's `send_message` (the network part of a send): keeps each (to, message)
    and answers as Go does, with the id given or OUT1, OUT2, ..."""

    def __init__(self, msg_id: str | None = None) -> None:
        super().__init__()
        self._id = msg_id

    async def __call__(self, to: N.JID, message: E.Message) -> N.SendResponse:
        self.append((to, message))
        return N.SendResponse(ID=self._id or f"OUT{len(self)}", Timestamp=1_795_000_000, ServerID=0,
                              DebugTimings=N.MessageDebugTimings())
