"""The account state machine, driven with a fake clock: every state, backoff, flaps, pairing expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from wa_mqtt.accounts import machine as m
from wa_mqtt.config import ReconnectConfig
from wa_mqtt.engines.base import (
    ClientOutdated,
    Connected,
    Crashed,
    Degraded,
    Disconnected,
    LoggedOut,
    PairCode,
    Paired,
    Qr,
    StreamReplaced,
    TemporaryBan,
)
from wa_mqtt.errors import MESSAGES
from wa_mqtt.model import AccountState as S
from wa_mqtt.model import ErrorCode

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
POLICY = ReconnectConfig(initial=1, factor=2, max=300, jitter=0.2, flap_window=60)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def run(acc: m.Account, clock: Clock, *events: m.Input, rand: float = 0.5) -> tuple[m.Account, list[m.Effect]]:
    effects: list[m.Effect] = []
    for event in events:
        acc, step = m.decide(acc, event, clock.now, POLICY, rand, pairing_timeout=160)
        effects.extend(step)
    return acc, effects


def restored(clock: Clock) -> m.Account:
    acc = m.new_account("5511900000001", "sim", clock.now, state=S.CONNECTING)
    acc, effects = run(acc, clock, m.Start())
    assert m.StartSession("qr") in effects
    return acc


@pytest.mark.parametrize(("failures", "rand", "expected"), [
    (1, 0.5, 1.0), (2, 0.5, 2.0), (3, 0.5, 4.0), (9, 0.5, 256.0), (10, 0.5, 300.0), (50, 0.5, 300.0),
    (1, 0.0, 0.8), (1, 1.0, 1.2), (10, 1.0, 360.0),
])
def test_backoff_is_exponential_capped_with_jitter(failures: int, rand: float, expected: float) -> None:
    assert m.backoff_delay(failures, POLICY, rand) == pytest.approx(expected)


def test_restore_connects_and_resets_attempts() -> None:
    clock = Clock()
    acc = restored(clock)
    assert acc.state == S.CONNECTING
    clock.advance(0.3)
    acc, effects = run(acc, clock, Connected(name="Ana"))
    assert acc.state == S.CONNECTED and acc.status.name == "Ana"
    assert acc.status.last_connected == clock.now and acc.status.since == clock.now
    assert m.OnConnected() in effects and m.CancelRetry() in effects


def test_failed_dials_back_off_exponentially_then_connect_clears_error() -> None:
    clock = Clock()
    acc = restored(clock)
    delays = []
    for attempt in range(1, 5):
        acc, effects = run(acc, clock, Disconnected(code=ErrorCode.DIAL_FAILED, error="failed to dial"))
        assert acc.state == S.DISCONNECTED and acc.status.reconnect_attempt == attempt
        assert acc.status.error_code == ErrorCode.DIAL_FAILED
        retry = next(e for e in effects if isinstance(e, m.ScheduleRetry))
        assert acc.status.next_retry_at == retry.at
        delays.append((retry.at - clock.now).total_seconds())
        clock.now = retry.at
        acc, effects = run(acc, clock, m.RetryDue())
        assert acc.state == S.CONNECTING and m.StartSession("qr") in effects
        assert acc.status.reconnect_attempt == attempt  # still shown while it tries again
    assert delays == [1.0, 2.0, 4.0, 8.0]
    acc, _ = run(acc, clock, Connected())
    assert acc.status.error is None and acc.status.reconnect_attempt == 0 and acc.status.next_retry_at is None


def test_flapping_connection_keeps_backing_off() -> None:
    clock = Clock()
    acc = restored(clock)
    acc, _ = run(acc, clock, Connected())
    delays = []
    for _ in range(4):
        clock.advance(5)  # drops 5 s after each connect: a flap
        acc, effects = run(acc, clock, Disconnected())
        retry = next(e for e in effects if isinstance(e, m.ScheduleRetry))
        delays.append((retry.at - clock.now).total_seconds())
        clock.now = retry.at
        acc, _ = run(acc, clock, m.RetryDue(), Connected())
    assert delays == [1.0, 2.0, 4.0, 8.0]
    clock.advance(120)  # stable for longer than the flap window: the next drop starts over
    acc, effects = run(acc, clock, Disconnected())
    assert acc.status.reconnect_attempt == 1
    assert acc.reconnects == 5


def test_pairing_shows_codes_and_expires() -> None:
    clock = Clock()
    acc = m.new_account("5511900000001", "sim", clock.now)
    acc, effects = run(acc, clock, m.Start(by_user=True), Qr(code="q1"))
    assert acc.state == S.PAIRING
    assert m.ShowPairing("qr", "q1") in effects
    expiry = next(e for e in effects if isinstance(e, m.SchedulePairingExpiry))
    assert expiry.at == T0 + timedelta(seconds=160)
    clock.advance(60)
    acc, effects = run(acc, clock, Qr(code="q2"))
    assert m.ShowPairing("qr", "q2") in effects
    assert not any(isinstance(e, m.SchedulePairingExpiry) for e in effects)  # one hard timer
    clock.now = expiry.at
    acc, effects = run(acc, clock, m.PairingExpired())
    assert acc.state == S.DISCONNECTED and acc.status.error_code == ErrorCode.PAIRING_TIMEOUT
    assert acc.status.next_retry_at is None  # no QR loop without a person: connect starts again
    assert m.ClearPairing() in effects and m.StopSession() in effects


def test_pair_code_then_paired_then_connected_clears_pairing() -> None:
    clock = Clock()
    acc = m.new_account("5511900000001", "sim", clock.now)
    acc, effects = run(acc, clock, m.Start(method="code", by_user=True), PairCode(code="ABCD-EFGH"))
    assert m.ShowPairing("code", "ABCD-EFGH") in effects
    acc, effects = run(acc, clock, Paired(phone="5511900000001", name="Ana"), Connected())
    assert acc.state == S.CONNECTED and acc.status.name == "Ana"
    assert any(isinstance(e, m.BridgeEvent) and e.type == "paired" for e in effects)
    assert m.ClearPairing() in effects


@pytest.mark.parametrize(("event", "state", "code", "retries"), [
    (LoggedOut(), S.LOGGED_OUT, ErrorCode.LOGGED_OUT, False),
    (StreamReplaced(), S.CONFLICT, ErrorCode.STREAM_REPLACED, False),
    (ClientOutdated(), S.ERROR, ErrorCode.CLIENT_OUTDATED, False),
    (TemporaryBan(code="101", expires_at=T0 + timedelta(hours=2)), S.BANNED, ErrorCode.TEMPORARY_BAN, True),
    (Crashed(error="exit 70"), S.DISCONNECTED, ErrorCode.ENGINE_CRASHED, True),
    (m.StoreUnusable(error="store.db is not a database"), S.ERROR, ErrorCode.STORE_CORRUPT, False),
])
def test_terminal_and_retrying_events(event: m.Input, state: S, code: ErrorCode, retries: bool) -> None:
    clock = Clock()
    acc = restored(clock)
    acc, _ = run(acc, clock, Connected())
    acc, effects = run(acc, clock, event)
    assert acc.state == state and acc.status.error_code == code and acc.status.error
    schedules = [e for e in effects if isinstance(e, m.ScheduleRetry)]
    assert bool(schedules) == retries
    if isinstance(event, TemporaryBan):
        assert schedules[0].at == event.expires_at and acc.status.next_retry_at == event.expires_at
    if not retries:
        assert m.StopSession() in effects and acc.status.next_retry_at is None


def test_parked_states_ignore_engine_news_and_retries() -> None:
    clock = Clock()
    acc = restored(clock)
    acc, _ = run(acc, clock, StreamReplaced())
    for event in (Disconnected(), m.RetryDue(), Qr(code="x"), StreamReplaced()):
        after, effects = run(acc, clock, event)
        assert after.state == S.CONFLICT and not any(isinstance(e, m.StartSession) for e in effects)
    acc, effects = run(acc, clock, Connected())  # late news from a stopped session
    assert acc.state == S.CONFLICT and effects == [m.StopSession()]
    acc, effects = run(acc, clock, m.Start(by_user=True))  # a person said connect
    assert acc.state == S.CONNECTING and acc.status.error is None and m.StartSession("qr") in effects


def test_stop_and_connect_are_idempotent() -> None:
    clock = Clock()
    acc = restored(clock)
    acc, _ = run(acc, clock, Connected())
    same, effects = run(acc, clock, m.Start(by_user=True))
    assert same == acc and effects == []
    acc, effects = run(acc, clock, m.Stop())
    assert acc.state == S.STOPPED and m.CancelRetry() in effects
    again, effects = run(acc, clock, m.Stop())
    assert again.state == S.STOPPED
    after, effects = run(acc, clock, Disconnected())
    assert after.state == S.STOPPED and effects == []


def test_since_changes_only_with_the_state() -> None:
    clock = Clock()
    acc = restored(clock)
    acc, _ = run(acc, clock, Disconnected())
    since = acc.status.since
    clock.advance(3)
    acc, _ = run(acc, clock, Disconnected(code=ErrorCode.DIAL_FAILED, error="x"))
    assert acc.status.since == since


def test_every_change_is_stamped_with_one_clock_reading() -> None:
    """`updated_at` is the transition's own `now`, never older than `since`."""
    clock = Clock()
    acc = restored(clock)
    for event in (Connected(name="Ana"), Disconnected(), m.RetryDue(), Connected(), m.Stop()):
        clock.advance(1.5)
        before = acc.status
        acc, _ = run(acc, clock, event)
        assert acc.status != before
        assert acc.status.updated_at == clock.now and acc.status.updated_at >= acc.status.since


def test_a_full_disk_shows_in_the_status_without_changing_the_state() -> None:
    clock = Clock()
    acc, _ = run(restored(clock), clock, Connected())
    clock.advance(1)
    acc, effects = run(acc, clock, m.DiskFull("the data disk is full"))
    assert effects == [] and acc.state == S.CONNECTED and acc.status.since == T0
    assert acc.status.error_code == ErrorCode.DISK_FULL and acc.status.error == "the data disk is full"
    assert acc.status.updated_at == clock.now
    # a connection error takes precedence; once it is over the disk shows again
    acc, _ = run(acc, clock, Disconnected(code=ErrorCode.CONNECTION_LOST, error="gone"))
    assert acc.status.error_code == ErrorCode.CONNECTION_LOST
    acc, _ = run(acc, clock, m.RetryDue(), Connected())
    assert acc.state == S.CONNECTED and acc.status.error_code == ErrorCode.DISK_FULL
    acc, _ = run(acc, clock, m.DiskSpaceBack())
    assert acc.state == S.CONNECTED and acc.status.error_code is None and acc.status.error is None


def test_space_back_leaves_an_error_of_the_account_alone() -> None:
    clock = Clock()
    acc, _ = run(restored(clock), clock, m.DiskFull("full"), StreamReplaced())
    assert acc.state == S.CONFLICT and acc.status.error_code == ErrorCode.STREAM_REPLACED
    acc, _ = run(acc, clock, m.DiskSpaceBack())
    assert acc.status.error_code == ErrorCode.STREAM_REPLACED


@pytest.mark.parametrize("events", [
    [Connected()], [Qr(code="q")], [Disconnected()], [], [TemporaryBan(code="403", expires_at=T0 + timedelta(hours=1))],
])
def test_shutdown_stops_a_running_account(events: list[m.Input]) -> None:
    clock = Clock()
    acc, _ = run(restored(clock), clock, *events)
    clock.advance(2)
    acc, effects = run(acc, clock, m.Shutdown())
    assert acc.state == S.STOPPED and acc.status.since == clock.now and acc.status.error_code is None
    assert acc.status.next_retry_at is None
    assert m.CancelRetry() in effects and m.ClearPairing() in effects


@pytest.mark.parametrize("event", [LoggedOut(reason="unlinked"), StreamReplaced(), ClientOutdated(), m.Stop()])
def test_shutdown_keeps_a_state_that_waits_for_a_person(event: m.Input) -> None:
    clock = Clock()
    acc, _ = run(restored(clock), clock, Connected(), event)
    after, effects = run(acc, clock, m.Shutdown())
    assert after == acc and effects == []


@pytest.mark.parametrize(("events", "code", "text"), [
    ([Disconnected(code=ErrorCode.DIAL_FAILED, error="failed to dial")], ErrorCode.DIAL_FAILED, "failed to dial"),
    ([Disconnected()], ErrorCode.CONNECTION_LOST, "connection lost"),
    ([Connected(), LoggedOut()], ErrorCode.LOGGED_OUT, "unlinked from the phone"),
    ([Connected(), m.LogoutDone(reason="logged out on request")], ErrorCode.LOGGED_OUT, "logged out on request"),
    ([StreamReplaced()], ErrorCode.STREAM_REPLACED,
     "the session was opened elsewhere; not fighting it: send connect to take it back"),
    ([ClientOutdated()], ErrorCode.CLIENT_OUTDATED, MESSAGES[ErrorCode.CLIENT_OUTDATED]),
    ([TemporaryBan(code="101", expires_at=T0 + timedelta(hours=2))], ErrorCode.TEMPORARY_BAN,
     "temporary ban 101 until 2026-11-24T12:00:00Z"),
    ([Crashed(error="exit code 70")], ErrorCode.ENGINE_CRASHED, "engine crashed: exit code 70"),
    ([m.StoreUnusable(error="store.db is unusable (x) and no good backup exists")], ErrorCode.STORE_CORRUPT,
     "store.db is unusable (x) and no good backup exists"),
    ([Qr(code="q"), m.PairingExpired()], ErrorCode.PAIRING_TIMEOUT,
     "pairing timed out: nothing was scanned within 160 s; send connect to try again"),
    ([Connected(), m.DiskFull("the data disk is full: held in memory")], ErrorCode.DISK_FULL,
     "the data disk is full: held in memory"),
])
def test_the_published_error_text_of_each_code(events: list[m.Input], code: ErrorCode, text: str) -> None:
    """The machine gives the code (and the engine's words); the published status says this text."""
    clock = Clock()
    acc, _ = run(restored(clock), clock, *events)
    payload = acc.status.payload()
    assert (payload["error_code"], payload["error"]) == (code, text)
    assert list(payload).index("error") + 1 == list(payload).index("error_code")  # the payload's shape is unchanged


def test_a_restored_account_without_a_device_says_why() -> None:
    clock = Clock()
    acc = m.new_account("5511900000001", "sim", clock.now, state=S.LOGGED_OUT, error="no linked device")
    assert (acc.status.error_code, acc.status.error) == (ErrorCode.LOGGED_OUT, "no linked device")
    acc = m.new_account("5511900000001", "sim", clock.now, state=S.CONNECTING)
    acc, _ = run(acc, clock, m.Settle(S.LOGGED_OUT, "send connect to link it"))
    assert acc.status.payload()["error"] == "send connect to link it"


def test_the_machine_returns_codes_and_details_not_text() -> None:
    """Text is looked up where the status is shown (`errors.describe`), from the code and its detail."""
    clock = Clock()
    acc, _ = run(restored(clock), clock, StreamReplaced())
    assert (acc.status.error_code, acc.status.error_detail) == (ErrorCode.STREAM_REPLACED, ())
    assert acc.status.error == MESSAGES[ErrorCode.STREAM_REPLACED]
    acc, _ = run(restored(clock), clock, Crashed(error="exit code 70"))
    assert (acc.status.error_code, acc.status.error_detail) == (ErrorCode.ENGINE_CRASHED, ("exit code 70",))
    acc, _ = run(restored(clock), clock, m.DiskFull())
    assert (acc.status.error_code, acc.status.error) == (ErrorCode.DISK_FULL, MESSAGES[ErrorCode.DISK_FULL])


# -- issue 14: one owner of reconnection; a keepalive gap is `degraded` ---------------------------------
def test_a_drop_the_engine_heals_itself_is_not_restarted_by_the_bridge() -> None:
    """whatsmeow reconnects a logged-in session by itself: no stop/start of ours races it; only a
    watchdog after `engine_grace`, and the engine's own Connected ends it."""
    clock = Clock()
    acc, _ = run(restored(clock), clock, Connected())
    clock.advance(3600)
    acc, effects = run(acc, clock, Disconnected(engine_reconnects=True))
    assert acc.state == S.DISCONNECTED and acc.status.error_code == ErrorCode.CONNECTION_LOST
    assert acc.status.next_retry_at is None and acc.reconnects == 1
    assert not [e for e in effects if isinstance(e, m.StopSession | m.StartSession)]
    [watchdog] = [e for e in effects if isinstance(e, m.ScheduleRetry)]
    assert watchdog.at == clock.now + timedelta(seconds=POLICY.engine_grace)
    clock.advance(2)
    acc, effects = run(acc, clock, Connected())
    assert acc.state == S.CONNECTED and m.CancelRetry() in effects and acc.status.error_code is None


def test_the_bridge_takes_over_when_the_engine_stays_down_past_the_grace() -> None:
    clock = Clock()
    acc, _ = run(restored(clock), clock, Connected(), Disconnected(engine_reconnects=True))
    clock.advance(POLICY.engine_grace)
    acc, effects = run(acc, clock, m.RetryDue())
    assert acc.state == S.CONNECTING and effects == [m.StopSession(), m.StartSession("qr")]
    acc, effects = run(acc, clock, Disconnected(code=ErrorCode.DIAL_FAILED, error="failed to dial"))
    assert acc.status.next_retry_at is not None  # from here on, the bridge's backoff


def test_pairing_drops_stay_with_the_bridges_backoff() -> None:
    """whatsmeow does not reconnect a session that is not logged in."""
    clock = Clock()
    acc, _ = run(restored(clock), clock, Qr(code="q"))
    acc, _ = run(acc, clock, Disconnected(engine_reconnects=True))
    assert acc.state == S.DISCONNECTED and acc.status.next_retry_at is not None


def test_a_keepalive_gap_is_degraded_without_a_state_change() -> None:
    clock = Clock()
    acc, _ = run(restored(clock), clock, Connected())
    since = acc.status.since
    clock.advance(30)
    acc, effects = run(acc, clock, Degraded(degraded=True, missed=1))
    assert (acc.state, acc.status.since, acc.status.degraded) == (S.CONNECTED, since, True)
    assert acc.status.error_code == ErrorCode.KEEPALIVE_TIMEOUT and "1 missed" in (acc.status.error or "")
    assert acc.status.payload()["degraded"] is True and effects == []
    again, _ = run(acc, clock, Degraded(degraded=True, missed=2))
    assert again == acc  # the same gap: nothing new to publish
    clock.advance(10)
    acc, effects = run(acc, clock, Degraded(degraded=False))
    assert (acc.state, acc.status.since, acc.status.degraded, acc.status.error_code) == (S.CONNECTED, since, False, None)
    assert effects == []


def test_a_forced_reconnect_after_a_long_gap_heals_it_and_a_state_change_clears_it() -> None:
    clock = Clock()
    acc, _ = run(restored(clock), clock, Connected(), Degraded(missed=9))
    acc, effects = run(acc, clock, Connected())  # whatsmeow reconnected quietly (an expected disconnect)
    assert acc.state == S.CONNECTED and not acc.status.degraded and acc.status.error_code is None
    assert m.OnConnected() not in effects
    acc, _ = run(acc, clock, Degraded(missed=1), Disconnected(engine_reconnects=True))
    assert acc.state == S.DISCONNECTED and acc.status.degraded is False
    ignored, _ = run(acc, clock, Degraded(missed=1))
    assert ignored == acc  # only a connection can be degraded
