"""Black box: incoming media lands in `media.dir/<phone>/` (sim engine, real Mosquitto), within the limits,
and hostile media (crafted names, lying sizes, empty files, failed downloads) leaves nothing it should not."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from pathlib import Path
from typing import Any

from harness import BridgeEnv, BridgeProcess, Probe

A = "5511900000031"


async def incoming(probe: Probe, payload: dict[str, Any]) -> dict[str, Any]:
    mark = probe.mark()
    await probe.sim(A, "incoming", payload)
    item = await probe.wait_for(f"{probe.base}/{A}/message", lambda r: r.json()["id"] == payload["id"], after=mark)
    return item.json()


async def test_incoming_media_is_saved_within_the_limits_and_hostile_media_leaves_nothing(
        env: BridgeEnv, bridge: BridgeProcess) -> None:
    media_dir = env.root / "pictures"
    env.write_config(media={"dir": str(media_dir), "max_bytes": 600_000, "max_total_mb": 1, "keep_days": 1})
    env.link_sim_account(A)
    folder = media_dir / A
    folder.mkdir(parents=True)
    stale = folder / "OLD-image.jpg"
    stale.write_bytes(b"old")
    os.utime(stale, (time.time() - 3 * 86400,) * 2)  # older than keep_days
    bridge.start()
    photo = os.urandom(1000)
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected", timeout=15)
        message = await incoming(probe, {"id": "P1", "caption": "front door", "media": {
            "mimetype": "image/jpeg", "base64": base64.b64encode(photo).decode()}})
        assert message["type"] == "image" and message["caption"] == "front door"
        media = message["media"]
        assert media["path"] == str(folder / "P1-image.jpg") and media["error"] is None
        assert (media["size"], media["sha256"], media["mimetype"]) == (
            1000, hashlib.sha256(photo).hexdigest(), "image/jpeg")
        assert Path(media["path"]).read_bytes() == photo
        assert Path(media["path"]).stat().st_mode & 0o777 == 0o600  # private to the bridge's user
        assert not stale.exists()  # pruned: older than keep_days

        # from a sender named by LID (issue 14): downloaded, with its phone, LID and chat name (issue 15)
        lid = "201234567890123@lid"
        by_lid = await incoming(probe, {"id": "P2", "sender": "5511988887777", "sender_lid": lid, "sender_name": "Ana",
                                        "media": {"mimetype": "image/png", "base64": base64.b64encode(b"png").decode()}})
        assert (by_lid["sender"], by_lid["sender_lid"], by_lid["chat"], by_lid["chat_name"]) == (
            "5511988887777", lid, "5511988887777@s.whatsapp.net", "Ana")
        assert Path(by_lid["media"]["path"]).read_bytes() == b"png"
        Path(by_lid["media"]["path"]).unlink()  # the folder's listing below is about the files that follow

        crafted = await incoming(probe, {"id": "../../../../tmp/evil", "type": "document", "media": {
            "mimetype": "application/x-evil", "size": 100, "filename": "../../../../etc/passwd"}})
        path = Path(crafted["media"]["path"])
        assert path.parent == folder and path.name == "____________tmp_evil-document.bin", path
        assert crafted["media"]["filename"] == "../../../../etc/passwd"  # metadata only, never a path

        lying = await incoming(probe, {"id": "L1", "media": {  # claims 10 bytes, delivers 700,000
            "mimetype": "video/mp4", "size": 10, "base64": base64.b64encode(b"v" * 700_000).decode()}})
        assert lying["type"] == "video" and lying["media"]["error"] == "too_large" and lying["media"]["path"] is None
        declared = await incoming(probe, {"id": "L2", "media": {"mimetype": "audio/ogg", "size": 10**9}})
        assert declared["media"]["error"] == "too_large"  # not even fetched
        empty = await incoming(probe, {"id": "Z1", "media": {"mimetype": "image/png", "base64": ""}})
        assert empty["media"]["error"] == "download_failed"
        failed = await incoming(probe, {"id": "F1", "media": {"mimetype": "image/png", "size": 50, "fail": True}})
        assert failed["media"]["error"] == "download_failed"
        expired = await incoming(probe, {"id": "E1", "media": {"mimetype": "image/png", "size": 50, "fail": "expired"}})
        assert expired["media"]["error"] == "expired"
        assert sorted(p.name for p in folder.iterdir()) == sorted(["P1-image.jpg", path.name])  # no .part, no failures

        big = b"b" * 500_000  # three of these exceed max_total_mb (1 MiB): the oldest goes first
        for n in range(3):
            saved = await incoming(probe, {"id": f"B{n}", "type": "document", "media": {
                "mimetype": "application/pdf", "filename": "report.pdf", "base64": base64.b64encode(big).decode()}})
            assert saved["media"]["path"] == str(folder / f"B{n}-document.pdf")
        left = sorted(p.name for p in folder.iterdir())
        assert "B2-document.pdf" in left and "B1-document.pdf" in left and "P1-image.jpg" not in left, left
        assert sum(p.stat().st_size for p in folder.iterdir()) <= 1024 * 1024

        bad = await probe.request(A, "send", {"to": A, "text": "still serving"})  # nothing of that hurt the bridge
        assert bad["status"] == "ok"
    assert bridge.stop() == 0
    assert b"base64" not in b"".join(r.payload for r in probe.received if r.topic.endswith("/message"))
