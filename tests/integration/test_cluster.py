"""Several bridges sharing the accounts through PostgreSQL (store.url), black box through MQTT with a
real Mosquitto and a real PostgreSQL: the accounts are spread, each request is served once (bridge
requests through a shared subscription), a killed bridge's accounts are taken over only after its
leases expired, a frozen one's not before it let go of them, and no queued send is lost or doubled."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from datetime import datetime
from pathlib import Path

import pytest
from pg_server import PgServer, pg_bin

from harness import BridgeEnv, BridgeProcess, Broker, Probe

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'psycopg[binary]'")

TAKEOVER = 3.0  # cluster.takeover_after (its minimum): leases renew every 0.75 s
PHONES = ["5511900000301", "5511900000302", "5511900000303", "5511900000304"]
ANA = "5511988887777"


def cluster_env(root: Path, broker: Broker, base: str, sessions: Path, pg_url: str, name: str,
                in_process: bool = False) -> BridgeEnv:
    env = BridgeEnv(root / name, broker, base=base)
    env.write_config(sessions_dir=str(sessions), store={"url": pg_url}, instance_id=name,
                     cluster={"takeover_after": TAKEOVER}, mqtt={"client_id": f"wa_mqtt_{base}_{name}"},
                     engine_process={"in_process": in_process})
    return env


def owned(probe: Probe, base: str) -> dict[str, list[str]]:
    """instance id -> the accounts its retained `bridge/instances/<id>` lists (latest of each)."""
    latest: dict[str, list[str]] = {}
    prefix = f"{base}/bridge/instances/"
    for item in probe.received:
        rest = item.topic.removeprefix(prefix)
        if item.topic.startswith(prefix) and "/" not in rest:
            latest[rest] = json.loads(item.payload)["accounts"] if item.payload else []
    return latest


def spread(probe: Probe, base: str, names: list[str]) -> bool:
    now = owned(probe, base)
    lists = [now.get(name, []) for name in names]
    return sorted(phone for accounts in lists for phone in accounts) == PHONES and all(lists)


@pytest.fixture
def pair(request: pytest.FixtureRequest, tmp_path: Path, broker: Broker, env: BridgeEnv, pg_url: str):
    """Two bridges of one cluster on one sessions folder, with four linked sim accounts; the sims in
    child processes, or inside the bridges with `@pytest.mark.parametrize("pair", [True], indirect=True)`."""
    if not broker.v5:
        pytest.skip("the cluster tests need an MQTT v5 broker (Mosquitto) for shared subscriptions")
    in_process = bool(getattr(request, "param", False))
    for phone in PHONES:
        env.link_sim_account(phone)
    bridges = [BridgeProcess(cluster_env(tmp_path, broker, env.base, env.sessions, pg_url, name, in_process))
               for name in ("b1", "b2")]
    yield env, bridges
    for bridge in bridges:
        bridge.cleanup()


@pytest.mark.parametrize("pair", [True], indirect=True, ids=["in-process"])  # a killed bridge: its sims die with it
async def test_a_killed_bridges_accounts_are_taken_over_after_its_leases_expire_and_nothing_is_lost(
        pair, pg_url: str) -> None:
    env, (b1, b2) = pair
    b1.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_until(lambda _: sorted(owned(probe, env.base).get("b1", [])) == PHONES, 20,
                               "the first bridge runs every account")
        b2.start()  # the second one gets a share handed over
        await probe.wait_until(lambda _: spread(probe, env.base, ["b1", "b2"]), 30, "accounts spread over b1 and b2")
        for phone in PHONES:
            await probe.wait_until(lambda r, p=phone: _state(r, env.base, p) == "connected", 20, f"{phone} connected")
        # every account request is served once, by the owner; a bridge request once, by one of them
        for phone in PHONES:
            answer = await probe.request(phone, "send", {"to": ANA, "text": f"hello {phone}", "id": f"h-{phone}"})
            assert answer["status"] == "ok", answer
        info = await probe.request("bridge", "health", {})
        assert info["status"] == "ok", info
        # a bridge request naming an account reaches the bridge that runs it (forwarded when the broker
        # handed it to the other one), and is answered once
        for phone in PHONES:
            restarted = await probe.request("bridge", "restart_account", {"phone": phone})
            assert restarted["status"] == "ok" and restarted["data"]["phone"] == phone, restarted
        assert "forwarded to" in b1.log() + b2.log()
        for phone in PHONES:
            await probe.wait_until(lambda r, p=phone: _state(r, env.base, p) == "connected", 20, f"{phone} again")
        # each bridge's own bridge/accounts and bridge/info, under its instance topic (not overwriting the other's)
        for name in ("b1", "b2"):
            mine = set(owned(probe, env.base)[name])
            await probe.wait_for(f"{env.base}/bridge/instances/{name}/accounts",
                                 lambda r, m=mine: {a["phone"] for a in r.json()} == m, timeout=10)
            await probe.wait_for(f"{env.base}/bridge/instances/{name}/info", timeout=10)
        assert not [r for r in probe.received if r.topic in (f"{env.base}/bridge/accounts", f"{env.base}/bridge/info")]

        victim_accounts = owned(probe, env.base)["b1"]
        victim = victim_accounts[0]
        await probe.sim(victim, "outage", {"seconds": 120})  # the send below waits in the (shared) outbox
        await probe.wait_until(lambda r: _state(r, env.base, victim) != "connected", 10, "victim offline")
        queued = await probe.request(victim, "send", {"to": ANA, "text": "queued before the kill", "id": "q1"})
        assert queued["data"]["queued"] is True, queued
        assert b1.kill() == -signal.SIGKILL
        expiry = _lease_expiry(pg_url, "b1")  # b1 cannot renew any more: when its leases run out
        mark = probe.mark()
        # sent while nobody runs the account: held by b2 until it takes the account over
        await probe.publish(f"{env.base}/{victim}/request/send",
                            {"to": ANA, "text": "sent during the takeover", "id": "q2", "transaction": "t-q2"})
        await probe.wait_until(lambda _: sorted(owned(probe, env.base).get("b2", [])) == PHONES, 20,
                               "b2 runs every account")
        # taken over only once b1's leases had expired (PostgreSQL's clock: the lease rows' times)
        assert min(_lease_since(pg_url, victim_accounts)) >= expiry
        assert f"cluster: {victim}: taking over from b1 (its lease expired)" in b2.log()
        await probe.wait_for(f"{env.base}/{victim}/response/send", lambda r: r.json().get("transaction") == "t-q2",
                             timeout=15, after=mark)
        await probe.wait_until(lambda r: {"queued before the kill", "sent during the takeover"}
                               <= set(_sent_texts(r, env.base, victim)), 15, "both sends delivered by the new owner")
        texts = _sent_texts(probe.received, env.base, victim)
        assert texts.count("queued before the kill") == 1 and texts.count("sent during the takeover") == 1, texts
        # the killed bridge's topics are cleared by the survivor
        await probe.wait_for(f"{env.base}/bridge/instances/b1", lambda r: r.payload == b"", timeout=10)
        responses = [r for r in probe.received if r.topic == f"{env.base}/bridge/response/health"]
        assert len(responses) == 1  # answered once, by one bridge
        assert len([r for r in probe.received if r.topic == f"{env.base}/bridge/response/restart_account"]) == 4
        for phone in PHONES:  # each account's request was served by one bridge: one delivery
            assert _sent_texts(probe.received, env.base, phone).count(f"hello {phone}") == 1
            answers = [r for r in probe.received if r.topic == f"{env.base}/{phone}/response/send"]
            if phone not in victim_accounts:  # one answer; the killed bridge's last ones may be served again
                assert len(answers) == 1, [a.payload for a in answers]
    b2.stop()


async def test_a_frozen_bridges_accounts_wait_until_it_has_stopped_its_engines(pair) -> None:
    """SIGSTOP: the leases expire but the frozen bridge's engines still run (its children are not
    frozen) and its PostgreSQL session holds their advisory locks: the other bridge takes the leases
    and waits. Woken, the frozen one finds its leases gone and stops its engines; only then do they
    start on the other one."""
    env, (b1, b2) = pair
    b1.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_until(lambda _: sorted(owned(probe, env.base).get("b1", [])) == PHONES, 20, "b1 runs all")
        for phone in PHONES:
            await probe.wait_until(lambda r, p=phone: _state(r, env.base, p) == "connected", 20, f"{phone} connected")
        b2.start()
        await probe.wait_until(lambda _: spread(probe, env.base, ["b1", "b2"]), 30, "spread")
        frozen = owned(probe, env.base)["b1"]
        assert b1.proc is not None
        os.kill(b1.proc.pid, signal.SIGSTOP)
        try:
            await b2.wait_log("waiting for its previous engine to let go", timeout=20)
            await asyncio.sleep(TAKEOVER)  # a negative: b2 must keep waiting while b1 is frozen
            assert not set(frozen) & set(owned(probe, env.base).get("b2", [])), owned(probe, env.base)
        finally:
            os.kill(b1.proc.pid, signal.SIGCONT)
        await probe.wait_until(lambda _: set(frozen) <= set(owned(probe, env.base).get("b2", [])), 20,
                               "b2 runs the frozen bridge's accounts")
        log = b1.log()
        assert "stopping" in log and ("lease lost" in log or "not renewed" in log), log[-3000:]
        for phone in frozen:
            await probe.wait_until(lambda r, p=phone: _state(r, env.base, p) == "connected", 20, f"{phone} back")
    b1.stop()
    b2.stop()


def _lease_expiry(pg_url: str, instance: str) -> datetime:
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT max(expires_at) FROM wa_mqtt_leases WHERE instance_id = %s", (instance,)).fetchone()
    assert row is not None and row[0] is not None
    return row[0]


def _lease_since(pg_url: str, accounts: list[str]) -> list[datetime]:
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT since FROM wa_mqtt_leases WHERE account = ANY(%s)", (accounts,)).fetchall()
    return [row[0] for row in rows]


def _state(received: list, base: str, phone: str) -> str | None:
    items = [r for r in received if r.topic == f"{base}/{phone}/status" and r.payload]
    return json.loads(items[-1].payload)["state"] if items else None


def _sent_texts(received: list, base: str, phone: str) -> list[str]:
    """Texts the sim delivered for `phone`, one per WhatsApp id (a kill may republish one `sent`)."""
    seen: dict[str, str] = {}
    for r in received:
        if r.topic == f"{base}/sim/{phone}/sent":
            body = json.loads(r.payload)
            seen.setdefault(body["id"], body["text"])
    return list(seen.values())


async def test_a_second_bridge_with_a_live_bridges_instance_id_waits_then_refuses_to_start(
        tmp_path: Path, broker: Broker, env: BridgeEnv, pg_url: str) -> None:
    first = BridgeProcess(cluster_env(tmp_path, broker, env.base, env.sessions, pg_url, "b1"))
    twin_env = cluster_env(tmp_path / "twin", broker, env.base, env.sessions, pg_url, "b1")
    twin_env.write_config(mqtt={"client_id": f"wa_mqtt_{env.base}_twin"})
    twin = BridgeProcess(twin_env)
    first.start()
    try:
        async with Probe(broker, env.base) as probe:
            await probe.wait_for(f"{env.base}/bridge/instances/b1/state", lambda r: r.payload == b"online", 20)
            twin.start()
            await twin.wait_log("waiting for it to expire", timeout=20)
            assert twin.proc is not None
            assert await asyncio.to_thread(twin.proc.wait, 30) == 2  # after takeover_after: a setup problem
            assert "instance_id 'b1' is in use by a live bridge" in twin.log()
            twin.proc = None
    finally:
        twin.cleanup()
        first.cleanup()


async def test_a_bridge_cut_off_from_postgresql_stops_its_engines_and_resumes_when_it_is_back(
        tmp_path: Path, broker: Broker, env: BridgeEnv) -> None:
    """PostgreSQL goes down (a crash, then a restart): the bridge cannot renew its leases, so it stops
    its engines before they could expire; once the server is back it takes its accounts up again, and
    its stores (outbox, dedup ids) connect again too."""
    if PgServer.unavailable() or pg_bin() is None:
        pytest.skip(PgServer.unavailable() or "no PostgreSQL")
    bindir = pg_bin()
    assert bindir is not None
    server = PgServer(bindir, durable=True)  # a server of its own: this test crashes it
    server.start()
    bridge = BridgeProcess(cluster_env(tmp_path, broker, env.base, env.sessions, server.new_database(), "b1", True))
    try:
        for phone in PHONES[:2]:
            env.link_sim_account(phone)
        bridge.start()
        async with Probe(broker, env.base) as probe:
            for phone in PHONES[:2]:
                await probe.wait_until(lambda r, p=phone: _state(r, env.base, p) == "connected", 20, f"{phone} up")
            await asyncio.to_thread(server.halt)
            for phone in PHONES[:2]:  # within takeover_after / 2 of the last renewal
                await probe.wait_until(lambda r, p=phone: _state(r, env.base, p) == "stopped", 10, f"{phone} stopped")
            assert "leases not renewed" in bridge.log()
            await asyncio.to_thread(server.start)
            for phone in PHONES[:2]:
                await probe.wait_until(lambda r, p=phone: _state(r, env.base, p) == "connected", 30, f"{phone} back")
            answer = await probe.request(PHONES[0], "send", {"to": ANA, "text": "after the outage", "id": "o1"},
                                         timeout=15)
            assert answer["status"] == "ok", answer
    finally:
        bridge.cleanup()
        server.stop()
