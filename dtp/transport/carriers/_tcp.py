"""The direct carrier: records over a TCP connection; and :func:`wait_ready`, the wait for
sockets to become readable or writable that every blocking socket of the package makes,
for any descriptor number: ``select.select`` refuses descriptors of 1024 and above
(``FD_SETSIZE``) with a ValueError, so a process holding a thousand sockets (a server with
many clients, a daemon forwarding many tunnels) could open no further DTP connection;
``poll(2)`` has no such limit, and for the one or two descriptors waited on here it is
also cheaper.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, TypeVar

from dtp._extras import require
from dtp.errors import CarrierRefused, ConnectionLost, DTPTimeoutError, InvalidArgument

logger = logging.getLogger(__name__)


_READ = select.POLLIN | select.POLLPRI
_WRITE = select.POLLOUT
# select() reports a descriptor with an error or a hang-up as ready for both: the next
# read or write then tells what happened
_FAILED = select.POLLERR | select.POLLHUP


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


T = TypeVar("T", bound=_HasFileno)


def wait_ready(
    readers: Sequence[T], writers: Sequence[T], timeout: float | None
) -> tuple[list[T], list[T]]:
    """As ``select.select(readers, writers, [], timeout)[:2]``: the objects ready to be
    read and written within ``timeout`` seconds (None: no limit), for any descriptor
    number. A closed object (fileno -1) is a ValueError and a descriptor that is not
    open an OSError (EBADF), as with select."""
    poller = select.poll()
    if not writers and len(readers) == 1:
        # the usual look (one carrier, readable yet?), several times a connect: a
        # third of the general path's CPU
        obj = readers[0]
        fd = obj.fileno()
        if fd < 0:
            raise ValueError("file descriptor cannot be a negative integer")
        poller.register(fd, _READ)
        events = poller.poll(None if timeout is None else max(0.0, timeout * 1000.0))
        if not events:
            return [], []
        fd, mask = events[0]
        if mask & select.POLLNVAL:
            raise OSError(errno.EBADF, f"descriptor {fd} is not open")
        return [obj], []  # (registered for reading only: any event is a reason to read)
    by_fd: dict[int, tuple[T | None, T | None]] = {}
    # (a negative descriptor refused, as select refuses it)
    for obj in readers:
        fd = obj.fileno()
        if fd < 0:
            raise ValueError("file descriptor cannot be a negative integer")
        by_fd[fd] = (obj, by_fd.get(fd, (None, None))[1])
    for obj in writers:
        fd = obj.fileno()
        if fd < 0:
            raise ValueError("file descriptor cannot be a negative integer")
        by_fd[fd] = (by_fd.get(fd, (None, None))[0], obj)
    for fd, (reader, writer) in by_fd.items():
        poller.register(
            fd, (_READ if reader is not None else 0) | (_WRITE if writer is not None else 0)
        )
    events = poller.poll(None if timeout is None else max(0.0, timeout * 1000.0))
    ready_r: list[T] = []
    ready_w: list[T] = []
    for fd, mask in events:
        if mask & select.POLLNVAL:
            raise OSError(errno.EBADF, f"descriptor {fd} is not open")
        reader, writer = by_fd[fd]
        if reader is not None and mask & (_READ | _FAILED):
            ready_r.append(reader)
        if writer is not None and mask & (_WRITE | _FAILED):
            ready_w.append(writer)
    return ready_r, ready_w


def tune(sock: socket.socket) -> None:
    """Settings every DTP TCP socket gets: no Nagle delay, since records are already
    batched per write. Kernel buffer sizes are left to Linux's autotuning."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def connect_tcp(address: tuple[str, int], timeout: float | None) -> socket.socket:
    """Open a tuned TCP connection; errors become DTP errors with the address."""
    try:
        family = _literal_family(address)
        if family:
            return _tuned(_connect_literal(family, address, timeout))
        return _tuned(socket.create_connection(address, timeout=timeout))
    except OSError as exc:
        raise connect_error(address, exc) from exc
    except UnicodeError as exc:
        # a name the IDNA codec refuses (an empty label, one past 63 characters), as a
        # host may publish it: not found, as getaddrinfo says of a name it cannot
        # resolve (a UnicodeError would escape connect_any, and no later endpoint be tried)
        raise connect_error(address, _unresolvable(exc)) from exc


# socket.create_connection's timeout "left out" (the socket keeps the default timeout)
_LEFT_OUT: object = getattr(socket, "_GLOBAL_DEFAULT_TIMEOUT", None)


def _literal_family(address: tuple[str, int]) -> int:
    """AF_INET or AF_INET6 when ``address`` is an address literal and a port number, else
    0. A literal needs no resolving: socket.create_connection's getaddrinfo would give its
    one address back, at the cost of the name's IDNA encoding and the result's enums."""
    if len(address) != 2:
        return 0  # (socket.create_connection says what is wrong with it)
    host, port = address
    if type(host) is not str or type(port) is not int or not 0 <= port <= 0xFFFF:
        return 0
    try:
        socket.inet_pton(socket.AF_INET, host)
        return socket.AF_INET
    except OSError:
        pass
    if ":" in host and "%" not in host:  # (a scope ID is left to getaddrinfo)
        try:
            socket.inet_pton(socket.AF_INET6, host)
            return socket.AF_INET6
        except OSError:
            pass
    return 0


def _connect_literal(family: int, address: tuple[str, int], timeout: float | None) -> socket.socket:
    """socket.create_connection for an address literal: one socket, its error raised."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if timeout is not _LEFT_OUT:
            sock.settimeout(timeout)
        sock.connect(address)
    except BaseException:
        sock.close()
        raise
    return sock


def check_listen_address(address: object, name: str = "address") -> None:
    """A listening (or published) address as ``socket.bind`` takes it: a ``(host, port)``
    tuple (IPv6's flowinfo and scope_id may follow) with a port of 0..65535; TypeError /
    InvalidArgument naming ``name`` and what was given, before anything opens. A
    ``"host:port"`` string otherwise failed inside ``bind`` with the socket's own words,
    leaving the socket made for it behind."""
    if (
        not isinstance(address, tuple)
        or len(address) not in (2, 4)
        or not isinstance(address[0], str)
        or isinstance(address[1], bool)
        or not isinstance(address[1], int)
    ):
        raise TypeError(
            f"{name} must be a (host, port) tuple such as ('127.0.0.1', 7400), got {address!r:.80}"
        )
    if not 0 <= address[1] <= 0xFFFF:
        raise InvalidArgument(f"{name}: port {address[1]} is outside 0..65535")


def checked_websocket_listen(
    websocket: object, origins: Iterable[str] | None
) -> tuple[str, ...] | None:
    """A server's ``websocket=(host, port)`` and ``origins=`` (the servers' one check,
    before anything listens): the address as :func:`check_listen_address`'s, ValueError
    for origins without a WebSocket listener, MissingExtra without the ``ws`` extra, and
    the origins as the listener's :func:`~dtp.transport.carriers._websocket.origin_rule`
    takes them (TypeError for one string); returns them as a tuple (None: none given)."""
    if websocket is not None:
        check_listen_address(websocket, "websocket")
    if origins is not None and websocket is None:
        raise ValueError("origins are for a WebSocket listener (websocket=(host, port))")
    if websocket is None:
        return None
    require("ws", "The WebSocket carrier")
    if origins is None:
        return None
    from dtp.transport.carriers._websocket import origin_rule

    # (a str goes through whole, for origin_rule's TypeError; an iterator is read once)
    allowed = origins if isinstance(origins, str) else tuple(origins)
    origin_rule(allowed)
    return tuple(allowed)


def check_listen_host_port(host: object, port: object) -> None:
    """asyncio's listening ``host`` (a str, a sequence of them, or None for every
    interface) and ``port`` (an int of 0..65535, or None): TypeError / ValueError naming
    them and what was given, before anything listens. A ``"host:port"`` string, or a
    ``(host, port)`` tuple passed as the host, otherwise failed in the name lookup or
    asked for a port."""
    hosts = [] if host is None else [host] if isinstance(host, str) else host
    if not isinstance(hosts, list | tuple) or not all(isinstance(h, str) for h in hosts):
        raise TypeError(
            f"host must be a str such as '127.0.0.1' (or None), not {host!r:.80}"
            " (the host and the port are passed apart)"
        )
    for one in hosts:
        # (an IPv6 address has two colons or more: one alone is a "host:port")
        if isinstance(one, str) and one.count(":") == 1:
            raise ValueError(
                f"host must be a host name or address, not {one!r:.80}: pass the host"
                " and the port apart, as start_server(callback, '127.0.0.1', 7400)"
            )
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
        raise TypeError(f"port must be an int (or None), not {port!r:.80}")
    if port is not None and not 0 <= port <= 65535:
        raise InvalidArgument(f"port {port} is outside 0..65535")


def endpoint_text(host: object, port: object) -> str:
    """``host:port`` as it is published: ``[v6]:port`` for an IPv6 address (else
    ``::1:8080`` reads as another address); one given in brackets already keeps them."""
    text = str(host)
    bare_v6 = ":" in text and not text.startswith("[")
    return f"[{text}]:{port}" if bare_v6 else f"{text}:{port}"


def connect_error(address: tuple[str, int], exc: OSError) -> ConnectionLost | DTPTimeoutError:
    """What a failed connect to ``address`` raises: DTPTimeoutError when it timed out,
    else :func:`carrier_error`'s."""
    if isinstance(exc, TimeoutError):
        return DTPTimeoutError(f"connecting to {endpoint_text(*address)} timed out")
    return carrier_error(address[0], address[1], exc)


def _unresolvable(exc: UnicodeError) -> socket.gaierror:
    return socket.gaierror(socket.EAI_NONAME, f"invalid host name ({exc})")


def _tuned(sock: socket.socket) -> socket.socket:
    """``sock``, tuned; closed if tuning fails (the connect's caller never had it)."""
    try:
        tune(sock)
    except BaseException:
        sock.close()
        raise
    return sock


def carrier_error(host: object, port: object, exc: OSError) -> ConnectionLost:
    """What a failed carrier connect to ``host:port`` raises: CarrierRefused for a
    refusal (a closed port), else ConnectionLost; the OS's reason in the message."""
    return unreachable(endpoint_text(host, port), exc)


def unreachable(target: str, exc: OSError) -> ConnectionLost:
    """:func:`carrier_error` for a ``target`` named otherwise (a WebSocket carrier's URL)."""
    kind = CarrierRefused if isinstance(exc, ConnectionRefusedError) else ConnectionLost
    error = kind(f"cannot reach {target}: {exc.strerror or exc}")
    # (the OS's errno, as a socket's error carries it: retry code compares it)
    error.errno, error.strerror = exc.errno, str(error)
    return error


#: one of getaddrinfo's answers: family, type, protocol, canonical name, address
_AddrInfo = tuple[
    socket.AddressFamily,
    socket.SocketKind,
    int,
    str,
    tuple[str, int] | tuple[str, int, int, int] | tuple[int, bytes],
]


def _connect_others(
    address: tuple[str, int], infos: Sequence[_AddrInfo], timeout: float | None
) -> socket.socket:
    """A tuned connection to the first of ``address``'s other resolved ``infos`` that
    answers, each given ``timeout``, once the first address has timed out. When none
    does, :func:`connect_tcp`'s error for the same failure: socket.create_connection
    raises its last address's error (a refusal there is CarrierRefused, not the first
    one's timeout), so the early connect and a later one fail alike."""
    last: OSError = TimeoutError("timed out")  # (the first address's, as a socket says)
    for family, kind, proto, _, sockaddr in infos:
        sock: socket.socket | None = None
        try:
            sock = socket.socket(family, kind, proto)
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            tune(sock)
        except OSError as exc:
            if sock is not None:
                sock.close()
            last = exc
            continue
        except BaseException:
            if sock is not None:
                sock.close()
            raise
        return sock
    raise connect_error(address, last) from last


class PendingTcp:
    """:func:`connect_tcp` in two halves: the connect starts here without waiting (the
    caller has other work meanwhile, e.g. a ledger transaction) and :meth:`finish` waits
    for it. Whatever goes wrong early is left to :func:`connect_tcp`, called by
    :meth:`finish` instead, which then raises its errors."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        #: the name's other addresses, in getaddrinfo's order (after the one tried here)
        self._others: Sequence[_AddrInfo] = ()
        try:
            family = _literal_family(address)
            if family:
                sockaddr: Any = address
                sock = socket.socket(family, socket.SOCK_STREAM)
            else:
                infos = socket.getaddrinfo(address[0], address[1], type=socket.SOCK_STREAM)
                family, kind, proto, _, sockaddr = infos[0]
                self._others = infos[1:]
                sock = socket.socket(family, kind, proto)
        except (OSError, UnicodeError):  # (UnicodeError: a name IDNA refuses)
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
        errors); waits at most ``timeout`` seconds for the address started on, and a
        name's other addresses then get ``timeout`` each, as with :func:`connect_tcp`."""
        sock, self._sock = self._sock, None
        if sock is not None:
            timed_out = False
            try:
                writable = wait_ready([], [sock], timeout)[1]
                if writable and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    sock.settimeout(timeout)
                    tune(sock)
                    return sock
                timed_out = not writable
            except OSError:
                pass  # failed, not timed out: connect_tcp says how
            except BaseException:
                # (an interrupt in the wait: close() no longer has it to close)
                sock.close()
                raise
            sock.close()
            if timed_out:
                # the whole timeout is spent on this address: connect_tcp would wait on
                # it as long again. The name's other addresses are still tried, as
                # socket.create_connection tries them (its error: the last one's)
                return _connect_others(self.address, self._others, timeout)
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
    (:class:`PendingTcp`). ``timeout`` applies to each attempt, not to them all: ``n``
    endpoints that never answer take ``n`` times it (a budget for them all would leave
    nothing to the others once a blackholed first one had spent it). Returns the tuned socket
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
    if kind is CarrierRefused:
        # (every one refused: the errno one refusal carries, which retry code compares)
        error.errno, error.strerror = last.errno, str(error)
    raise error from last


LISTEN_QUEUE = 1024
"""The shortest accept queue a DTP server's listener asks the kernel for, whatever its
``backlog`` (which bounds what the server itself holds: the connections waiting for
their first record and for a handshake slot). A connection in the kernel's queue costs
no descriptor, but a full queue drops the next SYN, and the client's connect then waits
for its retransmission, a second later: a reconnect flood of a few hundred sockets kept
a queue of 128 full (tests/transport/test_reconnect_flood.py). The kernel caps it at
``net.core.somaxconn`` (4096 on Linux since 5.4)."""


def listen_queue(backlog: int) -> int:
    """The accept queue a server of ``backlog`` listens with: :data:`LISTEN_QUEUE` at
    least."""
    return max(backlog, LISTEN_QUEUE)


def listen_tcp(address: tuple[str, int], backlog: int = 128) -> socket.socket:
    """A listening TCP socket (SO_REUSEADDR, so restarts do not wait for TIME_WAIT),
    its accept queue :func:`listen_queue`'s for ``backlog``, tuned (:func:`tune`): the
    connections it accepts inherit its TCP_NODELAY (Linux copies it to each, as the BSDs
    do), so the blocking server tunes none of them one by one
    (tests/transport/test_tcp_carrier.py)."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    queue = listen_queue(backlog)
    return _tuned(socket.create_server(address, family=family, backlog=queue, reuse_port=False))


def widen_listen_queue(listener: Any, backlog: int) -> None:
    """Have ``listener`` (an asyncio server's listening socket, or anything with a
    ``fileno()`` and ``family``) listen with :func:`listen_queue`'s queue for
    ``backlog``. asyncio listens with ``backlog`` and accepts up to as many a loop tick;
    a duplicate of the descriptor, listened on again, makes the kernel's queue longer
    while the tick's batch stays ``backlog``."""
    fd = listener.fileno()
    if backlog >= LISTEN_QUEUE or fd < 0:
        return  # (long enough; or no descriptor: a simulated network's listener)
    with socket.socket(listener.family, socket.SOCK_STREAM, fileno=os.dup(fd)) as dup:
        dup.listen(listen_queue(backlog))
