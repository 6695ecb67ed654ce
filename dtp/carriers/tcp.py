"""The direct carrier: records over a TCP connection."""

from __future__ import annotations

import socket

from dtp.errors import ConnectionLost, DTPTimeoutError


def tune(sock: socket.socket) -> None:
    """Settings every DTP TCP socket gets: no Nagle delay, since records are already
    batched per write. Kernel buffer sizes are left to Linux's autotuning."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def connect_tcp(address: tuple[str, int], timeout: float | None) -> socket.socket:
    """Open a tuned TCP connection; errors become DTP errors with the address."""
    try:
        sock = socket.create_connection(address, timeout=timeout)
    except TimeoutError as exc:
        raise DTPTimeoutError(f"connecting to {address[0]}:{address[1]} timed out") from exc
    except OSError as exc:
        raise ConnectionLost(
            f"cannot reach {address[0]}:{address[1]}: {exc.strerror or exc}"
        ) from exc
    tune(sock)
    return sock


def listen_tcp(address: tuple[str, int], backlog: int = 128) -> socket.socket:
    """A listening TCP socket (SO_REUSEADDR, so restarts do not wait for TIME_WAIT)."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    return socket.create_server(address, family=family, backlog=backlog, reuse_port=False)
