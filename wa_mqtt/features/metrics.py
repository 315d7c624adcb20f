"""Prometheus metrics (`metrics.port`; off by default): `GET /metrics` in the text exposition format,
every account's series labelled `phone`.

Served by prometheus_client's own HTTP server (a daemon thread). Nothing is counted twice: at each
scrape the collector asks the event loop for a snapshot of what the bridge already keeps (the
supervisors' statuses and counters, the spool), built on the loop so it never reads state another
thread is changing, and turns it into metric families (`families`, pure).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..config import Config
from ..model import AccountState
from ..mqtt.spool import Spool

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import Metric

    from ..accounts.manager import AccountManager

log = logging.getLogger(__name__)
SNAPSHOT_TIMEOUT = 5.0  # seconds a scrape waits for the event loop
STATES = tuple(state.value for state in AccountState)


@dataclass(frozen=True, slots=True)
class AccountFigures:
    phone: str
    state: str
    messages_in: int
    messages_out: int
    reconnects: int
    queued_outgoing: int
    last_event_age: float | None  # seconds since the last thing heard from WhatsApp
    engine_rss_bytes: int | None
    degraded: bool = False  # connected, but keepalives go unanswered (status `degraded`)


@dataclass(frozen=True, slots=True)
class Snapshot:
    accounts: tuple[AccountFigures, ...]
    spool_depth: int


def families(snapshot: Snapshot) -> Iterator[Metric]:
    """The metric families of one snapshot (pure)."""
    state = GaugeMetricFamily("wa_mqtt_account_state", "1 for the state the account is in, 0 for the others",
                              labels=["phone", "state"])
    connected = GaugeMetricFamily("wa_mqtt_account_connected", "1 while the account is connected", labels=["phone"])
    degraded = GaugeMetricFamily("wa_mqtt_account_degraded",
                                 "1 while the account is connected but its keepalives go unanswered", labels=["phone"])
    messages_in = CounterMetricFamily("wa_mqtt_messages_received", "Messages received from WhatsApp",
                                      labels=["phone"])
    messages_out = CounterMetricFamily("wa_mqtt_messages_sent", "Messages sent to WhatsApp", labels=["phone"])
    reconnects = CounterMetricFamily("wa_mqtt_reconnects", "Connections lost after being connected",
                                     labels=["phone"])
    queued = GaugeMetricFamily("wa_mqtt_outgoing_queue_depth", "Sends waiting in the outbox", labels=["phone"])
    age = GaugeMetricFamily("wa_mqtt_last_event_age_seconds",
                            "Seconds since the last thing heard from WhatsApp", labels=["phone"])
    rss = GaugeMetricFamily("wa_mqtt_engine_rss_bytes", "Resident memory of the account's engine process",
                            labels=["phone"])
    for account in snapshot.accounts:
        for name in STATES:
            state.add_metric([account.phone, name], 1.0 if account.state == name else 0.0)
        connected.add_metric([account.phone], 1.0 if account.state == AccountState.CONNECTED else 0.0)
        degraded.add_metric([account.phone], 1.0 if account.degraded else 0.0)
        messages_in.add_metric([account.phone], account.messages_in)
        messages_out.add_metric([account.phone], account.messages_out)
        reconnects.add_metric([account.phone], account.reconnects)
        queued.add_metric([account.phone], account.queued_outgoing)
        if account.last_event_age is not None:
            age.add_metric([account.phone], account.last_event_age)
        if account.engine_rss_bytes is not None:
            rss.add_metric([account.phone], account.engine_rss_bytes)
    spool = GaugeMetricFamily("wa_mqtt_spool_depth", "Publishes waiting for the broker's acknowledgement (spool)")
    spool.add_metric([], snapshot.spool_depth)
    accounts = GaugeMetricFamily("wa_mqtt_accounts", "Accounts of the bridge")
    accounts.add_metric([], len(snapshot.accounts))
    yield from (state, connected, degraded, messages_in, messages_out, reconnects, queued, age, rss, spool, accounts)


class _LoopCollector(Collector):
    """Collects on the scrape's thread from a snapshot built on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, snapshot: Callable[[], Snapshot]) -> None:
        self._loop = loop
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        async def take() -> Snapshot:
            return self._snapshot()

        try:
            snapshot = asyncio.run_coroutine_threadsafe(take(), self._loop).result(SNAPSHOT_TIMEOUT)
        except (TimeoutError, RuntimeError, concurrent.futures.CancelledError) as exc:  # a stopped or stuck loop
            log.warning("metrics: no snapshot from the bridge (%s)", exc)
            return []
        return list(families(snapshot))


class Metrics:
    """The `/metrics` endpoint; started only with `metrics.port` (a restart-only setting)."""

    def __init__(self, config: Config, manager: AccountManager, spool: Spool,
                 clock: Callable[[], datetime]) -> None:
        self._config = config
        self._manager = manager
        self._spool = spool
        self._clock = clock
        self._server: WSGIServer | None = None

    def start(self) -> None:
        port, host = self._config.metrics.port, self._config.metrics.host
        assert port is not None
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_LoopCollector(asyncio.get_running_loop(), self.snapshot))
        try:
            self._server, _thread = start_http_server(port, addr=host, registry=registry)
        except OSError as exc:  # the rest of the bridge runs on: metrics are an extra
            log.error("metrics: cannot listen on %s:%d (%s); no /metrics this run", host, port, exc.strerror or exc)
            return
        log.info("metrics: Prometheus endpoint on http://%s:%d/metrics", host, port)

    async def drain(self) -> None:
        pass  # scraped until the end

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await asyncio.to_thread(server.shutdown)
            server.server_close()

    def snapshot(self) -> Snapshot:
        """The figures now; on the event loop."""
        now = self._clock()
        accounts = []
        for phone in self._manager.phones():
            supervisor = self._manager.find(phone)
            if supervisor is None:
                continue
            status = supervisor.status
            heard = status.last_event_at
            rss = supervisor.engine_rss_kb
            accounts.append(AccountFigures(
                phone=phone, state=status.state.value, messages_in=supervisor.messages_in,
                messages_out=supervisor.messages_out, reconnects=supervisor.account.reconnects,
                queued_outgoing=status.queued_outgoing,
                last_event_age=None if heard is None else max(0.0, (now - heard).total_seconds()),
                engine_rss_bytes=None if rss is None else rss * 1024, degraded=status.degraded))
        return Snapshot(tuple(accounts), len(self._spool))
