"""Black box: the sim engine behaves as the real one where a user can tell. Its message ids never repeat,
across engine and bridge restarts; it reads media URLs under the same policy as neonize, so
`block_private_urls`, size caps and fetch errors answer the same on both."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from wa_mqtt.engines.base import EngineError
from wa_mqtt.engines.neonize_calls import load_media as neonize_load_media
from wa_mqtt.media import MediaPolicy
from wa_mqtt.model import MediaSource

from harness import BridgeEnv, BridgeProcess, Probe

A = "5511900000001"
ANA = "5511988887777"


async def send_ok(probe: Probe, payload: dict[str, Any]) -> str:
    response = await probe.request(A, "send", {"to": ANA, **payload})
    assert response["status"] == "ok" and response["data"]["queued"] is False, response
    return str(response["data"]["id"])


async def test_sim_message_ids_never_repeat_across_restarts(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    bridge.start()
    ids: list[str] = []
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected", timeout=15)
        ids.append(await send_ok(probe, {"text": "one"}))
        react = await probe.request(A, "react", {"chat": ANA, "id": ids[0], "emoji": "👍"})
        assert react["status"] == "ok"
        ids.append(react["data"]["id"])
        mark = probe.mark()
        await probe.sim(A, "crash")  # the engine process dies and is restarted
        await probe.wait_state(A, "disconnected", after=mark)
        await probe.wait_state(A, "connected", timeout=15, after=mark)
        ids.append(await send_ok(probe, {"text": "after the engine restart"}))
        assert bridge.stop() == 0
        mark = probe.mark()
        bridge.start()
        await probe.wait_state(A, "connected", timeout=15, after=mark)
        ids.append(await send_ok(probe, {"text": "after the bridge restart"}))
    assert len(set(ids)) == len(ids), ids


async def neonize_error(url: str, policy: MediaPolicy) -> tuple[str, str]:
    """What the neonize engine answers for this media URL (its media loading, without WhatsApp)."""
    with pytest.raises(EngineError) as failure:
        await neonize_load_media("image", MediaSource(url=url), policy)
    return failure.value.code, str(failure.value)


async def test_sim_refuses_a_private_media_url_as_neonize_does(env: BridgeEnv, bridge: BridgeProcess,
                                                              media_server: str) -> None:
    env.write_config(outgoing={"block_private_urls": True})
    env.link_sim_account(A)
    bridge.start()
    url = f"{media_server}/small"
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected", timeout=15)
        mark = probe.mark()
        response = await probe.request(A, "send", {"to": ANA, "image": {"url": url}})
        assert response["status"] == "error", response
        code, error = await neonize_error(url, MediaPolicy(64 * 1024 * 1024, block_private_urls=True))
        assert (response["code"], response["error"]) == (code, error) == (
            "forbidden", "image.url: 127.0.0.1 is a private address (outgoing.block_private_urls)")
        after = await send_ok(probe, {"text": "next"})  # nothing of the refused send went out before it
        await probe.wait_for(f"{env.base}/sim/{A}/sent", lambda r: r.json().get("id") == after, after=mark)
        assert [r.json()["type"] for r in probe.received[mark:] if r.topic == f"{env.base}/sim/{A}/sent"] == ["text"]


async def test_sim_fetches_media_urls_under_the_policy(env: BridgeEnv, bridge: BridgeProcess,
                                                       media_server: str) -> None:
    env.write_config(outgoing={"block_private_urls": False, "max_media_bytes": 1000})
    env.link_sim_account(A)
    bridge.start()
    policy = MediaPolicy(1000)
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected", timeout=15)
        wa_id = await send_ok(probe, {"image": {"url": f"{media_server}/small", "caption": "hi"}})
        sent = (await probe.wait_for(f"{env.base}/sim/{A}/sent", lambda r: r.json().get("id") == wa_id)).json()
        assert sent["type"] == "image" and sent["text"] == "hi"
        assert sent["media"]["size"] == 5 and sent["media"]["sha256"] == hashlib.sha256(b"hello").hexdigest()
        for path in ("/big", "/missing", "/to-file"):  # too large, HTTP 404, a redirect to file://
            response = await probe.request(A, "send", {"to": ANA, "image": {"url": media_server + path}})
            assert response["status"] == "error", response
            assert (response["code"], response["error"]) == await neonize_error(media_server + path, policy)
