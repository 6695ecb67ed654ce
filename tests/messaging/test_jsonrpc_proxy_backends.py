"""The JSON-RPC service kind: the HTTP proxy against real local HTTP backends (a slow
one must get each request once; a kept-alive connection the backend closed is not used),
and JsonRpcHandler's answers for odd results and documents, directly and over DTP."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.messaging import errors as E
from dtp.messaging.jsonrpc import JsonRpcClient, JsonRpcHandler, JsonRpcHttpProxy, serve_jsonrpc
from dtp.messaging.rpc import RpcClient, RpcServer
from tests.messaging.http_backends import HttpBackend


class Backend(HttpBackend):
    """A local HTTP JSON-RPC backend that counts the POSTs it gets, answering each
    after ``delay`` seconds; with ``drop_idle`` it closes every connection after its
    answer while letting the client believe it is kept alive."""

    def __init__(self, delay: float = 0.0, *, drop_idle: bool = False) -> None:
        self.delay = delay
        self.posts: list[bytes] = []
        self.done = threading.Semaphore(0)
        self.dropped = threading.Semaphore(0)  # (drop_idle) a connection was closed
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive unless told otherwise

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                backend.posts.append(body)
                try:
                    time.sleep(backend.delay)
                    answer = b'{"jsonrpc":"2.0","result":%d,"id":1}' % len(backend.posts)
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except OSError:
                    pass  # the proxy gave up first
                finally:
                    # no "Connection: close" header: the client keeps the connection
                    self.close_connection = drop_idle
                    backend.done.release()

            def finish(self) -> None:
                super().finish()
                if drop_idle:
                    # closed here, before the test goes on (the server closes it only
                    # after this returns: a test waiting on ``done`` raced that close)
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    backend.dropped.release()

            def log_message(self, *args: Any) -> None:
                pass

        self._serve(Handler)


def call(proxy: JsonRpcHttpProxy, method: str) -> Any:
    answer = proxy(json.dumps({"jsonrpc": "2.0", "method": method, "id": 1}).encode())
    assert answer is not None
    return json.loads(answer)


def test_proxy_never_resends_a_request_the_backend_is_slow_to_answer() -> None:
    # a read timeout is not a stale connection: a resend would run the call twice
    # (eth_sendRawTransaction!) and make the caller wait twice the timeout. The backend
    # answers after 6 s: a caller that waited for it (not for the 0.5 s timeout) fails
    # the bound below, which leaves a starved machine 4 s, and a resend shows in the posts
    backend = Backend(delay=6.0)
    proxy = JsonRpcHttpProxy(backend.url, timeout=0.5)
    try:
        for kept_alive in (False, True):
            if kept_alive:  # a quick call first, so the slow one reuses its connection
                backend.delay = 0.0
                assert call(proxy, "eth_blockNumber")["result"] == 1
                assert backend.done.acquire(timeout=5)
                backend.posts.clear()
                backend.delay = 6.0
            start = time.monotonic()
            assert call(proxy, "eth_sendRawTransaction")["error"]["code"] == E.INTERNAL_ERROR
            assert time.monotonic() - start < 4.5
            assert backend.done.acquire(timeout=10)
            time.sleep(0.2)  # a resend would have arrived by now
            assert len(backend.posts) == 1
            backend.posts.clear()
    finally:
        proxy.close()
        backend.close()


def test_proxy_does_not_send_over_a_kept_alive_connection_the_backend_closed() -> None:
    backend = Backend(drop_idle=True)
    proxy = JsonRpcHttpProxy(backend.url, timeout=5)
    try:
        assert call(proxy, "a")["result"] == 1
        assert backend.dropped.acquire(timeout=10)  # closed the connection the proxy keeps
        assert call(proxy, "b")["result"] == 2  # sent once, on a new connection
        assert len(backend.posts) == 2
    finally:
        proxy.close()
        backend.close()
    # nothing listens any more: a fresh connection failing is not retried either
    assert call(proxy, "c")["error"]["code"] == E.INTERNAL_ERROR


def doc(value: object) -> bytes:
    return json.dumps(value).encode()


def refuse_with_bytes_data(params: Any) -> Any:
    raise E.InvalidParams("no", data=b"not JSON")


HANDLER = JsonRpcHandler(
    {
        "ok": lambda p: 1,
        "bytes": lambda p: b"raw",
        "nan": lambda p: float("nan"),
        "bad_data": refuse_with_bytes_data,
    }
)


def test_a_result_that_is_not_json_fails_only_its_own_answer() -> None:
    # an answer json.dumps cannot write is an INTERNAL_ERROR of its own id: not the
    # json library's message as InvalidParams, nor a batch losing every other answer
    for method in ("bytes", "nan", "bad_data"):
        answer = json.loads(HANDLER(doc({"jsonrpc": "2.0", "method": method, "id": 7})) or b"")
        assert answer["id"] == 7 and answer["error"]["code"] == E.INTERNAL_ERROR
    batch = [
        {"jsonrpc": "2.0", "method": "ok", "id": 1},
        {"jsonrpc": "2.0", "method": "bytes", "id": 2},
        {"jsonrpc": "2.0", "method": "bytes"},  # a notification: no answer at all
        {"jsonrpc": "2.0", "method": "ok", "id": 3},
    ]
    answers = json.loads(HANDLER(doc(batch)) or b"")
    assert [a.get("result") for a in answers] == [1, None, 1]
    assert answers[1]["id"] == 2 and answers[1]["error"]["code"] == E.INTERNAL_ERROR


def test_deep_nesting_nan_and_repeated_names_are_parse_errors() -> None:
    # deep nesting was an internal error with a logged traceback; NaN was accepted and
    # echoed back as an id, which is not JSON; a repeated name was read as its last
    # value, where another reader of the same bytes may take the first
    for bad in (
        b'{"jsonrpc": "2.0", "method": "bytes", "method": "ok", "id": 1}',
        b'{"jsonrpc": "2.0", "method": "ok", "params": {"a": 1, "a": 2}, "id": 1}',
        b'[{"jsonrpc": "2.0", "method": "ok", "id": 1, "id": 2}]',
        b'{"jsonrpc": "2.0", "method": "ok", "params": [1e400], "id": 1}',
        b'{"jsonrpc": "2.0", "method": "ok", "params": [-2.5E+999], "id": 1}',
        b"[" * 200_000,
        b'{"jsonrpc": "2.0", "method": "ok", "id": NaN}',
        b'{"jsonrpc": "2.0", "method": "ok", "params": [Infinity], "id": 1}',
        b'[{"jsonrpc": "2.0", "method": "ok", "id": -Infinity}]',
    ):
        answer = HANDLER(bad)
        assert answer is not None
        parsed = json.loads(answer, parse_constant=lambda name: pytest.fail(name))
        assert parsed == {
            "jsonrpc": "2.0",
            "error": {"code": E.PARSE_ERROR, "message": "Parse error"},
            "id": None,
        }


def test_client_refuses_an_answer_with_repeated_names() -> None:
    identity = HostIdentity.generate()
    rpc = RpcServer()
    serve_jsonrpc(rpc, lambda doc: b'{"jsonrpc": "2.0", "result": 1, "result": 2, "id": 1}')
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=identity)
    thread = threading.Thread(target=rpc.serve_forever, args=(server,), daemon=True)
    thread.start()
    sock = dtp.socket.create_connection(server.address, server_key=identity.noise_public, timeout=5)
    try:
        with pytest.raises(E.MalformedMessage, match="invalid JSON"):
            JsonRpcClient(RpcClient(sock, timeout=5)).call("ok")
    finally:
        sock.close()
        server.close()
        rpc.close()
        thread.join(5)


def test_handler_answers_over_dtp() -> None:
    identity = HostIdentity.generate()
    rpc = RpcServer()
    serve_jsonrpc(rpc, HANDLER)
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=identity)
    thread = threading.Thread(target=rpc.serve_forever, args=(server,), daemon=True)
    thread.start()
    sock = dtp.socket.create_connection(server.address, server_key=identity.noise_public, timeout=5)
    try:
        raw = RpcClient(sock, timeout=5)
        client = JsonRpcClient(raw)
        assert client.call("ok") == 1
        with pytest.raises(E.InternalError):
            client.call("bytes")
        with pytest.raises(ValueError):
            client.call("ok", [float("nan")])  # not sent: it is not JSON
        answer = json.loads(raw.call("jsonrpc", b"[" * 200_000))
        assert answer["error"]["code"] == E.PARSE_ERROR
        assert client.call("ok") == 1
    finally:
        sock.close()
        server.close()
        rpc.close()
        thread.join(5)
