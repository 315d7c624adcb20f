"""Fault tests, black box: broker outages, bridge kills, corrupt stores, sessions folder changes.
Nothing the bridge accepted may be lost."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from harness import BridgeEnv, BridgeProcess, Broker, Probe

A = "5511900000001"
B = "5511900000002"


async def wait_file(pattern_dir, timeout: float = 10.0) -> list:
    """Poll a folder until it has a file (filesystem state, not the bridge's timing)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        files = sorted(pattern_dir.glob("store-*")) if pattern_dir.exists() else []  # not the hidden temp file
        if files:
            return files
        await asyncio.sleep(0.05)
    raise AssertionError(f"no file in {pattern_dir} within {timeout} s")


@contextlib.asynccontextmanager
async def burst_through_outage(tmp_path: Path, broker: Broker, count: int,
                               **incoming: Any) -> AsyncIterator[tuple[BridgeProcess, Probe, str]]:
    """A bridge with one connected sim account and a persistent subscriber; the sim starts a burst of
    `count` messages and the first one has arrived. Yields (bridge, probe, message topic); the bridge
    must then stop cleanly."""
    env = BridgeEnv(tmp_path, broker)
    env.link_sim_account(A)
    bridge = BridgeProcess(env)
    bridge.start()
    try:
        async with Probe(broker, env.base, [f"{env.base}/#"], client_id=f"keeper-{env.base}", clean=False) as probe:
            await probe.wait_state(A, "connected", timeout=15)
            await probe.sim(A, "incoming", {"sender": "5511988887777", "repeat": count, **incoming})
            topic = f"{env.base}/{A}/message"
            await probe.wait_count(topic, 1)
            yield bridge, probe, topic
        assert bridge.stop() == 0
    finally:
        bridge.cleanup()


async def test_burst_survives_a_broker_restart(tmp_path, restartable_broker: Broker) -> None:
    """The sim keeps producing while the broker is down; a persistent subscriber gets every id."""
    count = 400
    async with burst_through_outage(tmp_path, restartable_broker, count, text="burst", id="B",
                                    interval=0.005) as (_bridge, probe, topic):
        await probe.wait_count(topic, 20)
        restartable_broker.stop()  # mid-burst: the bridge keeps receiving and spools
        restartable_broker.start()
        expected = {f"B-{i}" for i in range(count)}

        def ids() -> list[str]:
            return [r.json()["id"] for r in probe.received if r.topic == topic]

        try:
            await probe.wait_until(lambda _: set(ids()) == expected, timeout=30, what="every burst id")
        except AssertionError:
            missing = sorted(expected - set(ids()), key=lambda i: int(i[2:]))
            raise AssertionError(f"missing {len(missing)}: {missing[:20]}; got {len(ids())}") from None
        assert set(ids()) == expected
        # at-least-once: an unacknowledged publish may be repeated across the outage, never lost
        assert len(ids()) - count <= 100


async def test_responses_do_not_wait_for_the_spool_backlog(tmp_path, restartable_broker: Broker) -> None:
    """After an outage the spool holds a backlog; a request answered meanwhile is published at once,
    not after the whole backlog (that wait was the send path's p99). The backlog is long: the probe
    itself receives every message of it, so the response reaches it behind those published before
    it, up to ~0.4 s on a loaded machine, and the bridge drains ~5,000 a second."""
    count = 8000
    async with burst_through_outage(tmp_path, restartable_broker, count, text="b", id="Q") as (bridge, probe, topic):
        restartable_broker.stop()  # the rest of the burst goes to the spool
        await bridge.wait_log("unreachable", timeout=15)  # it noticed the outage
        mark = probe.mark()
        restartable_broker.start()
        await probe.wait_online(timeout=30, after=mark)
        await probe.wait_count(topic, 200, timeout=30)  # the backlog is draining
        response = await probe.request("bridge", "health", {}, timeout=30)
        assert response["status"] == "ok"
        delivered = len([r for r in probe.received if r.topic == topic])
        assert delivered < count, "the response waited for the whole spool backlog"
        await probe.wait_count(topic, count, timeout=60)  # and the backlog still arrives in full


async def test_a_backlog_drains_without_a_warning_per_publish(tmp_path, restartable_broker: Broker) -> None:
    """2,000 messages spooled while the broker is down drain in one stream: aiomqtt's "pending publish
    calls" warning (once per publish over its threshold: ~570 lines for such a backlog) stays out of
    the log, or says it once with a count."""
    count = 2000
    async with burst_through_outage(tmp_path, restartable_broker, count, text="b", id="W") as (bridge, probe, topic):
        restartable_broker.stop()
        await bridge.wait_log("unreachable", timeout=15)
        restartable_broker.start()
        await probe.wait_until(lambda rec: len({r.json()["id"] for r in rec if r.topic == topic}) == count,
                               timeout=60, what="every message of the backlog")
    assert bridge.log().count("pending publish calls") <= 1


def copies_by_id(probe: Probe, topic: str) -> tuple[Counter[str], list[dict[str, Any]]]:
    """How many times the bridge published each message id, and every copy after the first of its id.
    The broker's own redeliveries to the probe (MQTT DUP flag, after its restart) are not the bridge's."""
    seen: Counter[str] = Counter()
    again = []
    for item in probe.received:
        if item.topic == topic:
            body = item.json()
            if item.dup and seen[body["id"]]:
                continue
            seen[body["id"]] += 1
            if seen[body["id"]] > 1:
                again.append(body)
    return seen, again


async def wait_spool_empty(probe: Probe, timeout: float = 60) -> None:
    """Until the bridge says nothing is left to publish (health's `pending_publishes`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (await probe.request("bridge", "health", {}, timeout=30))["data"]["pending_publishes"]:
        if loop.time() > deadline:
            raise AssertionError(f"the spool did not drain within {timeout} s")
        await asyncio.sleep(0.2)  # polling the bridge's own report, not timing it


async def test_broker_restarts_mid_burst_publish_no_unmarked_duplicate(tmp_path, restartable_broker: Broker) -> None:
    """Two broker restarts during a fast burst: every id arrives; a copy published again (it was in
    flight when the connection went) carries `"redelivered": true`, and nothing the broker
    acknowledged is published twice."""
    count = 3000
    async with burst_through_outage(tmp_path, restartable_broker, count, text="r", id="R",
                                    interval=0.0005) as (_bridge, probe, topic):
        for seen in (300, 1200):
            await probe.wait_count(topic, seen, timeout=30)
            mark = probe.mark()
            restartable_broker.stop()
            restartable_broker.start()
            await probe.wait_online(timeout=30, after=mark)
        await probe.wait_until(lambda rec: len({r.json()["id"] for r in rec if r.topic == topic}) == count,
                               timeout=60, what="every burst id")
        await wait_spool_empty(probe)
        copies, again = copies_by_id(probe, topic)
    assert set(copies) == {f"R-{i}" for i in range(count)}
    assert [body["id"] for body in again if body.get("redelivered") is not True] == []
    assert len(again) <= 2 * 100  # at most what was in flight at each restart (the test broker's window)


async def test_bridge_sigkill_mid_burst_publishes_no_unmarked_duplicate(tmp_path, broker: Broker) -> None:
    """The bridge killed during a fast burst, then started again: what it had spooled arrives (a
    prefix of the burst, none missing), and a copy published again (maybe published before the kill)
    carries `"redelivered": true`."""
    env = BridgeEnv(tmp_path, broker)
    env.link_sim_account(A)
    topic = f"{env.base}/{A}/message"
    bridge = BridgeProcess(env)
    bridge.start()
    try:
        async with Probe(broker, env.base, [f"{env.base}/#"]) as probe:
            await probe.wait_state(A, "connected", timeout=15)
            await probe.sim(A, "incoming", {"sender": "5511988887777", "text": "k", "id": "K", "repeat": 3000,
                                            "interval": 0.0005})
            await probe.wait_count(topic, 500, timeout=30)
            assert bridge.kill() == -signal.SIGKILL
            mark = probe.mark()
            bridge.start()
            await probe.wait_state(A, "connected", timeout=15, after=mark)
            await wait_spool_empty(probe)
            copies, again = copies_by_id(probe, topic)
        assert bridge.stop() == 0
    finally:
        bridge.cleanup()
    numbers = sorted(int(i.split("-")[1]) for i in copies)
    assert numbers == list(range(len(numbers))), "a message spooled before the kill is missing"
    assert [body["id"] for body in again if body.get("redelivered") is not True] == []


async def test_sends_queued_survive_sigkill_and_are_delivered_after_restart(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        await probe.sim(A, "outage", {"seconds": 3600})
        await probe.wait_state(A, "disconnected")
        for i in range(3):
            response = await probe.request(A, "send", {"to": "5511988887777", "text": f"queued {i}", "id": f"k{i}"})
            assert response["data"]["queued"] is True
        status = await probe.wait_for(f"{env.base}/{A}/status", lambda r: r.json()["queued_outgoing"] == 3)
        assert status
        assert bridge.kill() == -signal.SIGKILL
        mark = probe.mark()
        bridge.start()  # the sim's outage died with the process: the account connects and flushes
        await probe.wait_state(A, "connected", timeout=15, after=mark)
        sent = await probe.wait_count(f"{env.base}/sim/{A}/sent", 3, timeout=15)
        assert [s.json()["text"] for s in sent] == ["queued 0", "queued 1", "queued 2"]  # oldest first
        # the same client id again is not sent twice
        again = await probe.request(A, "send", {"to": "5511988887777", "text": "queued 0", "id": "k0"})
        assert again["data"].get("duplicate") is True
        await probe.wait_for(f"{env.base}/{A}/status", lambda r: r.json()["queued_outgoing"] == 0, after=mark)
    assert len([r for r in probe.received if r.topic == f"{env.base}/sim/{A}/sent"]) == 3


async def test_queued_send_expires_after_ttl(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.write_config(outgoing={"ttl": 0.5}, status_interval=0.5)
    env.link_sim_account(A)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        await probe.request(A, "disconnect", {})
        queued = await probe.request(A, "send", {"to": "5511988887777", "text": "too late", "transaction": "x"})
        assert queued["data"]["queued"] is True
        expired = await probe.wait_for(f"{env.base}/{A}/response/send",
                                       lambda r: r.json().get("code") == "expired", timeout=10)
        assert expired.json()["status"] == "error"
        await probe.request(A, "connect", {})
        await probe.wait_state(A, "connected")
    assert not [r for r in probe.received if r.topic == f"{env.base}/sim/{A}/sent"]


async def test_message_ids_are_published_once_across_restarts(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    topic = f"{env.base}/{A}/message"
    async with Probe(env.broker, env.base) as probe:
        bridge.start()
        await probe.wait_state(A, "connected")
        await probe.sim(A, "incoming", {"sender": "5511988887777", "text": "one", "id": "SAME"})
        await probe.wait_count(topic, 1)
        assert bridge.stop() == 0
        mark = probe.mark()
        bridge.start()
        await probe.wait_state(A, "connected", after=mark)
        await probe.sim(A, "incoming", {"sender": "5511988887777", "text": "one again", "id": "SAME"})
        await probe.sim(A, "incoming", {"sender": "5511988887777", "text": "new", "id": "OTHER"})
        await probe.wait_for(topic, lambda r: r.json()["id"] == "OTHER", after=mark)
    assert [r.json()["id"] for r in probe.received if r.topic == topic] == ["SAME", "OTHER"]


async def test_corrupt_store_is_restored_from_backup(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    env.link_sim_account(B)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        backups = await wait_file(env.sessions / A / "backups")
        assert (backups[0].stat().st_mode & 0o777) == 0o600
        assert ((env.sessions / A).stat().st_mode & 0o777) == 0o700
        assert bridge.stop() == 0
        (env.sessions / A / "store.db").write_bytes(b"this is not a database" * 100)
        mark = probe.mark()
        bridge.start()
        event = await probe.wait_for(f"{env.base}/bridge/event", lambda r: r.json()["type"] == "store_restored",
                                     after=mark)
        assert event.json()["data"]["phone"] == A and event.json()["data"]["backup"] == backups[0].name
        await probe.wait_state(A, "connected", after=mark)
        await probe.wait_state(B, "connected", after=mark)
    assert list((env.sessions / A).glob("store.db.corrupt-*"))


async def test_corrupt_store_without_backup_is_an_error_and_others_are_fine(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    env.link_sim_account(B)
    (env.sessions / A / "store.db").write_bytes(b"\x00garbage" * 64)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        status = await probe.wait_state(A, "error")
        assert status["error_code"] == "store_corrupt" and "no good backup" in status["error"]
        await probe.wait_state(B, "connected")
        health = await probe.request("bridge", "health", {})
        assert health["data"]["accounts"][A]["state"] == "error"


async def test_backup_command_keeps_the_newest_three(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        names = set()
        for _ in range(5):
            response = await probe.request("bridge", "backup", {"phone": A})
            assert response["status"] == "ok", response
            names.add(response["data"]["backups"][A])
        assert len(names) == 5
        assert len(list((env.sessions / A / "backups").glob("*.db"))) == 3
        unknown = await probe.request("bridge", "backup", {"phone": "5511977776666"})
        assert unknown["code"] == "unknown_account"


async def test_sessions_folder_removed_and_copied_in(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    env.link_sim_account(B)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        await probe.wait_state(B, "connected")
        saved = env.root / "saved-B"
        await wait_file(env.sessions / B / "backups")  # the post-connect backup is done: a quiet folder to copy
        shutil.copytree(env.sessions / B, saved, ignore=shutil.ignore_patterns(".*"))
        mark = probe.mark()
        shutil.rmtree(env.sessions / B)
        event = await probe.wait_for(f"{env.base}/bridge/event",
                                     lambda r: r.json()["type"] == "account_removed", after=mark)
        assert event.json()["data"]["phone"] == B
        await probe.wait_for(f"{env.base}/{B}/status", lambda r: r.payload == b"", after=mark)  # cleared
        accounts = await probe.wait_for(f"{env.base}/bridge/accounts",
                                        lambda r: [a["phone"] for a in r.json()] == [A], after=mark)
        assert accounts
        mark = probe.mark()
        shutil.copytree(saved, env.sessions / B)
        await probe.wait_for(f"{env.base}/bridge/event", lambda r: r.json()["type"] == "account_added", after=mark)
        await probe.wait_state(B, "connected", after=mark)


def test_sessions_cli_list_backup_restore(env: BridgeEnv) -> None:
    import subprocess
    import sys

    env.write_config()
    env.link_sim_account(A)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "wa_mqtt", "--config", str(env.config_path), "sessions", *args],
                              capture_output=True, text=True, timeout=30)

    assert cli("backup", A).returncode == 0
    listed = cli("list")
    assert listed.returncode == 0 and A in listed.stdout and "store=ok" in listed.stdout and "backups=1" in listed.stdout
    (env.sessions / A / "store.db").write_bytes(b"garbage")
    assert "store=" in cli("list").stdout and "store=ok" not in cli("list").stdout
    restored = cli("restore", A)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "store=ok" in cli("list").stdout
    assert cli("restore", "../etc").returncode == 2
    assert cli("remove", A).returncode == 0 and not (env.sessions / A).exists()


async def test_encrypted_backup_restores_a_corrupt_store(env: BridgeEnv, bridge: BridgeProcess) -> None:
    from cryptography.fernet import Fernet

    key = Fernet.generate_key().decode()
    env.link_sim_account(A)
    secret_env = {"WA_MQTT_BACKUPS__ENCRYPTION_KEY": key}
    bridge.start(extra_env=secret_env)
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        await wait_file(env.sessions / A / "backups", timeout=10)
        info = await probe.wait_for(f"{env.base}/bridge/info")
        assert info.json()["config"]["backups"]["encryption_key"] == "***" and key not in info.payload.decode()
        assert bridge.stop() == 0
        encrypted = list((env.sessions / A / "backups").glob("*.db.enc"))
        assert encrypted and b"SQLite format 3" not in encrypted[0].read_bytes()
        (env.sessions / A / "store.db").write_bytes(b"not a database" * 10)
        mark = probe.mark()
        bridge.start(extra_env=secret_env)
        event = await probe.wait_for(f"{env.base}/bridge/event", lambda r: r.json()["type"] == "store_restored",
                                     after=mark)
        assert event.json()["data"]["backup"].endswith(".db.enc")
        await probe.wait_state(A, "connected", after=mark)
    assert key not in bridge.log()
