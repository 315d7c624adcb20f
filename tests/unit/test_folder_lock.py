"""The folder lock: exclusive across processes and open files, kept when other descriptors of the lock
file close, released by release() or the end of its process (SIGKILL included), never inherited."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from wa_mqtt.folder_lock import LOCK_FILE, FolderBusy, holder_pid, lock_folder, lock_folder_waiting

HOLD = """
import sys, time
from pathlib import Path
from wa_mqtt.folder_lock import lock_folder
lock = lock_folder(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_lock_is_refused_with_the_holder_pid_until_released(tmp_path: Path) -> None:
    lock = lock_folder(tmp_path)
    with pytest.raises(FolderBusy) as busy:
        lock_folder(tmp_path)  # another open file, even in the same process
    assert busy.value.pid == os.getpid() and str(tmp_path) in str(busy.value)
    assert holder_pid(tmp_path) == os.getpid()  # reading the file (open + close) does not drop the lock
    with pytest.raises(FolderBusy):
        lock_folder(tmp_path)
    lock.release()
    lock.release()  # twice is harmless
    with lock_folder(tmp_path):
        assert (tmp_path / LOCK_FILE).stat().st_mode & 0o777 == 0o600


def test_a_killed_holder_frees_the_lock_and_children_do_not_inherit_it(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusy) as busy:
            lock_folder(tmp_path)
        assert busy.value.pid == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    lock = lock_folder(tmp_path)
    # a child started while the lock is held gets no copy of it (close-on-exec)
    child = subprocess.run(
        [sys.executable, "-c", ("import os\nfor fd in os.listdir('/proc/self/fd'):\n"
                                "    try: print(os.readlink('/proc/self/fd/' + fd))\n    except OSError: pass")],
        capture_output=True, text=True, check=True, close_fds=False)
    assert str(tmp_path / LOCK_FILE) not in child.stdout.splitlines()
    lock.release()


async def test_waiting_for_a_lock_gives_up_after_the_timeout(tmp_path: Path) -> None:
    with lock_folder(tmp_path), pytest.raises(FolderBusy):
        await lock_folder_waiting(tmp_path, timeout=0.3)
    async_lock = await lock_folder_waiting(tmp_path, timeout=0.3)
    async_lock.release()
