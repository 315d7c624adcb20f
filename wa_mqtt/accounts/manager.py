"""All accounts: restore every stored session at once on start, add and remove accounts, route commands.

Restore is the product's reason to exist: every folder in sessions/ with a linked device gets a
supervisor and a `Start` in the same loop iteration, with no command and no delay, so each shows
`connecting` at once and `connected` as soon as its engine is.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from .. import events as ev
from ..bus import EventBus
from ..config import Config
from ..engines.base import Engine, PairMethod
from ..errors import BridgeError, ErrorCode
from ..model import AccountState, is_phone
from ..store.protocols import OutboxStore as Outbox
from ..tasks import BackgroundTasks
from . import machine as m
from .backups import BackupError, backup_store, check_store, list_backups, restore_from_backup
from .store import SessionStore, StorageError, store_files
from .supervisor import Supervisor

log = logging.getLogger(__name__)
OWNER = "accounts"  # the manager's name on the bus
CLOSE_GRACE = 5.0  # seconds a shutdown waits for post-connect records and backups before cancelling them
Clock = Callable[[], datetime]


class UnknownAccount(BridgeError):
    """A command for a phone that is not an account (`unknown_account`)."""

    def __init__(self, phone: str) -> None:
        super().__init__(ErrorCode.UNKNOWN_ACCOUNT,
                         f"no account {phone}; link it first with bridge/request/pair {{\"phone\": \"{phone}\"}}")
        self.phone = phone


class AccountManager:
    """Owns the supervisors and their tasks. `run()` inside the app's TaskGroup; `close()` to stop."""

    def __init__(self, config: Config, engine: Engine, store: SessionStore, bus: EventBus,
                 outbox: Outbox, clock: Clock, rng: random.Random | None = None, *,
                 owns: Callable[[str], bool] | None = None,
                 claim: Callable[[str], Awaitable[None]] | None = None) -> None:
        """`owns`/`claim` (a cluster, cluster/coordinator.py): only the accounts this instance holds
        the lease of are restored; `claim(phone)` takes a new account's lease before it is paired."""
        self._config = config
        self._owns = owns
        self._claim = claim
        self._engine = engine
        self.store = store
        self._bus = bus
        self._outbox = outbox
        self._clock = clock
        self._rng = rng or random.Random()
        self._accounts: dict[str, Supervisor] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._ready = asyncio.Event()
        self._stopping = False
        self._background = BackgroundTasks(log)  # store checks and backups in flight
        self._had_folder: set[str] = set()  # accounts whose folder was seen: its deletion removes them
        self._folders = asyncio.Lock()  # folder moves and the reconcile of sessions/ never interleave
        self._backup_locks: dict[str, asyncio.Lock] = {}  # one backup of a store at a time
        self._disk_full: str | None = None  # the data disk's condition, for accounts added meanwhile
        self._pg_sessions = config.store.url  # `store.url`: the sessions are in PostgreSQL (store/pg_sessions.py)
        bus.subscribe(ev.AccountConnected, lambda event: self.after_connected(event.phone), OWNER)
        bus.subscribe(ev.LinkedElsewhere, self._on_linked_elsewhere, OWNER)
        bus.subscribe(ev.DiskFullChanged, lambda event: self.set_disk_full(event.error), OWNER)

    # -- lifecycle -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Restore every stored account, then send heartbeats until cancelled."""
        self.restore_all()
        self._ready.set()
        while True:
            await asyncio.sleep(self._config.status_interval)
            for supervisor in list(self._accounts.values()):
                supervisor.heartbeat()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    @property
    def ready(self) -> bool:
        """The stored accounts were restored (`run` began)."""
        return self._ready.is_set()

    def restore_all(self) -> list[str]:
        """Create a supervisor for every account folder and configured phone; start the linked ones."""
        self.store.ensure_root()
        if self._pg_sessions is not None:
            log.info("sessions in PostgreSQL: no file backups or integrity checks of them here "
                     "(back PostgreSQL up instead, e.g. pg_dump; see docs/scaling.md)")
        restored: list[str] = []
        for phone in self.store.account_phones():
            if phone in self._accounts or self.runs_elsewhere(phone):
                continue  # already here, or another bridge of the cluster runs it
            paths = self.store.paths(phone)
            meta = self.store.read_meta(phone)
            stored = paths.store.exists() or self._pg_sessions is not None  # in PostgreSQL: the engine tells
            if stored and meta.get("stopped_by_user"):
                self._add(phone, meta, AccountState.STOPPED)  # `disconnect` outlives a restart
            elif stored:
                # `connecting` is published now; the store is checked (and repaired from a backup)
                # off the loop, then the engine starts: a hundred checks never delay the first status.
                self._add(phone, meta, AccountState.CONNECTING)
                self._spawn_check(phone)
                restored.append(phone)
            elif meta.get("last_connected"):
                self._add(phone, meta, AccountState.LOGGED_OUT,
                          "no linked device in the store; send connect to link it again")
            else:
                self._add(phone, meta, AccountState.STOPPED)  # pairing was started, never finished
        for phone in self._config.accounts:
            if phone not in self._accounts and not self.runs_elsewhere(phone):
                self._add(phone, {}, AccountState.STOPPED)
        shown = ", ".join(restored[:10]) + (f" and {len(restored) - 10} more" if len(restored) > 10 else "")
        log.info("restoring %d stored account(s): %s", len(restored), shown or "none")
        return restored

    def reconfigure(self, config: Config) -> None:
        """A reloaded config: pass it on; phones newly listed in `accounts` appear as `stopped`."""
        self._config = config
        for supervisor in self._accounts.values():
            supervisor.reconfigure(config)
        for phone in config.accounts:
            if phone not in self._accounts and not self.runs_elsewhere(phone):
                self._add(phone, {}, AccountState.STOPPED, announce=True)

    def _spawn_check(self, phone: str) -> None:
        self._background.spawn(self._check_and_start(phone), f"check-{phone}")


    async def _check_and_start(self, phone: str) -> None:
        """Integrity-check the store; replace a bad one by the newest good backup; then start or `error`."""
        paths = self.store.paths(phone)
        reason = None if self._pg_sessions is not None else await asyncio.to_thread(check_store, paths.store)
        supervisor = self._accounts.get(phone)
        if supervisor is None:
            return
        if reason is not None:
            log.warning("%s: store failed its check (%s)", phone, reason)
            used = await asyncio.to_thread(restore_from_backup, paths.store, paths.backups, None,
                                           now=self._clock(), key=self._config.backups.key)
            if used is None:
                supervisor.apply(m.StoreUnusable(f"store.db is unusable ({reason}) and no good backup exists"))
                return
            log.warning("%s: store restored from backup %s", phone, used.name)
            self._bus.emit(ev.StoreRestored(phone, used.name, reason))
        if self._engine.has_device(paths.store):
            supervisor.apply(m.Start())
        else:
            if self._pg_sessions is not None and paths.store.is_file() and paths.store.stat().st_size:
                log.warning("%s: %s is not used with store.url (the session is read from PostgreSQL, which has "
                            "no linked device of it): link the account again (docs/scaling.md)", phone, paths.store)
            meta = self.store.read_meta(phone)
            state = AccountState.LOGGED_OUT if meta.get("last_connected") else AccountState.STOPPED
            supervisor.apply(m.Settle(state, "no linked device in the store; send connect to link it"
                                      if state == AccountState.LOGGED_OUT else None))

    def after_connected(self, phone: str) -> None:
        """Remember the name and time in account.json, tighten permissions, back the store up (off the loop)."""
        supervisor = self._accounts.get(phone)
        if supervisor is not None:
            self._background.spawn(self._after_connected(phone, supervisor.status.name,
                                                         supervisor.status.last_connected), f"connected-{phone}")

    async def _after_connected(self, phone: str, name: str | None, last_connected: datetime | None) -> None:
        def record() -> bool:
            try:
                self.store.write_meta(phone, name=name, engine=self._engine.name, last_connected=last_connected)
            except OSError as exc:  # a full disk: the next connect records it again
                log.warning("%s: name and last_connected not recorded in account.json: %s", phone, exc)
                return False
            self.store.secure(phone)
            return self._changed_since_backup(phone)

        if await asyncio.to_thread(record):
            await self.backup(phone, missing_ok=True)

    def _changed_since_backup(self, phone: str) -> bool:
        """False when the newest backup is younger than the store (and its WAL): nothing new to keep."""
        paths = self.store.paths(phone)
        backups = list_backups(paths.backups)
        if not backups:
            return True
        newest = backups[0].stat().st_mtime
        written = [f.stat().st_mtime for f in (paths.store, paths.store.with_name(paths.store.name + "-wal")) if f.exists()]
        return not written or max(written) >= newest

    async def backup(self, phone: str | None = None, missing_ok: bool = False) -> dict[str, str]:
        """Back up one store (or all) now; {phone: backup file name}. Errors are per account."""
        phones = [phone] if phone else self.phones()
        if phone and not missing_ok:
            self.get(phone)
        results: dict[str, str] = {}
        for item in phones:
            if item not in self._accounts:
                continue  # removed (or moved) since the backup was asked for
            paths = self.store.paths(item)
            if self._pg_sessions is not None:
                results[item] = "in PostgreSQL (back it up with pg_dump)"
                continue
            if not paths.store.exists():
                results[item] = "no store"
                continue
            try:
                async with self._backup_locks.setdefault(item, asyncio.Lock()):
                    made = await asyncio.to_thread(backup_store, paths.store, paths.backups,
                                                   self._config.backups.keep, self._clock(), self._config.backups.key)
            except (BackupError, OSError) as exc:
                log.warning("%s: backup failed: %s", item, exc)
                results[item] = f"failed: {exc}"
            else:
                log.info("%s: store backed up to %s", item, made.name)
                results[item] = made.name
        return results

    async def close(self) -> None:
        """Stop every engine session and supervisor task; each running account then shows `stopped`."""
        self._stopping = True
        self._bus.unsubscribe(OWNER)
        await self._background.finish(CLOSE_GRACE)  # a just-connected account's account.json and backup
        await asyncio.gather(*(s.close() for s in self._accounts.values()), return_exceptions=True)
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        log.info("%d account(s) stopped", len(self._accounts))

    def set_disk_full(self, error: str | None) -> None:
        """The data disk filled up (`error`: the status text) or is writable again (None): every account shows it."""
        self._disk_full = error
        for supervisor in self._accounts.values():
            supervisor.apply(m.DiskFull(error) if error is not None else m.DiskSpaceBack())

    # -- queries -------------------------------------------------------------------------------
    def phones(self) -> list[str]:
        return sorted(self._accounts)

    def get(self, phone: str) -> Supervisor:
        supervisor = self._accounts.get(phone)
        if supervisor is None:
            raise UnknownAccount(phone)
        return supervisor

    def find(self, phone: str) -> Supervisor | None:
        return self._accounts.get(phone)

    def runs_elsewhere(self, phone: str) -> bool:
        """In a cluster: the account is not this bridge's (another one runs it, or will)."""
        return self._owns is not None and not self._owns(phone)

    def summary(self) -> list[dict[str, Any]]:
        return [{"phone": p, "name": s.status.name, "state": s.state.value}
                for p, s in sorted(self._accounts.items())]

    def health(self) -> dict[str, Any]:
        return {
            phone: {"state": s.state.value, "queued_outgoing": s.status.queued_outgoing,
                    "messages_in": s.messages_in, "messages_out": s.messages_out,
                    "reconnects": s.account.reconnects, "reconnect_attempt": s.status.reconnect_attempt,
                    "error_code": s.status.error_code, "degraded": s.status.degraded}
            for phone, s in sorted(self._accounts.items())
        }

    # -- commands ------------------------------------------------------------------------------
    async def pair(self, phone: str, method: PairMethod) -> Supervisor:
        """Link a number: the account's `connect`, creating the account when it is new.

        The account's folder is made (and proved writable) first: when the sessions folder cannot be
        written this raises `StorageError` and no account, retained topic or folder is left behind."""
        if self._claim is not None and phone not in self._accounts:
            await self._claim(phone)  # the account's lease first: raises when another bridge runs it
        try:
            await asyncio.to_thread(self.store.ensure_writable, phone)
        except StorageError as exc:
            log.warning("%s: cannot pair: %s", phone, exc)
            raise
        supervisor = self._accounts.get(phone) or self._add(phone, {}, AccountState.STOPPED, announce=True)
        self._remember_stop(phone, False)
        await supervisor.submit(m.Start(method=method, by_user=True))
        return supervisor

    async def connect(self, phone: str, method: PairMethod) -> Supervisor:
        supervisor = self.get(phone)
        self._remember_stop(phone, False)
        await supervisor.submit(m.Start(method=method, by_user=True))
        return supervisor

    async def disconnect(self, phone: str) -> Supervisor:
        supervisor = self.get(phone)
        await supervisor.submit(m.Stop())
        self._remember_stop(phone, True)
        return supervisor

    def _remember_stop(self, phone: str, stopped: bool) -> None:
        """A `disconnect` is kept in account.json so a restart does not undo it; `connect` clears it."""
        if self.store.paths(phone).root.exists() and bool(self.store.read_meta(phone).get("stopped_by_user")) != stopped:
            try:
                self.store.write_meta(phone, stopped_by_user=stopped)
            except OSError as exc:  # the command itself was carried out; only its memory across restarts is missing
                log.warning("%s: %s not recorded in account.json, a restart will not remember it: %s", phone,
                            "disconnect" if stopped else "connect", exc)

    async def logout(self, phone: str) -> Supervisor:
        """Unlink on WhatsApp's side, stop, and remove the store (account.json and backups stay)."""
        supervisor = self.get(phone)
        await supervisor.logout()
        for path in store_files(self.store.paths(phone).store):  # a log left by a killed engine process too:
            path.unlink(missing_ok=True)  # the next linked device's store must not take its ids
        if self._pg_sessions is not None:  # the store is the account's schema: it goes likewise
            await asyncio.to_thread(self._drop_pg_session, phone)
        log.info("%s: logged out, store removed", phone)
        return supervisor

    async def restart(self, phone: str) -> Supervisor:
        supervisor = self.get(phone)
        await supervisor.submit(m.Stop())
        await supervisor.submit(m.Start(by_user=True))
        return supervisor

    async def remove(self, phone: str, delete_files: bool = True) -> None:
        """Forget an account: log out if linked, stop it, delete its folder (unless already gone)."""
        supervisor = self.get(phone)
        if delete_files and supervisor.state == AccountState.CONNECTED:
            await self.backup(phone)  # a final backup, kept until the folder goes
            await supervisor.logout()
        await self._drop(phone)
        if delete_files:
            await asyncio.to_thread(self.store.remove, phone)
            if self._pg_sessions is not None:
                await asyncio.to_thread(self._drop_pg_session, phone)
        self._outbox.clear(phone)
        self._bus.emit(ev.AccountRemoved(phone))

    def _drop_pg_session(self, phone: str) -> None:
        """Drop the account's session schema in PostgreSQL (everything of its session goes)."""
        from ..store.pg_sessions import drop_account

        assert self._pg_sessions is not None
        try:
            if drop_account(self._pg_sessions, phone):
                log.info("%s: session dropped from PostgreSQL", phone)
        except Exception as exc:  # noqa: BLE001 (the account is gone here; its schema stays for an admin)
            log.warning("%s: session schema not dropped from PostgreSQL: %s", phone, exc)

    async def adopt(self, phone: str) -> bool:
        """A folder appeared in sessions/ (copied in), or this bridge took the account's lease: restore
        it. False when already known (or another bridge of the cluster holds it)."""
        if phone in self._accounts or not is_phone(phone) or self.runs_elsewhere(phone):
            return False
        paths = self.store.paths(phone)
        if not paths.store.exists() and self._pg_sessions is None:  # in PostgreSQL: the engine tells
            return False
        self._add(phone, self.store.read_meta(phone), AccountState.CONNECTING, announce=True)
        self._spawn_check(phone)
        return True

    async def release(self, phone: str) -> None:
        """Stop the account's engine and forget it here, keeping everything stored: another bridge of
        the cluster runs it now (its lease moved). Its retained topics stay for the new owner."""
        supervisor = self._accounts.pop(phone, None)
        if supervisor is None:
            return
        await supervisor.close()
        task = self._tasks.pop(phone, None)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        self._bus.emit(ev.AccountsChanged())

    def _on_linked_elsewhere(self, event: ev.LinkedElsewhere) -> None:
        self._background.spawn(self.relink(event.asked, event.linked), f"relink-{event.asked}")

    async def relink(self, asked: str, linked: str) -> None:
        """A QR offered for `asked` was scanned by `linked`: keep the session under the real number."""
        async with self._folders:
            await self._relink(asked, linked)

    async def _relink(self, asked: str, linked: str) -> None:
        if not is_phone(linked) or linked in self._accounts:
            log.warning("%s: linked as %s, which is already an account; keeping it under %s", asked, linked, asked)
            self._bus.emit(ev.LinkedOtherNumber(asked, linked, moved=False))
            return
        log.info("%s: the QR was scanned by %s; moving the session", asked, linked)
        await self._drop(asked)
        source, target = self.store.paths(asked).root, self.store.paths(linked).root
        await asyncio.to_thread(source.rename, target)
        self._had_folder.discard(asked)
        self.store.write_meta(linked, phone=linked)
        log.warning("%s: the QR was scanned by %s; the session is stored under %s", asked, linked, linked)
        self._bus.emit(ev.LinkedOtherNumber(asked, linked, moved=True))
        self._bus.emit(ev.AccountRemoved(asked))
        await self.adopt(linked)

    async def reconcile(self) -> bool:
        """sessions/ changed on disk: forget accounts whose folder was deleted, restore folders copied in.
        False while a new folder is still being written (the watcher asks again when it is quiet)."""
        async with self._folders:
            return await self._reconcile()

    async def _reconcile(self) -> bool:
        on_disk = set(self.store.account_phones())
        settling = {phone for phone in on_disk - set(self._accounts) if self._recently_written(phone)}
        for phone in list(self._accounts):
            if self.store.paths(phone).root.exists():
                self._had_folder.add(phone)
            elif phone in self._had_folder:
                log.info("%s: session folder deleted; removing the account", phone)
                self._had_folder.discard(phone)
                await self.remove(phone, delete_files=False)
        for phone in sorted(on_disk - set(self._accounts) - settling):
            if await self.adopt(phone):
                log.info("%s: session folder appeared; restoring it", phone)
        return not settling

    def _recently_written(self, phone: str, quiet: float = 1.0) -> bool:
        """A folder being copied in: some file in it changed less than `quiet` seconds ago."""
        newest = max((entry.stat().st_mtime for entry in self.store.paths(phone).root.rglob("*")), default=0.0)
        return time.time() - newest < quiet

    # -- internals -----------------------------------------------------------------------------
    def _add(self, phone: str, meta: dict[str, Any], state: AccountState, error: str | None = None,
             announce: bool = False) -> Supervisor:
        paths = self.store.paths(phone)
        last = meta.get("last_connected")
        supervisor = Supervisor(
            phone, self._engine, paths.store, self._config, self._bus, self._outbox, self._clock, self._rng,
            name=meta.get("name"), last_connected=datetime.fromisoformat(last.replace("Z", "+00:00")) if last else None,
            initial=state, error=error)
        self._accounts[phone] = supervisor
        if paths.root.exists():
            self._had_folder.add(phone)
        self._tasks[phone] = asyncio.create_task(supervisor.run(), name=f"account-{phone}")
        if self._disk_full is not None:
            supervisor.apply(m.DiskFull(self._disk_full))
        if announce:
            self._bus.emit(ev.AccountAdded(phone, state))
        self._bus.emit(ev.AccountsChanged())
        return supervisor

    async def _drop(self, phone: str) -> None:
        supervisor = self._accounts.pop(phone)
        await supervisor.close()
        task = self._tasks.pop(phone, None)
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)
        self._bus.emit(ev.AccountDropped(phone))
        self._bus.emit(ev.AccountsChanged())
