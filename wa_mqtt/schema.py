"""Schema versions of the bridge's own SQLite files (spool, outbox, dedup ids): a numbered list of upgrades.

Each file keeps its version in `PRAGMA user_version` (in the database header: no table of its own).
Each kind of file declares a `Schema`: its upgrades numbered 1, 2, 3, ... (upgrade N turns a
version N-1 file into version N), each an SQL script or a function of the connection. Opening a file
(`open_versioned`) applies the missing upgrades in order, one transaction each, so a failing upgrade
rolls back and leaves the file at the version before it; a file newer than the code is refused with
`SchemaTooNewError` (the bridge exits 2 with that one line) and is not changed.

Version 0 is a file with no version: either a new, empty file (it gets every upgrade) or one written
before schema versions existed, whose tables are version 1's. Upgrade 1 is therefore the schema of
those files written with `CREATE ... IF NOT EXISTS`: on an old file it keeps the tables and rows and
completes whatever an interrupted first start left out, on a new one it creates them.

The list is append-only: once an upgrade has shipped it is never edited (files in the field already
passed it); a change to a table is a new upgrade at the end. Modelled on mautrix's `UpgradeTable`,
with SQLite's own version slot instead of a version table.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .durable import Synchronous, open_wal, transaction

log = logging.getLogger(__name__)

Step = str | Callable[[sqlite3.Connection], None]


@dataclass(frozen=True)
class Upgrade:
    """Turns a version `version - 1` file into version `version`. A function step runs inside the
    upgrade's transaction and must not commit (so no `executescript`)."""

    version: int
    description: str
    step: Step


class Schema:
    """One kind of file (e.g. the outbox): its name and what it holds (for messages), its upgrades
    numbered from 1."""

    def __init__(self, name: str, holds: str, upgrades: Sequence[Upgrade]) -> None:
        numbers = [upgrade.version for upgrade in upgrades]
        if numbers != list(range(1, len(upgrades) + 1)):
            raise ValueError(f"{name}: upgrades must be numbered 1, 2, 3, ... in order, not {numbers}")
        self.name = name
        self.holds = holds
        self.upgrades = tuple(upgrades)

    @property
    def version(self) -> int:
        """The version this code writes: the number of the last upgrade."""
        return len(self.upgrades)


class SchemaError(Exception):
    """A durable file this code cannot use; the message names the file and what to do."""


class SchemaTooNewError(SchemaError):
    """The file was written by a newer wa_mqtt (its schema version is above the code's)."""

    def __init__(self, path: Path, schema: Schema, found: int) -> None:
        self.path, self.found, self.supported = path, found, schema.version
        super().__init__(
            f"{path}: {schema.name} schema version {found} is newer than this wa_mqtt supports "
            f"(version {schema.version}); it was written by a newer wa_mqtt: run that version again, "
            f"or move the file away to start with an empty one (the {schema.holds} in it are then left behind)")


class SchemaUpgradeError(SchemaError):
    """An upgrade raised; its transaction was rolled back and the file is still at the version before."""

    def __init__(self, path: Path, upgrade: Upgrade, cause: BaseException) -> None:
        self.path, self.upgrade = path, upgrade
        super().__init__(
            f"{path}: upgrade to schema version {upgrade.version} ({upgrade.description}) failed: {cause}; "
            f"the file stays at version {upgrade.version - 1}, nothing in it lost; the next start tries again")


def open_versioned(path: Path, schema: Schema, synchronous: Synchronous = "NORMAL",
                   page_size: int | None = None) -> sqlite3.Connection:
    """`durable.open_wal`, then `upgrade` to the code's version; raises SchemaError (closing the file)."""
    conn = open_wal(path, synchronous, page_size)
    try:
        upgrade(conn, schema, Path(path))
    except BaseException:
        conn.close()
        raise
    return conn


def upgrade(conn: sqlite3.Connection, schema: Schema, path: Path) -> int:
    """Bring the file to `schema.version`, one transaction per upgrade; returns the version it was at.

    Raises SchemaTooNewError (nothing changed) or SchemaUpgradeError (the failing upgrade rolled back)."""
    found = user_version(conn)
    if found > schema.version:
        raise SchemaTooNewError(path, schema, found)
    if found == schema.version:
        return found
    new_file = found == 0 and not _has_tables(conn)
    done: list[Upgrade] = []
    for step in schema.upgrades[found:]:
        try:
            at = _apply(conn, step)
        except Exception as exc:
            raise SchemaUpgradeError(path, step, exc) from exc
        if at > schema.version:  # another process got there first, with newer code
            raise SchemaTooNewError(path, schema, at)
        if at == step.version - 1:
            log.debug("%s: %s schema upgraded to version %d: %s", path, schema.name, step.version, step.description)
            done.append(step)
    if new_file:
        log.debug("%s: new %s file at schema version %d", path, schema.name, schema.version)
    elif done:
        origin = "unversioned (written before schema versions)" if found == 0 else f"version {found}"
        log.info("%s: %s schema upgraded from %s to version %d (%s)", path, schema.name, origin, schema.version,
                 "; ".join(step.description for step in done))
    return found


def user_version(conn: sqlite3.Connection) -> int:
    """The schema version recorded in the file (0: none)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _apply(conn: sqlite3.Connection, step: Upgrade) -> int:
    """Run `step` in one transaction if the file is at the version just below it (read again under
    the write lock: another process may have upgraded it meanwhile); the version found there."""
    with transaction(conn):
        at = user_version(conn)
        if at == step.version - 1:
            _run(conn, step.step)
            conn.execute(f"PRAGMA user_version = {int(step.version)}")
    return at


def _has_tables(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
                        " LIMIT 1").fetchone() is not None


def _run(conn: sqlite3.Connection, step: Step) -> None:
    if callable(step):
        step(conn)
        return
    for statement in _statements(step):
        conn.execute(statement)


def _statements(script: str) -> Iterator[str]:
    """The statements of an SQL script, split where SQLite's own tokenizer says one is complete
    (`executescript` would commit the upgrade's transaction first)."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\r\n;"):
                yield pending
            pending = ""
    if pending.strip(" \t\r\n;"):
        raise ValueError(f"incomplete SQL statement at the end of an upgrade script: {pending.strip()!r}")
