"""TCP proxies in front of a test Sui node (tests.test_s15_sui.grpc_node): connections
reset or left silent, then forwarded."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from tests.test_s15_sui import JOIN


class ResettingProxy:
    """TCP on 127.0.0.1 in front of ``port``: the first ``resets`` connections are reset
    (RST) once the client has sent something, the later ones are forwarded."""

    def __init__(self, port: int, resets: int) -> None:
        self.port, self.resets = port, resets
        self.connections = 0
        self.sockets: list[socket.socket] = []
        self.pumps: list[threading.Thread] = []
        self.stopping = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)  # so the accept loop sees close()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            self.connections += 1
            if self.connections <= self.resets:
                self._early(conn)
                continue
            upstream = socket.create_connection(("127.0.0.1", self.port))
            self.sockets += [conn, upstream]
            for src, dst in ((conn, upstream), (upstream, conn)):
                self.pumps.append(threading.Thread(target=self._pump, args=(src, dst), daemon=True))
                self.pumps[-1].start()

    def _early(self, conn: socket.socket) -> None:
        """One of the first ``resets`` connections: reset it."""
        conn.recv(65536)  # the client's preface (and request): the call is under way
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(JOIN)
        self.listener.close()
        for sock in self.sockets:
            # shutdown first: a bare close() neither wakes a pump blocked in recv() on it
            # nor sends the FIN that tells the node the connection is over
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for pump in self.pumps:
            pump.join(JOIN)


class SilentFirstProxy(ResettingProxy):
    """TCP on 127.0.0.1 in front of ``port``: the first ``silent`` connections are
    accepted and never answered (what the client sends is read and dropped), the later
    ones are forwarded. ``ended`` is set once the client closed a silent one."""

    def __init__(self, port: int, silent: int) -> None:
        self.ended = threading.Event()  # before the accept thread starts
        super().__init__(port, silent)

    def _early(self, conn: socket.socket) -> None:
        self.sockets.append(conn)
        self.pumps.append(threading.Thread(target=self._drain, args=(conn,), daemon=True))
        self.pumps[-1].start()

    def _drain(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(65536):
                pass
        self.ended.set()
