"""The link joins the packets paho queued in one loop turn into one write (`coalesce`), and reads ahead
(`ReadAhead`): checked against a real paho client on a socket pair, so a paho that changed its packet
queue or its reads fails here."""

from __future__ import annotations

import select
import socket
import struct
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from wa_mqtt.mqtt.link import ReadAhead, coalesce
from wa_mqtt.mqtt.paho_client import PahoClient, write_joined


def _paho(sock: socket.socket) -> mqtt.Client:
    """A paho client 'connected' to `sock`: what it publishes is queued, and written by `loop_write`."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="t", protocol=mqtt.MQTTv311)
    client.on_socket_register_write = lambda *_args: None  # queue only: we write
    client.on_socket_unregister_write = lambda *_args: None
    client._sock = sock  # type: ignore[assignment]  # private: no broker in a unit test
    client._state = mqtt._ConnectionState.MQTT_CS_CONNECTED  # type: ignore[attr-defined]  # private, as above
    return client


def _read_all(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


def _written(join: bool, publishes: list[tuple[str, bytes, int]]) -> tuple[bytes, list[Any], int]:
    """What paho writes for `publishes`, joined or not; the QoS 0 on_publish calls; the packets sent as."""
    ours, theirs = socket.socketpair()
    published: list[Any] = []
    try:
        client = _paho(ours)
        client.on_publish = lambda _c, _u, mid, *_rest: published.append(mid)
        for topic, payload, qos in publishes:
            client.publish(topic, payload, qos=qos)
        queue = client._out_packet  # private: the queue `coalesce` works on
        if join:
            coalesce(queue)
        packets = len(queue)
        client.loop_write()
        assert not client.want_write()
        return _read_all(theirs), published, packets
    finally:
        ours.close()
        theirs.close()


def test_joined_packets_are_the_same_bytes_in_fewer_writes_and_qos0_publishes_are_still_reported() -> None:
    publishes = [("a/1", b"x" * 10, 1), ("a/2", b"y" * 300, 1), ("a/3", b"", 1), ("b/0", b"zero", 0),
                 ("a/4", b"w" * 70_000, 1), ("a/5", b"v", 1)]
    plain, plain_published, plain_packets = _written(False, publishes)
    joined, joined_published, joined_packets = _written(True, publishes)
    assert joined == plain
    assert plain_packets == 6
    assert joined_packets == 3  # a/1-a/3, b/0 (QoS 0: paho reports it once written), a/4-a/5
    assert joined_published == plain_published and len(plain_published) == 1


def test_nothing_to_join() -> None:
    publishes = [("a/1", b"x", 1)]
    assert _written(True, publishes)[2] == 1
    assert _written(True, [("a/1", b"x", 0), ("a/2", b"y", 0)])[2] == 2


def test_write_joined_sends_what_paho_sends_and_leaves_it_the_rest() -> None:
    """`write_joined`: QoS 1 publishes (and the like) in one send, the same bytes as paho's own writes;
    a queue holding a QoS 0 publish is left to paho; a socket that takes part of it leaves paho the
    rest, which paho then writes."""
    publishes = [("a/1", b"x" * 10, 1), ("a/2", b"y" * 300, 1), ("a/3", b"", 1)]
    plain, _, _ = _written(False, publishes)
    ours, theirs = socket.socketpair()
    try:
        client = _paho(ours)
        for topic, payload, qos in publishes:
            client.publish(topic, payload, qos=qos)
        client._registered_write = True  # private: as queuing under aiomqtt leaves it
        assert write_joined(client) and not client.want_write() and not client._registered_write
        assert _read_all(theirs) == plain
        client.publish("b/0", b"zero", qos=0)
        assert not write_joined(client) and len(client._out_packet) == 1  # paho's: it reports QoS 0 once written
        client.loop_write()
        big = b"z" * 3_000_000
        client.publish("c/1", big, qos=1)
        ours.setblocking(False)
        assert not write_joined(client)  # more than the socket takes at once
        assert len(client._out_packet) == 1 and client._out_packet[0]["pos"] > 0
        received = b""
        while client.want_write() or select.select([theirs], [], [], 0)[0]:
            client.loop_write()
            received += _read_all(theirs)
        assert received.startswith(_written(False, [("b/0", b"zero", 0)])[0]) and received.endswith(big)
    finally:
        ours.close()
        theirs.close()


def test_read_ahead_hands_out_what_one_recv_took_in_and_says_how_much_it_holds() -> None:
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        reader = ReadAhead(ours)
        with pytest.raises(BlockingIOError):  # nothing there: as the socket says
            reader.recv(1)
        theirs.sendall(b"abcdefgh")
        assert reader.recv(1) == b"a" and reader.pending() == 7
        assert reader.recv(3) == b"bcd" and reader.recv(10) == b"efgh" and reader.pending() == 0
        assert reader.fileno() == ours.fileno()  # the rest is the socket's
    finally:
        ours.close()
        theirs.close()


def test_paho_reads_every_packet_through_read_ahead() -> None:
    """Publishes written by one paho client, read by another through `ReadAhead`: every one arrives."""
    ours, theirs = socket.socketpair()
    try:
        data, _, _ = _written(True, [(f"t/{i}", bytes([i]) * (i * 50), 0) for i in range(40)])  # QoS 0: no window
        theirs.sendall(data)
        reader = _paho(ours)
        ours.setblocking(False)
        reader._sock = ReadAhead(ours)  # type: ignore[assignment]  # as the link installs it
        got: list[tuple[str, bytes]] = []
        reader.on_message = lambda _c, _u, message: got.append((message.topic, message.payload))
        reader._in_messages = {}  # private: no session state in a unit test
        reader.loop_read()
        while reader.socket().pending():  # type: ignore[union-attr]  # as aiomqtt's reader does
            reader.loop_read()
        assert got == [(f"t/{i}", bytes([i]) * (i * 50)) for i in range(40)]
    finally:
        ours.close()
        theirs.close()


class _Recording(socket.socket):
    """A real TCP socket that notes its TCP_QUICKACK settings."""

    quickacks = 0

    def setsockopt(self, *args: Any) -> None:
        if args[:2] == (socket.IPPROTO_TCP, getattr(socket, "TCP_QUICKACK", None)):
            self.quickacks += 1
        super().setsockopt(*args)


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux's")
def test_read_ahead_acknowledges_each_read_at_once() -> None:
    """A broker with Nagle on (Mosquitto's default) holds its next small packet until we acknowledged
    the last: with Linux's delayed ACK, one send at a time took ~44 ms on it. TCP_QUICKACK does not
    stay set, so `ReadAhead` sets it after every recv() that took data in (not for data it held)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        ours = _Recording(socket.AF_INET, socket.SOCK_STREAM)
        ours.connect(server.getsockname())
        theirs, _ = server.accept()
        try:
            reader = ReadAhead(ours)
            assert ours.quickacks == 1  # tried once: the socket takes it
            theirs.sendall(b"abcd")
            assert reader.recv(1) == b"a" and ours.quickacks == 2
            assert reader.recv(3) == b"bcd" and ours.quickacks == 2  # held: no read, nothing to acknowledge
            theirs.sendall(b"e")
            assert reader.recv(1) == b"e" and ours.quickacks == 3
        finally:
            ours.close()
            theirs.close()


def test_read_ahead_on_a_socket_without_tcp_options_reads_as_before() -> None:
    ours, theirs = socket.socketpair()  # a Unix socket: TCP_QUICKACK does not apply
    try:
        reader = ReadAhead(ours)
        theirs.sendall(b"xy")
        assert reader.recv(2) == b"xy"
    finally:
        ours.close()
        theirs.close()


@pytest.mark.skipif(not hasattr(socket, "TCP_QUICKACK"), reason="TCP_QUICKACK is Linux's")
def test_read_ahead_fill_reads_once_holding_nothing_and_leaves_a_failed_or_ended_read_to_paho() -> None:
    """`fill` (the client's first read of a read event) takes in what arrived with one recv() and
    acknowledges it at once; with nothing there, or the peer gone, it holds nothing: paho's own read
    meets the same and handles it as before."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        ours = _Recording(socket.AF_INET, socket.SOCK_STREAM)
        ours.connect(server.getsockname())
        ours.setblocking(False)
        theirs, _ = server.accept()
        try:
            reader = ReadAhead(ours)
            assert not reader.fill() and reader.pending() == 0  # nothing arrived: BlockingIOError, held nothing
            theirs.sendall(b"\x40\x02\x00\x01")
            deadline = time.monotonic() + 5
            while not reader.fill():
                assert time.monotonic() < deadline
            assert ours.quickacks == 2 and reader.pending() == 4
            assert reader.fill() and ours.quickacks == 2  # held: no read
            assert reader.packet() == (0x40, b"\x00\x01") and reader.pending() == 0
            theirs.close()
            assert select.select([ours], [], [], 5)[0]  # the end of the stream arrived
            assert not reader.fill() and reader.pending() == 0
            assert reader.recv(1) == b""  # what paho's read sees again: the connection ended
        finally:
            ours.close()


def test_write_joined_counts_the_keepalive_from_its_write() -> None:
    """paho's keepalive counts from its last write: `write_joined` moves it as paho's write does."""
    ours, theirs = socket.socketpair()
    try:
        client = _paho(ours)
        client.publish("a/1", b"x", qos=1)
        client._last_msg_out = 0  # private: paho's time of its last write
        assert write_joined(client)
        assert client._last_msg_out > 0
    finally:
        ours.close()
        theirs.close()


def test_write_joined_on_a_full_socket_keeps_every_byte_for_paho() -> None:
    """A socket already full makes the send raise BlockingIOError: nothing is lost, paho writes it
    all once the peer read."""
    publishes = [("a/1", b"x" * 10, 1), ("a/2", b"y" * 300, 1)]
    plain, _, _ = _written(False, publishes)
    ours, theirs = socket.socketpair()
    try:
        ours.setblocking(False)
        filler = b""
        with pytest.raises(BlockingIOError):
            while True:
                filler += b"f" * ours.send(b"f" * 65536)
        client = _paho(ours)
        for topic, payload, qos in publishes:
            client.publish(topic, payload, qos=qos)
        assert not write_joined(client) and client.want_write()
        received = b""
        while client.want_write() or select.select([theirs], [], [], 0)[0]:
            received += _read_all(theirs)
            client.loop_write()
        received += _read_all(theirs)
        assert received == filler + plain
    finally:
        ours.close()
        theirs.close()


def _reset_pair() -> tuple[socket.socket, socket.socket]:
    """A TCP connection whose peer has reset it (closed with linger 0): the kernel reports it once."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        ours = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    return ours, peer


def test_write_joined_raises_a_reset_and_keeps_the_data() -> None:
    """A reset is raised as met, not left for paho's next send (which would see a broken pipe), and
    the data stays queued (the link publishes again what was not acknowledged)."""
    ours, _ = _reset_pair()
    with ours:
        client = _paho(ours)
        client.publish("a/1", b"x", qos=1)
        queued = bytes(client._out_packet[0]["packet"])
        with pytest.raises(ConnectionResetError):
            write_joined(client)
        assert [bytes(packet["packet"][packet["pos"]:]) for packet in client._out_packet] == [queued]


async def test_a_reset_met_by_the_joined_write_ends_the_session_as_a_reset() -> None:
    """The link's write (`_write_queued`) ends the session on the reset itself, not on the broken pipe
    a second send would meet."""
    ours, _ = _reset_pair()
    with ours:
        link = PahoClient("127.0.0.1")
        client = link._client
        client._sock = ours  # type: ignore[assignment]  # private: no broker in a unit test
        client._state = mqtt._ConnectionState.MQTT_CS_CONNECTED  # type: ignore[attr-defined]  # private, as above
        client.publish("a/1", b"x", qos=1)
        link._write_queued(client, None, ours)
        assert link._disconnected.done()
        assert isinstance(link._disconnected.exception(), ConnectionResetError)
