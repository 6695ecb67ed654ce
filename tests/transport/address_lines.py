"""A blocking server whose one handshake slot for an address is held while a line of
clients waits behind it (dtp.transport._admission), for the address-line tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig
from dtp.transport._admission import AddressSlots
from tests.transport.half_handshakes import echo

SERVER = HostIdentity.generate()
CLIENT = HostIdentity.generate()
HOST = "127.0.0.1"


@dataclass
class Held:
    """A server whose one handshake slot for 127.0.0.1 a client (``client``, a thread)
    holds in its accept hook until ``release`` is set; what the client was answered
    goes to ``replies``."""

    server: dtp.socket.DTPServer
    slots: AddressSlots[Any]
    release: threading.Event
    client: threading.Thread
    replies: list[bytes]


@contextmanager
def holding(handshake_timeout: float = 5.0, **limits: Any) -> Iterator[Held]:
    """A blocking echo server with one handshake per address and the handshake
    ``limits`` (``max_handshakes``, ``max_waiting_per_address``...), whose slot for
    127.0.0.1 a client holds in its accept hook while the test runs (until ``release``);
    its deadline is ``handshake_timeout``. The client is served in the end."""
    release = threading.Event()
    hooked = threading.Event()

    def accept(address: str) -> bool:
        hooked.set()
        return release.wait(10)

    server = dtp.socket.DTPServer(
        (HOST, 0),
        SERVER,
        accept=accept,
        config=ConnectionConfig(
            identity=SERVER, is_client=False, handshake_timeout=handshake_timeout
        ),
        max_handshakes_per_address=1,
        **limits,
    )
    threading.Thread(target=server.serve_forever, args=(echo,), daemon=True).start()
    slots = server._address_slots
    assert slots is not None
    replies: list[bytes] = []

    def first() -> None:
        with dtp.socket.create_connection(
            server.address, timeout=10, server_key=server.noise_public_key, identity=CLIENT
        ) as sock:
            sock.sendall(b"first")
            replies.append(sock.recv(100))

    client = threading.Thread(target=first, daemon=True)
    client.start()
    try:
        assert hooked.wait(5)
        yield Held(server, slots, release, client, replies)
    finally:
        release.set()
        client.join(10)
        server.close()
    assert replies == [b"first"]  # the slot's holder was served throughout


@contextmanager
def held_address(
    waiting: int, handshake_timeout: float = 5.0
) -> Iterator[tuple[dtp.socket.DTPServer, AddressSlots[Any]]]:
    """A server whose one handshake slot for 127.0.0.1 is held (a client's handshake in
    its accept hook) while the test runs, with a line of ``waiting`` behind it; the
    deadline (``handshake_timeout``) is by default far beyond the test's length, so
    nothing in line expires meanwhile."""
    with holding(handshake_timeout, max_waiting_per_address=waiting) as held:
        yield held.server, held.slots
