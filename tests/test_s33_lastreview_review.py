"""Second-reader review of the line purge's look at a waiting client (dtp.socket).

``_waiting_gone`` runs under a line's lock, in the server's threads: it must
neither wait nor call a live client gone. A waiting socket with a timeout (one that
``socket.setdefaulttimeout`` gave it at accept) whose client sent a TCP urgent byte
alone woke poll (POLLPRI) while a peek finds no data: CPython's recv then waited for
data up to the socket's timeout, MSG_DONTWAIT or not, and its TimeoutError counted the
live client as gone.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from dtp._poll import wait_ready
from dtp.connection import ConnectionConfig
from dtp.keys import HostIdentity
from dtp.socket import _Arrival, _waiting_gone

SOCKET_TIMEOUT = 3.0


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(client, server side) of a loopback TCP connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    served, _ = listener.accept()
    listener.close()
    try:
        yield client, served
    finally:
        client.close()
        served.close()


def test_an_urgent_byte_alone_neither_waits_nor_makes_the_client_gone(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, served = pair
    served.settimeout(SOCKET_TIMEOUT)  # (as setdefaulttimeout gives an accepted socket)
    client.send(b"!", socket.MSG_OOB)
    # the urgent byte has arrived once poll says so (POLLPRI): no sleep
    assert wait_ready([served], [], 2.0)[0] == [served]
    started = time.monotonic()
    config = ConnectionConfig(identity=HostIdentity.generate(), is_client=False)
    waited = _Arrival(served, ("127.0.0.1", 1), config, "k")
    gone = _waiting_gone(waited)
    took = time.monotonic() - started
    assert took < 0.5, f"the look under the line's lock waited {took:.2f} s"
    assert gone is False  # its client is still there
    assert served.gettimeout() == SOCKET_TIMEOUT  # (left as it was)
    # and its hanging up is still seen, nothing consumed on the way
    client.sendall(b"hello")
    client.shutdown(socket.SHUT_WR)
    assert served.recv(5, socket.MSG_PEEK) == b"hello"
    assert _waiting_gone(waited) is False  # (its first bytes came before the FIN)
    assert served.recv(5) == b"hello"
    assert wait_ready([served], [], 2.0)[0] == [served]
    assert _waiting_gone(waited) is True
