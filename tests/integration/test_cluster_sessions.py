"""The sessions themselves in PostgreSQL (`store.url`, store/pg_sessions.py): bridges of one cluster
with a sessions folder each (nothing shared but PostgreSQL and the broker), black box through MQTT
with a real Mosquitto and a real PostgreSQL. A sim account paired on one bridge is restored from
PostgreSQL after its folder was deleted, taken over by another bridge that never had its files, and
removed with its schema."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_cluster import ANA, _state, cluster_env

from harness import BridgeEnv, BridgeProcess, Broker, Probe

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed: pip install 'psycopg[binary]'")

A = "5511900000401"


def _schemas(pg_url: str) -> set[str]:
    with psycopg.connect(pg_url) as conn:
        return {row[0] for row in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'wa\\_%'")}


def _sim_device(pg_url: str, phone: str) -> str | None:
    with psycopg.connect(pg_url) as conn:
        row = conn.execute(f"SELECT device FROM wa_{phone}.sim_store").fetchone()
    return row[0] if row else None


async def _cli(bridge: BridgeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "wa_mqtt", "--config", str(bridge.env.config_path), "sessions", *args],
        capture_output=True, text=True, timeout=30)


async def test_a_session_in_postgresql_is_paired_restored_taken_over_and_removed_without_shared_files(
        tmp_path: Path, broker: Broker, env: BridgeEnv, pg_url: str) -> None:
    if not broker.v5:
        pytest.skip("the cluster tests need an MQTT v5 broker (Mosquitto) for shared subscriptions")
    folders = {name: tmp_path / name / "sessions" for name in ("b1", "b2")}
    b1, b2 = (BridgeProcess(cluster_env(tmp_path, broker, env.base, folders[name], pg_url, name))
              for name in ("b1", "b2"))
    try:
        b1.start()
        async with Probe(broker, env.base) as probe:
            await probe.wait_for(f"{env.base}/bridge/instances/b1/state", lambda r: r.payload == b"online", 20)
            # paired on b1: the sim's store goes to the account's schema
            assert (await probe.request("bridge", "pair", {"phone": A}))["status"] == "ok"
            await probe.wait_state(A, "pairing")
            mark = probe.mark()
            await probe.sim(A, "scan")
            await probe.wait_state(A, "connected", after=mark)
            assert f"wa_{A}" in _schemas(pg_url) and _sim_device(pg_url, A) == A
            sent = await probe.request(A, "send", {"to": ANA, "text": "one", "id": "s1"})
            assert sent["status"] == "ok", sent
            assert "no file backups or integrity checks" in b1.log()
            backup = await probe.request("bridge", "backup", {"phone": A})
            assert backup["status"] == "ok" and "pg_dump" in str(backup["data"]), backup
            listed = await _cli(b1, "list")
            assert listed.returncode == 0 and f"{A}  schema=wa_{A}  linked=yes" in listed.stdout, listed
            backed = await _cli(b1, "backup", A)
            assert backed.returncode == 0 and "pg_dump" in backed.stdout and not (folders["b1"] / A / "backups").exists()
            refused = await _cli(b1, "remove", A)  # the cluster's session: through a bridge
            assert refused.returncode == 2 and "bridge/request/remove" in refused.stderr
            assert _sim_device(pg_url, A) == A

            # restarted with its sessions folder gone: restored from PostgreSQL
            assert b1.stop() == 0
            shutil.rmtree(folders["b1"])
            mark = probe.mark()
            b1.start()
            status = await probe.wait_state(A, "connected", after=mark, timeout=30)
            assert status["name"] == f"Sim {A[-4:]}"

            # b1 killed: b2, which never saw the account's files, takes it over from PostgreSQL
            b2.start()
            await probe.wait_for(f"{env.base}/bridge/instances/b2/state", lambda r: r.payload == b"online", 20)
            assert not (folders["b2"] / A / "store.db").exists()
            b1.kill()
            mark = probe.mark()
            await probe.wait_until(lambda r: _state(r, env.base, A) == "connected" and
                                   f"cluster: {A}: taking over from b1" in b2.log(), 30, "taken over by b2")
            sent = await probe.request(A, "send", {"to": ANA, "text": "two", "id": "s2"}, timeout=15)
            assert sent["status"] == "ok", sent

            # logged out: the store (its schema) goes; linked again: it comes back
            out = await probe.request(A, "logout", {}, timeout=15)
            assert out["status"] == "ok", out
            assert f"wa_{A}" not in _schemas(pg_url)
            mark = probe.mark()
            assert (await probe.request(A, "connect", {}))["status"] == "ok"
            await probe.wait_state(A, "pairing", after=mark)
            await probe.sim(A, "scan")
            await probe.wait_state(A, "connected", after=mark)
            assert _sim_device(pg_url, A) == A

            # the killed b1 left no member in the shared subscription of bridge requests (before
            # cluster/bridge_requests.py, its persistent session took every other one, unanswered)
            for _ in range(4):
                health = await probe.request("bridge", "health", {}, timeout=10)
                assert health["status"] == "ok", health
            # removed: its schema goes (asked once)
            removed = await probe.request("bridge", "remove", {"phone": A}, timeout=10)
            assert removed["status"] == "ok", removed
            await b2.wait_log(f"{A}: session dropped from PostgreSQL", timeout=10)
            assert f"wa_{A}" not in _schemas(pg_url)
    finally:
        b1.cleanup()
        b2.cleanup()
