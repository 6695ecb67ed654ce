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

import asyncio
import base64
import contextlib
import errno
import functools
import http.client
import io
import json
import logging
import math
import os
import select
import socket
import threading
import time
import urllib.parse
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, cast

from dtp.messaging import errors as E
from dtp.messaging._protocol import _check_count, _check_our_timeout
from dtp.messaging.method_rules import MethodRules, requests_for
from dtp.messaging.rpc import AsyncRpcServer, CallContext, RpcClient, RpcServer
from dtp.transport.carriers._tcp import wait_ready

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
            # as the RPC layer has it (dtp.messaging.rpc._server_base.error_reply): Python's
            # text only when binding the params to the method failed (the method never
            # ran); a TypeError of the method's own keeps its text private, as any
            # other exception's
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
    """Strict JSON: NaN and the infinities are not JSON (ValueError), nor is an object
    name that is not a str (TypeError)."""
    _check_names(value)
    return json.dumps(value, allow_nan=False)


def _check_names(value: Any) -> None:
    """TypeError for a dict key that is not a str, anywhere in ``value``: json.dumps
    writes 1, 1.0, True or None as a name ("1", "1.0", "true", "null"), so {1: "a",
    "1": "b"} came out with the name "1" twice, which every strict reader (_loads,
    hence JsonRpcClient) refuses, and {1: "a"} as another object than was returned."""
    stack = [value]
    seen: set[int] = set()  # (a cycle is left to json.dumps to refuse)
    while stack:  # (no recursion: a deeply nested value is walked all the same)
        item = stack.pop()
        if isinstance(item, dict):
            if id(item) in seen:
                continue
            seen.add(id(item))
            for key, sub in item.items():
                if not isinstance(key, str):
                    raise TypeError(f"an object name is a str, not {type(key).__name__!r}")
                stack.append(sub)
        elif isinstance(item, list | tuple):
            if id(item) in seen:
                continue
            seen.add(id(item))
            stack.extend(item)


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

    Kept-alive ``http.client`` connections are pooled: a call takes an idle one (or
    opens one) and gives it back after a clean answer; at most ``max_idle`` are kept
    idle, the others closed. Responses above ``max_response`` bytes, HTTP errors and
    2xx bodies that are not JSON become JSON-RPC ``INTERNAL_ERROR`` answers (the
    backend's detail is not passed on), one per request that has an id (an array for a
    batch, nothing for notifications). A document is never sent twice: an idle
    connection the backend has closed is found so before it is used, and once the
    document has gone out, any failure is the call's answer.

    ``timeout`` (seconds) bounds the whole exchange -- connecting, sending the document
    and reading the whole answer -- not each read: a backend that answers a byte now and
    then is given up on once it has passed (``INTERNAL_ERROR``); None: no limit.

    Credentials in the URL (``http://user:password@host/``) are sent as HTTP Basic
    authentication; a path that is not ASCII is sent percent-encoded (UTF-8)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float | None = 10.0,
        max_response: int = MAX_JSON,
        max_idle: int = 8,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        try:
            # (what connecting does to the name: refused now rather than raising
            # UnicodeError out of every call)
            parts.hostname.encode("idna")
        except UnicodeError:
            raise ValueError(f"not an http(s) URL: {url!r}") from None
        if timeout is not None:
            _check_our_timeout(timeout)
        _check_count("max_response", max_response, 1)
        _check_count("max_idle", max_idle, 0)
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        # http.client writes the request line as ASCII: a path it cannot write failed
        # every call (UnicodeEncodeError), one with a space or a control character
        # every call too (InvalidURL); existing %-escapes are kept as they are
        self.path = urllib.parse.quote(path, safe=_URL_SAFE)
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if parts.username is not None:
            # (urlsplit leaves them %-escaped, as a URL must write ':' or '@' in them)
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            self._headers["Authorization"] = "Basic " + token
        self.timeout = timeout
        self.max_response = max_response
        self.max_idle = max_idle
        self._lock = threading.Lock()
        # a pool, not a connection per thread: the callers are an RpcServer's stream
        # threads, one per DTP connection, which come and go; each left its own
        # connection (and descriptor) open until close()
        self._idle: list[http.client.HTTPConnection] = []
        # the connections of calls in progress, with their sockets, for close() to shut
        # down: http.client drops its reference to a socket it closes on a
        # "Connection: close" while the answer is still being read through it
        self._busy: dict[http.client.HTTPConnection, socket.socket | None] = {}
        # the duplicates noted in _busy for HTTPS connects, closed once the connection
        # is made or given up (see _open_socket)
        self._dups: dict[http.client.HTTPConnection, socket.socket] = {}

    def _checkout(self) -> http.client.HTTPConnection:
        """An idle connection still open at the backend's end, or a new one (not yet
        connected), counted as in progress."""
        while True:
            with self._lock:
                # (the most recently used: the least likely to have been closed)
                conn = self._idle.pop() if self._idle else None
                if conn is not None:
                    self._busy[conn] = conn.sock
            if conn is None:
                # (made outside the lock: an HTTPS connection loads its CA certificates)
                cls = (
                    http.client.HTTPSConnection
                    if self.scheme == "https"
                    else http.client.HTTPConnection
                )
                conn = cls(self.host, self.port, timeout=self.timeout)
                # (http.client connects through this attribute: its sockets are then
                # noted before they connect, and close() can cut a connect short)
                conn._create_connection = _Opener(self, conn)  # type: ignore[attr-defined]
                with self._lock:
                    self._busy[conn] = None
                return conn
            sock = conn.sock
            if sock is not None and not _peer_closed(sock):
                return conn
            # the backend closed it while idle (or wrote what no request asked for):
            # found now, before the document goes out on it, rather than after, when
            # whether the backend read the document cannot be known
            logger.debug("jsonrpc proxy: an idle connection was closed by the backend")
            self._checkin(conn, reusable=False)

    def _checkin(self, conn: http.client.HTTPConnection, *, reusable: bool) -> None:
        """Back to the pool after a clean answer (when there is room), else closed."""
        with self._lock:
            # (not in progress any more: close() shut it down meanwhile)
            ours = self._busy.pop(conn, _GONE) is not _GONE
            dup = self._dups.pop(conn, None)
            keep = ours and reusable and conn.sock is not None and len(self._idle) < self.max_idle
            if keep:
                self._idle.append(conn)
        if dup is not None:
            dup.close()
        if not keep:
            conn.close()

    def _open_socket(
        self,
        conn: http.client.HTTPConnection,
        address: tuple[str, int],
        timeout: Any,
        source_address: tuple[str, int] | None = None,
    ) -> socket.socket:
        """:func:`socket.create_connection` for ``conn``, each socket noted as its
        socket before it connects, so that close() can shut it down: the connect does
        not block but is waited for with poll, which the shutdown ends at once whenever
        it comes -- before the connect starts too (a blocking connect started after it
        would go on regardless: with timeout=None, for the kernel's whole SYN retries; a
        backend that does not answer the SYN would hold the call, and close(), that long).
        An HTTPS connection's TLS wrapping takes this socket object's descriptor over
        before its handshake, so for HTTPS a duplicate of it is noted (the same
        connection: its shutdown ends the handshake too), closed once the connection is
        made or given up. Raises OSError as that does (ConnectionAbortedError once
        close() ran)."""
        if timeout is socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
            timeout = socket.getdefaulttimeout()
        error: OSError | None = None
        for family, kind, proto, _, sockaddr in socket.getaddrinfo(
            address[0], address[1], 0, socket.SOCK_STREAM
        ):
            sock = socket.socket(family, kind, proto)
            try:
                noted = sock.dup() if self.scheme == "https" else sock
            except OSError:
                sock.close()
                raise
            with self._lock:
                aborted = conn not in self._busy  # close() ran meanwhile
                if not aborted:
                    self._busy[conn] = noted
                    previous = self._dups.pop(conn, None)
                    if noted is not sock:
                        self._dups[conn] = noted
            if aborted:
                sock.close()
                noted.close()  # (the same object for HTTP: closing twice does nothing)
                raise _ProxyClosed("the proxy was closed")
            if previous is not None:
                previous.close()  # (the last address's, which failed)
            try:
                if source_address:
                    sock.bind(source_address)
                _connect_unblocked(sock, sockaddr, timeout)
                with self._lock:
                    if conn not in self._busy:
                        raise _ProxyClosed("the proxy was closed")
                sock.settimeout(timeout)
            except OSError as exc:
                sock.close()
                if isinstance(exc, _ProxyClosed):
                    raise
                error = exc
                continue
            return sock
        raise error if error is not None else OSError(f"no address for {address[0]!r}")

    def _connected(self, conn: http.client.HTTPConnection) -> bool:
        """Note the socket of a connection just opened, for close(); False if close()
        ran while it was connecting (the call then fails as closed)."""
        with self._lock:
            if conn not in self._busy:
                return False
            self._busy[conn] = conn.sock
            dup = self._dups.pop(conn, None)
        if dup is not None:
            dup.close()
        return True

    def __call__(self, document: bytes) -> bytes | None:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        conn = self._checkout()
        reusable = False
        try:
            outcome = self._exchange(conn, document, deadline)
            if outcome is None:
                return _failure(document, "backend unreachable")
            status, body, reusable = outcome
        finally:
            self._checkin(conn, reusable=reusable)
        if len(body) > self.max_response:
            return _failure(document, "backend answer too large")
        if status == 204 or (200 <= status < 300 and not body):
            return None
        if not 200 <= status < 300:
            return _failure(document, f"backend HTTP {status}")
        try:
            _loads(body)
        except (ValueError, RecursionError):
            # an HTML error page of a gateway in front of the node, say: passed on, it
            # was an undecodable answer to the caller rather than the backend's failure
            return _failure(document, "backend answered non-JSON")
        return body

    def _exchange(
        self, conn: http.client.HTTPConnection, document: bytes, deadline: float | None
    ) -> tuple[int, bytes, bool] | None:
        """Send ``document`` once on ``conn``: the answer's status, its body (read up to
        one byte past ``max_response``) and whether the connection may be used again;
        None when there is no answer (unreachable, timed out, closed, cut short)."""
        try:
            if conn.sock is None:
                left = _left(deadline)
                if left is not None and left <= 0:
                    return None
                conn.timeout = left  # (connecting within what is left)
                conn.connect()
                if not self._connected(conn):
                    return None
            left = _left(deadline)
            if left is not None and left <= 0:
                return None
            cast(socket.socket, conn.sock).settimeout(left)  # (sending; each read sets its own)
            conn.response_class = cast(
                type[http.client.HTTPResponse],
                functools.partial(_DeadlineResponse, deadline=deadline),
            )
            # from here on the backend may have the document: whatever happens, it is
            # not sent again (a JSON-RPC call such as eth_sendRawTransaction must not
            # run twice)
            conn.request("POST", self.path, body=document, headers=self._headers)
            response = conn.getresponse()
            body = response.read(self.max_response + 1)
        except (OSError, http.client.HTTPException):
            return None
        if len(body) > self.max_response:
            return response.status, body, False  # (the rest of it left unread)
        if response.length:
            # the backend ended the stream before the Content-Length it announced:
            # http.client's read(amt) returns the part it got without a word, which is
            # not the backend's answer
            return None
        # a 1xx as the final answer (101: the connection now speaks another protocol),
        # or an answer not read to its end: what follows on it answers no next request
        reusable = response.status >= 200 and response.isclosed()
        return response.status, body, reusable

    def close(self) -> None:
        """Close the idle connections, and make the calls in progress -- connecting
        or exchanging -- fail at once as the backend being unreachable (their sockets
        are shut down); a later call opens a new connection."""
        with self._lock:
            idle, self._idle = self._idle, []
            busy, self._busy = list(self._busy.values()), {}
            dups, self._dups = list(self._dups.values()), {}
        for conn in idle:
            conn.close()
        for sock in busy:
            if sock is not None:
                # shutdown, not close: the calling thread's reader holds the descriptor
                # open (a close left it reading on, for ever with timeout=None); and
                # socket.socket's, not SSLSocket's, which drops the TLS state from
                # under the thread still using it
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
        for dup in dups:
            dup.close()  # (shut down above: only this descriptor of the connection)


class _ProxyClosed(ConnectionAbortedError):
    """A connect given up because the proxy was closed (not tried at further addresses,
    as a refused one is)."""


class _Opener:
    """What a proxy's connection connects through (``_create_connection``): the proxy's
    :meth:`JsonRpcHttpProxy._open_socket` for it, held by weak references -- a bound
    method kept on the connection made a cycle (connection, proxy, pool), and a proxy
    dropped without close() kept its idle connections open until the cyclic collector
    ran, rather than closing them when the last reference went."""

    __slots__ = ("_conn", "_proxy")

    def __init__(self, proxy: JsonRpcHttpProxy, conn: http.client.HTTPConnection) -> None:
        self._proxy = weakref.ref(proxy)
        self._conn = weakref.ref(conn)

    def __call__(
        self,
        address: tuple[str, int],
        timeout: Any,
        source_address: tuple[str, int] | None = None,
    ) -> socket.socket:
        proxy, conn = self._proxy(), self._conn()
        if proxy is None or conn is None:
            raise _ProxyClosed("the proxy is gone")
        return proxy._open_socket(conn, address, timeout, source_address)


def _connect_unblocked(sock: socket.socket, address: Any, timeout: float | None) -> None:
    """Connect ``sock`` to ``address`` without blocking in connect(2): wait for it with
    poll, up to ``timeout`` seconds (None: as long as the kernel tries). A shutdown of
    the socket ends the wait at once (the caller then finds out why). Raises
    TimeoutError, or OSError with the connect's errno."""
    sock.setblocking(False)
    err = sock.connect_ex(address)
    if err in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK, errno.EINTR):
        if not wait_ready([], [sock], timeout)[1]:
            raise TimeoutError("timed out")
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))


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
        super().__init__(
            cast(socket.socket, _DeadlineSocket(sock, deadline)), debuglevel, method, url
        )

    def _read_status(self) -> tuple[str, int, str]:
        """The next status line, past interim answers (102 Processing, 103 Early Hints):
        http.client skips only 100 Continue and took any other 1xx for the answer, so
        the real answer, left on the kept-alive connection, was read as the answer to
        the next request (every answer then went to the call after its own)."""
        while True:
            version, status, reason = cast(Any, super())._read_status()
            if not 100 <= status < 200:
                return version, status, reason
            if status in (100, 101):  # (begin() skips a 100's headers; a 101 is final)
                return version, status, reason
            http.client.parse_headers(cast(Any, self.fp))


#: What a path may hold as it is: printable ASCII but the space (and '%', so that
#: the escapes already in it stay as they are).
_URL_SAFE: Final = "".join(chr(c) for c in range(0x21, 0x7F))
_GONE: Final = object()


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()


def _peer_closed(sock: socket.socket) -> bool:
    """Whether an idle kept-alive connection has something to read at once: the
    backend's end of it (EOF or reset), or bytes no request asked for; either way it
    answers no next request (an error reading it counts as closed)."""
    # a TLS socket's bytes already decrypted, which poll() cannot see (ssl.SSLSocket's
    # pending(); ssl is not imported, so that a Python without OpenSSL imports this)
    pending = getattr(sock, "pending", None)
    if pending is not None and pending():
        return True
    try:
        if hasattr(select, "poll"):  # (select() refuses descriptors past FD_SETSIZE)
            poller = select.poll()
            poller.register(sock, select.POLLIN | select.POLLPRI)
            return bool(poller.poll(0))  # (POLLHUP and POLLERR are always reported)
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable)
    except (OSError, ValueError):
        return True


def _failure(document: bytes, message: str) -> bytes | None:
    """The proxy's own INTERNAL_ERROR answer to ``document``, shaped as the backend's
    would have been (JSON-RPC 2.0 §5, §6): the request's id, an array of errors for a
    batch's requests, nothing for notifications; id null when ``document`` cannot be
    read (or an entry is no request at all). An answer that would outgrow
    ``MAX_JSON`` is one error with id null instead: a batch of tiny entries would
    otherwise turn a request into an answer fifty times its size."""
    lone = _dumps(_error(None, E.INTERNAL_ERROR, message)).encode()
    try:
        request = _loads(document)
    except (ValueError, RecursionError):
        return lone
    if isinstance(request, list) and request:
        answers: list[str] = []
        size = 2
        for r in request:
            if _is_notification(r):
                continue
            answers.append(_dumps(_error(_request_id(r), E.INTERNAL_ERROR, message)))
            size += len(answers[-1]) + 2
            if size > MAX_JSON:
                return lone
        return ("[" + ", ".join(answers) + "]").encode() if answers else None
    if _is_notification(request):
        return None
    answer = _dumps(_error(_request_id(request), E.INTERNAL_ERROR, message)).encode()
    return answer if len(answer) <= MAX_JSON else lone  # (an id of escaped characters)


def _is_notification(request: Any) -> bool:
    # (as JsonRpcHandler has it: what is not a 2.0 request is answered, id or none)
    return isinstance(request, dict) and request.get("jsonrpc") == "2.0" and "id" not in request


def _request_id(request: Any) -> Any:
    """A request's id to echo back: null when there is none or it is no JSON-RPC id."""
    id_ = request.get("id") if isinstance(request, dict) else None
    return id_ if type(id_) in (str, int, float) else None


def _document(params: Any) -> bytes:
    """The JSON document a ``jsonrpc`` request carries (InvalidParams, RequestTooLarge)."""
    if isinstance(params, str):
        params = params.encode()
    if not isinstance(params, bytes):
        raise E.InvalidParams("jsonrpc takes the JSON document as bytes")
    if len(params) > MAX_JSON:
        raise E.RequestTooLarge(f"JSON document exceeds {MAX_JSON} bytes")
    return params


def serve_jsonrpc(
    server: RpcServer | AsyncRpcServer,
    backend: Callable[[bytes], bytes | None],
    *,
    rules: MethodRules | None = None,
) -> None:
    """Register the ``jsonrpc`` method on ``server`` (blocking or asyncio), answered by
    ``backend`` (on an AsyncRpcServer, in a worker thread: a backend blocks).

    ``rules``: per-method access and prices of the JSON-RPC methods inside the
    documents (docs/messaging.md §2.5), for the client's Sui address. A request the
    rules refuse never reaches the backend: it is answered here with the JSON-RPC error
    ``-32006`` (:class:`~dtp.messaging.errors.MethodNotAllowed` at a
    :class:`JsonRpcClient`), the rest of its batch forwarded; and it costs nothing. A
    paid server charges each request the rules allow at its method's price (a batch:
    the sum), before the document is forwarded."""
    if rules is not None and not isinstance(rules, MethodRules):
        raise TypeError(f"rules must be MethodRules or None, not {type(rules).__name__!r}")

    def answer(params: Any, ctx: CallContext) -> bytes | None:
        if rules is None:
            return backend(_document(params))
        # what was charged is what is forwarded: the verdicts of the request's pricing,
        # which the server hands on in the context (the rules asked again could answer
        # otherwise by now: a Host list read anew)
        cost = ctx.cost
        allowed = cost.allowed if isinstance(cost, _Priced) else None
        return _answer_within_rules(_document(params), backend, rules, ctx.peer_address, allowed)

    if isinstance(server, AsyncRpcServer):
        # (the backend blocks -- an HTTP exchange -- so not on the event loop)
        async def handle_async(params: Any, ctx: CallContext) -> bytes | None:
            return await asyncio.to_thread(answer, params, ctx)

        server.register(JSONRPC_METHOD, handle_async, context=True)
    else:
        server.register(JSONRPC_METHOD, answer, context=True)
    if rules is None:
        return

    def pricing(params: Any, client: str | None) -> _Priced:
        try:
            request = _loads(_document(params))
        except (E.RemoteError, ValueError, RecursionError):
            return _Priced((), [])  # (answered as an error, free)
        prices: list[int | None] = []
        allowed: list[bool] = []
        for entry in request if isinstance(request, list) else [request]:
            method = _method_of(entry)
            if method is None:
                allowed.append(True)  # (not a request: the backend answers -32600, free)
                continue
            try:
                prices.append(rules.check(method, client))
                allowed.append(True)
            except E.MethodNotAllowed:
                allowed.append(False)
        return _Priced(prices, allowed)

    server.price(JSONRPC_METHOD, pricing)


class _Priced(tuple[int | None, ...]):
    """A JSON-RPC document's prices (one per entry the rules allow) with the verdict on
    each of its entries, which the server hands to the handler with the request
    (:attr:`CallContext.cost`): the handler forwards exactly what was charged."""

    allowed: list[bool]

    def __new__(cls, prices: Iterable[int | None], allowed: list[bool]) -> _Priced:
        priced = super().__new__(cls, prices)
        priced.allowed = allowed
        return priced


def _method_of(entry: Any) -> str | None:
    """The method a batch entry (or lone request) calls; None when it is no request."""
    if isinstance(entry, dict) and entry.get("jsonrpc") == "2.0":
        method = entry.get("method")
        if isinstance(method, str):
            return method
    return None


def _answer_within_rules(
    document: bytes,
    backend: Callable[[bytes], bytes | None],
    rules: MethodRules,
    client: str | None,
    allowed: list[bool] | None = None,
) -> bytes | None:
    """The answer to ``document``: what the rules refuse ``client`` is answered here
    (-32006, the request's id; nothing for a notification), the rest by ``backend``.
    ``allowed``: the verdict on each entry as the request was priced (None: ask the
    rules now)."""
    try:
        request = _loads(document)
    except (ValueError, RecursionError):
        return _dumps(_error(None, E.PARSE_ERROR, "Parse error")).encode()
    batch = isinstance(request, list)
    entries = request if batch else [request]
    forwarded: list[Any] = []
    refused: list[str] = []
    if allowed is not None and len(allowed) != len(entries):
        allowed = None
    for i, entry in enumerate(entries):
        method = _method_of(entry)
        if allowed is not None:
            refuse = not allowed[i]
        else:
            refuse = method is not None and not rules.allowed(method, client)
        if method is not None and refuse:
            if not _is_notification(entry):
                answer = _error(
                    _request_id(entry),
                    E.METHOD_NOT_ALLOWED,
                    "Method not allowed",
                    {"method": method},
                )
                refused.append(_dumps(answer))
        else:
            forwarded.append(entry)
    if len(forwarded) == len(entries):
        return backend(document)  # (nothing refused: the document as the client wrote it)
    answers: list[str] = []
    if forwarded:
        sent = _dumps(forwarded if batch else forwarded[0]).encode()
        raw = backend(sent)
        if raw is not None:
            try:
                got = _loads(raw)
            except (ValueError, RecursionError):
                got = _error(None, E.INTERNAL_ERROR, "Internal error")
            answers += [_dumps(a) for a in (got if isinstance(got, list) else [got])]
    answers += refused
    if not answers:
        return None
    if not batch:
        return answers[0].encode()
    return ("[" + ", ".join(answers) + "]").encode()


def _check_request(method: object, params: object) -> None:
    """Refuse, before anything is sent, what JSON-RPC 2.0 §4 does not allow in a
    request (TypeError): the service only answered it with an invalid request."""
    if not isinstance(method, str):
        raise TypeError(f"a method name is a str, not {type(method).__name__!r}")
    if params is not None and not isinstance(params, list | dict):
        raise TypeError(f"params are a list, a dict or None, not {type(params).__name__!r}")


def _outcome(answer: Any, id_: int | None) -> Any:
    """The result of the JSON-RPC answer ``answer`` to request ``id_`` (None: to a
    document it could not be matched with), or the typed RemoteError it holds.
    MalformedMessage: no JSON-RPC answer to that request."""
    if not isinstance(answer, dict):
        raise E.MalformedMessage("the JSON-RPC answer is not an object")
    # JSON-RPC 2.0 §5: exactly one of result and error, and the request's id, so
    # that another's answer (a backend that mixed up its connections) is never
    # taken for this call's. An error may have id null, as when the service could
    # not read the request's id.
    if "result" not in answer and "error" not in answer:
        raise E.MalformedMessage("the JSON-RPC answer holds neither result nor error")
    if "result" in answer and "error" in answer:
        raise E.MalformedMessage("the JSON-RPC answer holds both result and error")
    got = answer.get("id", _GONE)
    if not (type(got) is int and got == id_) and not ("error" in answer and got is None):
        raise E.MalformedMessage("the JSON-RPC answer is to another request (its id)")
    if "error" in answer:
        err = answer["error"]
        if not isinstance(err, dict) or type(err.get("code")) is not int:
            raise E.MalformedMessage("malformed JSON-RPC error object")
        return E.remote_error(err["code"], str(err.get("message", "")), err.get("data"))
    return answer["result"]


class JsonRpcClient:
    """JSON-RPC 2.0 calls through a DTP RPC client.

    ``prices``: what the service charges per method (its :class:`MethodRules`, or a
    mapping of method name to MIST), so that a client with a ``meter`` signs for
    exactly each call's price (docs/messaging.md §2.5); without it every call is
    metered as one request of the SLA, which a method priced higher is refused for
    (:class:`~dtp.messaging.errors.PaymentRequired`, its ``data`` saying how many
    requests it counts as). With the rules themselves, a method they refuse the client
    is metered at nothing: ``address`` is the Sui address the service knows the client
    by (its DTP identity's; by default the address of the identity that signs the
    meter's receipts, which is that one when the client connected with it). A mapping
    says nothing of access: a call it prices that the rules refuse is signed for, and
    the service's answer, which says what it counted, gives it back to the meter."""

    def __init__(
        self,
        client: RpcClient,
        *,
        prices: MethodRules | Mapping[str, int | None] | None = None,
        address: str | None = None,
    ) -> None:
        self.client = client
        self.prices = prices
        self._address = address
        self._next = 1
        self._lock = threading.Lock()

    @property
    def address(self) -> str | None:
        """The Sui address the method rules know the client by (None: anonymous)."""
        if self._address is not None:
            return self._address
        meter = self.client.meter
        return None if meter is None else meter.identity.sui_address

    def requests_of(self, method: str) -> int:
        """How many requests of the SLA a call of ``method`` is metered as (1 with no
        meter or no ``prices``; 0 for a method the rules refuse the client)."""
        meter = self.client.meter
        prices = self.prices
        if meter is None or prices is None:
            return 1
        if isinstance(prices, MethodRules):
            try:
                price = prices.check(method, self.address)
            except E.MethodNotAllowed:
                return 0
        else:
            price = prices.get(method)
        return requests_for(meter.sla, price)

    def _request(self, method: str, params: list[Any] | dict[str, Any] | None) -> dict[str, Any]:
        _check_request(method, params)
        with self._lock:
            id_ = self._next
            self._next += 1
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id_}
        if params is not None:
            request["params"] = params
        return request

    def _document(self, payload: Any, kw: dict[str, Any], methods: Iterable[str]) -> Any:
        """Send the JSON document ``payload`` (the requests of ``methods``), metered as
        their prices unless the caller said (``requests``); its answer, decoded."""
        if "requests" not in kw and self.prices is not None:
            kw["requests"] = sum(self.requests_of(method) for method in methods)
        raw = self.client.call(JSONRPC_METHOD, _dumps(payload).encode(), **kw)
        if not isinstance(raw, bytes):
            raise E.MalformedMessage("the JSON-RPC service answered no document")
        try:
            return _loads(raw)
        except (ValueError, RecursionError):
            raise E.MalformedMessage("the JSON-RPC service answered invalid JSON") from None

    def call(self, method: str, params: list[Any] | dict[str, Any] | None = None, **kw: Any) -> Any:
        """Call ``method``; returns its result or raises the typed RemoteError. ``params``
        must be strict JSON (TypeError, or ValueError for NaN and the infinities).
        MalformedMessage: the answer is no JSON-RPC answer to this request (another id,
        both or neither of result and error)."""
        request = self._request(method, params)
        outcome = _outcome(self._document(request, kw, [method]), request["id"])
        if isinstance(outcome, E.RemoteError):
            raise outcome
        return outcome

    def batch(
        self, calls: Iterable[tuple[str, list[Any] | dict[str, Any] | None]], **kw: Any
    ) -> list[Any]:
        """Call each ``(method, params)`` of ``calls`` in one JSON-RPC batch, metered as
        the sum of their prices (those the rules refuse the client: nothing). Returns,
        in the order of ``calls``, each one's result, or the typed RemoteError it was
        answered with (not raised: the others were answered all the same).
        MalformedMessage: the answer is no JSON-RPC answer to the batch; an error for
        the whole batch (id null, the service could not read it) is raised."""
        requests = [self._request(method, params) for method, params in calls]
        if not requests:
            raise ValueError("a JSON-RPC batch holds one request at least")
        answer = self._document(requests, kw, [r["method"] for r in requests])
        if isinstance(answer, dict):
            lone = _outcome(answer, None)
            raise (
                lone
                if isinstance(lone, E.RemoteError)
                else E.MalformedMessage("the JSON-RPC service answered a batch with one result")
            )
        if not isinstance(answer, list):
            raise E.MalformedMessage("the JSON-RPC answer to a batch is not an array")
        by_id: dict[int, Any] = {}
        for entry in answer:
            if not isinstance(entry, dict) or type(entry.get("id")) is not int:
                raise E.MalformedMessage("a JSON-RPC answer in the batch names no request")
            by_id[entry["id"]] = entry
        results = []
        for request in requests:
            entry = by_id.get(request["id"])
            if entry is None:
                raise E.MalformedMessage(f"no JSON-RPC answer to request {request['id']}")
            results.append(_outcome(entry, request["id"]))
        return results

    def notify(self, method: str, params: list[Any] | dict[str, Any] | None = None) -> None:
        """A JSON-RPC notification (no id, no answer)."""
        _check_request(method, params)
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            request["params"] = params
        kw: dict[str, Any] = {}
        if self.prices is not None:
            kw["requests"] = self.requests_of(method)
        self.client.call(JSONRPC_METHOD, _dumps(request).encode(), **kw)
