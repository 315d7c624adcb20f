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


async def test_the_ceiling_responder_publishes_a_sends_two_more_messages_after_each_answer(
        bench: ModuleType, broker: Broker) -> None:
    async with bench.sink(broker, "+/also0", 60) as first, bench.sink(broker, "+/also1", 60) as second:
        seconds, latencies = await bench.raw_request_response(broker, 60, 7, also=2)
        assert len(latencies) == 60 and 0 < seconds < 30
        for extra in (first, second):  # each of the two topics got one publish per answer
            assert (await extra.result(10))["done_at"] > 0


async def test_the_subscriber_counts_and_times_what_the_raw_relay_passes_on(bench: ModuleType,
                                                                             broker: Broker) -> None:
    assert 0 < await bench.raw_throughput(broker, 300) < 30
    latencies = await bench.raw_latency(broker, 20, 0.002)
    assert len(latencies) == 20
    assert all(0 < latency < 10_000 for latency in latencies)
