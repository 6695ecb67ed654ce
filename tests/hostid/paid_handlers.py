"""Handlers for the paid servers of the metering tests."""

from __future__ import annotations

from dtp.hostid.paid import PaidSocket


def echo_streams(sock: PaidSocket) -> None:
    """A paid handler echoing each stream's first 100 bytes, until the connection ends."""
    try:
        while True:
            stream = sock.accept_stream()
            stream.sendall(stream.recv(100))
            stream.close()
    except Exception:  # the connection ended
        return
