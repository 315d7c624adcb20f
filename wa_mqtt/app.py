"""Wires the parts together and owns the top TaskGroup, the startup order and the shutdown order.

Startup: the sessions folder's lock (one bridge per folder) and, for the embedded broker, a free port
(either failing is a StartupError: exit 2) → durable files → (embedded broker) → the event bus, the
MQTT link (its callbacks emit on the bus), the account manager, the send service → the extensions
(features/), started in order, the web page last (its port taken: a StartupError, exit 2) → link and
accounts run, every account restored at once.
Shutdown (SIGTERM/SIGINT): the extensions drain in reverse order (no more requests, finish the ones
being served), the engine sessions close (each running account then shows `stopped`), the extensions
stop in reverse order, what is queued is published and then `offline` (retained), disconnect, close files.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import events as ev
from .accounts.dedup import SeenIds
from .accounts.manager import AccountManager
from .accounts.outbox import Outbox
from .accounts.store import SessionStore
from .bus import EventBus
from .cluster.bridge_requests import BridgeRequestLink
from .cluster.coordinator import Coordinator
from .cluster.gate import BRIDGE_SUBSCRIPTION, RequestGate
from .cluster.publisher import InstanceTopics, instance_state_topic
from .cluster.setup import instance_name, join_cluster, leave_cluster, run_cluster
from .config import Config, ConfigError, config_changes, without_restart_changes
from .config_loading import config_file_complete, load_config
from .disk_full import DiskFullWatch
from .engines.base import Engine, Intake
from .engines.options import EngineOptions
from .errors import ErrorCode
from .features import Extension
from .features.alerts import Alerts
from .features.auto_reply import AutoReply
from .features.calls import Calls
from .features.groups import GroupsPublisher
from .features.ha_discovery import HaDiscovery
from .features.request_server import RequestServer
from .features.sim_control import SimControl
from .features.state_publisher import StatePublisher
from .features.watchdog import Watchdog
from .mqtt.api import ApiError
from .mqtt.link import Incoming, MqttLink
from .mqtt.spool import Spool
from .mqtt.topics import Topics
from .sending import SendService
from .startup import ensure_port_free, lock_sessions_folder, port_error
from .store.open import open_pg_stores
from .store.protocols import OutboxStore, SeenStore
from .watch import Watcher

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def make_engine(config: Config, intake: Intake | None = None) -> Engine:
    """The engine named by the config: in supervised child processes unless `engine_process.in_process`
    (only child processes can be paused by `intake`)."""
    options = EngineOptions.from_config(config)
    if not config.engine_process.in_process:
        from .engines.process import ProcessEngine

        return ProcessEngine(config.engine, options, config.engine_process, log_level=config.log_level,
                             intake=intake)
    from .engines.child import make_inner_engine

    return make_inner_engine(config.engine, options)


async def _link_when_ready(link: MqttLink, bridge_requests: BridgeRequestLink | None) -> None:
    """The main link, which says `online` once connected: after the bridge-request subscription (a
    cluster's), so that `online` still means every request is heard."""
    if bridge_requests is not None:
        await bridge_requests.wait_subscribed()
    await link.run()


async def _step(what: str, work: Awaitable[object]) -> None:
    """One shutdown step; a failure is logged and the shutdown goes on."""
    try:
        await work
    except Exception:
        log.exception("shutdown: %s failed; going on", what)


class App:
    """The running bridge. `await App(config).run(stop_event)` returns an exit code."""

    def __init__(self, config: Config, engine: Engine | None = None, clock: Clock = utcnow,
                 rng: random.Random | None = None, config_path: Path | None = None,
                 cli_overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self._config_path = config_path
        self._cli_overrides = dict(cli_overrides or {})
        self._environ = environ
        self._engine = engine
        self._clock = clock
        self._rng = rng
        self.bus: EventBus | None = None
        self.manager: AccountManager | None = None
        self.sending: SendService | None = None
        self.link: MqttLink | None = None
        self._seen_half_written = False  # the config file seemed half-written once already
        self.disk: DiskFullWatch | None = None

    async def run(self, stop: asyncio.Event) -> int:
        """Run until `stop` is set; the exit code. Raises StartupError when the bridge cannot start:
        another bridge holds the sessions folder, or the embedded broker's port is taken."""
        # in a cluster (store.url) the accounts' leases and advisory locks replace the folder's lock:
        # the bridges may share one sessions folder (docs/scaling.md)
        sessions_lock = lock_sessions_folder(self.config.sessions_dir) if self.config.store.url is None else None
        try:
            if self.config.mqtt.url is None:
                ensure_port_free(self.config.mqtt.embedded_port)
            return await self._run(stop)
        finally:
            if sessions_lock is not None:
                sessions_lock.release()

    async def _run(self, stop: asyncio.Event) -> int:
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        intake = Intake()
        bus = EventBus()
        disk = self.disk = DiskFullWatch(intake, config.disk_full_hold_mb << 20,
                                         on_change=lambda error: bus.emit(ev.DiskFullChanged(error)))
        with contextlib.ExitStack() as opened:  # a file refused (schema.SchemaError) closes those opened before it
            spool = opened.enter_context(contextlib.closing(Spool(config.data_dir / "spool.db", report=disk.report)))
            outbox: OutboxStore
            seen: SeenStore
            if config.store.url is not None:  # PostgreSQL (shared by a cluster): store/
                outbox, seen = open_pg_stores(config, self._clock, opened, before_write=spool.commit)
            else:
                outbox = opened.enter_context(contextlib.closing(
                    Outbox(config.data_dir / "outbox.db", self._clock, report=disk.report)))
                seen = opened.enter_context(contextlib.closing(
                    SeenIds(config.data_dir / "seen.db", report=disk.report, before_write=spool.commit)))
            opened.pop_all()
        for holder in (spool, seen, outbox):
            disk.add(holder)
        broker = None
        try:
            url = config.mqtt.url
            if url is None:
                from .mqtt.embedded_broker import start_embedded_broker  # amqtt imported only for it

                try:
                    broker = await start_embedded_broker(config.mqtt.embedded_port)
                except Exception as exc:  # taken since ensure_port_free looked: amqtt wraps the OSError
                    if isinstance(exc.__cause__, OSError):
                        raise port_error(config.mqtt.embedded_port, exc.__cause__) from None
                    raise
                url = f"mqtt://127.0.0.1:{config.mqtt.embedded_port}"
            engine = self._engine or make_engine(config, intake)
            topics = Topics(config.mqtt.base_topic)
            started_at = self._clock()

            async def on_message(incoming: Incoming) -> None:
                event = ev.MqttMessageReceived(incoming)
                bus.emit(event)
                for work in event.holds:  # messages are handled in arrival order (sim controls)
                    await work

            coordinator = (Coordinator(config.store.url, instance_name(config), config.cluster.takeover_after)
                           if config.store.url is not None else None)
            state_topic = (instance_state_topic(topics, coordinator.instance_id) if coordinator is not None
                           else topics.bridge_state)
            link = MqttLink(config.mqtt, url, state_topic, spool, on_message=on_message,
                            on_connect=lambda: bus.emit(ev.LinkConnected()), v5=config.mqtt.url is not None)
            sessions = SessionStore(config.sessions_dir)
            manager = AccountManager(config, engine, sessions, bus, outbox, self._clock, self._rng,
                                     owns=coordinator.owns if coordinator is not None else None,
                                     claim=coordinator.claim if coordinator is not None else None)
            sending = SendService(manager, config)
            gate = (RequestGate(coordinator, topics, link, hold_for=2 * config.cluster.takeover_after,
                                v5=config.mqtt.url is not None) if coordinator is not None else None)
            bridge_requests = (BridgeRequestLink(config.mqtt, url, gate.bridge_filter, BRIDGE_SUBSCRIPTION, on_message)
                               if gate is not None and gate.bridge_filter is not None else None)
            own_topics = InstanceTopics(topics.base, coordinator.instance_id) if coordinator is not None else topics
            extensions: list[Extension] = [
                StatePublisher(bus, config, own_topics, link, manager, seen, started_at, disk),
                RequestServer(bus, config, topics, link, manager, sending, seen, self._clock, started_at,
                              self.reload, disk, gate),
            ]
            if config.engine == "sim":
                extensions.append(SimControl(bus, topics, link, manager))
            if config.mqtt.discovery:
                extensions.append(HaDiscovery(bus, config, own_topics, link, manager))
            extensions.append(AutoReply(bus, config, sending, self._clock))
            extensions += [GroupsPublisher(bus, topics, link), Calls(bus, config, topics, link, manager, sending)]
            # health monitoring: alerts and the watchdog always (idle while all is well), metrics when asked for
            extensions += [Alerts(bus, config, topics, link, manager, sending, self._clock),
                           Watchdog(bus, config, manager, self._clock)]
            if config.metrics.port is not None:
                from .features.metrics import Metrics  # prometheus_client imported only when metrics are on

                extensions.append(Metrics(config, manager, spool, self._clock))
            if config.web.enabled:  # last: drained first, so no action is taken from the page once stopping
                from .features.web_page import WebPage  # aiohttp imported only when the page is on

                extensions.append(WebPage(bus, config, manager, self._clock))
            for extension in extensions:
                extension.start()
            self.bus, self.manager, self.sending, self.link = bus, manager, sending, link
            log.info("wa_mqtt starting: engine %s, sessions in %s, base topic %s",
                     engine.name, config.sessions_dir, topics.base)

            sessions_watch = Watcher(config.sessions_dir, manager.reconcile)
            config_watch = (Watcher(self._config_path.parent, self._reload_on_edit, only=self._config_path.name,
                                    recursive=False, quiet=0.3) if self._config_path is not None else None)
            if coordinator is not None:
                await join_cluster(coordinator, config, sessions, manager, topics, link, gate)
            async with asyncio.TaskGroup() as group:
                requests_task = (group.create_task(bridge_requests.run(), name="mqtt-bridge-requests")
                                 if bridge_requests is not None else None)
                link_task = group.create_task(_link_when_ready(link, bridge_requests), name="mqtt-link")
                cluster_task = run_cluster(coordinator, bus, group) if coordinator is not None else None
                manager_task = group.create_task(manager.run(), name="accounts")
                await manager.wait_ready()
                gc.freeze()  # what is loaded by now lives as long as the bridge: full collections skip it
                sessions_watch.start()
                if config_watch is not None:
                    config_watch.start()
                await stop.wait()
                log.info("shutting down")
                if requests_task is not None:
                    requests_task.cancel()  # the broker hands the next bridge requests to the other bridges
                # each step runs even when one before it failed: engines closed, statuses `stopped`
                # and `offline` published whatever happened
                await _step("sessions watcher", sessions_watch.stop())
                if config_watch is not None:
                    await _step("config watcher", config_watch.stop())
                for extension in reversed(extensions):
                    await _step(f"draining {type(extension).__name__}", extension.drain())
                if coordinator is not None and cluster_task is not None:
                    cluster_task.cancel()  # no round starts an engine any more
                    await _step("leaving the cluster", leave_cluster(coordinator, link, topics))
                manager_task.cancel()
                intake.resume()  # engines paused by a full disk: what their pipes hold is read, not lost
                await _step("closing the accounts", manager.close())
                await _step("closing the engine", engine.aclose())
                for extension in reversed(extensions):
                    await _step(f"stopping {type(extension).__name__}", extension.stop())
                await _step("publishing offline", link.shutdown())
                link_task.cancel()
            return 0
        finally:
            self.bus = None
            async with contextlib.AsyncExitStack() as closing:  # every file closed even if one fails
                if broker is not None:
                    closing.push_async_callback(broker.shutdown)
                # closed in reverse: the spool first; the ids of messages it lost (held in memory on a
                # disk full to the end) must not be written, or their redelivery would be dropped
                closing.callback(lambda: seen.close(write_held=not spool.lost))
                closing.callback(outbox.close)
                closing.callback(spool.close)
                closing.push_async_callback(disk.close)  # first: it writes what it holds into the files
            log.info("wa_mqtt stopped")

    async def reload(self) -> dict[str, object]:
        """Re-read config.yaml: apply what can change while running, report what needs a restart.
        An invalid file keeps the running config and is reported as `config_invalid`; so is a missing
        or empty one (deleted, or truncated mid-write): it must not reset settings such as allow_to."""
        if self._config_path is None or self.bus is None or self.manager is None or self.sending is None:
            raise ApiError(ErrorCode.INVALID_REQUEST, "this bridge was not started from a config file")
        try:
            new = await asyncio.to_thread(load_config, self._config_path, self._environ, self._cli_overrides,
                                          missing_ok=False, empty_ok=False)
        except ConfigError as exc:
            log.warning("config reload rejected, the running config stays in force: %s", exc)
            self.bus.emit(ev.ConfigInvalid(str(exc)))
            raise ApiError(ErrorCode.CONFIG_INVALID, str(exc)) from None
        applied, restart = config_changes(self.config, new)
        if restart:
            log.warning("config: %s changed; restart the bridge to apply", ", ".join(restart))
        result: dict[str, object] = {"changed": applied, "restart_required": restart}
        if not applied and not restart:
            return result
        effective = without_restart_changes(self.config, new)
        if effective.log_level != self.config.log_level:
            logging.getLogger().setLevel(effective.log_level.upper())
        if self.disk is not None:
            self.disk.hold_max_bytes = effective.disk_full_hold_mb << 20
        self.config = effective
        self.manager.reconfigure(effective)
        self.sending.reconfigure(effective)
        log.info("config reloaded: %s", ", ".join(applied) or "nothing to apply")
        self.bus.emit(ev.ConfigReloaded(effective, applied, restart))
        return result

    async def _reload_on_edit(self) -> bool:
        """config.yaml changed. A file written in place is first truncated: seen empty, missing or
        unparsable, it is looked at once more after another quiet period before it counts as invalid."""
        assert self._config_path is not None
        if not self._seen_half_written and not await asyncio.to_thread(config_file_complete, self._config_path):
            log.debug("%s looks half-written (missing, empty or unparsable); looking again once it is quiet",
                      self._config_path)
            self._seen_half_written = True
            return False  # the watcher calls again once the file has been quiet once more
        self._seen_half_written = False
        with contextlib.suppress(ApiError):  # already reported as config_invalid; the old config stays
            await self.reload()
        return True
