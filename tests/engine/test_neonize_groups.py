"""neonize's groups, contacts and calls, from real protobufs: the pure translation (neonize_groups) and the
session's handlers, requests and sends (mentions, edit, revoke, reject) on an offline restored client."""

from __future__ import annotations

from pathlib import Path

from neonize.proto import Neonize_pb2 as N
from neonize.proto.waE2E import WAWebProtobufsE2E_pb2 as E
from test_neonize_engine import Recorder, fresh_store, go_event, restored

from wa_mqtt.engines import neonize_groups as g
from wa_mqtt.engines.base import EngineEvent
from wa_mqtt.engines.neonize_engine import NeonizeEngine
from wa_mqtt.model import ErrorCode, OutgoingMessage

from neonize_factories import (
    Sends,
    call_offer,
    contact,
    everyone_on_whatsapp,
    group_info,
    group_info_event,
    jid,
    message_event,
    participant,
    write_synthetic_device,
)

ME, ANA, BIA = "4915100000301", "5511988880001", "5511988880002"
TYPED, TYPED_REAL = "5511988887777", "551188887777"  # a number as typed, and as WhatsApp knows it
GROUP = jid("120363012345678901", "g.us")
GJID = "120363012345678901@g.us"


def test_group_lists_and_info_name_members_by_phone_and_lid() -> None:
    info = group_info(GROUP, "Família", [
        participant(jid(ME), admin=True),
        participant(jid("111222333", "lid"), phone=jid(ANA), super_admin=True, name="Ana"),
        participant(jid("444555666", "lid")),  # a member known by LID only
    ], topic="weekend plans", owner=jid(ANA))
    assert g.group_summary(info, [ME]).model_dump() == {"jid": GJID, "name": "Família", "participants": 3,
                                                         "is_admin": True}
    assert g.group_summary(info, ["999"]).is_admin is False
    full = g.group_info(info).payload()
    assert (full["name"], full["description"], full["owner"], full["created"]) == (
        "Família", "weekend plans", ANA, "2023-11-14T22:13:20Z")
    assert [(p["phone"], p["lid"], p["is_admin"], p["is_super_admin"]) for p in full["participants"]] == [
        (ME, None, True, False), (ANA, "111222333", True, True), (None, "444555666", False, False)]


def test_group_info_events_become_group_events() -> None:
    event = group_info_event(GROUP, sender=jid(ANA, device=2), name="New name", join=[jid(BIA), jid(ME)],
                             leave=[jid("444555666", "lid")], promote=[jid(BIA)])
    changes = [(c.type, c.participants, c.name, c.by) for c in g.group_events(event, [ME], "Old name")]
    assert changes == [
        ("group_subject_changed", [], "New name", ANA),
        ("group_participants_added", [BIA], "New name", ANA),
        ("group_joined", [ME], "New name", ANA),
        ("group_participants_removed", ["444555666@lid"], "New name", ANA),  # a LID's digits are no phone
        ("group_participants_promoted", [BIA], "New name", ANA),
    ]
    left = g.group_events(group_info_event(GROUP, leave=[jid(ME)]), [ME], "Old name")
    assert [(c.type, c.name, c.by) for c in left] == [("group_left", "Old name", None)]
    # people WhatsApp names by LID: the phone where the account's LID map knows it, else the `…@lid` JID;
    # the account itself by its LID is still the account
    lid_event = group_info_event(GROUP, sender=jid("111222333", "lid"), join=[jid("444555666", "lid"),
                                                                                 jid("999000111", "lid")])
    changes = [(c.type, c.participants, c.by) for c in
               g.group_events(lid_event, [ME, "999000111"], None, {"111222333": ANA})]
    assert changes == [("group_participants_added", ["444555666@lid"], ANA),
                       ("group_joined", ["999000111@lid"], ANA)]


def test_calls_and_contacts() -> None:
    voice = g.call_from_event(call_offer(jid("777888999", "lid", device=3), creator_alt=jid(ANA)))
    assert (voice.id, voice.from_, voice.from_jid, voice.video, voice.group) == (
        "CALLID1", ANA, "777888999:3@lid", False, None)
    assert g.call_from_event(call_offer(jid(ANA), video=True)).video is True
    hidden = g.call_from_event(call_offer(jid("777888999", "lid", device=3)))  # no phone alongside
    assert (hidden.from_, hidden.from_jid) == ("777888999@lid", "777888999:3@lid")
    assert g.call_from_event(call_offer(jid("777888999", "lid")), {"777888999": ANA}).from_ == ANA
    entry = g.contact(contact(jid(ANA), push="Ana P", full="Ana Paula"))
    assert entry.model_dump() == {"phone": ANA, "lid": None, "jid": f"{ANA}@s.whatsapp.net", "push_name": "Ana P",
                                  "saved_name": "Ana Paula", "business_name": None}


async def test_session_group_events_calls_requests_and_sends(tmp_path: Path) -> None:
    engine = NeonizeEngine(stop_timeout=5)
    session, events = await restored(tmp_path, engine, ME)
    client = session.client
    joined = [group_info(GROUP, "Família", [participant(jid(ME), admin=True), participant(jid(ANA))])]

    async def get_joined_groups() -> list[N.GroupInfo]:  # the network part of each call below
        return joined

    async def get_group_info(which: N.JID) -> N.GroupInfo:
        assert (which.User, which.Server) == (GROUP.User, GROUP.Server)
        return joined[0]

    sent = Sends()  # send_message's network part
    rejected: list[tuple[str, str]] = []

    async def reject_call(caller: N.JID, call_id: str) -> None:
        rejected.append((f"{caller.User}:{caller.Device}@{caller.Server}", call_id))

    client.get_joined_groups, client.get_group_info = get_joined_groups, get_group_info
    client.send_message, client.reject_call = sent, reject_call
    client.is_on_whatsapp = everyone_on_whatsapp  # the lookup before a first send (issue 14)

    assert [s.name for s in await session.groups()] == ["Família"]
    assert (await events.next()).kind == "groups"  # the retained list refreshed too
    assert [p.phone for p in (await session.group_info(GJID)).participants] == [ME, ANA]

    await go_event(session, message_event(E.Message(conversation="oi"), msg_id="G1", chat=GROUP, sender=jid(ANA)))
    assert (await events.next()).message.chat_name == "Família"  # known from the groups list

    await go_event(session, group_info_event(GROUP, sender=jid(ANA), join=[jid(BIA)]))
    added: EngineEvent = await events.next()
    assert added.kind == "group_event" and added.event.type == "group_participants_added"
    refreshed = await events.next()  # the list, fetched again after the change
    assert refreshed.kind == "groups" and refreshed.groups[0].is_admin is True

    await go_event(session, call_offer(jid(ANA, device=5), video=True))
    call = await events.next()
    assert call.kind == "call" and (call.call.from_, call.call.video) == (ANA, True)
    await session.reject_call(call.call.from_jid, call.call.id)
    assert rejected == [(f"{ANA}:5@s.whatsapp.net", "CALLID1")]

    await session.send(OutgoingMessage(to=GJID, text=f"@{ANA} hi", mentions=[ANA]))
    to, message = sent[-1]
    assert to.Server == "g.us" and list(message.extendedTextMessage.contextInfo.mentionedJID) == [
        f"{ANA}@s.whatsapp.net"]
    assert await session.edit(GJID, "OUT1", "fixed") == "OUT2"
    edit = sent[-1][1].editedMessage.message.protocolMessage
    assert (edit.key.ID, edit.key.fromMe, edit.editedMessage.conversation) == ("OUT1", True, "fixed")
    assert await session.revoke(GJID, "OUT1") == "OUT3"
    revoke = sent[-1][1].protocolMessage
    assert (revoke.type, revoke.key.ID, revoke.key.fromMe) == (E.ProtocolMessage.REVOKE, "OUT1", True)

    await session.send(OutgoingMessage.model_validate({"to": ANA, "location": {"latitude": 1.5, "longitude": -2.5,
                                                                               "name": "Gate"}}))
    pin = sent[-1][1].locationMessage
    assert (pin.degreesLatitude, pin.degreesLongitude, pin.name) == (1.5, -2.5, "Gate")
    await session.send(OutgoingMessage.model_validate({"to": ANA, "contact": {"name": "Vet", "phone": BIA}}))
    card = sent[-1][1].contactMessage
    assert card.displayName == "Vet" and f"waid={BIA}:+{BIA}" in card.vcard

    async def ninth_digit(*numbers: str) -> list[N.IsOnWhatsAppResponse]:  # Brazil: WhatsApp knows it without
        return [N.IsOnWhatsAppResponse(Query=f"{n}@c.us", JID=jid(TYPED_REAL), IsIn=True) for n in numbers]
    client.is_on_whatsapp = ninth_digit
    typed_id = (await session.send(OutgoingMessage(to=TYPED, text="hi"))).id
    await session.edit(TYPED, typed_id, "hi!")  # named as typed: goes to the chat the message went to
    await session.revoke(TYPED, typed_id)
    assert [to.User for to, _ in sent[-3:]] == [TYPED_REAL] * 3
    assert events.events.empty()
    await session.close()
    await engine.aclose()


async def test_on_connect_the_contact_store_and_groups_name_the_chats(tmp_path: Path) -> None:
    """Connected → the real contact store (whatsmeow_contacts, read by Go) and the joined groups are read;
    a private message is then named by the saved name, a group's by its subject."""
    import sqlite3

    phone = "4915100000302"
    engine = NeonizeEngine(stop_timeout=5)
    store = fresh_store(tmp_path / "store.db")
    device = write_synthetic_device(store, phone)
    with sqlite3.connect(store) as db:
        db.execute("INSERT INTO whatsmeow_contacts VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (device, f"{ANA}@s.whatsapp.net", "Ana", "Ana Paula", "Aninha", "", ""))
    events = Recorder()
    session = engine.open_session(phone, store, events)
    await session.start()
    assert (await events.next()).code == ErrorCode.DIAL_FAILED

    async def get_joined_groups() -> list[N.GroupInfo]:  # the network part; the contact store is Go's own
        return [group_info(GROUP, "Família", [participant(jid(phone)), participant(jid(ANA), admin=True)])]
    session.client.get_joined_groups = get_joined_groups

    await go_event(session, N.Connected(status=True))
    assert (await events.next()).kind == "connected"
    listed = await events.next()
    assert listed.kind == "groups" and listed.groups[0].model_dump() == {
        "jid": GJID, "name": "Família", "participants": 2, "is_admin": False}
    assert [(c.phone, c.saved_name, c.push_name) for c in await session.contacts()] == [(ANA, "Ana Paula", "Aninha")]
    await go_event(session, message_event(E.Message(conversation="oi"), msg_id="P1", chat=jid(ANA), sender=jid(ANA),
                                          pushname="Aninha"))
    assert (await events.next()).message.chat_name == "Ana Paula"  # the saved name wins over the push name
    await go_event(session, message_event(E.Message(conversation="oi"), msg_id="G1", chat=GROUP, sender=jid(ANA)))
    assert (await events.next()).message.chat_name == "Família"
    await session.close()
    await engine.aclose()
