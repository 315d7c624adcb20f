"""Sends to one account fired at once, black box: the bridge accepts each into the outbox while earlier
ones are with the engine (the pipeline), yet WhatsApp gets them in request order and each request is
answered with its own WhatsApp id, `queued: false`, as when sent one at a time."""

from __future__ import annotations

import pytest

from wa_mqtt.accounts.send_pipeline import PIPELINE

from harness import BridgeEnv, BridgeProcess, Probe

A = "5511900000071"
ANA = "5511988887777"
N = 50


@pytest.mark.parametrize("in_process", [False, True])
async def test_sends_fired_at_once_go_out_in_request_order_each_answered_with_its_own_id(
        env: BridgeEnv, bridge: BridgeProcess, in_process: bool) -> None:
    """With the engine in a child process several sends are with it at once; in process, one at a time."""
    if in_process:
        env.write_config(engine_process={"in_process": True})
    env.link_sim_account(A)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected", timeout=15)
        mark = probe.mark()
        for i in range(N):  # each awaits only its PUBACK: all 50 are in flight together
            await probe.publish(f"{env.base}/{A}/request/send", {"to": ANA, "text": f"m{i}", "transaction": f"t{i}"})
        responses = await probe.wait_count(f"{env.base}/{A}/response/send", N, timeout=30)
        sent = await probe.wait_count(f"{env.base}/sim/{A}/sent", N, timeout=30)
        assert all(r.topic != f"{env.base}/{A}/response/send" for r in probe.received[:mark])
    assert [item.json()["text"] for item in sent] == [f"m{i}" for i in range(N)]  # WhatsApp's order
    ids = {item.json()["text"]: item.json()["id"] for item in sent}
    answers = {r.json()["transaction"]: r.json() for r in responses}
    assert len(answers) == N
    for i in range(N):
        answer = answers[f"t{i}"]
        assert answer["status"] == "ok", answer
        assert answer["data"] == {"id": ids[f"m{i}"], "queued": False}
    assert len(set(ids.values())) == N
    # answered in request order too
    assert [r.json()["transaction"] for r in responses] == [f"t{i}" for i in range(N)]


async def test_a_repeated_id_waiting_for_room_in_a_full_pipeline_is_not_sent_again(
        env: BridgeEnv, bridge: BridgeProcess) -> None:
    """A client retries send `X` while the account's pipeline is full and `X` is still in it: the retry
    waits for room, and by then `X` has gone out; it must be answered as a duplicate, not sent again."""
    env.link_sim_account(A)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected", timeout=15)
        await probe.sim(A, "stall", {"seconds": 2})  # the first send's answer comes 2 s late: the pipeline fills
        await probe.publish(f"{env.base}/{A}/request/send", {"to": ANA, "text": "x", "id": "X", "transaction": "first"})
        for i in range(PIPELINE - 1):  # with the first, the pipeline is full
            await probe.publish(f"{env.base}/{A}/request/send", {"to": ANA, "text": f"f{i}", "transaction": f"t{i}"})
        await probe.publish(f"{env.base}/{A}/request/send", {"to": ANA, "text": "x", "id": "X", "transaction": "retry"})
        responses = await probe.wait_count(f"{env.base}/{A}/response/send", PIPELINE + 1, timeout=60)
        await probe.wait_count(f"{env.base}/sim/{A}/sent", PIPELINE, timeout=30)
        answers = {r.json()["transaction"]: r.json() for r in responses}
        assert answers["first"]["status"] == "ok" and answers["retry"]["status"] == "ok", answers["retry"]
        assert answers["retry"]["data"]["duplicate"] is True
        assert answers["retry"]["data"]["id"] == answers["first"]["data"]["id"]
        sent_x = [r for r in probe.received if r.topic == f"{env.base}/sim/{A}/sent" and r.json()["text"] == "x"]
        assert len(sent_x) == 1


async def test_a_send_that_fails_amid_sends_in_flight_gets_its_own_answer_and_the_order_is_kept(
        env: BridgeEnv, bridge: BridgeProcess) -> None:
    """Sends with several at the engine at once: one the engine refuses for good (its media cannot be
    fetched) is answered with its error and the others go out around it, in order; when the account
    drops with sends in flight, the first fails `not_connected` and the engine refuses every send
    chained behind it unattempted: all stay queued and go out after the reconnect, once each, in order."""
    env.link_sim_account(A)
    bridge.start()
    response, sent_topic = f"{env.base}/{A}/response/send", f"{env.base}/sim/{A}/sent"
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected", timeout=15)
        bad = {"to": ANA, "image": {"url": "http://127.0.0.1:9/nothing.jpg"}, "transaction": "bad"}
        for i in range(6):
            body = bad if i == 3 else {"to": ANA, "text": f"a{i}", "transaction": f"a{i}"}
            await probe.publish(f"{env.base}/{A}/request/send", body)
        responses = await probe.wait_count(response, 6, timeout=30)
        assert [r.json()["transaction"] for r in responses] == ["a0", "a1", "a2", "bad", "a4", "a5"]
        answers = {r.json()["transaction"]: r.json() for r in responses}
        assert answers["bad"]["status"] == "error", answers["bad"]
        sent = await probe.wait_count(sent_topic, 5, timeout=30)
        assert [s.json()["text"] for s in sent] == ["a0", "a1", "a2", "a4", "a5"]
        for s in sent:
            assert answers[s.json()["text"]]["data"] == {"id": s.json()["id"], "queued": False}

        mark = probe.mark()
        await probe.sim(A, "drop")  # the sends below reach the engine behind the drop, or find it down
        for i in range(10):
            await probe.publish(f"{env.base}/{A}/request/send", {"to": ANA, "text": f"b{i}", "transaction": f"b{i}"})
        sent = await probe.wait_count(sent_topic, 5 + 10, timeout=30)
        expected = 6 + 10  # and one more for each send answered `queued` first
        while True:
            await probe.wait_count(response, expected, timeout=30)
            later = [r.json() for r in probe.received[mark:] if r.topic == response]
            first = {a["transaction"]: a for a in later if not a.get("data", {}).get("from_queue")}
            queued = sum(1 for a in first.values() if a["data"]["queued"])
            if len(first) == 10 and expected == 6 + 10 + queued:
                break
            expected = 6 + 10 + queued if len(first) == 10 else expected + 1
        assert set(first) == {f"b{i}" for i in range(10)}
        assert all(a["status"] == "ok" for a in first.values()), first
    texts = [s.json()["text"] for s in sent[5:]]
    assert texts == [f"b{i}" for i in range(10)]  # each once, in order
    ids = {s.json()["text"]: s.json()["id"] for s in sent[5:]}
    for tx, answer in first.items():  # sent at once, or queued and answered again once sent
        if answer["data"]["queued"]:
            done = [a for a in later if a["transaction"] == tx and a.get("data", {}).get("from_queue")]
            assert len(done) == 1 and done[0]["data"]["id"] == ids[tx], (tx, later)
        else:
            assert answer["data"]["id"] == ids[tx]


async def test_sends_still_waiting_for_their_turn_when_the_bridge_stops_are_sent_and_answered(
        env: BridgeEnv, bridge: BridgeProcess) -> None:
    """A stop drains the request server: the sends it holds (the pipeline full behind a stalled send,
    more waiting in the request queue) are still taken, sent and answered with their own ids before
    the bridge exits, the answers taken during the stop too (they are published from a callback)."""
    env.link_sim_account(A)
    bridge.start()
    total = PIPELINE + 3  # the pipeline full, one waiting for room in it, two in the request queue
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected", timeout=15)
        await probe.sim(A, "stall", {"seconds": 2})
        for i in range(total):
            await probe.publish(f"{env.base}/{A}/request/send", {"to": ANA, "text": f"s{i}", "transaction": f"t{i}"})
        waiting = 0
        while waiting < 3:  # the request server holds the last three (and this health request)
            health = await probe.request("bridge", "health")
            waiting = health["data"]["requests_waiting"] - 1
        assert bridge.stop() == 0
        responses = await probe.wait_count(f"{env.base}/{A}/response/send", total, timeout=10)
        sent = await probe.wait_count(f"{env.base}/sim/{A}/sent", total, timeout=10)
    ids = {item.json()["text"]: item.json()["id"] for item in sent}
    assert [r.json()["transaction"] for r in responses] == [f"t{i}" for i in range(total)]
    for i, response in enumerate(responses):
        assert response.json()["data"] == {"id": ids[f"s{i}"], "queued": False}, response.json()
