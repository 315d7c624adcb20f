"""Black-box tests: the real bridge process against a real broker, sim engine, driven only through MQTT."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from harness import BridgeEnv, BridgeProcess, Probe, free_port, wait_port

A = "5511900000001"
B = "5511900000002"


async def test_restart_restores_every_stored_account(env: BridgeEnv, bridge: BridgeProcess) -> None:
    """The bug the product exists to kill: sessions come back after a restart, with no command."""
    env.link_sim_account(A)
    env.link_sim_account(B)
    async with Probe(env.broker, env.base) as probe:
        for _ in range(2):  # first start, then a restart
            mark = probe.mark()
            started = time.monotonic()
            bridge.start()
            for phone in (A, B):
                status = await probe.wait_state(phone, "connecting", timeout=10, after=mark)
                assert status["phone"] == phone and status["engine"] == "sim"
            for phone in (A, B):
                status = await probe.wait_state(phone, "connected", timeout=10, after=mark)
                assert status["last_connected"] and status["error"] is None
            assert time.monotonic() - started < 10
            online = await probe.wait_for(f"{env.base}/bridge/state", lambda r: r.payload == b"online", after=mark)
            assert online.retain or online.payload == b"online"
            assert bridge.stop() == 0
            await probe.wait_for(f"{env.base}/bridge/state", lambda r: r.payload == b"offline", after=mark)


async def test_sigterm_exits_zero_and_publishes_offline_retained(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
    assert bridge.stop(signal.SIGTERM) == 0
    # a new subscriber sees the retained truth: bridge offline
    async with Probe(env.broker, env.base, [f"{env.base}/bridge/state"]) as late:
        state = await late.wait_for(f"{env.base}/bridge/state")
        assert state.payload == b"offline" and state.retain


async def test_pairing_qr_scan_connects_and_clears_qr(env: BridgeEnv, bridge: BridgeProcess) -> None:
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_online()
        response = await probe.request("bridge", "pair", {"phone": A})
        assert response["status"] == "ok", response
        await probe.wait_state(A, "pairing")
        qr = await probe.wait_for(f"{env.base}/{A}/qr", lambda r: bool(r.payload))
        assert qr.payload.decode().startswith("sim-qr:")
        async with Probe(env.broker, env.base, [f"{env.base}/{A}/qr"]) as late:  # retained while pairing
            assert (await late.wait_for(f"{env.base}/{A}/qr")).retain
        image = await probe.wait_for(f"{env.base}/{A}/qr/image", lambda r: bool(r.payload))
        assert image.payload[:8] == b"\x89PNG\r\n\x1a\n"
        mark = probe.mark()
        await probe.sim(A, "scan")
        status = await probe.wait_state(A, "connected", after=mark)
        assert status["name"] == f"Sim {A[-4:]}"
        await probe.wait_for(f"{env.base}/{A}/qr", lambda r: r.payload == b"", after=mark)
        await probe.wait_for(f"{env.base}/{A}/qr/image", lambda r: r.payload == b"", after=mark)
        event = await probe.wait_for(f"{env.base}/bridge/event", lambda r: r.json()["type"] == "paired")
        assert event.json()["data"]["linked_phone"] == A
    assert bridge.stop() == 0  # a stop right after linking still records the account (post-connect work ends first)
    assert (env.sessions / A / "store.db").exists()
    assert json.loads((env.sessions / A / "account.json").read_text())["last_connected"]


async def test_pair_code_method(env: BridgeEnv, bridge: BridgeProcess) -> None:
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_online()
        assert (await probe.request("bridge", "pair", {"phone": B, "method": "code"}))["status"] == "ok"
        code = await probe.wait_for(f"{env.base}/{B}/pair_code", lambda r: bool(r.payload))
        assert len(code.payload.decode().replace("-", "")) == 8


async def test_incoming_messages_published_once_in_order(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        topic = f"{env.base}/{A}/message"
        await probe.sim(A, "incoming", {"chat": "5511988887777", "sender": "5511988887777",
                                         "sender_name": "Ana", "text": "hello", "id": "M1"})
        await probe.sim(A, "incoming", {"sender": "5511988887777", "text": "again", "id": "M1"})  # duplicate
        await probe.sim(A, "incoming", {"sender": "5511988887777", "text": "second", "id": "M2"})
        first, second = await probe.wait_count(topic, 2)
        message = first.json()
        assert message["id"] == "M1" and message["text"] == "hello" and message["sender_name"] == "Ana"
        assert message["chat"] == "5511988887777@s.whatsapp.net" and message["chat_type"] == "private"
        assert message["account"] == A and message["timestamp"].endswith("Z") and not first.retain
        assert second.json()["id"] == "M2"
        health = await probe.request("bridge", "health", {})
        assert health["data"]["duplicates_dropped"] == 1
        assert len([r for r in probe.received if r.topic == topic]) == 2


async def test_send_react_read_typing_and_receipt(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        response = await probe.request(A, "send", {"to": "5511988887777", "text": "hi there"})
        assert response["status"] == "ok" and response["data"]["queued"] is False, response
        wa_id = response["data"]["id"]
        sent = await probe.wait_for(f"{env.base}/sim/{A}/sent", lambda r: r.json().get("id") == wa_id)
        assert sent.json()["text"] == "hi there" and sent.json()["to"] == "5511988887777@s.whatsapp.net"
        receipt = await probe.wait_for(f"{env.base}/{A}/receipt", lambda r: wa_id in r.json()["ids"])
        assert receipt.json()["type"] == "delivered"
        react = await probe.request(A, "react", {"chat": "5511988887777", "id": "M1", "emoji": "👍"})
        assert react["status"] == "ok"
        await probe.wait_for(f"{env.base}/sim/{A}/sent", lambda r: r.json().get("emoji") == "👍")
        assert (await probe.request(A, "read", {"chat": "5511988887777", "ids": ["M1"]}))["status"] == "ok"
        assert (await probe.request(A, "typing", {"chat": "5511988887777", "state": "composing"}))["status"] == "ok"
        await probe.wait_for(f"{env.base}/sim/{A}/sent", lambda r: r.json().get("type") == "typing")


async def test_bad_requests_get_clear_errors_and_change_nothing(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        mark = probe.mark()
        await probe.publish(f"{env.base}/{A}/request/send", b"{not json")
        bad = await probe.wait_for(f"{env.base}/{A}/response/send", after=mark)
        assert bad.json()["status"] == "error" and bad.json()["code"] == "invalid_json"

        missing = await probe.request(A, "send", {"text": "no recipient"})
        assert missing["code"] == "invalid_request" and "to" in missing["error"]

        wrong_type = await probe.request(A, "send", {"to": 5511, "text": "x"})
        assert wrong_type["code"] == "invalid_request" and "to" in wrong_type["error"]

        unknown = await probe.request("5511977776666", "send", {"to": "5511988887777", "text": "x"})
        assert unknown["code"] == "unknown_account"

        not_a_phone = await probe.request("nobody", "connect", {})
        assert not_a_phone["code"] == "unknown_account"

        unknown_cmd = await probe.request(A, "explode", {})
        assert unknown_cmd["code"] == "invalid_request" and "explode" in unknown_cmd["error"]

        unknown_bridge_cmd = await probe.request("bridge", "explode", {})
        assert unknown_bridge_cmd["code"] == "invalid_request"

        # nothing of that reached "WhatsApp", and the account is still fine
        assert not [r for r in probe.received if r.topic == f"{env.base}/sim/{A}/sent"]
        ok = await probe.request(A, "send", {"to": "5511988887777", "text": "still works"})
        assert ok["status"] == "ok"
        health = await probe.request("bridge", "health", {})
        assert health["data"]["accounts"][A]["state"] == "connected"


async def test_response_topic_and_correlation_data(env: BridgeEnv, bridge: BridgeProcess) -> None:
    if not env.broker.v5:
        pytest.skip("the fallback broker speaks MQTT 3.1.1 only")
    env.link_sim_account(A)
    bridge.start()
    reply_topic = f"{env.base}-replies/me"
    async with Probe(env.broker, env.base, [f"{env.base}/#", f"{env.base}-replies/#"]) as probe:
        await probe.wait_state(A, "connected")
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = reply_topic
        props.CorrelationData = b"corr-42"
        await probe.publish(f"{env.base}/{A}/request/send", {"to": "5511988887777", "text": "x", "transaction": 7},
                            properties=props)
        reply = await probe.wait_for(reply_topic)
        assert reply.correlation_data == b"corr-42"
        assert reply.json()["status"] == "ok" and reply.json()["transaction"] == 7


async def test_disconnect_connect_logout(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        assert (await probe.request(A, "disconnect", {}))["data"]["state"] == "stopped"
        queued = await probe.request(A, "send", {"to": "5511988887777", "text": "later"})
        assert queued["data"]["queued"] is True
        status = await probe.wait_state(A, "stopped")
        assert bridge.stop() == 0  # a disconnect outlives a restart: no auto-connect
        mark = probe.mark()
        bridge.start()
        await probe.wait_online(after=mark)
        await probe.wait_for(f"{env.base}/bridge/accounts", lambda r: r.json() and r.json()[0]["state"] == "stopped", after=mark)
        assert not [r for r in probe.received[mark:] if r.topic == f"{env.base}/{A}/status"
                    and r.payload and r.json()["state"] != "stopped"]
        assert (await probe.request(A, "connect", {}))["status"] == "ok"
        await probe.wait_state(A, "connected", after=mark)
        flushed = await probe.wait_for(f"{env.base}/sim/{A}/sent", lambda r: r.json().get("text") == "later")
        assert flushed
        assert status["error"] is None
        mark = probe.mark()
        assert (await probe.request(A, "send", {"to": "5511988887777", "text": "again"}))["status"] == "ok"
        await probe.wait_for(f"{env.base}/sim/{A}/sent", lambda r: r.json().get("text") == "again")
        assert (env.sessions / A / "store.db-sent").exists()  # (not the first send: that one is stored at once)
        assert (await probe.request(A, "logout", {}))["status"] == "ok"
        out = await probe.wait_state(A, "logged_out", after=mark)
        assert out["error_code"] == "logged_out"
        assert (env.sessions / A / "account.json").exists()
        assert not list((env.sessions / A).glob("store.db*"))  # its journal and the sim's sent-id log too
        mark = probe.mark()
        await probe.request(A, "connect", {})
        await probe.wait_state(A, "pairing", after=mark)  # a logged-out account pairs anew


async def test_remote_events_drop_logout_replace(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    env.link_sim_account(B)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        await probe.wait_state(B, "connected")
        mark = probe.mark()
        await probe.sim(A, "drop")
        dropped = await probe.wait_state(A, "disconnected", after=mark)
        assert dropped["error_code"] == "connection_lost"
        await probe.wait_state(A, "connected", after=mark)
        mark = probe.mark()
        await probe.sim(A, "replace")
        conflict = await probe.wait_state(A, "conflict", after=mark)
        assert conflict["error_code"] == "stream_replaced" and conflict["next_retry_at"] is None
        await probe.sim(B, "logout")
        logged_out = await probe.wait_state(B, "logged_out", after=mark)
        assert logged_out["error_code"] == "logged_out"
        await probe.wait_for(f"{env.base}/bridge/event", lambda r: r.json()["type"] == "logged_out", after=mark)


async def test_outage_backs_off_then_reconnects(env: BridgeEnv, bridge: BridgeProcess) -> None:
    """Issue 14, one owner of reconnection: a connected session that loses WhatsApp is reconnected by the
    engine's own loop (whatsmeow's), never stopped and restarted by the bridge meanwhile; a first connect
    that cannot reach WhatsApp is the bridge's, with its backoff."""
    status_topic = f"{env.base}/{A}/status"
    env.link_sim_account(A)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        mark = probe.mark()
        await probe.sim(A, "outage", {"seconds": 1.5})
        first = await probe.wait_state(A, "disconnected", after=mark)
        assert first["error_code"] == "connection_lost" and first["next_retry_at"] is None
        queued = await probe.request(A, "send", {"to": "5511988887777", "text": "during outage"})
        assert queued["data"]["queued"] is True
        connected = await probe.wait_state(A, "connected", timeout=15, after=mark)
        assert connected["reconnect_attempt"] == 0
        states = [r.json()["state"] for r in probe.received[mark:] if r.topic == status_topic and r.payload]
        assert "connecting" not in states  # the bridge left the reconnect to the engine
        await probe.wait_for(f"{env.base}/sim/{A}/sent", lambda r: r.json().get("text") == "during outage")
        deferred = await probe.wait_for(f"{env.base}/{A}/response/send",
                                        lambda r: r.json().get("data", {}).get("from_queue") is True)
        assert deferred.json()["data"]["id"]

        mark = probe.mark()  # a connect of the bridge's own during an outage: its backoff retries
        await probe.request(A, "disconnect")
        await probe.wait_state(A, "stopped", after=mark)
        await probe.sim(A, "outage", {"seconds": 1.5})
        await probe.request(A, "connect")
        failed = await probe.wait_for(
            status_topic, lambda r: r.json()["state"] == "disconnected" and r.json()["error_code"] == "dial_failed"
            and r.json()["reconnect_attempt"] >= 2, after=mark)
        assert failed.json()["next_retry_at"] is not None
        await probe.wait_state(A, "connected", timeout=15, after=mark)


async def test_bridge_info_and_accounts(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.write_config(mqtt={"url": env.broker.url.replace("127.0.0.1", "user:s3cret@127.0.0.1")})
    env.link_sim_account(A)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        info = await probe.wait_for(f"{env.base}/bridge/info", lambda r: A in r.json()["accounts"])
        data = info.json()
        assert data["engine"] == "sim" and data["base_topic"] == env.base and data["started_at"].endswith("Z")
        assert "s3cret" not in info.payload.decode() and "***" in data["config"]["mqtt"]["url"]
        accounts = await probe.wait_for(f"{env.base}/bridge/accounts",
                                        lambda r: any(a["state"] == "connected" for a in r.json()))
        assert accounts.json() == [{"phone": A, "name": f"Sim {A[-4:]}", "state": "connected"}]
    assert "s3cret" not in bridge.log()


def test_invalid_config_names_the_key_and_exits_2(env: BridgeEnv) -> None:
    env.write_config(mqtt={"embedded_port": 99999}, reconnect={"factor": "fast"})
    result = subprocess.run([sys.executable, "-m", "wa_mqtt", "--config", str(env.config_path), "check-config"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "mqtt.embedded_port" in result.stderr and "reconnect.factor" in result.stderr


def test_env_overrides_config(env: BridgeEnv) -> None:
    env.write_config()
    result = subprocess.run(
        [sys.executable, "-m", "wa_mqtt", "--config", str(env.config_path), "check-config"],
        capture_output=True, text=True, timeout=30,
        env={"PATH": "/usr/bin:/bin", "WA_MQTT_STATUS_INTERVAL": "15", "WA_MQTT_MQTT__BASE_TOPIC": "home/wa"})
    assert result.returncode == 0, result.stderr
    assert '"status_interval": 15' in result.stdout and '"base_topic": "home/wa"' in result.stdout


async def test_embedded_broker_by_default(env: BridgeEnv, bridge: BridgeProcess) -> None:
    port = free_port()
    env.write_config(mqtt={"url": None, "embedded_port": port})
    env.link_sim_account(A)
    bridge.start()
    await asyncio.to_thread(wait_port, port, 20)

    class Embedded:
        v5 = False

    embedded = Embedded()
    embedded.port = port  # type: ignore[attr-defined]
    async with Probe(embedded, env.base) as probe:  # type: ignore[arg-type]
        await probe.wait_state(A, "connected", timeout=15)
        state = await probe.wait_for(f"{env.base}/bridge/state")
        assert state.payload == b"online"
        sent = await probe.request(A, "send", {"to": "5511988887777", "text": "via the embedded broker"})
        assert sent["status"] == "ok" and sent["data"]["queued"] is False
        await probe.wait_for(f"{env.base}/sim/{A}/sent", lambda r: r.json()["text"] == "via the embedded broker")
    assert bridge.stop() == 0
    assert f"embedded MQTT broker listening on 127.0.0.1:{port}" in bridge.log()


async def test_pair_cli_draws_the_qr_and_exits_when_linked(env: BridgeEnv) -> None:
    """`python -m wa_mqtt pair <phone>` with no bridge running: it runs one, shows the QR, waits."""
    env.write_config()
    async with Probe(env.broker, env.base) as probe:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wa_mqtt", "--config", str(env.config_path), "pair", "+" + B,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, cwd=env.root)
        try:
            await probe.wait_for(f"{env.base}/{B}/qr", lambda r: bool(r.payload), timeout=20)
            await probe.sim(B, "scan")
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
        text = out.decode()
        assert proc.returncode == 0, text
        assert "█" in text and "Linked devices" in text and f"linked: +{B}" in text
    assert (env.sessions / B / "store.db").exists()


async def test_qr_scanned_by_another_number_is_stored_under_that_number(env: BridgeEnv, bridge: BridgeProcess) -> None:
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_online()
        assert (await probe.request("bridge", "pair", {"phone": A}))["status"] == "ok"
        await probe.wait_for(f"{env.base}/{A}/qr", lambda r: bool(r.payload))
        await probe.sim(A, "scan", {"phone": B})
        event = await probe.wait_for(f"{env.base}/bridge/event", lambda r: r.json()["type"] == "linked_other_number")
        assert event.json()["data"] == {"asked": A, "phone": B, "moved": True}
        await probe.wait_state(B, "connected")
        await probe.wait_for(f"{env.base}/{A}/status", lambda r: r.payload == b"")
        await probe.wait_for(f"{env.base}/bridge/accounts", lambda r: [a["phone"] for a in r.json()] == [B])
    assert (env.sessions / B / "store.db").exists() and not (env.sessions / A).exists()
    assert json.loads((env.sessions / B / "account.json").read_text())["phone"] == B
