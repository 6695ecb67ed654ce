"""Datagrams on a blocking connection: unreliable, unordered, whole or not at all, sent
and received beside the streams (``ConnectionConfig.max_datagram_size``)."""

from __future__ import annotations

import operator
from collections.abc import Iterable
from typing import Literal

from dtp.errors import ConnectionClosed, DTPTimeoutError
from dtp.transport.blocking.checks import checked_timeout
from dtp.transport.blocking.socket_state import StreamState


class Datagrams(StreamState):
    """The datagram calls of :class:`~dtp.transport.blocking.socket.DTPSocket`."""

    def send_datagram(self, data: bytes | bytearray | memoryview) -> None:
        """Send one unreliable datagram on this connection (not on a stream): it arrives
        whole or not at all, unordered, never retransmitted. At most
        ``ConnectionConfig.max_datagram_size`` bytes (else LocalProtocolError). Never
        blocks: while more than ``dtp.protocol.connection.DATAGRAM_SEND_BACKLOG`` bytes (1 MiB),
        or 256 writes, wait for the carrier (the peer is stalled or slow), the datagram
        is dropped and counted in :attr:`datagrams_send_dropped`, as UDP drops what
        does not fit its socket buffer."""
        self._check_open()
        engine = self._engine
        with engine.lock:
            if engine.session.terminated is not None:
                raise engine.session.error or ConnectionClosed("the connection is closed")
            if engine.hook is not None:
                self._check_payable(memoryview(data).nbytes)  # (a paid client's deposit)
            if engine.conn.send_datagram(data, engine.backlog() if engine.out else 0):
                engine.flush()

    def send_datagrams(self, datagrams: Iterable[bytes | bytearray | memoryview]) -> int:
        """:meth:`send_datagram` for many at once (sealed and written together). When
        one of them is not bytes-like (TypeError) or too large (LocalProtocolError),
        none is sent; those that do not fit the backlog are dropped and counted.
        Returns how many went out: the first ones."""
        self._check_open()
        engine = self._engine
        with engine.lock:
            if engine.session.terminated is not None:
                raise engine.session.error or ConnectionClosed("the connection is closed")
            if engine.hook is not None:
                # (a paid client's deposit: all of them, as they go out together)
                datagrams = list(datagrams)
                self._check_payable(sum(memoryview(d).nbytes for d in datagrams))
            sent = engine.conn.send_datagrams(datagrams, engine.backlog() if engine.out else 0)
            if sent:
                engine.flush()
            return sent

    def recv_datagrams(
        self, max_count: int = 1024, timeout: float | Literal["socket"] | None = "socket"
    ) -> list[bytes]:
        """Wait as :meth:`recv_datagram` does, then return every queued datagram (at
        most ``max_count``, which is at least 1)."""
        max_count = operator.index(max_count)
        if max_count < 1:
            raise ValueError(f"max_count must be at least 1, not {max_count}")
        first = self.recv_datagram(timeout)
        out = [first]
        queue = self._engine.session.datagrams
        with self._engine.lock:
            while queue and len(out) < max_count:
                out.append(queue.popleft())
        return out

    def recv_datagram(self, timeout: float | Literal["socket"] | None = "socket") -> bytes:
        """Wait for the connection's next datagram: up to ``timeout`` seconds (None:
        forever; 0: one look), then DTPTimeoutError. By default the socket's timeout
        applies, as for :meth:`recv`: a non-blocking socket (timeout 0) raises
        BlockingIOError at once when none is queued, as the socket module's do.
        Datagrams not read in time are dropped oldest first (``datagrams_dropped``).
        A ``timeout`` :meth:`settimeout` refuses raises as there (TypeError when not a
        number, ValueError when negative or NaN, OverflowError when too long), before
        any wait."""
        if timeout != "socket":
            # (a negative one was taken for "one look": a typo such as -1 for None then
            # looked like a quiet peer)
            timeout = checked_timeout(timeout)
        self._check_open()
        engine = self._engine
        session = engine.session
        with engine.lock:
            if not session.datagrams:

                def ready() -> bool:
                    return bool(session.datagrams) or session.terminated is not None

                if timeout == "socket":
                    self._wait(ready)
                elif timeout == 0:
                    engine.poll()
                    if not ready():
                        raise DTPTimeoutError("no datagram")
                else:
                    engine.pump(ready, timeout)
            if not session.datagrams:
                raise session.error or ConnectionClosed("the connection is closed")
            return session.datagrams.popleft()

    @property
    def max_datagram_size(self) -> int:
        """The largest datagram :meth:`send_datagram` takes (over the ledger carrier,
        less than the config's ``max_datagram_size``: a datagram fits one record)."""
        return self._engine.conn.max_datagram_size

    @property
    def datagrams_dropped(self) -> int:
        """Datagrams that arrived but were dropped because they were not read in time."""
        return self._engine.session.datagrams_dropped

    @property
    def datagrams_send_dropped(self) -> int:
        """Datagrams :meth:`send_datagram` / :meth:`send_datagrams` dropped because the
        carrier was backed up (for the whole connection)."""
        return self._engine.conn.datagrams_send_dropped
