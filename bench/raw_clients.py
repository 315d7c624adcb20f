"""The raw baselines of bench/run.py: plain paho clients at their best, each in a process of its own.

    python bench/raw_clients.py relay PORT PREFIX [--respond]
        republishes every `PREFIX/in/...` message (QoS 1) on `PREFIX/out/...` (`PREFIX/resp/...`)
    python bench/raw_clients.py produce PORT TOPIC COUNT [--interval S] [--stamp]
        publishes COUNT payloads (QoS 1) when it reads a line on stdin, every S seconds or at once;
        `--stamp` adds `sim_emitted_at` (CLOCK_MONOTONIC at publish) as the sim does

Each prints `ready` once connected (and subscribed); `produce` prints `done` once every PUBACK is in,
`relay` runs until its stdin closes. At their best means: TCP_NODELAY on the socket, and pipelined:
paho keeps up to 20 publishes in flight (Mosquitto's receive maximum) and queues the rest, sending
the next as each PUBACK comes in, so no publish waits for the one before it.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

RECEIVE_MAXIMUM = 20  # what Mosquitto announces by default (paho does not read it from CONNACK)
PAYLOAD: dict[str, Any] = {  # the size and shape of a bridge message payload
    "id": "3EB0C767D26A1B2C0000", "account": "5511900000001", "chat": "5511988887777@s.whatsapp.net",
    "chat_type": "private", "sender": "5511988887777", "sender_jid": "5511988887777@s.whatsapp.net",
    "sender_name": "Ana", "from_me": False, "timestamp": "2026-11-24T10:00:00Z", "type": "text",
    "text": "hello there", "caption": None, "media": None, "quoted": None, "mentions": [], "reaction": None,
    "location": None}


def connect(port: int, name: str) -> tuple[mqtt.Client, threading.Event]:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{time.monotonic_ns()}",
                         protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(RECEIVE_MAXIMUM)
    client.max_queued_messages_set(0)  # no limit on what paho queues behind the window
    client.on_socket_open = lambda _c, _u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connected = threading.Event()
    client.on_connect = lambda *_args: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not connected.wait(10):
        raise SystemExit("no CONNACK within 10 s")
    return client, connected


def relay(port: int, prefix: str, respond: bool) -> None:
    client, _ = connect(port, "raw-relay")
    out = "/resp/" if respond else "/out/"
    subscribed = threading.Event()

    def on_message(c: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        c.publish(message.topic.replace("/in/", out, 1), message.payload, qos=1)

    client.on_message = on_message
    client.on_subscribe = lambda *_args: subscribed.set()
    client.subscribe(f"{prefix}/in/#", qos=1)
    subscribed.wait(10)
    time.sleep(0.25)  # until our delayed ACK of the SUBACK went out (else Nagle holds the first message)
    print("ready", flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
    client.disconnect()
    client.loop_stop()


def produce(port: int, topic: str, count: int, interval: float, stamp: bool) -> None:
    client, _ = connect(port, "raw-producer")
    acked = threading.Semaphore(0)
    client.on_publish = lambda *_args: acked.release()
    body = json.dumps(PAYLOAD).encode()
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.monotonic()
    for i in range(count):
        due = start + i * interval
        if due > time.monotonic():
            time.sleep(due - time.monotonic())
        if stamp:
            body = json.dumps({**PAYLOAD, "sim_emitted_at": time.monotonic()}).encode()
        client.publish(f"{topic}/{i}", body, qos=1)
    for _ in range(count):
        acked.acquire()
    print("done", flush=True)
    client.disconnect()
    client.loop_stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    relay_args = sub.add_parser("relay")
    relay_args.add_argument("port", type=int)
    relay_args.add_argument("prefix")
    relay_args.add_argument("--respond", action="store_true")
    produce_args = sub.add_parser("produce")
    produce_args.add_argument("port", type=int)
    produce_args.add_argument("topic")
    produce_args.add_argument("count", type=int)
    produce_args.add_argument("--interval", type=float, default=0.0)
    produce_args.add_argument("--stamp", action="store_true")
    args = parser.parse_args()
    if args.command == "relay":
        relay(args.port, args.prefix, args.respond)
    else:
        produce(args.port, args.topic, args.count, args.interval, args.stamp)


if __name__ == "__main__":
    main()
