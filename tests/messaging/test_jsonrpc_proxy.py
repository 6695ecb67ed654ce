"""The JSON-RPC HTTP proxy against a real local
``http.server`` backend that misbehaves, directly and through a real DTP connection.

A backend that ends its answer before the Content-Length it announced: http.client's
``read(amt)`` hands back the part it got without a word, so the proxy passed the cut
bytes on as the backend's answer, and kept the connection, whose unread response made
the next request sent on it fail (ResponseNotReady, once it was sent on the dead
connection): a healthy backend's next caller was told "backend unreachable".

A backend that answers a byte now and then: the proxy's timeout was each socket read's,
so it waited as long as the backend liked, holding the RpcServer's thread (with inline
handlers, every later request on that DTP connection) long past the call's deadline.

The JSON-RPC service kind against raw HTTP backends on
127.0.0.1.

What was wrong: the proxy sent a document again on a new connection when a kept-alive
one ended without an answer, though the backend may have read it (a transaction sent
twice); it kept a connection per calling thread until close(), even after the thread
ended (a gateway leaked a descriptor per DTP connection); close() did not stop a call in
progress (with timeout=None it waited for ever); its own error answers had id null and
were one object whatever the request (a batch, a notification); credentials in the URL
were dropped and a non-ASCII path made every call raise UnicodeEncodeError; a 2xx HTML
page went through as the answer. JsonRpcClient took an answer with another id, or with
both result and error, for its own; a handler result with a non-str key was written
with the name repeated ({1: "a", "1": "b"}), a document the client refuses."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any, cast

import pytest

import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger
from dtp.messaging import errors as E
from dtp.messaging.jsonrpc import (
    MAX_JSON,
    JsonRpcClient,
    JsonRpcHandler,
    JsonRpcHttpProxy,
    _loads,
    serve_jsonrpc,
)
from dtp.messaging.rpc import ResponsePrepay, RpcClient, RpcServer
from tests.messaging.http_backends import HttpBackend
from tests.support.polling import wait_for

ANSWER = b'{"jsonrpc":"2.0","result":"%s","id":1}' % (b"x" * 200)


class CuttingBackend(HttpBackend):
    """A keep-alive HTTP backend whose first answer stops halfway through the body it
    announced: it shuts its side for writing (the proxy reads the end of the stream)
    and goes on reading requests on that connection, as a backend whose writer died
    would. Later connections get whole answers."""

    def __init__(self) -> None:
        self.posts = 0
        self.cut = threading.Event()
        lock = threading.Lock()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    backend.posts += 1
                    cut_now = not backend.cut.is_set()
                    backend.cut.set()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(ANSWER)))
                    self.end_headers()
                    if cut_now:
                        self.wfile.write(ANSWER[: len(ANSWER) // 2])
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_WR)
                    else:
                        self.wfile.write(ANSWER)
                except OSError:
                    self.close_connection = True  # (written on after the cut)

            def log_message(self, *args: Any) -> None:
                pass

        self._serve(Handler)


@pytest.fixture
def backend() -> Iterator[CuttingBackend]:
    b = CuttingBackend()
    yield b
    b.close()


DOC = b'{"jsonrpc":"2.0","method":"m","id":1}'


def test_proxy_answer_cut_short_is_an_error_and_the_next_call_works(
    backend: CuttingBackend,
) -> None:
    proxy = JsonRpcHttpProxy(backend.url, timeout=30)
    try:
        first = proxy(DOC)
        assert first is not None
        # the half answer never comes back as the backend's
        assert first != ANSWER[: len(ANSWER) // 2]
        assert json.loads(first)["error"]["code"] == E.INTERNAL_ERROR
        # the next call on this thread opens a new connection, not the cut one
        second = proxy(DOC)
        assert second == ANSWER
    finally:
        proxy.close()


@contextlib.contextmanager
def _proxied_over_dtp(proxy: JsonRpcHttpProxy, call_timeout: float) -> Iterator[JsonRpcClient]:
    """A JSON-RPC client over a real DTP connection to an RpcServer that hands every call
    to ``proxy``, its handlers inline (the default): every call reaches the proxy in the
    stream's thread, the one that holds the proxy's connection. All closed on exit, the
    proxy too."""
    identity = HostIdentity.generate()
    rpc = RpcServer()
    serve_jsonrpc(rpc, proxy)
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=identity)
    thread = threading.Thread(target=rpc.serve_forever, args=(server,), daemon=True)
    thread.start()
    sock = dtp.socket.create_connection(
        server.address, server_key=identity.noise_public, timeout=30
    )
    try:
        yield JsonRpcClient(RpcClient(sock, timeout=call_timeout))
    finally:
        sock.close()
        server.close()
        rpc.close()
        proxy.close()
        thread.join(5)


def test_cut_backend_answer_over_dtp_is_typed_and_the_connection_stays_usable(
    backend: CuttingBackend,
) -> None:
    with _proxied_over_dtp(JsonRpcHttpProxy(backend.url, timeout=30), 60) as client:
        with pytest.raises(E.InternalError):
            client.call("m")
        # (a new client: its first call has id 1, the id of the backend's answer)
        assert JsonRpcClient(client.client).call("m") == "x" * 200


class TricklingBackend(HttpBackend):
    """An HTTP backend that answers one byte at a time, a byte every 0.2 s: the status
    line itself (``where="status"``) or, after whole headers, a body of 3000 bytes
    (``where="body"``), 600 s in all. No single read waits long, so a per-read
    timeout never fires. With ``first_only`` only the first request is answered so,
    the others at once. :meth:`close` stops it."""

    def __init__(self, where: str, *, first_only: bool = False) -> None:
        self.stop = threading.Event()
        self.trickled = threading.Event()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                if first_only and backend.trickled.is_set():
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(ANSWER)))
                    self.end_headers()
                    self.wfile.write(ANSWER)
                    return
                backend.trickled.set()
                if where == "status":
                    slow = b"HTTP/1.1 200 " + b"O" * 3000
                else:
                    body = b"[" * 3000
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.flush()
                    slow = body
                try:
                    for i in range(len(slow)):
                        if backend.stop.wait(0.2):
                            break
                        self.wfile.write(slow[i : i + 1])
                        self.wfile.flush()
                except OSError:
                    pass  # the proxy gave up
                self.close_connection = True

            def log_message(self, *args: Any) -> None:
                pass

        self._serve(Handler)

    def close(self) -> None:
        self.stop.set()
        super().close()


@pytest.mark.parametrize("where", ["status", "body"])
def test_proxy_timeout_bounds_a_trickling_answer(where: str) -> None:
    # the timeout bounds the whole answer, not each read: a backend that sends a byte
    # now and then cannot hold the caller (an RpcServer's stream thread: every later
    # call on that DTP connection) for as long as it likes, here 600 s
    backend = TricklingBackend(where)
    proxy = JsonRpcHttpProxy(backend.url, timeout=1.0)
    answers: list[bytes | None] = []
    caller = threading.Thread(target=lambda: answers.append(proxy(DOC)), daemon=True)
    try:
        caller.start()
        caller.join(45)
        assert not caller.is_alive(), "the proxy waited on past its timeout"
        assert answers[0] is not None
        assert json.loads(answers[0])["error"]["code"] == E.INTERNAL_ERROR
    finally:
        backend.close()
        caller.join(10)
        proxy.close()


def test_a_trickling_backend_leaves_the_dtp_connection_usable() -> None:
    # handlers inline (the default): the stream's thread, held by the proxy, is free
    # for the next request on that DTP connection at the proxy's timeout, not when the
    # backend is done (600 s)
    backend = TricklingBackend("body", first_only=True)
    try:
        with _proxied_over_dtp(JsonRpcHttpProxy(backend.url, timeout=1.0), 40) as client:
            with pytest.raises(E.InternalError):
                client.call("m")
            # (a new client: its first call has id 1, the id of the backend's answer)
            assert JsonRpcClient(client.client).call("m") == "x" * 200
    finally:
        backend.close()


class _AddedAtTheEnd(list[str]):
    """``ResponsePrepay.unanswered`` with another thread's escrow added the moment the
    list is found empty or fully walked: the interleaving of a call that gave up just as
    refund_due finished its pass, made deterministic."""

    def __init__(self, items: list[str], late: str) -> None:
        super().__init__(items)
        self.late: str | None = late

    def _add_late(self) -> None:
        if self.late is not None:
            late, self.late = self.late, None
            self.append(late)

    def __iter__(self) -> Any:
        yield from super().__iter__()
        self._add_late()

    def pop(self, index: Any = -1) -> str:
        if not self:
            self._add_late()
            raise IndexError("pop from empty list")
        return super().pop(index)


def test_refund_due_keeps_an_escrow_added_as_it_finishes() -> None:
    """An escrow another thread adds to ``unanswered`` just as ``refund_due`` ends its
    pass stays there for the next pass (and is refunded by it): the list is never
    replaced whole by the escrows kept."""
    ledger = LocalLedger(":memory:", clock_ms=1_000)
    client, server = HostIdentity.generate(), HostIdentity.generate()
    ledger.faucet(client.sui_address, 1_000)
    prepay = ResponsePrepay(ledger, client, server.sui_address, 10, grace_ms=0)
    first, late = prepay.deposit(0.1), prepay.deposit(0.1)
    prepay.unanswered = _AddedAtTheEnd([first], late)
    ledger.advance_clock(10_000)
    assert prepay.refund_due() == 10  # the first; the late one came after the pass
    assert list(prepay.unanswered) == [late]
    assert prepay.refund_due() == 10
    assert list(prepay.unanswered) == []
    assert ledger.balance(client.sui_address) == 1_000


#: "Does not hang" bound (a loaded 2-core machine).
BOUND = 30.0

Request = tuple[bytes, dict[str, str], bytes]


def read_request(rfile: Any) -> Request | None:
    """One HTTP request (request line, lower-case headers, body); None at EOF."""
    line = rfile.readline()
    if not line:
        return None
    headers: dict[str, str] = {}
    while (header := rfile.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = header.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return line, headers, rfile.read(int(headers.get("content-length", "0")))


def reply(sock: socket.socket, body: bytes, status: str = "200 OK") -> None:
    sock.sendall(
        b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (status.encode(), len(body), body)
    )


def echo(request: Request) -> bytes:
    """The answer of a backend that returns each request's id as its result."""
    id_ = json.loads(request[2])["id"]
    return json.dumps({"jsonrpc": "2.0", "result": id_, "id": id_}).encode()


class RawBackend:
    """An HTTP backend on a raw TCP socket: ``handler(backend, sock, rfile)`` serves each
    connection in a thread of its own; ``requests`` holds every request read (by
    :meth:`read`), ``open`` the connections not yet closed."""

    def __init__(self, handler: Callable[[RawBackend, socket.socket, Any], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/"
        self.port = self.listener.getsockname()[1]
        self.handler = handler
        self.lock = threading.Lock()
        self.requests: list[Request] = []
        self.open = 0
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def read(self, rfile: Any) -> Request | None:
        request = read_request(rfile)
        if request is not None:
            with self.lock:
                self.requests.append(request)
        return request

    def bodies(self) -> list[bytes]:
        with self.lock:
            return [r[2] for r in self.requests]

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.open += 1
                self.connections += 1
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            with sock, sock.makefile("rb") as rfile:
                self.handler(self, sock, rfile)
        except OSError:
            pass
        finally:
            with self.lock:
                self.open -= 1

    def close(self) -> None:
        # (shut down first: a bare close leaves the accepting thread blocked in accept)
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


def echo_all(backend: RawBackend, sock: socket.socket, rfile: Any) -> None:
    while (request := backend.read(rfile)) is not None:
        reply(sock, echo(request))


def doc(id_: Any, method: str = "eth_sendRawTransaction") -> bytes:
    return json.dumps({"jsonrpc": "2.0", "method": method, "params": [], "id": id_}).encode()


def dead_url() -> str:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        return f"http://127.0.0.1:{listener.getsockname()[1]}/"


# -- never sent twice -----------------------------------------------------------------


def test_a_document_the_backend_read_is_not_sent_again() -> None:
    # the backend reads the second document, acts on it and the connection drops (a
    # crash, a restart) before it answers: the old proxy sent it again on a new
    # connection, and the transaction ran twice
    def handler(backend: RawBackend, sock: socket.socket, rfile: Any) -> None:
        while (request := backend.read(rfile)) is not None:
            if len(backend.bodies()) == 2:
                return
            reply(sock, echo(request))

    backend = RawBackend(handler)
    proxy = JsonRpcHttpProxy(backend.url, timeout=BOUND)
    try:
        assert json.loads(proxy(doc(1)) or b"")["result"] == 1
        failed = json.loads(proxy(doc(2)) or b"")
        assert failed["error"]["code"] == E.INTERNAL_ERROR and failed["id"] == 2
        assert backend.bodies().count(doc(2)) == 1
    finally:
        proxy.close()
        backend.close()


def test_an_idle_connection_the_backend_closed_is_not_used() -> None:
    # the backend ends its side after the first answer (FIN) but still reads: the
    # proxy finds the closed connection before sending, so the next document goes once,
    # on a new connection (never on the closed one, then again)
    closed = threading.Event()

    def handler(backend: RawBackend, sock: socket.socket, rfile: Any) -> None:
        first = backend.connections == 1
        while (request := backend.read(rfile)) is not None:
            reply(sock, echo(request))
            if first:
                sock.shutdown(socket.SHUT_WR)
                closed.set()

    backend = RawBackend(handler)
    proxy = JsonRpcHttpProxy(backend.url, timeout=BOUND)
    try:
        assert json.loads(proxy(doc(1)) or b"")["result"] == 1
        assert closed.wait(BOUND)
        assert json.loads(proxy(doc(2)) or b"")["result"] == 2
        assert backend.bodies() == [doc(1), doc(2)]
    finally:
        proxy.close()
        backend.close()


# -- a pool of connections --------------------------------------------------------------


def test_connections_are_shared_by_threads_not_kept_per_thread() -> None:
    # with a thread per DTP connection (RpcServer's default), a connection per thread
    # left one descriptor open per client connection ever served
    backend = RawBackend(echo_all)
    proxy = JsonRpcHttpProxy(backend.url, timeout=BOUND)
    try:
        for i in range(20):
            thread = threading.Thread(target=proxy, args=(doc(i),))
            thread.start()
            thread.join(BOUND)
        assert wait_for(lambda: backend.open <= 1, timeout=BOUND)
        assert backend.connections == 1  # (each thread took the one idle connection)
        proxy.close()
        assert wait_for(lambda: backend.open == 0, timeout=BOUND)
    finally:
        proxy.close()
        backend.close()


def test_idle_connections_are_bounded() -> None:
    calls = 5
    all_in = threading.Event()

    def handler(backend: RawBackend, sock: socket.socket, rfile: Any) -> None:
        while (request := backend.read(rfile)) is not None:
            if len(backend.bodies()) >= calls:
                all_in.set()
            all_in.wait(BOUND)  # (every call on a connection of its own)
            reply(sock, echo(request))

    backend = RawBackend(handler)
    proxy = JsonRpcHttpProxy(backend.url, timeout=BOUND, max_idle=2)
    try:
        answers: list[bytes | None] = []
        threads = [
            threading.Thread(target=lambda i=i: answers.append(proxy(doc(i)))) for i in range(calls)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(BOUND)
        assert len(answers) == calls and all(b'"result"' in (a or b"") for a in answers)
        assert backend.connections == calls
        assert wait_for(lambda: backend.open == 2, timeout=BOUND)
        proxy.close()
        assert wait_for(lambda: backend.open == 0, timeout=BOUND)
    finally:
        all_in.set()
        proxy.close()
        backend.close()


def test_close_fails_a_call_in_progress() -> None:
    # the reader of the answer kept the socket open: the call went on after close(),
    # for ever with timeout=None
    got = threading.Event()
    release = threading.Event()

    def handler(backend: RawBackend, sock: socket.socket, rfile: Any) -> None:
        request = backend.read(rfile)
        got.set()
        release.wait(BOUND)
        if request is not None:
            reply(sock, echo(request))

    backend = RawBackend(handler)
    proxy = JsonRpcHttpProxy(backend.url, timeout=None)
    answers: list[bytes | None] = []
    caller = threading.Thread(target=lambda: answers.append(proxy(doc(1))), daemon=True)
    try:
        caller.start()
        assert got.wait(BOUND)
        proxy.close()
        caller.join(BOUND)
        assert not caller.is_alive(), "close() left the call waiting for the backend"
        failed = json.loads(answers[0] or b"")
        assert failed["error"] == {"code": E.INTERNAL_ERROR, "message": "backend unreachable"}
        assert failed["id"] == 1
    finally:
        release.set()
        caller.join(BOUND)
        proxy.close()
        backend.close()


# -- the proxy's own answers ------------------------------------------------------------


def test_the_proxys_errors_answer_each_request() -> None:
    proxy = JsonRpcHttpProxy(dead_url(), timeout=BOUND)
    single = json.loads(proxy(doc("a-7")) or b"")
    assert single["id"] == "a-7" and single["error"]["code"] == E.INTERNAL_ERROR
    batch = json.loads(
        proxy(
            b'[{"jsonrpc":"2.0","method":"a","id":1},{"jsonrpc":"2.0","method":"log"},'
            b'{"jsonrpc":"2.0","method":"b","id":2.5},{"jsonrpc":"2.0","method":"c","id":[1]},5]'
        )
        or b""
    )
    assert isinstance(batch, list)
    assert [a["id"] for a in batch] == [1, 2.5, None, None]  # (an id that is no id: null)
    assert all(a["error"]["code"] == E.INTERNAL_ERROR for a in batch)
    assert proxy(b'{"jsonrpc":"2.0","method":"log"}') is None
    assert proxy(b'[{"jsonrpc":"2.0","method":"log"},{"jsonrpc":"2.0","method":"x"}]') is None
    unreadable = json.loads(proxy(b'{"jsonrpc":"2.0",') or b"")
    assert unreadable["id"] is None and unreadable["error"]["code"] == E.INTERNAL_ERROR


def test_a_batch_of_tiny_entries_gets_one_error_not_one_each() -> None:
    """A 1 MiB batch of ``0,0,...`` sent to a proxy whose
    backend was down became an answer of ~49 MB, one error per entry."""
    proxy = JsonRpcHttpProxy(dead_url(), timeout=BOUND)
    document = ("[" + ",".join(["0"] * ((MAX_JSON - 2) // 2)) + "]").encode()
    assert len(document) <= MAX_JSON
    answer = proxy(document) or b""
    assert len(answer) <= MAX_JSON
    lone = json.loads(answer)
    assert lone["id"] is None and lone["error"]["code"] == E.INTERNAL_ERROR
    small = json.loads(proxy(b"[0, 1]") or b"")  # (a small batch keeps its errors)
    assert [a["id"] for a in small] == [None, None]
    # one request whose id is written escaped (6 bytes a character) is capped too
    long_id = "\u00e9" * ((MAX_JSON - 64) // 2)
    single = json.dumps({"jsonrpc": "2.0", "method": "m", "id": long_id}, ensure_ascii=False)
    assert len(single.encode()) <= MAX_JSON
    answer = proxy(single.encode()) or b""
    assert len(answer) <= MAX_JSON and json.loads(answer)["id"] is None


def test_an_http_error_answer_has_the_requests_id() -> None:
    def handler(backend: RawBackend, sock: socket.socket, rfile: Any) -> None:
        while backend.read(rfile) is not None:
            reply(sock, b"<h1>oops</h1>", "502 Bad Gateway")

    backend = RawBackend(handler)
    proxy = JsonRpcHttpProxy(backend.url, timeout=BOUND)
    try:
        answer = json.loads(proxy(doc(9)) or b"")
        assert answer["id"] == 9 and answer["error"]["message"] == "backend HTTP 502"
    finally:
        proxy.close()
        backend.close()


def test_a_2xx_answer_that_is_not_json_is_an_error() -> None:
    # (a gateway's HTML page went through as the backend's answer)
    def handler(backend: RawBackend, sock: socket.socket, rfile: Any) -> None:
        while (request := backend.read(rfile)) is not None:
            html = len(backend.bodies()) == 1
            reply(sock, b"<html>maintenance</html>" if html else echo(request))

    backend = RawBackend(handler)
    proxy = JsonRpcHttpProxy(backend.url, timeout=BOUND)
    try:
        answer = json.loads(proxy(doc(1)) or b"")
        assert answer["id"] == 1
        assert answer["error"] == {
            "code": E.INTERNAL_ERROR,
            "message": "backend answered non-JSON",
        }
        assert json.loads(proxy(doc(2)) or b"")["result"] == 2  # (the connection is fine)
    finally:
        proxy.close()
        backend.close()


# -- the URL ----------------------------------------------------------------------------


def test_url_credentials_are_sent_as_basic_authentication() -> None:
    backend = RawBackend(echo_all)
    proxy = JsonRpcHttpProxy(f"http://us%20er:p%40ss:w@127.0.0.1:{backend.port}/rpc", timeout=BOUND)
    try:
        assert json.loads(proxy(doc(1)) or b"")["result"] == 1
        line, headers, _ = backend.requests[0]
        assert line.startswith(b"POST /rpc ")
        assert headers["authorization"] == "Basic " + base64.b64encode(b"us er:p@ss:w").decode()
        assert headers["host"] == f"127.0.0.1:{backend.port}"  # (no userinfo in it)
    finally:
        proxy.close()
        backend.close()


def test_a_non_ascii_path_is_percent_encoded() -> None:
    backend = RawBackend(echo_all)
    proxy = JsonRpcHttpProxy(
        f"http://127.0.0.1:{backend.port}/rpc/caf\u00e9?k=%41 b", timeout=BOUND
    )
    try:
        # every call raised UnicodeEncodeError out of the proxy
        assert json.loads(proxy(doc(1)) or b"")["result"] == 1
        assert backend.requests[0][0] == b"POST /rpc/caf%C3%A9?k=%41%20b HTTP/1.1\r\n"
    finally:
        proxy.close()
        backend.close()


def test_a_host_name_that_cannot_be_connected_to_is_refused_at_once() -> None:
    # connecting raised UnicodeError (an empty label) out of every call
    with pytest.raises(ValueError, match="not an http"):
        JsonRpcHttpProxy("http://rpc..example/")


# -- JsonRpcHandler and JsonRpcClient ----------------------------------------------------


@pytest.mark.parametrize("result", [{1: "a", "1": "b"}, {"x": [{None: 1}]}, {True: 1}])
def test_a_result_with_a_name_that_is_not_a_str_is_an_internal_error(result: Any) -> None:
    handler = JsonRpcHandler({"m": lambda params: result, "ok": lambda params: {"1": 1}})
    answer = _loads(
        handler(b'[{"jsonrpc":"2.0","method":"m","id":1},{"jsonrpc":"2.0","method":"ok","id":2}]')
        or b""
    )
    assert answer == [
        {
            "jsonrpc": "2.0",
            "error": {"code": -32603, "message": "Internal error (TypeError)"},
            "id": 1,
        },
        {"jsonrpc": "2.0", "result": {"1": 1}, "id": 2},
    ]


class _Answering:
    """In place of an RpcClient: answers every call with ``answer(request)``."""

    def __init__(self, answer: Callable[[dict[str, Any]], Any]) -> None:
        self.answer = answer

    def call(self, method: str, params: Any, **kw: Any) -> Any:
        return json.dumps(self.answer(json.loads(params))).encode()


def client(answer: Callable[[dict[str, Any]], Any]) -> JsonRpcClient:
    return JsonRpcClient(cast(RpcClient, _Answering(answer)))


def test_the_client_refuses_an_answer_to_another_request() -> None:
    other = client(lambda r: {"jsonrpc": "2.0", "result": "not yours", "id": r["id"] + 1})
    with pytest.raises(E.MalformedMessage, match="another request"):
        other.call("m")
    as_str = client(lambda r: {"jsonrpc": "2.0", "result": 1, "id": str(r["id"])})
    with pytest.raises(E.MalformedMessage, match="another request"):
        as_str.call("m")
    # an error the service could not tie to the request (id null, JSON-RPC 2.0 §5.1)
    null = client(
        lambda r: {"jsonrpc": "2.0", "error": {"code": -32600, "message": "x"}, "id": None}
    )
    with pytest.raises(E.InvalidRequest):
        null.call("m")
    fine = client(lambda r: {"jsonrpc": "2.0", "result": r["method"], "id": r["id"]})
    assert [fine.call("a"), fine.call("b")] == ["a", "b"]


def test_the_client_refuses_an_answer_with_both_result_and_error() -> None:
    both = client(
        lambda r: {
            "jsonrpc": "2.0",
            "result": 1,
            "error": {"code": -32000, "message": "x"},
            "id": r["id"],
        }
    )
    with pytest.raises(E.MalformedMessage, match="both result and error"):
        both.call("m")
