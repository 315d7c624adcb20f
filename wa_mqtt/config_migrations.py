"""config.yaml versions: the top-level `version` key and the stepwise migrations of older files.

`CONFIG_VERSION` is the layout this code reads. A file without `version` is version 1: the layout of
every config.yaml written before the key existed (so no file needs editing for it, and a migration
must leave a file already in its new layout unchanged). `MIGRATIONS` holds one `Migration` per later
version, numbered 2, 3, ... and append-only; each turns the raw mapping of version N-1 into version
N (rename or move keys, convert values) before validation, so the pydantic models only ever know the
current layout. A file newer than the code is a ConfigError naming `version`.

None is registered yet: version 1 is today's layout. The next incompatible change of a key adds
`Migration(2, "what changed", function)` below, and `CONFIG_VERSION` follows.

Migrated in memory, not rewritten on disk. Frigate backs the file up and rewrites it; here the file
is the user's own, usually annotated from the shipped example, and PyYAML would drop every comment
(keeping them needs ruamel.yaml, a new dependency); it may be mounted read-only (Docker) or be the
add-on's `/config/config.yaml`; and the bridge watches it, so a rewrite would read as the user's own
edit and reload. So the bridge logs at info which migrations it applied and suggests updating the
file; the same file keeps working until then.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

VERSION_KEY = "version"
FIRST_VERSION = 1  # a file without `version`: the layout before the key existed


@dataclass(frozen=True)
class Migration:
    """Turns the raw mapping of a version `version - 1` file into version `version`. `apply` gets a
    deep copy it may change, and returns the new mapping (without `version`: that is set for it)."""

    version: int
    description: str  # one line for the log: what the user's file should change
    apply: Callable[[dict[str, Any]], dict[str, Any]]


# Append-only: Migration(2, ...), Migration(3, ...). A shipped one is never edited.
MIGRATIONS: tuple[Migration, ...] = ()
CONFIG_VERSION = FIRST_VERSION + len(MIGRATIONS)


class ConfigVersionError(ValueError):
    """`version` is not one this code can read (newer than the code, or not a version number)."""


def current_version(migrations: Sequence[Migration] | None = None) -> int:
    """The version a config reaches after `migrations` (default: the registered ones)."""
    return FIRST_VERSION + len(MIGRATIONS if migrations is None else migrations)


def migrate(data: Mapping[str, Any],
            migrations: Sequence[Migration] | None = None) -> tuple[dict[str, Any], list[Migration]]:
    """(`data` in the current layout with `version` set, the migrations applied, oldest first).

    `data` itself is not changed. Raises ConfigVersionError for a `version` that is newer than the
    code or not a whole number from 1 up."""
    steps = MIGRATIONS if migrations is None else tuple(migrations)
    numbers = [step.version for step in steps]
    if numbers != list(range(FIRST_VERSION + 1, FIRST_VERSION + 1 + len(steps))):
        raise ValueError(f"config migrations must be numbered 2, 3, ... in order, not {numbers}")
    current = current_version(steps)
    found = data.get(VERSION_KEY, FIRST_VERSION)
    if isinstance(found, bool) or not isinstance(found, int) or found < FIRST_VERSION:
        raise ConfigVersionError(f"{VERSION_KEY}: must be a whole number from {FIRST_VERSION} up "
                                 f"(this wa_mqtt reads {current}), not {found!r}")
    if found > current:
        raise ConfigVersionError(
            f"{VERSION_KEY}: {found} is newer than this wa_mqtt reads ({current}): the file was written for "
            f"a newer wa_mqtt; run that version, or rewrite the file for this one")
    migrated = copy.deepcopy(dict(data))
    applied = list(steps[found - FIRST_VERSION:])
    for step in applied:
        migrated.pop(VERSION_KEY, None)
        migrated = step.apply(migrated)
    migrated.pop(VERSION_KEY, None)
    return {VERSION_KEY: current, **migrated}, applied


def describe(source: str, applied: Sequence[Migration]) -> str:
    """One log line: which migrations were applied in memory to `source`, and what to do about it."""
    found, current = applied[0].version - 1, applied[-1].version
    steps = "; ".join(f"{step.version}: {step.description}" for step in applied)
    return (f"{source} is config version {found}, this wa_mqtt reads {current}: migrated in memory ({steps}); "
            f"the file is unchanged: make these changes and set `{VERSION_KEY}: {current}` in it")
