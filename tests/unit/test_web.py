"""The web page's pure parts: who may use it (web/access.py), its `web` config rules, what it shows
(web/view.py), and the sim's scan of what the page shows."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from wa_mqtt.config import ConfigError, WebConfig
from wa_mqtt.config_loading import build_config
from wa_mqtt.engines.base import EngineError, Paired, Qr
from wa_mqtt.engines.sim import SimEngine
from wa_mqtt.errors import ErrorCode
from wa_mqtt.model import AccountState, Status
from wa_mqtt.web.access import Seen, Verdict, base_href, check, host_name
from wa_mqtt.web.board import Board
from wa_mqtt.web.view import Counters, LastEvent, Pairing, account_view, http_status

TOKEN = "a-long-enough-secret-token"
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("host", ["0.0.0.0", "", "192.168.1.5", "::", "bridge.lan"])
def test_a_host_other_than_loopback_needs_a_token_or_the_ingress_proxy(host: str) -> None:
    with pytest.raises(ConfigError, match=r"web: .*not a loopback address: set web.token"):
        build_config({"web": {"host": host}}, environ={})
    assert build_config({"web": {"host": host, "token": TOKEN}}, environ={}).web.token == TOKEN
    assert build_config({"web": {"host": host, "ingress_proxy": "172.30.32.2"}}, environ={}).web.host == host
    assert not build_config({"web": {"host": host, "enabled": False}}, environ={}).web.enabled


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost", "LOCALHOST"])
def test_a_loopback_host_needs_no_token(host: str) -> None:
    assert build_config({"web": {"host": host}}, environ={}).web.host == host


def test_the_token_is_a_secret_masked_everywhere_and_not_a_short_one() -> None:
    config = build_config({}, environ={"WA_MQTT_WEB__TOKEN": TOKEN})
    assert config.web.token == TOKEN and config.masked()["web"]["token"] == "***"
    assert TOKEN not in str(config.masked())
    with pytest.raises(ConfigError, match=r"web\.token: .*at least 16 characters"):
        build_config({"web": {"token": "short"}}, environ={})
    with pytest.raises(ConfigError, match=r"web\.ingress_proxy: .*one IP address"):
        build_config({"web": {"ingress_proxy": "supervisor"}}, environ={})
    defaults = build_config({}, environ={}).web
    assert (defaults.enabled, defaults.host, defaults.port, defaults.token) == (True, "127.0.0.1", 8099, None)


def seen(**fields: object) -> Seen:
    values: dict[str, object] = {"remote": "127.0.0.1", "host": "127.0.0.1:8099"} | fields
    return Seen(**values)  # type: ignore[arg-type]  # the test's own keyword values


def test_access_on_loopback_without_a_token_checks_host_and_origin() -> None:
    web = WebConfig()
    assert check(web, seen()) == (Verdict.OK, "")
    assert check(web, seen(host="localhost:8099", origin="http://localhost:8099"))[0] is Verdict.OK
    assert check(web, seen(host="[::1]:8099"))[0] is Verdict.OK
    # a site whose name was rebound to 127.0.0.1, and a cross-site POST
    assert check(web, seen(host="attacker.example:8099"))[0] is Verdict.FORBIDDEN
    assert check(web, seen(host=None))[0] is Verdict.FORBIDDEN
    assert check(web, seen(origin="http://attacker.example"))[0] is Verdict.FORBIDDEN


def test_access_with_a_token_takes_it_from_header_cookie_or_link_only_when_right() -> None:
    web = WebConfig(host="0.0.0.0", token=TOKEN)
    assert check(web, seen(host="bridge.lan:8099"))[0] is Verdict.UNAUTHORIZED
    for where in ("bearer", "cookie", "query_token"):
        assert check(web, seen(host="bridge.lan:8099", **{where: TOKEN}))[0] is Verdict.OK
        assert check(web, seen(host="bridge.lan:8099", **{where: TOKEN + "x"}))[0] is Verdict.UNAUTHORIZED
    assert check(web, seen(host="bridge.lan", bearer=TOKEN, origin="http://evil.example"))[0] is Verdict.FORBIDDEN


def test_access_through_ingress_answers_the_proxy_alone() -> None:
    web = WebConfig(host="0.0.0.0", ingress_proxy="172.30.32.2")
    assert check(web, seen(remote="172.30.32.2", host="172.30.33.4:8099"))[0] is Verdict.OK
    assert check(web, seen(remote="172.30.32.1", bearer=TOKEN))[0] is Verdict.FORBIDDEN
    assert check(web, seen(remote="127.0.0.1"))[0] is Verdict.FORBIDDEN


def test_base_href_follows_the_ingress_prefix_and_nothing_else() -> None:
    assert base_href("/api/hassio_ingress/Ab-c_1") == "/api/hassio_ingress/Ab-c_1/"
    assert base_href("/api/hassio_ingress/x/") == "/api/hassio_ingress/x/"
    for bad in (None, "", "/", "https://evil.example/", "//evil.example", "/a//b", "/a/../b", '/x"><script>',
                "relative", "/" + "a" * 300):
        assert base_href(bad) == "./", bad
    assert host_name("[::1]:8099") == "::1" and host_name("localhost:1") == "localhost"


def test_an_account_card_shows_the_status_counters_pairing_and_last_event() -> None:
    status = Status(phone="5511900000001", name="Ana", state=AccountState.DISCONNECTED, since=NOW, updated_at=NOW,
                    engine="sim", reconnect_attempt=2, next_retry_at=NOW, error_code=ErrorCode.DIAL_FAILED)
    view = account_view(status, Counters(3, 4, 5), Pairing("code", "SIM1-0001", 7), LastEvent("paired", NOW))
    assert view["state"] == "disconnected" and view["error_code"] == "dial_failed" and view["error"]
    assert view["next_retry_at"] == "2026-12-04T12:00:00Z" and view["reconnect_attempt"] == 2
    assert (view["messages_in"], view["messages_out"], view["reconnects"]) == (3, 4, 5)
    assert view["pairing"] == {"kind": "code", "code": "SIM1-0001", "serial": 7}
    assert view["last_event"] == {"type": "paired", "at": "2026-12-04T12:00:00Z"}
    qr = account_view(status, Counters(0, 0, 0), Pairing("qr", "secret-qr-text", 8), None)
    assert qr["pairing"] == {"kind": "qr", "serial": 8} and "secret-qr-text" not in str(qr)


def test_a_card_says_who_retries_and_shows_degraded_and_last_heard() -> None:
    """Issue 14 meets the page: a dropped linked session is reconnected by whatsmeow (no `next_retry_at`),
    a pairing window that ran out waits for a person; `degraded` and `last_event_at` (issue 17) are shown."""
    dropped = Status(phone="5511900000001", state=AccountState.DISCONNECTED, since=NOW, updated_at=NOW, engine="sim",
                     error_code=ErrorCode.CONNECTION_LOST)
    assert account_view(dropped, Counters(0, 0, 0), None, None)["reconnects_by_itself"] is True
    timed_out = dropped.model_copy(update={"error_code": ErrorCode.PAIRING_TIMEOUT})
    assert account_view(timed_out, Counters(0, 0, 0), None, None)["reconnects_by_itself"] is False
    backoff = dropped.model_copy(update={"next_retry_at": NOW})
    assert account_view(backoff, Counters(0, 0, 0), None, None)["reconnects_by_itself"] is False
    gap = dropped.model_copy(update={"state": AccountState.CONNECTED, "degraded": True, "last_event_at": NOW})
    view = account_view(gap, Counters(0, 0, 0), None, None)
    assert (view["degraded"], view["last_event_at"], view["reconnects_by_itself"]) == (True, "2026-12-04T12:00:00Z", False)


def test_http_status_by_the_response_code() -> None:
    assert http_status({"status": "ok", "data": {}}) == 200
    expected = {"invalid_json": 400, "invalid_request": 400, "unknown_account": 404, "forbidden": 403,
                "too_large": 413, "busy": 503, "internal_error": 500, "not_connected": 409, "disk_full": 409}
    for code, status in expected.items():
        assert http_status({"status": "error", "code": code}) == status, code


async def test_the_sim_links_only_the_code_on_offer(tmp_path: Path) -> None:
    emitted: list[object] = []
    session = SimEngine().open_session("5511900000001", tmp_path / "store.db", emitted.append)
    await session.start("qr")
    [offered] = [e for e in emitted if isinstance(e, Qr)]
    with pytest.raises(EngineError, match="not the code on offer"):
        await session.sim_control("scan", b'{"code": "sim-qr:5511900000001:2"}')
    assert not [e for e in emitted if isinstance(e, Paired)]
    await session.sim_control("scan", f'{{"code": "{offered.code}"}}'.encode())
    assert [e.phone for e in emitted if isinstance(e, Paired)] == ["5511900000001"]
    await session.stop()
    await asyncio.sleep(0)


def test_the_board_keeps_the_offer_the_last_event_and_the_recent_events() -> None:
    board = Board(recent=2)
    status = Status(phone="5511900000001", state=AccountState.PAIRING, since=NOW, updated_at=NOW, engine="sim")
    board.offer(status.phone, "qr", "qr-1")
    board.offer(status.phone, "qr", "qr-2")
    assert board.qr(status.phone) == "qr-2" and board.card(status, Counters(0, 0, 0))["pairing"] == {
        "kind": "qr", "serial": 2}  # a new QR, a new serial: the page loads the new image
    board.offer(status.phone, "code", "SIM1-0001")
    assert board.qr(status.phone) is None
    board.offer(status.phone, "qr", "")  # nothing on offer
    assert board.card(status, Counters(0, 0, 0))["pairing"] is None
    board.counted(status.phone, 1, 0, NOW)
    assert board.card(status, Counters(1, 0, 0))["last_event"] == {"type": "message_in", "at": "2026-12-04T12:00:00Z"}
    board.counted(status.phone, 1, 1, NOW)
    assert board.card(status, Counters(1, 1, 0))["last_event"]["type"] == "message_out"  # type: ignore[index]
    for n, account in enumerate([status.phone, None, status.phone]):
        board.recent(f"e{n}", {"phone": status.phone}, NOW, account)
    assert [e["type"] for e in board.events] == ["e2", "e1"]  # newest first, bounded
    assert board.card(status, Counters(1, 1, 0))["last_event"]["type"] == "e2"  # type: ignore[index]
    board.offer(status.phone, "qr", "qr-3")
    board.forget(status.phone)
    card = board.card(status, Counters(0, 0, 0))
    assert card["pairing"] is None and card["last_event"] is None
