"""The benchmark's instruments (bench/raw_clients.py `drive` and `sink`, run by bench/run.py) against a
real Mosquitto: every request answered and timed, every message counted, nothing left waiting."""

from __future__ import annotations

from types import ModuleType

import pytest

from harness import Broker, load_bench_run


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_bench_run()


async def test_the_requester_times_every_answer_of_the_raw_responder(bench: ModuleType, broker: Broker) -> None:
    seconds, latencies = await bench.raw_request_response(broker, 60, 7)
    assert len(latencies) == 60  # each request answered once, matched by its transaction
    assert all(0 < latency < 10_000 for latency in latencies)
    assert 0 < seconds < 30


async def test_the_subscriber_counts_and_times_what_the_raw_relay_passes_on(bench: ModuleType,
                                                                             broker: Broker) -> None:
    assert 0 < await bench.raw_throughput(broker, 300) < 30
    latencies = await bench.raw_latency(broker, 20, 0.002)
    assert len(latencies) == 20
    assert all(0 < latency < 10_000 for latency in latencies)
