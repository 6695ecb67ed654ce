"""The TCP carrier's connect in two halves (PendingTcp): started while the caller does
other work, it gives what connect_tcp gives, and connect_tcp's errors when it fails."""

from __future__ import annotations

import socket

import pytest

from dtp.carriers.tcp import PendingTcp, listen_tcp
from dtp.errors import ConnectionLost


def test_a_started_connect_finishes_connected_and_tuned() -> None:
    listener = listen_tcp(("127.0.0.1", 0))
    try:
        pending = PendingTcp(listener.getsockname()[:2])
        accepted, _ = listener.accept()
        sock = pending.finish(5.0)
        try:
            assert sock.getpeername() == listener.getsockname()
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            sock.sendall(b"hello")
            assert accepted.recv(5) == b"hello"
        finally:
            sock.close()
            accepted.close()
    finally:
        listener.close()


def test_a_failed_connect_raises_what_connect_tcp_raises() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    with pytest.raises(ConnectionLost, match=f"127.0.0.1:{port}"):
        PendingTcp(("127.0.0.1", port)).finish(5.0)


def test_a_connect_given_up_is_closed() -> None:
    listener = listen_tcp(("127.0.0.1", 0))
    try:
        pending = PendingTcp(listener.getsockname()[:2])
        pending.close()
        accepted, _ = listener.accept()
        accepted.settimeout(5)
        assert accepted.recv(1) == b""  # the peer closed
        accepted.close()
    finally:
        listener.close()
