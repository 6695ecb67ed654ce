"""s17 review of the messaging layer: the JSON-RPC HTTP proxy against a real local
``http.server`` backend that misbehaves, directly and through a real DTP connection.

A backend that ends its answer before the Content-Length it announced: http.client's
``read(amt)`` hands back the part it got without a word, so the proxy passed the cut
bytes on as the backend's answer, and kept the connection, whose unread response made
the next request sent on it fail (ResponseNotReady, once it was sent on the dead
connection): a healthy backend's next caller was told "backend unreachable".

A backend that answers a byte now and then: the proxy's timeout was each socket read's,
so it waited as long as the backend liked, holding the RpcServer's thread (with inline
handlers, every later request on that DTP connection) long past the call's deadline."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

import dtp.socket
from dtp.chain.local import LocalLedger
from dtp.keys import HostIdentity
from dtp.messaging import errors as E
from dtp.messaging.jsonrpc import JsonRpcClient, JsonRpcHttpProxy, serve_jsonrpc
from dtp.messaging.rpc import ResponsePrepay, RpcClient, RpcServer
from tests.http_backends import HttpBackend

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
        # the half answer used to come back as the backend's
        assert first != ANSWER[: len(ANSWER) // 2]
        assert json.loads(first)["error"]["code"] == E.INTERNAL_ERROR
        # the next call on this thread used to go over the cut connection: sent, then
        # "backend unreachable"
        second = proxy(DOC)
        assert second == ANSWER
    finally:
        proxy.close()


def test_cut_backend_answer_over_dtp_is_typed_and_the_connection_stays_usable(
    backend: CuttingBackend,
) -> None:
    identity = HostIdentity.generate()
    proxy = JsonRpcHttpProxy(backend.url, timeout=30)
    # handlers inline: both calls reach the proxy in the thread that holds its connection
    rpc = RpcServer()
    serve_jsonrpc(rpc, proxy)
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=identity)
    thread = threading.Thread(target=rpc.serve, args=(server,), daemon=True)
    thread.start()
    sock = dtp.socket.create_connection(
        server.address, server_key=identity.noise_public, timeout=30
    )
    try:
        client = JsonRpcClient(RpcClient(sock, timeout=60))
        with pytest.raises(E.InternalError):
            client.call("m")
        # (a new client: its first call has id 1, the id of the backend's answer)
        assert JsonRpcClient(client.client).call("m") == "x" * 200
    finally:
        sock.close()
        server.close()
        rpc.close()
        proxy.close()
        thread.join(5)


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
    # the timeout was each read's: a backend that sends a byte now and then held the
    # caller (an RpcServer's stream thread: every later call on that DTP connection)
    # for as long as it liked, here 600 s
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
    # handlers inline (the default): the stream's thread, held by the proxy, read no
    # other request on that DTP connection until the backend was done (600 s)
    backend = TricklingBackend("body", first_only=True)
    identity = HostIdentity.generate()
    proxy = JsonRpcHttpProxy(backend.url, timeout=1.0)
    rpc = RpcServer()
    serve_jsonrpc(rpc, proxy)
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=identity)
    thread = threading.Thread(target=rpc.serve, args=(server,), daemon=True)
    thread.start()
    sock = dtp.socket.create_connection(
        server.address, server_key=identity.noise_public, timeout=30
    )
    try:
        client = JsonRpcClient(RpcClient(sock, timeout=40))
        with pytest.raises(E.InternalError):
            client.call("m")
        # (a new client: its first call has id 1, the id of the backend's answer)
        assert JsonRpcClient(client.client).call("m") == "x" * 200
    finally:
        sock.close()
        server.close()
        rpc.close()
        backend.close()
        proxy.close()
        thread.join(5)


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
    pass stays there for the next pass (and is refunded by it). Before: the list was
    replaced whole by the escrows kept, and that one was never refunded."""
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
