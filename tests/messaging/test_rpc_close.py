"""RpcClient.close() / AsyncRpcClient.close() racing calls in flight from other threads
and tasks: every call ends with RpcConnectionLost soon after, whatever it was waiting
for (its answer, the peer taking its request, notification handlers its thread runs),
and close() returns, also from a notification handler. Real DTP connections on
127.0.0.1; the peer's handlers block on an Event the test sets at the end."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import dtp.aio
import dtp.errors
import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.messaging import errors as E
from dtp.messaging._protocol import RequestReceived, RpcProtocol
from dtp.messaging.rpc import AsyncRpcClient, RpcClient, RpcServer
from tests.messaging.rpc_world import Served
from tests.support.polling import wait_for

#: How long anything here may take once closed (seconds): a call ends within about a
#: second, never held for good or for many minutes.
PROMPT = 30.0


class Blocked:
    """An RpcServer over DTP whose ``block`` handler waits for :attr:`release` (set at
    the end): inline (``workers=0``) it also stops reading the client's stream."""

    def __init__(self, workers: int) -> None:
        self.release = threading.Event()
        rpc = RpcServer(workers=workers)
        rpc.register("block", lambda p: self.release.wait(600) and "released")
        rpc.register("echo", lambda p: p)
        self.served = Served(rpc)

    def close(self) -> None:
        self.release.set()
        self.served.close()


@pytest.fixture
def blocked() -> Iterator[Blocked]:
    b = Blocked(workers=4)
    yield b
    b.close()


@pytest.fixture
def inline_blocked() -> Iterator[Blocked]:
    b = Blocked(workers=0)
    yield b
    b.close()


def _outcome(run: Any, into: list[BaseException | str]) -> threading.Thread:
    """A thread that runs ``run()`` and puts what it raised (or "returned") in ``into``."""

    def target() -> None:
        try:
            run()
            into.append("returned")
        except BaseException as exc:
            into.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


# -- blocking client ----------------------------------------------------------------------


def test_close_ends_a_quiet_call_a_follower_and_a_started_call(blocked: Blocked) -> None:
    """A call on a quiet stream (reading for everybody), a call waiting for that
    reader, and a started call whose result() another thread waits for, none with a
    timeout: close() ends each with RpcConnectionLost, and no thread is left."""
    client = blocked.served.connect()
    assert client.call("echo", 1) == 1  # the stream carries data: the quiet path's
    outcomes: list[BaseException | str] = []
    quiet = _outcome(lambda: client.call("block"), outcomes)
    assert wait_for(lambda: client._reading)
    started = client.start("block")
    threads = [
        quiet,
        _outcome(lambda: client.call("block"), outcomes),
        _outcome(started.result, outcomes),
    ]
    assert wait_for(lambda: client.in_flight == 3)
    closed = time.monotonic()
    client.close()
    for thread in threads:
        thread.join(PROMPT)
    assert not any(thread.is_alive() for thread in threads)
    assert time.monotonic() - closed < PROMPT
    assert len(outcomes) == 3 and all(isinstance(x, E.RpcConnectionLost) for x in outcomes)
    with pytest.raises(E.RpcConnectionLost):
        started.result()
    assert client.in_flight == 0 and not client._reading


class NotifyingPeer:
    """A DTP server that answers a ``notes`` request on the one stream it accepts with
    ``count`` notifications and then nothing (the call waits for good); it reads on."""

    def __init__(self, count: int) -> None:
        self.identity = HostIdentity.generate()
        self.server = dtp.socket.create_server(("127.0.0.1", 0), identity=self.identity)
        self.count = count
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with contextlib.suppress(dtp.errors.DTPError, OSError):
            peer, _ = self.server.accept(timeout=PROMPT)
            proto = RpcProtocol()
            with peer:
                peer.settimeout(None)
                while data := peer.recv(65536):
                    proto.receive_data(data)
                    for event in proto.events():
                        if isinstance(event, RequestReceived) and event.method == "notes":
                            for i in range(self.count):
                                proto.send_notification("tick", i)
                            peer.sendall(proto.data_to_send())

    def connect(self) -> dtp.socket.DTPSocket:
        return dtp.socket.create_connection(
            self.server.address, server_key=self.identity.noise_public, timeout=10
        )

    def close(self) -> None:
        self.server.close()
        self.thread.join(5)


@pytest.mark.parametrize("closer", ["other thread", "handler"])
def test_close_stops_the_notification_handlers_a_call_runs(closer: str) -> None:
    """The thread of a call (no timeout) runs the notifications it read; a slow
    handler, and the client closed from another thread or from the handler itself:
    the thread stops after the handler running at close(), not after every
    notification left (1200 of 0.5 s: ten minutes)."""
    peer = NotifyingPeer(1200)
    sock = peer.connect()
    ended = threading.Event()  # the test's end: handlers left run at once
    running = threading.Event()
    after_close = 0
    client: RpcClient

    def on_note(method: str, params: Any) -> None:
        nonlocal after_close
        if client._closed is not None:
            after_close += 1
        running.set()
        if closer == "handler" and params == 0:
            client.close()  # (returns: the thread's own call is failed, no wait)
        ended.wait(0.5)

    client = RpcClient(sock, on_notification=on_note)
    try:
        outcomes: list[BaseException | str] = []
        thread = _outcome(lambda: client.call("notes"), outcomes)
        assert running.wait(PROMPT)
        if closer == "other thread":
            client.close()
        closed = time.monotonic()
        thread.join(PROMPT)
        assert not thread.is_alive(), "the call's thread still runs notification handlers"
        assert time.monotonic() - closed < PROMPT
        assert len(outcomes) == 1 and isinstance(outcomes[0], E.RpcConnectionLost), outcomes
        assert after_close <= 1
    finally:
        ended.set()
        sock.close()
        peer.close()


def test_close_ends_a_notification_the_peer_does_not_take(inline_blocked: Blocked) -> None:
    """notify() (no timeout) waiting for the peer's flow control, as a request does:
    close() ends it with RpcConnectionLost."""
    client = inline_blocked.served.connect(max_message_size=4 << 20)
    client.start("block")  # the inline server reads no more of this stream
    outcomes: list[BaseException | str] = []

    def notify() -> None:
        for _ in range(40):  # 36 MB: far more than the peer's window
            client.notify("x", b"y" * 900_000)

    thread = _outcome(notify, outcomes)
    assert not wait_for(lambda: not thread.is_alive(), 1.0)  # held up by the peer
    closed = time.monotonic()
    client.close()
    thread.join(PROMPT)
    assert not thread.is_alive()
    assert time.monotonic() - closed < PROMPT
    assert len(outcomes) == 1 and isinstance(outcomes[0], E.RpcConnectionLost), outcomes


# -- asyncio client -----------------------------------------------------------------------


async def _connect(served: Served, **kw: Any) -> tuple[AsyncRpcClient, Any, Any]:
    host, port = served.server.address
    reader, writer = await dtp.aio.open_connection(
        host, port, server_key=served.identity.noise_public, timeout=10
    )
    return AsyncRpcClient(reader, writer, **kw), reader, writer


def test_async_close_ends_calls_and_notifications_the_peer_does_not_take(
    inline_blocked: Blocked,
) -> None:
    """Requests and notifications (no timeout) waiting in drain() for a peer that
    reads no more: close() ends each, the sends too, with RpcConnectionLost."""

    async def main() -> None:
        client, _, writer = await _connect(inline_blocked.served, max_message_size=4 << 20)
        try:
            first = asyncio.ensure_future(client.call("block"))
            await asyncio.sleep(0.2)  # (the server runs it, inline: it reads no more)
            tasks = [asyncio.ensure_future(client.call("x", b"y" * 900_000)) for _ in range(40)]
            tasks += [asyncio.ensure_future(client.notify("x", b"y" * 900_000))]
            done, _ = await asyncio.wait(tasks, timeout=1.0)
            assert len(done) < len(tasks)  # held up by the peer
            closed = time.monotonic()
            await asyncio.wait_for(client.close(), PROMPT)
            done, pending = await asyncio.wait([first, *tasks], timeout=PROMPT)
            assert not pending, f"{len(pending)} sends still wait after close()"
            assert time.monotonic() - closed < PROMPT
            errors = [t.exception() for t in done]
            assert all(isinstance(e, E.RpcConnectionLost) for e in errors), errors
        finally:
            await client.close()
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())


def test_async_close_from_a_notification_handler() -> None:
    """An async handler awaits close(): it returns, and the call waiting (no timeout)
    ends with RpcConnectionLost."""
    peer = NotifyingPeer(50)

    async def main() -> None:
        host, port = peer.server.address
        reader, writer = await dtp.aio.open_connection(
            host, port, server_key=peer.identity.noise_public, timeout=10
        )
        closes: list[str] = []

        async def on_note(method: str, params: Any) -> None:
            if params == 0:
                await client.close()
                closes.append("returned")

        client = AsyncRpcClient(reader, writer, on_notification=on_note)
        try:
            with pytest.raises(E.RpcConnectionLost):
                await asyncio.wait_for(client.call("notes"), PROMPT)
            assert await asyncio.to_thread(wait_for, lambda: closes == ["returned"], PROMPT)
        finally:
            await client.close()
            writer.close()
            await writer.wait_closed()

    try:
        asyncio.run(main())
    finally:
        peer.close()


def test_async_client_closed_before_use_leaves_the_stream_to_its_owner(
    blocked: Blocked,
) -> None:
    """A call on a client closed before its first call raised RpcConnectionLost, but
    started the client's reader first: a task reading the stream (which the client
    does not own) for good, taking what its owner reads next. Now nothing reads."""

    async def main() -> None:
        client, reader, writer = await _connect(blocked.served)
        try:
            await client.close()
            with pytest.raises(E.RpcConnectionLost):
                await client.call("echo", 1)
            with pytest.raises(E.RpcConnectionLost):
                await client.notify("echo", 1)
            # the stream is its owner's again: a request of its own, and its answer
            proto = RpcProtocol()
            request_id = proto.send_request("echo", "mine", now=0.0, timeout=None)
            writer.write(proto.data_to_send())
            await writer.drain()
            answer = None
            while answer is None:
                data = await asyncio.wait_for(reader.read(65536), PROMPT)
                assert data
                proto.receive_data(data, 0.0)
                for event in proto.events():
                    if getattr(event, "request_id", None) == request_id:
                        answer = event
            assert answer.result == "mine"
        finally:
            await client.close()
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())
