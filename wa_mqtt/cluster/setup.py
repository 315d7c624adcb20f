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
from ..startup import StartupError
from .coordinator import Coordinator
from .gate import RequestGate
from .leases import InstanceIdInUse
from .publisher import ClusterPublisher

OWNER = "cluster"


def instance_name(config: Config) -> str:
    """`instance_id`, else the host name (what is left of it after dropping characters a topic may not carry)."""
    if config.instance_id:
        return config.instance_id
    return re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "bridge"


async def join_cluster(coordinator: Coordinator, config: Config, store: SessionStore, manager: AccountManager,
                       topics: Topics, link: MqttLink, gate: RequestGate | None) -> None:
    """Join and take a first share of the accounts (before the manager restores them). StartupError
    (exit 2) when another live bridge has this instance_id."""
    publisher = ClusterPublisher(coordinator, topics, link)
    coordinator.publisher = publisher

    def changed() -> None:
        publisher.update()
        if gate is not None:
            gate.changed()

    waiting: set[asyncio.Task[None]] = set()

    async def adopt_when_ready(phone: str) -> None:
        await manager.wait_ready()
        if manager.find(phone) is None and coordinator.owns(phone):
            await manager.adopt(phone)

    async def start(phone: str) -> None:
        if manager.find(phone) is None and manager.ready:
            await manager.adopt(phone)
        elif manager.find(phone) is None:
            # claimed before the manager restored this folder's accounts: one with no folder here (its
            # session is in PostgreSQL, store/pg_sessions.py) is adopted once the manager is ready
            task = asyncio.get_running_loop().create_task(adopt_when_ready(phone), name=f"adopt-{phone}")
            waiting.add(task)
            task.add_done_callback(waiting.discard)

    phones = await asyncio.to_thread(store.account_phones)
    try:
        await coordinator.start(sorted({*phones, *config.accounts}), start, manager.release, changed)
    except InstanceIdInUse as exc:
        raise StartupError(str(exc)) from None


def run_cluster(coordinator: Coordinator, bus: EventBus, group: asyncio.TaskGroup) -> asyncio.Task[None]:
    """The coordinator's rounds in `group`; a removed account's record and lease go with it."""
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
