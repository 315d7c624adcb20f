"""Issue 14: stopping during pairing must never leak. Runs N cycles of `pair` → (pairing) → `disconnect`
against a real bridge (`python -m wa_mqtt`, a real Mosquitto) and samples the threads and open file
descriptors of the bridge and of its engine children as it goes.

    PYTHONPATH=$PWD python bench/stop_during_pairing.py --engine sim --cycles 100
    PYTHONPATH=$PWD python bench/stop_during_pairing.py --engine neonize --cycles 100 [--json out.json]

`sim`: every stop during pairing is answered, as neonize's would be, with "replace this process", so each
cycle ends its engine child and the next pairing gets a fresh one. `neonize`: the real engine, offline
(this machine has no route to WhatsApp): a pairing connect fails at once with a dial error, so the stop
comes after that failure; neonize's per-connect leak is bounded by recycling after
`engine_process.recycle_after_failures` failed connects. Figures in docs/neonize.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from harness import BridgeEnv, BridgeProcess, Broker, Probe, engine_children

PHONE = "5511900000077"


def counts(pid: int) -> tuple[int, int]:
    """(threads, open file descriptors) of a process; (0, 0) when it is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0, 0


def sample(cycle: int, bridge_pid: int, sessions: Path) -> dict[str, Any]:
    threads, fds = counts(bridge_pid)
    children = engine_children(sessions)
    child = [counts(pid) for pid in children]
    return {"cycle": cycle, "bridge_threads": threads, "bridge_fds": fds, "children": len(children),
            "children_threads": sum(t for t, _ in child), "children_fds": sum(f for _, f in child)}


async def run(engine: str, cycles: int, every: int) -> dict[str, Any]:
    with TemporaryDirectory(prefix="wa-bench-pairing-") as tmp:
        root = Path(tmp)
        broker = Broker(root / "broker")
        broker.start()
        env = BridgeEnv(root / "bridge", broker)
        env.root.mkdir(parents=True)
        env.write_config(engine=engine, accounts=[PHONE], log_level="info")
        bridge = BridgeProcess(env)
        bridge.start()
        samples: list[dict[str, Any]] = []
        pids: set[int] = set()
        began = time.monotonic()
        try:
            async with Probe(broker, env.base) as probe:
                await probe.wait_state(PHONE, "stopped", timeout=30)
                assert bridge.proc is not None
                for cycle in range(cycles + 1):
                    if cycle % every == 0:
                        samples.append(sample(cycle, bridge.proc.pid, env.sessions))
                    if cycle == cycles:
                        break
                    mark = probe.mark()
                    answer = await probe.request("bridge", "pair", {"phone": PHONE}, timeout=30)
                    assert answer["status"] == "ok", answer
                    await probe.wait_for(  # the sim offers a QR; offline neonize fails to dial first
                        f"{env.base}/{PHONE}/status",
                        lambda r: r.json()["state"] == "pairing" or r.json()["error_code"] == "dial_failed",
                        timeout=30, after=mark)
                    pids.update(engine_children(env.sessions))
                    stopped = await probe.request(PHONE, "disconnect", {}, timeout=30)
                    assert stopped["data"]["state"] == "stopped", stopped
            elapsed = time.monotonic() - began
        finally:
            bridge.stop()
            broker.stop()
        return {"engine": engine, "cycles": cycles, "seconds": round(elapsed, 1),
                "engine_processes_used": len(pids), "samples": samples,
                "recycled_log_lines": bridge.log().count("recycling the engine process")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["sim", "neonize"], default="sim")
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--every", type=int, default=10, help="sample every N cycles")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()
    result = asyncio.run(run(args.engine, args.cycles, args.every))
    print(f"{result['engine']}: {result['cycles']} stop-during-pairing cycles in {result['seconds']} s; "
          f"{result['engine_processes_used']} engine processes used, {result['recycled_log_lines']} recycled")
    print("cycle  bridge threads/fds  children  children threads/fds")
    for s in result["samples"]:
        print(f"{s['cycle']:>5}  {s['bridge_threads']:>7} / {s['bridge_fds']:<6}  {s['children']:>8}  "
              f"{s['children_threads']:>8} / {s['children_fds']}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
