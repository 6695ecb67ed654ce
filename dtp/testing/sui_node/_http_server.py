"""The HTTP servers of the stand-in's fronts (:mod:`.faucet`, :mod:`.grpc_web`): a
:class:`~http.server.ThreadingHTTPServer` served in a daemon thread, from
:meth:`ThreadedHttpServer.start` until :meth:`ThreadedHttpServer.close`."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

__all__ = ["QuietHandler", "ThreadedHttpServer"]


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing (a test's output stays its own)."""

    def log_message(self, format: str, *args: Any) -> None:
        return


class ThreadedHttpServer:
    """Serves ``handler`` on ``host:port`` (port 0: any free one) in a daemon thread
    named ``name``; each request in a daemon thread of its own."""

    def __init__(
        self, handler: type[BaseHTTPRequestHandler], host: str, port: int, name: str
    ) -> None:
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._name = name
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self._server.server_address[1])

    def start(self) -> Self:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=self._name, daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        """Stops serving (waiting up to 10 s for the thread) and closes the socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(10)
            self._thread = None
        self._server.server_close()
