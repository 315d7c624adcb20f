"""wa_mqtt benchmarks: each figure next to a raw baseline measured in the same run, and their ratio.

    python bench/run.py            full run (a few minutes)
    python bench/run.py --quick    under a minute
Prints a table and writes bench/results.json. Everything runs on 127.0.0.1 against a private Mosquitto
(set_tcp_nodelay on, as docs/security.md recommends) and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiomqtt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "engine"))

from harness import NODELAY, Broker, BridgeEnv, BridgeProcess, Probe  # noqa: E402

A = "5511900000001"
QUIET = logging.getLogger("bench.mqtt")  # aiomqtt notes every burst's "pending publish calls"
QUIET.setLevel(logging.ERROR)
PAYLOAD = json.dumps({  # the size and shape of a bridge message payload
    "id": "3EB0C767D26A1B2C0000", "account": A, "chat": "5511988887777@s.whatsapp.net", "chat_type": "private",
    "sender": "5511988887777", "sender_jid": "5511988887777@s.whatsapp.net", "sender_name": "Ana",
    "from_me": False, "timestamp": "2026-11-24T10:00:00Z", "type": "text", "text": "hello there", "caption": None,
    "media": None, "quoted": None, "mentions": [], "reaction": None, "location": None}).encode()


@dataclass
class Row:
    name: str
    value: float
    unit: str
    baseline: float | None
    baseline_name: str
    goal: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline  # type: ignore[operator]


def client(broker: Broker, name: str) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", broker.port, identifier=name, protocol=aiomqtt.ProtocolVersion.V5,
                          socket_options=NODELAY, max_queued_outgoing_messages=None, logger=QUIET)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


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
async def raw_relay(broker: Broker, ready: asyncio.Event, stop: asyncio.Event, prefix: str,
                    respond: bool = False) -> None:
    """A minimal aiomqtt client: receives `<prefix>/in/#` and republishes the same payload."""
    async with client(broker, f"relay-{prefix}") as relay:
        await relay.subscribe(f"{prefix}/in/#", qos=1)
        ready.set()
        async for message in relay.messages:
            topic = str(message.topic).replace("/in/", "/resp/" if respond else "/out/", 1)
            await relay.publish(topic, message.payload, qos=1)
            if stop.is_set():
                return


async def raw_throughput(broker: Broker, n: int) -> float:
    """Seconds for n payloads: producer → broker → relay → broker → subscriber."""
    prefix = f"raw{time.monotonic_ns()}"
    ready, stop, done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    relay = asyncio.create_task(raw_relay(broker, ready, stop, prefix))
    await ready.wait()
    count = 0

    async def sink(sub_ready: asyncio.Event) -> None:
        nonlocal count
        async with client(broker, f"sink-{prefix}") as sub:
            await sub.subscribe(f"{prefix}/out/#", qos=1)
            sub_ready.set()
            async for _ in sub.messages:
                count += 1
                if count >= n:
                    done.set()
                    return

    sub_ready = asyncio.Event()
    sink_task = asyncio.create_task(sink(sub_ready))
    await sub_ready.wait()
    async with client(broker, f"producer-{prefix}") as producer:
        start = time.monotonic()
        await asyncio.gather(*(producer.publish(f"{prefix}/in/m", PAYLOAD, qos=1) for _ in range(n)))
        await asyncio.wait_for(done.wait(), 120)
        elapsed = time.monotonic() - start
    stop.set()
    relay.cancel()
    sink_task.cancel()
    await asyncio.gather(relay, sink_task, return_exceptions=True)
    return elapsed


async def raw_latency(broker: Broker, n: int, interval: float) -> list[float]:
    """Per-message latency (ms) at a steady rate through the raw relay, scheduled like the sim's burst."""
    prefix = f"rawlat{time.monotonic_ns()}"
    ready, stop = asyncio.Event(), asyncio.Event()
    relay = asyncio.create_task(raw_relay(broker, ready, stop, prefix))
    await ready.wait()
    arrivals: dict[int, float] = {}
    emitted: dict[int, float] = {}
    got_all = asyncio.Event()

    async def sink(sub_ready: asyncio.Event) -> None:
        async with client(broker, f"latsink-{prefix}") as sub:
            await sub.subscribe(f"{prefix}/out/#", qos=1)
            sub_ready.set()
            async for message in sub.messages:
                arrivals[int(str(message.topic).rsplit("/", 1)[1])] = time.monotonic()
                if len(arrivals) >= n:
                    got_all.set()
                    return

    sub_ready = asyncio.Event()
    sink_task = asyncio.create_task(sink(sub_ready))
    await sub_ready.wait()
    async with client(broker, f"latprod-{prefix}") as producer:
        start = time.monotonic()
        for i in range(n):
            due = start + i * interval
            if due > time.monotonic():
                await asyncio.sleep(due - time.monotonic())
            emitted[i] = time.monotonic()  # the source's timestamp, as the sim stamps its messages
            await producer.publish(f"{prefix}/in/{i}", PAYLOAD, qos=1)
        await asyncio.wait_for(got_all.wait(), 60)
    stop.set()
    relay.cancel()
    sink_task.cancel()
    await asyncio.gather(relay, sink_task, return_exceptions=True)
    return [(arrivals[i] - emitted[i]) * 1000 for i in range(n)]


async def raw_request_response(broker: Broker, n: int, window: int) -> tuple[float, list[float]]:
    """A client that answers each request (the relay), driven like the send benchmark."""
    prefix = f"rawrr{time.monotonic_ns()}"
    ready, stop = asyncio.Event(), asyncio.Event()
    relay = asyncio.create_task(raw_relay(broker, ready, stop, prefix, respond=True))
    await ready.wait()
    elapsed, latencies = await drive_requests(broker, n, window, f"{prefix}/in", f"{prefix}/resp",
                                              lambda i: json.dumps({"to": "5511988887777", "text": "x", "transaction": i}))
    stop.set()
    relay.cancel()
    await asyncio.gather(relay, return_exceptions=True)
    return elapsed, latencies


async def drive_requests(broker: Broker, n: int, window: int, request_prefix: str, response_prefix: str,
                         body: Callable[[int], str]) -> tuple[float, list[float]]:
    """n requests with at most `window` outstanding; (seconds, latencies in ms)."""
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    slots = asyncio.Semaphore(window)
    done = asyncio.Event()

    async def responses(sub_ready: asyncio.Event) -> None:
        async with client(broker, f"rr-sub-{time.monotonic_ns()}") as sub:
            await sub.subscribe(f"{response_prefix}/#", qos=1)
            sub_ready.set()
            async for message in sub.messages:
                tx = json.loads(message.payload).get("transaction")
                if isinstance(tx, int) and tx in sent_at:
                    latencies.append((time.monotonic() - sent_at.pop(tx)) * 1000)
                    slots.release()
                    if len(latencies) >= n:
                        done.set()
                        return

    sub_ready = asyncio.Event()
    task = asyncio.create_task(responses(sub_ready))
    await sub_ready.wait()
    async with client(broker, f"rr-pub-{time.monotonic_ns()}") as pub:
        start = time.monotonic()
        for i in range(n):
            await slots.acquire()
            sent_at[i] = time.monotonic()
            await pub.publish(f"{request_prefix}/send", body(i), qos=1)
        await asyncio.wait_for(done.wait(), 120)
        elapsed = time.monotonic() - start
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return elapsed, latencies


# -- the bridge ----------------------------------------------------------------------------------
class Bench:
    def __init__(self, broker: Broker, work: Path, quick: bool) -> None:
        self.broker = broker
        self.work = work
        self.quick = quick
        self.in_process = False
        self.rows: list[Row] = []

    def env(self, name: str, accounts: int = 1, **config: Any) -> BridgeEnv:
        env = BridgeEnv(self.work / name, self.broker)
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
            async with Probe(self.broker, env.base, [f"{env.base}/{A}/#"]) as probe:
                await probe.wait_state(A, "connected", timeout=30)
                start = time.monotonic()
                await probe.sim(A, "incoming", {"sender": "5511988887777", "text": "hello", "id": "T", "repeat": n})
                await probe.wait_count(f"{env.base}/{A}/message", n, timeout=300)
                elapsed = time.monotonic() - start
        finally:
            bridge.stop()
        self.rows.append(Row(f"inbound throughput, {n} messages (msg/s)", n / elapsed, "msg/s", n / raw,
                             "raw aiomqtt relay", "≥ 0.8 × raw"))

        # durability cost: the same burst with the broker restarted in its middle (spool in use)
        env = self.env("durable")
        own = Broker(self.work / "durable-broker", persistence=True)
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
                await probe.wait_until(lambda rec: len({r.payload[:40] for r in rec if r.topic.endswith("/message")}) >= n,
                                       timeout=300, what="every message")
                durable = time.monotonic() - start
        finally:
            bridge.stop()
            own.stop()
        self.rows.append(Row("inbound with a broker restart mid-burst (msg/s)", n / durable, "msg/s", n / elapsed,
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
            async with Probe(self.broker, env.base, [f"{env.base}/{A}/#"]) as probe:
                await probe.wait_state(A, "connected", timeout=30)
                await probe.sim(A, "incoming", {"sender": "5511988887777", "text": "t", "id": "L", "repeat": n,
                                                 "interval": interval, "stamp": True})
                items = await probe.wait_count(f"{env.base}/{A}/message", n, timeout=120)
        finally:
            bridge.stop()
        ours = [(item.at - json.loads(item.payload)["sim_emitted_at"]) * 1000 for item in items]
        for q in (50, 99):
            self.rows.append(Row(f"inbound latency p{q} at {1 / interval:.0f} msg/s (ms)", percentile(ours, q), "ms",
                                 percentile(raw, q), "raw aiomqtt relay", "p99 within 2 ms of raw" if q == 99 else ""))

    async def sends(self) -> None:
        n, window = (500, 20) if self.quick else (2000, 20)
        raw_elapsed, raw_lat = await raw_request_response(self.broker, n, window)
        env = self.env("sends")
        bridge = BridgeProcess(env)
        bridge.start()
        try:
            async with Probe(self.broker, env.base, [f"{env.base}/{A}/status"]) as probe:
                await probe.wait_state(A, "connected", timeout=30)
            elapsed, lat = await drive_requests(
                self.broker, n, window, f"{env.base}/{A}/request", f"{env.base}/{A}/response",
                lambda i: json.dumps({"to": "5511988887777", "text": f"bench {i}", "transaction": i}))
        finally:
            bridge.stop()
        self.rows.append(Row(f"send path, {n} sends, {window} in flight (sends/s)", n / elapsed, "sends/s",
                             n / raw_elapsed, "raw request/response relay"))
        self.rows.append(Row("send path p99 (ms)", percentile(lat, 99), "ms", percentile(raw_lat, 99),
                             "raw request/response relay"))

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
        self.rows.append(Row(f"restore {count} accounts, {mode}: all connecting (s)", connecting, "s", baseline,
                             f"raw client publishing {count} statuses", goal))
        self.rows.append(Row(f"restore {count} accounts, {mode}: all connected (s)", connected, "s", baseline,
                             f"raw client publishing {count} statuses", "≤ 3 s (100 accounts)" if count == 100 else ""))

    async def _baseline_start(self, count: int) -> float:
        """A bare Python process that connects and publishes `count` retained statuses."""
        code = ("import aiomqtt,asyncio,logging\nlogging.getLogger('mqtt').setLevel(logging.ERROR)\n"
                "async def m():\n"
                f"  async with aiomqtt.Client('127.0.0.1',{self.broker.port}) as c:\n"
                f"    await asyncio.gather(*(c.publish('base{time.monotonic_ns()}/'+str(i)+'/status',b'x',qos=1) for i in range({count})))\n"
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
                                             and r.payload and json.loads(r.payload)["state"] == want}) >= accounts,
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
            self.rows.append(Row(f"memory: bridge RSS, {label} (MB)", own, "MB", baseline,
                                 "python + aiomqtt imported", "≤ 60 MB" if accounts == 0 else ""))
            if kids:
                self.rows.append(Row(f"memory: per {engine} account, its engine process RSS (MB)",
                                     statistics.mean(kids_rss), "MB", baseline, "python + aiomqtt imported"))
                self.rows.append(Row(f"memory: per {engine} account, its engine process PSS (MB)",
                                     statistics.mean(kids_pss), "MB", baseline,
                                     "python + aiomqtt imported; PSS counts pages shared with the fork server in part"))
            if server_rss:
                self.rows.append(Row(f"memory: {engine} fork server RSS, once for all accounts (MB)",
                                     server_rss[0], "MB", baseline, "python + aiomqtt imported"))


def link_neonize_account(sessions: Path, phone: str) -> None:
    from neonize.aioze.client import ClientFactory
    from neonize_factories import write_synthetic_device

    from wa_mqtt.engines.neonize_engine import store_dsn

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


def table(rows: list[Row]) -> str:
    lines = [f"{'figure':<62} {'wa_mqtt':>10} {'baseline':>10} {'ratio':>7}  baseline / goal", "-" * 120]
    for row in rows:
        ratio = f"{row.ratio:.2f}" if row.ratio is not None else "-"
        base = f"{row.baseline:.2f}" if row.baseline is not None else "-"
        lines.append(f"{row.name:<62} {row.value:>10.2f} {base:>10} {ratio:>7}  {row.baseline_name}"
                     + (f"; goal {row.goal}" if row.goal else ""))
    return "\n".join(lines)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller runs, under a minute")
    parser.add_argument("--only", nargs="*", choices=["inbound", "latency", "sends", "restore", "memory"])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--in-process", action="store_true", help="engines inside the bridge (no child processes)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="wa-bench-") as tmp:
        work = Path(tmp)
        broker = Broker(work / "broker")
        (work / "broker").mkdir()
        broker.start()
        bench = Bench(broker, work, args.quick)
        bench.in_process = args.in_process
        started = time.monotonic()
        try:
            for name in args.only or ["inbound", "latency", "sends", "restore", "memory"]:
                await getattr(bench, name)()
        finally:
            broker.stop()
    print(table(bench.rows))
    result = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "quick": args.quick,
              "seconds": round(time.monotonic() - started, 1), "machine": machine(),
              "rows": [{**asdict(r), "ratio": r.ratio} for r in bench.rows]}
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\n{len(bench.rows)} figures in {result['seconds']} s; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
