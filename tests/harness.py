"""Test harness: a private MQTT broker (Mosquitto, or amqtt where Mosquitto is missing), the real bridge
as a subprocess, and an MQTT probe that waits on topics with timeouts (never sleeps to synchronise).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import http.server
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from types import ModuleType
from typing import Any

import aiomqtt
import yaml
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

REPO = Path(__file__).resolve().parent.parent
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]  # as the bridge does: no Nagle delay on small packets
# The tests' Mosquitto options. Their clients await each request's response, and without
# set_tcp_nodelay Nagle on the broker's side holds each reply to such a client ~40 ms; the bridge is
# fast either way. bench/run.py measures on Mosquitto's defaults (options "") and with this.
TEST_BROKER_OPTIONS = "max_inflight_messages 100\nset_tcp_nodelay true\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0, open_: bool = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            is_open = sock.connect_ex(("127.0.0.1", port)) == 0
        if is_open == open_:
            return
        time.sleep(0.02)  # polling a socket, not synchronising on the system under test
    raise TimeoutError(f"port {port} did not {'open' if open_ else 'close'} within {timeout} s")


def engine_children(sessions: Path) -> list[int]:
    """PIDs of engine child processes serving stores under `sessions`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()  # exec'd: its argv; forked: the title it set
        except OSError:
            continue
        if b"wa_mqtt.engines.child" in cmdline and str(sessions).encode() in cmdline:
            found.append(int(entry.name))
    return found


class _MediaHandler(http.server.BaseHTTPRequestHandler):
    """Media URLs for fetch tests: `/small` (b"hello"), `/big` (5,000 bytes), redirects, 404 elsewhere."""

    def do_GET(self) -> None:
        routes = {"/small": (200, b"hello"), "/big": (200, b"x" * 5000)}
        redirects = {"/to-file": (302, "file:///etc/passwd"), "/to-small": (301, "/small"), "/loop": (302, "/loop")}
        if self.path in redirects:
            status, location = redirects[self.path]
            self.send_response(status)
            self.send_header("Location", location)
            self.end_headers()
            return
        status, body = routes.get(self.path, (404, b"no"))
        self.send_response(status)
        self.end_headers()  # no content-length: the cap must hold while streaming
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


@contextmanager
def media_server() -> Iterator[str]:
    """A local HTTP server on a free port serving `_MediaHandler`'s routes; yields its base URL."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MediaHandler)
    httpd.protocol_version = "HTTP/1.0"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


class Broker:
    """A broker on a free loopback port that a test can stop and start again (same port)."""

    def __init__(self, workdir: Path, persistence: bool = False, options: str = TEST_BROKER_OPTIONS) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.persistence = persistence
        self.options = options  # mosquitto.conf lines beyond the listener, persistence and queue size
        self.mosquitto = shutil.which("mosquitto") or (
            "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        self.kind = "mosquitto" if self.mosquitto else "amqtt"
        self.v5 = self.kind == "mosquitto"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / f"{self.kind}.log", "ab")
        if self.mosquitto:
            conf = self.workdir / "mosquitto.conf"
            persist = (f"persistence true\npersistence_location {self.workdir}/\n" if self.persistence
                       else "persistence false\n")
            conf.write_text(
                f"user root\nlistener {self.port} 127.0.0.1\nallow_anonymous true\n{persist}"
                "max_queued_messages 100000\nlog_type error\nlog_type warning\n" + self.options
            )
            cmd = [self.mosquitto, "-c", str(conf)]
        else:
            cmd = [sys.executable, "-c",  # the bridge's own embedded broker (amqtt, corrected)
                   "import asyncio;from wa_mqtt.mqtt.embedded_broker import start_embedded_broker\n"
                   f"async def m():\n await start_embedded_broker({self.port}); await asyncio.Event().wait()\n"
                   "asyncio.run(m())"]
        self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        wait_port(self.port)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
            wait_port(self.port, open_=False)


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    correlation_data: bytes | None = None
    at: float = field(default_factory=time.monotonic)  # when the probe received it (benchmarks)
    dup: bool = False  # MQTT's DUP flag: the broker delivers it again (its own at-least-once, not the bridge's)

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class BridgeEnv:
    """One bridge's config: its own base topic, client id, sessions and data folders."""

    root: Path
    broker: Broker
    base: str = field(default_factory=lambda: "t" + uuid.uuid4().hex[:8])
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def sessions(self) -> Path:
        return self.root / "sessions"

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    def write_config(self, **changes: Any) -> Path:
        self.extra.update(changes)
        config: dict[str, Any] = {
            "mqtt": {"url": self.broker.url, "base_topic": self.base, "client_id": f"wa_mqtt_{self.base}",
                     "discovery": False},
            "engine": "sim",
            "sessions_dir": str(self.sessions),
            "data_dir": str(self.root / "data"),
            "reconnect": {"initial": 0.2, "factor": 2, "max": 2, "jitter": 0.1},
            "log_level": "debug",
            "web": {"enabled": False},  # tests that open the page give it a free port
        }
        for key, value in self.extra.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(config))
        return self.config_path

    def link_sim_account(self, phone: str, name: str | None = None) -> None:
        """A stored, linked sim session, as a previous run would have left it."""
        from datetime import datetime

        from wa_mqtt.engines.sim import write_device

        write_device(self.sessions / phone / "store.db", phone, name or f"Sim {phone[-4:]}",
                     datetime.now(UTC))


CHECKOUT = Path(__file__).resolve().parent.parent  # the repository these tests (and bench/) belong to


def load_bench_run() -> ModuleType:
    """bench/run.py (a script, not a package) as the module `bench_run`, loaded once."""
    if (loaded := sys.modules.get("bench_run")) is not None:
        return loaded
    spec = importlib.util.spec_from_file_location("bench_run", CHECKOUT / "bench" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def bridge_environ(base: Mapping[str, str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a bridge process: `base` without WA_MQTT_* variables, with `extra`, and with
    this checkout first on PYTHONPATH. The bridge runs in its own directory, so without it
    `python -m wa_mqtt` imports whatever wa_mqtt is installed (a shared editable install may be another
    clone at another commit): a benchmark run as `python bench/run.py` measured that code, not this."""
    environ = {k: v for k, v in base.items() if not k.startswith("WA_MQTT_")}
    environ.update(extra or {})
    paths = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != CHECKOUT]
    environ["PYTHONPATH"] = os.pathsep.join([str(CHECKOUT), *paths])
    environ["PYTHONUNBUFFERED"] = "1"
    return environ


class BridgeProcess:
    """`python -m wa_mqtt` as a child process, with its log in a file."""

    def __init__(self, env: BridgeEnv) -> None:
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = env.root / "logs" / "bridge.log"  # not beside config.yaml: its watcher would see every line

    def start(self, *args: str, extra_env: dict[str, str] | None = None) -> None:
        if not self.env.config_path.exists():
            self.env.write_config()
        environ = bridge_environ(os.environ, extra_env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "wa_mqtt", "--config", str(self.env.config_path), *args],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.env.root, env=environ)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def kill(self) -> int:
        return self.stop(signal.SIGKILL)

    async def wait_log(self, text: str, timeout: float = 15.0) -> None:
        """Until the bridge's log contains `text` (polls the file; a deadline, not a fixed sleep)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while text not in self.log():
            if loop.time() > deadline:
                raise AssertionError(f"{text!r} not in the bridge log within {timeout} s")
            await asyncio.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class _Client(aiomqtt.Client):
    """aiomqtt's client, keeping MQTT's DUP flag of each message (aiomqtt drops it)."""

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        item = aiomqtt.Message._from_paho_message(message)
        item.dup = bool(message.dup)  # type: ignore[attr-defined]
        self._queue.put_nowait(item)


class Probe:
    """An MQTT client that records everything under its filters and waits on what it needs."""

    def __init__(self, broker: Broker, base: str, filters: list[str] | None = None,
                 client_id: str | None = None, clean: bool = True) -> None:
        self.broker = broker
        self.base = base
        self.filters = filters or [f"{base}/#"]
        self.client_id = client_id or f"probe-{uuid.uuid4().hex[:8]}"
        self.clean = clean
        self.received: list[Received] = []
        self._changed = asyncio.Condition()
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def __aenter__(self) -> Probe:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _make(self) -> aiomqtt.Client:
        if self.broker.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 0 if self.clean else 3600
            return _Client("127.0.0.1", self.broker.port, identifier=self.client_id,
                           protocol=aiomqtt.ProtocolVersion.V5, clean_start=self.clean, properties=props,
                           socket_options=NODELAY)
        return _Client("127.0.0.1", self.broker.port, identifier=self.client_id,
                       protocol=aiomqtt.ProtocolVersion.V311, clean_session=self.clean, socket_options=NODELAY)

    async def _run(self) -> None:
        while True:  # reconnect when a test restarts the broker
            try:
                async with self._make() as client:
                    self._client = client
                    for topic_filter in self.filters:
                        await client.subscribe(topic_filter, qos=1)
                    self._ready.set()
                    async for message in client.messages:
                        payload = message.payload if isinstance(message.payload, bytes) else b""
                        corr = getattr(message.properties, "CorrelationData", None) if message.properties else None
                        async with self._changed:
                            self.received.append(Received(str(message.topic), payload, message.retain, corr,
                                                          dup=getattr(message, "dup", False)))
                            self._changed.notify_all()
            except aiomqtt.MqttError:
                self._client = None
                await asyncio.sleep(0.1)  # reconnect pacing while the broker is down

    async def wait_for(self, topic: str, predicate: Callable[[Received], bool] = lambda r: True,
                       timeout: float = 10.0, after: int = 0) -> Received:
        """The first message on `topic` (index >= `after`) that satisfies `predicate`."""
        async def find() -> Received:
            async with self._changed:
                while True:
                    for item in self.received[after:]:
                        if item.topic == topic and predicate(item):
                            return item
                    await self._changed.wait()
        try:
            return await asyncio.wait_for(find(), timeout)
        except TimeoutError:
            seen = [(r.topic, r.payload[:200]) for r in self.received[-15:] if r.topic.startswith(topic.rsplit("/", 1)[0])]
            raise AssertionError(f"nothing on {topic} matched within {timeout} s; last seen: {seen}") from None

    async def wait_count(self, topic: str, count: int, timeout: float = 30.0) -> list[Received]:
        async def find() -> list[Received]:
            async with self._changed:
                while True:
                    items = [r for r in self.received if r.topic == topic]
                    if len(items) >= count:
                        return items
                    await self._changed.wait()
        try:
            return await asyncio.wait_for(find(), timeout)
        except TimeoutError:
            have = len([r for r in self.received if r.topic == topic])
            raise AssertionError(f"{topic}: {have} of {count} messages within {timeout} s") from None

    async def wait_until(self, condition: Callable[[list[Received]], bool], timeout: float = 30.0,
                         what: str = "condition") -> None:
        async def check() -> None:
            async with self._changed:
                while not condition(self.received):
                    await self._changed.wait()
        try:
            await asyncio.wait_for(check(), timeout)
        except TimeoutError:
            raise AssertionError(f"{what} not met within {timeout} s") from None

    async def wait_state(self, phone: str, state: str, timeout: float = 10.0, after: int = 0) -> dict[str, Any]:
        item = await self.wait_for(f"{self.base}/{phone}/status",
                                   lambda r: bool(r.payload) and r.json()["state"] == state, timeout, after)
        return item.json()

    async def wait_online(self, timeout: float = 15.0, after: int = 0) -> None:
        await self.wait_for(f"{self.base}/bridge/state", lambda r: r.payload == b"online", timeout, after)

    def mark(self) -> int:
        return len(self.received)

    async def publish(self, topic: str, payload: bytes | str | dict[str, Any] = b"", retain: bool = False,
                      properties: Properties | None = None) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        assert self._client is not None
        await self._client.publish(topic, payload, qos=1, retain=retain, properties=properties)

    async def request(self, target: str, command: str, payload: bytes | str | dict[str, Any] = b"",
                      timeout: float = 10.0) -> dict[str, Any]:
        """Publish a request and return its response (matched by a fresh transaction id when JSON)."""
        mark = self.mark()
        tx = uuid.uuid4().hex[:10]
        if isinstance(payload, dict):
            payload = {**payload, "transaction": tx}
            predicate: Callable[[Received], bool] = lambda r: r.json().get("transaction") == tx  # noqa: E731
        else:
            predicate = lambda r: True  # noqa: E731
        await self.publish(f"{self.base}/{target}/request/{command}", payload)
        item = await self.wait_for(f"{self.base}/{target}/response/{command}", predicate, timeout, after=mark)
        return item.json()

    async def sim(self, phone: str, action: str, payload: bytes | str | dict[str, Any] = b"") -> None:
        await self.publish(f"{self.base}/sim/{phone}/{action}", payload)


class SmallDisk:
    """A real full disk: a tmpfs of `size_mb` mounted at `path` (needs root), and a ballast file that
    fills it to the last byte (`fill`) until it is deleted (`free`)."""

    def __init__(self, path: Path, size_mb: int) -> None:
        self.path = path
        self.size_mb = size_mb
        self.ballast = path / "ballast"

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0700", "tmpfs", str(self.path)],
                       check=True, capture_output=True, text=True)

    def unmount(self) -> None:
        if subprocess.run(["umount", str(self.path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)  # still busy: detach it

    def fill(self) -> int:
        """Write the ballast until the filesystem refuses even one more byte; its size."""
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for chunk in (1 << 20, 1 << 16, 1 << 12, 1):
                block = b"\0" * chunk
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, block)
            try:
                os.write(fd, b"\0")
            except OSError as refused:
                assert refused.errno == errno.ENOSPC, refused
            else:
                raise AssertionError(f"{self.path}: still room after the ballast")
        finally:
            os.close(fd)
        return self.ballast.stat().st_size

    def free(self) -> None:
        self.ballast.unlink()
