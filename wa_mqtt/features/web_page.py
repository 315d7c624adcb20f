"""The web page: every account live, pairing with the QR on screen, the actions, recent events, health.

An aiohttp server on `web.host`:`web.port` serves the static page (wa_mqtt/web/static) and a small API:

- `GET api/state`: the snapshot (accounts, recent events, health) as JSON;
- `GET api/events`: the same, then every change, pushed as server-sent events (`snapshot`, `account`,
  `account_removed`, `event`, `health`); the page never polls;
- `GET api/accounts/<phone>/qr.png`: the QR on offer, as an image;
- `POST api/request/<target>/<command>`: a request, exactly as `<base>/<target>/request/<command>` on
  MQTT: it is emitted as `LocalRequest` and served by the request server (same queue, table, validation
  and error bodies); the answer is the response body, with an HTTP status by its `code` (web/view.py).

Who may use it is web/access.py's rule, applied to every request. The listening socket is bound in
`start()`: a port already taken stops the bridge at start (`StartupError`, exit 2). `drain()` closes the
event streams and the server, so no action is taken once the bridge is stopping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from aiohttp import web

from .. import __version__
from .. import events as ev
from ..bus import EventBus
from ..config import Config
from ..mqtt.api import encode
from ..qr import qr_png
from ..startup import StartupError
from ..tasks import BackgroundTasks
from ..web.access import COOKIE, Seen, Verdict, base_href, check
from ..web.board import Board
from ..web.view import Counters, http_status

if TYPE_CHECKING:
    from ..accounts.manager import AccountManager

log = logging.getLogger(__name__)
OWNER = "web page"
COALESCE = 0.05  # seconds: changes of one account within this go out as one update
HEALTH_INTERVAL = 2.0  # seconds between two looks at the bridge's health while a page is open
KEEPALIVE = 15.0  # seconds of silence after which a stream sends a comment (proxies close idle streams)
REQUEST_TIMEOUT = 300.0  # seconds a page's request may take (a send waits for WhatsApp)
STREAM_BUFFER = 2000  # updates held for a slow page; beyond it its stream is closed (it reconnects: a snapshot)
WEB_REPLY_KEY = "web"  # the reply reference of a page's send, {"web": true}: its later outcome is not answered on MQTT
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'self'; form-action 'self'; base-uri 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _static(name: str) -> bytes:
    return resources.files("wa_mqtt.web").joinpath("static", name).read_bytes()


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or a StartupError saying what to change."""
    try:
        family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        raise StartupError(f"the web page cannot listen on {host or '*'}:{port} ({exc.strerror or exc}): set "
                           "web.port to a free port, or web.enabled: false") from None


@dataclass(eq=False)
class _Stream:
    """One open page: what is pushed to it, in order."""

    queue: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(STREAM_BUFFER))


def sse(name: str, data: object) -> bytes:
    """One server-sent event."""
    return b"event: " + name.encode() + b"\ndata: " + encode(data) + b"\n\n"


class WebPage:
    """The web page's server; see the module docstring."""

    def __init__(self, bus: EventBus, config: Config, manager: AccountManager, clock: Callable[[], datetime]) -> None:
        self._bus = bus
        self._config = config
        self._web = config.web
        self._manager = manager
        self._clock = clock
        self._board = Board()
        self._streams: set[_Stream] = set()
        self._dirty: set[str] = set()
        self._flush: asyncio.TimerHandle | None = None
        self._health: dict[str, object] = {}
        self._tasks = BackgroundTasks(log)
        self._runner: web.AppRunner | None = None
        self._sock: socket.socket | None = None
        self._page = _static("index.html").decode()

    # -- the extension ----------------------------------------------------------------------------
    def start(self) -> None:
        self._sock = bind(self._web.host, self._web.port)
        on = self._bus.subscribe
        on(ev.StatusChanged, lambda e: self._changed(e.status.phone), OWNER)
        on(ev.StatsChanged, self._on_stats, OWNER)
        on(ev.AccountAdded, lambda e: self._changed(e.phone), OWNER)
        on(ev.AccountDropped, self._on_dropped, OWNER)
        on(ev.PairingOffered, self._on_pairing, OWNER)
        on(ev.PairingCleared, self._on_pairing_cleared, OWNER)
        on(ev.BridgeEventPublished, self._on_bridge_event, OWNER)
        on(ev.SendCompleted, lambda e: self._on_send_outcome(e.reply, "queued_send_sent", {"phone": e.phone, "id": e.id}),
           OWNER)
        on(ev.SendFailed, lambda e: self._on_send_outcome(
            e.reply, "queued_send_failed", {"phone": e.phone, "code": e.code, "error": e.error}), OWNER)
        on(ev.ConfigReloaded, self._on_config, OWNER)
        self._tasks.spawn(self._serve(self._sock), "web-page")

    async def drain(self) -> None:
        """Close the streams and the server: no more actions once the bridge is stopping."""
        for stream in list(self._streams):
            self._close(stream)
        if self._runner is not None:
            await self._runner.cleanup()
        await self._tasks.cancel()
        if self._sock is not None:
            self._sock.close()

    async def stop(self) -> None:
        self._bus.unsubscribe(OWNER)
        if self._flush is not None:
            self._flush.cancel()

    async def _serve(self, sock: socket.socket) -> None:
        app = web.Application(middlewares=[self._guard], client_max_size=self._config.mqtt.max_payload_bytes + 4096)
        app.on_response_prepare.append(_secure)
        app.add_routes([
            web.get("/", self._index),
            web.get("/static/{name}", self._asset),
            web.post("/login", self._login),
            web.get("/api/state", self._state),
            web.get("/api/events", self._stream),
            web.get("/api/accounts/{phone}/qr.png", self._qr),
            web.post("/api/request/{target}/{command}", self._request),
        ])
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        host, port = sock.getsockname()[:2]
        guard = ("only Home Assistant's ingress proxy" if self._web.ingress_proxy
                 else "token required" if self._web.token else "this machine only")
        log.info("web page on http://%s:%d/ (%s)", f"[{host}]" if ":" in host else host, port, guard)
        self._tasks.spawn(self._watch_health(), "web-health")

    # -- who may ----------------------------------------------------------------------------------
    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        auth = request.headers.get("Authorization", "")
        seen = Seen(remote=request.remote, host=request.headers.get("Host"),
                    bearer=auth[7:].strip() if auth[:7].lower() == "bearer " else None,
                    cookie=request.cookies.get(COOKIE), query_token=request.query.get("token"),
                    origin=request.headers.get("Origin") if request.method != "GET" else None)
        verdict, why = check(self._web, seen)
        if verdict is Verdict.UNAUTHORIZED and request.path in ("/login", "/static/style.css"):  # how to log in
            verdict, why = check(self._web, Seen(seen.remote, seen.host, bearer=self._web.token, origin=seen.origin))
        response: web.StreamResponse
        if verdict is not Verdict.OK:
            log.debug("web: %s %s from %s refused: %s", request.method, request.path, request.remote, why)
            response = self._refused(request, verdict, why)
        elif seen.query_token is not None and request.method == "GET":  # the token in a link: keep it as a cookie
            response = web.HTTPSeeOther(request.path.rsplit("/", 1)[-1] or "./")  # relative: works behind a prefix
            self._set_cookie(response, request)
        else:
            response = await handler(request)
        return response

    def _refused(self, request: web.Request, verdict: Verdict, why: str) -> web.Response:
        status = 401 if verdict is Verdict.UNAUTHORIZED else 403
        if request.path == "/" and verdict is Verdict.UNAUTHORIZED:  # the page itself: ask for the token
            return web.Response(status=401, body=_static("login.html"), content_type="text/html")
        return web.json_response({"status": "error", "code": verdict.value, "error": why}, status=status)

    def _base(self, request: web.Request) -> str:
        return base_href(request.headers.get("X-Ingress-Path") if self._web.ingress_proxy else None)

    def _set_cookie(self, response: web.StreamResponse, request: web.Request) -> None:
        assert self._web.token is not None
        response.set_cookie(COOKIE, self._web.token, httponly=True, samesite="Strict", secure=request.secure,
                            path="/", max_age=400 * 86400)

    # -- the page ---------------------------------------------------------------------------------
    async def _index(self, request: web.Request) -> web.Response:
        page = self._page.replace('<base href="./">', f'<base href="{self._base(request)}">')
        return web.Response(text=page, content_type="text/html")

    async def _asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=_static(name), content_type=STATIC[name])

    async def _login(self, request: web.Request) -> web.StreamResponse:
        if self._web.token is None:
            return web.HTTPSeeOther(self._base(request))
        form = parse_qs((await request.read()).decode("utf-8", "replace"))
        if check(self._web, Seen(request.remote, request.headers.get("Host"),
                                 bearer=(form.get("token") or [""])[0])) != (Verdict.OK, ""):
            log.info("web: a wrong token was given at login from %s", request.remote)
            return web.json_response({"status": "error", "code": "unauthorized", "error": "wrong token"}, status=401)
        response = web.HTTPSeeOther(self._base(request))
        self._set_cookie(response, request)
        return response

    async def _qr(self, request: web.Request) -> web.Response:
        code = self._board.qr(request.match_info["phone"])
        if code is None:
            return web.json_response({"status": "error", "code": "not_found", "error": "no QR on offer"}, status=404)
        return web.Response(body=qr_png(code, border=4), content_type="image/png")

    async def _state(self, _request: web.Request) -> web.Response:
        return web.Response(body=encode(await self._snapshot()), content_type="application/json")

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        stream = _Stream()
        self._streams.add(stream)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"})
        try:
            await response.prepare(request)
            await response.write(sse("snapshot", await self._snapshot()))
            while True:
                try:
                    chunk = await asyncio.wait_for(stream.queue.get(), KEEPALIVE)
                except TimeoutError:
                    chunk = b": keepalive\n\n"
                if chunk is None:
                    break
                await response.write(chunk)
        except ConnectionResetError:
            pass  # the page went away
        finally:
            self._streams.discard(stream)
        return response

    async def _request(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            return web.json_response({"status": "error", "code": "invalid_request",
                                      "error": "send the request as Content-Type: application/json"}, status=415)
        body = await self.ask(request.match_info["target"], request.match_info["command"], await request.read())
        return web.Response(body=encode(body), status=http_status(body), content_type="application/json")

    async def ask(self, target: str, command: str, payload: bytes) -> dict[str, object]:
        """A request through the request layer, as MQTT's `<target>/request/<command>`: its response body."""
        answered: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()

        def answer(body: dict[str, object]) -> None:
            if not answered.done():
                answered.set_result(body)

        self._bus.emit(ev.LocalRequest(target, command, payload, answer, {WEB_REPLY_KEY: True}))
        try:
            return await asyncio.wait_for(answered, REQUEST_TIMEOUT)
        except TimeoutError:
            return {"status": "error", "code": "busy", "error": f"no answer within {REQUEST_TIMEOUT:g} s"}

    # -- what is shown ----------------------------------------------------------------------------
    async def _snapshot(self) -> dict[str, object]:
        if not self._health:
            await self._look_at_health()
        accounts = [view for phone in self._manager.phones() if (view := self._account(phone)) is not None]
        return {"version": __version__, "engine": self._config.engine, "accounts": accounts,
                "events": self._board.events, "health": self._health}

    def _account(self, phone: str) -> dict[str, object] | None:
        supervisor = self._manager.find(phone)
        if supervisor is None:
            return None
        counters = Counters(supervisor.messages_in, supervisor.messages_out, supervisor.account.reconnects)
        return self._board.card(supervisor.status, counters)

    def _push(self, name: str, data: object) -> None:
        if not self._streams:
            return
        chunk = sse(name, data)
        for stream in list(self._streams):
            try:
                stream.queue.put_nowait(chunk)
            except asyncio.QueueFull:
                log.info("web: a page is not reading its updates; its stream is closed (it will reconnect)")
                self._close(stream)

    def _close(self, stream: _Stream) -> None:
        self._streams.discard(stream)
        while not stream.queue.empty():
            stream.queue.get_nowait()
        stream.queue.put_nowait(None)

    def _changed(self, phone: str) -> None:
        """Push the account's card soon: many changes of one account (or of many) go out together. With
        no page open, nothing: a page that opens starts from a snapshot taken after it is listed."""
        if not self._streams:
            return
        self._dirty.add(phone)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(COALESCE, self._push_changed)

    def _push_changed(self) -> None:
        self._flush = None
        dirty, self._dirty = self._dirty, set()
        for phone in sorted(dirty):
            view = self._account(phone)
            if view is None:
                self._push("account_removed", {"phone": phone})
            else:
                self._push("account", view)

    def _on_stats(self, event: ev.StatsChanged) -> None:
        supervisor = self._manager.find(event.phone)
        if supervisor is not None:
            self._board.counted(event.phone, supervisor.messages_in, supervisor.messages_out, self._clock())
        self._changed(event.phone)

    def _on_dropped(self, event: ev.AccountDropped) -> None:
        self._board.forget(event.phone)
        self._changed(event.phone)

    def _on_pairing(self, event: ev.PairingOffered) -> None:
        self._board.offer(event.phone, event.kind, event.code)
        self._changed(event.phone)

    def _on_pairing_cleared(self, event: ev.PairingCleared) -> None:
        self._board.clear(event.phone)
        self._changed(event.phone)

    def _on_bridge_event(self, event: ev.BridgeEventPublished) -> None:
        self._recent(event.type, event.data)

    def _on_send_outcome(self, reply: ev.Reply, what: str, data: dict[str, object]) -> None:
        """A page's send that waited in the outbox went out, or was given up: the page's own answer to it."""
        if reply.get(WEB_REPLY_KEY) is True:
            self._recent(what, data)

    def _recent(self, type_: str, data: Mapping[str, object]) -> None:
        phone = data.get("phone")
        account = phone if isinstance(phone, str) and self._manager.find(phone) is not None else None
        self._push("event", self._board.recent(type_, data, self._clock(), account))
        if account is not None:
            self._changed(account)

    def _on_config(self, event: ev.ConfigReloaded) -> None:
        self._config = event.config  # web.* itself needs a restart (RESTART_KEYS): self._web stays

    async def _watch_health(self) -> None:
        """While a page is open, the `health` request's figures, pushed when they change."""
        while True:
            await asyncio.sleep(HEALTH_INTERVAL)
            if self._streams:
                before = _steady(self._health)
                await self._look_at_health()
                if _steady(self._health) != before:
                    self._push("health", self._health)

    async def _look_at_health(self) -> None:
        body = await self.ask("bridge", "health", b"")
        data = body.get("data")
        if isinstance(data, dict):
            data.pop("accounts", None)  # the cards show those
            if isinstance(waiting := data.get("requests_waiting"), int):
                data["requests_waiting"] = max(0, waiting - 1)  # not counting this `health` request itself
            self._health = data


async def _secure(_request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def _steady(health: dict[str, Any]) -> str:
    """The health figures less the uptime, which changes every time."""
    with contextlib.suppress(TypeError, ValueError):
        return json.dumps({k: v for k, v in health.items() if k != "uptime"}, sort_keys=True)
    return ""
