"""Black box (issue 14, items 1, 2, 3, 7; issue 15's `check`): WhatsApp as it behaves in 2026, on the sim.

LID senders are published as a phone or null (never LID digits), learned from messages that carry both;
answers use the addressing the message came with; edits, deletes and undecryptable messages are
published (the real message after an undecryptable one too); a phone is resolved on WhatsApp before it
is sent to, and `outgoing.allow_to` compares the resolved JIDs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness import BridgeEnv, BridgeProcess, Probe, Received

A = "5511900000001"
ANA = "5511988887777"
LID = "201234567890123@lid"
STRANGER = "209999999999999@lid"


def by_id(message_id: str) -> Callable[[Received], bool]:
    return lambda r: r.json().get("id") == message_id


async def test_lid_senders_answers_edits_revokes_and_undecryptable_messages(env: BridgeEnv,
                                                                            bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    bridge.start()
    messages, sent = f"{env.base}/{A}/message", f"{env.base}/sim/{A}/sent"
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected", timeout=15)

        async def incoming(payload: dict[str, Any]) -> dict[str, Any]:
            await probe.sim(A, "incoming", payload)
            return (await probe.wait_for(messages, by_id(payload["id"]))).json()

        # a LID never seen with a phone: no phone, never its digits
        first = await incoming({"id": "L1", "sender_lid": STRANGER, "text": "who am I", "sender_name": "Zé"})
        assert (first["sender"], first["sender_lid"], first["sender_jid"], first["chat"]) == (
            None, STRANGER, STRANGER, STRANGER)
        assert first["chat_name"] == "Zé"  # issue 15's chat_name for a LID chat; its contact is no phone either
        contacts = (await probe.request(A, "contacts", {}))["data"]["contacts"]
        assert {"phone": None, "lid": STRANGER.split("@")[0], "jid": STRANGER, "push_name": "Zé", "saved_name": None,
                "business_name": None} in contacts
        assert STRANGER.split("@")[0] not in {c["phone"] for c in contacts}
        # with the phone alongside, the LID map learns it: later the LID alone resolves
        taught = await incoming({"id": "L2", "sender": ANA, "sender_lid": LID, "text": "hi"})
        assert (taught["sender"], taught["sender_lid"], taught["sender_jid"]) == (ANA, LID, LID)
        later = await incoming({"id": "L3", "sender_lid": LID, "text": "again", "mentions": [LID, STRANGER],
                                "quoted": {"id": "L1", "sender": STRANGER, "text": "who am I"}})
        assert (later["sender"], later["sender_lid"], later["chat"]) == (ANA, LID, f"{ANA}@s.whatsapp.net")
        assert (later["mentions"], later["mentioned_jids"]) == ([ANA], [LID, STRANGER])
        assert later["quoted"] == {"id": "L1", "sender": None, "sender_lid": STRANGER, "sender_jid": STRANGER,
                                   "text": "who am I"}
        by_phone = await incoming({"id": "L4", "sender": ANA, "text": "plain"})  # its LID is known now
        assert (by_phone["sender"], by_phone["sender_lid"], by_phone["sender_jid"]) == (
            ANA, LID, f"{ANA}@s.whatsapp.net")

        # answers use the addressing the message came with, even when asked by phone
        mark = probe.mark()
        assert (await probe.request(A, "react", {"chat": ANA, "id": "L3", "emoji": "👍"}))["status"] == "ok"
        assert (await probe.request(A, "read", {"chat": ANA, "ids": ["L3"]}))["status"] == "ok"
        reply = await probe.request(A, "send", {"to": ANA, "text": "ok", "reply_to": "L3"})
        assert reply["status"] == "ok", reply
        await probe.wait_for(sent, lambda r: r.json().get("id") == reply["data"]["id"], after=mark)
        answers = {r.json()["type"]: r.json() for r in probe.received[mark:] if r.topic == sent}
        assert (answers["reaction"]["to"], answers["reaction"]["participant"]) == (LID, LID)
        assert (answers["read"]["to"], answers["read"]["participant"]) == (LID, LID)
        assert (answers["text"]["to"], answers["text"]["participant"]) == (f"{ANA}@s.whatsapp.net", LID)

        # edits and deletes for everyone
        edit = await incoming({"id": "E1", "sender": ANA, "type": "edit", "target_id": "L2", "text": "hi!"})
        assert (edit["type"], edit["text"], edit["edit"]) == ("edit", "hi!", {"target_id": "L2", "text": "hi!"})
        revoke = await incoming({"id": "R1", "sender": ANA, "type": "revoke", "target_id": "L2"})
        assert (revoke["type"], revoke["revoke"], revoke["text"]) == ("revoke", {"target_id": "L2"}, None)

        # undecryptable, then the real message under the same id (WhatsApp sent it again): both published
        mark = probe.mark()
        await probe.sim(A, "incoming", {"id": "U1", "sender": ANA, "type": "undecryptable", "text": "secret",
                                        "decrypt_after": 0.3})
        await probe.wait_for(messages, lambda r: r.json()["id"] == "U1" and r.json()["type"] == "text", after=mark)
        await probe.sim(A, "incoming", {"id": "U1", "sender": ANA, "text": "secret"})  # a redelivery: dropped
        await probe.sim(A, "incoming", {"id": "U2", "sender": ANA, "type": "undecryptable"})
        await probe.sim(A, "incoming", {"id": "U2", "sender": ANA, "type": "undecryptable"})  # whatsmeow's repeat
        await probe.sim(A, "incoming", {"id": "END", "sender": ANA, "text": "end"})
        await probe.wait_for(messages, by_id("END"), after=mark)
        got = [(r.json()["id"], r.json()["type"], r.json()["text"]) for r in probe.received[mark:] if r.topic == messages]
        assert got == [("U1", "undecryptable", None), ("U1", "text", "secret"), ("U2", "undecryptable", None),
                       ("END", "text", "end")]
        locked = next(r.json() for r in probe.received[mark:] if r.topic == messages)
        assert (locked["unavailable"], locked["hidden"], locked["sender"]) == (False, False, ANA)


async def test_numbers_are_resolved_before_a_send_and_allow_to_compares_them(env: BridgeEnv,
                                                                             bridge: BridgeProcess) -> None:
    typed, real = ANA, "551188887777"  # Brazil: typed with the ninth digit, known to WhatsApp without
    group = "120363012345678901@g.us"
    env.write_config(outgoing={"allow_to": [typed, "5511000000000", group, LID]})
    env.link_sim_account(A)
    bridge.start()
    sent = f"{env.base}/sim/{A}/sent"
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected", timeout=15)
        await probe.sim(A, "contacts", {"not_on_whatsapp": ["5511000000000"], "jid_of": {typed: real}})

        async def send(to: str) -> dict[str, Any]:
            return await probe.request(A, "send", {"to": to, "text": "hi"})

        mark = probe.mark()
        for to in (typed, real, group, LID):  # `real` is allowed: it is the JID of the listed phone
            response = await send(to)
            assert response["status"] == "ok" and response["data"]["queued"] is False, (to, response)
        await probe.wait_count(sent, 4)
        assert [r.json()["to"] for r in probe.received[mark:] if r.topic == sent] == [
            f"{real}@s.whatsapp.net", f"{real}@s.whatsapp.net", group, LID]

        absent = await send("5511000000000")
        assert (absent["status"], absent["code"]) == ("error", "not_on_whatsapp"), absent
        refused = await send("5511777777777")
        assert (refused["status"], refused["code"]) == ("error", "forbidden"), refused

        checked = await probe.request(A, "check", {"numbers": ["5511000000000", f"+{typed}", "4915100000009"]})
        assert checked == {"status": "ok", "transaction": checked["transaction"], "data": {"results": [
            {"number": "5511000000000", "on_whatsapp": False, "jid": None},
            {"number": typed, "on_whatsapp": True, "jid": f"{real}@s.whatsapp.net"},
            {"number": "4915100000009", "on_whatsapp": True, "jid": "4915100000009@s.whatsapp.net"}]}}
        for bad in ({"numbers": []}, {"numbers": ["12ab"]}, {}):
            response = await probe.request(A, "check", bad)
            assert (response["status"], response["code"]) == ("error", "invalid_request"), (bad, response)
        # only what reached the simulated WhatsApp is on `sent`: nothing of the refused sends
        assert len([r for r in probe.received[mark:] if r.topic == sent]) == 4

        # an edit or a delete of a message sent to a number as typed goes to the chat it went to, and
        # `allow_to` compares its chat as a send's `to` (however the listed phone is written)
        first = (await send(typed))["data"]["id"]
        mark = probe.mark()
        for chat in (typed, real):
            edited = await probe.request(A, "edit", {"chat": chat, "id": first, "text": "hi!"})
            assert edited["status"] == "ok", (chat, edited)
            revoked = await probe.request(A, "revoke", {"chat": chat, "id": first})
            assert revoked["status"] == "ok", (chat, revoked)
        await probe.wait_count(sent, 9)  # the 4 sends above, `first`, then these
        assert [(r.json()["type"], r.json()["to"]) for r in probe.received[mark:] if r.topic == sent] == [
            ("edit", f"{real}@s.whatsapp.net"), ("revoke", f"{real}@s.whatsapp.net")] * 2
        for command, payload in (("edit", {"chat": "5511777777777", "id": first, "text": "x"}),
                                 ("revoke", {"chat": "5511777777777", "id": first})):
            response = await probe.request(A, command, payload)
            assert (response["status"], response["code"]) == ("error", "forbidden"), (command, response)
