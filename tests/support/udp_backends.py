"""UDP backends in the test's own process: a socket on 127.0.0.1 whose thread answers
each datagram as the subclass says (:meth:`UdpBackend.replies`) and counts what came."""

from __future__ import annotations

import contextlib
import socket
import threading


class UdpBackend:
    """A UDP server on 127.0.0.1 (an ephemeral port) answering each datagram with
    :meth:`replies`; counts the datagrams (``received``) and bytes (``bytes``) it saw.
    :meth:`close` stops its thread and closes the socket."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        # (a read in another thread is not woken by close(): it looks at _stop between)
        self.sock.settimeout(0.2)
        self.address: tuple[str, int] = self.sock.getsockname()
        self.received = 0
        self.bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.address[1]

    def replies(self, data: bytes) -> list[bytes]:
        """What answers ``data`` (nothing, here)."""
        return []

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.received += 1
            self.bytes += len(data)
            for reply in self.replies(data):
                with contextlib.suppress(OSError):  # (the client's socket closed)
                    self.sock.sendto(reply, peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


class EchoBackend(UdpBackend):
    """Answers each datagram with itself."""

    def replies(self, data: bytes) -> list[bytes]:
        return [data]
