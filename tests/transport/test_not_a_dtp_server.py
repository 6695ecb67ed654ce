"""A client pointed at a port where no DTP server listens -- an HTTP or TLS server, one
that says nothing -- gets a HandshakeError that says what went wrong, from both APIs,
promptly and without leaking the carrier."""

from __future__ import annotations

import asyncio
import os
import random
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import DTPTimeoutError, HandshakeError, RemoteProtocolError

HTTP_400 = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
# a TLS 1.2 fatal alert (protocol_version) after a ServerHello-sized record start: what
# a TLS server may answer a client that is not TLS
TLS_ALERT = bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46]) * 3
SSH_BANNER = b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"
NOISE = random.Random(7).randbytes(64)  # fixed: random bytes may start a valid header


@contextmanager
def plain_server(reply: bytes | None, *, close: bool = True) -> Iterator[int]:
    """A TCP server on 127.0.0.1 that reads what the client sends first, then writes
    ``reply`` (nothing when None) and closes (or, ``close=False``, holds the connection
    until the test ends). Yields its port."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    done = threading.Event()

    listener.settimeout(0.05)  # (a close from another thread does not end accept())

    def serve() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(5)  # (accepted sockets inherit no timeout: set one)
            try:
                conn.recv(4096)
                if reply is not None:
                    conn.sendall(reply)
            except OSError:
                pass
            if close:
                conn.close()
            else:
                held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        done.set()
        listener.close()
        thread.join(5)
        for conn in held:
            conn.close()


def _check_not_dtp(error: HandshakeError) -> None:
    assert "not DTP" in str(error) and "wrong port" in str(error)
    # the protocol error found in the reply is kept as the cause
    assert isinstance(error.__cause__, RemoteProtocolError)


def _connect(api: str, port: int, **kw: object) -> None:
    """A client of ``api`` (blocking or asyncio) connecting to 127.0.0.1:``port``, closed
    if it gets in; what the connect raises is raised."""
    if api == "blocking":
        dtp.socket.create_connection(("127.0.0.1", port), **kw).close()  # type: ignore[arg-type]
        return

    async def main() -> None:
        _, writer = await dtp.aio.open_connection("127.0.0.1", port, **kw)  # type: ignore[arg-type]
        writer.close()

    asyncio.run(main())


@pytest.mark.parametrize("reply", [HTTP_400, TLS_ALERT, SSH_BANNER, NOISE])
def test_client_names_a_server_that_is_not_dtp(api: str, reply: bytes) -> None:
    with plain_server(reply) as port, pytest.raises(HandshakeError) as info:
        _connect(api, port, server_key=os.urandom(32), timeout=5)
    _check_not_dtp(info.value)


def test_blocking_client_without_server_key_too() -> None:
    # XX: the client's first message differs, the verdict does not
    with plain_server(HTTP_400) as port, pytest.raises(HandshakeError) as info:
        dtp.socket.create_connection(("127.0.0.1", port), timeout=5)
    _check_not_dtp(info.value)


@pytest.mark.parametrize("reply", [None, b"\x15\x03\x03"])
def test_client_told_when_the_server_only_hangs_up(api: str, reply: bytes | None) -> None:
    # (a reply shorter than a record header cannot be told from a record's start)
    with plain_server(reply) as port, pytest.raises(HandshakeError) as info:
        _connect(api, port, server_key=os.urandom(32), timeout=5)
    assert "closed the connection during the handshake" in str(info.value)


def test_blocking_client_times_out_on_a_silent_server() -> None:
    with plain_server(None, close=False) as port, pytest.raises(DTPTimeoutError):
        dtp.socket.create_connection(("127.0.0.1", port), server_key=os.urandom(32), timeout=0.3)
