"""Where the configuration holds secrets, and how they are masked: the one list of secret places
(`secret_paths`) that `Config.masked` (bridge/info, `check-config`) and `file_secrets` (the warning
about a world-readable config file) both read; a new secret is added there."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .ai.settings import SECRET_KEYS as AI_SECRET_KEYS

SECRET_MASK = "***"


def mask_url(url: str | None) -> str | None:
    """`mqtt://user:secret@host` → `mqtt://user:***@host`."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}:{SECRET_MASK}@{host}" if parts.username else f":{SECRET_MASK}@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def secret_paths(data: Mapping[str, Any]) -> list[tuple[tuple[str | int, ...], bool]]:
    """Every place config data (a file's own, or `Config`'s JSON dump) may hold a secret, in order:
    (key path, whether it is a URL whose password is the secret). The one list `Config.masked` and
    `file_secrets` both read: a new secret is added here."""
    paths: list[tuple[tuple[str | int, ...], bool]] = [
        (("mqtt", "url"), True), (("proxy",), True), (("store", "url"), True), (("backups", "encryption_key"), False)]
    rules = data.get("auto_reply")
    for index in range(len(rules) if isinstance(rules, list) else 0):  # issue 16: an AI rule's api_key / token
        paths += [(("auto_reply", index, "ai", key), False) for key in AI_SECRET_KEYS]
    paths.append((("web", "token"), False))
    return paths


def at_path(data: Any, path: Sequence[str | int]) -> Any:
    """The value at `path` (keys of mappings, indexes of lists), or None where the data has no such place."""
    for part in path:
        if isinstance(part, int):
            data = data[part] if isinstance(data, list) else None
        else:
            data = data.get(part) if isinstance(data, Mapping) else None
    return data


def file_secrets(data: Mapping[str, Any]) -> list[str]:
    """The keys of a config file's own data that hold a secret (a password in a URL, the backup key...)."""
    found = []
    for path, is_url in secret_paths(data):
        value = at_path(data, path)
        if is_url:
            try:
                secret = isinstance(value, str) and bool(urlsplit(value).password)
            except ValueError:  # not a URL (an unclosed "[" ...): validation says so, not this
                secret = False
        else:
            secret = bool(value)
        if secret:
            found.append(".".join(str(part) for part in path))
    return found
