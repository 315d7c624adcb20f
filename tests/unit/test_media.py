"""Media policy: paths confined to media_dir (no traversal, no symlink escape), base64 and size limits,
URL schemes and private addresses; fetching against a local HTTP server with caps and redirects."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import pytest

from wa_mqtt.media import MediaPolicy, MediaRefused, check_message, fetch_url, is_public_address, load
from wa_mqtt.model import MediaSource, OutgoingMessage


@pytest.fixture
def media_dir(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    root.mkdir()
    (root / "cat.jpg").write_bytes(b"\xff\xd8cat")
    (root / "big.bin").write_bytes(b"x" * 2048)
    (tmp_path / "secret.txt").write_text("do not send")
    (root / "escape").symlink_to(tmp_path / "secret.txt")
    (root / "sub").mkdir()
    return root


def send(**media: object) -> OutgoingMessage:
    return OutgoingMessage.model_validate({"to": "5511999999999", "image": media})


@pytest.mark.parametrize(("path", "code"), [
    ("cat.jpg", None), ("sub/../cat.jpg", None),
    ("../secret.txt", "forbidden"), ("/etc/passwd", "forbidden"), ("escape", "forbidden"),
    ("missing.jpg", "invalid_request"), ("sub", "invalid_request"), ("big.bin", "too_large"),
    ("cat.jpg\x00.png", "invalid_request"),
])
def test_paths_stay_inside_media_dir(media_dir: Path, path: str, code: str | None) -> None:
    policy = MediaPolicy(max_bytes=1024, media_dir=media_dir)
    if code is None:
        check_message(send(path=path), policy)
        assert asyncio.run(load("image", MediaSource(path=path), policy)).startswith(b"\xff\xd8")
    else:
        with pytest.raises(MediaRefused) as info:
            check_message(send(path=path), policy)
        assert info.value.code == code and "image.path" in str(info.value)


def test_paths_refused_without_media_dir() -> None:
    with pytest.raises(MediaRefused) as info:
        check_message(send(path="cat.jpg"), MediaPolicy(max_bytes=1024))
    assert info.value.code == "forbidden"


@pytest.mark.parametrize(("data", "code"), [
    (base64.b64encode(b"ok").decode(), None),
    ("not base64!!", "invalid_request"),
    (base64.b64encode(b"x" * 2000).decode(), "too_large"),
])
def test_base64(data: str, code: str | None) -> None:
    policy = MediaPolicy(max_bytes=1024)
    if code is None:
        check_message(send(base64=data), policy)
    else:
        with pytest.raises(MediaRefused) as info:
            check_message(send(base64=data), policy)
        assert info.value.code == code and "image.base64" in str(info.value)


@pytest.mark.parametrize(("url", "code"), [
    ("https://example.org/a.jpg", None), ("file:///etc/passwd", "forbidden"), ("ftp://x/y", "forbidden"),
    ("gopher://x", "forbidden"), ("https://user:pw@example.org/a", "forbidden"), ("http:///nohost", "invalid_request"),
])
def test_url_schemes(url: str, code: str | None) -> None:
    if code is None:
        check_message(send(url=url), MediaPolicy(max_bytes=10))
    else:
        with pytest.raises(MediaRefused) as info:
            check_message(send(url=url), MediaPolicy(max_bytes=10))
        assert info.value.code == code


@pytest.mark.parametrize(("address", "public"), [
    ("8.8.8.8", True), ("127.0.0.1", False), ("10.1.2.3", False), ("192.168.1.1", False), ("169.254.1.1", False),
    ("::1", False), ("::ffff:127.0.0.1", False), ("fd00::1", False), ("2606:4700::1111", True), ("0.0.0.0", False),
])
def test_private_ranges(address: str, public: bool) -> None:
    assert is_public_address(address) is public


@pytest.mark.parametrize(("path", "block", "code"), [
    ("/small", False, None), ("/to-small", False, None), ("/big", False, "too_large"),
    ("/to-file", False, "forbidden"), ("/loop", False, "invalid_request"), ("/missing", False, "invalid_request"),
    ("/small", True, "forbidden"),
])
async def test_fetch(media_server: str, path: str, block: bool, code: str | None) -> None:
    policy = MediaPolicy(max_bytes=1000, block_private_urls=block)
    if code is None:
        assert await fetch_url(media_server + path, policy) == b"hello"
    else:
        with pytest.raises(MediaRefused) as info:
            await fetch_url(media_server + path, policy)
        assert info.value.code == code
