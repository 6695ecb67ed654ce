"""``DTPSocket.interrupt_recv()`` ends a blocking read another thread waits in (or the
next one) with DTPTimeoutError, losing nothing; the blocking RPC client uses it so that
``RpcCall.cancel()`` and ``RpcClient.close()`` reach the thread reading for everybody at
once, not at the end of its read slice (patched here to 10 minutes: without the
interruption these tests would wait that long).

``interrupt_recv()`` from another thread loses nothing.

A blocking read on a lent stream checked for an interruption at the top of its loop,
before it looked at what the lane had just read: when the lane stopped at a record it
does not take (a full destination, a control frame), the bytes it held were to go back to
the connection -- the interruption raised past that, they were dropped, and the next
record was out of order ("stream data out of order", "unknown record kind"): the whole
connection failed. ``RpcCall.cancel()`` and ``RpcClient.close()`` interrupt the thread
that reads for everybody, so a cancel while another thread read a large answer did it.
Now the interruption is taken only before a wait, with nothing pending.

Real DTP connections on 127.0.0.1, both core backends (the suite runs each)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

import dtp.messaging.rpc._blocking_client as blocking_client
import dtp.messaging.rpc._blocking_client as rpc_client_module
import dtp.socket
from dtp.errors import DTPTimeoutError
from dtp.identity.keys import HostIdentity
from dtp.messaging import errors as E
from dtp.messaging.rpc import RpcClient, RpcServer

SERVER = HostIdentity.generate()
PATIENCE = 60.0  # a bound for "does not hang", far below the patched read slice


@pytest.fixture
def pair() -> Iterator[tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket]]:
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER)
    accepted: list[dtp.socket.DTPSocket] = []
    thread = threading.Thread(target=lambda: accepted.append(server.accept()[0]))
    thread.start()
    client = dtp.socket.create_connection(
        server.address, server_key=SERVER.noise_public, timeout=None
    )
    client.sendall(b"hi")  # the server's first stream opens with the first bytes
    thread.join(PATIENCE)
    (peer,) = accepted
    assert peer.recv(2) == b"hi"
    try:
        yield client, peer
    finally:
        client.close()
        peer.close()
        server.close()


def test_a_blocked_read_is_interrupted_and_loses_nothing(
    pair: tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket],
) -> None:
    client, peer = pair
    outcome: list[object] = []
    started = threading.Event()

    def read() -> None:
        started.set()
        try:
            outcome.append(client.recv(100))
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    started.wait(PATIENCE)
    # (whether the read is already waiting or not: it ends either way)
    client.interrupt_recv()
    reader.join(PATIENCE)
    assert not reader.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], DTPTimeoutError)
    # the interruption is used up, and what comes next is read as usual
    peer.sendall(b"after")
    assert client.recv(100) == b"after"


def test_an_interruption_with_no_read_waiting_ends_the_next_one(
    pair: tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket],
) -> None:
    client, peer = pair
    client.interrupt_recv()
    with pytest.raises(DTPTimeoutError):
        client.recv(100)
    buf = bytearray(100)
    client.interrupt_recv()
    with pytest.raises(DTPTimeoutError):
        client.recv_into(buf)
    peer.sendall(b"data")
    assert client.recv_into(buf) == 4 and buf[:4] == b"data"


@pytest.fixture
def rpc_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[RpcClient]:
    monkeypatch.setattr(rpc_client_module, "_READ_SLICE", 600.0)
    monkeypatch.setattr(blocking_client, "_READ_SLICE", 600.0)  # (the leader's reads)
    rpc = RpcServer(workers=4)
    rpc.register("sleep", lambda p: threading.Event().wait(p) or "slept")
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER)
    thread = threading.Thread(target=rpc.serve_forever, args=(server,), daemon=True)
    thread.start()
    sock = dtp.socket.create_connection(server.address, server_key=SERVER.noise_public)
    client = RpcClient(sock)
    try:
        yield client
    finally:
        client.close()
        sock.close()
        server.close()
        rpc.close()
        thread.join(PATIENCE)


def _in_thread(fn: object) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()  # type: ignore[operator]
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def test_cancel_reaches_the_thread_reading_for_everybody(rpc_client: RpcClient) -> None:
    call = rpc_client.start("sleep", 30)
    thread, errors = _in_thread(call.result)
    # the waiting thread becomes the reader (nobody else reads); the cancel must end
    # its read, which would otherwise last the whole slice
    while not rpc_client._reading and thread.is_alive():
        threading.Event().wait(0.01)
    assert call.cancel()
    thread.join(PATIENCE)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], E.RpcCancelled)


def test_close_reaches_a_quiet_call_reading_its_answer(rpc_client: RpcClient) -> None:
    thread, errors = _in_thread(lambda: rpc_client.call("sleep", 30))
    while not rpc_client._reading and thread.is_alive():
        threading.Event().wait(0.01)
    rpc_client.close()
    thread.join(PATIENCE)
    assert not thread.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], E.RpcConnectionLost)


# position-dependent bytes: a byte lost or out of place shows
PATTERN = bytes(range(256)) * 256  # 64 KiB
TOTAL = 48 << 20


@pytest.fixture
def server() -> Iterator[dtp.socket.DTPServer]:
    with dtp.socket.create_server(("127.0.0.1", 0), identity=HostIdentity.generate()) as srv:
        yield srv


def test_a_bulk_read_interrupted_over_and_over_gets_every_byte_in_order(
    server: dtp.socket.DTPServer,
) -> None:
    def serve() -> None:
        sock, _ = server.accept(timeout=30)
        with sock:
            for _ in range(TOTAL // len(PATTERN)):
                sock.sendall(PATTERN)
            sock.recv(1)  # until the client closes

    threading.Thread(target=serve, daemon=True).start()
    with dtp.socket.create_connection(
        server.address, 30, server_key=server.noise_public_key
    ) as client:
        done = threading.Event()
        interrupts = 0

        def interrupter() -> None:
            nonlocal interrupts
            while not done.is_set():
                client.interrupt_recv()
                interrupts += 1
                time.sleep(0.0002)

        thread = threading.Thread(target=interrupter, daemon=True)
        thread.start()
        got = 0
        expected = PATTERN * 2
        try:
            while got < TOTAL:
                try:
                    data = client.recv(65536)
                except DTPTimeoutError:  # (interrupted while waiting: read on)
                    continue
                assert data, f"the stream ended after {got} of {TOTAL} bytes"
                offset = got % len(PATTERN)
                assert data == expected[offset : offset + len(data)], f"bytes wrong at {got}"
                got += len(data)
        finally:
            done.set()
            thread.join(30)
        assert got == TOTAL
        assert interrupts > 10  # (the reads met interruptions all along)


def test_cancels_while_another_thread_reads_large_answers_leave_the_stream_whole(
    server: dtp.socket.DTPServer,
) -> None:
    rpc = RpcServer()

    @rpc.method()
    def echo(value: bytes) -> bytes:
        return value

    big = bytes(range(256)) * 400  # 100 KiB
    threading.Thread(target=rpc.serve_forever, args=(server,), daemon=True).start()
    with dtp.socket.create_connection(
        server.address, 30, server_key=server.noise_public_key
    ) as sock:
        client = RpcClient(sock, timeout=30)
        failures: list[str] = []
        answers = 0
        cancelled = 0
        stop = time.monotonic() + 4.0

        def big_caller() -> None:
            nonlocal answers
            while time.monotonic() < stop and not failures:
                try:
                    if client.call("echo", big) != big:
                        failures.append("a wrong answer")
                    answers += 1
                except Exception as exc:  # reported below
                    failures.append(f"large call: {type(exc).__name__}: {exc}")

        def canceller() -> None:
            nonlocal cancelled
            while time.monotonic() < stop and not failures:
                call = client.start("echo", b"small")
                call.cancel()
                try:
                    call.result()
                except E.RpcCancelled:
                    cancelled += 1
                except Exception as exc:  # reported below
                    failures.append(f"cancelled call: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=big_caller), threading.Thread(target=canceller)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert failures == []
        assert answers > 0 and cancelled > 0
        # the connection is whole: a call after all that is answered
        assert client.call("echo", b"after") == b"after"
        client.close()
