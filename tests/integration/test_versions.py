"""Black box: a bridge given files from a newer wa_mqtt (data file schema, config.yaml `version`) stops
at start with exit code 2 and one line saying which file, which versions and what to do."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

from wa_mqtt.accounts.outbox import SCHEMA

from harness import BridgeEnv, BridgeProcess

OUTBOX_VERSION = SCHEMA.version


def test_an_outbox_from_a_newer_version_stops_the_bridge_with_exit_2(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.write_config()
    outbox = env.root / "data" / "outbox.db"
    outbox.parent.mkdir(parents=True)
    conn = sqlite3.connect(outbox)
    conn.execute("CREATE TABLE from_the_future (x)")
    conn.execute("PRAGMA user_version = 4000")
    conn.close()
    bridge.start()
    assert bridge.proc is not None
    assert bridge.proc.wait(timeout=30) == 2
    log = bridge.log()
    [line] = [line for line in log.splitlines() if "outbox.db" in line]
    assert "ERROR" in line and f"cannot start: {outbox}: outbox schema version 4000 is newer than this wa_mqtt " \
        f"supports (version {OUTBOX_VERSION})" in line and "run that version again, or move the file away" in line
    assert "Traceback" not in log and "wa_mqtt starting" not in log
    conn = sqlite3.connect(outbox)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 4000  # left as it was
    conn.close()


def test_a_config_from_a_newer_version_stops_the_bridge_with_exit_2(env: BridgeEnv) -> None:
    env.write_config(version=99)
    result = subprocess.run([sys.executable, "-m", "wa_mqtt", "--config", str(env.config_path)],
                            capture_output=True, text=True, timeout=30, cwd=env.root)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "wa_mqtt: invalid configuration: version: 99 is newer than this wa_mqtt reads (1): the file was written "
        "for a newer wa_mqtt; run that version, or rewrite the file for this one"]
