"""A blocking server's new connection until its handshake starts: :class:`_Arrival` (its
socket, its first record as it comes, its deadline, its engine once it has one), and the
two looks at its socket the admission makes without waiting (:func:`_read_first`,
:func:`_waiting_gone`)."""

from __future__ import annotations

import socket as _socket
from typing import Any

from dtp.protocol.connection import ConnectionConfig
from dtp.transport.blocking.engine import Engine
from dtp.transport.handshake_gate import FirstMessage, Progress
from dtp.transport.poll import wait_ready


class _Arrival:
    """A blocking server's new connection until its handshake starts (dtp.transport.handshake_gate):
    its first record is read (by the accepting thread, or the server's reader thread),
    then it waits for its handshake slots unread, holding its socket and what the
    client sent -- no thread, engine or Noise state. It stays the connection's entry in
    the server's :class:`~dtp.transport.handshake_gate.Admission` (its handshake's end releases
    its slots by it)."""

    __slots__ = ("config", "deadline", "engine", "gave_way", "key", "peer", "reader", "tcp")

    def __init__(
        self, tcp: _socket.socket, peer: Any, config: ConnectionConfig, key: str | None
    ) -> None:
        self.tcp = tcp
        self.peer = peer
        self.config = config
        self.key = key  # its address's (None: a ledger bridge, not capped)
        self.deadline = 0.0  # its accept plus its handshake timeout (monotonic)
        self.reader = FirstMessage()
        self.engine: Engine | None = None  # made as its handshake starts
        self.gave_way = False


def _read_first(arrival: _Arrival) -> Progress | None:
    """Read what has come of ``arrival``'s first record, without waiting: its progress,
    or None when the client closed (or reset) its end first."""
    tcp = arrival.tcp
    try:
        while arrival.reader.state is Progress.NEED_MORE:
            data = tcp.recv(max(arrival.reader.wanted, 1))
            if not data:
                return None
            arrival.reader.feed(data)
    except (BlockingIOError, InterruptedError):
        pass
    except OSError:
        return None
    return arrival.reader.state


def _waiting_gone(arrival: _Arrival) -> bool:
    """Whether the client of a connection waiting, unread, in a line for a handshake
    slot has left already: it closed its end (a peek reads end of file) or reset it.
    Nothing is consumed (its handshake reads what came, in its turn), and nothing waits
    -- it runs under the line's lock: a look with no timeout first, as a peek on a
    socket with a timeout would wait for data up to that timeout. The peek itself runs
    with the socket's timeout at 0: with one, a peek that finds no data (poll woke for
    a TCP urgent byte alone, which a peek skips) waits for some up to that timeout,
    MSG_DONTWAIT or not, and then counted the live client as gone."""
    tcp = arrival.tcp
    try:
        if not wait_ready([tcp], [], 0)[0]:
            return False  # nothing came yet: still there
        timeout = tcp.gettimeout()
        if timeout:
            tcp.settimeout(0.0)
        try:
            # (more bytes, or the FIN that ends them: one byte tells which)
            return tcp.recv(1, _socket.MSG_PEEK | _socket.MSG_DONTWAIT) == b""
        finally:
            if timeout:
                tcp.settimeout(timeout)
    except BlockingIOError:
        return False
    except (OSError, ValueError):  # reset (ConnectionResetError), or otherwise broken
        return True
