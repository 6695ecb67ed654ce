"""A bulk sender on a lent stream takes the reader's credit records in the lane: once out
of credit, it reads the carrier there (dtp_flow_take takes MAX_DATA / MAX_STREAM_DATA
records) and seals again, without the general path. What else comes meanwhile -- the
peer's own stream bytes -- goes to the connection, lost to nobody."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.transport.blocking._engine import Engine

TOTAL = 24 << 20  # several times the 4 MiB stream window
CHUNK = 64 << 10


@pytest.fixture
def pair() -> Iterator[tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket]]:
    identity = HostIdentity.generate()
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=identity)
    client = dtp.socket.create_connection(
        server.address, server_key=identity.noise_public, timeout=30
    )
    accepted, _ = server.accept(timeout=10)
    accepted.settimeout(30)
    try:
        yield client, accepted
    finally:
        client.close()
        accepted.close()
        server.close()


@pytest.fixture
def credit_reads(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """What each Engine.read_credit call answered."""
    seen: list[bool] = []
    original = Engine.read_credit

    def counted(self: Engine, lane: Any) -> bool:
        got = original(self, lane)
        seen.append(got)
        return got

    monkeypatch.setattr(Engine, "read_credit", counted)
    return seen


def _read_all(sock: dtp.socket.DTPSocket, total: int, out: list[bytes]) -> None:
    digest = hashlib.sha256()
    buf = bytearray(CHUNK)
    got = 0
    while got < total:
        n = sock.recv_into(buf)
        assert n, "the stream ended early"
        digest.update(memoryview(buf)[:n])
        got += n
    out.append(digest.digest())


def test_a_bulk_sender_takes_credit_in_the_lane(
    pair: tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket], credit_reads: list[bool]
) -> None:
    client, server = pair
    data = os.urandom(TOTAL)
    got: list[bytes] = []
    reader = threading.Thread(target=_read_all, args=(server, TOTAL, got))
    reader.start()
    view = memoryview(data)
    for pos in range(0, TOTAL, CHUNK):
        client.sendall(view[pos : pos + CHUNK])
    reader.join(30)
    assert got == [hashlib.sha256(data).digest()]
    assert True in credit_reads  # (the reader's credit was in the socket at least once)
    conn = client._engine.conn
    conn.take_back(0.0)  # (no-op when not lent) the stream's state back, credit included
    stream = conn._streams[client._stream_id]
    assert stream.send_credit >= TOTAL


def test_what_the_peer_sends_meanwhile_reaches_the_sender(
    pair: tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket], credit_reads: list[bool]
) -> None:
    client, server = pair
    data = os.urandom(TOTAL)
    replies = [os.urandom(1000 + i) for i in range(20)]
    got: list[bytes] = []

    def read_and_answer() -> None:
        digest = hashlib.sha256()
        buf = bytearray(CHUNK)
        n_got = 0
        step = TOTAL // len(replies)
        sent = 0
        while n_got < TOTAL:
            n = server.recv_into(buf)
            assert n
            digest.update(memoryview(buf)[:n])
            n_got += n
            while sent < len(replies) and n_got >= (sent + 1) * step:
                server.sendall(replies[sent])
                sent += 1
        got.append(digest.digest())

    reader = threading.Thread(target=read_and_answer)
    reader.start()
    view = memoryview(data)
    for pos in range(0, TOTAL, CHUNK):
        client.sendall(view[pos : pos + CHUNK])
    reader.join(30)
    assert got == [hashlib.sha256(data).digest()]
    want = b"".join(replies)
    received = bytearray()
    while len(received) < len(want):
        chunk = client.recv(1 << 16)
        assert chunk
        received += chunk
    assert bytes(received) == want
    assert credit_reads  # the sender ran out of credit and read in the lane
