"""JsonRpcHttpProxy.close() closes every kept-alive backend connection of the proxy,
whichever thread used it (a pool's workers, stream threads), not only the closing
thread's: the others stayed open until their threads ended, then were dropped unclosed
(ResourceWarning)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from typing import Any

from dtp.messaging.jsonrpc import JsonRpcHttpProxy
from tests.http_backends import HttpBackend
from tests.polling import wait_for

DOC = b'{"jsonrpc":"2.0","method":"m","id":1}'


class _Backend(HttpBackend):
    """A keep-alive HTTP backend that counts its open connections, answering none of
    the first ``together`` POSTs until all of them have arrived: calls in progress at
    once, each on a connection of its own (the proxy pools its connections, and a call
    that ended first gave its connection to the next one)."""

    def __init__(self, together: int = 1) -> None:
        self.open = 0
        self.posts = 0
        arrived = threading.Barrier(together)
        lock = threading.Lock()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with lock:
                    backend.open += 1

            def finish(self) -> None:
                with lock:
                    backend.open -= 1
                super().finish()

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    backend.posts += 1
                    first = backend.posts <= together
                if first:
                    arrived.wait(10)
                answer = b'{"jsonrpc":"2.0","result":1,"id":1}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self._serve(Handler, "/")


def test_close_closes_every_threads_connection() -> None:
    backend = _Backend(together=3)
    proxy = JsonRpcHttpProxy(backend.url, timeout=5)
    barrier = threading.Barrier(3)

    def use() -> bytes | None:
        barrier.wait(5)  # three calls at once (the backend holds them: three connections)
        return proxy(DOC)

    try:
        with ThreadPoolExecutor(3) as pool:
            answers = [f.result() for f in [pool.submit(use) for _ in range(3)]]
            assert all(a is not None and b'"result"' in a for a in answers)
            assert wait_for(lambda: backend.open == 3)
            proxy.close()  # (the pool's threads still alive)
            assert wait_for(lambda: backend.open == 0, timeout=3)
            # the proxy still works: a call opens a new connection
            assert pool.submit(proxy, DOC).result() is not None
            proxy.close()
            assert wait_for(lambda: backend.open == 0, timeout=3)
    finally:
        proxy.close()
        backend.close()
