"""TCP relays in front of a Sui node: a plain relay that can play the node's outage
(:class:`Relay`), and proxies whose first connections are reset or left silent before
they forward (in front of tests.support.grpc_nodes.GrpcNode)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable

from tests.support.grpc_nodes import JOIN


class Relay:
    """TCP on ``host`` (any free port, kept across :meth:`away` and :meth:`back`)
    forwarding every connection to ``upstream`` (host, port): how processes in network
    namespaces reach a node that serves on the root namespace's loopback.

    :meth:`away` plays the node's outage as the node itself would (the stand-in's
    SIGUSR1): the port refuses connections and the open ones are cut; :meth:`back`
    serves again on the same port."""

    def __init__(self, upstream: tuple[str, int], host: str = "127.0.0.1") -> None:
        self.upstream, self.host = upstream, host
        self.port = 0
        self.connections = 0
        self.sockets: list[socket.socket] = []
        self.pumps: list[threading.Thread] = []
        self._listen()

    def _listen(self) -> None:
        self.stopping = threading.Event()
        # (create_server sets SO_REUSEADDR: the port is bound again by back() while the
        # connections cut by away() linger in TIME_WAIT)
        self.listener = socket.create_server((self.host, self.port))
        self.port = self.listener.getsockname()[1]
        self.listener.settimeout(0.2)  # so the accept loop sees the stop
        self.thread = threading.Thread(
            target=self._accept, args=(self.listener, self.stopping), daemon=True
        )
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _accept(self, listener: socket.socket, stopping: threading.Event) -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            self.connections += 1
            self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        """Forward ``conn`` to the upstream (subclasses give some connections another fate)."""
        try:
            upstream = socket.create_connection(self.upstream, timeout=JOIN)
        except OSError:
            conn.close()  # the upstream refuses: so does the relay, closing at once
            return
        upstream.settimeout(None)
        self.sockets += [conn, upstream]
        for src, dst in ((conn, upstream), (upstream, conn)):
            self._start(self._pump, src, dst)

    def _start(self, target: Callable[..., None], *args: socket.socket) -> None:
        self.pumps.append(threading.Thread(target=target, args=args, daemon=True))
        self.pumps[-1].start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _stop_accepting(self) -> None:
        self.stopping.set()
        self.thread.join(JOIN)
        self.listener.close()

    def _cut(self) -> None:
        for sock in list(self.sockets):
            # shutdown first: a bare close() neither wakes a pump blocked in recv() on it
            # nor sends the FIN that tells either end the connection is over
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for pump in list(self.pumps):
            pump.join(JOIN)

    def away(self) -> None:
        """Go away: the port refuses connections and the open ones are cut, until
        :meth:`back`. Returns once both are done."""
        self._stop_accepting()
        self._cut()

    def back(self) -> None:
        """Serve again, on the same port (nothing to do if serving)."""
        if self.stopping.is_set():
            self._listen()

    def close(self) -> None:
        self._stop_accepting()
        self._cut()


class ResettingProxy(Relay):
    """TCP on 127.0.0.1 in front of ``port``: the first ``resets`` connections are reset
    (RST) once the client has sent something, the later ones are forwarded."""

    def __init__(self, port: int, resets: int) -> None:
        self.resets = resets  # before the accept thread starts
        super().__init__(("127.0.0.1", port))

    def _serve(self, conn: socket.socket) -> None:
        if self.connections <= self.resets:
            self._early(conn)
        else:
            super()._serve(conn)

    def _early(self, conn: socket.socket) -> None:
        """One of the first ``resets`` connections: reset it."""
        conn.recv(65536)  # the client's preface (and request): the call is under way
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()


class SilentFirstProxy(ResettingProxy):
    """TCP on 127.0.0.1 in front of ``port``: the first ``silent`` connections are
    accepted and never answered (what the client sends is read and dropped), the later
    ones are forwarded. ``ended`` is set once the client closed a silent one."""

    def __init__(self, port: int, silent: int) -> None:
        self.ended = threading.Event()  # before the accept thread starts
        super().__init__(port, silent)

    def _early(self, conn: socket.socket) -> None:
        self.sockets.append(conn)
        self._start(self._drain, conn)

    def _drain(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass
        self.ended.set()
