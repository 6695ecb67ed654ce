"""The direct carrier: records over a TCP connection."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Sequence

from dtp._poll import wait_ready
from dtp.errors import CarrierRefused, ConnectionLost, DTPTimeoutError

logger = logging.getLogger(__name__)


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
        raise carrier_error(address[0], address[1], exc) from exc
    tune(sock)
    return sock


def carrier_error(host: object, port: object, exc: OSError) -> ConnectionLost:
    """What a failed carrier connect to ``host:port`` raises: CarrierRefused for a
    refusal (a closed port), else ConnectionLost; the OS's reason in the message."""
    kind = CarrierRefused if isinstance(exc, ConnectionRefusedError) else ConnectionLost
    error = kind(f"cannot reach {host}:{port}: {exc.strerror or exc}")
    # (the OS's errno, as a socket's error carries it: retry code compares it)
    error.errno, error.strerror = exc.errno, str(error)
    return error


class PendingTcp:
    """:func:`connect_tcp` in two halves: the connect starts here without waiting (the
    caller has other work meanwhile, e.g. a ledger transaction) and :meth:`finish` waits
    for it. Whatever goes wrong early is left to :func:`connect_tcp`, called by
    :meth:`finish` instead, which then raises its errors."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        #: whether the name resolved to more than the address tried here
        self._others = False
        try:
            infos = socket.getaddrinfo(address[0], address[1], type=socket.SOCK_STREAM)
            family, kind, proto, _, sockaddr = infos[0]
            self._others = len(infos) > 1
            sock = socket.socket(family, kind, proto)
        except OSError:
            return
        sock.setblocking(False)
        try:
            err = sock.connect_ex(sockaddr)
        except OSError:
            err = -1
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            return
        self._sock = sock

    def finish(self, timeout: float | None) -> socket.socket:
        """The connected, tuned socket (as :func:`connect_tcp` returns it, with its
        errors); waits at most ``timeout`` seconds in all."""
        sock, self._sock = self._sock, None
        if sock is not None:
            writable: list[socket.socket] = []
            try:
                writable = wait_ready([], [sock], timeout)[1]
                if writable and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    sock.settimeout(timeout)
                    tune(sock)
                    return sock
            except OSError:
                writable = [sock]  # failed, not timed out: connect_tcp says how
            sock.close()
            if not writable and not self._others:
                # the whole timeout is spent: another connect_tcp would wait as long again
                # (a name with other addresses still gets them tried, by connect_tcp)
                host, port = self.address
                raise DTPTimeoutError(f"connecting to {host}:{port} timed out")
        return connect_tcp(self.address, timeout)

    def close(self) -> None:
        """Give up the connect (when it is not needed after all)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def connect_any(
    first: PendingTcp | None,
    addresses: Sequence[tuple[str, int]],
    timeout: float | None,
) -> tuple[socket.socket, tuple[str, int]]:
    """Connect to the first of ``addresses`` that answers, in order, as
    :func:`socket.create_connection` tries a name's addresses: a host may publish
    several endpoints (IPv4 and IPv6, a LAN and a public address), not all reachable
    from every client. ``first``: a connect to ``addresses[0]`` already started
    (:class:`PendingTcp`). ``timeout`` applies to each attempt. Returns the tuned socket
    and the address it reached; when none answers, raises the last attempt's error
    (:class:`ConnectionLost` or :class:`DTPTimeoutError`) naming them all."""
    if not addresses:
        raise ValueError("no address to connect to")
    failures: list[str] = []
    refused: list[bool] = []
    last: ConnectionLost | DTPTimeoutError | None = None
    for i, address in enumerate(addresses):
        try:
            if i == 0 and first is not None:
                return first.finish(timeout), address
            return connect_tcp(address, timeout), address
        except (ConnectionLost, DTPTimeoutError) as exc:
            last = exc
            failures.append(str(exc))
            refused.append(isinstance(exc, CarrierRefused))
            if i + 1 < len(addresses):
                logger.info("%s; trying the next endpoint", exc)
    assert last is not None
    if len(addresses) == 1:
        raise last
    # (refused only when every one refused: else a timeout or reset among them would be
    # reported as a closed port)
    kind = type(last)
    if kind is CarrierRefused and not all(r for r in refused):
        kind = ConnectionLost
    error = kind(f"no endpoint answered: {'; '.join(failures)}")
    raise error from last


def listen_tcp(address: tuple[str, int], backlog: int = 128) -> socket.socket:
    """A listening TCP socket (SO_REUSEADDR, so restarts do not wait for TIME_WAIT)."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    return socket.create_server(address, family=family, backlog=backlog, reuse_port=False)
