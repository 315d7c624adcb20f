"""Wires the parts together and owns the top TaskGroup, the startup order and the shutdown order.

Startup: the sessions folder's lock (one bridge per folder) and, for the embedded broker, a free port
(either failing is a StartupError: exit 2) → durable files → (embedded broker) → link, bridge, manager
→ restore every account at once.
Shutdown (SIGTERM/SIGINT): stop accepting requests, finish the ones being served, close the engine
sessions (each running account then shows `stopped`), publish what is queued and then `offline`
(retained), disconnect, close files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .accounts.dedup import SeenIds
from .accounts.manager import AccountManager
from .accounts.outbox import Outbox
from .accounts.store import SessionStore
from .bridge import Bridge
from .config import Config, ConfigError, config_changes, config_file_complete, load_config, without_restart_changes
from .disk_full import DiskFullWatch
from .engines.base import Engine, Intake
from .engines.options import EngineOptions
from .mqtt import discovery
from .mqtt.api import ApiError
from .mqtt.embedded_broker import start_embedded_broker
from .mqtt.link import MqttLink
from .mqtt.spool import Spool
from .mqtt.topics import Topics
from .startup import ensure_port_free, lock_sessions_folder, port_error
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
        self.bridge: Bridge | None = None
        self.manager: AccountManager | None = None
        self.link: MqttLink | None = None
        self._seen_half_written = False  # the config file seemed half-written once already
        self.disk: DiskFullWatch | None = None

    async def run(self, stop: asyncio.Event) -> int:
        """Run until `stop` is set; the exit code. Raises StartupError when the bridge cannot start:
        another bridge holds the sessions folder, or the embedded broker's port is taken."""
        sessions_lock = lock_sessions_folder(self.config.sessions_dir)
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
        disk = self.disk = DiskFullWatch(intake, config.disk_full_hold_mb << 20)
        with contextlib.ExitStack() as opened:  # a file refused (schema.SchemaError) closes those opened before it
            spool = opened.enter_context(contextlib.closing(Spool(config.data_dir / "spool.db", report=disk.report)))
            outbox = opened.enter_context(contextlib.closing(
                Outbox(config.data_dir / "outbox.db", self._clock, report=disk.report)))
            seen = opened.enter_context(contextlib.closing(SeenIds(config.data_dir / "seen.db", report=disk.report)))
            opened.pop_all()
        for holder in (spool, seen, outbox):
            disk.add(holder)
        broker = None
        try:
            url = config.mqtt.url
            if url is None:
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
            # the link calls back into the bridge, the bridge publishes through the link
            bridge_ref: list[Bridge] = []
            link = MqttLink(config.mqtt, url, topics.bridge_state, spool,
                            on_message=lambda msg: bridge_ref[0].handle(msg),
                            on_connect=lambda: bridge_ref[0].on_link_connected(),
                            v5=config.mqtt.url is not None)
            bridge = Bridge(config, topics, link, seen, self._clock, started_at, disk)
            bridge_ref.append(bridge)
            manager = AccountManager(config, engine, SessionStore(config.sessions_dir), bridge, outbox,
                                     self._clock, self._rng)
            bridge.attach(manager)
            bridge.reloader = self.reload
            disk.on_change = manager.set_disk_full
            for topic_filter in topics.request_filters:
                link.subscribe(topic_filter)
            if config.engine == "sim":
                link.subscribe(topics.sim_filter)
            if config.mqtt.discovery:
                link.subscribe(discovery.ha_status_topic(config.mqtt.discovery_prefix))
            self.bridge, self.manager, self.link = bridge, manager, link
            log.info("wa_mqtt starting: engine %s, sessions in %s, base topic %s",
                     engine.name, config.sessions_dir, topics.base)

            sessions_watch = Watcher(config.sessions_dir, manager.reconcile)
            config_watch = (Watcher(self._config_path.parent, self._reload_on_edit, only=self._config_path.name,
                                    recursive=False, quiet=0.3) if self._config_path is not None else None)
            async with asyncio.TaskGroup() as group:
                link_task = group.create_task(link.run(), name="mqtt-link")
                manager_task = group.create_task(manager.run(), name="accounts")
                await manager.wait_ready()
                sessions_watch.start()
                if config_watch is not None:
                    config_watch.start()
                await stop.wait()
                log.info("shutting down")
                await sessions_watch.stop()
                if config_watch is not None:
                    await config_watch.stop()
                bridge.stop_accepting()
                await asyncio.wait_for(bridge.drain(), timeout=10)
                manager_task.cancel()
                intake.resume()  # engines paused by a full disk: what their pipes hold is read, not lost
                await manager.close()
                await engine.aclose()
                bridge.publish_summaries()
                await link.shutdown()
                link_task.cancel()
            return 0
        finally:
            self.bridge = None
            await disk.close()
            spool.close()
            outbox.close()
            seen.close()
            if broker is not None:
                await broker.shutdown()  # type: ignore[attr-defined]
            log.info("wa_mqtt stopped")

    async def reload(self) -> dict[str, Any]:
        """Re-read config.yaml: apply what can change while running, report what needs a restart.
        An invalid file keeps the running config and is reported as `config_invalid`; so is a missing
        or empty one (deleted, or truncated mid-write): it must not reset settings such as allow_to."""
        if self._config_path is None or self.bridge is None or self.manager is None:
            raise ApiError("invalid_request", "this bridge was not started from a config file")
        try:
            new = await asyncio.to_thread(load_config, self._config_path, self._environ, self._cli_overrides,
                                          missing_ok=False, empty_ok=False)
        except ConfigError as exc:
            log.warning("config reload rejected, the running config stays in force: %s", exc)
            self.bridge.on_bridge_event("config_invalid", {"error": str(exc)})
            raise ApiError("config_invalid", str(exc)) from None
        applied, restart = config_changes(self.config, new)
        if restart:
            log.warning("config: %s changed; restart the bridge to apply", ", ".join(restart))
        result = {"changed": applied, "restart_required": restart}
        if not applied and not restart:
            return result
        effective = without_restart_changes(self.config, new)
        if effective.log_level != self.config.log_level:
            logging.getLogger().setLevel(effective.log_level.upper())
        if self.disk is not None:
            self.disk.hold_max_bytes = effective.disk_full_hold_mb << 20
        self.config = effective
        self.bridge.reconfigure(effective)
        self.manager.reconfigure(effective)
        log.info("config reloaded: %s", ", ".join(applied) or "nothing to apply")
        self.bridge.on_bridge_event("config_reloaded", result)
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
