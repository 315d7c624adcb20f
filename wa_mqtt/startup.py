"""Checks before the bridge starts: one bridge per sessions folder, a free port for the embedded broker.

Each failure is a `StartupError` whose one-line message says what is wrong and what to do; the
command line prints it and exits 2 (a setup problem, like an invalid config).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from pathlib import Path

from .folder_lock import FolderBusy, FolderLock, lock_folder

log = logging.getLogger(__name__)


class StartupError(Exception):
    """The bridge cannot start for a reason the user must fix; the message says how."""


def lock_sessions_folder(sessions_dir: Path) -> FolderLock | None:
    """Hold the sessions folder for this bridge's lifetime. StartupError when another bridge holds it;
    None (with a warning) when the folder cannot carry a lock file (read-only): the bridge still runs."""
    folder = Path(sessions_dir).absolute()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return lock_folder(folder)
    except FolderBusy as exc:
        holder = f"another wa_mqtt bridge (PID {exc.pid})" if exc.pid else "another wa_mqtt bridge"
        raise StartupError(f"the sessions folder {folder} is in use by {holder}: stop that one first, "
                           "or give this one its own sessions_dir") from None
    except OSError as exc:
        log.warning("cannot lock the sessions folder %s (%s): a second bridge on it would not be noticed",
                    folder, exc.strerror or exc)
        return None


def ensure_port_free(port: int) -> None:
    """StartupError when the embedded broker could not listen on 127.0.0.1:`port` (bound like asyncio
    binds it, so a port only in TIME_WAIT counts as free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        if os.name == "posix":
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise port_error(port, exc) from None


def port_error(port: int, exc: OSError) -> StartupError:
    """The one-line explanation of why the embedded broker cannot listen on `port`."""
    if exc.errno == errno.EADDRINUSE:
        return StartupError(
            f"port {port} is already taken on 127.0.0.1 (another MQTT broker?): set mqtt.url to use that broker "
            f"(mqtt://127.0.0.1:{port}), or mqtt.embedded_port to a free port")
    return StartupError(f"the embedded broker cannot listen on 127.0.0.1:{port} ({exc.strerror or exc}): "
                        "set mqtt.embedded_port to another port, or mqtt.url to use your own broker")
