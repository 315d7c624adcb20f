"""Who may use the web page: the rules, pure (the server applies them to each request).

- With `web.ingress_proxy` (the add-on): only that address is answered, without a token: Home
  Assistant authenticated the user and its ingress proxy is the only way in.
- With `web.token`: every request carries it (`Authorization: Bearer`, the cookie set at login, or
  `?token=` once), compared in constant time; without it the answer is 401.
- Neither (a loopback host): the `Host` header must name a loopback host, so a web site that
  rebinds its DNS name to 127.0.0.1 cannot read the page from the user's browser.
- Every request that changes something (POST) comes from the page itself: an `Origin` of another site is
  refused (403) and a request must be `application/json`, which a cross-site form cannot send.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from enum import StrEnum

from ..config import WebConfig, is_loopback

COOKIE = "wa_mqtt_token"
_INGRESS_PATH = re.compile(r"^(/[A-Za-z0-9_.-]+){1,8}/?$")  # segments of plain characters: never `//host`


class Verdict(StrEnum):
    OK = "ok"
    UNAUTHORIZED = "unauthorized"  # 401: no token, or a wrong one
    FORBIDDEN = "forbidden"  # 403: not the ingress proxy, a foreign Host or Origin


@dataclass(frozen=True, slots=True)
class Seen:
    """What a request shows of itself."""

    remote: str | None  # the peer's address
    host: str | None  # the Host header
    bearer: str | None = None  # from `Authorization: Bearer ...`
    cookie: str | None = None
    query_token: str | None = None
    origin: str | None = None  # the Origin header of a POST


def _same(given: str | None, token: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def host_name(host_header: str) -> str:
    """`[::1]:8099` → `::1`, `localhost:8099` → `localhost`."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def check(config: WebConfig, seen: Seen) -> tuple[Verdict, str]:
    """May this request be served? The verdict and, when refused, why (said in the response)."""
    if config.ingress_proxy is not None:
        if seen.remote != config.ingress_proxy:
            return Verdict.FORBIDDEN, "this page is only reachable through Home Assistant (its ingress proxy)"
        return Verdict.OK, ""
    if config.token is not None:
        if not any(_same(given, config.token) for given in (seen.bearer, seen.cookie, seen.query_token)):
            return Verdict.UNAUTHORIZED, "the web token is missing or wrong (web.token)"
    elif seen.host is None or not is_loopback(host_name(seen.host)):
        return Verdict.FORBIDDEN, "open the page as http://127.0.0.1 or http://localhost (Host header refused)"
    if seen.origin is not None and seen.host is not None and seen.origin not in (
            f"http://{seen.host}", f"https://{seen.host}"):
        return Verdict.FORBIDDEN, f"a request from another site ({seen.origin[:100]}) is refused"
    return Verdict.OK, ""


def base_href(ingress_path: str | None) -> str:
    """Where the page's relative URLs start: the ingress prefix Home Assistant gives in `X-Ingress-Path`
    (checked: a path of plain characters), else the page's own folder."""
    if ingress_path and len(ingress_path) <= 200 and _INGRESS_PATH.match(ingress_path) and ".." not in ingress_path:
        return ingress_path.rstrip("/") + "/"
    return "./"
