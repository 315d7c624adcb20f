"""Wires the parts together and owns the top TaskGroup, the startup order and the shutdown order.

Startup: durable files → (embedded broker) → link, bridge, manager → restore every account at once.
Shutdown (SIGTERM/SIGINT): stop accepting requests, finish the ones being served, close the engine
sessions, publish what is queued and then `offline` (retained), disconnect, close files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .accounts.dedup import SeenIds
from .accounts.manager import AccountManager
from .accounts.outbox import Outbox
from .accounts.store import SessionStore
from .bridge import Bridge
from .config import Config, ConfigError, config_changes, load_config, without_restart_changes
from .engines.base import Engine
from .engines.options import EngineOptions
from .mqtt.api import ApiError
from .mqtt import discovery
from .mqtt.link import MqttLink, start_embedded_broker
from .mqtt.spool import Spool
from .mqtt.topics import Topics
from .watch import Watcher

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def make_engine(config: Config) -> Engine:
    """The engine named by the config: in supervised child processes unless `engine_process.in_process`."""
    options = EngineOptions.from_config(config)
    if not config.engine_process.in_process:
        from .engines.process import ProcessEngine

        return ProcessEngine(config.engine, options, config.engine_process, log_level=config.log_level)
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

    async def run(self, stop: asyncio.Event) -> int:
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.ExitStack() as opened:  # a file refused (schema.SchemaError) closes those opened before it
            spool = opened.enter_context(contextlib.closing(Spool(config.data_dir / "spool.db")))
            outbox = opened.enter_context(contextlib.closing(Outbox(config.data_dir / "outbox.db", self._clock)))
            seen = opened.enter_context(contextlib.closing(SeenIds(config.data_dir / "seen.db")))
            opened.pop_all()
        broker = None
        try:
            url = config.mqtt.url
            if url is None:
                broker = await start_embedded_broker(config.mqtt.embedded_port)
                url = f"mqtt://127.0.0.1:{config.mqtt.embedded_port}"
            engine = self._engine or make_engine(config)
            topics = Topics(config.mqtt.base_topic)
            started_at = self._clock()
            # the link calls back into the bridge, the bridge publishes through the link
            bridge_ref: list[Bridge] = []
            link = MqttLink(config.mqtt, url, topics.bridge_state, spool,
                            on_message=lambda msg: bridge_ref[0].handle(msg),
                            on_connect=lambda: bridge_ref[0].on_link_connected(),
                            v5=config.mqtt.url is not None)
            bridge = Bridge(config, topics, link, seen, self._clock, started_at)
            bridge_ref.append(bridge)
            manager = AccountManager(config, engine, SessionStore(config.sessions_dir), bridge, outbox,
                                     self._clock, self._rng)
            bridge.attach(manager)
            bridge.reloader = self.reload
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
                await manager.close()
                await engine.aclose()
                await link.shutdown()
                link_task.cancel()
            return 0
        finally:
            self.bridge = None
            spool.close()
            outbox.close()
            seen.close()
            if broker is not None:
                await broker.shutdown()  # type: ignore[attr-defined]
            log.info("wa_mqtt stopped")

    async def reload(self) -> dict[str, Any]:
        """Re-read config.yaml: apply what can change while running, report what needs a restart.
        An invalid file keeps the running config and is reported as `config_invalid`."""
        if self._config_path is None or self.bridge is None or self.manager is None:
            raise ApiError("invalid_request", "this bridge was not started from a config file")
        try:
            new = await asyncio.to_thread(load_config, self._config_path, self._environ, self._cli_overrides)
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
        self.config = effective
        self.bridge.reconfigure(effective)
        self.manager.reconfigure(effective)
        log.info("config reloaded: %s", ", ".join(applied) or "nothing to apply")
        self.bridge.on_bridge_event("config_reloaded", result)
        return result

    async def _reload_on_edit(self) -> None:
        with contextlib.suppress(ApiError):  # already reported as config_invalid; the old config stays
            await self.reload()
