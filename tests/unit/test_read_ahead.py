"""`ReadAhead` (mqtt/paho_client.py): what its read-ahead meets reaches paho's next read unchanged."""

from __future__ import annotations

import select
import socket
import struct

import pytest

from wa_mqtt.mqtt.paho_client import ReadAhead


def _connected_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
    return client, peer


def test_a_reset_met_by_the_read_ahead_reaches_paho_as_a_reset() -> None:
    """The kernel reports a reset once: the read ahead keeps it for paho's recv, which would otherwise
    see a plain end of stream and log the connection as closed rather than reset."""
    client, peer = _connected_pair()
    with client:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # linger 0: a reset
        reader = ReadAhead(client)
        assert reader.fill() is False
        with pytest.raises(ConnectionResetError):
            reader.recv(1)


def test_nothing_arrived_yet_is_not_kept() -> None:
    """"Nothing yet" is no failure: the bytes that arrive after it are read."""
    client, peer = _connected_pair()
    with client, peer:
        client.setblocking(False)
        reader = ReadAhead(client)
        assert reader.fill() is False
        peer.sendall(b"\x40\x02\x00\x01")
        assert select.select([client], [], [], 5)[0]
        assert reader.recv(4) == b"\x40\x02\x00\x01"
