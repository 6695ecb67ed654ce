"""The blocking server's listener wakes its accepting thread only once a connection's
first data is in (TCP_DEFER_ACCEPT, Linux), so a client's first handshake message,
sent with its connect, is read by the thread that accepts it. A connection whose client
sends nothing yet is still accepted, once the kernel's deferral ends, and a client whose
first record is late still gets its handshake."""

from __future__ import annotations

import select
import socket
import threading
import time

import pytest

import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.transport.carriers._tcp import DEFER_ACCEPT_SECONDS, listen_tcp

linux_only = pytest.mark.skipif(
    not hasattr(socket, "TCP_DEFER_ACCEPT"), reason="TCP_DEFER_ACCEPT is Linux's"
)


def _readable(sock: socket.socket, seconds: float) -> bool:
    return bool(select.select([sock], [], [], seconds)[0])


@linux_only
def test_the_listener_defers_the_accept_until_data_comes() -> None:
    listener = listen_tcp(("127.0.0.1", 0))
    try:
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) > 0
        with socket.create_connection(listener.getsockname()[:2]) as client:
            assert not _readable(listener, 0.3)  # connected, nothing sent: not yet
            client.sendall(b"first")
            assert _readable(listener, 5.0)
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.recv(5) == b"first"  # (the data came with the accept)
    finally:
        listener.close()


@linux_only
def test_a_silent_connection_is_accepted_once_the_deferral_ends() -> None:
    listener = listen_tcp(("127.0.0.1", 0))
    try:
        with socket.create_connection(listener.getsockname()[:2]):
            # (the kernel's deferral ends with a SYN-ACK resent, a second later or more)
            assert _readable(listener, DEFER_ACCEPT_SECONDS + 10.0)
            accepted, _ = listener.accept()
            with accepted:
                accepted.setblocking(False)
                with pytest.raises(BlockingIOError):
                    accepted.recv(1)  # accepted with nothing sent
    finally:
        listener.close()


def _late_relay(upstream: tuple[str, int], delay: float) -> tuple[socket.socket, threading.Thread]:
    """A relay to ``upstream`` that connects there as soon as its client connects, but
    passes the client's bytes on only ``delay`` seconds later: the server sees a
    connect whose first record is late."""
    listener = socket.create_server(("127.0.0.1", 0))

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def run() -> None:
        client, _ = listener.accept()
        server = socket.create_connection(upstream)
        time.sleep(delay)
        back = threading.Thread(target=pipe, args=(server, client), daemon=True)
        back.start()
        pipe(client, server)
        back.join(10.0)
        client.close()
        server.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return listener, thread


def test_a_client_whose_first_record_is_late_still_gets_its_handshake() -> None:
    identity = HostIdentity.generate()
    with dtp.socket.create_server(("127.0.0.1", 0), identity=identity) as server:

        def echo(sock: dtp.socket.DTPSocket) -> None:
            with sock:
                while data := sock.recv(4096):
                    sock.sendall(data)

        threading.Thread(target=server.serve_forever, args=(echo,), daemon=True).start()
        relay, thread = _late_relay(server.address, DEFER_ACCEPT_SECONDS + 0.5)
        try:
            address = relay.getsockname()[:2]
            with dtp.socket.create_connection(
                address, server_key=identity.noise_public, timeout=20.0
            ) as sock:
                sock.sendall(b"late but here")
                got = b""
                while len(got) < 13:
                    chunk = sock.recv(64)
                    assert chunk
                    got += chunk
                assert got == b"late but here"
        finally:
            relay.close()
            thread.join(10.0)
