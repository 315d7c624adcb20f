"""Opening the PostgreSQL stores named by `store.url` (the SQLite ones are opened in app.py)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from datetime import datetime

from ..accounts.dedup import BeforeWrite
from ..config import Config
from ..startup import StartupError
from .pg import PgSchemaTooNew, PgUnavailable, masked
from .pg_dedup import PgSeenIds
from .pg_outbox import PgOutbox

log = logging.getLogger(__name__)


def open_pg_stores(config: Config, clock: Callable[[], datetime], opened: contextlib.ExitStack,
                   before_write: BeforeWrite | None = None) -> tuple[PgOutbox, PgSeenIds]:
    """The outbox and the dedup ids in PostgreSQL, each closed by `opened`; StartupError (exit 2) naming
    why not. `before_write`: the spool's `commit` (accounts/dedup.py)."""
    url = config.store.url
    assert url is not None
    try:
        outbox = opened.enter_context(contextlib.closing(PgOutbox(url, clock)))
        seen = opened.enter_context(contextlib.closing(PgSeenIds(url, before_write=before_write)))
    except (PgUnavailable, PgSchemaTooNew) as exc:
        raise StartupError(str(exc)) from None
    log.info("durable state in PostgreSQL at %s (outbox, dedup ids)", masked(url))
    return outbox, seen
