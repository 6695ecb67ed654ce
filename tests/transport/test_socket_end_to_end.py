"""The blocking API against real servers in another process, over 127.0.0.1 (a rule both
APIs keep is one test run on each: the ``api`` fixture)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import threading
import time
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import (
    ConnectionLost,
    ConnectionRefused,
    DTPError,
    DTPTimeoutError,
    HandshakeError,
    LocalProtocolError,
)
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig
from tests.support.polling import wait_for
from tests.support.procs import server_process

CLIENT = HostIdentity.generate()


@pytest.fixture(scope="module")
def echo_server(echo_processes):  # type: ignore[no-untyped-def]
    return echo_processes("blocking")


def test_echo_roundtrip_ik(echo_server) -> None:  # type: ignore[no-untyped-def]
    with dtp.socket.create_connection(
        echo_server.endpoint, timeout=10, server_key=echo_server.key, identity=CLIENT
    ) as sock:
        sock.sendall(b"hello over DTP")
        assert sock.recv(100) == b"hello over DTP"
        assert sock.peer_static_key == echo_server.key
        assert sock.getpeername()[1] == echo_server.port


def test_echo_xx_with_pinned_key(echo_server) -> None:  # type: ignore[no-untyped-def]
    with dtp.socket.create_connection(
        echo_server.endpoint, timeout=10, expected_server_key=echo_server.key
    ) as sock:
        sock.sendall(b"xx")
        assert sock.recv(10) == b"xx"


def test_large_transfer_integrity_and_half_close(api: str, echo_processes: Any) -> None:
    """12 MiB, beyond the connection's flow-control window (8 MiB), comes back whole
    and in order while it is still being sent, and the client's half-close ends the
    echo; on either API against its own server."""
    payload = os.urandom(12 * 1024 * 1024)
    echo_server = echo_processes(api)
    if api == "blocking":
        with dtp.socket.create_connection(
            echo_server.endpoint, timeout=30, server_key=echo_server.key
        ) as sock:
            received = hashlib.sha256()
            count = [0]

            def reader() -> None:
                while data := sock.recv(1 << 20):
                    received.update(data)
                    count[0] += len(data)

            t = threading.Thread(target=reader)
            t.start()
            sock.sendall(payload)
            sock.shutdown(dtp.socket.SHUT_WR)
            t.join(60)
            assert not t.is_alive()
            assert count[0] == len(payload)
            assert received.digest() == hashlib.sha256(payload).digest()
        return

    async def main() -> bytes:
        reader, writer = await dtp.aio.open_connection(
            "127.0.0.1", echo_server.port, server_key=echo_server.key, timeout=10
        )

        async def send() -> None:
            for i in range(0, len(payload), 65536):
                writer.write(payload[i : i + 65536])
                await writer.drain()
            writer.write_eof()

        task = asyncio.ensure_future(send())
        got = await reader.read()
        await task
        writer.close()
        await writer.wait_closed()
        return got

    got = asyncio.run(main())
    assert len(got) == len(payload)
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()


def test_bulk_reads_stay_on_the_lent_stream() -> None:
    """Reads that end inside a record keep its start in the lane: a bulk reader takes
    the general path (read_fast) only now and then, not on most reads."""
    server_id = HostIdentity.generate()
    payload = os.urandom(16 << 20)
    with dtp.socket.create_server(("127.0.0.1", 0), identity=server_id) as server:

        def serve() -> None:
            sock, _ = server.accept(timeout=10)
            with sock:
                for i in range(0, len(payload), 65536):
                    sock.sendall(payload[i : i + 65536])
                sock.recv(1)

        t = threading.Thread(target=serve)
        t.start()
        with dtp.socket.create_connection(
            server.address, timeout=30, server_key=server.noise_public_key
        ) as sock:
            engine = sock._engine
            calls = {"read_fast": 0, "recv_into": 0}
            read_fast = engine.read_fast

            def counting_read_fast(*args: object) -> int:
                calls["read_fast"] += 1
                return read_fast(*args)  # type: ignore[arg-type]

            engine.read_fast = counting_read_fast  # type: ignore[method-assign]
            received = hashlib.sha256()
            buf = bytearray(1 << 20)
            got = 0
            while got < len(payload):
                n = sock.recv_into(buf)
                calls["recv_into"] += 1
                received.update(memoryview(buf)[:n])
                got += n
            sock.sendall(b"x")
            assert received.digest() == hashlib.sha256(payload).digest()
            assert calls["read_fast"] * 10 <= calls["recv_into"], calls
        t.join(10)


def test_recv_into_makefile_and_streams(echo_server) -> None:  # type: ignore[no-untyped-def]
    with dtp.socket.create_connection(
        echo_server.endpoint, timeout=10, server_key=echo_server.key
    ) as sock:
        f = sock.makefile("rwb")
        f.write(b"line one\nline two\n")
        f.flush()
        assert f.readline() == b"line one\n"
        assert f.readline() == b"line two\n"
        buf = bytearray(5)
        sock.sendall(b"abcde")
        got = 0
        while got < 5:
            got += sock.recv_into(memoryview(buf)[got:])
        assert bytes(buf) == b"abcde"
        streams = [sock.open_stream() for _ in range(4)]
        for i, s in enumerate(streams):
            s.sendall(b"stream %d" % i)
        for i, s in enumerate(streams):
            assert s.recv(100) == b"stream %d" % i
            s.close()


def test_timeout_on_recv(echo_server) -> None:  # type: ignore[no-untyped-def]
    with dtp.socket.create_connection(
        echo_server.endpoint, timeout=10, server_key=echo_server.key
    ) as sock:
        sock.settimeout(0.3)
        start = time.monotonic()
        with pytest.raises(DTPTimeoutError) as info:
            sock.recv(10)
        assert isinstance(info.value, TimeoutError)
        assert 0.25 < time.monotonic() - start < 3
        assert sock.getblocking() and sock.gettimeout() == 0.3
        sock.setblocking(False)
        assert not sock.getblocking() and sock.gettimeout() == 0.0
        with pytest.raises(BlockingIOError):
            sock.recv(10)
        sock.setblocking(True)
        assert sock.getblocking() and sock.gettimeout() is None


def test_refused_client_gets_reason(api: str) -> None:
    """A client on the server's deny list is refused with the reason (a
    ConnectionRefusedError), on either API against its own server; another gets in."""

    async def aio_refused(srv: Any) -> ConnectionRefused:
        with pytest.raises(ConnectionRefused) as info:
            await dtp.aio.open_connection(
                "127.0.0.1", srv.port, server_key=srv.key, identity=CLIENT, timeout=10
            )
        reader, writer = await dtp.aio.open_connection(
            "127.0.0.1", srv.port, server_key=srv.key, timeout=10
        )
        writer.write(b"ok")
        assert await reader.readexactly(2) == b"ok"
        writer.close()
        await writer.wait_closed()
        return info.value

    with server_process("echo", api=api, deny=[CLIENT.sui_address]) as srv:
        if api == "asyncio":
            refused = asyncio.run(aio_refused(srv))
        else:
            with pytest.raises(ConnectionRefused) as info:
                dtp.socket.create_connection(
                    srv.endpoint, timeout=10, server_key=srv.key, identity=CLIENT
                )
            refused = info.value
            # another identity gets in
            with dtp.socket.create_connection(srv.endpoint, timeout=10, server_key=srv.key) as s:
                s.sendall(b"ok")
                assert s.recv(2) == b"ok"
        assert "deny list" in refused.reason
        assert isinstance(refused, ConnectionRefusedError)


def test_wrong_server_key_is_handshake_error(echo_server) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(HandshakeError):
        dtp.socket.create_connection(
            echo_server.endpoint, timeout=10, server_key=HostIdentity.generate().noise_public
        )


def test_peer_killed_mid_transfer_raises_not_hangs(api: str) -> None:
    """A server killed while the client sends: the client's next sends or read raise
    ConnectionLost (a ConnectionResetError), on either API against its own server."""
    with server_process("sink", api=api) as srv:
        if api == "blocking":
            sock = dtp.socket.create_connection(srv.endpoint, timeout=10, server_key=srv.key)
            sock.sendall(os.urandom(1 << 20))
            srv.kill()
            with pytest.raises(ConnectionLost) as info:
                for _ in range(200):
                    sock.sendall(os.urandom(1 << 20))
                sock.recv(10)
            sock.close()
            lost = info.value
        else:

            async def main() -> ConnectionLost:
                reader, writer = await dtp.aio.open_connection(
                    "127.0.0.1", srv.port, server_key=srv.key, timeout=10
                )
                writer.write(os.urandom(1 << 20))
                await writer.drain()
                srv.kill()
                with pytest.raises(ConnectionLost) as info:
                    for _ in range(200):
                        writer.write(os.urandom(1 << 20))
                        await writer.drain()
                    await reader.read(10)
                return info.value

            lost = asyncio.run(main())
        assert isinstance(lost, ConnectionResetError)


def test_socket_flags_are_refused_and_lose_nothing(echo_server) -> None:  # type: ignore[no-untyped-def]
    with dtp.socket.create_connection(
        echo_server.endpoint, timeout=10, server_key=echo_server.key
    ) as sock:
        with pytest.raises(LocalProtocolError, match="no flags"):
            sock.sendall(b"never sent", socket.MSG_DONTWAIT)
        with pytest.raises(LocalProtocolError, match="no flags"):
            sock.send(b"never sent", socket.MSG_OOB)
        sock.sendall(b"peek at me")
        time.sleep(0.05)  # the echo is likely there: a peek then would have taken it
        with pytest.raises(LocalProtocolError, match="no flags"):
            sock.recv(100, socket.MSG_PEEK)
        with pytest.raises(LocalProtocolError, match="no flags"):
            sock.recv_into(bytearray(100), 0, socket.MSG_PEEK)
        got = b""
        while len(got) < 10:
            got += sock.recv(100)
        assert got == b"peek at me"  # and the refused sends sent nothing


def test_send_with_msg_dontwait_takes_what_fits_and_never_waits() -> None:
    """send(data, MSG_DONTWAIT) on a blocking socket (timeout None) whose peer does not
    read: it takes what fits, then raises BlockingIOError at once instead of waiting;
    what it took arrives whole and in order once the peer reads."""
    identity = HostIdentity.generate()
    with dtp.socket.create_server(("127.0.0.1", 0), identity=identity) as server:
        go = threading.Event()
        got: list[bytes] = []

        def reader() -> None:
            conn, _ = server.accept()
            with conn:
                go.wait(10)
                while data := conn.recv(1 << 20):
                    got.append(data)

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        with dtp.socket.create_connection(
            server.address, server_key=identity.noise_public, timeout=None
        ) as sock:
            chunk = os.urandom(256 << 10)
            taken = bytearray()
            started = time.monotonic()
            with pytest.raises(BlockingIOError):
                for _ in range(400):  # 100 MiB: far beyond every window and buffer
                    n = sock.send(chunk, socket.MSG_DONTWAIT)
                    assert 0 < n <= len(chunk)
                    taken += chunk[:n]
            assert time.monotonic() - started < 5
            assert taken
            go.set()
            sock.shutdown(socket.SHUT_WR)
            thread.join(20)
        assert b"".join(got) == bytes(taken)


def test_bad_arguments_raise_as_on_a_socket_and_lose_nothing(echo_server) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="timeout must be > 0"):
        dtp.socket.create_connection(echo_server.endpoint, timeout=0, server_key=echo_server.key)
    # past the longest wait a lock takes: refused up front, as settimeout() refuses it (it
    # failed once connected, the connection left behind)
    with pytest.raises(OverflowError, match="at most"):
        dtp.socket.create_connection(
            echo_server.endpoint, timeout=float("inf"), server_key=echo_server.key
        )
    with dtp.socket.create_connection(
        echo_server.endpoint, timeout=10, server_key=echo_server.key
    ) as sock:
        sock.sendall(b"warm")  # the stream is lent from here: the fast paths check too
        assert sock.recv(10) == b"warm"
        with pytest.raises(TypeError, match="bytes-like object is required, not 'str'"):
            sock.sendall("text")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="bytes-like object is required, not 'str'"):
            sock.send("text")  # type: ignore[arg-type]
        # a read-only buffer is refused at once, not after waiting for data
        with pytest.raises(TypeError, match="writable"):
            sock.recv_into(b"read-only")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="writable"):
            sock.recv_into(memoryview(b"read-only"))
        with pytest.raises(TypeError, match="number"):
            sock.settimeout("1")  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            sock.settimeout(float("nan"))
        assert sock.gettimeout() == 10
        with pytest.raises(ValueError, match="SHUT_RD"):
            sock.shutdown(7)
        assert sock.recv(0) == b""  # at once, as on a socket
        # none of it sent, took or shut anything
        sock.sendall(b"still here")
        buf = bytearray(10)
        got = 0
        while got < 10:
            got += sock.recv_into(memoryview(buf)[got:])
        assert buf == b"still here"


def test_closed_socket_use_is_local_error(echo_server) -> None:  # type: ignore[no-untyped-def]
    sock = dtp.socket.create_connection(
        echo_server.endpoint, timeout=10, server_key=echo_server.key
    )
    sock.close()
    with pytest.raises(LocalProtocolError):
        sock.sendall(b"x")
    with pytest.raises(LocalProtocolError):
        sock.recv(1)


def test_flow_control_blocks_sender_of_slow_reader() -> None:
    with (
        server_process("slow") as srv,
        dtp.socket.create_connection(srv.endpoint, timeout=10, server_key=srv.key) as sock,
    ):
        sock.settimeout(1.0)
        sent = 0
        with pytest.raises(DTPTimeoutError):
            while True:
                sent += sock.send(os.urandom(65536))
        # the peer's stream window (the default) plus our queue bound what was accepted
        window = ConnectionConfig.__dataclass_fields__["stream_window"].default
        assert sent <= window + dtp.socket.SEND_HIGH_WATER + 65536


def test_a_full_carrier_holds_back_the_sender() -> None:
    """A sender whose carrier is full waits for it to take what is queued instead of
    sealing more behind it: the queue stays at about one write."""
    with (
        server_process("slow") as srv,
        dtp.socket.create_connection(srv.endpoint, timeout=10, server_key=srv.key) as sock,
    ):
        sock.settimeout(1.0)
        chunk = os.urandom(65536)
        most = 0
        with pytest.raises(DTPTimeoutError):
            while True:
                sock.sendall(chunk)
                most = max(most, sum(len(b) for b in sock._engine.out))
        sock.abort()  # (a close would wait for the queue the peer never reads)
        assert most <= 2 * len(chunk)


def test_a_sender_waiting_for_a_full_carrier_sleeps() -> None:
    """A sender waiting for its full carrier to take what is queued sleeps until it
    has room: what its own pass left queued wakes nobody (a wake to itself would end
    each of its waits at once, and the thread would spin while the peer reads nothing)."""
    with (
        server_process("sink") as srv,
        dtp.socket.create_connection(srv.endpoint, timeout=10, server_key=srv.key) as sock,
    ):
        sock.sendall(b"x")
        os.kill(srv.proc.pid, signal.SIGSTOP)  # the peer reads nothing from here
        try:
            sock._engine.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
            sock.settimeout(1.0)
            chunk = os.urandom(65536)
            cpu, start = time.thread_time(), time.monotonic()
            with pytest.raises(DTPTimeoutError):
                while True:  # the carrier fills well within the peer's credit
                    sock.sendall(chunk)
            spent, took = time.thread_time() - cpu, time.monotonic() - start
            assert sock._engine.out
        finally:
            os.kill(srv.proc.pid, signal.SIGCONT)
        sock.abort()  # (a close would wait for the queue the peer never reads)
    assert spent < 0.25, f"the sender spent {spent:.2f} s of CPU in {took:.2f} s"


def test_send_recv_exchanges_through_the_lent_stream(echo_server) -> None:  # type: ignore[no-untyped-def]
    """send_recv sends and reads in one go once the stream is lent; before that it
    sends nothing and says so (None)."""
    with dtp.socket.create_connection(
        echo_server.endpoint, timeout=10, server_key=echo_server.key
    ) as sock:
        conn = sock._engine.conn
        if conn.lent_stream_id != sock._stream_id:
            assert sock.send_recv(b"not sent", 100) is None
        sock.sendall(b"first")
        assert sock.recv(100) == b"first"
        assert conn.lent_stream_id == sock._stream_id
        for i in range(50):
            message = os.urandom(1 + i * 37)
            assert sock.send_recv(message, 1 << 18) == message
        # a read that ends inside the message: the rest comes with the next reads
        message = os.urandom(5000)
        got = sock.send_recv(message, 1000)
        assert got is not None and len(got) <= 1000
        while len(got) < len(message):
            got += sock.recv(len(message) - len(got))
        assert got == message
        # more than one seal takes: the lane sends what it can, the rest goes on
        sock.sendall(b"lend")
        assert sock.recv(100) == b"lend"
        assert conn.lent_stream_id == sock._stream_id
        big = os.urandom(3 << 20)
        got = sock.send_recv(big, 1 << 20)
        assert got is not None
        received = hashlib.sha256(got)
        count = len(got)
        while count < len(big):
            data = sock.recv(1 << 20)
            assert data
            received.update(data)
            count += len(data)
        assert count == len(big)
        assert received.digest() == hashlib.sha256(big).digest()
        got = sock.send_recv(b"after", 100)
        if got is None:  # not lent at the moment: nothing was sent
            sock.sendall(b"after")
            got = sock.recv(100)
        assert got == b"after"


def test_send_recv_lets_go_of_the_callers_lock(echo_server) -> None:  # type: ignore[no-untyped-def]
    """``release``: kept when nothing was sent (None), let go of once the data is out
    -- the answer comes through the lane's own buffer in one exchange -- and let go
    of when the read then fails."""
    writers = threading.Lock()
    with dtp.socket.create_connection(
        echo_server.endpoint, timeout=10, server_key=echo_server.key
    ) as sock:
        conn = sock._engine.conn
        if conn.lent_stream_id != sock._stream_id:
            writers.acquire()
            assert sock.send_recv(b"not sent", 100, release=writers) is None
            assert writers.locked()
            writers.release()
        sock.sendall(b"first")
        assert sock.recv(100) == b"first"
        exchanged = 0
        for i in range(200):
            message = os.urandom(1 + i * 7)
            writers.acquire()
            got = sock.send_recv(message, 4096, release=writers)
            if got is None:  # taken back for a moment (credit owed): not sent, lock kept
                assert writers.locked()
                writers.release()
                sock.sendall(message)
                got = b""
            else:
                exchanged += 1
            assert not writers.locked()
            while len(got) < len(message):
                got += sock.recv(len(message) - len(got))
            assert got == message
        assert exchanged >= 150
    with (
        server_process("slow") as srv,
        dtp.socket.create_connection(srv.endpoint, timeout=10, server_key=srv.key) as sock,
    ):
        sock.sendall(b"x")
        assert sock._engine.conn.lent_stream_id == sock._stream_id
        sock.settimeout(0.5)
        failed: list[BaseException] = []

        def wait_for_nothing() -> None:
            writers.acquire()
            try:
                sock.send_recv(b"no answer comes", 100, release=writers)
            except BaseException as exc:
                failed.append(exc)

        waiter = threading.Thread(target=wait_for_nothing)
        start = time.monotonic()
        waiter.start()
        # while it waits, another writer gets the lock and the carrier
        assert writers.acquire(timeout=5)
        sock.sendall(b"meanwhile")
        writers.release()
        assert waiter.is_alive() or failed
        waiter.join(10)
        elapsed = time.monotonic() - start
        assert len(failed) == 1 and isinstance(failed[0], DTPTimeoutError)
        assert 0.45 <= elapsed < 5
        assert not writers.locked()
        sock.abort()


def test_send_recv_reports_a_peer_that_vanishes() -> None:
    """A peer killed before an exchange, or during its wait: ConnectionLost at once,
    not a hang until the timeout."""
    with server_process("echo") as srv:
        sock = dtp.socket.create_connection(srv.endpoint, timeout=5, server_key=srv.key)
        with sock:
            sock.sendall(b"x")
            assert sock.recv(10) == b"x"
            assert sock.send_recv(b"lent", 100) == b"lent"
            srv.proc.kill()
            srv.proc.wait(10)
            start = time.monotonic()
            with pytest.raises(ConnectionLost):
                sock.send_recv(b"after", 100)
            assert time.monotonic() - start < 2
    with server_process("slow") as srv:
        sock = dtp.socket.create_connection(srv.endpoint, timeout=10, server_key=srv.key)
        with sock:
            sock.sendall(b"x")
            killer = threading.Timer(0.3, srv.proc.kill)
            killer.start()
            start = time.monotonic()
            with pytest.raises(ConnectionLost):
                sock.send_recv(b"waiting", 100)
            assert time.monotonic() - start < 5
            killer.join()


@pytest.mark.parametrize("call", ["send_recv", "sendall_then_recv"])
def test_a_request_the_carrier_takes_in_part_is_written_while_the_answer_is_awaited(
    call: str,
) -> None:
    """The last write of a request that the carrier takes only in part (small socket
    buffers, a peer not reading yet) leaves the rest queued; the read that waits for
    the answer must write it too -- the lane's waits only read, and the peer, missing
    the end of the request, would never answer (this hung until the timeout)."""
    identity = HostIdentity.generate()
    size = 200_000  # far more than both socket buffers hold
    client: list[dtp.socket.DTPSocket] = []
    writing = threading.Event()
    with dtp.socket.create_server(("127.0.0.1", 0), identity=identity) as server:

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(10)
                conn._engine.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
                assert conn.recv(1) == b"x"
                conn.sendall(b"!")
                # not reading until the client's carrier is full and records wait in its
                # queue (a fixed pause here lost that race on a loaded machine)
                assert writing.wait(10)
                assert wait_for(lambda: bool(client[0]._engine.out), 10)
                got = 0
                while got < size:
                    data = conn.recv(1 << 20)
                    assert data
                    got += len(data)
                conn.sendall(b"ok")
                conn.recv(1)  # until the client closes

        thread = threading.Thread(target=serve)
        thread.start()
        with dtp.socket.create_connection(
            server.address, server_key=identity.noise_public, timeout=10
        ) as sock:
            client.append(sock)
            sock._engine.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            sock.sendall(b"x")
            assert sock.recv(1) == b"!"
            assert not sock._engine.out
            start = time.monotonic()
            writing.set()
            if call == "send_recv":
                lane = sock._engine.conn.lent_lane
                assert lane is not None
                results: list[int] = []
                exchange = lane.exchange

                def counted(*args: Any) -> int:
                    n: int = exchange(*args)
                    results.append(n)
                    return n

                lane.exchange = counted
                assert sock.send_recv(b"z" * size, 10) == b"ok"
                assert results == [-1]  # all sealed, part of it queued: no wait in the lane
            else:
                sock.sendall(b"z" * size)
                assert sock._engine.out  # the carrier took only part of the last write
                assert sock.recv(10) == b"ok"
            assert time.monotonic() - start < 5
        thread.join(10)
        assert not thread.is_alive()


def test_send_recv_never_waits_to_send() -> None:
    """Out of credit (a peer that never reads), send_recv queues what flow control
    holds back and waits only for the read: its TimeoutError is the read's."""
    with (
        server_process("slow") as srv,
        dtp.socket.create_connection(srv.endpoint, timeout=10, server_key=srv.key) as sock,
    ):
        sock.sendall(b"x")  # the stream is lent once it carries data
        assert sock._engine.conn.lent_stream_id == sock._stream_id
        sock.settimeout(0.3)
        window = ConnectionConfig.__dataclass_fields__["stream_window"].default
        start = time.monotonic()
        with pytest.raises(DTPTimeoutError):
            sock.send_recv(os.urandom(window + (1 << 20)), 100)
        assert time.monotonic() - start < 3
        engine = sock._engine
        queued = engine.conn.send_buffered(sock._stream_id) + sum(len(b) for b in engine.out)
        assert queued >= 1 << 20
        sock.abort()


def test_connect_to_nothing_fails_fast() -> None:
    with pytest.raises(DTPError):
        dtp.socket.create_connection(("127.0.0.1", 1), timeout=5, server_key=os.urandom(32))


def test_in_process_server_with_threads() -> None:
    server_id = HostIdentity.generate()
    seen: list[str] = []

    def hook(address: str) -> bool:
        seen.append(address)
        return True

    with dtp.socket.create_server(("127.0.0.1", 0), identity=server_id, accept=hook) as server:

        def serve() -> None:
            sock, address = server.accept(timeout=10)
            with sock:
                assert address == CLIENT.sui_address == sock.peer_address
                sock.sendall(b"greeting first")
                sock.sendall(sock.recv(100).upper())

        t = threading.Thread(target=serve)
        t.start()
        with dtp.socket.create_connection(
            server.address, timeout=10, server_key=server.noise_public_key, identity=CLIENT
        ) as sock:
            assert sock.recv(100) == b"greeting first"
            sock.sendall(b"shout")
            assert sock.recv(100) == b"SHOUT"
            assert sock.recv(100) == b""  # the server closed
        t.join(10)
        assert seen == [CLIENT.sui_address]


def test_recv_into_while_waiting_gets_every_byte_in_order() -> None:
    """A reader blocked in recv_into receives arriving bytes straight into its buffer;
    nothing is lost or reordered across small and large buffers, timeouts, EOF."""
    server_id = HostIdentity.generate()
    payload = os.urandom(3_000_000)
    with dtp.socket.create_server(("127.0.0.1", 0), identity=server_id) as server:

        def serve() -> None:
            sock, _ = server.accept(timeout=10)
            with sock:
                assert sock.recv(1) == b"g"
                time.sleep(0.3)  # the client is waiting in recv_into by now
                for i in range(0, len(payload), 100_000):
                    sock.sendall(payload[i : i + 100_000])
                    if i % 700_000 == 0:
                        time.sleep(0.05)
                sock.shutdown(dtp.socket.SHUT_WR)
                sock.recv(1)

        t = threading.Thread(target=serve)
        t.start()
        with dtp.socket.create_connection(
            server.address, timeout=10, server_key=server.noise_public_key
        ) as sock:
            sock.settimeout(0.05)
            with pytest.raises(DTPTimeoutError):  # nothing yet: a timed-out wait loses nothing
                sock.recv_into(bytearray(10))
            sock.settimeout(10)
            sock.sendall(b"g")
            received = bytearray()
            sizes = [7, 1 << 20, 1000, 65536, 3, 1 << 21]
            buf = bytearray(1 << 21)
            i = 0
            while n := sock.recv_into(memoryview(buf)[: sizes[i % len(sizes)]]):
                received += buf[:n]
                i += 1
            assert bytes(received) == payload
            sock.sendall(b"x")
        t.join(10)
