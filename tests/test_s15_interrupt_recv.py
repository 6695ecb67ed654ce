"""``DTPSocket.interrupt_recv()`` ends a blocking read another thread waits in (or the
next one) with DTPTimeoutError, losing nothing; the blocking RPC client uses it so that
``RpcCall.cancel()`` and ``RpcClient.close()`` reach the thread reading for everybody at
once, not at the end of its read slice (patched here to 10 minutes: without the
interruption these tests would wait that long)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

import dtp.messaging.rpc as rpc_module
import dtp.socket
from dtp.errors import DTPTimeoutError
from dtp.keys import HostIdentity
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
    monkeypatch.setattr(rpc_module, "_READ_SLICE", 600.0)
    rpc = RpcServer(workers=4)
    rpc.register("sleep", lambda p: threading.Event().wait(p) or "slept")
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER)
    thread = threading.Thread(target=rpc.serve, args=(server,), daemon=True)
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
