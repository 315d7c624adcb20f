"""Outgoing media policy and loading: where media may come from, how big it may be, fetching URLs safely.

Anyone who can publish to the broker can ask for a send, so a media source is checked before the
send is accepted (and again where the bytes are read):
- `path` only inside `outgoing.media_dir` (resolved, symlinks followed, so `..` and links cannot
  escape); no media_dir configured means paths are refused;
- `base64` must decode and fit `outgoing.max_media_bytes`;
- `url` only http(s), no credentials in it; fetched with a size cap while streaming, a timeout, at most
  a few redirects, each to http(s) again; with `outgoing.block_private_urls`, any address in a private,
  loopback, link-local or reserved range is refused (checked on the resolved addresses).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from .errors import BridgeError, ErrorCode
from .model import MEDIA_KINDS, MediaSource, OutgoingMessage

MAX_REDIRECTS = 3
FETCH_TIMEOUT = 60.0


class MediaRefused(BridgeError):
    """A media source the policy refuses: `MediaRefused(code, message)`; the message names the field."""


@dataclass(frozen=True)
class MediaPolicy:
    max_bytes: int
    media_dir: Path | None = None
    block_private_urls: bool = False


def check_message(message: OutgoingMessage, policy: MediaPolicy) -> None:
    """Raise MediaRefused unless every media source of the message is acceptable."""
    for kind in MEDIA_KINDS:
        source = getattr(message, kind)
        if source is not None:
            check_source(kind, source, policy)


def check_source(field: str, source: MediaSource, policy: MediaPolicy) -> None:
    if source.base64 is not None:
        decoded_size(field, source.base64, policy.max_bytes)
    elif source.path is not None:
        resolve_path(field, source.path, policy)
    elif source.url is not None:
        check_url(f"{field}.url", source.url)


def decoded_size(field: str, data: str, max_bytes: int) -> int:
    """The decoded size of base64 `data`; too big or not base64 is refused without decoding twice."""
    if len(data) * 3 // 4 > max_bytes + 3:
        raise MediaRefused(ErrorCode.TOO_LARGE, f"{field}.base64: more than outgoing.max_media_bytes ({max_bytes} bytes)")
    try:
        size = len(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError):
        raise MediaRefused(ErrorCode.INVALID_REQUEST, f"{field}.base64: not valid base64") from None
    if size > max_bytes:
        raise MediaRefused(ErrorCode.TOO_LARGE, f"{field}.base64: {size} bytes; the limit is {max_bytes}")
    return size


def resolve_path(field: str, path: str, policy: MediaPolicy) -> Path:
    """The real file a media `path` names, if it lies inside `media_dir`; else MediaRefused."""
    if policy.media_dir is None:
        raise MediaRefused(ErrorCode.FORBIDDEN, f"{field}.path: media paths are disabled (set outgoing.media_dir)")
    if "\x00" in path:
        raise MediaRefused(ErrorCode.INVALID_REQUEST, f"{field}.path: contains a NUL byte")
    root = Path(os.path.realpath(policy.media_dir))
    target = Path(os.path.realpath(root / path))  # an absolute `path` replaces root, then must be inside it
    if target != root and root not in target.parents:
        raise MediaRefused(ErrorCode.FORBIDDEN, f"{field}.path: outside outgoing.media_dir")
    if not target.is_file():
        raise MediaRefused(ErrorCode.INVALID_REQUEST, f"{field}.path: no such file in outgoing.media_dir")
    size = target.stat().st_size
    if size > policy.max_bytes:
        raise MediaRefused(ErrorCode.TOO_LARGE, f"{field}.path: {size} bytes; the limit is {policy.max_bytes}")
    return target


def check_url(field: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise MediaRefused(ErrorCode.FORBIDDEN, f"{field}: only http and https URLs are allowed")
    if not parts.hostname:
        raise MediaRefused(ErrorCode.INVALID_REQUEST, f"{field}: has no host")
    if parts.username or parts.password:
        raise MediaRefused(ErrorCode.FORBIDDEN, f"{field}: credentials in URLs are not allowed")


def is_public_address(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast
                or ip.is_unspecified)


async def _refuse_private(field: str, host: str, port: int) -> None:
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise MediaRefused(ErrorCode.INVALID_REQUEST, f"{field}: cannot resolve {host} ({exc.strerror})") from None
    for info in infos:
        if not is_public_address(str(info[4][0])):
            raise MediaRefused(ErrorCode.FORBIDDEN, f"{field}: {host} is a private address (outgoing.block_private_urls)")


async def fetch_url(url: str, policy: MediaPolicy, field: str = "url", timeout: float = FETCH_TIMEOUT) -> bytes:
    """GET `url` within the policy: http(s) only, size-capped while streaming, bounded redirects."""
    import httpx  # a neonize dependency; only the fetching side needs it

    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            check_url(field, url)
            parts = urlsplit(url)
            if policy.block_private_urls:
                await _refuse_private(field, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
            async with client.stream("GET", url) as response:
                if response.is_redirect:
                    url = urljoin(url, response.headers.get("location", ""))
                    continue
                if response.status_code >= 400:
                    raise MediaRefused(ErrorCode.INVALID_REQUEST, f"{field}: HTTP {response.status_code}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                    raise MediaRefused(ErrorCode.TOO_LARGE, f"{field}: {declared} bytes; the limit is {policy.max_bytes}")
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > policy.max_bytes:
                        raise MediaRefused(ErrorCode.TOO_LARGE, f"{field}: more than {policy.max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        raise MediaRefused(ErrorCode.INVALID_REQUEST, f"{field}: more than {MAX_REDIRECTS} redirects")


async def load(field: str, source: MediaSource, policy: MediaPolicy) -> bytes:
    """The bytes of a media source, checked against the policy again at the moment they are read."""
    if source.base64 is not None:
        decoded_size(field, source.base64, policy.max_bytes)
        return base64.b64decode(source.base64, validate=True)
    if source.path is not None:
        target = resolve_path(field, source.path, policy)
        return await asyncio.to_thread(target.read_bytes)
    return await fetch_url(source.url or "", policy, f"{field}.url")
