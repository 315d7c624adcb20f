"""wa_mqtt benchmarks: each figure next to a raw baseline measured in the same run, and their ratio.

    python bench/run.py            full run (a few minutes)
    python bench/run.py --quick    about two minutes
Prints a table and writes bench/results.json. Everything runs on 127.0.0.1 against a private Mosquitto
started by the script, and stops by itself. The main figures use Mosquitto's default configuration
(as the Home Assistant add-on and distribution packages run it: no `set_tcp_nodelay`, receive maximum
20); the inbound, latency and send figures are measured again on a Mosquitto with
`set_tcp_nodelay true` (`--brokers default` skips that). Every raw baseline is a plain client at its
best: TCP_NODELAY on its socket, pipelined (it never awaits one publish before the next). The clients
that drive and count (the send rows' requester, the inbound rows' subscriber) are lean processes of
their own (bench/raw_clients.py `drive`, `sink`), so that on a small machine they take as little CPU
as they can from what they measure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "engine"))

from harness import BridgeEnv, BridgeProcess, Broker, Probe  # noqa: E402

# Mosquitto's defaults, but for the queue it keeps per subscriber (default 1,000 messages, dropped
# beyond): the benchmark's subscribers must not lose a message of a 5,000-message burst.
BROKERS = {"default": "", "nodelay": "set_tcp_nodelay true\n"}

A = "5511900000001"
RAW_RESPONDER = "raw request/response responder, pipelined"  # the send rows' baseline


@dataclass
class Row:
    name: str
    value: float
    unit: str
    baseline: float | None
    baseline_name: str
    goal: str = ""
    broker: str = "default"  # the Mosquitto configuration: "default" or "nodelay" (set_tcp_nodelay true)
    rounds: list[float] = field(default_factory=list)  # with --rounds: every round's ratio (or value), sorted

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline  # type: ignore[operator]

    @property
    def figure(self) -> float:
        """What a round is compared by: its ratio to the baseline of the same round, else its value."""
        ratio = self.ratio
        return self.value if ratio is None else ratio


def median_rounds(rounds: list[list[Row]]) -> list[Row]:
    """One row per figure (name and broker, in the order first measured) from several rounds of the
    same scenarios: the round whose ratio (or value, for a row without a baseline) is the median, the
    lower one of an even count, so value, baseline and ratio stay those of one round; `rounds` holds
    every round's. Each round compares the bridge with a baseline measured right before it: the median
    of those ratios is what a shared, noisy machine still lets one read."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for rows in rounds:
        for row in rows:
            groups.setdefault((row.broker, row.name), []).append(row)
    merged = []
    for group in groups.values():
        ordered = sorted(group, key=lambda row: row.figure)
        median = ordered[(len(ordered) - 1) // 2]
        median.rounds = [row.figure for row in ordered]
        merged.append(median)
    return merged


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def proc_kb(path: str, field: str) -> int:
    """A `Field:   1234 kB` line of a /proc file, in kB (0 when absent)."""
    for line in Path(path).read_text(encoding="ascii").splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def rss_mb(pid: int) -> float:
    return proc_kb(f"/proc/{pid}/status", "VmRSS") / 1024


def pss_mb(pid: int) -> float:
    """Proportional set size: pages shared with other processes (a fork server's) count in part."""
    return proc_kb(f"/proc/{pid}/smaps_rollup", "Pss") / 1024


CHILD_BUDGET_MB = 20  # a forked sim child's own memory is ~14 MB (PSS); with room to spare


def available_mb() -> int:
    return proc_kb("/proc/meminfo", "MemAvailable") // 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants_of(pid: int) -> dict[int, bytes]:
    """{pid: command line} of every process below `pid` (engine children are the fork server's)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found: dict[int, bytes] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in found:
                try:
                    found[child] = Path(f"/proc/{child}/cmdline").read_bytes()
                except OSError:
                    continue
                frontier.append(child)
    return found


# -- raw baselines -------------------------------------------------------------------------------
RESULT_LIMIT = 16 * 1024 * 1024  # a `drive` or `sink` result is one line of every latency (~20 bytes each)


class RawClient:
    """One of bench/raw_clients.py in a process of its own (as the bridge is), once it said `ready`."""

    def __init__(self, *args: str) -> None:
        self._args = [sys.executable, str(ROOT / "bench" / "raw_clients.py"), *args]
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Self:
        self._proc = await asyncio.create_subprocess_exec(*self._args, stdin=asyncio.subprocess.PIPE,
                                                          stdout=asyncio.subprocess.PIPE, limit=RESULT_LIMIT)
        await self.expect("ready")
        return self

    async def line(self, timeout: float = 30) -> bytes:
        assert self._proc is not None and self._proc.stdout is not None
        return await asyncio.wait_for(self._proc.stdout.readline(), timeout)

    async def result(self, timeout: float) -> dict[str, Any]:
        """The JSON line a `drive` or `sink` prints when it is done."""
        result: dict[str, Any] = json.loads(await self.line(timeout))
        return result

    async def expect(self, word: str, timeout: float = 30) -> None:
        line = await self.line(timeout)
        if line.strip() != word.encode():
            raise RuntimeError(f"{self._args[2]}: expected {word!r}, got {line!r}")

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def go(self) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(b"go\n")

    async def __aexit__(self, *exc: object) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            await asyncio.wait_for(self._proc.wait(), 10)
        except TimeoutError:
            self._proc.kill()
            await self._proc.wait()


def sink(broker: Broker, topic_filter: str, n: int, stamped: bool = False) -> RawClient:
    """The lean subscriber of bench/raw_clients.py (`sink`, a process of its own): QoS 1, as the bridge's
    benchmarks subscribe; `result()` once it has n messages."""
    return RawClient("sink", str(broker.port), topic_filter, str(n), *(["--stamped"] if stamped else []))


async def raw_throughput(broker: Broker, n: int) -> float:
    """Seconds for n payloads: producer → broker → relay → broker → subscriber, each client a paho
    process at its best (bench/raw_clients.py)."""
    prefix = f"raw{time.monotonic_ns()}"
    async with sink(broker, f"{prefix}/out/#", n) as subscriber, RawClient("relay", str(broker.port), prefix), \
            RawClient("produce", str(broker.port), f"{prefix}/in", str(n)) as producer:
        start = time.monotonic()
        producer.go()
        done_at = (await subscriber.result(120))["done_at"]
        await producer.expect("done")
    return float(done_at - start)


async def raw_latency(broker: Broker, n: int, interval: float) -> list[float]:
    """Per-message latency (ms) at a steady rate through the raw relay: arrival at the subscriber minus
    the producer's CLOCK_MONOTONIC stamp at publish (as the sim stamps its messages)."""
    prefix = f"rawlat{time.monotonic_ns()}"
    async with sink(broker, f"{prefix}/out/#", n, stamped=True) as subscriber, \
            RawClient("relay", str(broker.port), prefix), \
            RawClient("produce", str(broker.port), f"{prefix}/in", str(n), "--interval", str(interval),
                      "--stamp") as producer:
        producer.go()
        latencies: list[float] = (await subscriber.result(120))["latencies"]
        await producer.expect("done")
    return latencies


async def raw_request_response(broker: Broker, n: int, window: int, also: int = 0) -> tuple[float, list[float]]:
    """A paho process that answers each request at its best (the relay), driven like the send benchmark.
    `also`: it publishes that many more messages (QoS 1, bridge-sized) after each answer."""
    prefix = f"rawrr{time.monotonic_ns()}"
    async with RawClient("relay", str(broker.port), prefix, "--respond", "--also", str(also)):
        return await drive_requests(broker, n, window, f"{prefix}/in", f"{prefix}/resp", "x")


async def floor_request_response(broker: Broker, n: int, window: int,
                                 directory: Path) -> tuple[float, list[float], float]:
    """The send path's floor (raw_clients.py `floor`: a plain client doing the bridge's mandatory steps
    for each send, at their cheapest), driven like the send benchmark: (seconds, latencies in ms, CPU
    seconds of it and its child)."""
    prefix = f"floor{time.monotonic_ns()}"
    async with RawClient("floor", str(broker.port), prefix, str(directory)) as floor:
        processes = [floor.pid, *descendants_of(floor.pid)]
        before = sum(cpu_seconds(pid) for pid in processes)
        elapsed, latencies = await drive_requests(
            broker, n, window, f"{prefix}/in", f"{prefix}/resp", "x")
        cpu = sum(cpu_seconds(pid) for pid in processes) - before
    return elapsed, latencies, cpu


async def drive_requests(broker: Broker, n: int, window: int, request_prefix: str, response_prefix: str,
                         text: str) -> tuple[float, list[float]]:
    """n requests with at most `window` unanswered, from the lean requester of bench/raw_clients.py
    (`drive`, a process of its own): (seconds, latencies in ms). `text` is each request's text, with
    `{i}` replaced by its number."""
    async with RawClient("drive", str(broker.port), f"{request_prefix}/send", f"{response_prefix}/#", str(n),
                         str(window), text) as driver:
        driver.go()
        result = await driver.result(120)
    return result["seconds"], result["latencies"]


# -- the bridge ----------------------------------------------------------------------------------
class Bench:
    def __init__(self, broker: Broker, work: Path, quick: bool, broker_name: str = "default") -> None:
        self.broker = broker
        self.broker_name = broker_name
        self.work = work
        self.quick = quick
        self.in_process = False
        self.rows: list[Row] = []

    def add(self, row: Row) -> None:
        row.broker = self.broker_name
        self.rows.append(row)

    def env(self, name: str, accounts: int = 1, **config: Any) -> BridgeEnv:
        env = BridgeEnv(self.work / f"{self.broker_name}-{name}", self.broker)
        if self.in_process:
            config.setdefault("engine_process", {"in_process": True})
        env.write_config(log_level="warning", **config)
        for i in range(accounts):
            env.link_sim_account(f"55119{i:08d}" if accounts > 1 else A)
        return env

    async def inbound(self) -> None:
        n = 2000 if self.quick else 5000
        raw = await raw_throughput(self.broker, n)
        env = self.env("inbound")
        bridge = BridgeProcess(env)
        bridge.start()
        try:
            async with Probe(self.broker, env.base, [f"{env.base}/{A}/status"]) as probe:
                await probe.wait_state(A, "connected", timeout=30)
                # the same lean subscriber as the raw relay's, not the probe
                async with sink(self.broker, f"{env.base}/{A}/message", n) as subscriber:
                    start = time.monotonic()
                    await probe.sim(A, "incoming", {"sender": "5511988887777", "text": "hello", "id": "T",
                                                     "repeat": n})
                    elapsed = (await subscriber.result(300))["done_at"] - start
        finally:
            bridge.stop()
        self.add(Row(f"inbound throughput, {n} messages (msg/s)", n / elapsed, "msg/s", n / raw,
                             "raw paho relay, pipelined", "≥ 0.8 × raw"))

        # durability cost: the same burst with the broker restarted in its middle (spool in use)
        env = self.env("durable")
        own = Broker(self.work / f"{self.broker_name}-durable-broker", persistence=True, options=self.broker.options)
        own.start()
        env.broker = own
        env.write_config(mqtt={"url": own.url})
        bridge = BridgeProcess(env)
        bridge.start()
        try:
            async with Probe(own, env.base, [f"{env.base}/{A}/#"], client_id=f"keep-{env.base}", clean=False) as probe:
                await probe.wait_state(A, "connected", timeout=30)
                start = time.monotonic()
                await probe.sim(A, "incoming", {"sender": "5511988887777", "text": "hello", "id": "D", "repeat": n})
                await probe.wait_count(f"{env.base}/{A}/message", n // 10, timeout=60)
                own.stop()
                own.start()
                ids: set[str] = set()
                read = 0

                def every_id(received: list[Any]) -> bool:  # incremental: each message is parsed once
                    nonlocal read
                    ids.update(json.loads(r.payload)["id"] for r in received[read:] if r.topic.endswith("/message"))
                    read = len(received)
                    return len(ids) >= n

                await probe.wait_until(every_id, timeout=300, what="every message")
                durable = time.monotonic() - start
        finally:
            bridge.stop()
            own.stop()
        self.add(Row("inbound with a broker restart mid-burst (msg/s)", n / durable, "msg/s", n / elapsed,
                             "bridge, broker up", "no loss (every id arrives)"))

    async def latency(self) -> None:
        """Each message of a steady sim burst: arrival at the subscriber minus the sim's own timestamp of
        it (`stamp: true`: CLOCK_MONOTONIC when the sim delivered it, shared by all processes); the raw
        relay is measured from the moment its producer publishes each message."""
        n, interval = (600, 0.005) if self.quick else (2000, 0.005)
        raw = await raw_latency(self.broker, n, interval)
        env = self.env("latency")
        bridge = BridgeProcess(env)
        bridge.start()
        try:
            async with Probe(self.broker, env.base, [f"{env.base}/{A}/status"]) as probe:
                await probe.wait_state(A, "connected", timeout=30)
                async with sink(self.broker, f"{env.base}/{A}/message", n, stamped=True) as subscriber:
                    await probe.sim(A, "incoming", {"sender": "5511988887777", "text": "t", "id": "L", "repeat": n,
                                                     "interval": interval, "stamp": True})
                    ours: list[float] = (await subscriber.result(120))["latencies"]
        finally:
            bridge.stop()
        for q in (50, 99):
            self.add(Row(f"inbound latency p{q} at {1 / interval:.0f} msg/s (ms)", percentile(ours, q), "ms",
                                 percentile(raw, q), "raw paho relay, pipelined",
                                 "p99 within 2 ms of raw" if q == 99 else ""))

    async def sends(self) -> None:
        n, window = (500, 20) if self.quick else (8000, 20)
        raw_elapsed, raw_lat = await raw_request_response(self.broker, n, window)
        # the same responder publishing what a send publishes (answer, receipt, the sim's `sent` echo)
        ceiling_elapsed, ceiling_lat = await raw_request_response(self.broker, n, window, also=2)
        floor_elapsed, floor_lat, floor_cpu = await floor_request_response(self.broker, n, window,
                                                                self.work / f"{self.broker_name}-floor")
        env = self.env("sends")
        bridge = BridgeProcess(env)
        bridge.start()
        try:
            async with Probe(self.broker, env.base, [f"{env.base}/{A}/status"]) as probe:
                await probe.wait_state(A, "connected", timeout=30)
            assert bridge.proc is not None
            processes = [bridge.proc.pid, *descendants_of(bridge.proc.pid)]  # the bridge, its engine child
            cpu_before = {pid: cpu_seconds(pid) for pid in processes}
            elapsed, lat = await drive_requests(
                self.broker, n, window, f"{env.base}/{A}/request", f"{env.base}/{A}/response",
                "bench {i}")
            cpu = sum(cpu_seconds(pid) - before for pid, before in cpu_before.items())
            bridge_cpu = cpu_seconds(bridge.proc.pid) - cpu_before[bridge.proc.pid]
        finally:
            bridge.stop()
        self.add(Row(f"send path, {n} sends, {window} in flight (sends/s)", n / elapsed, "sends/s",
                     n / raw_elapsed, RAW_RESPONDER, "≥ 0.8 × raw"))
        self.add(Row("send path p99 (ms)", percentile(lat, 99), "ms", percentile(raw_lat, 99),
                     RAW_RESPONDER, "≤ 2 × raw"))
        self.add(Row("send path ceiling: the raw responder publishing a send's 3 messages (sends/s)",
                     n / ceiling_elapsed, "sends/s", n / raw_elapsed, RAW_RESPONDER))
        self.add(Row("send path ceiling p99 (ms)", percentile(ceiling_lat, 99), "ms", percentile(raw_lat, 99),
                     RAW_RESPONDER))
        self.add(Row("send path floor: the leanest client doing a send's mandatory steps (sends/s)", n / floor_elapsed,
                     "sends/s", n / raw_elapsed, RAW_RESPONDER))
        self.add(Row("send path floor p99 (ms)", percentile(floor_lat, 99), "ms", percentile(raw_lat, 99),
                     RAW_RESPONDER))
        self.add(Row(f"send path, {n} sends: wa_mqtt against that floor (sends/s)", n / elapsed, "sends/s",
                     n / floor_elapsed, "the floor (raw_clients.py floor: durable writes, a child process, "
                     "3 publishes per send)"))
        self.add(Row("send path floor: CPU per send (ms)", floor_cpu / n * 1000, "ms", None,
                     "user + system time of the floor client and its child"))
        self.add(Row("send path: CPU per send, bridge (ms)", bridge_cpu / n * 1000, "ms", None,
                     "user + system time of the bridge process"))
        self.add(Row("send path: CPU per send, bridge + engine child (ms)", cpu / n * 1000, "ms", None,
                     "and of the processes below it (the sim's engine child, the fork server)"))

    async def restore(self) -> None:
        sizes = [1, 10, 100] if self.quick else [1, 10, 100, 500]
        for in_process in (False, True):
            for count in sizes:
                if not in_process and count > 100 and available_mb() < count * CHILD_BUDGET_MB:
                    print(f"restore {count} accounts in child processes skipped: needs {count * CHILD_BUDGET_MB} MB "
                          f"available, {available_mb()} MB are", file=sys.stderr)
                    continue
                await self._restore(count, in_process)

    async def _restore(self, count: int, in_process: bool) -> None:
        mode = "in-process" if in_process else "child processes"
        env = self.env(f"restore-{count}-{in_process}", accounts=count, engine_process={"in_process": in_process})
        phones = [f"55119{i:08d}" if count > 1 else A for i in range(count)]
        baseline = await self._baseline_start(count)
        async with Probe(self.broker, env.base, [f"{env.base}/+/status"]) as probe:
            bridge = BridgeProcess(env)
            start = time.monotonic()
            bridge.start()
            try:
                states: dict[str, set[str]] = {p: set() for p in phones}
                read = 0

                def seen(state: str) -> bool:  # incremental: each status is parsed once
                    nonlocal read
                    for item in probe.received[read:]:
                        if item.payload:
                            data = json.loads(item.payload)
                            states.setdefault(data["phone"], set()).add(data["state"])
                    read = len(probe.received)
                    return all(state in states[p] for p in phones)

                await probe.wait_until(lambda _: seen("connecting"), timeout=120, what="all connecting")
                connecting = time.monotonic() - start
                await probe.wait_until(lambda _: seen("connected"), timeout=300, what="all connected")
                connected = time.monotonic() - start
            finally:
                bridge.stop()
        goal = "≤ 1 s (100 accounts)" if count == 100 else ""
        self.add(Row(f"restore {count} accounts, {mode}: all connecting (s)", connecting, "s", baseline,
                             f"raw client publishing {count} statuses", goal))
        self.add(Row(f"restore {count} accounts, {mode}: all connected (s)", connected, "s", baseline,
                             f"raw client publishing {count} statuses", "≤ 3 s (100 accounts)" if count == 100 else ""))

    async def _baseline_start(self, count: int) -> float:
        """A bare Python process that connects and publishes `count` retained statuses."""
        code = ("import aiomqtt,asyncio,logging\nlogging.getLogger('mqtt').setLevel(logging.ERROR)\n"
                "async def m():\n"
                f"  async with aiomqtt.Client('127.0.0.1',{self.broker.port}) as c:\n"
                f"    await asyncio.gather(*(c.publish('base{time.monotonic_ns()}/'+str(i)+'/status',b'x',qos=1)\n"
                f"                           for i in range({count})))\n"
                "asyncio.run(m())")
        start = time.monotonic()
        await asyncio.to_thread(subprocess.run, [sys.executable, "-c", code], check=True)
        return time.monotonic() - start

    async def memory(self) -> None:
        baseline_proc = subprocess.Popen([sys.executable, "-c", "import aiomqtt,time; time.sleep(30)"])
        await asyncio.sleep(1.5)  # let the baseline process finish importing before measuring it
        baseline = rss_mb(baseline_proc.pid)
        baseline_proc.kill()
        baseline_proc.wait()
        for label, accounts, engine in (("0 accounts", 0, "sim"), ("2 sim accounts", 2, "sim"),
                                         ("2 neonize accounts (offline)", 2, "neonize")):
            env = self.env(f"memory-{engine}-{accounts}", accounts=0, engine=engine)
            for i in range(accounts):
                phone = f"55119{i:08d}"
                if engine == "sim":
                    env.link_sim_account(phone)
                else:
                    link_neonize_account(env.sessions, phone)
            bridge = BridgeProcess(env)
            bridge.start()
            try:
                async with Probe(self.broker, env.base, [f"{env.base}/+/status", f"{env.base}/bridge/state"]) as probe:
                    await probe.wait_online(timeout=30)
                    if accounts:
                        want = "connected" if engine == "sim" else "disconnected"
                        await probe.wait_until(
                            lambda rec: len({json.loads(r.payload)["phone"] for r in rec if r.topic.endswith("/status")
                                             and r.payload and json.loads(r.payload)["state"] == want}) >= accounts,  # noqa: B023
                            timeout=60, what=f"{accounts} {want}")
                    assert bridge.proc is not None
                    own = rss_mb(bridge.proc.pid)
                    below = descendants_of(bridge.proc.pid)
                    kids = [pid for pid, cmdline in below.items() if b"wa_mqtt.engines.child" in cmdline]
                    servers = [pid for pid, cmdline in below.items() if b"forkserver" in cmdline]
                    kids_rss, kids_pss = [rss_mb(pid) for pid in kids], [pss_mb(pid) for pid in kids]
                    server_rss = [rss_mb(pid) for pid in servers]
            finally:
                bridge.stop()
            self.add(Row(f"memory: bridge RSS, {label} (MB)", own, "MB", baseline,
                                 "python + aiomqtt imported", "≤ 60 MB" if accounts == 0 else ""))
            if kids:
                self.add(Row(f"memory: per {engine} account, its engine process RSS (MB)",
                                     statistics.mean(kids_rss), "MB", baseline, "python + aiomqtt imported"))
                self.add(Row(f"memory: per {engine} account, its engine process PSS (MB)",
                                     statistics.mean(kids_pss), "MB", baseline,
                                     "python + aiomqtt imported; PSS counts pages shared with the fork server in part"))
            if server_rss:
                self.add(Row(f"memory: {engine} fork server RSS, once for all accounts (MB)",
                                     server_rss[0], "MB", baseline, "python + aiomqtt imported"))


def link_neonize_account(sessions: Path, phone: str) -> None:
    from neonize.aioze.client import ClientFactory

    from wa_mqtt.engines.neonize_engine import store_dsn

    from neonize_factories import write_synthetic_device

    store = sessions / phone / "store.db"
    store.parent.mkdir(parents=True, exist_ok=True)
    ClientFactory.get_all_devices_from_db(store_dsn(store))
    write_synthetic_device(store, phone)


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory = next((line.split(":", 1)[1].strip() for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), "?")
    mosquitto = subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout.splitlines()[:1]
    return {"cpu": cpu, "cores": os.cpu_count(), "memory": memory, "python": platform.python_version(),
            "mosquitto": mosquitto[0] if mosquitto else "?", "kernel": platform.release()}


def code() -> dict[str, Any]:
    """The code measured: this checkout (the bridge processes import it first, see harness.bridge_environ)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return {"checkout": str(ROOT), "commit": git("rev-parse", "HEAD") or "?",
            "modified": bool(git("status", "--porcelain", "--untracked-files=no"))}


def table(rows: list[Row]) -> str:
    lines = [f"{'figure':<62} {'broker':>8} {'wa_mqtt':>10} {'baseline':>10} {'ratio':>7}  baseline / goal",
             "-" * 130]
    for row in rows:
        ratio = f"{row.ratio:.2f}" if row.ratio is not None else "-"
        base = f"{row.baseline:.2f}" if row.baseline is not None else "-"
        spread = f" [{row.rounds[0]:.2f} – {row.rounds[-1]:.2f} over {len(row.rounds)} rounds]" if len(row.rounds) > 1 else ""
        lines.append(f"{row.name:<62} {row.broker:>8} {row.value:>10.2f} {base:>10} {ratio:>7}{spread}  {row.baseline_name}"
                     + (f"; goal {row.goal}" if row.goal else ""))
    return "\n".join(lines)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller runs, about two minutes")
    parser.add_argument("--only", nargs="*", choices=["inbound", "latency", "sends", "restore", "memory"])
    parser.add_argument("--brokers", nargs="*", choices=list(BROKERS), default=list(BROKERS),
                        help="Mosquitto configurations: its defaults, and with set_tcp_nodelay true "
                             "(inbound, latency and sends only)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--in-process", action="store_true", help="engines inside the bridge (no child processes)")
    parser.add_argument("--rounds", type=int, default=1, metavar="N",
                        help="measure inbound, latency and sends N times (each against its own baseline) and report "
                             "the median round of each figure, with the range")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    rows: list[Row] = []
    started, load_at_start = time.monotonic(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="wa-bench-") as tmp:
        work = Path(tmp)
        for broker_name in args.brokers:
            broker = Broker(work / f"broker-{broker_name}", options=BROKERS[broker_name])
            broker.start()
            wanted = args.only or ["inbound", "latency", "sends", "restore", "memory"]
            if broker_name != "default":  # restore and memory do not depend on the broker's socket options
                wanted = [name for name in wanted if name in ("inbound", "latency", "sends")]
            rounds: list[list[Row]] = []
            try:
                for round_number in range(args.rounds):  # restore and memory once: they are not ratios to a run
                    (work / f"round-{round_number}").mkdir(exist_ok=True)
                    bench = Bench(broker, work / f"round-{round_number}", args.quick, broker_name)
                    bench.in_process = args.in_process
                    for name in wanted:
                        if round_number == 0 or name in ("inbound", "latency", "sends"):
                            await getattr(bench, name)()
                    rounds.append(bench.rows)
            finally:
                broker.stop()
            rows += median_rounds(rounds) if args.rounds > 1 else rounds[0]
    print(table(rows))
    result = {"when": datetime.now(UTC).isoformat(timespec="seconds"), "quick": args.quick, "rounds": args.rounds,
              "seconds": round(time.monotonic() - started, 1), "machine": machine(), "code": code(),
              "load_average": {"start": load_at_start, "end": os.getloadavg()},  # 1, 5, 15 min: others' load
              "brokers": {name: "Mosquitto defaults + max_queued_messages 100000" + (
                  f" + {BROKERS[name].strip()}" if BROKERS[name] else "") for name in args.brokers},
              "rows": [{**asdict(r), "ratio": r.ratio} for r in rows]}
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\n{len(rows)} figures in {result['seconds']} s; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
