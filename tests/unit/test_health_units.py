"""The pure parts of health monitoring: which status is a problem (alerts), the alert texts, the
watchdog's clock, and the metric families of a snapshot (parsed back with prometheus_client)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from wa_mqtt.alerting import Problem, alert_text, episodes_from_json, episodes_json, problem_of, recovered_text
from wa_mqtt.config import ConfigError
from wa_mqtt.config_loading import build_config
from wa_mqtt.errors import ErrorCode
from wa_mqtt.features.metrics import AccountFigures, Snapshot, families
from wa_mqtt.features.watchdog import period, silent_for
from wa_mqtt.model import AccountState, Status

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
PHONE = "5511900000001"
S = AccountState


def status(state: AccountState, since: datetime = NOW, code: ErrorCode | None = None,
           heard: datetime | None = None, linked: bool = True) -> Status:
    return Status(phone=PHONE, name="Ana", state=state, since=since, updated_at=NOW, engine="sim",
                  error_code=code, last_event_at=heard, last_connected=NOW - timedelta(days=1) if linked else None)


@pytest.mark.parametrize("state", [S.LOGGED_OUT, S.CONFLICT, S.BANNED, S.ERROR])
def test_alerting_states_are_a_problem_at_once(state: AccountState) -> None:
    problem = problem_of(status(state, code=ErrorCode.LOGGED_OUT), None, NOW, 600)
    assert problem is not None and (problem.state, problem.since) == (state, NOW)


@pytest.mark.parametrize("state", [S.CONNECTED, S.STOPPED, S.PAIRING, S.CONNECTING, S.DISCONNECTED])
def test_other_states_are_no_problem_of_themselves(state: AccountState) -> None:
    assert problem_of(status(state), None, NOW, 600) is None


def test_disconnected_counts_after_the_delay_through_retries() -> None:
    down = NOW - timedelta(seconds=599)
    assert problem_of(status(S.DISCONNECTED), down, NOW, 600) is None
    late = problem_of(status(S.CONNECTING), NOW - timedelta(seconds=600), NOW, 600)  # retrying counts too
    assert late is not None and late.state == S.DISCONNECTED and late.since == NOW - timedelta(seconds=600)
    assert problem_of(status(S.STOPPED), NOW - timedelta(hours=1), NOW, 600) is None
    never_linked = status(S.DISCONNECTED, code=ErrorCode.PAIRING_TIMEOUT, linked=False)
    assert problem_of(never_linked, NOW - timedelta(hours=1), NOW, 600) is None  # an abandoned first pairing


def test_alert_texts_name_account_state_error_and_what_to_do() -> None:
    problem = Problem(PHONE, "Ana", S.CONFLICT, "stream_replaced", "the session was opened elsewhere", NOW)
    text = alert_text(problem)
    for part in (f"+{PHONE}", "Ana", "conflict", "stream_replaced", "opened elsewhere", "What to do",
                 "2026-12-01T12:00:00Z"):
        assert part in text
    back = recovered_text(problem, NOW + timedelta(minutes=5))
    assert "recovered" in back and f"+{PHONE}" in back and "2026-12-01T12:05:00Z" in back


def test_alerts_config() -> None:
    config = build_config({"alerts": {"to": ["+5511988887777", "120363012345678901@g.us"], "via": "+5511900000001"}},
                          environ={})
    assert config.alerts.to == ["5511988887777", "120363012345678901@g.us"] and config.alerts.via == PHONE
    assert config.alerts.after == 600 and config.metrics.port is None and config.watchdog.silent_after == 300
    for bad in ({"alerts": {"via": "someone"}}, {"alerts": {"to": ["abc"]}}, {"alerts": {"after": -1}},
                {"metrics": {"port": 0}}, {"watchdog": {"silent_after": -5}}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            build_config(bad, environ={})


def test_watchdog_clock() -> None:
    assert period(300) == 30 and period(1) == 0.25 and period(0.1) == 0.2
    assert silent_for(status(S.CONNECTED, since=NOW - timedelta(seconds=50)), NOW) == 50
    assert silent_for(status(S.CONNECTED, since=NOW - timedelta(hours=1), heard=NOW - timedelta(seconds=5)), NOW) == 5
    assert silent_for(status(S.DISCONNECTED, since=NOW - timedelta(hours=1)), NOW) is None
    quiet = status(S.CONNECTED, since=NOW - timedelta(hours=1))
    assert silent_for(quiet.model_copy(update={"degraded": True}), NOW) is None  # whatsmeow's to heal
    assert silent_for(quiet.model_copy(update={"error_code": ErrorCode.DISK_FULL}), NOW) is None  # engines unread


def test_metric_families_round_trip_through_the_prometheus_parser() -> None:
    snapshot = Snapshot((AccountFigures(PHONE, "connected", 7, 3, 2, 1, 4.5, 30 << 20, degraded=True),
                         AccountFigures("5511900000002", "logged_out", 0, 0, 0, 0, None, None)), spool_depth=12)

    class Fixed(Collector):
        def collect(self) -> Iterator[Metric]:
            return families(snapshot)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(generate_latest(registry).decode())
               for s in family.samples}
    one = (("phone", PHONE),)
    assert samples[("wa_mqtt_account_state", (("phone", PHONE), ("state", "connected")))] == 1
    assert samples[("wa_mqtt_account_state", (("phone", PHONE), ("state", "stopped")))] == 0
    assert samples[("wa_mqtt_account_state", (("phone", "5511900000002"), ("state", "logged_out")))] == 1
    assert samples[("wa_mqtt_account_degraded", one)] == 1
    assert samples[("wa_mqtt_account_degraded", (("phone", "5511900000002"),))] == 0
    assert samples[("wa_mqtt_messages_received_total", one)] == 7
    assert samples[("wa_mqtt_messages_sent_total", one)] == 3
    assert samples[("wa_mqtt_reconnects_total", one)] == 2
    assert samples[("wa_mqtt_outgoing_queue_depth", one)] == 1
    assert samples[("wa_mqtt_last_event_age_seconds", one)] == 4.5
    assert samples[("wa_mqtt_engine_rss_bytes", one)] == 30 << 20
    assert ("wa_mqtt_engine_rss_bytes", (("phone", "5511900000002"),)) not in samples  # unknown: no sample
    assert samples[("wa_mqtt_spool_depth", ())] == 12 and samples[("wa_mqtt_accounts", ())] == 2


def test_open_episodes_survive_a_restart_as_json() -> None:
    episodes = {PHONE: (Problem(PHONE, "Ana", S.BANNED, "temporary_ban", "until noon", NOW), True),
                "5511900000002": (Problem("5511900000002", None, S.DISCONNECTED, None, None, NOW), False)}
    assert episodes_from_json(episodes_json(episodes)) == episodes
    broken = '{"5511900000003": {"state": "melting", "since": "x"}, "5511900000004": 7}'
    assert episodes_from_json(broken) == {}
