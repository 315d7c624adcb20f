"""Neonize memory per account: one engine process per account (the default) against several accounts
in one process (`engine_process.in_process: true`, all of them in the bridge), offline.

    python bench/neonize_memory.py [--accounts 8] [--out bench/neonize-memory.json]

Each account is a synthetic linked device (tests/engine/neonize_factories.py) in its own store;
offline, each client dials, fails and retries, as a restored account does without a route to
WhatsApp (a connected session also holds its app state, Signal sessions and caches: more). PSS is
read from /proc/<pid>/smaps_rollup: pages shared between processes (the fork server's) count in part.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "engine"), str(ROOT / "bench")]

from run import descendants_of, link_neonize_account, pss_mb  # noqa: E402

from harness import BridgeEnv, BridgeProcess, Broker, Probe  # noqa: E402 - after the path above


async def measure(broker: Broker, work: Path, accounts: int, in_process: bool) -> dict[str, float]:
    env = BridgeEnv(work / f"{'in' if in_process else 'proc'}-{accounts}-{uuid.uuid4().hex[:4]}", broker)
    env.write_config(engine="neonize", engine_process={"in_process": in_process}, log_level="info",
                     reconnect={"initial": 1, "factor": 2, "max": 5, "jitter": 0.1})
    for i in range(accounts):
        link_neonize_account(env.sessions, f"55119{i:08d}")
    bridge = BridgeProcess(env)
    bridge.start()
    try:
        async with Probe(broker, env.base, [f"{env.base}/+/status", f"{env.base}/bridge/state"]) as probe:
            await probe.wait_online(timeout=60)
            await probe.wait_until(
                lambda rec: len({json.loads(r.payload)["phone"] for r in rec if r.topic.endswith("/status")
                                 and r.payload and json.loads(r.payload)["state"] in ("disconnected", "connecting")}
                                ) >= accounts, timeout=120, what="accounts started")
            await asyncio.sleep(20)  # several failed dials each: the memory a waiting account settles at
            assert bridge.proc is not None
            below = descendants_of(bridge.proc.pid)
            kids = [pid for pid, cmd in below.items() if b"wa_mqtt.engines.child" in cmd]
            servers = [pid for pid, cmd in below.items() if b"forkserver" in cmd]
            return {"bridge_pss_mb": round(pss_mb(bridge.proc.pid), 1),
                    "children_pss_mb": round(sum(pss_mb(pid) for pid in kids), 1),
                    "fork_server_pss_mb": round(sum(pss_mb(pid) for pid in servers), 1),
                    "children": len(kids)}
    finally:
        bridge.stop()


async def run(accounts: int) -> dict[str, Any]:
    work = Path(f"/tmp/wa_mqtt-neonize-memory-{uuid.uuid4().hex[:6]}")
    broker = Broker(work / "broker")
    broker.start()
    try:
        result: dict[str, Any] = {}
        for in_process in (False, True):
            mode = "one process per account" if not in_process else "all accounts in one process"
            runs = {n: await measure(broker, work, n, in_process) for n in (0, 1, accounts)}
            total = {n: r["bridge_pss_mb"] + r["children_pss_mb"] + r["fork_server_pss_mb"] for n, r in runs.items()}
            result[mode] = {"runs": runs, "total_pss_mb": total,
                            "first_account_mb": round(total[1] - total[0], 1),
                            "each_further_account_mb": round((total[accounts] - total[1]) / (accounts - 1), 1)}
            print(mode, result[mode], flush=True)
        return result
    finally:
        broker.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=8)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "neonize-memory.json")
    args = parser.parse_args()
    result = asyncio.run(run(args.accounts))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
