"""RpcClient.close() / RpcServer.close() with calls waiting for handlers that
block. The report: close() left such a call waiting out its own timeout,
and a blocked handler held up unrelated calls on its connection.

Neither reproduces as a defect: the client's close() fails every call in flight at once
with RpcConnectionLost (the typed error of a connection that ended with calls pending),
from any thread, whatever the call waits in; RpcServer.close() fails no call by design
(connections stay open, as with asyncio.Server.close); and an inline server
(``workers=0``, the default) serves one request at a time per stream by design (a pool
serves them concurrently). These tests pin that down. Real DTP connections on
127.0.0.1; the handlers block on an Event set at the end."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.messaging import errors as E
from dtp.messaging.rpc import RpcClient, RpcServer
from tests.messaging.rpc_world import Served
from tests.support.polling import wait_for

#: The longest a call may take to fail once its client is closed (seconds).
PROMPT = 2.0


class Blocking:
    """An RpcServer over DTP with a ``block`` handler that waits for :attr:`release`."""

    def __init__(self, workers: int) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.rpc = RpcServer(workers=workers)
        self.rpc.register("block", self._block)
        self.rpc.register("echo", lambda p: p)
        self.served = Served(self.rpc)

    def _block(self, params: Any) -> str:
        self.entered.set()
        return "released" if self.release.wait(30) else "not released"

    def close(self) -> None:
        self.release.set()
        self.served.close()


@pytest.fixture(params=[0, 4], ids=["inline", "pool"])
def blocking(request: pytest.FixtureRequest) -> Iterator[Blocking]:
    b = Blocking(request.param)
    yield b
    b.close()


class Outcome:
    """``run()`` in a thread of its own: what it returned or raised, and when."""

    def __init__(self, run: Any) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.ended: float | None = None
        self.thread = threading.Thread(target=self._target, args=(run,), daemon=True)
        self.thread.start()

    def _target(self, run: Any) -> None:
        try:
            self.value = run()
        except BaseException as exc:
            self.error = exc
        self.ended = time.monotonic()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "still waiting"


@pytest.mark.parametrize("how", ["call", "start"])
def test_close_fails_a_call_waiting_for_a_blocked_handler_at_once(
    blocking: Blocking, how: str
) -> None:
    """A call with a 10 s timeout waits for a handler that blocks; close() fails it
    within moments with RpcConnectionLost (not RpcTimeout at its deadline), a second
    close() is harmless, and everything after it fails at once, typed."""
    client = blocking.served.connect()
    assert client.call("echo", 1, timeout=5) == 1
    if how == "call":
        waiting = Outcome(lambda: client.call("block", timeout=10.0))
    else:
        waiting = Outcome(lambda: client.start("block", timeout=10.0).result())
    assert blocking.entered.wait(5)
    closed = time.monotonic()
    client.close()
    waiting.join(PROMPT + 1)
    assert isinstance(waiting.error, E.RpcConnectionLost), waiting.error
    assert waiting.ended is not None and waiting.ended - closed < PROMPT
    client.close()  # again: nothing more to do
    for attempt in (
        lambda: client.call("echo", 2, timeout=10.0),
        lambda: client.start("echo", 2, timeout=10.0),
        lambda: client.notify("echo", 2),
    ):
        began = time.monotonic()
        with pytest.raises(E.RpcConnectionLost):
            attempt()
        assert time.monotonic() - began < 0.5
    assert client.in_flight == 0 and not client._reading


def test_close_from_another_thread_while_a_request_is_being_sent() -> None:
    """An inline server whose handler blocks reads nothing more: requests sent after
    it wait for the peer's flow control. close() from another thread fails the call
    being sent (and the one waiting for the handler) with RpcConnectionLost within
    moments, and concurrent close() calls are harmless."""
    blocking = Blocking(workers=0)
    try:
        client = blocking.served.connect()
        blocked = client.start("block", timeout=10.0)
        assert blocking.entered.wait(5)
        started: list[float] = []

        def send_until_held() -> None:
            while True:
                started.append(time.monotonic())
                client.start("echo", b"x" * (256 * 1024), timeout=10.0)

        sender = Outcome(send_until_held)
        # held once one start() has not returned for a while (nothing to wait on: the
        # send waits in the stream for the peer's window)
        assert wait_for(lambda: started and time.monotonic() - started[-1] > 0.3, 10)
        closers = [threading.Thread(target=client.close) for _ in range(2)]
        closed = time.monotonic()
        for closer in closers:
            closer.start()
        sender.join(PROMPT + 1)
        for closer in closers:
            closer.join(PROMPT)
            assert not closer.is_alive()
        assert isinstance(sender.error, E.RpcConnectionLost), sender.error
        assert sender.ended is not None and sender.ended - closed < PROMPT
        with pytest.raises(E.RpcConnectionLost):
            blocked.result()
    finally:
        blocking.close()


class OneConnection:
    """A DTP server whose one connection an RpcServer serves (serve_connection), the
    server's end of it kept (:attr:`conn`), and a client connected to it."""

    def __init__(self, rpc: RpcServer) -> None:
        identity = HostIdentity.generate()
        self.listener = dtp.socket.create_server(("127.0.0.1", 0), identity=identity)
        self.conns: list[dtp.socket.DTPSocket] = []
        self.serving = threading.Thread(target=self._serve, args=(rpc,), daemon=True)
        self.serving.start()
        self.sock = dtp.socket.create_connection(
            self.listener.address, server_key=identity.noise_public, timeout=10
        )

    def _serve(self, rpc: RpcServer) -> None:
        sock, _ = self.listener.accept(timeout=10)
        self.conns.append(sock)
        rpc.serve_connection(sock)

    def close(self) -> None:
        self.sock.close()
        self.listener.close()


@pytest.mark.parametrize("workers", [0, 2], ids=["inline", "pool"])
def test_server_close_returns_at_once_and_fails_no_call(workers: int) -> None:
    """RpcServer.close() waits for no handler and ends no connection (by design, as
    asyncio.Server.close): with a pool, a new request on the open stream is refused
    SERVER_BUSY at once, and the call waiting for the running handler gets its answer
    when it returns. Closing the connection (the server's DTPSocket) is what ends a
    call in flight at once: RpcConnectionLost."""
    release, entered = threading.Event(), threading.Event()
    rpc = RpcServer(workers=workers)
    rpc.register("block", lambda p: entered.set() or (release.wait(30) and "released"))
    rpc.register("echo", lambda p: p)
    one = OneConnection(rpc)
    try:
        client = RpcClient(one.sock)
        assert client.call("echo", 1, timeout=5) == 1
        blocked = client.start("block", timeout=10.0)
        assert entered.wait(5)
        began = time.monotonic()
        rpc.close()
        assert time.monotonic() - began < 0.5
        assert not blocked.done
        if workers:
            with pytest.raises(E.ServerBusy):
                client.call("echo", 2, timeout=5.0)
            release.set()
            assert blocked.result(5) == "released"
        else:
            # the inline handler goes on: the call waits for it, until the server's
            # end of the connection is closed
            closed = time.monotonic()
            one.conns[0].close()
            waiting = Outcome(lambda: blocked.result(10.0))
            waiting.join(PROMPT + 1)
            assert isinstance(waiting.error, E.RpcConnectionLost), waiting.error
            assert waiting.ended is not None and waiting.ended - closed < PROMPT
            release.set()
            one.serving.join(5)  # the stream's thread ends with its connection
            assert not one.serving.is_alive()
    finally:
        release.set()
        one.close()


def test_an_inline_server_serves_one_request_at_a_time_per_stream_by_design() -> None:
    """(2) of the report: with ``workers=0`` a blocked handler holds up later calls on
    its stream (RpcTimeout at their deadline; the stream stays usable), while a stream
    opened before is served by its own thread; a pool serves the unrelated call at
    once on the same stream."""
    for workers in (0, 2):
        blocking = Blocking(workers)
        try:
            client = blocking.served.connect()
            assert client.call("echo", 1, timeout=5) == 1
            other = RpcClient(blocking.served.socks[0].open_stream())
            assert other.call("echo", 1, timeout=5) == 1
            blocked = client.start("block", timeout=10.0)
            assert blocking.entered.wait(5)
            assert other.call("echo", 2, timeout=5) == 2
            if workers:
                assert client.call("echo", 3, timeout=5) == 3
            else:
                with pytest.raises(E.RpcTimeout):
                    client.call("echo", 3, timeout=0.3)
            blocking.release.set()
            assert blocked.result(5) == "released"
            assert client.call("echo", 4, timeout=5) == 4
        finally:
            blocking.close()
