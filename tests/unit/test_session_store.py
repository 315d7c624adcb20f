"""SessionStore.ensure_writable: an account folder that cannot be written is refused with a message
naming it and the cause, and a folder made for the attempt is removed again."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from wa_mqtt.accounts.store import SessionStore, StorageError

PHONE = "5511900000081"


@contextlib.contextmanager
def full_disk(folder: Path) -> Iterator[None]:
    """A small tmpfs mounted on `folder` and filled up (root only; skipped elsewhere)."""
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                                           capture_output=True, check=False).returncode != 0:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN)")
    try:
        with contextlib.suppress(OSError), open(folder / "filler", "wb") as handle:
            while True:
                handle.write(b"\0" * 4096)
                handle.flush()
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_writable_folder_is_made_private_and_left_clean(tmp_path: Path) -> None:
    paths = SessionStore(tmp_path / "sessions").ensure_writable(PHONE)
    assert paths.root.is_dir() and paths.root.stat().st_mode & 0o777 == 0o700
    assert list(paths.root.iterdir()) == []  # the test file is gone


def test_a_full_disk_is_a_storage_error_and_leaves_no_half_made_folder(tmp_path: Path) -> None:
    sessions = tmp_path / "sessions"
    with full_disk(sessions):
        with pytest.raises(StorageError) as failure:
            SessionStore(sessions).ensure_writable(PHONE)
        assert str(sessions / PHONE) in str(failure.value) and "No space left" in str(failure.value)
        assert not (sessions / PHONE).exists()
