"""The stand-in's gRPC-web front: the same ``sui.rpc.v2`` calls over HTTP/1.1, as a Sui
full node serves them to browsers and to Mysten's TypeScript SDK (``SuiGrpcClient``'s
default transport is gRPC-web over fetch, sdk.mystenlabs.com/sui/clients/grpc).

The wire is the gRPC-web protocol (github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md):

    POST /sui.rpc.v2.<Service>/<Method>      Content-Type: application/grpc-web+proto
    body: 0x00, u32 length (big-endian), the request message
    →  200, Content-Type: application/grpc-web+proto
       body: 0x00, length, the answer message; then 0x80, length,
             "grpc-status: 0\\r\\ngrpc-message: \\r\\n" (the trailers)

The text form (``application/grpc-web-text``: the same frames, base64-encoded both ways)
is served too: it is what Mysten's SDK sends unless told ``format: 'binary'``.

A refused call is a "trailers-only" answer: status 200 with ``grpc-status`` and
``grpc-message`` (percent-encoded) as headers and no body. Every answer allows any origin
(CORS), as a public full node's does, so that a page on another origin can call it.
Unary calls only: ``ListEvents`` (a server stream) is UNIMPLEMENTED here, as the SDK's
core API needs no stream. A real node serves gRPC and gRPC-web on one port; this front
listens on a second one, :attr:`SuiNodeStandIn.grpc_web_url`, which answers UNAVAILABLE
while the node is gone away (:meth:`SuiNodeStandIn.go_away`).
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import quote

from grpclib.const import Status

from dtp.testing.sui_node._http_server import QuietHandler, ThreadedHttpServer

__all__ = ["GrpcWebServer", "Refusal", "frame", "unframe"]

#: The largest request body accepted (a transaction with its signatures is far smaller).
MAX_BODY: Final = 4 << 20
_BINARY: Final = ("application/grpc-web", "application/grpc-web+proto")
_TEXT: Final = ("application/grpc-web-text", "application/grpc-web-text+proto")
_CORS: Final = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Expose-Headers", "grpc-status, grpc-message"),
)

#: ``answer(method, request bytes) -> answer bytes``; raises :class:`Refusal`.
Answer = Callable[[str, bytes], bytes]


class Refusal(Exception):
    """The node refuses a request before executing anything: a gRPC status and the
    message a node gives (over gRPC, or gRPC-web's trailers)."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def frame(message: bytes, trailer: bool = False) -> bytes:
    """One gRPC-web frame: flag byte (0x80 for trailers), big-endian u32 length, data."""
    return struct.pack(">BI", 0x80 if trailer else 0, len(message)) + message


def unframe(body: bytes) -> bytes:
    """The one uncompressed message of a unary request body; ValueError otherwise."""
    if len(body) < 5:
        raise ValueError("a gRPC-web body starts with a 5-byte frame header")
    flag, length = struct.unpack(">BI", body[:5])
    if flag != 0:
        raise ValueError(f"frame flag {flag:#x}: only uncompressed data frames are served")
    if len(body) != 5 + length:
        raise ValueError("a unary request carries exactly one frame")
    return body[5:]


class GrpcWebServer(ThreadedHttpServer):
    """Serves ``answer`` for the methods in ``methods`` (``"Service/Method"`` →
    method name) on ``host:port`` (0: any free one) in a daemon thread."""

    def __init__(self, answer: Answer, methods: dict[str, str], host: str, port: int = 0):
        self._answer = answer
        self._methods = methods
        super().__init__(self._handler(), host, port, "sui-node-grpc-web")

    def _handler(self) -> type[QuietHandler]:
        answer = self._answer
        methods = self._methods

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as fetch expects
            text = False  # this request is in the text form (base64)

            def do_OPTIONS(self) -> None:  # the browser's CORS preflight
                self.send_response(204)
                for name, value in _CORS:
                    self.send_header(name, value)
                self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")
                asked = self.headers.get("Access-Control-Request-Headers") or "*"
                self.send_header("Access-Control-Allow-Headers", asked)
                self.send_header("Access-Control-Max-Age", "600")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                kind = (self.headers.get("Content-Type") or "").split(";")[0].strip()
                self.text = kind in _TEXT
                try:
                    length = int(self.headers.get("Content-Length") or -1)
                except ValueError:
                    length = -1
                if not 0 <= length <= MAX_BODY:
                    # (without a length the body cannot be skipped: close the connection)
                    self.close_connection = True
                    self._trailers_only(Status.INVALID_ARGUMENT, "a body with a Content-Length")
                    return
                body = self.rfile.read(length)
                name = methods.get(self.path.removeprefix("/sui.rpc.v2."))
                if self.text:
                    try:
                        body = base64.b64decode(body, validate=True)
                    except binascii.Error:
                        body = b""  # (unframe refuses it)
                if kind not in _BINARY + _TEXT:
                    self._trailers_only(
                        Status.INVALID_ARGUMENT,
                        "Content-Type is application/grpc-web+proto or application/grpc-web-text",
                    )
                elif name is None:
                    self._trailers_only(Status.UNIMPLEMENTED, f"no unary method {self.path}")
                else:
                    try:
                        data = answer(name, unframe(body))
                    except ValueError as exc:
                        self._trailers_only(Status.INVALID_ARGUMENT, str(exc))
                    except Refusal as exc:
                        self._trailers_only(exc.status, exc.message)
                    except Exception as exc:  # (a fault of the stand-in: said, as a node would)
                        self._trailers_only(Status.INTERNAL, f"{type(exc).__name__}: {exc}")
                    else:
                        trailers = b"grpc-status: 0\r\ngrpc-message: \r\n"
                        self._reply(frame(data) + frame(trailers, trailer=True), ())

            def _trailers_only(self, status: Status, message: str) -> None:
                self._reply(
                    b"",
                    (("grpc-status", str(status.value)), ("grpc-message", quote(message))),
                )

            def _reply(self, data: bytes, headers: Any) -> None:
                text = self.text
                if text:
                    data = base64.b64encode(data)
                self.send_response(200)
                kind = "application/grpc-web-text+proto" if text else "application/grpc-web+proto"
                self.send_header("Content-Type", kind)
                for name, value in (*_CORS, *headers):
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
