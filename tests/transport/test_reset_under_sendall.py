"""A blocking server in ``sendall`` whose client resets the carrier raises, whenever the
reset comes: one that the write at the top of a pump's pass met left the pass waiting
on nothing but its waker, with no timer due, and the ``sendall`` waited for good (about
one round in four here). Real connections on 127.0.0.1."""

from __future__ import annotations

import queue
import socket
import struct

import pytest

import dtp.socket
from dtp.errors import DTPError
from tests.transport.flooders import SERVER, blocking_flooder

ROUNDS = 20
#: seconds the server has to end each round (it ends in milliseconds)
BOUND = 10.0


@pytest.mark.timeout(300)
def test_a_reset_under_a_blocking_sendall_ends_it() -> None:
    """ROUNDS clients each read a little of the server's flood and reset the carrier
    (SO_LINGER 0, then abort): each time the server's sendall ends and its read
    raises, within BOUND seconds (ConnectionLost, or ConnectionClosed when the
    abort's CLOSE was read before the reset)."""
    outcomes: list[str] = []
    with blocking_flooder() as (address, results):
        for _ in range(ROUNDS):
            sock = dtp.socket.create_connection(address, timeout=10, server_key=SERVER.noise_public)
            assert sock.recv(1000)
            carrier = sock._engine.sock
            carrier.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.abort()  # (its carrier closed at once: a reset, with the flood unread)
            try:
                got = results.get(timeout=BOUND)
            except queue.Empty:
                outcomes.append("still in sendall")
                break
            outcomes.append("ended" if isinstance(got, DTPError) else repr(got))
    assert outcomes == ["ended"] * ROUNDS
