"""The blocking server's per-address line kept a connection whose wait had passed the
handshake timeout until its turn came -- which, behind a handshake whose accept hook
takes its time, is much later -- and every newcomer from that address meanwhile found
the line full and was closed. A newcomer that finds the line full now first closes
those that waited too long (counted in ``busy_refused``) and takes a place. Real
servers and sockets on 127.0.0.1."""

from __future__ import annotations

import threading
import time

import dtp.socket
from dtp.connection import ConnectionConfig
from dtp.keys import HostIdentity
from tests.polling import wait_for
from tests.test_handshake_slots import closed_by_peer, echo, idle

SERVER = HostIdentity.generate()
CLIENT = HostIdentity.generate()


def test_a_connection_that_waited_too_long_leaves_its_place_to_a_newcomer() -> None:
    release = threading.Event()
    hooked = threading.Event()

    def accept(address: str) -> bool:
        hooked.set()
        return release.wait(10)  # the first client's handshake holds its slot meanwhile

    server = dtp.socket.DTPServer(
        ("127.0.0.1", 0),
        SERVER,
        accept=accept,
        config=ConnectionConfig(identity=SERVER, is_client=False, handshake_timeout=0.3),
        max_handshakes_per_address=1,
        max_waiting_per_address=1,
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

    client = threading.Thread(target=first)
    client.start()
    try:
        assert hooked.wait(5)
        stale = idle(server.address)  # waits in line, then past its deadline
        assert wait_for(lambda: slots.waiting("127.0.0.1") == 1)
        with stale:
            deadline = slots._waiting["127.0.0.1"][0][0]
            assert wait_for(lambda: time.monotonic() > deadline + 0.05)
            newcomer = idle(server.address)
            with newcomer:
                # the stale one is closed and counted; the newcomer waits in its place
                assert closed_by_peer(stale, within=2.0)
                assert not closed_by_peer(newcomer, within=0.3)
                assert server.busy_refused == 1
                assert slots.waiting("127.0.0.1") == 1
    finally:
        release.set()
        client.join(10)
        server.close()
    assert replies == [b"first"]
