"""Black box: what a user meets first. One bridge per sessions folder (and one engine process per
store), the sessions CLI refusing to act under a running bridge, a taken broker port, a missing
--config file, a config.yaml emptied or broken while the bridge runs, secrets and environment
variables named in warnings and errors, and the pair command's terminal messages."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from wa_mqtt.folder_lock import LOCK_FILE, lock_folder

from harness import BridgeEnv, BridgeProcess, Probe, engine_children

A = "5511900000001"
B = "5511900000002"
ANA = "5511988887777"
BOB = "5511977776666"


def wa_mqtt(env: BridgeEnv, *args: str, extra_env: dict[str, str] | None = None,
            config: Path | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WA_MQTT_")}
    environ.update(extra_env or {})
    return subprocess.run([sys.executable, "-m", "wa_mqtt", "--config", str(config or env.config_path), *args],
                          capture_output=True, text=True, timeout=60, cwd=env.root, env=environ)


def other_bridge(env: BridgeEnv, name: str) -> BridgeEnv:
    """A second bridge's config: its own topics, client id, data and log, but `env`'s sessions folder."""
    second = BridgeEnv(env.root / name, env.broker)
    second.write_config(sessions_dir=str(env.sessions))
    return second


async def test_a_second_bridge_on_the_same_sessions_folder_refuses_to_start(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.link_sim_account(A)
    bridge.start()
    second_env = other_bridge(env, "second")
    second = BridgeProcess(second_env)
    try:
        async with Probe(env.broker, env.base) as probe, Probe(env.broker, second_env.base) as second_probe:
            await probe.wait_state(A, "connected", timeout=15)
            assert bridge.proc is not None
            second.start()
            assert await asyncio.to_thread(second.proc.wait, 30) == 2  # type: ignore[union-attr]
            refusal = [line for line in second.log().splitlines() if "cannot start" in line]
            assert len(refusal) == 1 and "Traceback" not in second.log(), second.log()
            assert str(env.sessions) in refusal[0] and f"PID {bridge.proc.pid}" in refusal[0]
            assert not second_probe.received  # it published nothing: no state, no account
            assert len(engine_children(env.sessions)) == 1  # and started no engine on the store

            # the bridge's lock is its own: its engine process does not hold it (so it cannot outlive
            # a killed bridge through it)
            lock = str(env.sessions / LOCK_FILE)
            for child in engine_children(env.sessions):
                held = [os.readlink(fd) for fd in Path(f"/proc/{child}/fd").iterdir()]
                assert lock not in held

            # once the first is gone (SIGKILL: no cleanup), the second starts and takes the account over
            assert bridge.kill() == -signal.SIGKILL
            second.start()
            await second_probe.wait_state(A, "connected", timeout=20)
            assert second.stop() == 0
    finally:
        second.cleanup()


async def test_an_engine_process_waits_while_another_holds_its_store(env: BridgeEnv, bridge: BridgeProcess) -> None:
    """A store still open in another process (an engine of a killed bridge, still closing) is never
    opened beside it: the new engine process waits, then goes ahead once the store is free."""
    env.link_sim_account(A)
    holder = lock_folder(env.sessions / A)
    try:
        bridge.start()
        async with Probe(env.broker, env.base) as probe:
            await bridge.wait_log(f"the store folder {env.sessions / A} is in use by process {os.getpid()}")
            assert not [r for r in probe.received if r.topic == f"{env.base}/{A}/status"
                        and r.payload and r.json()["state"] == "connected"]
            holder.release()
            await probe.wait_state(A, "connected", timeout=15)
    finally:
        holder.release()


async def test_sessions_remove_and_restore_refuse_under_a_running_bridge(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.write_config()
    env.link_sim_account(A)
    env.link_sim_account(B)
    assert wa_mqtt(env, "sessions", "backup", A).returncode == 0
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected", timeout=15)
        assert bridge.proc is not None
        for command in ("remove", "restore"):
            refused = wa_mqtt(env, "sessions", command, A)
            assert refused.returncode == 2, refused.stdout + refused.stderr
            assert f"PID {bridge.proc.pid}" in refused.stderr and "--force" in refused.stderr
            assert ("bridge/request/remove" in refused.stderr) == (command == "remove")
        assert (env.sessions / A / "store.db").exists()
        assert wa_mqtt(env, "sessions", "list").returncode == 0  # reading is fine
        forced = wa_mqtt(env, "sessions", "remove", "--force", B)
        assert forced.returncode == 0, forced.stderr
        assert not (env.sessions / B).exists()
        await probe.wait_for(f"{env.base}/bridge/event", lambda r: r.json()["type"] == "account_removed"
                             and r.json()["data"]["phone"] == B)
    assert bridge.stop() == 0
    assert wa_mqtt(env, "sessions", "restore", A).returncode == 0  # the bridge is gone: allowed


def test_embedded_broker_port_taken_is_one_line_and_exit_2(env: BridgeEnv) -> None:
    port = env.broker.port  # the test broker already listens there
    env.write_config(mqtt={"url": None, "embedded_port": port}, log_level="info")
    result = wa_mqtt(env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"port {port}" in lines[0] and "mqtt.url" in lines[0] and "mqtt.embedded_port" in lines[0]


def test_a_missing_config_file_named_by_flag_exits_2(env: BridgeEnv, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "config.yaml"
    result = wa_mqtt(env, "check-config", config=missing)
    assert result.returncode == 2 and str(missing) in result.stderr and result.stdout == ""
    # the default ./config.yaml stays optional
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    default = subprocess.run([sys.executable, "-m", "wa_mqtt", "check-config"], capture_output=True, text=True,
                             timeout=30, cwd=empty_dir)
    assert default.returncode == 0, default.stderr


async def test_an_emptied_deleted_or_broken_config_keeps_the_running_one(env: BridgeEnv, bridge: BridgeProcess) -> None:
    env.write_config(outgoing={"allow_to": [ANA]})
    good = env.config_path.read_text()
    env.link_sim_account(A)
    bridge.start()
    event_topic = f"{env.base}/bridge/event"

    async def still_enforced() -> None:
        refused = await probe.request(A, "send", {"to": BOB, "text": "not allowed"})
        assert refused["status"] == "error" and refused["code"] == "forbidden", refused

    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected", timeout=15)
        await still_enforced()
        for looks, (damage, expected) in enumerate((
                (lambda: env.config_path.write_text(""), "empty"),
                (lambda: env.config_path.write_text("outgoing: [allow_to\n"), "not valid YAML"),
                (lambda: env.config_path.unlink(), "no such file"))):
            mark = probe.mark()
            damage()
            invalid = await probe.wait_for(event_topic, lambda r: r.json()["type"] == "config_invalid", after=mark)
            assert expected in invalid.json()["data"]["error"]
            assert bridge.log().count("looks half-written") == looks + 1  # looked twice before calling it invalid
            assert not [r for r in probe.received[mark:] if r.topic == event_topic
                        and r.json()["type"] == "config_reloaded"]
            await still_enforced()
            refused = await probe.request("bridge", "reload", {})
            assert refused["code"] == "config_invalid" and expected in refused["error"]
            env.config_path.write_text(good)
            if expected != "no such file":  # nothing changed: a valid file again is no news
                response = await probe.request("bridge", "reload", {})
                assert response["status"] == "ok" and response["data"]["changed"] == []

        mark = probe.mark()
        env.write_config(outgoing={"allow_to": [ANA, BOB]})
        await probe.wait_for(event_topic, lambda r: r.json()["type"] == "config_reloaded", after=mark)
        allowed = await probe.request(A, "send", {"to": BOB, "text": "allowed now"})
        assert allowed["status"] == "ok", allowed


def test_world_readable_warning_only_for_a_secret_in_the_file(env: BridgeEnv) -> None:
    env.write_config()
    env.config_path.chmod(0o644)
    from_env = wa_mqtt(env, "check-config", extra_env={"WA_MQTT_MQTT__URL": "mqtt://user:pw-123@127.0.0.1:1"})
    assert from_env.returncode == 0 and "readable by every user" not in from_env.stderr
    from_flag = wa_mqtt(env, "--mqtt-url", "mqtt://user:pw-123@127.0.0.1:1", "check-config")
    assert from_flag.returncode == 0 and "readable by every user" not in from_flag.stderr
    env.write_config(backups={"encryption_key": "5" * 43 + "="})
    env.config_path.chmod(0o644)
    in_file = wa_mqtt(env, "check-config")
    assert "readable by every user" in in_file.stderr and "backups.encryption_key" in in_file.stderr


def test_an_unknown_environment_variable_is_named(env: BridgeEnv) -> None:
    env.write_config()
    result = wa_mqtt(env, "check-config", extra_env={"WA_MQTT_FOO": "1", "WA_MQTT_MQTT_URL": "mqtt://h"})
    assert result.returncode == 2
    assert "WA_MQTT_FOO" in result.stderr
    assert "WA_MQTT_MQTT_URL" in result.stderr and "WA_MQTT_MQTT__URL" in result.stderr


def test_help_lists_environment_variables_and_exit_codes(env: BridgeEnv) -> None:
    text = subprocess.run([sys.executable, "-m", "wa_mqtt", "--help"], capture_output=True, text=True,
                          timeout=30, cwd=env.root).stdout
    assert "WA_MQTT_<SECTION>__<KEY>" in text and "exit codes" in text
    assert all(f"\n  {code}  " in text for code in (0, 1, 2))
    assert "docs/configuration.md" in text


async def test_pair_cli_speaks_to_a_terminal_user(env: BridgeEnv, bridge: BridgeProcess) -> None:
    """A dial failure is said once with what to check, not once per retry; Ctrl-C ends it cleanly; a
    pairing that times out says which command to run again (not an MQTT command)."""
    env.write_config(accounts=[B], pairing_timeout=1)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(B, "stopped")
        await probe.sim(B, "outage", {"seconds": 600})
        await probe.request("bridge", "health", {})  # served after the outage: messages are handled in order
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wa_mqtt", "--config", str(env.config_path), "pair", B,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=env.root)
        try:
            await probe.wait_for(f"{env.base}/{B}/status",
                                 lambda r: bool(r.payload) and r.json()["reconnect_attempt"] >= 3, timeout=30)
            proc.send_signal(signal.SIGINT)
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            if proc.returncode is None:
                proc.kill()
        said = [line for line in out.decode().splitlines() if "cannot reach WhatsApp" in line]
        assert len(said) == 1 and "proxy" in said[0] and "trying again" in said[0], out.decode()
        assert proc.returncode == 130 and "Traceback" not in err.decode(), err.decode()

        timed_out = await asyncio.to_thread(wa_mqtt, env, "pair", A)
        assert timed_out.returncode == 1, timed_out.stdout + timed_out.stderr
        assert f"run `python -m wa_mqtt pair {A}`" in timed_out.stdout and "send connect" not in timed_out.stdout
