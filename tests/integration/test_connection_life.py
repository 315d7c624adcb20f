"""Black box, issue 14: a keepalive gap is `degraded` without a state change; a temporary ban waits for its
end (`temporary_ban`, `next_retry_at`); an engine that cannot stop cleanly during pairing, or whose event
pump died, is replaced by a fresh process; the configured presence; voice notes as OGG/Opus."""

from __future__ import annotations

import asyncio
import base64
import shutil
import subprocess
from datetime import UTC, datetime

import pytest

from harness import BridgeEnv, BridgeProcess, Probe, engine_children

A = "5511900000001"
B = "5511900000002"
ANA = "5511988887777"


def iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


async def test_a_keepalive_gap_that_heals_stays_connected_and_degraded(env: BridgeEnv, bridge: BridgeProcess) -> None:
    status_topic = f"{env.base}/{A}/status"
    env.link_sim_account(A)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        connected = await probe.wait_state(A, "connected")
        assert connected["degraded"] is False
        mark = probe.mark()
        await probe.sim(A, "keepalive", {"seconds": 2})
        gap = await probe.wait_for(status_topic, lambda r: r.json()["degraded"] is True, after=mark)
        assert gap.json()["state"] == "connected" and gap.json()["since"] == connected["since"]
        assert gap.json()["error_code"] == "keepalive_timeout" and "still connected" in gap.json()["error"]
        sent = await probe.request(A, "send", {"to": ANA, "text": "while degraded"})  # still sends at once
        assert sent["status"] == "ok" and sent["data"]["queued"] is False
        health = await probe.request("bridge", "health", {})
        assert health["data"]["accounts"][A]["degraded"] is True
        healed = await probe.wait_for(status_topic, lambda r: r.json()["degraded"] is False, after=mark, timeout=10)
        assert healed.json()["state"] == "connected" and healed.json()["error_code"] is None
        states = {r.json()["state"] for r in probe.received[mark:] if r.topic == status_topic and r.payload}
        assert states == {"connected"}


async def test_a_temporary_ban_waits_for_its_end_and_a_dead_pump_gets_a_new_process(
        env: BridgeEnv, bridge: BridgeProcess) -> None:
    status_topic = f"{env.base}/{A}/status"
    env.link_sim_account(A)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected", timeout=15)
        [child] = engine_children(env.sessions)
        mark = probe.mark()
        await probe.sim(A, "ban", {"seconds": 2.5, "code": "106", "pump_dies": True})
        banned = await probe.wait_state(A, "banned", after=mark)
        assert banned["error_code"] == "temporary_ban" and "106" in banned["error"]
        wait = (iso(banned["next_retry_at"]) - iso(banned["since"])).total_seconds()
        assert 1 <= wait <= 3
        queued = await probe.request(A, "send", {"to": ANA, "text": "after the ban"})
        assert queued["data"]["queued"] is True
        again = probe.mark()  # a connect during the ban, in a fresh engine process: banned again, same end
        assert (await probe.request(A, "connect", {}))["status"] == "ok"
        rebanned = await probe.wait_state(A, "banned", after=again)
        assert rebanned["next_retry_at"] == banned["next_retry_at"]
        back = await probe.wait_state(A, "connected", timeout=15, after=mark)
        assert iso(back["since"]) >= iso(banned["next_retry_at"])
        states = [r.json()["state"] for r in probe.received[mark:] if r.topic == status_topic and r.payload]
        assert "disconnected" not in states  # no retry before the ban's end
        await probe.wait_for(f"{env.base}/sim/{A}/sent", lambda r: r.json().get("text") == "after the ban")
        assert child not in engine_children(env.sessions)  # its event pump had died: replaced
        assert not [r for r in probe.received[mark:] if r.topic == f"{env.base}/bridge/event"
                    and r.json()["type"] == "engine_crashed"]
        [child] = engine_children(env.sessions)
        await probe.sim(A, "ban", {"seconds": 0.5})  # a ban neonize can encode: the process stays
        await probe.wait_state(A, "banned", after=mark)
        await probe.wait_state(A, "connected", timeout=15, after=probe.mark())
        assert engine_children(env.sessions) == [child]


async def test_a_stop_during_pairing_replaces_the_engine_process(env: BridgeEnv, bridge: BridgeProcess) -> None:
    """neonize cannot end its pairing thread on a stop: the bridge ends that process instead, and a
    new pairing starts in a fresh one; a stop of a linked session keeps its process."""
    env.write_config(accounts=[B])
    env.link_sim_account(A)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected", timeout=15)
        await probe.wait_state(B, "stopped")
        for _ in range(3):
            mark = probe.mark()
            assert (await probe.request("bridge", "pair", {"phone": B}))["status"] == "ok"
            await probe.wait_state(B, "pairing", after=mark)
            assert len(engine_children(env.sessions)) == 2
            assert (await probe.request(B, "disconnect", {}))["data"]["state"] == "stopped"
            await wait_children(env, 1)  # B's is gone; A's stays
        [kept] = engine_children(env.sessions)
        assert (await probe.request(A, "disconnect", {}))["data"]["state"] == "stopped"
        assert (await probe.request(A, "connect", {}))["status"] == "ok"
        await probe.wait_state(A, "connected", after=mark)
        assert engine_children(env.sessions) == [kept]


async def wait_children(env: BridgeEnv, count: int, timeout: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(engine_children(env.sessions)) != count:
        assert loop.time() < deadline, engine_children(env.sessions)
        await asyncio.sleep(0.05)


def wav_tone(seconds: float = 1.0) -> bytes:
    """A short WAV made by the real ffmpeg."""
    return subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
         "-f", "wav", "pipe:1"], check=True, capture_output=True).stdout


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is a documented requirement; .ci/run installs it")
async def test_presence_setting_and_voice_notes(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.write_config(presence="unavailable")
    env.link_sim_account(A)
    bridge.start()
    sent_topic = f"{env.base}/sim/{A}/sent"
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected", timeout=15)
        info = await probe.wait_for(f"{env.base}/bridge/info", lambda r: A in r.json()["accounts"])
        assert info.json()["config"]["presence"] == "unavailable"
        assert (await probe.request(A, "typing", {"chat": ANA, "state": "composing"}))["status"] == "ok"
        typing = await probe.wait_for(sent_topic, lambda r: r.json().get("type") == "typing")
        assert typing.json()["presence"] == "unavailable"

        audio = {"base64": base64.b64encode(wav_tone()).decode(), "mimetype": "audio/wav", "ptt": True}
        sent = await probe.request(A, "send", {"to": ANA, "audio": audio})
        assert sent["status"] == "ok", sent
        note = (await probe.wait_for(sent_topic, lambda r: r.json().get("type") == "audio")).json()["media"]
        assert note["ptt"] is True and note["mimetype"] == "audio/ogg; codecs=opus"
        assert note["size"] > 0
        refused = await probe.request(A, "send", {"to": ANA, "image": {**audio, "mimetype": "image/png"}})
        assert refused["status"] == "error" and refused["code"] == "invalid_request" and "ptt" in refused["error"]
