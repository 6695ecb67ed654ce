"""The one-shot blocking ``connect()`` against addresses that accept and stay silent.

1. With no ``timeout`` given, a listener that accepted and never answered held the
   connect until the config's handshake timer failed it with a bare "handshake timed
   out", and a DTP server that finished the handshake but never synced held it for
   good. ``connect`` now defaults to ``CONNECT_TIMEOUT`` (10 s) and raises
   DTPTimeoutError naming the address.
2. A DTP server that accepts the connection and never sends its HELLO raises, at the
   bound, DTPTimeoutError naming the address and the bound rather than the socket's
   bare "timed out".
"""

from __future__ import annotations

import inspect
import socket
import threading
from collections.abc import Iterator

import pytest

import dtp.socket
from dtp.errors import DTPTimeoutError
from dtp.graph import Graph
from dtp.graph.sync import CONNECT_TIMEOUT, connect
from dtp.identity.keys import HostIdentity


@pytest.fixture
def silent_listener() -> Iterator[tuple[str, int]]:
    """A TCP listener whose connections are accepted (by the kernel) and never read."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener.getsockname()[:2]


def test_connect_has_a_default_timeout() -> None:
    assert CONNECT_TIMEOUT == 10.0
    assert inspect.signature(connect).parameters["timeout"].default == CONNECT_TIMEOUT


def test_a_silent_listener_fails_the_default_connect_with_a_timeout_naming_it(
    silent_listener: tuple[str, int],
) -> None:
    host, port = silent_listener
    with Graph() as graph, pytest.raises(DTPTimeoutError) as caught:
        connect(graph, (host, port))
    assert f"{host}:{port}" in str(caught.value)
    assert "10 s" in str(caught.value)


def test_a_server_that_never_syncs_fails_the_connect_naming_it() -> None:
    release = threading.Event()
    accepted: list[dtp.socket.DTPSocket] = []
    with dtp.socket.create_server(("127.0.0.1", 0), identity=HostIdentity.generate()) as server:

        def hold() -> None:
            # accept and keep the stream open, saying nothing
            accepted.append(server.accept()[0])
            release.wait(30)

        holder = threading.Thread(target=hold, daemon=True)
        holder.start()
        host, port = server.address[:2]
        try:
            with Graph() as graph, pytest.raises(DTPTimeoutError) as caught:
                connect(graph, (host, port), server_key=server.noise_public_key, timeout=0.5)
        finally:
            release.set()
            holder.join(10)
            for sock in accepted:
                sock.close()
    assert f"graph sync with {host}:{port} timed out after 0.5 s" in str(caught.value)
