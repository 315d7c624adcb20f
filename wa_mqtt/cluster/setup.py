"""Starting and leaving the cluster from app.py: the instance's name, the coordinator's first round,
its loop, and its topics."""

from __future__ import annotations

import asyncio
import re
import socket

from .. import events as ev
from ..accounts.manager import AccountManager
from ..accounts.store import SessionStore
from ..bus import EventBus
from ..config import Config
from ..mqtt.link import MqttLink
from ..mqtt.topics import Topics
from .coordinator import Coordinator
from .gate import RequestGate
from .publisher import ClusterPublisher

OWNER = "cluster"


def instance_name(config: Config) -> str:
    """`instance_id`, else the host name (what is left of it after dropping characters a topic may not carry)."""
    if config.instance_id:
        return config.instance_id
    return re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "bridge"


async def start_cluster(coordinator: Coordinator, config: Config, store: SessionStore, manager: AccountManager,
                        bus: EventBus, topics: Topics, link: MqttLink, gate: RequestGate | None,
                        group: asyncio.TaskGroup) -> asyncio.Task[None]:
    """Join, take a first share of the accounts (before the manager restores them), and run the rounds."""
    publisher = ClusterPublisher(coordinator, topics, link)
    coordinator.publisher = publisher

    def changed() -> None:
        publisher.update()
        if gate is not None:
            gate.changed()

    async def start(phone: str) -> None:
        if manager.find(phone) is None and manager.ready:
            await manager.adopt(phone)

    phones = await asyncio.to_thread(store.account_phones)
    await coordinator.start(sorted({*phones, *config.accounts}), start, manager.release, changed)
    def removed(event: ev.AccountRemoved) -> None:
        group.create_task(coordinator.forget(event.phone), name=f"cluster-forget-{event.phone}")

    bus.subscribe(ev.AccountRemoved, removed, OWNER)
    return group.create_task(coordinator.run(), name="cluster")


async def leave_cluster(coordinator: Coordinator, link: MqttLink, topics: Topics) -> None:
    """Stop the engines here and release every lease, so the other bridges take over at once."""
    last = coordinator.view.live in ([], [coordinator.instance_id])
    await coordinator.close()
    if coordinator.publisher is not None:
        coordinator.publisher.leave(last)
