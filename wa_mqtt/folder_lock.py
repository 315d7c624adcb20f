"""Advisory folder locks: one bridge per sessions folder, one engine process per account store.

A lock is `flock(LOCK_EX)` on a `.wa_mqtt.lock` file inside the folder, holding the owner's PID for
the message a refused second owner prints. flock, not POSIX `fcntl` locks, on purpose:
- the kernel releases it when the owner ends, however it ends (SIGKILL included): no stale lock;
- it belongs to the open file, not to the process, so closing some other descriptor of the same
  file (reading the PID) does not drop it, as it would an `fcntl` lock;
- the descriptor is opened close-on-exec and never handed to a child: exec'd engine children and
  the fork server (started by exec with only its own descriptors) do not inherit it, so an engine
  process that outlives a killed bridge does not keep the bridge's lock alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
from pathlib import Path

LOCK_FILE = ".wa_mqtt.lock"
POLL = 0.1  # seconds between tries while waiting for a lock (a dying holder frees it within seconds)


class FolderBusy(Exception):
    """Another process holds the folder's lock."""

    def __init__(self, folder: Path, pid: int | None) -> None:
        self.folder = folder
        self.pid = pid
        super().__init__(f"{folder} is in use by {f'process {pid}' if pid else 'another process'}")


class FolderLock:
    """A held lock; `release()` (or the end of the process) frees it."""

    def __init__(self, folder: Path, fd: int) -> None:
        self.folder = folder
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor of the open file releases the flock
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_folder(folder: Path) -> FolderLock:
    """Take `folder`'s lock now. Raises FolderBusy when another process holds it, OSError when the
    lock file cannot be opened (a missing or read-only folder)."""
    path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EROFS, errno.EPERM) or not path.exists():
            raise
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # read-only folder: flock works on a read-only fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderBusy(Path(folder), holder_pid(folder)) from None
    except BaseException:
        os.close(fd)
        raise
    with contextlib.suppress(OSError):  # the PID is a courtesy for the refusal message
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return FolderLock(Path(folder), fd)


async def lock_folder_waiting(folder: Path, timeout: float) -> FolderLock:
    """Take `folder`'s lock, waiting up to `timeout` seconds for its holder to let go (FolderBusy then)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return lock_folder(folder)
        except FolderBusy:
            if loop.time() >= deadline:
                raise
        await asyncio.sleep(POLL)  # flock has no timeout; a blocked thread could not be abandoned


def holder_pid(folder: Path) -> int | None:
    """The PID written by the lock's holder, when readable."""
    try:
        text = (Path(folder) / LOCK_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None
