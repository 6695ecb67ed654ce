"""Sockets whose descriptors are 1024 or above (beyond select()'s FD_SETSIZE) work like
any other: a process holding a thousand sockets can still open and use connections."""

from __future__ import annotations

import os
import resource
import socket
import threading
from collections.abc import Iterator

import pytest

import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.transport.carriers.tcp import PendingTcp
from dtp.transport.poll import wait_ready

IDENTITY = HostIdentity.generate()


@pytest.fixture
def high_descriptors() -> Iterator[None]:
    """Fill the descriptor table up to 1100, so new sockets get numbers above 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(2048, hard), hard))
    fillers: list[int] = []
    try:
        while True:
            fd = os.open(os.devnull, os.O_RDONLY)
            fillers.append(fd)
            if fd >= 1100:
                break
        yield
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_connection_on_high_descriptors_carries_data(high_descriptors: None) -> None:
    # select() raised ValueError for these: the carrier was declared failed at the first
    # wait, and a host-ID connect's early TCP connect failed outright
    with dtp.socket.create_server(("127.0.0.1", 0), identity=IDENTITY) as server:

        def serve() -> None:
            sock, _ = server.accept(timeout=10)
            with sock:
                while data := sock.recv(65536):
                    sock.sendall(data)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        pending = PendingTcp(server.address)
        carrier = pending.finish(10)
        assert carrier.fileno() > 1024
        carrier.close()
        with dtp.socket.create_connection(
            server.address, server_key=IDENTITY.noise_public, timeout=10
        ) as client:
            payload = os.urandom(3 << 20)  # more than fits the kernel buffers at once
            done = threading.Thread(target=client.sendall, args=(payload,), daemon=True)
            done.start()
            got = bytearray()
            while len(got) < len(payload):
                chunk = client.recv(1 << 20)
                assert chunk
                got += chunk
            done.join(10)
            assert bytes(got) == payload
        thread.join(10)
        assert not thread.is_alive()


def test_wait_ready_reports_as_select_does() -> None:
    a, b = socket.socketpair()
    try:
        assert wait_ready([a], [], 0) == ([], [])
        assert wait_ready([a], [a], 0) == ([], [a])  # writable at once, nothing to read
        b.send(b"x")
        assert wait_ready([a, b], [], 0.5) == ([a], [])
        b.close()  # a hang-up is readable: the read then says what happened
        ready, _ = wait_ready([a], [], 0.5)
        assert ready == [a] and a.recv(10) == b"x" and a.recv(10) == b""
    finally:
        a.close()
        b.close()
    with pytest.raises(ValueError):
        wait_ready([a], [], 0)  # closed: fileno() is -1, as select refuses it
