"""This bridge's part in a cluster: it joins, renews its leases, claims its share of the accounts,
starts an account's engine only while it holds both the account's lease and its advisory lock, and
stops every engine before its leases can expire when it cannot renew them.

Never two engines on one session:
- a lease is taken in one statement, only when free or expired (leases.py);
- the engine starts only after `pg_try_advisory_lock` on the account succeeded on this bridge's lock
  connection: PostgreSQL frees it when that session ends (a killed bridge at once, a vanished one
  when the server's TCP keepalives give up, set to more than `takeover_after`);
- a bridge that could not renew for half of `takeover_after` (its own monotonic clock, counted from
  before the renewal it last saw succeed) stops its engines (the watchdog task): its leases expire
  `takeover_after` after that renewal at the earliest, the other bridges wait for that, and even
  then for the advisory lock.

A round every `takeover_after / 4`: renew; look at the cluster (live instances, account records,
owners); try the advisory locks of leases held without one; claim free accounts up to an even
share; hand half the excess back per round while holding more than the share when another bridge
holds fewer (a bridge that starts alone takes everything at once; those joining later even it out).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..errors import BridgeError, ErrorCode
from ..store.pg import connect as connect_sync
from ..store.pg import masked, upgrade
from .leases import SCHEMA, ClusterView, InstanceIdInUse, LeaseTable
from .plan import claim_order, fair_share, room, to_hand_back

if TYPE_CHECKING:
    import psycopg

    from .publisher import ClusterPublisher

log = logging.getLogger(__name__)

FENCE_AT = 0.5  # of takeover_after after the start of the last renewal seen to succeed: engines stop
ROUNDS_PER_TTL = 4

Action = Callable[[str], Awaitable[Any]]


class AccountOwnedElsewhere(BridgeError):
    def __init__(self, phone: str, owner: str) -> None:
        super().__init__(ErrorCode.INVALID_REQUEST,
                         f"account {phone} runs on bridge instance {owner!r}; send it that account's requests")


class Coordinator:
    """Create, `await start(...)`, run `run()` in the app's TaskGroup, `await close()` at shutdown."""

    def __init__(self, url: str, instance_id: str, takeover_after: float) -> None:
        self.url = url
        self.instance_id = instance_id
        self.ttl = takeover_after
        self.every = takeover_after / ROUNDS_PER_TTL
        self.token = uuid.uuid4().hex
        self.view = ClusterView()
        self._leased: set[str] = set()  # leases held (renewed each round)
        self._running: set[str] = set()  # ... whose advisory lock is held and engine started
        self._valid_until = 0.0  # monotonic: engines must be stopped by then unless renewed
        self._epoch = 0  # bumped by each fence: a round begun before it starts nothing
        self._conn: psycopg.AsyncConnection[tuple[Any, ...]] | None = None
        self._locks: psycopg.AsyncConnection[tuple[Any, ...]] | None = None
        self._table: LeaseTable | None = None
        self._start: Action | None = None
        self._stop: Action | None = None
        self._on_change: Callable[[], None] = lambda: None
        self._renewed = asyncio.Event()
        self._lock = asyncio.Lock()  # rounds, claims and fences never interleave
        self._closing = False
        self.publisher: ClusterPublisher | None = None
        self._locked: set[str] = set()  # advisory locks held on self._locks
        self._stopping: dict[str, asyncio.Task[None]] = {}  # engines being stopped (lock still held)
        self.unserved_since: dict[str, float] = {}  # account -> monotonic time its previous owner stopped serving

    # -- what the rest of the bridge asks ------------------------------------------------------
    def owns(self, phone: str) -> bool:
        """This bridge runs (or is about to run) the account."""
        return phone in self._running

    def owner_of(self, phone: str) -> str | None:
        return self.instance_id if phone in self._running else self.view.owners.get(phone)

    @property
    def running(self) -> set[str]:
        return set(self._running)

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self, local_accounts: list[str], start: Action, stop: Action,
                    on_change: Callable[[], None] = lambda: None) -> None:
        """Join the cluster, record the accounts found here and take a first share of them.
        InstanceIdInUse when a live bridge has this instance_id."""
        import psycopg

        self._start, self._stop, self._on_change = start, stop, on_change
        await asyncio.to_thread(_upgrade, self.url)
        self._conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
        self._locks = await _lock_connection(self.url, self.ttl)
        self._table = LeaseTable(self._conn, self.instance_id, self.token, self.ttl)
        await self._join()
        self._valid_until = time.monotonic() + self.ttl * FENCE_AT
        await self._table.register(local_accounts)
        log.info("cluster: joined as %s (takeover after %g s) at %s", self.instance_id, self.ttl, masked(self.url))
        await self.round()

    async def _join(self) -> None:
        """Register; while a bridge that did not leave cleanly (killed, then restarted at once) still
        holds this instance_id, wait for its registration to expire (at most `takeover_after`)."""
        assert self._table is not None
        deadline = time.monotonic() + self.ttl + self.every
        while True:
            try:
                await self._table.join()
                return
            except InstanceIdInUse:
                if time.monotonic() > deadline:
                    raise
                log.warning("cluster: instance_id %r is still registered by a live bridge, or one that did not "
                            "leave cleanly; waiting for it to expire (at most %g s)", self.instance_id, self.ttl)
                await asyncio.sleep(self.every)

    async def run(self) -> None:
        """Rounds until cancelled, and the watchdog that stops the engines when renewals fail."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._watchdog(), name="cluster-watchdog")
            while True:
                await asyncio.sleep(self.every)
                try:
                    async with asyncio.timeout(self.every * 2):
                        await self.round()
                except Exception as exc:  # noqa: BLE001 - a failed round is retried; the watchdog fences
                    log.warning("cluster: round failed (%s); retrying in %g s", str(exc).strip() or type(exc).__name__,
                                self.every)
                    await self._reconnect_if_broken()

    async def close(self) -> None:
        """Leave: stop the engines still running here, release every lease (others take over at once)."""
        self._closing = True
        async with self._lock:
            stopped = time.monotonic()
            for phone in sorted(self._running):
                self._retire(phone, "shutting down", release=False)
            await asyncio.gather(*self._stopping.values(), return_exceptions=True)
            if self._table is not None:
                try:
                    await self._table.leave(time.monotonic() - stopped)
                except Exception as exc:  # noqa: BLE001 - the leases then expire by themselves
                    log.warning("cluster: leases not released (%s); they expire in %g s", exc, self.ttl)
        for conn in (self._conn, self._locks):
            if conn is not None:
                await conn.close()

    # -- rounds ----------------------------------------------------------------------------------
    async def round(self) -> None:
        """One round: statements only; engines are started at once and stopped in tasks of their own
        (a stop takes up to a second: it must never hold back a renewal)."""
        async with self._lock:
            await self._round()

    async def _round(self) -> None:
        assert self._table is not None
        epoch = self._epoch
        began = time.monotonic()
        held = await self._table.renew()
        if held is None:  # our row was taken over: we were taken for dead
            log.error("cluster: this bridge's registration expired and was taken over; stopping every engine")
            self._fence("registration lost")
            self.token = uuid.uuid4().hex
            self._table = LeaseTable(self._table._conn, self.instance_id, self.token, self.ttl)
            await self._table.join()
            return
        self._valid_until = began + self.ttl * FENCE_AT
        self._renewed.set()
        for phone in sorted(self._leased - held):  # expired under us (should not happen while renewing)
            log.warning("cluster: %s: lease lost", phone)
            self._leased.discard(phone)
            if phone in self._running:
                self._retire(phone, "lease lost", release=False)
        self._leased |= held  # a claim whose round timed out after it was made
        self.view = await self._table.view()
        changed = False
        for phone in sorted(self._leased - self._running - set(self._stopping)):  # waiting for the old engine
            changed |= await self._try_start(phone, epoch)
        live = self.view.live or [self.instance_id]
        target = fair_share(len(self.view.accounts), len(live))
        free = self.view.accounts - set(self.view.owners)
        wanted = room(len(self._leased), target)
        for phone in claim_order(free, self.instance_id):
            if wanted <= 0:
                break
            claimed = await self._table.claim(phone)
            if claimed is None:
                continue  # another bridge was quicker: try the next one
            wanted -= 1
            self._leased.add(phone)
            if claimed.unserved_for is not None:  # requests since then are served here (cluster/gate.py)
                self.unserved_since[phone] = time.monotonic() - claimed.unserved_for
            if claimed.previous is not None:
                log.info("cluster: %s: taking over from %s (its lease expired)", phone, claimed.previous)
            changed |= await self._try_start(phone, epoch)
        counts = _counts(self.view.owners)
        others_below = any(counts.get(i, 0) < target - 1 for i in live if i != self.instance_id)
        if not self._stopping:
            for phone in to_hand_back(self._running, target, others_below):
                self._retire(phone, f"handing over (this bridge runs more than its share of {target})", release=True)
                changed = True
        if changed:
            self.view = await self._table.view()
        self._on_change()

    async def claim(self, phone: str) -> None:
        """A new account paired here: record it, take its lease and lock now (before its engine
        starts). AccountOwnedElsewhere when another live bridge holds it."""
        assert self._table is not None
        async with self._lock:
            if phone in self._running:
                return
            await self._table.register([phone])
            claimed = await self._table.claim(phone)
            if claimed is None:
                self.view = await self._table.view()
                raise AccountOwnedElsewhere(phone, self.view.owners.get(phone, "another bridge"))
            self._leased.add(phone)
            if not await self._lock_account(phone):
                raise AccountOwnedElsewhere(phone, claimed.previous or "another bridge")
            self._running.add(phone)
            self.view.owners[phone] = self.instance_id
        self._on_change()

    async def forget(self, phone: str) -> None:
        """The account was removed: its record and lease go (so nobody takes it over)."""
        if self._table is None:
            return
        async with self._lock:
            self._running.discard(phone)
            self._leased.discard(phone)
            await self._table.forget(phone)
            await self._unlock(phone)
        self._on_change()

    # -- engines ---------------------------------------------------------------------------------
    async def _try_start(self, phone: str, epoch: int) -> bool:
        if self._closing or epoch != self._epoch or time.monotonic() >= self._valid_until:
            return False
        if not await self._lock_account(phone):
            log.info("cluster: %s: leased, waiting for its previous engine to let go (advisory lock held)", phone)
            return False
        self._running.add(phone)
        self.view.owners[phone] = self.instance_id
        assert self._start is not None
        log.info("cluster: %s: running here", phone)
        try:
            await self._start(phone)
        except Exception:
            log.exception("cluster: %s: could not be started", phone)
        return True

    def _retire(self, phone: str, why: str, release: bool) -> None:
        """Stop the account's engine (in a task of its own), then let go of its advisory lock and, with
        `release`, of its lease. It is no longer served here from this moment."""
        if phone in self._stopping:
            return
        self._running.discard(phone)
        self._stopping[phone] = asyncio.create_task(self._stop_account(phone, why, release), name=f"retire-{phone}")

    async def _stop_account(self, phone: str, why: str, release: bool) -> None:
        assert self._stop is not None
        log.info("cluster: %s: stopping here (%s)", phone, why)
        stopped = time.monotonic()
        try:
            await self._stop(phone)
        except Exception:
            log.exception("cluster: %s: stopping its engine failed", phone)
            raise
        else:
            await self._unlock(phone)
            if release and self._table is not None:
                try:
                    await self._table.release(phone, time.monotonic() - stopped)
                except Exception as exc:  # noqa: BLE001 - it expires by itself then
                    log.warning("cluster: %s: lease not released (%s); it expires in %g s", phone, exc, self.ttl)
                self._leased.discard(phone)
        finally:
            self._stopping.pop(phone, None)
            self._on_change()

    async def _lock_account(self, phone: str) -> bool:
        """Take the account's advisory lock (once: PostgreSQL would count a second take)."""
        assert self._locks is not None
        if phone in self._locked:
            return True
        cursor = await self._locks.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (phone,))
        row = await cursor.fetchone()
        if row and row[0]:
            self._locked.add(phone)
            return True
        return False

    async def _unlock(self, phone: str) -> None:
        if phone not in self._locked:
            return
        self._locked.discard(phone)
        if self._locks is None or self._locks.closed or self._locks.broken:
            return
        try:
            await self._locks.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (phone,))
        except Exception as exc:  # noqa: BLE001 - the session's end frees it
            log.debug("cluster: %s: advisory lock not released (%s)", phone, exc)

    def _fence(self, why: str) -> None:
        """Stop every engine here now (in parallel): this bridge may no longer hold their leases."""
        self._epoch += 1
        if self._running:
            log.error("cluster: stopping %d engine(s): %s", len(self._running), why)
        for phone in sorted(self._running):
            self._retire(phone, why, release=False)
        self._leased.clear()
        self._on_change()

    async def _watchdog(self) -> None:
        while True:
            delay = self._valid_until - time.monotonic()
            if delay > 0:
                self._renewed.clear()
                try:
                    async with asyncio.timeout(delay):
                        await self._renewed.wait()
                except TimeoutError:
                    pass
                continue
            if self._running:  # not under self._lock: a hung round must not delay this
                self._fence(f"leases not renewed for {self.ttl * FENCE_AT:g} s")
            await asyncio.sleep(self.every)

    async def _reconnect_if_broken(self) -> None:
        import psycopg

        try:
            if self._locks is None or self._locks.closed or self._locks.broken:
                self._fence("the advisory lock connection was lost")
                await asyncio.gather(*self._stopping.values(), return_exceptions=True)
                self._locked.clear()
                self._locks = await _lock_connection(self.url, self.ttl)
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = await psycopg.AsyncConnection.connect(self.url, autocommit=True)
                self._table = LeaseTable(self._conn, self.instance_id, self.token, self.ttl)
        except Exception as exc:  # noqa: BLE001 - tried again after the next round fails
            log.debug("cluster: reconnect failed: %s", exc)


def _counts(owners: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for instance in owners.values():
        counts[instance] = counts.get(instance, 0) + 1
    return counts


def _upgrade(url: str) -> None:
    with connect_sync(url) as conn:
        upgrade(conn, SCHEMA)


async def _lock_connection(url: str, ttl: float) -> psycopg.AsyncConnection[tuple[Any, ...]]:
    """The connection that holds the accounts' advisory locks. The server's TCP keepalives end it
    (freeing the locks) only after more than `ttl` of silence from a vanished bridge."""
    import psycopg

    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    idle = max(1, int(ttl))
    await conn.execute(f"SET tcp_keepalives_idle = {idle}")
    await conn.execute(f"SET tcp_keepalives_interval = {max(1, idle // 4)}")
    await conn.execute("SET tcp_keepalives_count = 4")
    return conn


__all__ = ["AccountOwnedElsewhere", "Coordinator", "InstanceIdInUse"]
