"""Wires the parts together and owns the top TaskGroup, the startup order and the shutdown order.

Startup: durable files → (embedded broker) → link, bridge, manager → restore every account at once.
Shutdown (SIGTERM/SIGINT): stop accepting requests, finish the ones being served, close the engine
sessions, publish what is queued and then `offline` (retained), disconnect, close files.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import datetime, timezone

from .accounts.dedup import SeenIds
from .accounts.manager import AccountManager
from .accounts.outbox import Outbox
from .accounts.store import SessionStore
from .bridge import Bridge
from .config import Config
from .engines.base import Engine
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
    """The engine named by the config."""
    if config.engine == "sim":
        from .engines.sim import SimEngine

        return SimEngine()
    from .engines.neonize_engine import NeonizeEngine

    return NeonizeEngine()


class App:
    """The running bridge. `await App(config).run(stop_event)` returns an exit code."""

    def __init__(self, config: Config, engine: Engine | None = None, clock: Clock = utcnow,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self._engine = engine
        self._clock = clock
        self._rng = rng
        self.bridge: Bridge | None = None
        self.manager: AccountManager | None = None
        self.link: MqttLink | None = None

    async def run(self, stop: asyncio.Event) -> int:
        config = self.config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        spool = Spool(config.data_dir / "spool.db")
        outbox = Outbox(config.data_dir / "outbox.db", self._clock)
        seen = SeenIds(config.data_dir / "seen.db")
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
            async with asyncio.TaskGroup() as group:
                link_task = group.create_task(link.run(), name="mqtt-link")
                manager_task = group.create_task(manager.run(), name="accounts")
                await manager.wait_ready()
                sessions_watch.start()
                await stop.wait()
                log.info("shutting down")
                await sessions_watch.stop()
                bridge.stop_accepting()
                await asyncio.wait_for(bridge.drain(), timeout=10)
                manager_task.cancel()
                await manager.close()
                await engine.aclose()
                await link.shutdown()
                link_task.cancel()
            return 0
        finally:
            spool.close()
            outbox.close()
            seen.close()
            if broker is not None:
                await broker.shutdown()  # type: ignore[attr-defined]
            log.info("wa_mqtt stopped")
