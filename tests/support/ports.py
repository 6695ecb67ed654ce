"""Ports on 127.0.0.1 for tests that need one nothing listens on."""

from __future__ import annotations

import socket


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A TCP (or, with ``kind=SOCK_DGRAM``, UDP) port on 127.0.0.1 that was free a moment
    ago: bound, then let go, so a connection to it is refused until someone binds it."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
