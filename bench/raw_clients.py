"""The raw baselines of bench/run.py: plain paho clients at their best, each in a process of its own.

    python bench/raw_clients.py relay PORT PREFIX [--respond] [--also N]
        republishes every `PREFIX/in/...` message (QoS 1) on `PREFIX/out/...` (`PREFIX/resp/...`);
        `--also N`: after each, N more QoS 1 publishes of a bridge-sized payload on topics nobody
        subscribes to (the send path's ceiling: a send's answer, its receipt and the sim's `sent` echo)
    python bench/raw_clients.py floor PORT PREFIX DIR
        answers every `PREFIX/in/...` request on `PREFIX/resp/...` after the send path's mandatory
        steps, at their cheapest (see `floor`), keeping its SQLite file in DIR
    python bench/raw_clients.py drive PORT REQUEST_TOPIC RESPONSE_FILTER COUNT WINDOW TEXT
        the send benchmark's requester: when it reads a line on stdin, publishes COUNT requests
        (`{"to", "text": TEXT with {i} replaced, "transaction": i}`) with at most WINDOW unanswered,
        matches the answers on RESPONSE_FILTER by `transaction`, and prints one JSON line: the seconds
        from the first request to the last answer, and each request's latency in ms
    python bench/raw_clients.py sink PORT FILTER COUNT [--stamped]
        the subscriber of the inbound benchmarks: subscribes to FILTER (QoS 1) and, once COUNT messages
        came, prints one JSON line: CLOCK_MONOTONIC at the last one and, with `--stamped`, each
        message's latency in ms from its `sim_emitted_at`
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
import os
import selectors
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

# A subscriber waits this long after its SUBACK before it says `ready`: until then its delayed ACK of
# the SUBACK is pending, and a broker with Nagle on holds the first message to it (~40 ms, seen as the
# first messages of a burst arriving together 40 ms late). Warm-up, not synchronisation.
SETTLE = 0.25
RECEIVE_MAXIMUM = 20  # what Mosquitto announces by default (paho does not read it from CONNACK)
PAYLOAD: dict[str, Any] = {  # the size and shape of a bridge message payload
    "id": "3EB0C767D26A1B2C0000", "account": "5511900000001", "chat": "5511988887777@s.whatsapp.net",
    "chat_type": "private", "sender": "5511988887777", "sender_jid": "5511988887777@s.whatsapp.net",
    "sender_name": "Ana", "from_me": False, "timestamp": "2026-11-24T10:00:00Z", "type": "text",
    "text": "hello there", "caption": None, "media": None, "quoted": None, "mentions": [], "reaction": None,
    "location": None}


def new_client(name: str) -> mqtt.Client:
    """A paho client at its best: MQTT v5, 20 publishes in flight, no limit on what queues behind."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{name}-{time.monotonic_ns()}",
                         protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(RECEIVE_MAXIMUM)
    client.max_queued_messages_set(0)  # no limit on what paho queues behind the window
    return client


def connect(port: int, name: str) -> tuple[mqtt.Client, threading.Event]:
    client = new_client(name)
    client.on_socket_open = lambda _c, _u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connected = threading.Event()
    client.on_connect = lambda *_args: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not connected.wait(10):
        raise SystemExit("no CONNACK within 10 s")
    return client, connected


def relay(port: int, prefix: str, respond: bool, also: int = 0) -> None:
    client, _ = connect(port, "raw-relay")
    out = "/resp/" if respond else "/out/"
    extra = [f"{prefix}/also{k}" for k in range(also)]
    payload = json.dumps(PAYLOAD).encode()
    subscribed = threading.Event()

    def on_message(c: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        c.publish(message.topic.replace("/in/", out, 1), message.payload, qos=1)
        for topic in extra:
            c.publish(topic, payload, qos=1)

    client.on_message = on_message
    client.on_subscribe = lambda *_args: subscribed.set()
    client.subscribe(f"{prefix}/in/#", qos=1)
    subscribed.wait(10)
    time.sleep(SETTLE)
    print("ready", flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
    client.disconnect()
    client.loop_stop()


class TurnClient:
    """A paho client that the caller's one `select` loop runs a turn at a time, at its cheapest: the
    socket read ahead with the bridge's own helper (`ReadAhead`: one recv for what has arrived), and the
    turn's packets written together (`coalesce`). No thread, so nothing is handed between threads."""

    def __init__(self, name: str, subscribe: str) -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's wa_mqtt
        from wa_mqtt.mqtt.paho_client import ReadAhead, coalesce

        self._coalesce = coalesce
        self.client = new_client(name)
        self.subscribed = False
        self.client.on_connect = lambda c, *_args: c.subscribe(subscribe, qos=1)
        self.client.on_subscribe = lambda *_args: setattr(self, "subscribed", True)

        def opened(c: mqtt.Client, _userdata: object, sock: socket.socket) -> None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c._sock = ReadAhead(sock)  # paho reads through it: one recv for what has arrived

        self.client.on_socket_open = opened
        self.client.on_socket_register_write = lambda *_args: None  # queued, written once per turn (below)

    def connect(self, port: int) -> None:
        self.client.connect("127.0.0.1", port)

    def read(self) -> None:
        self.client.loop_read()
        while self.client._sock is not None and self.client._sock.pending():  # read ahead: nothing wakes us for it
            self.client.loop_read()

    def write(self) -> None:
        self._coalesce(self.client._out_packet)  # the turn's packets in one send
        while self.client.want_write():
            self.client.loop_write()
        self.client.loop_misc()


# The floor's engine: a child process that hands every line back as it reads it (it does no work).
ECHO = "import os\nwhile chunk := os.read(0, 65536):\n    os.write(1, chunk)\n"


def floor(port: int, prefix: str, directory: Path) -> None:
    """The cheapest client that does what the bridge must do for each send, nothing more: the
    request recorded durably (an SQLite WAL insert, committed) before it is handed to a child process
    over a pipe, the child's answer read back, the record deleted (committed; the answers read together
    in one statement, as the bridge's `complete_all`), then the response and two more QoS 1 publishes
    (the bridge's receipt and the sim's `sent` echo), each of those two spooled durably first
    (inserted, the answers read together in one commit, as the bridge's spool batches a loop turn's;
    deleted once acknowledged, one delete per loop turn).
    One thread runs it all on one `select` (paho's socket, the child's pipe), so nothing is handed
    between threads; the pipe writes of a turn go out together, and so do its MQTT packets, which are
    also read ahead, with the bridge's own helpers for paho's socket (`ReadAhead`, `coalesce`). It
    skips what the bridge also does: validation, the fsync before the engine call, the engine's own
    work, ordering, retries, statuses, WAL checkpoints. So it is a floor: a Python send path with
    these steps costs at least this much."""
    directory.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(directory / "floor.db", isolation_level=None)
    for pragma in ("page_size=1024", "journal_mode=WAL", "synchronous=NORMAL", "wal_autocheckpoint=0"):
        db.execute(f"PRAGMA {pragma}")
    db.execute("CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY, request BLOB NOT NULL)")
    db.execute("CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL, "
               "payload BLOB NOT NULL)")
    for table in ("outbox", "spool"):  # an earlier run's last entries: its spool numbers start at 1 again
        db.execute(f"DELETE FROM {table}")
    engine = subprocess.Popen([sys.executable, "-c", ECHO], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    assert engine.stdin is not None and engine.stdout is not None
    to_engine, from_engine = engine.stdin.fileno(), engine.stdout.fileno()
    lean = TurnClient("raw-floor", subscribe=f"{prefix}/in/#")
    client = lean.client
    waiting: dict[int, str] = {}  # outbox id: the response topic
    lines: list[bytes] = []  # for the engine, written once per turn
    spool = {"newest": 0, "acked": 0, "deleted": 0}

    def on_message(_c: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        json.loads(message.payload)
        entry = db.execute("INSERT INTO outbox (request) VALUES (?)", (message.payload,)).lastrowid
        assert entry is not None
        waiting[entry] = message.topic.replace("/in/", "/resp/", 1)
        lines.append(json.dumps({"id": entry, "send": message.payload.decode()}).encode() + b"\n")

    def answer(lines_in: list[bytes]) -> None:
        replies = [json.loads(line) for line in lines_in]
        ids = [reply["id"] for reply in replies]
        db.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(ids))})", ids)
        spooled: list[tuple[str, bytes]] = []
        db.execute("BEGIN")
        for reply in replies:
            client.publish(waiting.pop(reply["id"]), reply["send"], qos=1)
            for kind in ("receipt", "sent"):
                body = json.dumps({"id": "3EB0C767D26A1B2C0000", "kind": kind, "at": time.time()}).encode()
                spool["newest"] += 1
                db.execute("INSERT INTO spool VALUES (?, ?, ?)",
                           (spool["newest"], f"{prefix}/events/{kind}", body))
                spooled.append((f"{prefix}/events/{kind}", body))
        db.execute("COMMIT")
        for topic, body in spooled:  # published once committed
            client.publish(topic, body, qos=1)

    def on_publish(*_args: object) -> None:
        spool["acked"] += 1

    partial = b""  # a line of the child's not complete yet
    stdin_open = True

    def from_child() -> None:
        nonlocal partial
        read = os.read(from_engine, 65536)
        if not read:
            raise SystemExit("the floor's engine process ended")
        *complete, partial = (partial + read).split(b"\n")
        if complete:
            answer(complete)

    def from_stdin() -> None:
        nonlocal stdin_open
        stdin_open = bool(sys.stdin.readline())

    def each_turn() -> None:
        if lines:
            os.write(to_engine, b"".join(lines))
            lines.clear()
        # one delete per turn for what was acknowledged (spool entries are 2 of each send's 3 publishes)
        acked = spool["acked"] * 2 // 3
        if acked > spool["deleted"]:
            db.execute("DELETE FROM spool WHERE seq <= ?", (acked,))
            spool["deleted"] = acked

    client.on_message = on_message
    client.on_publish = on_publish
    lean.connect(port)
    run_turns(lean, lambda: not stdin_open, {from_engine: from_child, sys.stdin: from_stdin},
              each_turn)  # until the benchmark closes our stdin
    engine.stdin.close()
    engine.wait()


def drive(port: int, request_topic: str, response_filter: str, count: int, window: int, text: str) -> None:
    """The requester of the send benchmarks (the raw responder, the floor, the bridge alike): `count`
    requests, at most `window` unanswered, each next one published as an answer comes in. It runs in a
    process of its own on one `select`, as lean as the floor, so that the CPU it needs on a small
    machine takes as little as it can from what it measures."""
    lean = TurnClient("raw-driver", subscribe=response_filter)
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    published = 0
    start = end = 0.0

    def publish_next() -> None:
        nonlocal published
        i, published = published, published + 1
        sent_at[i] = time.monotonic()
        body = json.dumps({"to": "5511988887777", "text": text.replace("{i}", str(i)), "transaction": i})
        lean.client.publish(request_topic, body, qos=1)

    def on_message(_c: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        nonlocal end
        transaction = json.loads(message.payload).get("transaction")
        if isinstance(transaction, int) and transaction in sent_at:
            end = time.monotonic()
            latencies.append((end - sent_at.pop(transaction)) * 1000)
            if published < count:
                publish_next()

    def go() -> None:
        nonlocal start
        if not sys.stdin.readline():
            raise SystemExit("stdin closed before the requests were sent")
        if not start:
            start = time.monotonic()
            for _ in range(min(window, count)):
                publish_next()

    lean.client.on_message = on_message
    lean.connect(port)
    run_turns(lean, lambda: len(latencies) >= count, {sys.stdin: go})
    print(json.dumps({"seconds": end - start, "latencies": latencies}), flush=True)


def run_turns(lean: TurnClient, done: Callable[[], bool], readers: dict[Any, Callable[[], None]],
              each_turn: Callable[[], None] = lambda: None) -> None:
    """Runs `lean` on one `select` until `done()`, with `readers` (a file or descriptor: what to call when
    it can be read): `each_turn` after a turn's reads, then the turn's packets go out together. Prints
    `ready` `SETTLE` after the SUBACK (as `relay`); disconnects at the end."""
    selector = selectors.DefaultSelector()
    selector.register(lean.client.socket(), selectors.EVENT_READ, lean.read)
    for source, on_readable in readers.items():
        selector.register(source, selectors.EVENT_READ, on_readable)
    ready_at: float | None = None
    while not done():
        for key, _ in selector.select(0.1):
            key.data()
        each_turn()
        lean.write()
        if lean.subscribed and ready_at is None:
            ready_at = time.monotonic() + SETTLE
        if ready_at is not None and 0 < ready_at <= time.monotonic():
            print("ready", flush=True)
            ready_at = 0.0
    lean.client.disconnect()
    lean.write()


def sink(port: int, topic_filter: str, count: int, stamped: bool) -> None:
    """The subscriber of the inbound benchmarks (the raw relay and the bridge alike), as lean as `drive`."""
    lean = TurnClient("raw-sink", subscribe=topic_filter)
    latencies: list[float] = []
    received = 0
    last_at = 0.0

    def on_message(_c: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        nonlocal received, last_at
        received += 1
        last_at = time.monotonic()
        if stamped:
            latencies.append((last_at - json.loads(message.payload)["sim_emitted_at"]) * 1000)

    lean.client.on_message = on_message
    lean.connect(port)
    run_turns(lean, lambda: received >= count, {})
    print(json.dumps({"done_at": last_at, "latencies": latencies}), flush=True)


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
    relay_args.add_argument("--also", type=int, default=0)
    floor_args = sub.add_parser("floor")
    floor_args.add_argument("port", type=int)
    floor_args.add_argument("prefix")
    floor_args.add_argument("directory", type=Path)
    sink_args = sub.add_parser("sink")
    sink_args.add_argument("port", type=int)
    sink_args.add_argument("filter")
    sink_args.add_argument("count", type=int)
    sink_args.add_argument("--stamped", action="store_true")
    drive_args = sub.add_parser("drive")
    drive_args.add_argument("port", type=int)
    drive_args.add_argument("request_topic")
    drive_args.add_argument("response_filter")
    drive_args.add_argument("count", type=int)
    drive_args.add_argument("window", type=int)
    drive_args.add_argument("text")
    produce_args = sub.add_parser("produce")
    produce_args.add_argument("port", type=int)
    produce_args.add_argument("topic")
    produce_args.add_argument("count", type=int)
    produce_args.add_argument("--interval", type=float, default=0.0)
    produce_args.add_argument("--stamp", action="store_true")
    args = parser.parse_args()
    if args.command == "relay":
        relay(args.port, args.prefix, args.respond, args.also)
    elif args.command == "floor":
        floor(args.port, args.prefix, args.directory)
    elif args.command == "sink":
        sink(args.port, args.filter, args.count, args.stamped)
    elif args.command == "drive":
        drive(args.port, args.request_topic, args.response_filter, args.count, args.window, args.text)
    else:
        produce(args.port, args.topic, args.count, args.interval, args.stamp)


if __name__ == "__main__":
    main()
