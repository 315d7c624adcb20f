"""Shared fixtures: one private broker per test session (Mosquitto on a free port; amqtt if Mosquitto
is not installed), a fresh bridge environment per test, and the bridge subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pg_server import PgServer, pg_bin

from harness import BridgeEnv, BridgeProcess, Broker, SmallDisk
from harness import media_server as serve_media


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    instance = Broker(tmp_path_factory.mktemp("broker"))
    if instance.kind != "mosquitto":
        print("\nmosquitto is not installed: tests use the embedded amqtt broker (MQTT 3.1.1 only)", file=sys.stderr)
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    """One private PostgreSQL server per test session (skipped, saying why, where there is none)."""
    why = PgServer.unavailable()
    if why is not None:
        pytest.skip(why)
    bindir = pg_bin()
    assert bindir is not None
    server = PgServer(bindir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres: PgServer) -> str:
    """The URL of a fresh, empty database of the session's PostgreSQL server."""
    return postgres.new_database()


@pytest.fixture
def restartable_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker of the test's own, for tests that stop and start it."""
    instance = Broker(tmp_path_factory.mktemp("own-broker"), persistence=True)
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture
def env(tmp_path: Path, broker: Broker) -> BridgeEnv:
    return BridgeEnv(tmp_path, broker)


@pytest.fixture
def bridge(env: BridgeEnv) -> Iterator[BridgeProcess]:
    process = BridgeProcess(env)
    yield process
    process.cleanup()
    if process.proc is None and "Traceback" in process.log():
        print(process.log()[-4000:], file=sys.stderr)


@pytest.fixture
def media_server() -> Iterator[str]:
    """Base URL of a local HTTP server with media routes (`/small`, `/big`, redirects; see harness)."""
    with serve_media() as url:
        yield url


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """A 32 MB filesystem of the test's own that it can fill up; skipped where mounting is impossible."""
    if os.geteuid() != 0:
        pytest.skip("a full disk is simulated with a small tmpfs, and mounting one needs root")
    disk = SmallDisk(tmp_path / "data-disk", 32)
    try:
        disk.mount()
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or exc
        pytest.skip(f"cannot mount a tmpfs here ({str(detail).strip()}): the full-disk tests need one")
    try:
        yield disk
    finally:
        disk.unmount()
