"""The embedded broker follows MQTT: a subscriber receives the retained messages matching its own filters,
each once, and nothing else (amqtt 0.12.1 alone also sends those matching every other client's filters).

Each subscriber ends with a marker: a message it publishes on a topic its filter matches. The broker
sends retained messages before it handles the subscriber's next packet, so what arrived before the
marker is everything the subscription delivered; no waiting for silence.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import aiomqtt
import pytest

from wa_mqtt.mqtt.embedded_broker import EmbeddedBroker, start_embedded_broker

from harness import NODELAY, free_port

RETAINED = ["wa/bridge/state", "wa/5511900000051/stats", "wa/5511900000051/status", "wa/5511900000051/qr/image",
            "wa/5511900000052/qr/image", "homeassistant/button/wa_5511900000051/connect/config",
            "homeassistant/sensor/wa_5511900000051/state/config"]


def matches(topic: str, topic_filter: str) -> bool:
    """MQTT topic matching, written from the spec (section 4.7) for the test's expectations."""
    levels, parts = topic_filter.split("/"), topic.split("/")
    for index, level in enumerate(levels):
        if level == "#":
            return True
        if index >= len(parts) or level not in ("+", parts[index]):
            return False
    return len(levels) == len(parts)


@pytest.fixture
async def broker() -> AsyncIterator[tuple[EmbeddedBroker, int]]:
    port = free_port()
    instance = await start_embedded_broker(port)
    yield instance, port
    await instance.shutdown()


@asynccontextmanager
async def client(port: int, identifier: str, clean: bool = True) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client("127.0.0.1", port, identifier=identifier, protocol=aiomqtt.ProtocolVersion.V311,
                              clean_session=clean, socket_options=NODELAY) as connection:
        yield connection


async def until_marker(connection: aiomqtt.Client, marker: str, via: aiomqtt.Client | None = None) -> list[str]:
    """Publish `marker` (non-retained; from `via` if given), return every topic received before it arrives."""
    await (via or connection).publish(marker, b"end", qos=1)
    received: list[str] = []

    async def collect() -> None:
        async for message in connection.messages:
            if str(message.topic) == marker:
                return
            received.append(str(message.topic))

    await asyncio.wait_for(collect(), 10)
    return received


async def test_retained_messages_reach_only_matching_subscriptions_once(broker: tuple[EmbeddedBroker, int]) -> None:
    _, port = broker
    async with client(port, "bridge", clean=False) as bridge, client(port, "explorer") as explorer:
        # other clients' filters, as the bridge and an MQTT Explorer hold them
        for topic_filter in ("wa/+/request/+", "wa/bridge/request/+", "homeassistant/status"):
            await bridge.subscribe(topic_filter, qos=1)
        await explorer.subscribe("#", qos=0)
        await explorer.subscribe("wa/#", qos=1)
        for topic in RETAINED:
            await bridge.publish(topic, topic.encode(), qos=1, retain=True)

        cases = {"homeassistant/#": "homeassistant/zz/marker", "wa/+/qr/#": "wa/zz/qr/marker",
                 "wa/+/stats": "wa/zz/stats", "wa/bridge/state": None, "#": "zz/marker"}
        for topic_filter, marker in cases.items():
            async with client(port, f"sub-{len(topic_filter)}") as subscriber:
                await subscriber.subscribe(topic_filter, qos=1)
                if marker is None:  # an exact filter: a second subscription on a marker topic
                    marker = "zz/marker"
                    await subscriber.subscribe(marker, qos=1)
                received = await until_marker(subscriber, marker)
            expected = [topic for topic in RETAINED if matches(topic, topic_filter)]
            assert sorted(received) == sorted(expected), topic_filter


async def test_a_resumed_session_gets_no_retained_messages_without_a_subscribe(
        broker: tuple[EmbeddedBroker, int]) -> None:
    """Reconnecting with a persistent session keeps its subscriptions; retained messages come only with a
    SUBSCRIBE (MQTT-3.3.1-6), so a client that resubscribes on reconnect (aiomqtt, Home Assistant) gets
    each once, not twice."""
    _, port = broker
    async with client(port, "owner") as owner:
        for topic in RETAINED:
            await owner.publish(topic, topic.encode(), qos=1, retain=True)
    async with client(port, "persistent", clean=False) as first:
        await first.subscribe("wa/+/qr/#", qos=1)
        assert sorted(await until_marker(first, "wa/zz/qr/marker")) == sorted(
            topic for topic in RETAINED if matches(topic, "wa/+/qr/#"))
    async with client(port, "persistent", clean=False) as resumed:
        assert await until_marker(resumed, "wa/zz/qr/marker") == []  # the stored subscription still delivers
        await resumed.subscribe("wa/+/qr/#", qos=1)
        assert sorted(await until_marker(resumed, "wa/zz/qr/marker")) == sorted(
            topic for topic in RETAINED if matches(topic, "wa/+/qr/#"))


async def test_live_messages_reach_only_matching_subscriptions_once(broker: tuple[EmbeddedBroker, int]) -> None:
    """Non-retained delivery was never affected; this keeps it so. The publisher sends the markers too,
    after the messages, so each marker is broadcast after them."""
    _, port = broker
    cases = {"homeassistant/#": "homeassistant/zz/marker", "wa/+/qr/#": "wa/zz/qr/marker", "wa/+/stats": "wa/zz/stats"}
    async with AsyncExitStack() as stack:
        publisher = await stack.enter_async_context(client(port, "publisher"))
        subscribers = {}
        for index, topic_filter in enumerate(cases):
            subscribers[topic_filter] = await stack.enter_async_context(client(port, f"live-{index}"))
            await subscribers[topic_filter].subscribe(topic_filter, qos=1)
        for topic in RETAINED:
            await publisher.publish(topic, b"live", qos=1)
        for topic_filter, marker in cases.items():
            received = await until_marker(subscribers[topic_filter], marker, via=publisher)
            assert sorted(received) == sorted(t for t in RETAINED if matches(t, topic_filter)), topic_filter
