"""The JSON-RPC 2.0 service kind (docs/messaging.md §2.4).

A JSON-RPC service answers the DTP RPC method ``jsonrpc``, whose params are the bytes of
a JSON-RPC 2.0 request (or batch) and whose result is the bytes of the JSON-RPC response
(``None`` for notifications-only input). Two backends:

- :class:`JsonRpcHandler` — methods implemented in Python;
- :class:`JsonRpcHttpProxy` — forwards to an HTTP JSON-RPC endpoint (stdlib
  ``http.client``), e.g. an Ethereum or Sui full node behind the DTP host.

:class:`JsonRpcClient` wraps an :class:`~dtp.messaging.rpc.RpcClient` and raises the
typed errors of :mod:`dtp.messaging.errors` for JSON-RPC error objects.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import io
import json
import logging
import math
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.client import RemoteDisconnected
from typing import Any, Final, cast

from dtp.messaging import errors as E
from dtp.messaging.protocol import _check_count, _check_our_timeout
from dtp.messaging.rpc import RpcClient, RpcServer

__all__ = [
    "JSONRPC_METHOD",
    "MAX_JSON",
    "JsonRpcClient",
    "JsonRpcHandler",
    "JsonRpcHttpProxy",
    "serve_jsonrpc",
]

logger = logging.getLogger(__name__)

JSONRPC_METHOD: Final = "jsonrpc"
#: Largest JSON document accepted or returned (bytes).
MAX_JSON: Final = 1 << 20
MAX_BATCH: Final = 256


def _error(id_: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "error": err, "id": id_}


class JsonRpcHandler:
    """JSON-RPC 2.0 methods implemented in Python: ``fn(params)`` with params a list, a
    dict or None; raise a :class:`~dtp.messaging.errors.RemoteError` for an error object
    with its code."""

    def __init__(self, methods: dict[str, Callable[[Any], Any]] | None = None) -> None:
        self.methods: dict[str, Callable[[Any], Any]] = dict(methods or {})

    def register(self, name: str, fn: Callable[[Any], Any]) -> None:
        """Serve ``fn`` as method ``name``. A name that is not a str, a handler that
        cannot be called (TypeError) or a name already taken (ValueError) is refused
        now: found out at the first call, it was an internal error for the caller."""
        if not isinstance(name, str):
            raise TypeError(f"a method name is a str, not {type(name).__name__!r}")
        if not callable(fn):
            raise TypeError(f"a handler must be callable, not {type(fn).__name__!r}")
        if name in self.methods:
            raise ValueError(f"method {name!r} is already registered")
        self.methods[name] = fn

    def _one(self, request: Any) -> str | None:
        """The JSON text answering one request (None for a notification)."""
        if not isinstance(request, dict) or request.get("jsonrpc") != "2.0":
            return _dumps(_error(None, E.INVALID_REQUEST, "Invalid Request"))
        id_ = request.get("id")
        is_notification = "id" not in request
        if not (id_ is None or type(id_) in (str, int, float)):
            # JSON-RPC 2.0 §4: an id is a string, a number or null (not echoed back)
            return _dumps(_error(None, E.INVALID_REQUEST, "Invalid Request"))
        method = request.get("method")
        params = request.get("params")
        if not isinstance(method, str) or not (params is None or isinstance(params, list | dict)):
            return _dumps(_error(id_, E.INVALID_REQUEST, "Invalid Request"))
        fn = self.methods.get(method)
        if fn is None:
            if is_notification:
                return None
            return _dumps(_error(id_, E.METHOD_NOT_FOUND, "Method not found"))
        try:
            result = fn(params)
        except E.RemoteError as exc:
            if type(exc.code) is int and isinstance(exc.message, str):
                answer = _error(id_, exc.code, exc.message, exc.data)
            else:  # (JSON-RPC 2.0 §5.1: an integer code and a string message)
                answer = _error(id_, E.INTERNAL_ERROR, "Internal error (RemoteError)")
        except TypeError as exc:
            # as the RPC layer has it (rpc._error_reply): Python's text only when binding
            # the params to the method failed (the method never ran); a TypeError of the
            # method's own keeps its text private, as any other exception's
            tb = exc.__traceback__
            detail = f": {exc}" if tb is not None and tb.tb_next is None else ""
            answer = _error(id_, E.INVALID_PARAMS, f"Invalid params{detail}")
        except Exception as exc:
            answer = _error(id_, E.INTERNAL_ERROR, f"Internal error ({type(exc).__name__})")
        else:
            answer = {"jsonrpc": "2.0", "result": result, "id": id_}
        if is_notification:
            return None
        try:
            return _dumps(answer)
        except Exception as exc:
            # the method's result (or its error's data) is not JSON, whatever encoding it
            # raised (a mapping whose items() fails...): that one answer becomes an
            # internal error, the rest of a batch is unaffected
            return _dumps(_error(id_, E.INTERNAL_ERROR, f"Internal error ({type(exc).__name__})"))

    def __call__(self, document: bytes) -> bytes | None:
        """Answer one JSON-RPC document (bytes in, bytes out; None if nothing to say)."""
        try:
            request = _loads(document)
        except (ValueError, RecursionError):
            # RecursionError: nesting too deep for the decoder, which is still malformed
            # input, not a failure of the service
            return _dumps(_error(None, E.PARSE_ERROR, "Parse error")).encode()
        if isinstance(request, list):
            if not request or len(request) > MAX_BATCH:
                return _dumps(_error(None, E.INVALID_REQUEST, "Invalid Request")).encode()
            answers = [a for a in (self._one(r) for r in request) if a is not None]
            return ("[" + ", ".join(answers) + "]").encode() if answers else None
        answer = self._one(request)
        return None if answer is None else answer.encode()


def _dumps(value: Any) -> str:
    """Strict JSON: NaN and the infinities are not JSON (ValueError)."""
    return json.dumps(value, allow_nan=False)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of repeated names; another reader of the same bytes may
    # keep the first, so a document with them means different things to different
    # parties (RFC 8259 §4 leaves it unpredictable): refused, not guessed at
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("repeated name in a JSON object")
    return obj


def _finite_float(text: str) -> float:
    # float() reads a number beyond the binary64 range (1e400) as an infinity, which is
    # not JSON: it would reach the method, and no answer holding it could be written
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text[:40]} is beyond the range of a float")
    return value


def _loads(document: bytes | str) -> Any:
    """Strict JSON from a peer: UTF-8 (a byte order mark is ignored), no NaN or
    infinities (written as such or as numbers too large for a float), no repeated names
    in an object (ValueError, or RecursionError when nested too deep)."""
    if isinstance(document, bytes | bytearray):
        # json.loads guesses UTF-16 and UTF-32 from the first bytes; JSON between
        # parties is UTF-8 (RFC 8259 §8.1), and another reader of the same bytes would
        # refuse them (UnicodeDecodeError: a ValueError)
        document = bytes(document).decode("utf-8-sig")
    return json.loads(
        document,
        parse_constant=_refuse_constant,
        parse_float=_finite_float,
        object_pairs_hook=_unique_keys,
    )


class JsonRpcHttpProxy:
    """Forward JSON-RPC documents to an HTTP(S) endpoint (POST, ``application/json``).

    One keep-alive ``http.client`` connection per thread; responses above ``max_response``
    bytes and HTTP errors become JSON-RPC ``INTERNAL_ERROR`` answers (the backend's
    detail is not passed on). A document is sent again only when the reused connection
    was found closed by the backend before any answer, never after a timeout.

    ``timeout`` (seconds) bounds the whole exchange -- connecting, sending the document
    and reading the whole answer -- not each read: a backend that answers a byte now and
    then is given up on once it has passed (``INTERNAL_ERROR``); None: no limit."""

    def __init__(
        self, url: str, *, timeout: float | None = 10.0, max_response: int = MAX_JSON
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        if timeout is not None:
            _check_our_timeout(timeout)
        _check_count("max_response", max_response, 1)
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port
        self.path = parts.path or "/"
        if parts.query:
            self.path += "?" + parts.query
        self.timeout = timeout
        self.max_response = max_response
        self._local = threading.local()
        # every thread's connection, for close(): the threads that call the proxy are
        # an RpcServer's workers or stream threads, not the one that closes it
        self._lock = threading.Lock()
        self._conns: set[http.client.HTTPConnection] = set()

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None or conn not in self._conns:  # (none yet, or close() closed it)
            cls = (
                http.client.HTTPSConnection
                if self.scheme == "https"
                else http.client.HTTPConnection
            )
            conn = cls(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
            with self._lock:
                self._conns.add(conn)
        return conn

    def __call__(self, document: bytes) -> bytes | None:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            conn = self._connection()
            reused = conn.sock is not None
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:  # (a resend after a failure that took it all)
                return _unreachable()
            # connecting and sending within what is left; every read of the answer too
            conn.timeout = left
            sock = conn.sock
            if sock is not None:
                # (close() from another thread may have closed it: the request fails so)
                with contextlib.suppress(OSError):
                    sock.settimeout(left)
            conn.response_class = cast(
                type[http.client.HTTPResponse],
                functools.partial(_DeadlineResponse, deadline=deadline),
            )
            try:
                conn.request(
                    "POST",
                    self.path,
                    body=document,
                    headers={"Content-Type": "application/json", "Accept": "application/json"},
                )
                response = conn.getresponse()
            except (RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self._drop(conn)
                # a kept-alive connection the backend had closed while idle: it read
                # nothing of this request, so it is sent once more on a fresh one; a
                # fresh connection failing so, or anything else (a timeout above all:
                # the backend may be working on it), is never retried, since a JSON-RPC
                # call (eth_sendRawTransaction…) must not run twice
                if reused:
                    logger.debug("jsonrpc proxy: kept-alive connection closed (%r)", exc)
                    continue
                return _unreachable()
            except (OSError, http.client.HTTPException):
                self._drop(conn)
                return _unreachable()
            try:
                body = response.read(self.max_response + 1)
            except (OSError, http.client.HTTPException):
                self._drop(conn)
                return _unreachable()
            status = response.status
            if len(body) > self.max_response:
                self._drop(conn)
                return json.dumps(
                    _error(None, E.INTERNAL_ERROR, "backend answer too large")
                ).encode()
            if response.length:
                # the backend ended the stream before the Content-Length it announced:
                # http.client's read(amt) returns the part it got without a word, which
                # is not the backend's answer, and the connection (its response unread)
                # refuses the next request on it (ResponseNotReady, after sending it)
                self._drop(conn)
                return _unreachable()
            if status == 204 or (200 <= status < 300 and not body):
                return None
            if not 200 <= status < 300:
                if status < 200:
                    # a 1xx as the final answer (101: the connection now speaks another
                    # protocol): what follows on it is no answer to the next request
                    self._drop(conn)
                return json.dumps(_error(None, E.INTERNAL_ERROR, f"backend HTTP {status}")).encode()
            return body

    def _drop(self, conn: http.client.HTTPConnection) -> None:
        conn.close()
        self._local.conn = None
        with self._lock:
            self._conns.discard(conn)

    def close(self) -> None:
        """Close the kept-alive connections of every thread (a call in progress on one
        fails as the backend being unreachable); a later call opens a new one."""
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            conn.close()


class _DeadlineReader(io.RawIOBase):
    """The raw reader of an HTTP answer whose every read ends by ``deadline``
    (``time.monotonic()``): a socket's own timeout is each read's, which a backend
    sending a byte now and then never reaches."""

    def __init__(self, sock: socket.socket, deadline: float | None) -> None:
        super().__init__()
        self._sock = sock
        # (the socket's own reader: it holds the socket open while the answer is read,
        # as http.client expects of a connection it closed on a "Connection: close")
        self._raw = sock.makefile("rb", buffering=0)
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        if self._deadline is not None:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the backend's answer took longer than the proxy's timeout")
            self._sock.settimeout(left)
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineSocket:
    """What :class:`_DeadlineResponse` hands http.client's HTTPResponse for a socket:
    it only makes the answer's reader."""

    def __init__(self, sock: socket.socket, deadline: float | None) -> None:
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))


class _DeadlineResponse(http.client.HTTPResponse):
    """An HTTP answer read by ``deadline`` (see :class:`_DeadlineReader`)."""

    def __init__(
        self,
        sock: socket.socket,
        debuglevel: int = 0,
        method: str | None = None,
        url: str | None = None,
        *,
        deadline: float | None,
    ) -> None:
        # (before HTTPResponse.__init__: it may read nothing, but begin() reads statuses)
        self._interim = False
        super().__init__(
            cast(socket.socket, _DeadlineSocket(sock, deadline)), debuglevel, method, url
        )

    def _read_status(self) -> tuple[str, int, str]:
        """The next status line, past interim answers (102 Processing, 103 Early Hints):
        http.client skips only 100 Continue and took any other 1xx for the answer, so
        the real answer, left on the kept-alive connection, was read as the answer to
        the next request (every answer then went to the call after its own)."""
        while True:
            try:
                version, status, reason = cast(Any, super())._read_status()
            except RemoteDisconnected:
                if self._interim:
                    # the backend has the request (it answered 1xx): not "closed while
                    # idle", which the proxy sends again
                    raise http.client.HTTPException(
                        "the backend closed the connection after an interim answer"
                    ) from None
                raise
            if not 100 <= status < 200:
                return version, status, reason
            self._interim = True
            if status in (100, 101):  # (begin() skips a 100's headers; a 101 is final)
                return version, status, reason
            http.client.parse_headers(cast(Any, self.fp))


def _unreachable() -> bytes:
    return json.dumps(_error(None, E.INTERNAL_ERROR, "backend unreachable")).encode()


def serve_jsonrpc(server: RpcServer, backend: Callable[[bytes], bytes | None]) -> None:
    """Register the ``jsonrpc`` method on ``server``, answered by ``backend``."""

    def handle(params: Any) -> bytes | None:
        if isinstance(params, str):
            params = params.encode()
        if not isinstance(params, bytes):
            raise E.InvalidParams("jsonrpc takes the JSON document as bytes")
        if len(params) > MAX_JSON:
            raise E.RequestTooLarge(f"JSON document exceeds {MAX_JSON} bytes")
        return backend(params)

    server.register(JSONRPC_METHOD, handle)


def _check_request(method: object, params: object) -> None:
    """Refuse, before anything is sent, what JSON-RPC 2.0 §4 does not allow in a
    request (TypeError): the service only answered it with an invalid request."""
    if not isinstance(method, str):
        raise TypeError(f"a method name is a str, not {type(method).__name__!r}")
    if params is not None and not isinstance(params, list | dict):
        raise TypeError(f"params are a list, a dict or None, not {type(params).__name__!r}")


class JsonRpcClient:
    """JSON-RPC 2.0 calls through a DTP RPC client."""

    def __init__(self, client: RpcClient) -> None:
        self.client = client
        self._next = 1
        self._lock = threading.Lock()

    def call(self, method: str, params: list[Any] | dict[str, Any] | None = None, **kw: Any) -> Any:
        """Call ``method``; returns its result or raises the typed RemoteError. ``params``
        must be strict JSON (TypeError, or ValueError for NaN and the infinities)."""
        _check_request(method, params)
        with self._lock:
            id_ = self._next
            self._next += 1
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id_}
        if params is not None:
            request["params"] = params
        raw = self.client.call(JSONRPC_METHOD, _dumps(request).encode(), **kw)
        if not isinstance(raw, bytes):
            raise E.MalformedMessage("the JSON-RPC service answered no document")
        try:
            answer = _loads(raw)
        except (ValueError, RecursionError):
            raise E.MalformedMessage("the JSON-RPC service answered invalid JSON") from None
        if not isinstance(answer, dict):
            raise E.MalformedMessage("the JSON-RPC answer is not an object")
        if "error" in answer:
            err = answer["error"]
            if not isinstance(err, dict) or type(err.get("code")) is not int:
                raise E.MalformedMessage("malformed JSON-RPC error object")
            raise E.remote_error(err["code"], str(err.get("message", "")), err.get("data"))
        if "result" not in answer:
            # (JSON-RPC 2.0 §5: a success holds a result, null included; none was read
            # as a null result)
            raise E.MalformedMessage("the JSON-RPC answer holds neither result nor error")
        return answer["result"]

    def notify(self, method: str, params: list[Any] | dict[str, Any] | None = None) -> None:
        """A JSON-RPC notification (no id, no answer)."""
        _check_request(method, params)
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            request["params"] = params
        self.client.call(JSONRPC_METHOD, _dumps(request).encode())
