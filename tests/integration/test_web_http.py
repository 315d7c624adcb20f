"""Black box: the web page's HTTP endpoints on a real bridge with the sim engine. Authentication (token,
cookie, link), the ingress proxy and its path prefix, bad input answered exactly as MQTT answers it, the
live stream, the QR image, every action, and the start refusals (no token off loopback, port taken)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import zxingcpp
from PIL import Image

from wa_mqtt import cli

from harness import BridgeEnv, BridgeProcess, Probe, free_port, wait_port

A = "5511900000001"
ANA = "5511988887777"
TOKEN = "test-token-0123456789abcdef"


class Stream:
    """The page's event stream (`api/events`), read as a browser's EventSource reads it."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.seen: list[tuple[str, Any]] = []

    async def next(self, name: str, predicate: Callable[[Any], bool] = lambda _: True, timeout: float = 10) -> Any:
        for seen_name, data in self.seen:  # already read while looking for another
            if seen_name == name and predicate(data):
                self.seen.remove((seen_name, data))
                return data
        event = ""
        async with asyncio.timeout(timeout):
            async for raw in self.response.content:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = json.loads(line[6:])
                    if event == name and predicate(data):
                        return data
                    self.seen.append((event, data))
        raise AssertionError(f"the stream ended before {name}")


@contextlib.asynccontextmanager
async def stream(http: aiohttp.ClientSession, url: str) -> AsyncIterator[Stream]:
    async with http.get(url + "/api/events") as response:
        assert response.status == 200 and response.content_type == "text/event-stream"
        yield Stream(response)


def read_qr(png: bytes) -> str:
    [found] = zxingcpp.read_barcodes(Image.open(io.BytesIO(png)))
    return found.text


async def post(http: aiohttp.ClientSession, url: str, payload: bytes | dict[str, Any],
               headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    async with http.post(url, data=body, headers={"Content-Type": "application/json", **(headers or {})}) as response:
        return response.status, await response.json()


async def test_the_page_with_a_token_every_endpoint_and_action(env: BridgeEnv, bridge: BridgeProcess) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env.write_config(web={"enabled": True, "host": "127.0.0.1", "port": port, "token": TOKEN})
    bridge.start()
    await asyncio.to_thread(wait_port, port, 20)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with (Probe(env.broker, env.base) as probe, aiohttp.ClientSession() as anon,
                aiohttp.ClientSession(headers=auth) as http):
        await probe.wait_online()
        info = await probe.wait_for(f"{env.base}/bridge/info", lambda r: bool(r.payload))
        assert TOKEN not in info.payload.decode() and info.json()["config"]["web"]["token"] == "***"

        # -- without the token: 401 everywhere; the page itself asks for it
        for method, path in [("GET", "/api/state"), ("GET", "/api/events"), ("GET", "/static/app.js"),
                             ("GET", f"/api/accounts/{A}/qr.png"), ("POST", "/api/request/bridge/health")]:
            async with anon.request(method, url + path, headers={"Content-Type": "application/json"}) as response:
                assert response.status == 401, path
                assert (await response.json())["code"] == "unauthorized"
        async with anon.get(url + "/", headers={"Authorization": "Bearer " + TOKEN + "x"}) as response:
            assert response.status == 401 and 'action="login"' in await response.text()
        async with anon.get(url + "/static/style.css") as response:
            assert response.status == 200  # the sign-in page is styled
        async with anon.post(url + "/login", data={"token": "wrong-token-0123456789"}) as response:
            assert response.status == 401
        # (a cookie jar that keeps cookies of an IP address, as browsers do)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:  # signing in: a cookie
            async with browser.post(url + "/login", data={"token": TOKEN}, allow_redirects=False) as response:
                assert response.status == 303 and "HttpOnly" in response.headers["Set-Cookie"]
                assert "SameSite=Strict" in response.headers["Set-Cookie"]
            async with browser.get(url + "/api/state") as response:
                assert response.status == 200
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:  # a link with the token
            async with browser.get(url + f"/?token={TOKEN}", allow_redirects=False) as response:
                assert response.status == 303 and "token" not in response.headers["Location"]
            async with browser.get(url + "/") as response:
                assert response.status == 200
        async with (aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser,
                    browser.get(url + f"/api/state?token={TOKEN}") as response):  # back where it was, without it
            assert response.status == 200 and response.url.path == "/api/state" and not response.url.query

        # -- the page and its files, all relative, nothing from the internet
        async with http.get(url + "/") as response:
            page = await response.text()
            assert response.status == 200 and '<base href="./">' in page
            assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        assert "http" not in page.split("</head>")[0].replace('http-equiv', '')
        for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
            async with http.get(url + f"/static/{name}") as response:
                assert response.status == 200 and response.content_type == kind
                assert "https://" not in await response.text()
        async with http.get(url + "/static/index.html") as response:
            assert response.status == 404

        # -- bad input: the request layer's own answers, the same as on MQTT
        cases: list[tuple[str, str, bytes | dict[str, Any], int]] = [
            ("bridge", "pair", b'{"phone": ', 400),  # invalid_json
            ("bridge", "pair", {"phone": "12"}, 400),  # invalid_request, naming the field
            ("bridge", "pair", {"phone": A, "method": "fax"}, 400),
            ("bridge", "launch", {}, 400),  # unknown command
            ("nobody", "connect", {}, 404),  # unknown_account
            (A, "connect", {}, 404),  # no such account yet
            (A, "send", {"to": ANA, "text": "x", "image": {"url": "http://x"}}, 400),
        ]
        for target, command, payload, status in cases:
            got_status, body = await post(http, f"{url}/api/request/{target}/{command}", payload)
            over_mqtt = await probe.request(target, command, payload)
            over_mqtt.pop("transaction", None)
            assert (got_status, body) == (status, over_mqtt), (target, command)
        async with http.post(url + "/api/request/bridge/health", data=b"{}",
                             headers={"Content-Type": "text/plain"}) as response:
            assert response.status == 415  # a cross-site form cannot send JSON
        status, body = await post(http, url + "/api/request/bridge/health", {}, {"Origin": "http://evil.example"})
        assert status == 403 and "another site" in body["error"]

        # -- the live stream: pair, scan the QR from the page's image, act, remove
        async with stream(http, url) as events:
            snapshot = await events.next("snapshot")
            assert snapshot["accounts"] == [] and snapshot["health"]["broker_connected"] is True
            async with http.get(url + f"/api/accounts/{A}/qr.png") as response:
                assert response.status == 404
            status, body = await post(http, url + "/api/request/bridge/pair", {"phone": "+" + A, "transaction": 7})
            assert (status, body) == (200, {"status": "ok", "data": {"phone": A, "state": "pairing"}, "transaction": 7})
            card = await events.next("account", lambda a: a["phone"] == A and a["pairing"] is not None)
            assert card["state"] == "pairing" and card["pairing"]["kind"] == "qr"
            async with http.get(url + f"/api/accounts/{A}/qr.png") as response:
                assert response.status == 200 and response.content_type == "image/png"
                qr_text = read_qr(await response.read())
            retained = await probe.wait_for(f"{env.base}/{A}/qr", lambda r: bool(r.payload))
            assert qr_text == retained.payload.decode()
            await probe.sim(A, "scan", {"code": qr_text})
            card = await events.next("account", lambda a: a["state"] == "connected")
            assert card["pairing"] is None and card["name"] == f"Sim {A[-4:]}"
            paired = await events.next("event", lambda e: e["type"] == "paired")
            assert paired["data"]["phone"] == A

            mark = probe.mark()
            status, body = await post(http, f"{url}/api/request/{A}/send", {"to": ANA, "text": "Test from the page"})
            assert status == 200 and body["status"] == "ok" and body["data"]["id"]
            sent = await probe.wait_for(f"{env.base}/sim/{A}/sent", after=mark)
            assert sent.json()["text"] == "Test from the page" and sent.json()["id"] == body["data"]["id"]
            card = await events.next("account", lambda a: a["messages_out"] == 1)
            assert card["last_event"]["type"] == "message_out"

            # a keepalive gap (issue 14) shows on the card, and when WhatsApp was last heard (issue 17)
            await probe.sim(A, "keepalive", {"seconds": 0.5})
            card = await events.next("account", lambda a: a["degraded"] is True)
            assert card["state"] == "connected" and card["last_event_at"] and card["reconnects_by_itself"] is False
            await events.next("account", lambda a: a["degraded"] is False)

            assert (await post(http, f"{url}/api/request/{A}/disconnect", {}))[0] == 200
            await events.next("account", lambda a: a["state"] == "stopped")
            status, body = await post(http, f"{url}/api/request/{A}/send", {"to": ANA, "text": "when back"})
            assert status == 200 and body["data"]["queued"] is True  # waits in the outbox
            assert (await post(http, f"{url}/api/request/{A}/connect", {}))[0] == 200
            await events.next("account", lambda a: a["state"] == "connected")
            later = await events.next("event", lambda e: e["type"] == "queued_send_sent")
            sent_now = [r.json() for r in await probe.wait_count(f"{env.base}/sim/{A}/sent", 2)]
            assert [m["text"] for m in sent_now] == ["Test from the page", "when back"]
            assert later["data"] == {"phone": A, "id": sent_now[1]["id"]}
            # a page's answers, the queued one's later outcome too, are not published on MQTT
            assert not [r for r in probe.received[mark:] if r.topic == f"{env.base}/{A}/response/send"]

            async with http.get(url + "/api/state") as response:
                state = await response.json()
                assert [a["phone"] for a in state["accounts"]] == [A] and state["version"]
                assert {"paired", "account_added"} <= {e["type"] for e in state["events"]}

            status, body = await post(http, url + "/api/request/bridge/remove", {"phone": A})
            assert (status, body["data"]) == (200, {"phone": A, "removed": True})
            assert await events.next("account_removed") == {"phone": A}
            await events.next("event", lambda e: e["type"] == "account_removed")
    assert bridge.stop() == 0


async def test_through_the_ingress_proxy_only_and_under_its_path(env: BridgeEnv, bridge: BridgeProcess) -> None:
    """As in the add-on, with 127.0.0.2 standing for the Supervisor's proxy (172.30.32.2)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env.write_config(web={"enabled": True, "host": "127.0.0.1", "port": port, "ingress_proxy": "127.0.0.2"})
    bridge.start()
    await asyncio.to_thread(wait_port, port, 20)
    prefix = "/api/hassio_ingress/3bXyZ_token-42"
    proxy = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with (Probe(env.broker, env.base) as probe, aiohttp.ClientSession() as direct,
                aiohttp.ClientSession(connector=proxy) as ingress):
        await probe.wait_online()
        for path in ("/", "/api/state", "/static/app.js"):
            async with direct.get(url + path, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                assert response.status == 403, path
        async with ingress.get(url + "/", headers={"X-Ingress-Path": prefix}) as response:
            page = await response.text()
            assert response.status == 200 and f'<base href="{prefix}/">' in page
        for bad in ("//evil.example", "/x/../../etc", 'x"><script>'):
            async with ingress.get(url + "/", headers={"X-Ingress-Path": bad}) as response:
                assert '<base href="./">' in await response.text()
        # every URL of the page is relative to that base: nothing starts at the server's root
        for name in ("index", "app.js"):
            async with ingress.get(url + ("/" if name == "index" else "/static/app.js")) as response:
                text = await response.text()
            assert not [ref for ref in ('href="/', 'src="/', 'fetch("/', 'EventSource("/', "fetch(`/") if ref in text]
        # HA's proxy forwards the browser's Origin and its own Host: not a cross-site request here
        status, body = await post(ingress, url + "/api/request/bridge/health", {},
                                  {"Origin": "http://homeassistant.local:8123"})
        assert status == 200 and body["data"]["broker_connected"] is True

        # pairing with a code: the card shows the code MQTT shows
        async with stream(ingress, url) as events:
            await events.next("snapshot")
            status, body = await post(ingress, url + "/api/request/bridge/pair", {"phone": A, "method": "code"})
            assert status == 200
            card = await events.next("account", lambda a: a["pairing"] is not None)
            retained = await probe.wait_for(f"{env.base}/{A}/pair_code", lambda r: bool(r.payload))
            assert card["pairing"]["kind"] == "code" and card["pairing"]["code"] == retained.payload.decode()
            async with ingress.get(url + f"/api/accounts/{A}/qr.png") as response:
                assert response.status == 404  # a code, not a QR

            # stopping the bridge ends the open streams (first of all: the page is drained first), cleanly
            stopping = asyncio.create_task(asyncio.to_thread(bridge.stop))
            async with asyncio.timeout(20):
                async for _line in events.response.content:
                    pass
            assert await stopping == 0


def _run(env: BridgeEnv) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wa_mqtt", "--config", str(env.config_path)],
                          capture_output=True, text=True, timeout=60, cwd=env.root)


def test_the_bridge_refuses_to_start_open_to_the_network_without_a_token_or_on_a_taken_port(
        env: BridgeEnv, capsys: pytest.CaptureFixture[str]) -> None:
    env.write_config(web={"enabled": True, "host": "0.0.0.0", "port": free_port()})
    assert cli.main(["--config", str(env.config_path)]) == 2  # refused with the config, before anything starts
    assert "invalid configuration: web: " in (err := capsys.readouterr().err) and "set web.token" in err, err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env.write_config(web={"enabled": True, "host": "127.0.0.1", "port": port})
        result = _run(env)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"the web page cannot listen on 127.0.0.1:{port}" in result.stderr and "web.port" in result.stderr


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
