"""Black box: polls (issue 16) through MQTT with the sim engine: a `poll` send shows on
`wa/sim/<phone>/sent`, bad polls are refused with the field named, and a vote delivered on
`wa/sim/<phone>/incoming` is published as a `poll_vote` message."""

from __future__ import annotations

from harness import BridgeEnv, BridgeProcess, Probe

A = "5511900000001"
ANA = "5511988887777"


async def test_a_poll_goes_out_and_a_vote_comes_in(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    bridge.start()
    sent, messages = f"{env.base}/sim/{A}/sent", f"{env.base}/{A}/message"
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        poll = {"question": "Turn the heating on?", "options": ["Yes", "No"], "selectable": 1}
        response = await probe.request(A, "send", {"to": ANA, "poll": poll, "id": "ask-1"})
        assert response["status"] == "ok", response
        out = (await probe.wait_for(sent, lambda r: r.json().get("type") == "poll")).json()
        assert (out["to"], out["text"], out["poll"], out["id"]) == (
            f"{ANA}@s.whatsapp.net", "Turn the heating on?", poll, response["data"]["id"])

        for bad, words in (
            ({"question": "Q?", "options": ["only"]}, "poll.options"),
            ({"question": "Q?", "options": ["a", "a"]}, "options must differ"),
            ({"question": "Q?", "options": ["a", "b"], "selectable": 3}, "selectable"),
            ({"question": "", "options": ["a", "b"]}, "poll.question"),
        ):
            refused = await probe.request(A, "send", {"to": ANA, "poll": bad})
            assert (refused["status"], refused["code"]) == ("error", "invalid_request"), refused
            assert words in refused["error"], refused
        both = await probe.request(A, "send", {"to": ANA, "text": "hi", "poll": poll})
        assert "poll.question" in both["error"]

        poll_id = response["data"]["id"]
        await probe.sim(A, "incoming", {"sender": ANA, "type": "poll_vote", "poll_id": poll_id, "selected": ["Yes"],
                                        "id": "V1"})
        await probe.sim(A, "incoming", {"sender": ANA, "type": "poll_vote", "poll_id": poll_id, "selected": ["No"],
                                        "id": "V2"})  # a changed vote: a new message with the new selection
        first = (await probe.wait_for(messages, lambda r: r.json()["id"] == "V1")).json()
        second = (await probe.wait_for(messages, lambda r: r.json()["id"] == "V2")).json()
        assert first["type"] == "poll_vote" and first["poll_vote"] == {"poll_id": poll_id, "selected": ["Yes"]}
        assert second["poll_vote"] == {"poll_id": poll_id, "selected": ["No"]}
        assert "poll_id" not in first and "selected" not in first

        await probe.sim(A, "incoming", {"sender": ANA, "type": "poll_vote", "selected": "Yes", "id": "V3"})
        await bridge.wait_log("a poll_vote needs poll_id (text) and selected (option texts)")  # sim controls log
