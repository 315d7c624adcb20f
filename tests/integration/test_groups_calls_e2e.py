"""Black box (sim engine, real Mosquitto): groups (`groups`, `group_info`, the retained list, group events,
`chat_name`, sends with mentions), `contacts`, calls (`wa/<phone>/call`, `calls.reject` + `calls.reply`), and
the other sends (`location`, `contact`, `sticker`, `edit`, `revoke`)."""

from __future__ import annotations

import base64
from typing import Any

from harness import BridgeEnv, BridgeProcess, Probe

A = "5511900000041"
ANA, BIA, CAI = "5511988880001", "5511988880002", "5511988880003"
G = "120363000000000001@g.us"


async def ok(probe: Probe, command: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    response = await probe.request(A, command, payload or {})
    assert response["status"] == "ok", response
    return dict(response["data"])


async def test_groups_contacts_and_calls(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.write_config(calls={"reject": True, "reply": "I can't take calls; write me."},
                     outgoing={"allow_to": [ANA, BIA, G]})
    env.link_sim_account(A)
    bridge.start()
    base = env.base
    async with Probe(env.broker, base) as probe:
        await probe.wait_state(A, "connected", timeout=15)
        listed = await probe.wait_for(f"{base}/{A}/groups")
        assert listed.retain is False or listed.json() == {"count": 0, "groups": []}

        mark = probe.mark()
        await probe.sim(A, "group", {"jid": G, "name": "Família", "participants": [ANA, BIA], "admins": [ANA, A]})
        joined = await probe.wait_for(f"{base}/{A}/event", after=mark)
        assert joined.json()["type"] == "group_joined" and joined.json()["group"] == G
        listed = await probe.wait_for(f"{base}/{A}/groups", lambda r: r.json()["count"] == 1, after=mark)
        assert listed.json()["groups"] == [{"jid": G, "name": "Família", "participants": 3, "is_admin": True}]
        assert (await ok(probe, "groups"))["groups"] == listed.json()["groups"]

        info = await ok(probe, "group_info", {"jid": G})
        assert info["name"] == "Família" and info["owner"] == ANA
        members = {p["phone"]: p["is_admin"] for p in info["participants"]}
        assert members == {A: True, ANA: True, BIA: False}
        assert (await probe.request(A, "group_info", {"jid": "120363000000000999@g.us"}))["code"] == "engine_error"
        assert (await probe.request(A, "group_info", {"jid": ANA}))["code"] == "invalid_request"

        mark = probe.mark()
        await probe.sim(A, "incoming", {"id": "G1", "chat": G, "sender": ANA, "sender_name": "Ana", "text": "oi"})
        await probe.sim(A, "incoming", {"id": "P1", "sender": BIA, "sender_name": "Bia", "text": "hi"})
        in_group = (await probe.wait_for(f"{base}/{A}/message", lambda r: r.json()["id"] == "G1", after=mark)).json()
        private = (await probe.wait_for(f"{base}/{A}/message", lambda r: r.json()["id"] == "P1", after=mark)).json()
        assert (in_group["chat_type"], in_group["chat_name"]) == ("group", "Família")
        assert private["chat_name"] == "Bia"

        mark = probe.mark()
        await probe.sim(A, "group", {"jid": G, "add": [CAI], "remove": [BIA]})
        await probe.sim(A, "group", {"jid": G, "name": "Família 2", "admins": [ANA, A, CAI]})
        events = await probe.wait_count(f"{base}/{A}/event", 5, timeout=10)
        kinds = [(e.json()["type"], e.json()["participants"]) for e in events[1:]]
        assert kinds == [("group_participants_added", [CAI]), ("group_participants_removed", [BIA]),
                         ("group_subject_changed", []), ("group_participants_promoted", [CAI])], kinds
        assert events[-1].json()["name"] == "Família 2" and events[-1].json()["by"] == ANA

        mark = probe.mark()
        sent = await ok(probe, "send", {"to": G, "text": f"@{ANA} @{CAI} dinner?", "mentions": [ANA, f"+{CAI}"]})
        out = (await probe.wait_for(f"{base}/sim/{A}/sent", lambda r: r.json().get("id") == sent["id"], after=mark)).json()
        assert out["to"] == G and out["mentions"] == [ANA, CAI]
        bad = await probe.request(A, "send", {"to": G, "text": "x", "mentions": ["not-a-phone"]})
        assert bad["code"] == "invalid_request"

        contacts = {c["phone"]: c for c in (await ok(probe, "contacts"))["contacts"]}
        assert contacts[ANA]["push_name"] == "Ana" and contacts[BIA]["push_name"] == "Bia" and CAI in contacts
        assert A not in contacts

        mark = probe.mark()
        await probe.sim(A, "call", {"from": BIA, "video": True})
        call = (await probe.wait_for(f"{base}/{A}/call", after=mark)).json()
        assert (call["from"], call["video"], call["group"]) == (BIA, True, None) and call["id"]
        rejected = await probe.wait_for(f"{base}/sim/{A}/sent", lambda r: r.json()["type"] == "call_rejected", after=mark)
        assert rejected.json()["call_id"] == call["id"]
        reply = await probe.wait_for(f"{base}/sim/{A}/sent", lambda r: r.json()["type"] == "text", after=mark)
        assert reply.json() == {**reply.json(), "to": f"{BIA}@s.whatsapp.net", "text": "I can't take calls; write me."}

        await other_sends(probe)

        mark = probe.mark()
        await probe.sim(A, "group", {"jid": G, "remove": [A]})
        left = await probe.wait_for(f"{base}/{A}/event", after=mark)
        assert left.json()["type"] == "group_left"
        await probe.wait_for(f"{base}/{A}/groups", lambda r: r.json()["count"] == 0, after=mark)
    assert bridge.stop() == 0


WEBP = base64.b64encode(b"RIFF\x1a\x00\x00\x00WEBPVP8L\x0d\x00\x00\x00/\x00\x00\x00\x10\x07\x10\x11\x11\x88\x88\xfe\x07\x00").decode()


async def other_sends(probe: Probe) -> None:
    """location, contact (name + phone, or a vcard), sticker, edit and revoke: each on `sim/<phone>/sent`."""
    async def sent(payload: dict[str, Any], command: str = "send") -> dict[str, Any]:
        mark = probe.mark()
        data = await ok(probe, command, payload)
        item = await probe.wait_for(f"{probe.base}/sim/{A}/sent", lambda r: r.json().get("id") == data["id"], after=mark)
        return dict(item.json())

    pin = await sent({"to": ANA, "location": {"latitude": -23.55, "longitude": -46.63, "name": "Home"}})
    assert (pin["type"], pin["location"]) == ("location", {"latitude": -23.55, "longitude": -46.63, "name": "Home"})
    card = await sent({"to": ANA, "contact": {"name": "Plumber", "phone": "+5511977776666"}})
    assert card["type"] == "contact" and card["contact"]["name"] == "Plumber"
    assert "waid=5511977776666:+5511977776666" in card["contact"]["vcard"]
    vcard = "BEGIN:VCARD\nVERSION:3.0\nFN:Vet\nTEL:+551133334444\nEND:VCARD"
    assert (await sent({"to": ANA, "contact": {"vcard": vcard}}))["contact"] == {"name": "Vet", "vcard": vcard}
    sticker = await sent({"to": G, "sticker": {"base64": WEBP, "mimetype": "image/webp"}})
    assert sticker["type"] == "sticker" and sticker["media"]["size"] == len(base64.b64decode(WEBP))
    first = await sent({"to": ANA, "text": "typo"})
    edit = await sent({"chat": ANA, "id": first["id"], "text": "fixed"}, "edit")
    assert (edit["type"], edit["target_id"], edit["text"]) == ("edit", first["id"], "fixed")
    revoke = await sent({"chat": ANA, "id": first["id"]}, "revoke")
    assert (revoke["type"], revoke["target_id"]) == ("revoke", first["id"])
    for bad in ({"to": ANA, "location": {"latitude": 91, "longitude": 0}},
                {"to": ANA, "contact": {"name": "No phone"}},
                {"to": ANA, "contact": {"vcard": "not a card"}},
                {"to": ANA, "text": "and a pin", "location": {"latitude": 1, "longitude": 2}},
                {"to": ANA, "sticker": {"base64": WEBP}, "image": {"base64": WEBP}}):
        assert (await probe.request(A, "send", bad))["code"] == "invalid_request", bad
    assert (await probe.request(A, "edit", {"chat": ANA, "id": "X"}))["code"] == "invalid_request"  # no text
    for command, payload in (("edit", {"chat": CAI, "id": first["id"], "text": "x"}), ("revoke", {"chat": CAI, "id": "X"})):
        assert (await probe.request(A, command, payload))["code"] == "forbidden"  # outgoing.allow_to holds here too
