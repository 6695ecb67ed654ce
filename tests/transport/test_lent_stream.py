"""A wake that the lent reader sees (its wait on the carrier ends with WAKE) is taken
there, as the general path's pump takes one: left in the wake socket, it ended every
later wait of the lane at once, and each of those reads went the general path, until
a read that found nothing pumped (a paid server's stored receipt wakes the engine:
some twenty reads per receipt)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

import dtp.socket
from dtp.errors import DTPTimeoutError
from dtp.identity.keys import HostIdentity


@pytest.fixture
def pair() -> Iterator[tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket]]:
    identity = HostIdentity.generate()
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=identity)
    client = dtp.socket.create_connection(
        server.address, server_key=identity.noise_public, timeout=10
    )
    accepted, _ = server.accept(timeout=10)
    try:
        yield client, accepted
    finally:
        client.close()
        accepted.close()
        server.close()


def _wake_pending(sock: dtp.socket.DTPSocket) -> bool:
    return sock._engine._waker.take()


def test_the_lent_reader_takes_the_wake_it_saw(
    pair: tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket],
) -> None:
    client, server = pair
    buf = bytearray(64)
    client.sendall(b"a")
    assert server.recv_into(buf) == 1  # the stream is lent now
    # a read that waits: its next reads wait at once, without a read first
    threading.Timer(0.1, client.sendall, (b"b",)).start()
    assert server.recv_into(buf) == 1 and buf[:1] == b"b"
    engine = server._engine
    assert engine.conn.lent_stream_id is not None
    # a wake (another thread wants attention) while bytes wait on the carrier: the
    # lane's wait ends with WAKE, and the read takes the bytes by the general path
    engine._wake()
    client.sendall(b"c")
    time.sleep(0.1)
    assert server.recv_into(buf) == 1 and buf[:1] == b"c"
    # the wake was taken: the next waits are the lane's own again
    assert not _wake_pending(server)
    client.sendall(b"d")
    assert server.recv_into(buf) == 1 and buf[:1] == b"d"


def test_the_woken_lent_reader_writes_what_a_sender_queued(
    pair: tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket],
) -> None:
    """A sender that finds the carrier full while another thread waits on it queues
    the rest and wakes that thread to write it. The woken reader may go back to its
    caller at once, with bytes that had arrived meanwhile, and the application may not
    read again for a long time: it writes the queue before it goes (the timer thread
    waited for it up to a second)."""
    client, server = pair
    buf = bytearray(64)
    server.sendall(b"a")
    assert client.recv_into(buf) == 1  # the stream is lent now
    engine = client._engine
    lane = engine.conn.lent_lane
    server.sendall(b"b")
    time.sleep(0.1)  # (there: the read below finds them)
    real_wait = lane.wait_read

    def wait_read(*args: object) -> int:
        # the moment a sender queues records behind a full carrier and wakes the
        # thread waiting on it (lock held here, as the sender holds it)
        engine.conn.ping()
        engine.out.append(bytes(engine.conn.data_to_send(time.monotonic())))
        engine._wake()
        lane.wait_read = real_wait
        return int(real_wait(*args))

    with engine.lock:
        engine._read_first_skip = 8  # (as after a read that found nothing: it waits)
    lane.wait_read = wait_read
    assert client.recv_into(buf) == 1 and buf[:1] == b"b"
    with engine.lock:
        assert not engine.out  # written by the reader the sender woke
    assert not _wake_pending(client)


def test_a_lent_read_waits_out_its_timeout_and_the_next_one_reads(
    pair: tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket],
) -> None:
    """A lent read that finds nothing waits in Engine.read_lent's own turn of the wait:
    bytes that come during it are returned, silence ends it at the socket's timeout
    (DTPTimeoutError, nothing lost), and the stream stays lent for the next read."""
    client, server = pair
    client.sendall(b"a")
    assert server.recv(10) == b"a"  # the stream is lent now
    engine = server._engine
    assert engine.conn.lent_stream_id is not None
    with engine.lock:
        engine._read_first_skip = 8  # (as after a read first that found nothing: it waits)
    timer = threading.Timer(0.1, client.sendall, (b"b",))
    timer.start()
    try:
        assert server.recv(10) == b"b"  # came during the wait
    finally:
        timer.join()
    server.settimeout(0.2)
    start = time.monotonic()
    with pytest.raises(DTPTimeoutError):
        server.recv(10)
    assert time.monotonic() - start >= 0.19
    assert engine.conn.lent_stream_id is not None
    client.sendall(b"c")
    assert server.recv(10) == b"c"
