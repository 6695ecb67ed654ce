"""JsonRpcHttpProxy.close() closes every kept-alive backend connection of the proxy,
whichever thread used it (a pool's workers, stream threads), not only the closing
thread's: none stays open until its thread ends, to be dropped unclosed
(ResourceWarning).

JsonRpcHttpProxy.close() cuts short a call still connecting to its backend: the
proxy's sockets are noted before they connect, so close() shuts the connecting one
down and the connect ends at once: a backend that does not answer the SYN (a full
accept queue, a firewall that drops) does not hold the call, and so close(), for the
whole timeout.

JsonRpcHttpProxy.close() against a call in each stage of connecting, and a proxy
dropped without close().

- close() just before the connect starts (its socket noted, connect(2) not called yet):
  the connect waits in poll, which the shutdown ends (a blocking connect started after
  the shutdown would go on for the kernel's whole SYN retries with ``timeout=None``).
- close() during an HTTPS connection's TLS handshake: a duplicate of the socket is
  noted, since the TLS wrapping takes the socket object's descriptor over first, so
  the shutdown ends the handshake rather than leave it to the timeout.
- A proxy dropped without close() closes its idle connections when its last reference
  goes (no bound method on a connection makes a reference cycle that would keep them
  until the cyclic collector runs)."""

from __future__ import annotations

import contextlib
import gc
import json
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from bench.netpeers import make_tls_context
from dtp.messaging import errors as E
from dtp.messaging.jsonrpc import JsonRpcHttpProxy
from tests.messaging.http_backends import HttpBackend
from tests.support.polling import wait_for

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


@pytest.fixture
def unanswered() -> Iterator[str]:
    """The URL of a listener whose accept queue is full: a new connect's SYN is dropped,
    and the connect waits (the kernel retries the SYN for a long time)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    address = listener.getsockname()
    fillers = []
    for _ in range(3):
        sock = socket.socket()
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect(address)
        fillers.append(sock)
    time.sleep(0.2)
    # (the premise: a plain connect now waits)
    probe = socket.socket()
    probe.settimeout(0.3)
    with pytest.raises(TimeoutError):
        probe.connect(address)
    probe.close()
    try:
        yield f"http://127.0.0.1:{address[1]}/"
    finally:
        for sock in fillers:
            sock.close()
        listener.close()


def test_close_cuts_short_a_call_that_is_connecting(unanswered: str) -> None:
    proxy = JsonRpcHttpProxy(unanswered, timeout=30)
    answers: list[bytes | None] = []
    caller = threading.Thread(
        target=lambda: answers.append(proxy(b'{"jsonrpc":"2.0","method":"m","id":3}')),
        daemon=True,
    )
    caller.start()
    time.sleep(0.3)  # connecting by now
    start = time.monotonic()
    proxy.close()
    caller.join(10)
    assert not caller.is_alive(), "close() left the call connecting"
    assert time.monotonic() - start < 5  # (not the 30 s timeout)
    failed = json.loads(answers[0] or b"")
    assert failed["error"] == {"code": E.INTERNAL_ERROR, "message": "backend unreachable"}
    assert failed["id"] == 3


__all__ = ["unanswered"]  # (the fixture, imported for the tests below)

CALL = b'{"jsonrpc":"2.0","method":"m","id":7}'


def _unreachable(answer: bytes | None) -> None:
    failed = json.loads(answer or b"")
    assert failed["error"] == {"code": E.INTERNAL_ERROR, "message": "backend unreachable"}
    assert failed["id"] == 7


def _call_in_thread(proxy: JsonRpcHttpProxy) -> tuple[threading.Thread, list[bytes | None]]:
    answers: list[bytes | None] = []
    caller = threading.Thread(target=lambda: answers.append(proxy(CALL)), daemon=True)
    caller.start()
    return caller, answers


def test_close_just_before_the_connect_starts(
    unanswered: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connect is held at its start until close() has run (its socket is noted by
    then); with ``timeout=None`` the call must still end at once."""
    about_to_connect = threading.Event()
    closed = threading.Event()
    port = int(unanswered.rstrip("/").rsplit(":", 1)[1])

    def held(original: Any) -> Any:
        def connect(sock: socket.socket, address: Any) -> Any:
            if address[1] == port and not about_to_connect.is_set():
                about_to_connect.set()
                assert closed.wait(10)
            return original(sock, address)

        return connect

    monkeypatch.setattr(socket.socket, "connect", held(socket.socket.connect))
    monkeypatch.setattr(socket.socket, "connect_ex", held(socket.socket.connect_ex))
    proxy = JsonRpcHttpProxy(unanswered, timeout=None)
    caller, answers = _call_in_thread(proxy)
    assert about_to_connect.wait(10)
    proxy.close()
    closed.set()
    start = time.monotonic()
    caller.join(10)
    assert not caller.is_alive(), "a close() before the connect left it connecting"
    assert time.monotonic() - start < 5
    _unreachable(answers[0])


@pytest.fixture
def silent_tls() -> Iterator[int]:
    """A listener that accepts and then says nothing: a TLS handshake with it waits."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        for sock in accepted:
            sock.close()
        listener.close()


def test_close_during_the_tls_handshake(silent_tls: int) -> None:
    proxy = JsonRpcHttpProxy(f"https://127.0.0.1:{silent_tls}/", timeout=30)
    caller, answers = _call_in_thread(proxy)
    time.sleep(0.5)  # in the handshake by now: the server never answers the hello
    assert caller.is_alive()
    start = time.monotonic()
    proxy.close()
    caller.join(10)
    assert not caller.is_alive(), "close() left the call in its TLS handshake"
    assert time.monotonic() - start < 5  # (not the 30 s timeout)
    _unreachable(answers[0])
    # the duplicate noted for the handshake is closed, nothing else left noted
    assert not proxy._dups and not proxy._busy


def test_a_failed_https_connect_closes_its_duplicate(silent_tls: int) -> None:
    """Given up by its own timeout (no close()), the handshake's duplicate socket is
    closed with the connection."""
    proxy = JsonRpcHttpProxy(f"https://127.0.0.1:{silent_tls}/", timeout=0.5)
    _unreachable(proxy(CALL))
    assert not proxy._dups and not proxy._busy
    proxy.close()


class _KeepAlive(HttpBackend):
    """An HTTP/1.1 backend that keeps connections alive and tells when one closes."""

    def __init__(self) -> None:
        self.closed = threading.Semaphore(0)
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                answer = b'{"jsonrpc":"2.0","result":1,"id":7}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def finish(self) -> None:
                super().finish()
                backend.closed.release()

            def log_message(self, *args: Any) -> None:
                pass

        self._serve(Handler)


def test_a_dropped_proxy_closes_its_idle_connections_without_the_collector() -> None:
    backend = _KeepAlive()
    gc.disable()
    try:
        proxy = JsonRpcHttpProxy(backend.url, timeout=5)
        assert json.loads(proxy(CALL) or b"")["result"] == 1
        (conn,) = proxy._idle  # kept alive for the next call
        conn_ref = weakref.ref(conn)
        del conn
        # (unclosed, its socket closes in its finalizer, with the ResourceWarning of any
        # socket dropped open)
        with pytest.warns(ResourceWarning):
            del proxy
        assert conn_ref() is None, "the idle connection outlived its proxy"
        # the backend sees the connection end
        assert backend.closed.acquire(timeout=5)
    finally:
        gc.enable()
        backend.close()


def test_https_calls_through_the_noted_duplicate(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An HTTPS backend answers through the proxy (connect, handshake, kept-alive
    reuse), and no duplicate socket is left behind."""
    server_ctx, cert_pem = make_tls_context()  # (a throwaway certificate for localhost)
    cert = tmp_path / "cert.pem"
    cert.write_text(cert_pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # (the proxy's default context trusts it)
    backend = _KeepAlive()
    backend.httpd.socket = server_ctx.wrap_socket(backend.httpd.socket, server_side=True)
    port = backend.httpd.server_address[1]
    try:
        proxy = JsonRpcHttpProxy(f"https://localhost:{port}/rpc", timeout=5)
        for _ in range(3):
            assert json.loads(proxy(CALL) or b"")["result"] == 1
        assert len(proxy._idle) == 1  # one connection, kept alive and used again
        assert not proxy._dups and not proxy._busy
        proxy.close()
    finally:
        backend.close()
