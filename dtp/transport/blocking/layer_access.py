"""What a layer above the transport (a connection by host ID's payment, a paid server, UDP,
RPC) reaches of a blocking connection through its socket: the hook that rides on it
(:mod:`dtp.transport.hooks`), its timer, its lock and its waits."""

from __future__ import annotations

from collections.abc import Callable

from dtp.errors import ConnectionClosed
from dtp.transport.blocking.engine import Engine
from dtp.transport.blocking.socket_state import StreamState
from dtp.transport.hooks import ConnectionHook


class LayerAccess(StreamState):
    """The members of :class:`~dtp.transport.blocking.socket.DTPSocket` for the layers
    above (``dtp.hostid``, ``dtp.hostid.paid``, ``dtp.hostid.udp``, ``dtp.messaging``)."""

    @property
    def connection_hook(self) -> ConnectionHook | None:
        """What a layer above has riding on this connection (a connection by host ID's
        metered payment: :class:`~dtp.transport.hooks.ConnectionHook`), or None."""
        return self._engine.hook

    def _set_connection_hook(
        self, hook: ConnectionHook | None, on_receipt: Callable[[bytes], None] | None = None
    ) -> None:
        """Have ``hook`` ride on this connection (the driver calls it as
        :class:`~dtp.transport.hooks.ConnectionHook` says), and ``on_receipt`` take each
        RECEIPT frame's payload as it arrives (without one they queue, bounded)."""
        engine = self._engine
        with engine.lock:
            engine.hook = hook
            engine.session.on_receipt = on_receipt

    def _start_timer(self) -> None:
        """Start the connection's timer, on a socket connected with ``timer=False``
        (:func:`dtp.transport.blocking.connect.connect`) once its hook is set."""
        self._engine.start_timer()

    def check_live(self) -> None:
        """Raise SocketClosed when this socket is closed, and the connection's error
        (ConnectionClosed, ...) once the connection has ended."""
        self._check_open()
        engine = self._engine
        with engine.lock:
            if engine.session.terminated is not None:
                raise engine.session.error or ConnectionClosed("the connection is closed")

    def run_and_flush(self, action: Callable[[], None]) -> None:
        """Run ``action`` with the connection's lock held (it may queue frames: a
        hook's), then send what it queued, unless the connection is closed."""
        engine = self._engine
        with engine.lock:
            action()
            if not engine.closed:
                engine.flush()

    @property
    def connection_ended(self) -> bool:
        """Whether the connection has ended (closed, aborted or timed out): a loop
        reading this socket stops on it, where a read that timed out may only be a
        pause (after an idle timeout every read raises DTPTimeoutError at once)."""
        return self._engine.session.terminated is not None

    @property
    def reliable_carrier(self) -> bool:
        """Whether the connection's carrier is reliable and ordered (TCP), so that the
        connection itself does not acknowledge or retransmit
        (``ConnectionConfig.reliable_carrier``)."""
        return self._engine.conn.config.reliable_carrier

    @property
    def connection_driver(self) -> Engine:
        """The connection's I/O driver, for a layer above that runs its own rules on the
        connection under the driver's lock (a paid server's receipt gate:
        :class:`dtp.hostid.paid.blocking.PaidConnection`)."""
        return self._engine

    def wake(self) -> None:
        """Wake the thread waiting on the connection's carrier, so that it looks at its
        conditions again (from any thread, without the connection's lock)."""
        self._engine._wake()

    def interrupt_recv(self) -> None:
        """End a blocking read of this stream that another thread is waiting in -- or,
        when none is, the next one -- at once with :class:`~dtp.errors.DTPTimeoutError`,
        as if its timeout had passed (nothing is lost: what arrives stays for the next
        read). For a reader that must look at something another thread changed, such
        as an RPC client whose call was cancelled or which was closed: without it, a
        read ends only with data, its timeout or the connection."""
        engine = self._engine
        with engine.lock:
            engine.interrupted.add(self._stream_id)
            engine.wake_waiters()
