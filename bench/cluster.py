"""Scale-out benchmark: N sim accounts over 3 bridges sharing PostgreSQL (store.url) and Mosquitto.

    python bench/cluster.py [--accounts 1000] [--bridges 3] [--takeover-after 30] [--rate 50]
                            [--in-process] [--out bench/cluster-results.json]

Starts a private PostgreSQL (tests/pg_server.py) and Mosquitto (tests/harness.py), links N sim
accounts in one shared sessions folder, starts the bridges (`python -m wa_mqtt`, instance_id b1..bN)
and measures:
- start: until every account is `connected` and the bridges' `bridge/instances/<id>` lists cover them;
- takeover: a steady stream of sends (each with a client `id`, `--rate` a second, over every account)
  runs while the bridge running the most accounts is killed with SIGKILL; the time until each of its
  accounts is `connected` on another bridge (from the kill; the leases' expiry is the floor);
- lost / doubled: every send published (before, during and after the takeover) must reach the sim's
  simulated WhatsApp exactly once (`sim/<phone>/sent`, by client id);
- memory: each bridge's PSS, and per account.

The sims run inside the bridges with `--in-process` (what the 1,000-account figure uses: a forked
sim child costs ~14 MB PSS each, 14 GB for 1,000); without it, one child process per account.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from pg_server import PgServer, pg_bin  # noqa: E402
from run import descendants_of, pss_mb  # noqa: E402 - after the path above

from wa_mqtt.engines.sim import write_device  # noqa: E402

from harness import Broker  # noqa: E402 - after the path above


def tree_pss_mb(pid: int) -> float:
    """PSS of a process and every process below it (the fork server and the engine children)."""
    total = 0.0
    for member in (pid, *descendants_of(pid)):
        try:
            total += pss_mb(member)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


class Watcher:
    """Follows statuses, the instances' account lists and the sim's deliveries."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.state: dict[str, str] = {}
        self.connected_at: dict[str, float] = {}
        self.instances: dict[str, list[str]] = {}
        self.delivered: dict[str, int] = {}
        self.changed = asyncio.Event()

    def take(self, topic: str, payload: bytes) -> None:
        parts = topic.split("/")
        if len(parts) == 3 and parts[2] == "status" and payload:
            state = json.loads(payload)["state"]
            self.state[parts[1]] = state
            if state == "connected":
                self.connected_at[parts[1]] = time.monotonic()
        elif len(parts) == 4 and parts[1:3] == ["bridge", "instances"]:
            self.instances[parts[3]] = json.loads(payload)["accounts"] if payload else []
        elif len(parts) == 4 and parts[1] == "sim" and parts[3] == "sent":
            client_id = json.loads(payload).get("client_id")
            if client_id:
                self.delivered[client_id] = self.delivered.get(client_id, 0) + 1
        self.changed.set()

    async def until(self, condition: Any, timeout: float, what: str) -> float:
        start = time.monotonic()
        while not condition():
            self.changed.clear()
            left = timeout - (time.monotonic() - start)
            if left <= 0:
                raise SystemExit(f"{what}: not within {timeout} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))
        return time.monotonic() - start


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(f"/tmp/wa_mqtt-cluster-bench-{uuid.uuid4().hex[:6]}")
    sessions = work / "sessions"
    phones = [f"55119{i:08d}" for i in range(args.accounts)]
    now = datetime.now(UTC)
    for phone in phones:
        write_device(sessions / phone / "store.db", phone, f"Sim {phone[-4:]}", now)
    bindir = pg_bin()
    if bindir is None or PgServer.unavailable():
        raise SystemExit(PgServer.unavailable() or "no PostgreSQL")
    pg = PgServer(bindir)
    pg.start()
    broker = Broker(work / "broker")
    broker.start()
    base = "bench" + uuid.uuid4().hex[:6]
    url = pg.new_database()
    procs: dict[str, subprocess.Popen[bytes]] = {}
    result: dict[str, Any] = {"accounts": args.accounts, "bridges": args.bridges, "takeover_after": args.takeover_after,
                              "in_process": args.in_process, "rate_per_s": args.rate}
    try:
        watcher = Watcher(base)
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier=f"bench-{base}",
                                  protocol=aiomqtt.ProtocolVersion.V5, max_queued_outgoing_messages=None) as client:
            for topic in (f"{base}/+/status", f"{base}/bridge/instances/+", f"{base}/sim/+/sent"):
                await client.subscribe(topic, qos=1)

            async def listen() -> None:
                async for message in client.messages:
                    payload = message.payload if isinstance(message.payload, bytes) else b""
                    watcher.take(str(message.topic), payload)

            listener = asyncio.create_task(listen())
            for i in range(1, args.bridges + 1):
                name = f"b{i}"
                root = work / name
                root.mkdir(parents=True)
                config = {
                    "mqtt": {"url": broker.url, "base_topic": base, "client_id": f"{base}-{name}", "discovery": False},
                    "engine": "sim", "sessions_dir": str(sessions), "data_dir": str(root / "data"),
                    "store": {"url": url}, "instance_id": name, "cluster": {"takeover_after": args.takeover_after},
                    "engine_process": {"in_process": args.in_process}, "log_level": "info",
                    "status_interval": 3600,
                }
                (root / "config.yaml").write_text(yaml.safe_dump(config))
                log = open(root / "bridge.log", "ab")
                procs[name] = subprocess.Popen([sys.executable, "-m", "wa_mqtt", "--config", str(root / "config.yaml")],
                                               stdout=log, stderr=subprocess.STDOUT, cwd=root,
                                               env={**os.environ, "PYTHONPATH": str(ROOT)})

            def settled() -> bool:
                lists = [watcher.instances.get(f"b{i}", []) for i in range(1, args.bridges + 1)]
                target = -(-args.accounts // args.bridges)
                return (sum(1 for p in phones if watcher.state.get(p) == "connected") == args.accounts
                        and sum(len(x) for x in lists) == args.accounts and all(len(x) <= target + 1 for x in lists))

            result["start_s"] = round(await watcher.until(settled, args.start_timeout, "start"), 1)
            result["spread"] = {name: len(watcher.instances.get(name, [])) for name in procs}
            result["pss_mb"] = {name: round(tree_pss_mb(proc.pid), 1) for name, proc in procs.items()}
            result["pss_mb_per_account"] = round(sum(result["pss_mb"].values()) / args.accounts, 2)
            print("settled", result, flush=True)

            sent: list[str] = []
            stop_sending = asyncio.Event()

            async def produce() -> None:
                rng = random.Random(7)
                n = 0
                while not stop_sending.is_set():
                    phone = rng.choice(phones)
                    client_id = f"s{n}"
                    n += 1
                    sent.append(client_id)
                    await client.publish(f"{base}/{phone}/request/send",
                                         json.dumps({"to": "5511988887777", "text": f"m {n}", "id": client_id}), qos=1)
                    await asyncio.sleep(1 / args.rate)

            producer = asyncio.create_task(produce())
            await asyncio.sleep(5)
            victim = max(procs, key=lambda name: len(watcher.instances.get(name, [])))
            moved = list(watcher.instances.get(victim, []))
            killed = time.monotonic()
            procs[victim].send_signal(signal.SIGKILL)
            procs[victim].wait()
            result["killed"] = {"bridge": victim, "accounts": len(moved)}

            def taken_over() -> bool:
                others = {p for name, accounts in watcher.instances.items() if name != victim for p in accounts}
                return all(p in others and watcher.connected_at.get(p, 0) > killed for p in moved)

            await watcher.until(taken_over, args.takeover_after * 4 + 120, "takeover")
            times = sorted(watcher.connected_at[p] - killed for p in moved)
            result["takeover_s"] = {"first": round(times[0], 2), "median": round(times[len(times) // 2], 2),
                                    "last": round(times[-1], 2)}
            await asyncio.sleep(5)
            stop_sending.set()
            await producer
            await watcher.until(lambda: all(c in watcher.delivered for c in sent), 120, "deliveries")
            result["sends"] = len(sent)
            result["lost"] = sum(1 for c in sent if c not in watcher.delivered)
            result["doubled"] = sum(1 for c in sent if watcher.delivered.get(c, 0) > 1)
            listener.cancel()
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        broker.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--bridges", type=int, default=3)
    parser.add_argument("--takeover-after", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=50.0, help="sends a second during the takeover")
    parser.add_argument("--in-process", action="store_true", help="sims inside the bridges (no child processes)")
    parser.add_argument("--start-timeout", type=float, default=600)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "cluster-results.json")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    result["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    print(json.dumps(result, indent=2))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
