"""A bulk sender on a lent stream takes the reader's credit records in the lane: once out
of credit, it reads the carrier there (dtp_flow_take takes MAX_DATA / MAX_STREAM_DATA
records) and seals again, without the general path. What else comes meanwhile -- the
peer's own stream bytes -- goes to the connection, lost to nobody."""

from __future__ import annotations

import hashlib
import os
import select
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import dtp.socket
import dtp.transport.blocking._socket
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import Connection, ConnectionConfig
from dtp.transport.blocking._engine import Engine
from tests.transport.small_window import WINDOW, window_pair

TOTAL = 24 << 20  # several times the 4 MiB stream window
CHUNK = 64 << 10
SMALL_WINDOW = 256 << 10


@pytest.fixture
def pair() -> Iterator[tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket]]:
    yield from _pair(None)


@pytest.fixture
def small_pair() -> Iterator[tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket]]:
    """A server whose stream window (its clients' credit) fits in the carrier's buffers."""
    yield from _pair(SMALL_WINDOW)


def _pair(window: int | None) -> Iterator[tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket]]:
    identity = HostIdentity.generate()
    config = None
    if window is not None:
        config = ConnectionConfig(identity=identity, is_client=False, stream_window=window)
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=identity, config=config)
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
    """What each Engine.take_lent_credit call answered."""
    seen: list[bool] = []
    original = Engine.take_lent_credit

    def counted(self: Engine, lane: Any) -> bool:
        got = original(self, lane)
        seen.append(got)
        return got

    monkeypatch.setattr(Engine, "take_lent_credit", counted)
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


def test_a_sender_out_of_credit_takes_the_credit_in_the_socket(
    small_pair: tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket], credit_reads: list[bool]
) -> None:
    client, server = small_pair
    client.sendall(b"a")
    assert server.recv(1) == b"a"  # both ends lend the stream from here
    data = os.urandom(SMALL_WINDOW - 1)
    client.sendall(data)  # the whole credit: the next byte waits for the reader's
    got = bytearray()
    while len(got) < len(data):
        got += server.recv(SMALL_WINDOW)
    assert bytes(got) == data
    # the reader's credit records reach the sender's carrier (nothing else is on its way)
    readable, _, _ = select.select([client._engine.sock], [], [], 30)
    assert readable
    assert credit_reads == []
    more = os.urandom(CHUNK)
    client.sendall(more)
    assert credit_reads[0] is True  # taken in the lane, which sealed the rest
    got.clear()
    while len(got) < len(more):
        got += server.recv(CHUNK)
    assert bytes(got) == more
    conn = client._engine.conn
    if conn.lent_stream_id is not None:
        conn.take_back(0.0)  # the stream's state back, the credit included
    assert conn._streams[client._stream_id].send_credit >= SMALL_WINDOW + CHUNK


def test_a_blocking_sender_out_of_credit_waits_for_it_in_the_lane(
    small_pair: tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reader's credit comes while the writer waits: the writer seals again in the
    lane, none of its bytes queued on the stream for the general path and the timer
    thread."""
    client, server = small_pair
    # (the reader starts once the writer waits: a loaded machine may make it late)
    monkeypatch.setattr(dtp.transport.blocking._socket, "CREDIT_WAIT", 30.0)
    waiting = threading.Event()
    waits: list[bool] = []
    original = Engine.wait_lent_credit

    def wait(self: Engine, lane: Any, stream_id: int, deadline: float) -> bool:
        waiting.set()
        got = original(self, lane, stream_id, deadline)
        waits.append(got)
        return got

    monkeypatch.setattr(Engine, "wait_lent_credit", wait)
    client.sendall(b"a")
    assert server.recv(1) == b"a"  # both ends lend the stream from here
    data = os.urandom(SMALL_WINDOW - 1)
    client.sendall(data)  # the whole credit: the next byte waits for the reader's
    queued: list[int] = []
    send_stream_data = Connection.send_stream_data

    def counted(self: Connection, stream_id: int, chunk: Any, end_stream: bool = False) -> None:
        queued.append(len(chunk))
        send_stream_data(self, stream_id, chunk, end_stream)

    monkeypatch.setattr(Connection, "send_stream_data", counted)
    more = os.urandom(4 * CHUNK)
    got: list[bytes] = []

    def read() -> None:
        waiting.wait(10)
        _read_all(server, len(data) + len(more), got)

    reader = threading.Thread(target=read)
    reader.start()
    client.sendall(more)
    reader.join(30)
    assert got == [hashlib.sha256(data + more).digest()]
    assert waits and all(waits)  # each wait ended with the credit, taken in the lane
    assert queued == []


def test_a_bulk_sender_delivers_everything(
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
    assert credit_reads  # the sender ran out of credit (4 MiB) and looked in the lane


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


def test_bytes_queued_on_another_stream_follow_the_credit_a_lent_stream_reads() -> None:
    """Stream T waits, its bytes queued, for the connection's credit while stream S is
    lent and its reader waits in the lane: the credit records that come are T's, which
    the lane must leave to the general path (it raises no event for credit it takes)."""
    queued = os.urandom(4 * WINDOW)  # four windows: sendall() leaves most of it queued
    with window_pair() as (s_client, s_server):
        s_server.settimeout(10)
        s_client.sendall(b"s")
        assert s_server.recv(1) == b"s"
        s_server.sendall(b"r")
        assert s_client.recv(1) == b"r"  # S is lent both ways at both ends from here
        t_client = s_client.open_stream()
        t_client.sendall(queued)
        assert s_client._engine.conn.send_buffered(t_client.stream_id) > 0
        s_got: list[bytes] = []
        s_reader = threading.Thread(target=lambda: s_got.append(s_client.recv(10)), daemon=True)
        s_reader.start()  # S's reader waits in the lane; T's credit comes meanwhile
        t_server = s_server.accept_stream()
        t_got: list[bytes] = []
        _read_all(t_server, len(queued), t_got)  # (a stall: DTPTimeoutError)
        assert t_got == [hashlib.sha256(queued).digest()]
        s_server.sendall(b"end")
        s_reader.join(30)
        assert s_got == [b"end"]
        t_server.close()
        t_client.close()


def test_a_bulk_reader_returns_credit_in_the_loan(
    pair: tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader's credit records are sealed in its loan (Connection.lent_credit): its
    lane reads on, the stream never taken back for them (tests/protocol/
    test_lent_credit_record.py holds them to the general path's records)."""
    client, server = pair
    reader_conn = server._engine.conn
    sealed: list[int] = []
    taken_back: list[int] = []
    lent_credit, take_back = Connection.lent_credit, Connection.take_back

    def counted_credit(self: Connection, now: float) -> bytes | None:
        record = lent_credit(self, now)
        if self is reader_conn and record is not None:
            sealed.append(len(record))
        return record

    def counted_take_back(self: Connection, *args: Any) -> None:
        if self is reader_conn:
            taken_back.append(len(sealed))
        take_back(self, *args)

    monkeypatch.setattr(Connection, "lent_credit", counted_credit)
    monkeypatch.setattr(Connection, "take_back", counted_take_back)
    data = os.urandom(TOTAL)
    got: list[bytes] = []

    def read() -> None:
        digest = hashlib.sha256()
        buf = bytearray(1 << 20)  # (more than a lane read: no record is cut by the end)
        n_got = 0
        while n_got < TOTAL:
            n = server.recv_into(buf)
            assert n, "the stream ended early"
            digest.update(memoryview(buf)[:n])
            n_got += n
        got.append(digest.digest())

    reader = threading.Thread(target=read)
    reader.start()
    view = memoryview(data)
    for pos in range(0, TOTAL, CHUNK):
        client.sendall(view[pos : pos + CHUNK])
    reader.join(30)
    assert got == [hashlib.sha256(data).digest()]
    # a quarter of the 4 MiB window read, credit goes back: about 24 records for 24 MiB
    assert len(sealed) >= 12
    assert len(taken_back) <= len(sealed) // 4, taken_back
