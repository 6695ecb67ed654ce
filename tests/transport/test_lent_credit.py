"""A bulk sender on a lent stream takes the reader's credit records in the lane: once out
of credit, it reads the carrier there (dtp_flow_take takes MAX_DATA / MAX_STREAM_DATA
records) and seals again, without the general path. What else comes meanwhile -- the
peer's own stream bytes -- goes to the connection, lost to nobody."""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import dtp.socket
import dtp.transport.blocking._socket
from dtp.errors import DTPTimeoutError, SendAfterShutdown, SocketClosed
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import Connection, ConnectionConfig
from dtp.transport.blocking._engine import Engine
from tests.transport.small_window import WINDOW, window_pair

TOTAL = 24 << 20  # several times the 4 MiB stream window
CHUNK = 64 << 10
SMALL_WINDOW = 256 << 10
# A send's timeout in the timeout tests, and what a loaded machine may add to it
TIMEOUT = 0.2
MARGIN = 0.3


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


def _read_all(
    sock: dtp.socket.DTPSocket,
    total: int,
    out: list[bytes],
    size: int = CHUNK,
    then: Callable[[int], None] | None = None,
) -> None:
    """Reads ``total`` bytes in reads of up to ``size``, calling ``then`` with the count
    so far after each, and appends their digest to ``out``."""
    digest = hashlib.sha256()
    buf = bytearray(size)
    got = 0
    while got < total:
        n = sock.recv_into(buf)
        assert n, "the stream ended early"
        digest.update(memoryview(buf)[:n])
        got += n
        if then is not None:
            then(got)
    out.append(digest.digest())


def _send_in_chunks(client: dtp.socket.DTPSocket, data: bytes, read: Callable[[], None]) -> None:
    """Sends ``data`` a CHUNK a sendall while ``read`` runs on a thread of its own."""
    reader = threading.Thread(target=read)
    reader.start()
    view = memoryview(data)
    for pos in range(0, len(data), CHUNK):
        client.sendall(view[pos : pos + CHUNK])
    reader.join(30)


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
    _send_in_chunks(client, data, lambda: _read_all(server, TOTAL, got))
    assert got == [hashlib.sha256(data).digest()]
    assert credit_reads  # the sender ran out of credit (4 MiB) and looked in the lane


def test_what_the_peer_sends_meanwhile_reaches_the_sender(
    pair: tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket], credit_reads: list[bool]
) -> None:
    client, server = pair
    data = os.urandom(TOTAL)
    replies = [os.urandom(1000 + i) for i in range(20)]
    got: list[bytes] = []

    step = TOTAL // len(replies)
    sent: list[bytes] = []

    def answer(n_got: int) -> None:
        while len(sent) < len(replies) and n_got >= (len(sent) + 1) * step:
            sent.append(replies[len(sent)])
            server.sendall(sent[-1])

    _send_in_chunks(client, data, lambda: _read_all(server, TOTAL, got, then=answer))
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


def _out_of_credit(client: dtp.socket.DTPSocket, server: dtp.socket.DTPSocket) -> None:
    """Lend the stream at both ends, then send the whole of the client's credit, which
    the server, reading nothing more, never returns."""
    client.sendall(b"a")
    assert server.recv(1) == b"a"
    client.sendall(os.urandom(SMALL_WINDOW - 1))


@pytest.fixture
def credit_budgets(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The seconds each Engine.wait_lent_credit call was given (its deadline, from its
    start); CREDIT_WAIT made long, so that only the send's timeout bounds them."""
    monkeypatch.setattr(dtp.transport.blocking._socket, "CREDIT_WAIT", 30.0)
    budgets: list[float] = []
    original = Engine.wait_lent_credit

    def wait(self: Engine, lane: Any, stream_id: int, deadline: float) -> bool:
        budgets.append(deadline - time.monotonic())
        return original(self, lane, stream_id, deadline)

    monkeypatch.setattr(Engine, "wait_lent_credit", wait)
    return budgets


def test_sends_to_a_peer_that_reads_nothing_end_within_their_timeout(
    small_pair: tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket], credit_budgets: list[float]
) -> None:
    """Each send() out of credit returns (its bytes queued on the stream) or raises
    DTPTimeoutError once the stream holds as much as it may, within the socket's
    timeout: the credit wait and the wait for the stream's room share it."""
    client, server = small_pair
    _out_of_credit(client, server)
    client.settimeout(TIMEOUT)
    taken: list[tuple[int | str, float]] = []
    for _ in range(dtp.socket.SEND_HIGH_WATER // CHUNK + 2):
        start = time.monotonic()
        try:
            n: int | str = client.send(bytes(CHUNK))
        except DTPTimeoutError:
            n = "timed out"
        taken.append((n, time.monotonic() - start))
        if n == "timed out":
            break
    assert credit_budgets  # the first waited for credit in the lane
    assert taken[0][0] == CHUNK  # ... then queued its bytes on the stream
    assert taken[-1][0] == "timed out", taken  # the stream full, the last waited for room
    assert all(took <= TIMEOUT + MARGIN for _, took in taken), taken
    conn = client._engine.conn
    assert conn.send_buffered(client.stream_id) == sum(n for n, _ in taken[:-1])


def test_a_sendall_to_a_peer_that_reads_nothing_ends_within_its_timeout(
    small_pair: tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket], credit_budgets: list[float]
) -> None:
    client, server = small_pair
    _out_of_credit(client, server)
    client.settimeout(TIMEOUT)
    start = time.monotonic()
    with pytest.raises(DTPTimeoutError):
        client.sendall(bytes(4 << 20))
    assert time.monotonic() - start <= TIMEOUT + MARGIN
    assert credit_budgets and all(budget <= TIMEOUT for budget in credit_budgets)


@pytest.mark.parametrize("timeout", [0.005, TIMEOUT])  # (below CREDIT_WAIT, and above)
def test_the_socket_timeout_bounds_the_credit_wait(
    small_pair: tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket],
    credit_budgets: list[float],
    timeout: float,
) -> None:
    """A send's credit wait lasts no longer than the socket's timeout, however long
    CREDIT_WAIT: then its bytes are queued on the stream (or, its room gone, the
    timeout's error)."""
    client, server = small_pair
    _out_of_credit(client, server)
    client.settimeout(timeout)
    start = time.monotonic()
    try:
        n = client.send(bytes(CHUNK))
    except DTPTimeoutError:
        n = 0
    took = time.monotonic() - start
    assert n in (0, CHUNK)
    assert credit_budgets and all(budget <= timeout for budget in credit_budgets)
    assert took <= timeout + MARGIN


def test_a_sendall_credit_wait_has_only_what_is_left_of_its_timeout(
    small_pair: tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket],
    credit_budgets: list[float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """sendall()'s timeout bounds the whole call, its sends' waits included: once the
    call has spent its timeout (here in a slowed look for credit, as a wait for a full
    carrier would), the credit wait gets none of it, rather than a budget of its own."""
    client, server = small_pair
    _out_of_credit(client, server)
    original = Engine.take_lent_credit
    slowed: list[bool] = []

    def slow(self: Engine, lane: Any) -> bool:
        if not slowed:
            slowed.append(True)
            time.sleep(TIMEOUT)
        return original(self, lane)

    monkeypatch.setattr(Engine, "take_lent_credit", slow)
    client.settimeout(TIMEOUT)
    start = time.monotonic()
    with contextlib.suppress(DTPTimeoutError):  # (or its bytes queued on the stream)
        client.sendall(bytes(CHUNK))
    took = time.monotonic() - start
    assert slowed and credit_budgets
    assert all(budget <= 0 for budget in credit_budgets), credit_budgets
    assert took <= TIMEOUT + MARGIN


@pytest.mark.parametrize(
    ("which", "how"), [("first", "shutdown"), ("second", "shutdown"), ("second", "close")]
)
def test_shutdown_wr_or_close_ends_a_send_waiting_for_credit(
    small_pair: tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket],
    monkeypatch: pytest.MonkeyPatch,
    which: str,
    how: str,
) -> None:
    """Another thread's shutdown(SHUT_WR) or close() (of a second stream: closing the
    first closes the connection) wakes a send waiting for credit in the lane: it fails
    at once (SendAfterShutdown, as a socket's send fails with EPIPE), not at the end of
    its timeout or of CREDIT_WAIT."""
    client, server = small_pair
    if which == "first":
        sender = client
        _out_of_credit(client, server)
    else:
        sender = client.open_stream()
        sender.settimeout(30)
        sender.sendall(b"a")
        peer = server.accept_stream()
        peer.settimeout(30)
        assert peer.recv(1) == b"a"
        sender.sendall(os.urandom(SMALL_WINDOW - 1))  # (its whole credit, as above)
    monkeypatch.setattr(dtp.transport.blocking._socket, "CREDIT_WAIT", 30.0)
    waiting = threading.Event()
    original = Engine.wait_lent_credit

    def wait(self: Engine, lane: Any, stream_id: int, deadline: float) -> bool:
        waiting.set()
        return original(self, lane, stream_id, deadline)

    monkeypatch.setattr(Engine, "wait_lent_credit", wait)
    sender.settimeout(10)
    outcome: list[BaseException | int] = []

    def send() -> None:
        try:
            outcome.append(sender.send(bytes(CHUNK)))
        except BaseException as exc:  # reported to the test
            outcome.append(exc)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    assert waiting.wait(10)
    start = time.monotonic()
    if how == "shutdown":
        sender.shutdown(dtp.socket.SHUT_WR)
    else:
        sender.close()
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - start <= 5
    # (a close sets the socket closed just after it shuts it: either error, as a
    # socket's EPIPE or EBADF)
    wanted = SendAfterShutdown if how == "shutdown" else (SendAfterShutdown, SocketClosed)
    assert len(outcome) == 1 and isinstance(outcome[0], wanted), outcome


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

    # (reads of more than a lane read: no record is cut by the end)
    _send_in_chunks(client, data, lambda: _read_all(server, TOTAL, got, 1 << 20))
    assert got == [hashlib.sha256(data).digest()]
    # a quarter of the 4 MiB window read, credit goes back: about 24 records for 24 MiB
    assert len(sealed) >= 12
    assert len(taken_back) <= len(sealed) // 4, taken_back
