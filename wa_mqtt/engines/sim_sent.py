"""The message ids the simulated WhatsApp already took from a device (it drops a repeated one, as
WhatsApp does): the `sim_sent` table of the sim store (`sessions/<phone>/store.db`), pruned after
SENT_IDS_KEPT, at most once a PRUNE_EVERY (of the sim clock), through an index.

Written without fsync: the ids must outlive a killed process, not a power cut. The store keeps its
rollback journal (PERSIST: not created and removed per write); not WAL: the store must stay one
self-contained file (sim_pg.py saves its bytes, folders are copied between bridges).

Each id is recorded before its send is answered. Unbatched (a sim in the bridge's process, or with
`store.url`), as one SQLite transaction per send. Batched (an engine child, `batch`), a loop turn's
ids are appended with ONE write to a side log (`store.db-sent`) by `commit`, which the child runs
before any answer or event of the turn leaves its process: a write of the log is in the kernel's
hands as soon as it returns, so a killed process never forgets an id the bridge heard of, and it
costs one system call where a store transaction cost ~50 (locks, journal, page writes; ~60 us a
turn, half of the child's CPU per send). The logged ids are kept in memory (`_pending`, bounded:
FOLD_AT, more only while the store cannot be written) and moved into `sim_sent` in one transaction
(`fold`) when FOLD_AT of them gathered, at most FOLD_AFTER seconds after they were logged, on a
prune, and when the store is let go (close, a logout, a replaced file); the log is emptied after that
commit. A log found when the store is opened (a killed process's) is moved in first: so the ids are
always those of the store file in place when the session went online (plus, after a kill, the logged
ones, which WhatsApp took all the same). At rest (FOLD_AFTER after the last send) the store holds
them all: a backup or a copy of it misses none.

A write of the log the disk took only in part (full) is cut back off (ftruncate) before `commit`
raises: the turn is not answered, so none of its ids may be found by the next process either.

A look-up asks the logged ids, then a Bloom filter of the stored ones (`_MaybeStored`, 1 MB, filled
by a scan when the store is opened): the store is read only on its "maybe" (a repeat, or ~0.1 % of
new ids), not for every new id (a read transaction: ~20 us of locks and journal checks). The filter
keeps pruned ids: past REFILL_AFTER ids in it, a prune fills it anew, but only once as many ids were
added since the last fill as are left of those it was filled with (a scan costs at most two rows an
added id). A store holding more than REFILL_AFTER ids has no filter (each look-up reads the store)
until a prune leaves fewer: the ids stored are counted (those of the last fill, plus those added,
less those pruned), and the first prune that leaves at most REFILL_AFTER fills it anew (a scan of at
most that many rows).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

log = logging.getLogger(__name__)

SENT_IDS_KEPT = timedelta(days=2)  # how long a delivered message id is remembered (a repeat is dropped)
PRUNE_EVERY = timedelta(minutes=1)  # (sim clock) ids older than SENT_IDS_KEPT are removed at most this often
FOLD_AT = 512  # logged ids moved into the store in one transaction (and the memory they take is freed)
FOLD_AFTER = 1.0  # seconds after an id is logged by which it is in the store (if its process lives)
FILTER_BITS = 23  # the filter of ids that may be stored: 2^23 bits (1 MB); ~0.1 % false "maybe" at 100,000 ids
REFILL_AFTER = 1_000_000  # ids in the filter (~5 % false "maybe") past which a prune may fill it anew (it keeps pruned ids)


def log_path(store_path: Path) -> Path:
    return Path(f"{store_path}-sent")


def _open_db(store_path: Path) -> sqlite3.Connection:
    """The store's sent ids (indexed by `sent_at`, on stores made before that index too, so a prune
    reads only what it removes)."""
    db = sqlite3.connect(store_path)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("CREATE TABLE IF NOT EXISTS sim_sent (id TEXT PRIMARY KEY, sent_at TEXT NOT NULL)")
    try:
        db.execute("CREATE INDEX IF NOT EXISTS sim_sent_at ON sim_sent (sent_at)")
    except sqlite3.OperationalError as exc:  # a full disk, a read-only store: ids are still read (pruning scans)
        log.debug("sent ids of %s not indexed: %s", store_path, exc)
    db.execute("PRAGMA journal_mode=PERSIST")
    return db


def _is_time(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _inode(path: Path) -> int:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return -1


class _MaybeStored:
    """A Bloom filter (2 bits an id) of the ids in `sim_sent`: an id it has not seen is certainly not
    stored, so a new id (nearly every send) is known new without a store read (~20 us: a read
    transaction's locks and journal check). Never a false "no": every id stored goes through `add`."""

    def __init__(self) -> None:
        self._bits = bytearray(1 << (FILTER_BITS - 3))
        self.added = 0

    def add(self, key: str) -> None:
        h = hash(key)
        a, b = h & _MASK, (h >> FILTER_BITS) & _MASK
        self._bits[a >> 3] |= 1 << (a & 7)
        self._bits[b >> 3] |= 1 << (b & 7)
        self.added += 1

    def __contains__(self, key: str) -> bool:
        h = hash(key)
        a, b = h & _MASK, (h >> FILTER_BITS) & _MASK
        return bool(self._bits[a >> 3] & (1 << (a & 7)) and self._bits[b >> 3] & (1 << (b & 7)))


_MASK = (1 << FILTER_BITS) - 1


class SentIds:
    """The sent ids of one store file, on a connection kept open (opening one cost ~0.5 ms). The file
    may be replaced under the session (a logout and a new link, a restored backup): only while it is
    offline, so `check_file` is asked when it goes online, not on every send."""

    def __init__(self, store_path: Path) -> None:
        self._store_path = store_path
        self._log_path = log_path(store_path)
        self._open: tuple[int, sqlite3.Connection] | None = None  # the store's inode, a connection to it
        self._pruned_at: datetime | None = None  # (sim clock) when old ids were last removed
        self._batched = False
        self._pending: dict[str, str] = {}  # logged (batched) ids not moved into the store yet → sent_at (ISO)
        self._turn: list[str] = []  # this turn's ids (in `_pending` too), logged by `commit`
        self._log_fd: int | None = None
        self._failed: BaseException | None = None  # an id of the turn was not recorded: it must not be answered
        self._fold_timer: asyncio.TimerHandle | None = None
        self._filter: _MaybeStored | None = None  # made by `db` (`_fill`); None then: more ids stored than it is of use for
        self._filled = 0  # ids stored (and logged) at the last fill, less those pruned since (+ _added: the store's)
        self._added = 0  # ids recorded since the last fill
        self._log_size = 0  # bytes in the log (as this process wrote it): where a failed write is cut back to
        self._fold_at = FOLD_AT  # logged ids that make `commit` move them in (further on after a failed try)

    def batch(self) -> None:
        """Record ids with one log write a turn (`commit`); the caller promises to run `commit` before
        any answer or event of the turn's sends leaves its process."""
        self._batched = True

    def db(self) -> sqlite3.Connection:
        if self._open is None:
            self._open = (_inode(self._store_path), _open_db(self._store_path))
            self._pruned_at = None
            self._recover(self._open[1])
            self._fill(self._open[1])
        return self._open[1]

    def delivered_at(self, message_id: str) -> datetime | None:
        """When `message_id` was delivered, if it was (and is not pruned yet)."""
        if (at := self._pending.get(message_id)) is not None:
            return datetime.fromisoformat(at)
        db = self.db()
        if self._filter is not None and message_id not in self._filter:
            return None
        row = db.execute("SELECT sent_at FROM sim_sent WHERE id = ?", (message_id,)).fetchone()
        return datetime.fromisoformat(row[0]) if row else None

    def record(self, message_id: str, now: datetime) -> None:
        """Remember `message_id` as taken; ids older than SENT_IDS_KEPT are pruned, at most once a
        PRUNE_EVERY (an id may so be remembered up to a minute longer; a prune per send was a scan)."""
        db = self.db()
        if self._filter is not None:
            self._filter.add(message_id)
        self._added += 1
        prune = self._pruned_at is None or not self._pruned_at <= now < self._pruned_at + PRUNE_EVERY
        if not self._batched:
            with db:
                db.execute("INSERT OR REPLACE INTO sim_sent VALUES (?, ?)", (message_id, now.isoformat()))
                if prune:
                    self._prune(db, now)
            return
        self._pending[message_id] = now.isoformat()
        if "\n" not in message_id:  # (a log line could not hold it: into the store at once)
            self._turn.append(message_id)
            if not prune:
                return
        try:
            self.fold(now if prune else None)  # the turn's ids with it: committed, before any answer
        except BaseException as exc:  # none of the turn's sends may be answered (nor remembered)
            self._failed = exc
            self._pending.pop(message_id, None)
            self._forget_turn()
            raise

    def commit(self) -> None:
        """Make the ids recorded since the last call outlive the process (one write of the log); raises
        (OSError, sqlite3.Error) when one of them was not recorded: their sends must not be answered."""
        failed, self._failed = self._failed, None
        if failed is not None:
            self._forget_turn()
            raise sqlite3.OperationalError(f"a sent id could not be written: {failed}") from failed
        if not self._turn:
            return
        try:
            self._write_turn()
        except BaseException:
            self._forget_turn()
            raise
        if len(self._pending) >= self._fold_at:
            self._fold_quietly()
        elif self._fold_timer is None:
            with contextlib.suppress(RuntimeError):  # not on a loop: moved in at FOLD_AT or on close
                self._fold_timer = asyncio.get_running_loop().call_later(FOLD_AFTER, self._fold_later)

    def _write_turn(self) -> None:
        """Append the turn's ids to the log with one write; one the disk took in part is cut off again
        (its whole lines would otherwise make the next process remember ids never answered)."""
        data = "".join(f"{self._pending[message_id]} {message_id}\n" for message_id in self._turn).encode()
        if self._log_fd is None:
            self._log_fd = os.open(self._log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._log_size = os.fstat(self._log_fd).st_size
        try:
            if (written := os.write(self._log_fd, data)) != len(data):  # a full disk: a short write
                raise OSError(f"the sent-id log {self._log_path} took only {written} of {len(data)} bytes")
        except OSError as exc:
            try:
                os.ftruncate(self._log_fd, self._log_size)
            except OSError as cut:
                raise OSError(f"{exc}; its start could not be cut off again ({cut})") from exc
            raise
        self._log_size += len(data)
        self._turn.clear()

    def _forget_turn(self) -> None:
        """The turn's ids, not recorded (nor answered): not known to this process either."""
        for message_id in self._turn:
            self._pending.pop(message_id, None)
        self._turn.clear()

    def fold(self, prune_at: datetime | None = None) -> None:
        """Move the logged ids into the store in one transaction (with a prune as of `prune_at`), then
        empty the log."""
        db = self.db()
        with db:
            db.executemany("INSERT OR REPLACE INTO sim_sent VALUES (?, ?)",
                           self._pending.items())
            if prune_at is not None:
                self._prune(db, prune_at)
        self._pending.clear()
        self._turn.clear()  # in the store now: no need to log them
        try:  # (stored now, whatever comes: a log not emptied is only moved in again, unchanged)
            if self._log_fd is not None:
                os.ftruncate(self._log_fd, 0)
                self._log_size = 0
            elif self._log_path.exists():
                self._log_path.write_bytes(b"")
        except OSError as exc:
            log.warning("%s not emptied (its ids are in the store): %s", self._log_path, exc)

    def _fold_quietly(self, until: str = "for now") -> None:
        """A fold that fails (a full disk) keeps the ids logged and in memory: tried again FOLD_AT ids later."""
        try:
            self.fold()
        except (sqlite3.Error, OSError) as exc:
            self._fold_at = len(self._pending) + FOLD_AT
            log.warning("%d sent ids stay in %s %s: %s", len(self._pending), self._log_path, until, exc)
        else:
            self._fold_at = FOLD_AT

    def _fold_later(self) -> None:
        self._fold_timer = None
        if self._pending:
            self._fold_quietly()

    def _prune(self, db: sqlite3.Connection, now: datetime) -> None:
        pruned = db.execute("DELETE FROM sim_sent WHERE sent_at < ?", ((now - SENT_IDS_KEPT).isoformat(),))
        self._pruned_at = now
        self._filled -= max(pruned.rowcount, 0)
        if self._filter is None:  # too many ids stored for one: back once a prune leaves few enough
            if self._filled + self._added <= REFILL_AFTER:
                self._fill(db, folding=True)  # (a scan of at most REFILL_AFTER rows)
        elif self._filter.added > REFILL_AFTER and self._added >= self._filled:
            self._fill(db, folding=True)  # full of pruned ids ("maybe" to ever more new ids): see the module's doc

    def _fill(self, db: sqlite3.Connection, folding: bool = False) -> None:
        """The filter made anew from the ids stored and logged (a scan: on open, and after a prune
        when it is due); none when more are stored than REFILL_AFTER. `folding`: in a fold's
        transaction, where the logged ids are stored already (not to be counted twice)."""
        logged = () if folding else tuple(self._pending)
        self._added = 0
        self._filled = db.execute("SELECT count(*) FROM sim_sent").fetchone()[0] + len(logged)
        if self._filled > REFILL_AFTER:
            if self._filter is not None:
                log.info("%d sent ids in %s: each look-up reads the store (more than its filter holds)",
                         self._filled, self._store_path)
            self._filter = None
            return
        self._filter = maybe = _MaybeStored()
        for (stored,) in db.execute("SELECT id FROM sim_sent"):
            maybe.add(stored)
        for message_id in logged:
            maybe.add(message_id)

    def _recover(self, db: sqlite3.Connection) -> None:
        """Move the ids a killed process logged (and never moved in) into the store just opened."""
        try:
            logged = self._log_path.read_bytes()
        except FileNotFoundError:
            return
        for line in logged.split(b"\n")[:-1]:  # after the last newline: a torn write, never answered
            at, _, message_id = line.decode(errors="replace").partition(" ")
            if message_id and _is_time(at):
                self._pending.setdefault(message_id, at)
        if self._pending:
            log.info("%d sent ids recovered from %s", len(self._pending), self._log_path)
        self._fold_quietly()

    def check_file(self) -> None:
        """Let go of the store when the file is not the one open (a replaced file gets another inode
        while the old one is held open)."""
        if self._open is not None and self._open[0] != _inode(self._store_path):
            self.close()

    def close(self) -> None:
        """Move the logged ids into the store and let go of it. The turn's ids (not logged yet: their
        answers still to go out) are logged first, so ids that cannot be moved in all stay logged for
        the next opening; if even that write fails, the next `commit` raises (none is answered)."""
        if self._fold_timer is not None:
            self._fold_timer.cancel()
            self._fold_timer = None
        if self._open is None:
            return
        unlogged: OSError | None = None
        if self._failed is not None:
            self._forget_turn()  # never to be answered: not to be stored either
        elif self._turn:
            try:
                self._write_turn()
            except OSError as exc:
                unlogged = exc
        if self._pending:
            self._fold_quietly("until the store is opened again")
        if self._turn and unlogged is not None:  # neither logged nor stored: the turn must not be answered
            self._failed = unlogged
        self._pending.clear()
        self._turn.clear()
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None
        self._open[1].close()
        self._open = None
        self._filter = None  # (1 MB) the next `db` fills one anew
