"""HTTP backends of the JSON-RPC proxy tests: a ThreadingHTTPServer on 127.0.0.1 in a
thread of its own."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HttpBackend:
    """Serves a handler class given to :meth:`_serve`; ``url`` is where (at ``path``)."""

    def _serve(self, handler: type[BaseHTTPRequestHandler], path: str = "/rpc") -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
