"""TCP backends run in the test's own process for the services daemon tests: an echo server,
and a server running a handler per connection that counts the open ones; health-check
connections told apart."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable


class Backend:
    """A TCP server running ``handler(sock)`` in a thread per connection; counts the
    connections open now."""

    def __init__(self, handler: Callable[[socket.socket], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port: int = self.listener.getsockname()[1]
        self.handler = handler
        self.open = 0
        self.results: list[object] = []
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(sock,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        with self._lock:
            self.open += 1
        try:
            with sock:
                self.handler(sock)
        except OSError as exc:
            self.results.append(exc)
        finally:
            with self._lock:
                self.open -= 1

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._accepting.join(5)
        for thread in self._threads:
            thread.join(5)


def serves_health_checks(sock: socket.socket) -> bool:
    """Whether a backend connection is one of the daemon's health checks (it connects
    and closes at once); the tests' handlers skip those."""
    sock.settimeout(5)
    try:
        first = sock.recv(1, socket.MSG_PEEK)
    except OSError:
        return True
    return not first


class _Listener(socket.socket):
    """A listening socket whose close wakes the thread blocked in its ``accept``: a bare
    close does not (Linux), and a test's ``join`` on that thread would wait out its
    timeout."""

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.shutdown(socket.SHUT_RDWR)
        super().close()


def echo_server() -> tuple[socket.socket, threading.Thread]:
    """A TCP echo server on 127.0.0.1 (a thread per connection): its listener, which
    stops it when closed, and its accepting thread."""
    made = socket.create_server(("127.0.0.1", 0))
    listener = _Listener(made.family, made.type, made.proto, fileno=made.detach())

    def serve() -> None:
        threads = []
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                break

            def echo(sock: socket.socket = sock) -> None:
                with sock:
                    try:
                        while data := sock.recv(65536):
                            sock.sendall(data)
                    except OSError:
                        pass

            thread = threading.Thread(target=echo, daemon=True)
            threads.append(thread)
            thread.start()
        for thread in threads:
            thread.join(5)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread
