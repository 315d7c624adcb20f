"""Incoming media on disk (engines/incoming_media.py): names, limits, pruning, atomic writes, failures."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from wa_mqtt.engines.incoming_media import MediaSaver, failure_code, file_name, prune, write_atomically
from wa_mqtt.engines.options import DownloadOptions
from wa_mqtt.model import IncomingMessage, Media


def message(msg_id: str = "3EB0A", kind: str = "image", **media: object) -> IncomingMessage:
    return IncomingMessage(id=msg_id, account="5511900000001", chat="5511988887777@s.whatsapp.net",
                           sender="5511988887777", sender_jid="5511988887777@s.whatsapp.net",
                           timestamp=datetime.now(UTC), type=kind,  # type: ignore[arg-type]  # (a literal)
                           media=Media(mimetype="image/jpeg", **media))  # type: ignore[arg-type]  # (fields)


def test_names_come_from_the_id_and_type_only() -> None:
    assert file_name("3EB0ABC", "image", "image/jpeg") == "3EB0ABC-image.jpg"
    assert file_name("../../etc/x", "document", None, "../../passwd.PDF") == "______etc_x-document.pdf"
    assert file_name("", "audio", "audio/ogg; codecs=opus") == "message-audio.ogg"
    assert file_name(".hidden", "sticker", "image/webp").startswith("_hidden")
    assert file_name("a" * 500, "video", "video/weird", "x.b/../c") == "a" * 100 + "-video.bin"
    assert failure_code("download failed with status code 410") == "expired"
    assert failure_code("connection reset") == "download_failed"


def test_prune_removes_old_files_then_the_oldest_beyond_the_total(tmp_path: Path) -> None:
    now = 1_800_000_000.0
    for name, age_days, size in (("old", 40, 10), ("a", 3, 400), ("b", 2, 400), ("c", 1, 400)):
        path = tmp_path / name
        path.write_bytes(b"x" * size)
        os.utime(path, (now - age_days * 86400,) * 2)
    (tmp_path / ".c.123.part").write_bytes(b"partial")
    os.utime(tmp_path / ".c.123.part", (now - 7200,) * 2)
    removed = prune(tmp_path, now, keep_days=30, max_total_bytes=900, keep=tmp_path / "c")
    assert sorted(p.name for p in removed) == [".c.123.part", "a", "old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "c"]
    assert prune(tmp_path, now, keep_days=0, max_total_bytes=0) == []  # both limits off


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        write_atomically(tmp_path, "x.jpg", "not bytes")  # type: ignore[arg-type]  # (the failure under test)
    assert list(tmp_path.iterdir()) == []
    assert write_atomically(tmp_path, "y.jpg", b"ok").read_bytes() == b"ok"
    with pytest.raises(ValueError, match="unsafe"):
        write_atomically(tmp_path, "../z.jpg", b"no")


async def test_saver_switch_timeout_and_unwritable_folder(tmp_path: Path) -> None:
    off = MediaSaver(DownloadOptions(dir=tmp_path, download=False), "5511900000001")
    assert off.wants(message()) is False
    saver = MediaSaver(DownloadOptions(dir=tmp_path, timeout=0.05), "5511900000001")
    assert saver.wants(message()) and not saver.wants(message(kind="text"))

    async def never() -> bytes:
        await asyncio.Event().wait()
        return b""
    slow = await saver.save(message(), never)
    assert (slow.media.error, slow.media.path) == ("download_failed", None)  # type: ignore[union-attr]
    (tmp_path / "5511900000001").write_text("a file where the folder should be")

    async def jpeg() -> bytes:
        return b"jpeg"
    unwritable = await saver.save(message(), jpeg)
    assert unwritable.media.error == "download_failed"  # type: ignore[union-attr]
