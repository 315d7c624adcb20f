"""Black box: the bridge over TLS with client certificates and passwords, hostile input at every command
topic, and the policy limits (allow_to, media paths, sizes)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from wa_mqtt.mqtt.topics import ACCOUNT_COMMANDS, BRIDGE_COMMANDS

from harness import BridgeEnv, BridgeProcess, Broker, Probe, free_port, wait_port
from tls_certs import make_certs

A = "5511900000001"
ANA = "5511988887777"


class SecureBroker(Broker):
    """Mosquitto with a TLS listener (client certificate + password required) and a plain,
    anonymous loopback listener for the test's own probe."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.tls_port = free_port()
        self.certs = make_certs(workdir / "certs")
        self.password_file = workdir / "passwd"

    def start(self) -> None:
        if not self.mosquitto or not shutil.which("mosquitto_passwd"):
            pytest.skip("needs mosquitto and mosquitto_passwd")
        self.password_file.write_text("")
        subprocess.run(["mosquitto_passwd", "-b", str(self.password_file), "bridge", "s3cret-pw"], check=True)
        conf = self.workdir / "secure.conf"
        conf.write_text(
            "user root\nper_listener_settings true\npersistence false\nlog_type error\nlog_type warning\n"
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"listener {self.tls_port} 127.0.0.1\nallow_anonymous false\npassword_file {self.password_file}\n"
            f"cafile {self.certs.ca}\ncertfile {self.certs.server_cert}\nkeyfile {self.certs.server_key}\n"
            "require_certificate true\n")
        log = open(self.workdir / "secure.log", "ab")
        self._proc = subprocess.Popen([self.mosquitto, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        wait_port(self.port)
        wait_port(self.tls_port)


@pytest.fixture
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    broker = SecureBroker(tmp_path_factory.mktemp("secure"))
    broker.start()
    yield broker
    broker.stop()


async def test_tls_with_client_certificate_and_password(tmp_path: Path, secure_broker: SecureBroker) -> None:
    env = BridgeEnv(tmp_path, secure_broker)
    certs = secure_broker.certs
    env.write_config(mqtt={"url": f"mqtts://bridge:s3cret-pw@127.0.0.1:{secure_broker.tls_port}",
                           "ca_file": str(certs.ca), "cert_file": str(certs.client_cert),
                           "key_file": str(certs.client_key)})
    env.link_sim_account(A)
    bridge = BridgeProcess(env)
    try:
        async with Probe(secure_broker, env.base) as probe:  # the plain listener sees the same topics
            bridge.start()
            await probe.wait_state(A, "connected", timeout=15)
            info = await probe.wait_for(f"{env.base}/bridge/info")
            assert "s3cret-pw" not in info.payload.decode()
            assert info.json()["config"]["mqtt"]["url"].startswith("mqtts://bridge:***@")
        assert bridge.stop() == 0
        assert "s3cret-pw" not in bridge.log() and "MQTT 5" in bridge.log()
    finally:
        bridge.cleanup()


async def test_wrong_password_is_refused_and_never_logged(tmp_path: Path, secure_broker: SecureBroker) -> None:
    env = BridgeEnv(tmp_path, secure_broker)
    certs = secure_broker.certs
    env.write_config(mqtt={"url": f"mqtts://bridge:wrong-pw@127.0.0.1:{secure_broker.tls_port}",
                           "ca_file": str(certs.ca), "cert_file": str(certs.client_cert),
                           "key_file": str(certs.client_key)})
    bridge = BridgeProcess(env)
    try:
        bridge.start()
        async with Probe(secure_broker, env.base) as probe:
            await bridge.wait_log("refused the login (")  # a credentials problem, not "unreachable"
            assert "check the user name and password in mqtt.url" in bridge.log()
            assert "unreachable" not in bridge.log()
            assert not [r for r in probe.received if r.topic == f"{env.base}/bridge/state"]
        assert bridge.stop() == 0
        assert "wrong-pw" not in bridge.log()
    finally:
        bridge.cleanup()


def hostile_payloads(rng: random.Random, media_dir: Path) -> list[bytes]:
    """Malformed or hostile requests; every one must be refused (each object carries an unknown key
    or a bad value, so even commands without required fields cannot succeed)."""
    payloads: list[bytes] = [
        b"{", b"[]", b"null", b"42", b'"send"', b"\xff\xfe\x00", b"{" * 5000, b'{"a":' * 2000 + b"1" + b"}" * 2000,
        json.dumps({"to": ANA, "text": "x" * 70000}).encode(),
        json.dumps({"to": ANA, "image": {"path": "../../../../etc/passwd"}}).encode(),
        json.dumps({"to": ANA, "image": {"path": str(media_dir / ".." / "config.yaml")}}).encode(),
        json.dumps({"to": ANA, "document": {"url": "file:///etc/shadow"}}).encode(),
        json.dumps({"to": ANA, "image": {"url": "https://u:p@example.org/x"}}).encode(),
        json.dumps({"to": ANA, "image": {"base64": "%%%not base64%%%"}}).encode(),
        json.dumps({"to": "5511" * 10, "text": "x"}).encode(),
        json.dumps({"to": "../../etc", "text": "x"}).encode(),
        json.dumps({"to": ANA, "text": "x", "id": "k" * 500}).encode(),
        json.dumps({"to": ANA, "text": 5}).encode(),
        json.dumps({"to": [ANA], "text": "x"}).encode(),
        json.dumps({"phone": "../../etc/passwd", "method": "qr"}).encode(),
        json.dumps({"phone": 5511, "unknown": True}).encode(),
        b"x" * (70 * 1024),  # over the configured max_payload_bytes
    ]
    for _ in range(40):
        blob = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
        payloads.append(blob)
        junk = {rng.choice(["to", "text", "chat", "id", "ids", "emoji", "state", "method", "phone", "zz"]):
                rng.choice([None, 1, -1.5, True, [], {}, "", "x" * rng.randint(0, 50), [1, {"a": None}]])
                for _ in range(rng.randint(1, 4))}
        junk["unexpected_field"] = rng.random()
        payloads.append(json.dumps(junk).encode())
    return payloads


async def test_hostile_input_at_every_command_topic_changes_nothing(env: BridgeEnv, bridge: BridgeProcess) -> None:
    media_dir = env.root / "media"
    media_dir.mkdir()
    env.write_config(mqtt={"max_payload_bytes": 64 * 1024}, outgoing={"media_dir": str(media_dir)})
    env.link_sim_account(A)
    bridge.start()
    payloads = hostile_payloads(random.Random(7), media_dir)
    commands = [(A, c) for c in sorted(ACCOUNT_COMMANDS)] + [("bridge", c) for c in sorted(BRIDGE_COMMANDS)]
    commands += [(A, "explode"), ("bridge", "explode"), ("5511977776666", "send")]
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        mark = probe.mark()
        for target, command in commands:
            for payload in payloads:
                await probe.publish(f"{env.base}/{target}/request/{command}", payload)
        expected = len(commands) * len(payloads)

        def response_count(received: list) -> int:
            return sum(1 for r in received[mark:] if "/response/" in r.topic)

        await probe.wait_until(lambda received: response_count(received) >= expected, timeout=90,
                               what=f"{expected} responses")
        answers = [r.json() for r in probe.received[mark:] if "/response/" in r.topic]
        assert len(answers) == expected
        assert all(a["status"] == "error" for a in answers), [a for a in answers if a["status"] != "error"][:3]
        codes = {a["code"] for a in answers}
        assert codes <= {"invalid_json", "invalid_request", "unknown_account", "forbidden", "too_large"}, codes
        assert {"invalid_json", "invalid_request", "forbidden", "too_large", "unknown_account"} <= codes
        assert not [r for r in probe.received if r.topic == f"{env.base}/sim/{A}/sent"]
        # still healthy: the account did not move, and a normal send works
        assert not [r for r in probe.received[mark:] if r.topic == f"{env.base}/{A}/status"
                    and r.payload and r.json()["state"] != "connected"]
        ok = await probe.request(A, "send", {"to": ANA, "text": "after the storm"})
        assert ok["status"] == "ok" and ok["data"]["queued"] is False
        sent = await probe.wait_for(f"{env.base}/sim/{A}/sent")
        assert sent.json()["text"] == "after the storm"
    assert bridge.proc is not None and bridge.proc.poll() is None


async def test_policy_allow_to_and_media_dir(env: BridgeEnv, bridge: BridgeProcess) -> None:
    media_dir = env.root / "media"
    media_dir.mkdir()
    (media_dir / "photo.jpg").write_bytes(b"\xff\xd8\xff photo")
    (env.root / "private.txt").write_text("secret")
    (media_dir / "link.jpg").symlink_to(env.root / "private.txt")
    env.write_config(outgoing={"allow_to": [ANA], "media_dir": str(media_dir)})
    env.link_sim_account(A)
    bridge.start()
    async with Probe(env.broker, env.base) as probe:
        await probe.wait_state(A, "connected")
        refused = await probe.request(A, "send", {"to": "5511911112222", "text": "hi"})
        assert refused["code"] == "forbidden" and "allow_to" in refused["error"]
        escape = await probe.request(A, "send", {"to": ANA, "image": {"path": "link.jpg"}})
        assert escape["code"] == "forbidden" and "image.path" in escape["error"]
        fine = await probe.request(A, "send", {"to": ANA, "image": {"path": "photo.jpg", "caption": "look"}})
        assert fine["status"] == "ok", fine
        sent = await probe.wait_for(f"{env.base}/sim/{A}/sent")
        assert sent.json()["type"] == "image" and sent.json()["text"] == "look"


def test_world_readable_config_with_a_password_is_warned_about(env: BridgeEnv) -> None:
    import sys

    env.write_config(mqtt={"url": "mqtt://user:pw-123@127.0.0.1:1"})
    env.config_path.chmod(0o644)
    result = subprocess.run([sys.executable, "-m", "wa_mqtt", "--config", str(env.config_path), "check-config"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "readable by every user" in result.stderr and "pw-123" not in result.stderr + result.stdout
    env.config_path.chmod(0o600)
    quiet = subprocess.run([sys.executable, "-m", "wa_mqtt", "--config", str(env.config_path), "check-config"],
                           capture_output=True, text=True, timeout=30)
    assert "readable by every user" not in quiet.stderr
