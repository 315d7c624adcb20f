"""Storage failures when an account is created, black box: `pair` on a sessions folder that cannot be
written answers `storage_error` naming the folder and the cause, and leaves nothing behind (no
account, nothing retained, no half-made folder); once the folder is writable again, `pair` works."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import BridgeEnv, BridgeProcess, Probe

NEW = "5511900000071"
CONFIGURED = "5511900000072"


def _run(*cmd: str) -> bool:
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[str]:
    """`folder` read-only for everyone, root included (tests run as root, where chmod stops nothing): a
    read-only bind mount of the folder onto itself, else the immutable attribute; skip if neither works."""
    if os.geteuid() != 0:
        folder.chmod(0o500)
        try:
            yield "permission denied"
        finally:
            folder.chmod(0o700)
        return
    if shutil.which("mount") and _run("mount", "--bind", str(folder), str(folder)):
        if _run("mount", "-o", "remount,bind,ro", str(folder)):
            try:
                yield "read-only file system"
            finally:
                _run("umount", str(folder))
            return
        _run("umount", str(folder))
    if shutil.which("chattr") and _run("chattr", "+i", str(folder)):
        try:
            yield "operation not permitted"
        finally:
            _run("chattr", "-i", str(folder))
        return
    pytest.skip("cannot make a folder read-only for root here: no bind mount (needs CAP_SYS_ADMIN) and no chattr +i")


async def test_pair_on_a_read_only_sessions_folder_is_a_storage_error_and_leaves_no_account(
        env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.write_config(accounts=[CONFIGURED])
    env.sessions.mkdir(parents=True)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_online()
        await probe.wait_state(CONFIGURED, "stopped")
        with read_only(env.sessions) as cause:
            for phone in (NEW, CONFIGURED):
                response = await probe.request("bridge", "pair", {"phone": phone})
                assert (response["status"], response["code"]) == ("error", "storage_error"), response
                assert str(env.sessions / phone) in response["error"] and cause in response["error"].lower()
            health = (await probe.request("bridge", "health", {}))["data"]["accounts"]
            assert NEW not in health and health[CONFIGURED]["state"] == "stopped"  # not stuck in connecting
        assert not (env.sessions / NEW).exists()
        assert "Traceback" not in bridge.log()

        async with Probe(env.broker, env.base) as late:
            await late.request("bridge", "health", {})  # retained messages come before this answer
            assert [r.topic for r in late.received if r.retain and NEW.encode() in r.payload] == []

        response = await probe.request("bridge", "pair", {"phone": NEW})  # writable again
        assert response["status"] == "ok", response
        await probe.wait_state(NEW, "pairing")
