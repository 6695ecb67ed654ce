"""A JSON answer from a :mod:`http.server` request handler: the small HTTP fronts the
package serves (the LocalLedger bridge, the Sui node stand-in's faucet) answer so."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler

__all__ = ["answer_json"]


def answer_json(handler: BaseHTTPRequestHandler, status: int, body: object) -> None:
    """Send ``body`` as ``application/json`` with ``status`` (and its length)."""
    data = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
